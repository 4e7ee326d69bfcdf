"""Benchmark the ``sqlite`` backend through ``SessionStore``: append+save, tail load, listing.

Run: ``.venv/bin/python benchmarks/bench_sqlite.py [--json] [--dir DIR]``. Prints median µs.
Targets (issue 3): append+save <= 100 µs and flat from 1k to 10k messages; tail load of 20 out
of 10 000 <= 1 ms; first page of 50 out of 10 000 sessions <= 10 ms. Two extra lines split one
append+save into its shares: the backend's ``write`` alone and the facade over a null backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.messages import Message
from astrid.session import AgentSession
from astrid.store import SessionStore, SessionWrite, StorageBackend

TARGETS_US: dict[str, float | None] = {
    "append_save_1k": 100.0,
    "append_save_10k": 100.0,
    "backend_write_10k": None,
    "facade_save_10k": None,
    "load_tail20_of_10k": 1000.0,
    "list50_of_10k": 10000.0,
}


def _median_us(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def _message(i: int) -> Message:
    if i % 2:
        return Message.assistant(f"reply {i}: " + "lorem ipsum dolor sit amet " * 4)
    return Message.user(f"question {i}: what about the thing number {i}?")


def _grow(store: SessionStore, session: AgentSession, total: int, batch: int = 1000) -> None:
    while len(session.messages) < total:
        for _ in range(min(batch, total - len(session.messages))):
            session.add_message(_message(len(session.messages)))
        store.save(session)


def bench_append(store: SessionStore, size: int, runs: int) -> float:
    """Median µs of one append + save with ``size`` messages already stored."""
    session = AgentSession("You are a benchmark.")
    _grow(store, session, size)
    counter = [size]

    def step() -> None:
        session.add_message(_message(counter[0]))
        counter[0] += 1
        store.save(session)

    for _ in range(20):
        step()
    return _median_us(step, runs)


def bench_backend_write(backend: SqliteBackend, size: int, runs: int) -> float:
    """Median µs of the backend's share: one ``write`` of one message, state pre-built."""
    store = SessionStore(backend)
    session = AgentSession("You are a benchmark.")
    _grow(store, session, size)
    state = store._state_of(session)
    summary = store._summary_of(session, state, size)
    sid = session.id.bare
    mark = [store.revision_of(session) or 0, len(session.messages)]
    body = _message(1).to_json()

    def step() -> None:
        mark[0] = backend.write(SessionWrite(sid, mark[0], state, [body], mark[1], False, summary))
        mark[1] += 1

    for _ in range(20):
        step()
    return _median_us(step, runs)


class _NullBackend:
    """Accepts every write instantly: what is left is the facade's share."""

    name = "null"

    def __init__(self) -> None:
        self.revision = 0

    def write(self, change: SessionWrite) -> int:
        self.revision += 1
        return self.revision


def bench_facade(size: int, runs: int) -> float:
    """Median µs of append + ``SessionStore.save`` over a backend that does nothing."""
    return bench_append(SessionStore(cast(StorageBackend, _NullBackend())), size, runs)


def bench_load_tail(store: SessionStore, runs: int) -> float:
    """Median µs of ``load(id, tail=20)`` of a 10 000-message session."""
    session = AgentSession("You are a benchmark.")
    _grow(store, session, 10_000)
    sid = session.id
    for _ in range(10):
        store.load(sid, tail=20)
    return _median_us(lambda: store.load(sid, tail=20), runs)


def bench_list(store: SessionStore, runs: int) -> float:
    """Median µs of ``list_sessions(limit=50)`` out of 10 000 sessions."""
    have = store.count()
    for i in range(have, 10_000):
        session = AgentSession("bench")
        session.metadata.title = f"session {i}"
        session.add_message(_message(i))
        store.save(session)
    for _ in range(10):
        store.list_sessions(limit=50)
    return _median_us(lambda: store.list_sessions(limit=50), runs)


def run(directory: Path, runs: int) -> dict[str, float]:
    """Run every benchmark in fresh databases under ``directory``."""
    results: dict[str, float] = {}
    with SessionStore(SqliteBackend(directory / "append.db")) as store:
        results["append_save_1k"] = bench_append(store, 1_000, runs)
        results["append_save_10k"] = bench_append(store, 10_000, runs)
    backend = SqliteBackend(directory / "write.db")
    results["backend_write_10k"] = bench_backend_write(backend, 10_000, runs)
    backend.close()
    results["facade_save_10k"] = bench_facade(10_000, runs)
    with SessionStore(SqliteBackend(directory / "load.db")) as store:
        results["load_tail20_of_10k"] = bench_load_tail(store, runs)
    with SessionStore(SqliteBackend(directory / "list.db")) as store:
        results["list50_of_10k"] = bench_list(store, runs)
    return results


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--runs", type=int, default=300, help="timed runs per benchmark")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the databases")
    args = parser.parse_args(argv)
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
        results = run(args.dir, args.runs)
    else:
        with tempfile.TemporaryDirectory(prefix="astrid-bench-") as tmp:
            results = run(Path(tmp), args.runs)
    if args.json:
        out = {
            name: {"median_us": round(value, 1), "target_us": TARGETS_US[name]}
            for name, value in results.items()
        }
        print(json.dumps(out, indent=2))
    else:
        print(f"{'benchmark':<22}{'median µs':>12}{'target µs':>12}  ok")
        for name, value in results.items():
            target = TARGETS_US[name]
            if target is None:
                print(f"{name:<22}{value:>12.1f}{'(share)':>12}")
            else:
                ok = "yes" if value <= target else "NO"
                print(f"{name:<22}{value:>12.1f}{target:>12.0f}  {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
