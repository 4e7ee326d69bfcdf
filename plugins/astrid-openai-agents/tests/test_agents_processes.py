"""Two processes adding items to one session at the same time lose none of them."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from agents_backends import make_backend
from astrid.store import SessionStore
from astrid.testing import run_together

from astrid_openai_agents import AstridSession

WORKER = Path(__file__).with_name("_add_worker.py")
COUNT = 40


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_concurrent_add_items_from_two_processes(kind: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    run_together(
        {
            n: [sys.executable, str(WORKER), kind, str(tmp_path), n, str(COUNT), str(go)]
            for n in "ab"
        },
        go,
    )
    with SessionStore(make_backend(kind, tmp_path)) as store:
        items = asyncio.run(AstridSession("shared", store).get_items())
        rows = store.list_sessions()
    texts = [item["content"] for item in items]
    assert len(texts) == 2 * COUNT
    for name in ("a", "b"):
        assert [t for t in texts if t.startswith(f"{name}-")] == [
            f"{name}-{n}" for n in range(COUNT)
        ]
    assert [r.message_count for r in rows] == [2 * COUNT]
