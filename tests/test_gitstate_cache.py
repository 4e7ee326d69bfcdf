"""The cached ``capture_fs``: after any change to a real repository it answers what git does.

Every check compares the cached capture (called twice, so the second call takes the cache's
fast path) with an uncached capture and with ``git rev-parse`` itself. ``aged`` variants wait
until the repository's timestamps are outside the racy window before changing it, so the change
has to be noticed through signatures the cache trusts, not through re-reading.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid import gitstate
from astrid.document import GitState
from astrid.gitstate import capture_fs, capture_fs_uncached, capture_subprocess

from .test_gitstate import (
    PROJECT_ROOT,
    _hermetic_git,  # noqa: F401 - the same autouse fixture
    git,
    head,
    make_repo,
)

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

AGE_SECONDS = 0.25
"""Longer than the racy window for sub-second timestamps (tmp_path's file systems have them)."""



def agree(path: Path) -> GitState | None:
    """The cached capture (twice), the uncached one and git agree; return the answer."""
    first = capture_fs(path)
    second = capture_fs(path)
    fresh = capture_fs_uncached(path)
    real = capture_subprocess(path)
    assert first == second == fresh == real, (
        f"cached={first!r} again={second!r} uncached={fresh!r} git={real!r} at {path}"
    )
    return first


def run_steps(paths: list[Path], steps: list[Callable[[], object]], aged: bool) -> None:
    """Check every path, then after each step (waiting out the racy window first if aged)."""
    for path in paths:
        agree(path)
    for step in steps:
        if aged:
            time.sleep(AGE_SECONDS)
            for path in paths:
                agree(path)  # the cache now trusts the signatures it re-checked
        step()
        for path in paths:
            agree(path)


AGED = pytest.mark.parametrize("aged", [False, True], ids=["racy", "aged"])


@AGED
def test_history_of_one_repository(tmp_path: Path, aged: bool) -> None:
    repo = make_repo(tmp_path / "repo")
    sub = repo / "a" / "b"
    sub.mkdir(parents=True)
    first = head(repo)

    def commit(message: str) -> None:
        git(repo, "commit", "-q", "--allow-empty", "-m", message)

    steps: list[Callable[[], object]] = [
        lambda: commit("on main"),
        lambda: git(repo, "checkout", "-q", "-b", "feature/x"),
        lambda: commit("on feature"),
        lambda: git(repo, "checkout", "-q", "main"),
        lambda: git(repo, "checkout", "-q", "--detach", first),
        lambda: git(repo, "checkout", "-q", "--detach", "feature/x"),
        lambda: git(repo, "checkout", "-q", "main"),
        lambda: git(repo, "pack-refs", "--all"),
        lambda: commit("after packing"),  # main is loose again, next to its packed copy
        lambda: git(repo, "update-ref", "refs/heads/main", first),
        lambda: git(repo, "update-ref", "refs/heads/feature/x", first),
        lambda: git(repo, "tag", "main"),  # the branch is now ambiguous: heads/main
        lambda: git(repo, "pack-refs", "--all"),
        lambda: git(repo, "tag", "-d", "main"),
        lambda: git(repo, "update-ref", "refs/tags/HEAD", first),  # HEAD itself is ambiguous
        lambda: git(repo, "update-ref", "-d", "refs/tags/HEAD"),
        lambda: git(repo, "update-ref", "refs/remotes/origin/x", first),
        lambda: git(repo, "symbolic-ref", "HEAD", "refs/remotes/origin/x"),
        lambda: git(repo, "symbolic-ref", "HEAD", "refs/heads/main"),
        lambda: git(repo, "symbolic-ref", "refs/heads/alias", "refs/heads/feature/x"),
        lambda: git(repo, "symbolic-ref", "HEAD", "refs/heads/alias"),
        lambda: git(repo, "checkout", "-q", "--orphan", "unborn"),
        lambda: git(repo, "checkout", "-q", "-f", "main"),
    ]
    run_steps([repo, sub], steps, aged)


@AGED
def test_ref_rewritten_in_place(tmp_path: Path, aged: bool) -> None:
    """Same size, same inode: only the times (and the content) tell the change."""
    repo = make_repo(tmp_path / "repo", commits=3)
    commits = git(repo, "rev-list", "HEAD").split()
    ref = repo / ".git" / "refs" / "heads" / "main"
    steps: list[Callable[[], object]] = [
        (lambda c=c: ref.write_text(c + "\n")) for c in commits * 2
    ]
    steps += [
        lambda: ref.write_text(commits[0].upper() + "\n"),
        lambda: ref.write_text("ref: refs/heads/other\n"),
        lambda: ref.write_text("not a sha\n"),
        lambda: ref.write_text(""),
        lambda: ref.write_text(commits[1] + "\n"),
    ]
    run_steps([repo], steps, aged)


def test_many_quick_branch_moves(tmp_path: Path) -> None:
    """The benchmark's pattern: the current branch rewritten between every two captures."""
    repo = make_repo(tmp_path / "repo", commits=4)
    commits = git(repo, "rev-list", "HEAD").split()
    ref = repo / ".git" / "refs" / "heads" / "main"
    for i in range(200):
        ref.write_text(commits[i % len(commits)] + "\n")
        assert capture_fs(repo) == GitState(branch="main", commit=commits[i % len(commits)])
    assert agree(repo) == GitState(branch="main", commit=commits[199 % len(commits)])


@AGED
def test_linked_worktree_and_submodule(tmp_path: Path, aged: bool) -> None:
    repo = make_repo(tmp_path / "repo")
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "other", str(wt))
    lib = make_repo(tmp_path / "lib", commits=2)
    git(repo, "submodule", "add", "-q", str(lib), "sub")
    git(repo, "commit", "-q", "-m", "add submodule")
    sub = repo / "sub"

    def write_gitfile(target: Path) -> None:
        (wt / ".git").write_text(f"gitdir: {target}\n")

    worktree_gitdir = (wt / ".git").read_text().split(": ", 1)[1].strip()
    steps: list[Callable[[], object]] = [
        lambda: git(wt, "commit", "-q", "--allow-empty", "-m", "in the worktree"),
        lambda: git(wt, "checkout", "-q", "-b", "third"),
        lambda: git(repo, "pack-refs", "--all"),
        lambda: git(wt, "checkout", "-q", "--detach"),
        lambda: git(sub, "checkout", "-q", "-b", "topic"),
        lambda: git(sub, "commit", "-q", "--allow-empty", "-m", "in the submodule"),
        lambda: write_gitfile(repo / ".git"),  # the worktree now claims the main repository
        lambda: write_gitfile(Path(worktree_gitdir)),
        lambda: write_gitfile(tmp_path / "nowhere"),
        lambda: write_gitfile(Path(worktree_gitdir)),
        lambda: git(repo, "worktree", "remove", "--force", str(wt)),
    ]
    run_steps([wt, repo, sub], steps, aged)


@AGED
def test_repository_deleted_replaced_and_moved(tmp_path: Path, aged: bool) -> None:
    work = tmp_path / "work"
    make_repo(work)
    inner = work / "inner"
    inner.mkdir()
    other = make_repo(tmp_path / "other", commits=3)
    git(other, "checkout", "-q", "-b", "elsewhere")
    parked = tmp_path / "parked"

    steps: list[Callable[[], object]] = [
        lambda: shutil.rmtree(work / ".git"),  # no longer a repository
        lambda: make_repo(work, commits=1),  # a new one in its place
        lambda: shutil.rmtree(work),  # the workspace itself is gone
        lambda: shutil.copytree(other, work, symlinks=True),  # a copy of another repository
        lambda: work.rename(parked),
        lambda: parked.rename(work),
        lambda: inner.mkdir(parents=True),
    ]
    run_steps([work, inner], steps, aged)


@AGED
def test_symlinks_on_the_way(tmp_path: Path, aged: bool) -> None:
    one = make_repo(tmp_path / "one")
    two = make_repo(tmp_path / "two", commits=3)
    git(two, "checkout", "-q", "-b", "two")
    (one / "deep").mkdir()
    (two / "deep").mkdir()
    link = tmp_path / "link"
    link.symlink_to(one)
    holder = tmp_path / "holder"
    holder.mkdir()
    plain = holder / "ws"
    plain.mkdir()

    def retarget(target: Path) -> None:
        link.unlink()
        link.symlink_to(target)

    def holder_becomes_link() -> None:
        shutil.rmtree(holder)
        holder.symlink_to(two)  # holder/ws no longer exists...

    def ws_inside_two() -> None:
        (two / "ws").mkdir()  # ...until it does, inside the repository two

    steps: list[Callable[[], object]] = [
        lambda: retarget(two),
        lambda: git(two, "commit", "-q", "--allow-empty", "-m", "x"),
        lambda: retarget(one),
        lambda: link.unlink(),
        lambda: link.symlink_to(one),
        holder_becomes_link,
        ws_inside_two,
    ]
    run_steps([link, link / "deep", plain], steps, aged)


def test_relative_path_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    one = make_repo(tmp_path / "one")
    two = make_repo(tmp_path / "two")
    git(two, "checkout", "-q", "-b", "two")
    monkeypatch.chdir(one)
    assert capture_fs(Path(".")) == GitState(branch="main", commit=head(one))
    monkeypatch.chdir(two)
    assert capture_fs(Path(".")) == GitState(branch="two", commit=head(two))
    assert not any(not key.startswith(b"/") for key in gitstate._CACHE)


def test_more_workspaces_than_the_cache_holds(tmp_path: Path) -> None:
    base = make_repo(tmp_path / "repo")
    dirs = []
    for i in range(gitstate._CACHE_MAX + 10):
        d = base / f"d{i}"
        d.mkdir()
        dirs.append(d)
    expected = GitState(branch="main", commit=head(base))
    for _ in range(2):
        for d in dirs:
            assert capture_fs(d) == expected
    assert len(gitstate._CACHE) <= gitstate._CACHE_MAX
    git(base, "commit", "-q", "--allow-empty", "-m", "moved")
    expected = GitState(branch="main", commit=head(base))
    for d in dirs:
        assert capture_fs(d) == expected


def test_answers_are_fresh_objects(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    first = capture_fs(repo)
    assert first is not None
    first.branch = "tampered"
    assert capture_fs(repo) == GitState(branch="main", commit=head(repo))


def test_concurrent_captures_agree(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", commits=3)
    commits = set(git(repo, "rev-list", "HEAD").split())
    ref = repo / ".git" / "refs" / "heads" / "main"
    seen: list[GitState | None] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            seen.append(capture_fs(repo))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(100):
            # git's way: write a lock file, rename it over the ref
            lock = ref.with_name("main.lock")
            lock.write_text(sorted(commits)[i % len(commits)] + "\n")
            lock.replace(ref)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert seen
    assert all(s is not None and s.branch == "main" and s.commit in commits for s in seen)
    agree(repo)


def test_trusted_only_outside_the_racy_window() -> None:
    second = 1_000_000_000
    now = 1_700_000_000 * second + 500_000_000
    fine = (0o100644, 1, 1, 41, now - second + 123, now - second + 456)
    assert gitstate._trusted(fine, now)
    recent = (0o100644, 1, 1, 41, now - 50_000_000 + 7, now - 50_000_000 + 7)
    assert not gitstate._trusted(recent, now)
    # Whole-second times: a file system with 1-2 s granularity gets git's 2 s window.
    coarse = (0o100644, 1, 1, 41, (now // second - 1) * second, (now // second - 1) * second)
    assert not gitstate._trusted(coarse, now)
    old = (0o100644, 1, 1, 41, (now // second - 3) * second, (now // second - 3) * second)
    assert gitstate._trusted(old, now)
    # A change of metadata only (chmod, a new link) moves ctime: not trusted either.
    touched = (0o100644, 1, 1, 41, now - 10 * second + 1, now - 1)
    assert not gitstate._trusted(touched, now)
    # A time in the future (clock skew) is never trusted.
    assert not gitstate._trusted((0o100644, 1, 1, 41, now + second + 1, now + second + 1), now)
    assert gitstate._trusted(2, now)  # an errno is an exact fact


_COUNT_OPENS_CHILD = """
import json, os, sys, time
from pathlib import Path
from astrid.gitstate import capture_fs
opened = []
def hook(event, args):
    if event == "open":
        opened.append(os.fsdecode(args[0]) if isinstance(args[0], (str, bytes)) else args[0])
repo = Path(sys.argv[1])
ref = repo / ".git" / "refs" / "heads" / "main"
commits = sys.argv[2].split(",")
capture_fs(repo)
time.sleep(0.25)
capture_fs(repo)  # signatures re-checked outside the racy window: trusted from now on
sys.addaudithook(hook)
report = {}
before = len(opened)
state = capture_fs(repo)
report["unchanged"] = [len(opened) - before, state.commit if state else None]
ref.write_text(commits[1] + "\\n")
before = len(opened)
state = capture_fs(repo)
report["moved"] = [opened[before:], state.commit if state else None]
print(json.dumps(report))
"""


def test_cache_reads_nothing_when_nothing_changed(tmp_path: Path) -> None:
    """Unchanged: no file opened. The branch moved: only its ref file read again."""
    repo = make_repo(tmp_path / "repo", commits=2)
    if os.stat(repo / ".git" / "HEAD").st_mtime_ns % 1_000_000_000 == 0:
        pytest.skip("whole-second timestamps: the cache trusts nothing for 2 s")
    commits = git(repo, "rev-list", "HEAD").split()
    proc = subprocess.run(
        [sys.executable, "-c", _COUNT_OPENS_CHILD, str(repo), ",".join(commits)],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(PROJECT_ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["unchanged"] == [0, commits[0]]
    ref = str(repo / ".git" / "refs" / "heads" / "main")
    assert report["moved"] == [[ref], commits[1]]


def test_full_capture_at_least_every_reverify_period(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path / "repo")
    expected = GitState(branch="main", commit=head(repo))
    assert capture_fs(repo) == expected
    entry = gitstate._CACHE[os.fsencode(repo)]
    assert capture_fs(repo) == expected
    assert gitstate._CACHE[os.fsencode(repo)] is entry
    monkeypatch.setattr(gitstate, "_REVERIFY_NS", 0)
    assert capture_fs(repo) == expected
    assert gitstate._CACHE[os.fsencode(repo)] is not entry
