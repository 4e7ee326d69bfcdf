"""``AstridSession`` against the SDK's ``Session`` protocol on every built-in backend."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from agents.memory import Session, SessionSettings
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import SerializationError
from astrid.store import SessionStore

from astrid_openai_agents import SDK_ID_KEY, AstridSession, astrid_session_id

# Items of the shapes the SDK stores: user text, an assistant output message, a function call
# and its output, a reasoning item, and an item type no version of astrid knows.
ITEMS: list[Any] = [
    {"content": "What is the weather in Paris?", "role": "user"},
    {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "look it up"}],
        "encrypted_content": "gAAAA-opaque",
    },
    {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
        "status": "completed",
    },
    {"type": "function_call_output", "call_id": "call_1", "output": "18 C, clear"},
    {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "18 C and clear.", "annotations": []}],
    },
    {"type": "future_item_kind", "payload": {"nested": [1, 2.5, None, True]}, "role": 7},
]


def test_is_an_agents_session(store: SessionStore) -> None:
    session = AstridSession("user-42", store)
    assert isinstance(session, Session)
    assert session.session_id == "user-42"
    assert session.astrid_id == astrid_session_id("user-42")


def test_items_round_trip_verbatim(store: SessionStore) -> None:
    async def scenario() -> None:
        session = AstridSession("conv-1", store)
        assert await session.get_items() == []
        await session.add_items(ITEMS[:3])
        await session.add_items(ITEMS[3:])
        await session.add_items([])
        assert await session.get_items() == ITEMS
        assert await session.get_items(limit=2) == ITEMS[-2:]
        assert await session.get_items(limit=0) == []
        assert await session.get_items(limit=-1) == ITEMS  # as SQLiteSession
        # A second adapter object (another process, a restart) reads the same items.
        assert await AstridSession("conv-1", store).get_items() == ITEMS
        # Another SDK session id is another astrid session.
        assert await AstridSession("conv-2", store).get_items() == []

    asyncio.run(scenario())


def test_session_settings_limit(store: SessionStore) -> None:
    async def scenario() -> None:
        session = AstridSession("s", store, session_settings=SessionSettings(limit=2))
        await session.add_items(ITEMS)
        assert await session.get_items() == ITEMS[-2:]
        assert await session.get_items(limit=4) == ITEMS[-4:]

    asyncio.run(scenario())


def test_pop_and_clear_keep_the_astrid_session(store: SessionStore) -> None:
    async def scenario() -> None:
        session = AstridSession("s", store)
        assert await session.pop_item() is None
        await session.add_items(ITEMS)
        assert await session.pop_item() == ITEMS[-1]
        assert await session.pop_item() == ITEMS[-2]
        assert await session.get_items() == ITEMS[:-2]
        await session.clear_session()
        assert await session.get_items() == []
        assert await session.pop_item() is None
        stored = store.load(session.astrid_id)
        assert stored is not None and stored.metadata.custom[SDK_ID_KEY] == "s"
        # The popped and cleared items are still in the session's history.
        assert [m.to_json() for m in store.history(session.astrid_id)][: len(ITEMS)] == ITEMS

    asyncio.run(scenario())


def test_listing_shows_title_and_count(store: SessionStore) -> None:
    async def scenario() -> None:
        await AstridSession("weather", store).add_items(ITEMS)
        await AstridSession("tools-only", store).add_items(ITEMS[2:4])
        await AstridSession("named", store, title="Support chat").add_items(ITEMS[:1])

    asyncio.run(scenario())
    rows = {row.id: row for row in store.list_sessions()}
    weather = rows[astrid_session_id("weather")]
    assert weather.title == "What is the weather in Paris?"
    assert weather.message_count == len(ITEMS)
    assert rows[astrid_session_id("tools-only")].title == "openai-agents tools-only"
    assert rows[astrid_session_id("tools-only")].message_count == 2
    assert rows[astrid_session_id("named")].title == "Support chat"


def test_an_astrid_uuid_is_used_as_it_is(store: SessionStore) -> None:
    existing = store.new_session()
    store.save(existing)
    session = AstridSession(existing.id.bare, store)
    assert session.astrid_id == existing.id.bare
    asyncio.run(session.add_items(ITEMS[:1]))
    loaded = store.load(existing.id)
    assert loaded is not None and [m.to_json() for m in loaded.messages] == ITEMS[:1]


def test_an_item_that_is_not_json_is_refused(store: SessionStore) -> None:
    session = AstridSession("bad", store)
    with pytest.raises(SerializationError, match=r"\$\.value: a object, which is not a JSON"):
        asyncio.run(session.add_items([{"type": "x", "value": object()}]))  # type: ignore[list-item]
    assert asyncio.run(session.get_items()) == []


def test_astrid_sessions_list_and_show(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "ASTRID_HOME": str(home)}
    env.pop("ASTRID_CONFIG", None)
    with SessionStore(SqliteBackend(_home_db(home))) as store:
        session = AstridSession("weather", store)
        asyncio.run(session.add_items(ITEMS))
    astrid = str(Path(sys.executable).with_name("astrid"))

    def run(*args: str) -> str:
        done = subprocess.run(
            [astrid, *args], env=env, capture_output=True, text=True, timeout=120, check=True
        )
        return done.stdout

    listed = json.loads(run("sessions", "list", "--json"))["sessions"]
    assert [(s["id"], s["title"], s["message_count"]) for s in listed] == [
        (session.astrid_id, "What is the weather in Paris?", len(ITEMS))
    ]
    shown = run("sessions", "show", session.astrid_id)
    assert "custom:          openai_agents.session_id = weather" in shown
    assert '"type":"function_call","id":"fc_1"' in shown


def _home_db(home: Path) -> Path:
    """The SQLite file of the default configuration in ``home`` (created 0700 like astrid)."""
    home.mkdir(mode=0o700)
    return home / "astrid.db"
