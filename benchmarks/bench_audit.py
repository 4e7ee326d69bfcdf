"""Benchmark what the audit log adds per decision: one appended message per save, with 0, 1
and 3 audit entries (a turn's decisions), on the ``sqlite``, ``file`` and ``memory`` backends
(the file backend rewrites its document each save, so it runs ``FILE_SAVES`` saves); plus the
cost of recording one entry (``audit.record``) and of verifying one stored entry.

Usage: ``python benchmarks/bench_audit.py [--saves N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.messages import Message
from astrid.security.audit import record, verify
from astrid.security.crypto import KeyPair
from astrid.session import AgentSession
from astrid.store import SessionStore, StorageBackend

KEY = KeyPair.generate()
KINDS = ("sqlite", "file", "memory")
FILE_SAVES = 300


def _decide(session: AgentSession, i: int) -> None:
    record(session, KEY, actor="runtime", action_type="file_read", action=f"read notes {i}.txt",
           decision="allowed")


def median_save_us(kind: str, saves: int, entries: int, directory: Path) -> float:
    """The median ``store.save`` of a session growing by one message and ``entries`` decisions."""
    backend: StorageBackend
    if kind == "sqlite":
        backend = SqliteBackend(directory / f"astrid-{entries}.db")
    elif kind == "file":
        backend = FileBackend(directory / f"sessions-{entries}")
        saves = min(saves, FILE_SAVES)
    else:
        backend = MemoryBackend()
    with SessionStore(backend) as store:
        session = store.new_session("bench").with_workspace("/bench/workspace")
        store.save(session)
        times: list[float] = []
        for i in range(saves):
            session.add_message(Message.user(f"message {i}"))
            for _ in range(entries):
                _decide(session, i)
            started = time.perf_counter()
            store.save(session)
            times.append(time.perf_counter() - started)
        if entries:
            started = time.perf_counter()
            records = store.list_audit()
            assert verify(records, [KEY.public_key_base64]) == []
            verify_us = (time.perf_counter() - started) / len(records) * 1e6
            print(f"  ({kind}: list + verify {len(records)} entries: {verify_us:.1f} us each)")
        return statistics.median(times) * 1e6


def record_us(n: int) -> float:
    """The mean cost of ``audit.record`` (build the pending entry) on a session."""
    session = AgentSession.new(system_prompt="bench").with_workspace("/bench/workspace")
    started = time.perf_counter()
    for i in range(n):
        _decide(session, i)
    return (time.perf_counter() - started) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--saves", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in KINDS:
            results[kind] = {
                f"{n}_entries_us": round(median_save_us(kind, args.saves, n, Path(tmp)), 1)
                for n in (0, 1, 3)
            }
    results["record"] = {"us": round(record_us(10_000), 1)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for kind in KINDS:
        r = results[kind]
        saves = min(args.saves, FILE_SAVES) if kind == "file" else args.saves
        print(
            f"{kind:6}  median save, {saves} saves: {r['0_entries_us']:7.1f} us without, "
            f"{r['1_entries_us']:7.1f} us with 1 entry, {r['3_entries_us']:7.1f} us with 3"
        )
    print(f"audit.record: {results['record']['us']:.1f} us per decision")


if __name__ == "__main__":
    main()
