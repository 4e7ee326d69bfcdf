"""Benchmark a fork of a long session and what the ``encrypted`` backend adds on SQLite.

Fork: ``store.fork`` of a 10 000-message session at its middle and at its end (one load, one
save of the copy). Encryption: one appended message per ``store.save`` and a full ``load`` of the
session, plain ``sqlite`` next to ``encrypted`` over ``sqlite``, interleaved in one run.

Usage: ``python benchmarks/bench_fork_crypto.py [--messages N] [--saves N] [--json]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from astrid.default_plugins.encrypted_storage import EncryptedBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.messages import Message
from astrid.store import SessionStore, StorageBackend

KEY = bytes(range(32))


def _backend(kind: str, directory: Path) -> StorageBackend:
    inner = SqliteBackend(directory / "astrid.db")
    return EncryptedBackend(inner, KEY) if kind == "encrypted" else inner


def _long_session(store: SessionStore, messages: int) -> str:
    session = store.new_session("bench")
    for i in range(messages):
        text = f"message {i}: " + "lorem ipsum " * 8
        session.add_message(Message.user(text) if i % 2 == 0 else Message.assistant(text))
    store.save(session)
    return session.id.bare


def fork_ms(kind: str, messages: int, repeats: int = 5) -> dict[str, float]:
    """Median milliseconds of a fork at the middle and at the end of a long session."""
    with tempfile.TemporaryDirectory() as tmp, SessionStore(_backend(kind, Path(tmp))) as store:
        sid = _long_session(store, messages)
        result: dict[str, float] = {}
        for label, at in (("middle", messages // 2), ("end", None)):
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                store.fork(sid, at=at)
                times.append(time.perf_counter() - started)
            result[label] = round(statistics.median(times) * 1e3, 1)
        return result


def save_and_load(kind: str, saves: int, messages: int) -> dict[str, float]:
    """Median µs of an append+save, and median ms of a full load of a ``messages`` session."""
    with tempfile.TemporaryDirectory() as tmp, SessionStore(_backend(kind, Path(tmp))) as store:
        session = store.new_session("bench")
        store.save(session)
        times = []
        for i in range(saves):
            session.add_message(Message.user(f"message {i}: " + "lorem ipsum " * 8))
            started = time.perf_counter()
            store.save(session)
            times.append(time.perf_counter() - started)
        sid = _long_session(store, messages)
        loads = []
        for _ in range(5):
            started = time.perf_counter()
            store.load(sid)
            loads.append(time.perf_counter() - started)
        return {
            "append_save_us": round(statistics.median(times) * 1e6, 1),
            "load_ms": round(statistics.median(loads) * 1e3, 1),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--saves", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results: dict[str, dict[str, object]] = {"plain": {}, "encrypted": {}}
    for name, kind in (("plain", "sqlite"), ("encrypted", "encrypted")):
        results[name]["fork_ms"] = fork_ms(kind, args.messages)
    for _ in range(2):  # interleaved: each kind runs twice, the second figures are kept
        for name, kind in (("plain", "sqlite"), ("encrypted", "encrypted")):
            results[name].update(save_and_load(kind, args.saves, args.messages))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for name, r in results.items():
        print(f"{name:9}  fork of {args.messages} msgs {r['fork_ms']} ms; append+save "
              f"{r['append_save_us']} us ({args.saves} saves); load {r['load_ms']} ms")


if __name__ == "__main__":
    main()
