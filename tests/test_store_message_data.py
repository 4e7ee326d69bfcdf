"""``SessionStore.load_message_data``: the stored JSON of a session's messages, on each backend."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from astrid import Message
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import InvalidSessionId
from astrid.store import SessionStore

FOREIGN = {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}


@pytest.fixture(params=["memory", "sqlite", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    backends = {
        "memory": MemoryBackend,
        "sqlite": lambda: SqliteBackend(tmp_path / "s.db"),
        "file": lambda: FileBackend(tmp_path / "sessions"),
    }
    with SessionStore(backends[request.param]()) as opened:
        yield opened


def test_the_json_as_stored_whole_or_a_tail(store: SessionStore) -> None:
    session = store.new_session()
    session.messages = [Message.user("hi"), Message.from_json(FOREIGN), Message.assistant("ok")]
    store.save(session)
    expected = [{"role": "user", "content": "hi"}, FOREIGN, {"role": "assistant", "content": "ok"}]
    assert store.load_message_data(session.id) == expected
    assert store.load_message_data(session.id, tail=2) == expected[1:]
    assert store.load_message_data(session.id, tail=0) == []
    assert asyncio.run(store.aload_message_data(session.id, tail=1)) == expected[2:]
    # What it returns is the caller's: changing it changes nothing stored.
    data = store.load_message_data(session.id)
    assert data is not None
    data[1]["name"] = "changed"
    assert store.load_message_data(session.id) == expected


def test_missing_bad_id_and_bad_tail(store: SessionStore) -> None:
    assert store.load_message_data("7c9e6679-7425-40de-944b-e07fc1f90ae7") is None
    with pytest.raises(InvalidSessionId):
        store.load_message_data("../etc/passwd")
    session = store.new_session()
    store.save(session)
    with pytest.raises(ValueError, match="tail must be >= 0"):
        store.load_message_data(session.id, tail=-1)
