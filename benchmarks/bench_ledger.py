"""Benchmark what the spend ledger adds to a save: one appended message per save, with and
without one ledger row (a turn's model call), on the ``sqlite`` and ``file`` backends.

Usage: ``python benchmarks/bench_ledger.py [--saves N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.ledger import KIND_TURN, LedgerRow, new_row_id
from astrid.messages import Message
from astrid.store import SessionStore, StorageBackend


def _backend(kind: str, directory: Path) -> StorageBackend:
    return SqliteBackend(directory / "astrid.db") if kind == "sqlite" else FileBackend(directory)


def median_save_us(kind: str, saves: int, *, rows: bool) -> float:
    """The median time of one ``store.save`` of a session growing by one message a save."""
    with tempfile.TemporaryDirectory() as tmp, SessionStore(_backend(kind, Path(tmp))) as store:
        session = store.new_session("bench")
        store.save(session)
        times: list[float] = []
        for i in range(saves):
            session.add_message(Message.user(f"message {i}"))
            if rows:
                session.changes.ledger.append(
                    LedgerRow(
                        id=new_row_id(),
                        session_id=session.id.bare,
                        parent_session_id=None,
                        workspace="/bench/workspace",
                        workspace_charged=True,
                        model="model",
                        provider="provider",
                        kind=KIND_TURN,
                        input_tokens=1000,
                        output_tokens=50,
                        cache_read_tokens=0,
                        cache_write_tokens=0,
                        reasoning_tokens=0,
                        usage_reported=True,
                        reserved_usd=Decimal("0.0123"),
                        cost_usd=Decimal("0.0011"),
                    )
                )
            started = time.perf_counter()
            store.save(session)
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--saves", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {}
    for kind, saves in (("sqlite", args.saves), ("file", max(1, args.saves // 10))):
        results[kind] = {
            "saves": saves,
            "without_row_us": round(median_save_us(kind, saves, rows=False), 1),
            "with_row_us": round(median_save_us(kind, saves, rows=True), 1),
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for kind, r in results.items():
        print(
            f"{kind:6}  median save, {r['saves']} saves: {r['without_row_us']:8.1f} us without a "
            f"ledger row, {r['with_row_us']:8.1f} us with one"
        )


if __name__ == "__main__":
    main()
