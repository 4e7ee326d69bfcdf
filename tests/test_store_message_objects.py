"""The ``accepts_message_objects`` backend feature (``MessageObjectWriter``): the SQLite backend
gets the session's ``Message`` objects and encodes them itself (in the worker thread under
``asave``); a backend without the feature gets each message's JSON, and both store and load
exactly the same messages, or refuse the same ones alike."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from astrid.default_plugins.sqlite_storage import LAZY_ROWS, SqliteBackend
from astrid.errors import SerializationError
from astrid.messages import (
    ImagePart,
    Message,
    MessageRole,
    TextPart,
    ToolCall,
    ToolCallResult,
)
from astrid.offload import read_in_thread, write_in_thread, yielding
from astrid.session import AgentSession
from astrid.store import (
    MessageObjectWriter,
    SessionStore,
    message_data,
    message_problem,
    takes_message_objects,
)
from astrid.testing.conformance import _RecordingBackend
from astrid.testing.keyed_state import recorded_writes

BIG = 2**63 - 1
SMALL = -(2**63)


class Bare(_RecordingBackend):
    """The SQLite backend behind only the required ``StorageBackend`` members: no feature."""


def mix() -> list[Message]:
    """Every content kind, unicode of every width, the 64-bit integer bounds, verbatim JSON."""
    return [
        Message.system("système: 日本語 ✓ 🧪 e\u0301 \u200d tab\t newline\n quote\" back\\"),
        Message.user(""),
        Message.user("x" * 9000),
        Message.assistant_with_tools(
            [
                ToolCall(
                    id="c1",
                    name="fs:read",
                    arguments={"n": BIG, "m": SMALL, "f": 0.1, "ü": ["🧪", None, True, {}]},
                ),
                ToolCall(id="c2", name="x", arguments=[]),
            ]
        ),
        Message.tool_result(ToolCallResult.success("c1", "résultat 🧪")),
        Message.tool_result(ToolCallResult.error("c2", "")),
        Message(
            role=MessageRole.USER,
            content=[TextPart(text="voir 🖼"), ImagePart(data="AA==", media_type="image/png")],
        ),
        Message.from_json({"role": "critic", "content": "an unknown role"}),
        Message.from_json({"role": "user", "content": {"shape": "unknown", "n": BIG}}),
        Message.from_json({"role": "assistant", "content": "t", "extra": [1, 2]}),
        Message.from_json(["not", "an", "object"]),
    ]


def _session(count: int) -> AgentSession:
    session = AgentSession("system")
    kinds = mix()
    for i in range(count):
        session.add_message(kinds[i % len(kinds)])
    return session


def _rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(
            "SELECT seq, active, role, text, body FROM messages ORDER BY seq"
        ).fetchall()
    finally:
        conn.close()


def test_the_sqlite_backend_declares_the_feature_and_a_bare_one_does_not(tmp_path: Path) -> None:
    backend = SqliteBackend(tmp_path / "a.db")
    bare = Bare(SqliteBackend(tmp_path / "b.db"))
    assert isinstance(backend, MessageObjectWriter) and takes_message_objects(backend)
    assert not isinstance(bare, MessageObjectWriter) and not takes_message_objects(bare)


class TruthyObjects(SqliteBackend):
    accepts_message_objects = 1  # type: ignore[assignment]  # truthy, but not True


def test_only_the_value_true_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = TruthyObjects(tmp_path / "a.db")
    assert not takes_message_objects(backend)
    writes = recorded_writes(backend, monkeypatch)
    store = SessionStore(backend)
    session = _session(3)
    store.save(session)
    assert [type(m) for m in writes[0].messages] == [dict, dict, dict]


@pytest.mark.parametrize("count", [len(mix()), LAZY_ROWS + 7])
def test_objects_and_json_store_the_same_rows_and_load_the_same_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> None:
    with_objects = SqliteBackend(tmp_path / "objects.db")
    sent = recorded_writes(with_objects, monkeypatch)
    bare = Bare(SqliteBackend(tmp_path / "json.db"))
    session = _session(count)
    expected = [m.to_json() for m in session.messages]
    objects_store, json_store = SessionStore(with_objects), SessionStore(bare)
    objects_store.save(session)
    json_store.save(session)  # another store: a create there, with every message
    # one more append each, through the one-message path
    extra = Message.user("ω" * 3)
    objects = objects_store.load(session.id)
    jsons = json_store.load(session.id)
    assert objects is not None and jsons is not None
    for store, loaded in ((objects_store, objects), (json_store, jsons)):
        loaded.add_message(extra)
        store.save(loaded)

    assert all(isinstance(m, Message) for change in sent for m in change.messages)
    assert [type(m) for m in bare.writes[0].messages] == [type(e) for e in expected]
    assert bare.writes[0].messages == expected
    assert _rows(tmp_path / "objects.db") == _rows(tmp_path / "json.db")
    for store in (objects_store, json_store):
        again = store.load(session.id)
        assert again is not None
        assert [m.to_json() for m in again.messages] == [*expected, extra.to_json()]
        assert again.messages == [*session.messages, extra]
        assert [m.to_json() for m in store.history(session.id)] == [*expected, extra.to_json()]


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (Message.user("lone \ud800 surrogate"), "a lone surrogate (U+D800)"),
        (
            Message.assistant_with_tools([ToolCall(id="c", name="t", arguments={"n": BIG + 1})]),
            "$.content[0].arguments.n: an integer outside the 64-bit range",
        ),
        (
            Message.assistant_with_tools([ToolCall(id="c", name="t", arguments=[float("nan")])]),
            "nan, which JSON cannot hold",
        ),
        (Message.from_json({"role": "critic\udfff", "content": "x"}), "U+DFFF"),
    ],
)
def test_an_unstorable_message_is_refused_alike_and_nothing_is_written(
    tmp_path: Path, bad: Message, why: str
) -> None:
    errors = []
    for backend in (SqliteBackend(tmp_path / "a.db"), Bare(SqliteBackend(tmp_path / "b.db"))):
        store = SessionStore(backend)
        session = _session(2)
        session.add_message(bad)
        with pytest.raises(SerializationError) as caught:
            store.save(session)
        assert store.load(session.id) is None
        errors.append(str(caught.value).replace(session.id.bare, "<id>"))
    assert errors[0] == errors[1]
    assert "message 2 cannot be stored" in errors[0] and why in errors[0]
    assert message_problem(bad) == message_problem(bad.to_json())


def test_message_data_is_the_json_of_an_object_and_json_as_it_is() -> None:
    for message in mix():
        data = message.to_json()
        assert message_data(message) == data
        assert message_data(data) is data
        assert message_problem(message) is None


def test_asave_of_a_long_first_save_off_the_loop_loads_back_exactly(tmp_path: Path) -> None:
    async def run() -> list[Any]:
        store = SessionStore(SqliteBackend(tmp_path / "a.db"))
        session = _session(LAZY_ROWS * 5)
        await store.asave(session)
        loaded = await store.aload(session.id)
        assert loaded is not None
        return [m.to_json() for m in loaded.messages]

    assert asyncio.run(run()) == [m.to_json() for m in _session(LAZY_ROWS * 5).messages]


def test_yielding_gives_every_item_in_order_on_and_off_the_loop() -> None:
    items = list(range(5000))

    async def run() -> tuple[list[int], list[int], list[int]]:
        return (
            list(yielding(items)),
            await read_in_thread(lambda: list(yielding(items))),
            await write_in_thread(lambda: list(yielding(iter(items)))),
        )

    assert asyncio.run(run()) == (items, items, items)
    assert list(yielding(())) == []
