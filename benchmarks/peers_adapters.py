"""The adapter row of ``make bench-peers``: astrid as the OpenAI Agents SDK's session store.

``add_items`` (one item per call, the shape of a run's saves) and ``get_items`` (the whole
session, and its last 20 items) of ``astrid_openai_agents.AstridSession`` over astrid's SQLite
backend, next to the SDK's own ``SQLiteSession`` on a file, in the same process and run, the
two sides interleaved call by call so that machine noise hits both alike. astrid runs at its
default ``synchronous = NORMAL`` and at ``FULL`` (``SQLiteSession`` leaves SQLite's default,
FULL in WAL mode). Target (issue 22): the adapter no slower than ``SQLiteSession``.

Alone: ``benchmarks/.peers-venv/bin/python benchmarks/peers_adapters.py [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Row, na_row, summarize, table

SDK = "openai/SQLiteSession"
ADAPTER = "astrid-agents"
ADAPTER_FULL = "astrid-agents(FULL)"
OPS = ("adapter_add_items", "adapter_get_items", "adapter_get_items_20")


def _item(n: int) -> dict[str, Any]:
    """An SDK item of a typical size (a user or assistant text of about 300 bytes)."""
    if n % 2 == 0:
        return {"role": "user", "content": f"question {n}: " + "lorem ipsum dolor sit amet " * 10}
    return {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "answer " * 40, "annotations": []}],
    }


async def _timed(fn: Callable[[], Awaitable[object]]) -> float:
    start = time.perf_counter_ns()
    await fn()
    return (time.perf_counter_ns() - start) / 1000


async def _measure(items: int, reads: int, where: Path) -> list[Row]:
    from agents.memory import SQLiteSession
    from astrid_openai_agents import AstridSession

    from astrid.default_plugins.sqlite_storage import SqliteBackend
    from astrid.store import SessionStore

    sdk = SQLiteSession("bench", str(where / "openai.db"))
    stores = {
        ADAPTER: SessionStore(SqliteBackend(where / "astrid.db")),
        ADAPTER_FULL: SessionStore(SqliteBackend(where / "astrid-full.db", synchronous="FULL")),
    }
    sides: dict[str, Any] = {SDK: sdk}
    sides.update({name: AstridSession("bench", store) for name, store in stores.items()})
    samples: dict[tuple[str, str], list[float]] = {(op, s): [] for op in OPS for s in sides}
    try:
        for n in range(items):
            item = _item(n)
            for name, side in sides.items():
                samples[("adapter_add_items", name)].append(
                    await _timed(lambda side=side, item=item: side.add_items([item]))
                )
        for name, side in sides.items():  # every side holds the same items
            assert await side.get_items() == await sdk.get_items(), name
        for _ in range(reads):
            for name, side in sides.items():
                samples[("adapter_get_items", name)].append(
                    await _timed(lambda side=side: side.get_items())
                )
                samples[("adapter_get_items_20", name)].append(
                    await _timed(lambda side=side: side.get_items(limit=20))
                )
    finally:
        sdk.close()
        for store in stores.values():
            store.close()
    units = {
        "adapter_add_items": "us/call",
        "adapter_get_items": "us",
        "adapter_get_items_20": "us",
    }
    what = {
        "adapter_add_items": "one add_items of one item, into a session growing to N",
        "adapter_get_items": "get_items() of all N items",
        "adapter_get_items_20": "get_items(limit=20) of N items",
    }
    return [
        summarize(op, name, items, units[op], samples[(op, name)], sample=what[op])
        for op in OPS
        for name in sides
    ]


def adapter_rows(quick: bool, log: Callable[[str], None], problems: dict[str, str]) -> list[Row]:
    """The adapter rows (n/a rows, with the reason in ``problems``, if a side cannot run)."""
    items, reads = (300, 30) if quick else (2_000, 100)
    t0 = time.perf_counter()
    log(f"  adapters: {items} add_items per side, {reads} get_items ...")
    try:
        with tempfile.TemporaryDirectory(prefix="astrid-bench-adapters-") as tmp:
            rows = asyncio.run(_measure(items, reads, Path(tmp)))
    except ImportError as exc:
        problems[ADAPTER] = f"cannot import: {exc}"
        return [na_row(op, ADAPTER, items, str(exc)) for op in OPS]
    log(f"  adapters: done in {time.perf_counter() - t0:.1f} s")
    return rows


def targets(rows: list[Row]) -> list[str]:
    """One line per operation: the adapter's median against SQLiteSession's."""
    lines = []
    for op in OPS:
        by = {r.system: r for r in rows if r.op == op and r.median is not None}
        if SDK not in by or ADAPTER not in by:
            continue
        ratio = by[ADAPTER].median / by[SDK].median  # type: ignore[operator]
        verdict = "ok" if ratio <= 1.0 else "MISSED"
        lines.append(
            f"  [{verdict}] {op}: AstridSession (astrid-openai-agents) no slower than SQLiteSession "
            f"({ratio:.2f}x its median)"
        )
    return lines


def print_rows(rows: list[Row]) -> None:
    """The adapter table and its target lines (the rows ``adapter_rows`` made)."""
    mine = [r for r in rows if r.op in OPS]
    if not mine:
        return
    print(table(mine, title="astrid as the OpenAI Agents SDK's Session (issue 22):"))
    print("targets:")
    for line in targets(mine):
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    problems: dict[str, str] = {}
    rows = adapter_rows(args.quick, lambda m: print(m, file=sys.stderr, flush=True), problems)
    for side, problem in problems.items():
        print(f"  PROBLEM {side}: {problem}")
    print_rows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
