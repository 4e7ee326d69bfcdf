"""Shared helpers of the benchmarks: timing, statistics, result rows, tables and JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def ensure_paths() -> None:
    """Make ``astrid`` (the checkout) and the sibling benchmark modules importable."""
    for path in (str(ROOT), str(Path(__file__).resolve().parent)):
        if path not in sys.path:
            sys.path.insert(0, path)


@dataclass
class Row:
    """One figure: an operation on one system, summarised over repeated runs.

    ``median``/``p10``/``p90`` are over ``runs`` samples (what one sample is depends on the
    operation and is said in ``sample``). ``value`` rows (counts, ratios) have no spread.
    """

    op: str
    system: str
    n: int | None
    unit: str
    median: float | None
    p10: float | None = None
    p90: float | None = None
    runs: int = 0
    sample: str = ""
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def key(self) -> tuple[str, int | None]:
        return (self.op, self.n)


def quantiles(samples: list[float]) -> tuple[float, float, float]:
    """(median, p10, p90); with fewer than 2 samples the spread is the value itself."""
    if not samples:
        raise ValueError("no samples")
    med = statistics.median(samples)
    if len(samples) < 2:
        return med, med, med
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    return med, deciles[0], deciles[-1]


def summarize(
    op: str,
    system: str,
    n: int | None,
    unit: str,
    samples: list[float],
    *,
    sample: str,
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> Row:
    """A row from raw samples (already in ``unit``)."""
    med, p10, p90 = quantiles(samples)
    return Row(op, system, n, unit, med, p10, p90, len(samples), sample, note, dict(extra or {}))


def value_row(
    op: str,
    system: str,
    n: int | None,
    unit: str,
    value: float | None,
    *,
    runs: int = 1,
    sample: str = "",
    note: str = "",
    extra: dict[str, Any] | None = None,
) -> Row:
    """A row holding one value (a count, a size, a ratio)."""
    return Row(op, system, n, unit, value, None, None, runs, sample, note, dict(extra or {}))


def na_row(op: str, system: str, n: int | None, why: str) -> Row:
    """An operation a system does not support (or that was skipped), with the reason."""
    return Row(op, system, n, "", None, note=f"n/a: {why}")


def time_us(
    fn: Callable[[], object],
    runs: int,
    warmup: int = 3,
    *,
    budget_s: float | None = None,
    min_runs: int = 5,
) -> list[float]:
    """Per-call wall times of ``fn`` in microseconds (after ``warmup`` untimed calls).

    With ``budget_s``, stops early once ``min_runs`` calls are done and the budget is spent
    (slow operations of O(N) backends would otherwise take minutes).
    """
    for _ in range(warmup):
        fn()
    out: list[float] = []
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - start) / 1000)
        if deadline is not None and len(out) >= min_runs and time.perf_counter() > deadline:
            break
    return out


def dir_bytes(path: Path) -> int:
    """Apparent size (st_size) of every regular file under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:
                continue
    return total


def fmt(value: float | None, unit: str = "") -> str:
    """A number with 3 significant digits-ish."""
    if value is None:
        return "-"
    if isinstance(value, int) or (abs(value) >= 100 and unit not in ("x", "ratio")):
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def table(rows: Iterable[Row], *, title: str = "") -> str:
    """A fixed-width text table of rows."""
    rows = list(rows)
    w = max([32, *(len(r.op) + 2 for r in rows)])
    lines = []
    if title:
        lines.append(title)
    header = f"{'operation':<{w}}{'system':<24}{'N':>7}  {'median':>10} {'p10-p90':>19}  {'unit':<8}{'runs':>5}  note"
    lines.append(header)
    lines.append("-" * len(header))
    for r in rows:
        n = f"{r.n:,}" if r.n is not None else ""
        if r.median is None:
            lines.append(
                f"{r.op:<{w}}{r.system:<24}{n:>7}  {'-':>10} {'':>19}  {'':<8}{'':>5}  {r.note}"
            )
            continue
        spread = ""
        if r.p10 is not None and r.p90 is not None and r.runs > 1:
            spread = f"{fmt(r.p10, r.unit)}-{fmt(r.p90, r.unit)}"
        lines.append(
            f"{r.op:<{w}}{r.system:<24}{n:>7}  {fmt(r.median, r.unit):>10} {spread:>19}  "
            f"{r.unit:<8}{r.runs:>5}  {r.note}"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """What the figures ran on."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "nproc": os.cpu_count(),
    }
    try:
        import sqlite3

        info["sqlite"] = sqlite3.sqlite_version
    except ImportError:  # pragma: no cover
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                info["cpu"] = line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        load = os.getloadavg()
        info["loadavg_at_start"] = [round(x, 2) for x in load]
    except OSError:
        pass
    return info


def emit_payload(payload: dict[str, Any], out: Path | None, as_json: bool) -> bool:
    """Write the run's JSON to ``out`` (if given) and print it with ``as_json``; True if printed."""
    if out:
        out.write_text(dump_json(payload))
    if as_json:
        print(dump_json(payload))
    return as_json


def print_setting(info: dict[str, Any], durabilities: dict[str, str], heading: str) -> None:
    """The machine line and each system's durability, under ``heading``."""
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(heading)
    for system, durability in durabilities.items():
        print(f"  {system}: {durability}")


def dump_json(payload: dict[str, Any]) -> str:
    """JSON with rows as dicts."""

    def default(obj: Any) -> Any:
        if isinstance(obj, Row):
            return asdict(obj)
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(type(obj).__name__)

    return json.dumps(payload, indent=2, default=default)


@dataclass
class Target:
    """One target line and its verdict."""

    name: str
    ok: bool | None
    detail: str

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a "}[self.ok]
        return f"  [{verdict}] {self.name}: {self.detail}"


def find(rows: Iterable[Row], op: str, system: str, n: int | None = None) -> Row | None:
    """The row of ``op`` on ``system`` (and ``n`` if given) with a value, if any."""
    for r in rows:
        if r.op == op and r.system == system and (n is None or r.n == n) and r.median is not None:
            return r
    return None
