"""The Claude Agent SDK's own ``run_session_store_conformance`` against the adapter, on every
astrid backend (memory, file, SQLite, PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from astrid.store import SessionStore
from claude_agent_sdk.testing import run_session_store_conformance
from claude_agent_sdk.types import SessionStore as ClaudeSessionStore

from astrid_claude_agent_sdk import AstridTranscriptStore


def test_sdk_conformance(make_store: Callable[[], SessionStore]) -> None:
    def fresh() -> AstridTranscriptStore:
        return AstridTranscriptStore(make_store())

    # Every optional member is overridden, so the kit runs every contract (it skips none).
    for name in ("list_sessions", "list_session_summaries", "delete", "list_subkeys"):
        assert getattr(AstridTranscriptStore, name) is not getattr(ClaudeSessionStore, name)
    asyncio.run(run_session_store_conformance(fresh))
