"""Benchmark git state capture: two ``git`` processes versus reading ``.git`` directly.

Usage: ``python benchmarks/bench_git.py [--subprocess-runs N] [--fs-runs N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from astrid.document import GitState
from astrid.gitstate import capture_fs, capture_none, capture_subprocess

Capture = Callable[[Path], GitState | None]


def _git(cwd: Path, *args: str) -> None:
    """Run a git command quietly, failing loudly."""
    subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def build_repo(root: Path, commits: int) -> Path:
    """A repo with ``commits`` commits on ``main``, a tag and packed refs; returns a subdir."""
    repo = root / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    for i in range(commits):
        (repo / "file.txt").write_text(f"{i}\n")
        _git(repo, "add", "file.txt")
        _git(repo, "commit", "-q", "-m", f"commit {i}")
    _git(repo, "tag", "v1")
    _git(repo, "pack-refs", "--all")
    _git(repo, "commit", "-q", "--allow-empty", "-m", "loose again")
    work = repo / "src" / "pkg"
    work.mkdir(parents=True)
    return work


def time_calls(fn: Capture, path: Path, runs: int) -> list[float]:
    """Per-call wall times in microseconds."""
    samples: list[float] = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn(path)
        samples.append((time.perf_counter_ns() - start) / 1000.0)
    return samples


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subprocess-runs", type=int, default=200)
    parser.add_argument("--fs-runs", type=int, default=20000)
    parser.add_argument("--commits", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)

    for name in [n for n in os.environ if n.startswith("GIT_")]:
        del os.environ[name]
    os.environ.update(
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="bench@example.invalid",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="bench@example.invalid",
    )

    with tempfile.TemporaryDirectory(prefix="astrid-bench-git-") as tmp:
        path = build_repo(Path(tmp), args.commits)
        expected = capture_subprocess(path)
        got = capture_fs(path)
        if got != expected or expected is None:
            print(f"mismatch: capture_fs={got!r} capture_subprocess={expected!r}", file=sys.stderr)
            return 1
        plan: list[tuple[str, Capture, int]] = [
            ("subprocess", capture_subprocess, args.subprocess_runs),
            ("fs", capture_fs, args.fs_runs),
            ("none", capture_none, args.fs_runs),
        ]
        results: dict[str, dict[str, float]] = {}
        for name, fn, runs in plan:
            fn(path)  # warm up
            samples = time_calls(fn, path, runs)
            results[name] = {
                "runs": runs,
                "median_us": statistics.median(samples),
                "p90_us": statistics.quantiles(samples, n=10)[-1],
            }

    speedup = results["subprocess"]["median_us"] / results["fs"]["median_us"]
    if args.json:
        print(json.dumps({"git_state": expected.model_dump(), **results, "speedup": speedup}))
    else:
        print(f"captured: branch={expected.branch!r} commit={expected.commit}")
        for name, figures in results.items():
            print(
                f"{name:<11} runs={int(figures['runs']):>6}  median={figures['median_us']:10.1f} µs"
                f"  p90={figures['p90_us']:10.1f} µs"
            )
        print(f"speedup (subprocess / fs, medians): {speedup:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
