"""Benchmark the ``postgres`` backend through ``SessionStore``: append+save, tail load, listing.

Run: ``.venv/bin/python plugins/astrid-postgres/benchmarks/bench_postgres.py [--json]
[--dsn DSN] [--runs N]``. Without ``--dsn`` it starts a throwaway local server (durable
settings: fsync on) and stops it afterwards. Prints median µs, twice: with PostgreSQL's default
``synchronous_commit=on`` (every save waits for its WAL flush) and with ``synchronous_commit=off``
for the connection (no corruption on a crash, but the last commits may be lost: close to the
``sqlite`` backend's default ``synchronous = NORMAL``).
Each benchmark runs in a fresh schema; with ``--dsn`` those schemas are dropped at the end.

The same measurements as ``benchmarks/bench_sqlite.py``: one append + save with 1 000 and 10 000
messages stored (it must not grow with the session), the backend's ``write`` alone, a tail load
of 20 out of 10 000 messages, and the first page of 50 out of 10 000 sessions. ``growing_security``:
one save of a session holding 10 000 session allowances + remembered escape paths (5 000 each)
that gains one of each and one message per save (the keyed state: only those rows are written).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from astrid.messages import Message
from astrid.security.allowances import Allowance, ExactTool
from astrid.security.escape import EscapeDecision, EscapeOperation, EscapeRequest
from astrid.session import AgentSession
from astrid.store import SessionStore, SessionWrite
from psycopg import sql
from psycopg.conninfo import make_conninfo

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.testing import TemporaryServer


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


def bench_backend_write(backend: PostgresBackend, size: int, runs: int) -> float:
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
    for i in range(store.count(), 10_000):
        session = AgentSession("bench")
        session.metadata.title = f"session {i}"
        session.add_message(_message(i))
        store.save(session)
    for _ in range(10):
        store.list_sessions(limit=50)
    return _median_us(lambda: store.list_sessions(limit=50), runs)


def bench_growing_security(store: SessionStore, size: int, runs: int) -> float:
    """Median µs of one save of a session with ``size`` session allowances + escape paths
    (half each) that gains one allowance, one escape path and one message per save (the
    mutations are not timed)."""
    with tempfile.TemporaryDirectory(prefix="astrid-bench-") as tmp:
        outside = Path(tmp)
        session = AgentSession("You are a benchmark.")
        made = [0]

        def grow() -> None:
            i = made[0]
            made[0] += 1
            session.add_session_allowance(
                Allowance.create(ExactTool(server="fs", tool=f"t{i}"), session_only=True)
            )
            where = outside / f"d{i:06d}"
            where.mkdir()
            session.escape_handler.process_decision(
                EscapeRequest.new(where, EscapeOperation.READ, "bench"),
                EscapeDecision.ALLOW_ALWAYS,
            )

        for _ in range(size // 2):
            grow()
        session.add_message(_message(0))
        store.save(session)
        samples: list[int] = []
        for n in range(20 + runs):
            grow()
            session.add_message(_message(n + 1))
            start = time.perf_counter_ns()
            store.save(session)
            if n >= 20:
                samples.append(time.perf_counter_ns() - start)
        return statistics.median(samples) / 1000


def run(dsn: str, runs: int) -> dict[str, float]:
    """Run every benchmark, each in a fresh schema; drop the schemas afterwards."""
    schemas: list[str] = []

    def backend() -> PostgresBackend:
        schemas.append(f"bench_{uuid.uuid4().hex[:12]}")
        return PostgresBackend(dsn, schema=schemas[-1], min_size=1, max_size=2)

    results: dict[str, float] = {}
    try:
        with SessionStore(backend()) as store:
            results["append_save_1k"] = bench_append(store, 1_000, runs)
            results["append_save_10k"] = bench_append(store, 10_000, runs)
        raw = backend()
        results["backend_write_10k"] = bench_backend_write(raw, 10_000, runs)
        raw.close()
        with SessionStore(backend()) as store:
            results["load_tail20_of_10k"] = bench_load_tail(store, runs)
        with SessionStore(backend()) as store:
            results["list50_of_10k"] = bench_list(store, runs)
        with SessionStore(backend()) as store:
            results["growing_security_10k"] = bench_growing_security(store, 10_000, runs)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            for name in schemas:
                conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
                )
    return results


@contextmanager
def _server(dsn: str | None) -> Iterator[tuple[str, str]]:
    if dsn is not None:
        yield dsn, "the server at --dsn"
        return
    with TemporaryServer(durable=True, database="astrid_bench") as server:
        with psycopg.connect(server.dsn()) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        yield server.dsn(), f"a throwaway local PostgreSQL {version} (fsync on)"


def main(argv: list[str] | None = None) -> int:
    """Print median µs per benchmark (or JSON with ``--json``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--dsn", help="an existing server (default: start a throwaway one)")
    parser.add_argument("--runs", type=int, default=300, help="samples per benchmark")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    with _server(args.dsn) as (dsn, where):
        durable = run(dsn, args.runs)
        relaxed = run(make_conninfo(dsn, options="-c synchronous_commit=off"), args.runs)
    if args.json:
        print(
            json.dumps(
                {
                    "server": where,
                    "median_us": durable,
                    "median_us_synchronous_commit_off": relaxed,
                },
                indent=2,
            )
        )
        return 0
    print(f"postgres backend on {where}; median of {args.runs} runs, µs")
    print(f"  {'':<20} {'sync commit':>12} {'async commit':>13}")
    for name, value in durable.items():
        print(f"  {name:<20} {value:>12.1f} {relaxed[name]:>13.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
