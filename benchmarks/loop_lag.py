"""Event-loop stalls while the runtime saves (issue 15): today's sync save next to ``asave``.

Usage::

    python benchmarks/loop_lag.py [--turns N] [--rounds R] [--json] [--out FILE.json]

A heartbeat task on the event loop sleeps 1 ms at a time and records the longest gap between
two of its wake-ups while ``AgentRuntime.run_turn`` runs turns (``scripted`` provider, real
SQLite store) in three cases:

* ``lock``: another process holds the SQLite write lock for 1.5 s (``BEGIN IMMEDIATE``, sleep)
  while the first turn saves;
* ``big``: the session has 20 000 messages (the mix of ``workload.py``, 3.2 KB each) that the
  first turn's save writes;
* ``full``: ``synchronous = "FULL"`` (an fsync per save).

Each case runs with today's behaviour (the synchronous ``store.save`` called on the loop: a
store whose ``asave`` is ``save``) and with the store's ``asave`` (backend I/O in a worker
thread), in the same process, round after round. The figure is the longest gap, the 1 ms the
heartbeat asked to sleep included; next to it, the longest gap that overlaps a save (the
rest is the turn's other work on the loop, e.g. the runtime's request token estimate). Target:
under 5 ms in every case with ``asave``. ``make bench-loop-lag`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ensure_paths

ensure_paths()

from harness import Row, emit_payload, machine, value_row
from ours import workdir
from workload import astrid_message

from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.runtime import AgentRuntime, ModelPricing, RuntimeConfig
from astrid.session import AgentSession
from astrid.store import SessionStore

TARGET_MS = 5.0
HEARTBEAT_S = 0.001
LOCK_HOLD_S = 1.5
BIG_SESSION = 20_000
MODEL_S = 0.002
IDLE_S = 1.0

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
conn.close()
"""
"""Another process: takes the database's write lock, holds it, lets go."""


class TimedSaves(SessionStore):
    """``SessionStore`` recording when each of its async saves started and ended, so a stall
    can be told apart: during a save, or in the rest of the turn (the runtime's own work)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saves: list[tuple[float, float]] = []

    async def asave(self, session: AgentSession) -> int:
        started = time.perf_counter()
        try:
            return await self._asave(session)
        finally:
            self.saves.append((started, time.perf_counter()))

    async def _asave(self, session: AgentSession) -> int:
        return await super().asave(session)


class SaveOnLoop(TimedSaves):
    """Today's behaviour: the runtime's saves run the synchronous ``save`` on the loop."""

    async def _asave(self, session: AgentSession) -> int:
        return self.save(session)

    async def asave_state(self, session: AgentSession) -> int:
        return self.save_state(session)


MODES: dict[str, type[TimedSaves]] = {"today": SaveOnLoop, "asave": TimedSaves}
MODE_TITLES = {
    "today": "today: store.save on the loop",
    "asave": "await store.asave",
}


@dataclass
class Case:
    """One situation in which the runtime saves."""

    name: str
    title: str
    synchronous: str = "NORMAL"
    messages: int = 0
    """Unsaved messages the session holds before the first measured turn."""
    lock_s: float = 0.0
    """Another process holds the write lock this long while the first measured turn saves."""


CASES = (
    Case("lock", f"another process holds the write lock for {LOCK_HOLD_S} s", lock_s=LOCK_HOLD_S),
    Case("big", f"the session has {BIG_SESSION:,} messages (first save)", messages=BIG_SESSION),
    Case("full", 'synchronous = "FULL" (an fsync per save)', synchronous="FULL"),
)


class Heartbeat:
    """A task that sleeps ``interval`` at a time and records the gaps between its wake-ups.

    ``stop`` waits for the next wake-up, so a stall that lasts to the end is counted too.
    """

    def __init__(self, interval: float = HEARTBEAT_S) -> None:
        self.interval = interval
        self.recording = False
        self.last = 0.0
        self.gaps: list[float] = []
        self.spans: list[tuple[float, float]] = []
        """(start, end) of every gap, with ``gaps``."""
        self._stopped: asyncio.Event | None = None

    def start(self) -> None:
        self.gaps = []
        self.spans = []
        self.last = time.perf_counter()
        self.recording = True

    async def stop(self) -> None:
        self._stopped = asyncio.Event()
        await self._stopped.wait()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = time.perf_counter()
            if self.recording:
                self.gaps.append(now - self.last)
                self.spans.append((self.last, now))
                if self._stopped is not None:
                    self.recording = False
                    self._stopped.set()
                    self._stopped = None
            self.last = now


async def hold_write_lock(path: Path, seconds: float) -> asyncio.subprocess.Process:
    """Start the locker process and return once it holds the write lock."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, str(path), str(seconds), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    if line.strip() != b"locked":
        raise RuntimeError(f"the locker process did not take the lock (said {line!r})")
    return proc


@dataclass
class Measured:
    case: str
    mode: str
    round: int
    longest_ms: float
    ticks: int
    over_target: int
    turns: int
    seconds: float
    messages: int
    in_saves_ms: float = 0.0
    full_gcs: int = 0
    """Full garbage collections during the measured turns."""
    """The longest gap overlapping a save (0: none); the rest is the turns' other work."""


def longest_in(spans: list[tuple[float, float]], saves: list[tuple[float, float]]) -> float:
    """The longest of the gaps ``spans`` that overlaps one of ``saves`` (0.0 if none does)."""
    return max(
        (b - a for a, b in spans if any(a < end and b > start for start, end in saves)),
        default=0.0,
    )


async def measure(case: Case, mode: str, turns: int, round_: int, where: Path) -> Measured:
    """Run ``turns`` measured turns of ``case`` with the store of ``mode``; the heartbeat's figures."""
    db = where / "astrid.db"
    store = MODES[mode](SqliteBackend(db, synchronous=case.synchronous))  # type: ignore[arg-type]
    # The model "thinks" 2 ms (the loop is free meanwhile, as with a real provider), then answers.
    script = [
        [{"sleep": MODEL_S}, {"text": f"reply {i}: " + "lorem ipsum " * 20}]
        for i in range(turns + 1)
    ]
    runtime = AgentRuntime(
        ScriptedProvider(script),
        store=store,
        tools=[],
        config=RuntimeConfig(
            auto_summarize=False,
            workspace=where,
            default_pricing=ModelPricing(input_per_million=0, output_per_million=0),
        ),
    )
    heartbeat = Heartbeat()
    beating = asyncio.create_task(heartbeat.run())
    try:
        session = runtime.create_session("You are a benchmark.")
        if case.messages:
            for i in range(case.messages):
                session.add_message(astrid_message(i))
            # Building them made a full collection due (~60 ms over this heap, every thread
            # stopped): run it now, or it lands in whichever turn allocates next.
            gc.collect()
        else:
            await runtime.run_turn(session, "warm up")  # the session row exists
        locker = await hold_write_lock(db, case.lock_s) if case.lock_s else None
        await asyncio.sleep(0.01)
        full_gcs = gc.get_stats()[2]["collections"]
        heartbeat.start()
        started = time.perf_counter()
        for i in range(turns):
            await runtime.run_turn(session, f"question {i}")
        elapsed = time.perf_counter() - started
        await heartbeat.stop()
        full_gcs = gc.get_stats()[2]["collections"] - full_gcs
        if locker is not None:
            await locker.wait()
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        runtime.close()
    gaps = heartbeat.gaps
    return Measured(
        case.name,
        mode,
        round_,
        max(gaps) * 1000,
        len(gaps),
        sum(1 for g in gaps if g * 1000 >= TARGET_MS),
        turns,
        elapsed,
        len(session.messages),
        longest_in(heartbeat.spans, store.saves) * 1000,
        full_gcs,
    )


async def idle(seconds: float, round_: int) -> Measured:
    """The heartbeat alone on an idle loop: the machine's own scheduling noise."""
    heartbeat = Heartbeat()
    beating = asyncio.create_task(heartbeat.run())
    heartbeat.start()
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    await heartbeat.stop()
    elapsed = time.perf_counter() - started
    beating.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await beating
    gaps = heartbeat.gaps
    over = sum(1 for g in gaps if g * 1000 >= TARGET_MS)
    return Measured("idle", "idle", round_, max(gaps) * 1000, len(gaps), over, 0, elapsed, 0)


def run_all(
    cases: tuple[Case, ...], turns: int, rounds: int, log: Callable[[str], None]
) -> list[Measured]:
    """Every case in both modes, round after round (today, then asave, within each round),
    and the heartbeat alone for a second (the noise floor of the machine at that moment)."""
    out: list[Measured] = []
    for r in range(1, rounds + 1):
        m = asyncio.run(idle(IDLE_S, r))
        log(f"  round {r} idle         longest {m.longest_ms:8.1f} ms, {m.ticks} ticks")
        out.append(m)
        for case in cases:
            for mode in MODES:
                with workdir("astrid-looplag-") as where:
                    m = asyncio.run(measure(case, mode, turns, r, where))
                log(
                    f"  round {r} {case.name:<5} {mode:<6} longest {m.longest_ms:8.1f} ms "
                    f"({m.in_saves_ms:.1f} during saves, {m.full_gcs} full GCs), {m.ticks} "
                    f"ticks, {m.turns} turns in "
                    f"{m.seconds:.2f} s"
                )
                out.append(m)
    return out


def rows_of(measured: list[Measured]) -> list[Row]:
    """One row per case and mode: the worst round's longest gap (every round in ``extra``)."""
    rows: list[Row] = []
    quiet = [m for m in measured if m.case == "idle"]
    if quiet:
        rows.append(
            value_row(
                "loop_stall_idle",
                "idle",
                None,
                "ms",
                max(m.longest_ms for m in quiet),
                runs=len(quiet),
                sample=f"longest gap between 1 ms heartbeats over {IDLE_S:.0f} s with nothing "
                "else on the loop; worst round",
                note="the machine's own scheduling noise",
                extra={
                    "rounds_ms": [round(m.longest_ms, 2) for m in quiet],
                    "ticks": [m.ticks for m in quiet],
                    "gaps_over_target": [m.over_target for m in quiet],
                },
            )
        )
    for case in CASES:
        for mode in MODES:
            ms = [m for m in measured if m.case == case.name and m.mode == mode]
            if not ms:
                continue
            rows.append(
                value_row(
                    f"loop_stall_{case.name}",
                    mode,
                    ms[0].turns,
                    "ms",
                    max(m.longest_ms for m in ms),
                    runs=len(ms),
                    sample=f"longest gap between 1 ms heartbeats over {ms[0].turns} turns "
                    f"({case.title}); worst of {len(ms)} round(s)",
                    note=MODE_TITLES[mode],
                    extra={
                        "rounds_ms": [round(m.longest_ms, 2) for m in ms],
                        "in_saves_ms": [round(m.in_saves_ms, 2) for m in ms],
                        "full_gcs": [m.full_gcs for m in ms],
                        "ticks": [m.ticks for m in ms],
                        "gaps_over_target": [m.over_target for m in ms],
                        "seconds": [round(m.seconds, 3) for m in ms],
                        "median_ms": statistics.median(m.longest_ms for m in ms),
                    },
                )
            )
    return rows


def report(rows: list[Row]) -> list[str]:
    """The side-by-side table and the target lines."""
    by = {(r.op, r.system): r for r in rows}
    lines = [
        f"{'case':<52}{'today (ms)':>12}{'asave (ms)':>12}{'in saves':>10}  "
        "rounds (today | asave)",
        "-" * 110,
    ]
    verdicts = []
    for case in CASES:
        today, new = by.get((f"loop_stall_{case.name}", "today")), by.get(
            (f"loop_stall_{case.name}", "asave")
        )
        if today is None or new is None:
            continue
        lines.append(
            f"{case.name + ': ' + case.title:<52}{today.median:>12.1f}{new.median:>12.1f}"
            f"{max(new.extra['in_saves_ms']):>10.1f}  "
            f"{today.extra['rounds_ms']} | {new.extra['rounds_ms']}"
        )
        ok = new.median is not None and new.median < TARGET_MS
        verdicts.append(
            f"  [{'PASS' if ok else 'FAIL'}] {case.name}: longest stall with asave "
            f"{new.median:.1f} ms < {TARGET_MS:.0f} ms (today {today.median:.1f} ms; during "
            f"its saves {max(new.extra['in_saves_ms']):.1f} ms); heartbeat ticks during the "
            f"turns: {new.extra['ticks']}"
        )
    idle_row = by.get(("loop_stall_idle", "idle"))
    if idle_row is not None:
        lines.append(
            f"{'idle: the heartbeat alone for ' + format(IDLE_S, '.0f') + ' s (noise floor)':<52}"
            f"{'(no turns)':>12}{idle_row.median:>12.1f}  {idle_row.extra['rounds_ms']}"
        )
    return [*lines, "", f"target: the longest stall under {TARGET_MS:.0f} ms in every case", *verdicts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--turns", type=int, default=10, help="measured turns per case")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of every case and mode")
    parser.add_argument("--cases", default=",".join(c.name for c in CASES))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--out", type=Path, help="also write the JSON to this file")
    args = parser.parse_args(argv)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    known = {c.name: c for c in CASES}
    for name in names:
        if name not in known:
            parser.error(f"unknown case {name!r}")
    if args.turns < 1 or args.rounds < 1:
        parser.error("--turns and --rounds must be >= 1")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    info = machine()
    started = time.perf_counter()
    measured = run_all(tuple(known[n] for n in names), args.turns, args.rounds, log)
    rows = rows_of(measured)
    payload: dict[str, Any] = {
        "heartbeat_ms": HEARTBEAT_S * 1000,
        "target_ms": TARGET_MS,
        "machine": info,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "switch_interval_s": sys.getswitchinterval(),
    }
    if emit_payload(payload, args.out, args.json):
        return 0
    print(
        f"astrid event-loop stalls while saving ({args.rounds} round(s) x {args.turns} turns "
        f"per case, {payload['seconds']:.0f} s)"
    )
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(
        f"figure: the longest gap between wake-ups of a task sleeping {HEARTBEAT_S * 1000:.0f} ms "
        "at a time (the sleep included), worst round"
    )
    print()
    print("\n".join(report(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
