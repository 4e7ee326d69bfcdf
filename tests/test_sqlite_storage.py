"""The ``sqlite`` storage backend: real SQLite files, the memory backend's semantics."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
from pydantic import ValidationError

from astrid import AgentSession, Message, ToolCall
from astrid.default_plugins import sqlite_storage
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import (
    MIGRATIONS,
    SqliteBackend,
    SqliteOptions,
    format_timestamp,
)
from astrid.errors import (
    ConcurrencyError,
    InvalidKey,
    SchemaVersionError,
    SerializationError,
    SessionNotFound,
    StorageError,
)
from astrid.messages import ToolCallResult
from astrid.plugins import PluginContext
from astrid.store import SessionStore, SessionSummary, SessionWrite, StorageBackend

REPO = Path(__file__).resolve().parent.parent
HOSTILE = [
    "'; DROP TABLE sessions;--",
    "He said \"hi\" and 'bye'",
    "Robert'); DELETE FROM messages; --",
    "back\\slash %s %% ? ?1 :name @x $y",
    "ünïcødé ✓ 漢字 \U0001f600",
    "line\nbreak\ttab",
]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "home" / "astrid.db"


@pytest.fixture
def backend(db: Path) -> Iterator[SqliteBackend]:
    b = SqliteBackend(db)
    yield b
    b.close()


@pytest.fixture
def store(backend: SqliteBackend) -> SessionStore:
    return SessionStore(backend)


def _session(n: int = 3, *, title: str | None = None) -> AgentSession:
    session = AgentSession("You are helpful")
    session.metadata.title = title
    for i in range(n):
        session.add_message(
            Message.user(f"question {i}") if i % 2 == 0 else Message.assistant(f"answer {i}")
        )
    return session


def _texts(session: AgentSession | None) -> list[str | None]:
    assert session is not None
    return [m.text() for m in session.messages]


def _summary(
    sid: str,
    updated: datetime,
    *,
    workspace: str | None = None,
    title: str | None = None,
    count: int = 0,
) -> SessionSummary:
    return SessionSummary(
        id=sid,
        title=title,
        created_at=datetime(2024, 1, 1, tzinfo=UTC),
        updated_at=updated,
        message_count=count,
        token_count=7,
        workspace_path=workspace,
    )


def _create(
    b: StorageBackend, sid: str, updated: datetime, messages: list[Any] | None = None, **kw: Any
) -> int:
    msgs = messages if messages is not None else [{"role": "user", "content": "hi"}]
    return b.write(
        SessionWrite(
            session_id=sid,
            expected_revision=None,
            state={"id": sid, "n": 1},
            messages=msgs,
            base_count=0,
            replace=False,
            summary=_summary(sid, updated, **kw),
        )
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- round trips -------------------------------------------------------------------------------


def test_round_trip_through_the_store(store: SessionStore, tmp_path: Path) -> None:
    session = _session(4, title="Round trip")
    session.with_workspace(tmp_path)
    session.with_model("claude-x")
    session.add_message(
        Message.assistant_with_tools([ToolCall(id="c1", name="fs:read", arguments={"p": "/x"})])
    )
    session.add_message(Message.tool_result(ToolCallResult.success("c1", "contents")))
    session.metadata.custom["k"] = "v"
    assert store.save(session) == 1
    loaded = store.load(session.id)
    assert loaded is not None
    mine, original = loaded.to_document().to_data(), session.to_document().to_data()
    for data in (mine, original):
        data["budget_snapshot"].pop("last_updated")  # the time of the snapshot
    assert mine == original
    assert store.revision_of(loaded) == 1
    [row] = store.list_sessions()
    assert row.title == "Round trip"
    assert row.message_count == 6
    assert row.model == "claude-x"
    assert row.workspace_path == str(tmp_path.absolute())
    assert row.revision == 1


def test_incremental_saves_and_reopen(db: Path) -> None:
    store = SessionStore(SqliteBackend(db))
    session = _session(2)
    store.save(session)
    for i in range(5):
        session.add_message(Message.user(f"more {i}"))
        store.save(session)
    assert store.revision_of(session) == 6
    store.close()
    with SessionStore(SqliteBackend(db)) as again:
        loaded = again.load(session.id)
        assert _texts(loaded) == _texts(session)
        assert loaded is not None and again.revision_of(loaded) == 6
        assert again.count() == 1
        assert len(again.history(session.id)) == 7


def test_load_missing_is_none(store: SessionStore) -> None:
    assert store.load("6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f") is None
    assert store.backend.history("6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f") == []
    assert store.delete("6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f") is False


# -- revisions ---------------------------------------------------------------------------------


def test_stale_revision_is_a_concurrency_error(store: SessionStore) -> None:
    session = _session(2)
    store.save(session)
    first = store.load(session.id)
    second = store.load(session.id)
    assert first is not None and second is not None
    first.add_message(Message.user("from first"))
    store.save(first)
    second.add_message(Message.user("from second"))
    with pytest.raises(
        ConcurrencyError, match=r"stale save \(based on revision 1, stored revision is 2\)"
    ):
        store.save(second)
    assert _texts(store.load(session.id))[-1] == "from first"


def test_create_twice_is_a_concurrency_error(backend: SqliteBackend) -> None:
    sid = "6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f"
    _create(backend, sid, datetime.now(UTC))
    with pytest.raises(ConcurrencyError, match="stored revision is 1"):
        _create(backend, sid, datetime.now(UTC))


def test_base_count_mismatch_is_a_concurrency_error(backend: SqliteBackend) -> None:
    sid = "6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f"
    _create(backend, sid, datetime.now(UTC))
    change = SessionWrite(
        sid, 1, {}, [{"role": "user", "content": "x"}], 5, False, _summary(sid, datetime.now(UTC))
    )
    with pytest.raises(ConcurrencyError, match=r"based on 5 messages, 1 stored"):
        backend.write(change)
    record = backend.load(sid)
    assert record is not None and record.revision == 1 and record.message_count == 1


def test_append_bumps_revision_and_makes_loaded_copies_stale(store: SessionStore) -> None:
    session = _session(1)
    store.save(session)
    assert store.append_messages(session.id, [Message.user("a"), Message.user("b")]) == 2
    session.add_message(Message.user("late"))
    with pytest.raises(ConcurrencyError):
        store.save(session)
    assert _texts(store.load(session.id)) == ["question 0", "a", "b"]
    assert store.list_sessions()[0].message_count == 3


def test_append_to_missing_session(backend: SqliteBackend) -> None:
    with pytest.raises(SessionNotFound, match="not found in the SQLite store"):
        backend.append("6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f", [{"role": "user", "content": "x"}])


def test_append_with_summary_updates_listing_columns(backend: SqliteBackend) -> None:
    sid = "6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f"
    _create(backend, sid, datetime(2024, 1, 1, tzinfo=UTC))
    before = datetime.now(UTC)
    revision, count = backend.append(
        sid, [{"role": "user", "content": "x"}], _summary(sid, before, title="new title")
    )
    assert (revision, count) == (2, 2)
    [row] = backend.list_sessions()
    assert row.title == "new title" and row.message_count == 2 and row.revision == 2
    assert row.updated_at >= before


# -- replace, history, tails ------------------------------------------------------------------


def test_replace_keeps_history(store: SessionStore) -> None:
    session = _session(6)
    store.save(session)
    session.messages = [Message.system("summary of 6 messages"), session.messages[-1]]
    store.save(session)
    loaded = store.load(session.id)
    assert _texts(loaded) == ["summary of 6 messages", "answer 5"]
    history = store.backend.history(session.id.bare)
    assert [h.seq for h in history] == list(range(8))
    assert [h.active for h in history] == [False] * 6 + [True] * 2
    assert [m.text() for m in store.history(session.id)][:6] == _texts(_session(6))
    # appends after a replace land after the new active messages
    assert loaded is not None
    loaded.add_message(Message.user("next"))
    store.save(loaded)
    assert _texts(store.load(session.id, tail=2)) == ["answer 5", "next"]
    assert _texts(store.load(session.id)) == ["summary of 6 messages", "answer 5", "next"]
    # a second replace
    loaded.messages = [Message.system("summary 2")]
    store.save(loaded)
    assert _texts(store.load(session.id)) == ["summary 2"]
    assert [h.active for h in store.backend.history(session.id.bare)].count(True) == 1
    assert len(store.backend.history(session.id.bare)) == 10


def test_tail_load(store: SessionStore) -> None:
    session = _session(50)
    store.save(session)
    tail = store.load(session.id, tail=5)
    assert _texts(tail) == _texts(session)[-5:]
    record = store.backend.load(session.id.bare, tail=5)
    assert record is not None
    assert (record.message_offset, record.message_count) == (45, 50)
    assert tail is not None
    tail.add_message(Message.user("after tail"))
    store.save(tail)
    full = store.load(session.id)
    assert len(_texts(full)) == 51 and _texts(full)[-1] == "after tail"
    assert _texts(store.load(session.id, tail=500)) == _texts(full)
    empty = store.backend.load(session.id.bare, tail=0)
    assert empty is not None and empty.messages == [] and empty.message_offset == 51


def test_delete_removes_messages_and_row_only(store: SessionStore) -> None:
    session = _session(3)
    store.save(session)
    store.deferred_queue_kv(session.id).set("k", b"v")
    assert store.delete(session.id) is True
    assert store.load(session.id) is None
    assert store.backend.history(session.id.bare) == []
    assert store.count() == 0
    assert store.deferred_queue_kv(session.id).get("k") == b"v"
    assert store.delete(session.id) is False
    store.save(session_again := AgentSession("x", session_id=session.id))
    assert store.load(session_again.id) is not None


# -- listing -----------------------------------------------------------------------------------


def _populate(b: StorageBackend) -> None:
    base = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    for i in range(30):
        sid = f"00000000-0000-4000-8000-{i:012d}"
        updated = base + timedelta(seconds=i // 3, microseconds=(i % 2) * 7)
        _create(b, sid, updated, workspace=f"/ws/{i % 3}", title=f"t{i}")


def test_listing_order_paging_and_workspace_match_the_memory_backend(
    backend: SqliteBackend,
) -> None:
    memory = MemoryBackend()
    _populate(backend)
    _populate(memory)
    for kwargs in (
        {},
        {"limit": 7},
        {"limit": 7, "offset": 7},
        {"limit": 50, "offset": 28},
        {"limit": 0},
        {"workspace": "/ws/1"},
        {"workspace": "/ws/1", "limit": 3, "offset": 2},
        {"workspace": "/nope"},
    ):
        assert backend.list_sessions(**kwargs) == memory.list_sessions(**kwargs), kwargs
    assert backend.count_sessions() == 30
    assert backend.count_sessions(workspace="/ws/2") == 10
    assert backend.count_sessions(workspace="/nope") == 0
    rows = backend.list_sessions(limit=100)
    keys = [(-r.updated_at.timestamp(), r.id) for r in rows]
    assert keys == sorted(keys)


def test_listing_newest_activity_first_through_the_store(store: SessionStore) -> None:
    a, b, c = _session(1, title="a"), _session(1, title="b"), _session(1, title="c")
    for s in (a, b, c):
        store.save(s)
    a.add_message(Message.user("a is active again"))
    store.save(a)
    assert [r.title for r in store.list_sessions()] == ["a", "c", "b"]
    most = store.most_recent()
    assert most is not None and most.id == a.id


def test_list_does_not_decode_state_and_bad_rows_stay_local(
    backend: SqliteBackend, db: Path
) -> None:
    _populate(backend)
    bad = "00000000-0000-4000-8000-000000000004"
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE sessions SET state = ? WHERE id = ?", ("{not json", bad))
    assert len(backend.list_sessions(limit=100)) == 30
    with pytest.raises(SerializationError) as info:
        backend.load(bad)
    assert str(db) in str(info.value) and bad in str(info.value)
    assert backend.load("00000000-0000-4000-8000-000000000005") is not None


def test_non_object_state_is_a_serialization_error(backend: SqliteBackend, db: Path) -> None:
    sid = "6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f"
    _create(backend, sid, datetime.now(UTC))
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE sessions SET state = '[1, 2]'")
    with pytest.raises(SerializationError, match="not an object"):
        backend.load(sid)


def test_prune_by_last_activity(store: SessionStore) -> None:
    _populate(store.backend)
    now = datetime(2025, 3, 1, 12, 0, 5, tzinfo=UTC)
    doomed = store.prune(older_than=timedelta(seconds=1), now=now)
    assert len(doomed) == 12
    assert store.count() == 18


# -- key-value store ---------------------------------------------------------------------------


def test_kv_operations(backend: SqliteBackend, db: Path) -> None:
    kv = backend.kv()
    assert kv.get("ns", "k") is None
    kv.set("ns", "b", b"\x00\xff binary")
    kv.set("ns", "a", b"1")
    kv.set("ns", "a", b"2")
    kv.set("other", "a", b"x")
    assert kv.get("ns", "a") == b"2"
    assert kv.get("ns", "b") == b"\x00\xff binary"
    assert kv.exists("ns", "a") and not kv.exists("ns", "zz")
    assert kv.list_keys("ns") == ["a", "b"]
    assert kv.delete("ns", "a") is True and kv.delete("ns", "a") is False
    kv.set("ns", "c", b"3")
    assert kv.clear_namespace("ns") == 2
    assert kv.clear_namespace("ns") == 0
    assert kv.list_keys("ns") == []
    assert kv.get("other", "a") == b"x"
    backend.close()
    again = SqliteBackend(db)
    assert again.kv().get("other", "a") == b"x"
    again.close()


def test_kv_list_keys_sorted_like_python(backend: SqliteBackend) -> None:
    keys = ["b", "a", "B", "é", "z", "Z9", "10", "9", "\U0001f600", "ﬀ"]
    for key in keys:
        backend.kv().set("ns", key, b"")
    assert backend.kv().list_keys("ns") == sorted(keys)


@pytest.mark.parametrize(
    ("namespace", "key"), [("", "k"), ("ns", ""), ("n\0s", "k"), ("ns", "k\0")]
)
def test_kv_invalid_names(backend: SqliteBackend, namespace: str, key: str) -> None:
    kv = backend.kv()
    with pytest.raises(InvalidKey):
        kv.set(namespace, key, b"x")
    with pytest.raises(InvalidKey):
        kv.get(namespace, key)
    with pytest.raises(InvalidKey):
        kv.delete(namespace, key)
    with pytest.raises(InvalidKey):
        kv.exists(namespace, key)


def test_workspace_state_through_the_store(store: SessionStore, tmp_path: Path) -> None:
    scoped = store.kv("scope")
    scoped.set_json("doc", {"a": [1, 2, "ü"]})
    assert scoped.get_json("doc") == {"a": [1, 2, "ü"]}
    state = store.load_workspace_state(tmp_path)
    assert state.allowances == [] and state.budget is None
    store.save_workspace_state(tmp_path, state)
    assert store.load_workspace_state(tmp_path).allowances == []


# -- hostile input -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_titles_and_messages_are_stored_verbatim(store: SessionStore, text: str) -> None:
    session = _session(0, title=text)
    session.add_message(Message.user(text))
    session.metadata.custom[text] = text
    store.save(session)
    loaded = store.load(session.id)
    assert loaded is not None
    assert loaded.metadata.title == text
    assert loaded.metadata.custom == {text: text}
    assert _texts(loaded) == [text]
    assert store.list_sessions()[0].title == text
    assert store.count() == 1


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_ids_workspaces_and_kv_names(backend: SqliteBackend, text: str) -> None:
    _create(backend, text, datetime.now(UTC), workspace=text, title=text)
    record = backend.load(text)
    assert record is not None and record.state == {"id": text, "n": 1}
    [row] = backend.list_sessions(workspace=text)
    assert (row.id, row.title, row.workspace_path) == (text, text, text)
    assert backend.append(text, [{"role": "user", "content": text}]) == (2, 2)
    assert backend.history(text)[-1].message == {"role": "user", "content": text}
    backend.kv().set(text, text, text.encode())
    assert backend.kv().get(text, text) == text.encode()
    assert backend.kv().list_keys(text) == [text]
    assert backend.delete(text) is True
    assert backend.count_sessions() == 0
    assert backend.kv().clear_namespace(text) == 1


def test_unusual_json_values_round_trip(backend: SqliteBackend) -> None:
    sid = "6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f"
    odd: list[Any] = [
        {
            "role": "user",
            "content": "x",
            "extra": {"big": 2**63 - 1, "f": 1e-7, "u": "\u2028é\x00"},
        },
        {"role": "future-role", "content": {"kind": "hologram"}},
        "just a string",
        42,
        None,
        [1, [2, {"3": True}]],
    ]
    _create(backend, sid, datetime.now(UTC), messages=odd)
    record = backend.load(sid)
    assert record is not None
    assert record.messages == odd


@pytest.mark.parametrize(
    "value", [float("nan"), float("-inf"), 2**70, "\ud800"], ids=["nan", "inf", "big", "surrogate"]
)
def test_json_no_store_can_keep_is_refused_not_stored_as_bare_text(
    backend: SqliteBackend, value: Any
) -> None:
    """NaN was stored as bare ``NaN``, which ``json_extract`` and ``astrid migrate`` refuse."""
    sid = "6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f"
    with pytest.raises(SerializationError, match=f"session {sid}: message 1 cannot be stored"):
        _create(
            backend, sid, datetime.now(UTC), messages=["ok", {"role": "tool", "content": [value]}]
        )
    assert backend.load(sid) is None


# -- files, permissions, schema ------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o000])
def test_private_permissions(tmp_path: Path, umask: int) -> None:
    db = tmp_path / "a" / "b" / "astrid.db"
    old = os.umask(umask)
    try:
        backend = SqliteBackend(db)
        store = SessionStore(backend)
        session = _session(2)
        store.save(session)
        session.add_message(Message.user("x"))
        store.save(session)
        for path in (tmp_path / "a", tmp_path / "a" / "b"):
            assert _mode(path) == 0o700, path
        sidecars = [db.with_name(db.name + s) for s in ("-wal", "-shm")]
        assert all(p.exists() for p in sidecars)
        for path in [db, *sidecars]:
            assert _mode(path) == 0o600, path
        backend.close()
        # a second process-like opener recreating the sidecars keeps them private
        for path in sidecars:
            if path.exists():
                path.unlink()
        again = SqliteBackend(db)
        again.kv().set("ns", "k", b"v")
        for path in sidecars:
            assert _mode(path) == 0o600, path
        again.close()
    finally:
        os.umask(old)


def test_existing_directory_permissions_are_left_alone(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    SqliteBackend(tmp_path / "astrid.db").close()
    assert _mode(tmp_path) == 0o755


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "astrid.db"
    path.write_text("this is a text file, not a database\n" * 20)
    with pytest.raises(StorageError, match="is not an astrid SQLite database") as info:
        SqliteBackend(path)
    assert str(path) in str(info.value)


def test_a_directory_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "astrid.db"
    path.mkdir()
    with pytest.raises(StorageError, match="is not an astrid SQLite database"):
        SqliteBackend(path)


def test_another_applications_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT)")
    raw.close()
    with pytest.raises(StorageError, match="is not an astrid SQLite database") as info:
        SqliteBackend(path)
    assert str(path) in str(info.value)
    with sqlite3.connect(path) as raw:
        names = [r[0] for r in raw.execute("SELECT name FROM sqlite_master")]
    raw.close()
    assert names == ["accounts"]


def test_empty_file_becomes_a_database(tmp_path: Path) -> None:
    path = tmp_path / "astrid.db"
    path.touch()
    backend = SqliteBackend(path)
    assert backend.schema_version() == len(MIGRATIONS)
    backend.close()


def test_migrations_recorded_by_name_and_idempotent(db: Path) -> None:
    backend = SqliteBackend(db)
    applied = backend.migrations()
    assert [name for name, _ in applied] == sorted(name for name, _ in MIGRATIONS)
    assert backend.schema_version() == len(MIGRATIONS)
    backend.close()
    again = SqliteBackend(db)
    assert again.migrations() == applied
    assert again.schema_version() == len(MIGRATIONS)
    again.close()
    with sqlite3.connect(db) as raw:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = raw.execute("PRAGMA user_version").fetchone()[0]
        mode = raw.execute("PRAGMA journal_mode").fetchone()[0]
    raw.close()
    assert {"sessions", "messages", "kv", "cap_tokens", "_astrid_migrations"} <= tables
    assert version == len(MIGRATIONS) and mode == "wal"


def test_missing_migrations_are_applied_in_place(tmp_path: Path) -> None:
    path = tmp_path / "astrid.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("CREATE TABLE _astrid_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    name, migration = MIGRATIONS[0]
    migration(raw)
    raw.execute("INSERT INTO _astrid_migrations VALUES (?, ?)", (name, "2020-01-01T00:00:00Z"))
    raw.execute("PRAGMA user_version = 1")
    raw.execute(
        "INSERT INTO sessions VALUES ('x', 1, '{}', NULL, ?, ?, 0, 0, NULL, NULL, NULL, 0)",
        ("2020-01-01T00:00:00.000000Z", "2020-01-01T00:00:00.000000Z"),
    )
    raw.close()
    backend = SqliteBackend(path)
    assert backend.schema_version() == len(MIGRATIONS)
    assert backend.migrations()[0] == (name, "2020-01-01T00:00:00Z")
    assert [r.id for r in backend.list_sessions()] == ["x"]
    backend.kv().set("ns", "k", b"v")
    backend.close()


def test_newer_user_version_is_refused(db: Path) -> None:
    SqliteBackend(db).close()
    with sqlite3.connect(db) as raw:
        raw.execute("PRAGMA user_version = 99")
    raw.close()
    with pytest.raises(
        SchemaVersionError,
        match=rf"written by a newer astrid \(schema 99, this astrid knows {len(MIGRATIONS)}\)",
    ) as info:
        SqliteBackend(db)
    assert str(db) in str(info.value)


def test_unknown_migration_name_is_refused(db: Path) -> None:
    SqliteBackend(db).close()
    with sqlite3.connect(db) as raw:
        raw.execute(
            "INSERT INTO _astrid_migrations VALUES ('0099_from_the_future', '2030-01-01T00:00:00Z')"
        )
    raw.close()
    known = len(MIGRATIONS)
    with pytest.raises(
        SchemaVersionError, match=rf"schema {known + 1}, this astrid knows {known}.*0099_from_the"
    ):
        SqliteBackend(db)


def test_closed_backend_raises_storage_error(db: Path) -> None:
    backend = SqliteBackend(db)
    backend.close()
    backend.close()
    with pytest.raises(StorageError, match="is closed"):
        backend.load("x")


def test_storage_is_json_text_readable_by_sqlite(store: SessionStore, db: Path) -> None:
    session = _session(2, title="json")
    store.save(session)
    with sqlite3.connect(db) as raw:
        title = raw.execute(
            "SELECT json_extract(state, '$.metadata.title') FROM sessions"
        ).fetchone()
        roles = raw.execute(
            "SELECT json_extract(body, '$.role') FROM message_json ORDER BY seq"
        ).fetchall()
        types = raw.execute("SELECT typeof(state), typeof(updated_at) FROM sessions").fetchone()
    raw.close()
    assert title == ("json",)
    assert roles == [("user",), ("assistant",)]
    assert types == ("text", "text")


def test_timestamps_are_fixed_width_and_sortable() -> None:
    a = format_timestamp(datetime(2025, 1, 1, tzinfo=UTC))
    b = format_timestamp(datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=UTC))
    c = format_timestamp(datetime(2025, 1, 1, 1, tzinfo=UTC) + timedelta(hours=-1, seconds=1))
    assert a == "2025-01-01T00:00:00.000000Z"
    assert len(a) == len(b) == len(c) and a < b < c


def test_timestamps_match_isoformat_whatever_came_before() -> None:
    # format_timestamp keeps the text of the last second: a neighbour in time, in another zone
    # or in another century must never get it.
    east = timezone(timedelta(hours=5, minutes=30))
    base = datetime(2025, 6, 30, 23, 59, 59, 999_999, tzinfo=UTC)
    values = [
        base, base, base.replace(microsecond=0), base + timedelta(microseconds=1),
        base.astimezone(east), base.replace(tzinfo=None), base.replace(year=999),
        base.replace(minute=58), base.replace(hour=22), base.replace(day=29),
        base.replace(month=5), base.replace(year=2024), datetime(1, 1, 1, tzinfo=UTC), base,
    ]
    for value in values:
        utc = value.astimezone(UTC) if value.tzinfo is not None else value
        expected = utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
        assert format_timestamp(value) == expected


# -- plugin registration and options -----------------------------------------------------------


def test_hookimpl_registers_sqlite(tmp_path: Path) -> None:
    found: dict[str, Any] = {}

    def register(name: str, factory: Any, options: Any, description: str = "") -> None:
        found[name] = (factory, options)

    sqlite_storage.register_storage_backends(register)
    factory, options_model = found["sqlite"]
    assert options_model is SqliteOptions
    backend = factory(SqliteOptions(), PluginContext(home=tmp_path))
    assert isinstance(backend, SqliteBackend) and isinstance(backend, StorageBackend)
    assert backend.path == tmp_path / "astrid.db"
    backend.close()
    custom = factory(
        SqliteOptions(path="sub/x.db", busy_timeout_ms=10, synchronous="FULL"),
        PluginContext(home=tmp_path),
    )
    assert custom.path == tmp_path / "sub" / "x.db"
    assert custom.synchronous == "FULL" and custom.busy_timeout_ms == 10
    custom.close()


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="synchronous"):
        SqliteBackend(tmp_path / "x.db", synchronous=cast(Any, "OFF"))
    with pytest.raises(StorageError, match="busy_timeout_ms"):
        SqliteBackend(tmp_path / "x.db", busy_timeout_ms=-1)
    with pytest.raises(StorageError, match="wal_autocheckpoint"):
        SqliteBackend(tmp_path / "x.db", wal_autocheckpoint=-1)
    assert not (tmp_path / "x.db").exists()


def test_options_are_validated() -> None:
    with pytest.raises(ValidationError):
        SqliteOptions.model_validate({"journal": "DELETE"})
    with pytest.raises(ValidationError):
        SqliteOptions.model_validate({"synchronous": "OFF"})
    with pytest.raises(ValidationError):
        SqliteOptions.model_validate({"busy_timeout_ms": -1})
    with pytest.raises(ValidationError):
        SqliteOptions.model_validate({"wal_autocheckpoint": -5})


@pytest.mark.parametrize("sync", ["NORMAL", "FULL"])
def test_synchronous_setting_is_applied(tmp_path: Path, sync: Any) -> None:
    backend = SqliteBackend(tmp_path / "s.db", synchronous=sync)
    level = backend._run(lambda c: c.execute("PRAGMA synchronous").fetchone()[0], "single")
    assert level == {"NORMAL": 1, "FULL": 2}[sync]
    backend.close()


def _wal_pages(backend: SqliteBackend) -> int:
    pages = backend._run(lambda c: c.execute("PRAGMA wal_autocheckpoint").fetchone()[0], "single")
    return int(pages)


def test_wal_autocheckpoint_setting_is_applied(tmp_path: Path) -> None:
    default = SqliteBackend(tmp_path / "d.db")
    assert _wal_pages(default) == sqlite_storage.DEFAULT_WAL_AUTOCHECKPOINT == 2000
    default.close()
    factory_made = sqlite_storage._create(
        SqliteOptions(path="c.db", wal_autocheckpoint=500), PluginContext(home=tmp_path)
    )
    assert _wal_pages(factory_made) == 500
    factory_made.close()


def test_wal_autocheckpoint_bounds_the_log(tmp_path: Path) -> None:
    """With checkpoints at 50 pages the log stays small; with them off it keeps every page."""
    sizes = {}
    for pages in (50, 0):
        backend = SqliteBackend(tmp_path / f"w{pages}.db", wal_autocheckpoint=pages)
        store = SessionStore(backend)
        session = store.new_session("s")
        for i in range(200):
            session.add_message(Message.user("x" * 3000 + str(i)))
            store.save(session)
        sizes[pages] = (tmp_path / f"w{pages}.db-wal").stat().st_size
        assert len(store.load(session.id).messages) == 200
        store.close()
    assert sizes[50] < 120 * 4096 < 400 * 4096 < sizes[0]


# -- concurrency -------------------------------------------------------------------------------


def test_lock_held_beyond_busy_timeout_is_retried(db: Path) -> None:
    backend = SqliteBackend(db, busy_timeout_ms=10)
    sid = "6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f"
    _create(backend, sid, datetime.now(UTC))
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    timer = threading.Timer(0.15, lambda: other.execute("COMMIT"))
    timer.start()
    try:
        assert backend.append(sid, [{"role": "user", "content": "after the lock"}]) == (2, 2)
    finally:
        timer.join()
        other.close()
    backend.close()


def test_lock_never_released_is_a_storage_error(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_storage, "BUSY_RETRIES", 2)
    backend = SqliteBackend(db, busy_timeout_ms=5)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageError, match="locked") as info:
            backend.kv().set("ns", "k", b"v")
        assert str(db) in str(info.value)
        assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    finally:
        other.execute("ROLLBACK")
        other.close()
    backend.kv().set("ns", "k", b"v")
    backend.close()


def test_threads_share_one_backend(store: SessionStore) -> None:
    session = _session(0)
    store.save(session)
    errors: list[BaseException] = []

    def writer(tag: str) -> None:
        try:
            for i in range(50):
                store.append_messages(session.id, [Message.user(f"{tag}-{i}")])
                store.list_sessions()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    texts = _texts(store.load(session.id))
    assert len(texts) == 200 and len(set(texts)) == 200
    for n in range(4):
        assert [t for t in texts if t and t.startswith(f"t{n}-")] == [
            f"t{n}-{i}" for i in range(50)
        ]


CRASHER = textwrap.dedent(
    """
    import os, sys
    from astrid import Message
    from astrid.default_plugins.sqlite_storage import SqliteBackend
    from astrid.store import SessionStore

    db, sid = sys.argv[1], sys.argv[2]
    store = SessionStore(SqliteBackend(db))
    store.append_messages(sid, [Message.user("committed")])

    def crash(*args, **kwargs):
        os._exit(3)  # die inside the transaction: messages inserted, row not yet updated

    SqliteBackend._insert = staticmethod(crash)
    store.append_messages(sid, [Message.user("never committed")])
    """
)


def test_a_crash_mid_save_leaves_the_old_state(tmp_path: Path) -> None:
    db = tmp_path / "astrid.db"
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    with SessionStore(SqliteBackend(db)) as store:
        session = _session(2)
        store.save(session)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(script), str(db), session.id.bare],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert db.with_name(db.name + "-wal").exists()  # the crashed writer never checkpointed
    with SessionStore(SqliteBackend(db)) as store:
        loaded = store.load(session.id)
        assert _texts(loaded) == ["question 0", "answer 1", "committed"]
        assert len(store.history(session.id)) == 3
        assert loaded is not None and store.revision_of(loaded) == 2
        loaded.add_message(Message.user("after the crash"))
        assert store.save(loaded) == 3
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    raw.close()


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from astrid import Message
    from astrid.default_plugins.sqlite_storage import SqliteBackend
    from astrid.store import SessionStore

    db, sid, tag, go = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])
    store = SessionStore(SqliteBackend(db))
    Path(f"{go}.{tag}").touch()
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    for i in range(200):
        store.append_messages(sid, [Message.user(f"{tag}-{i}")])
        if i % 4 == 0:
            time.sleep(0.001)  # let the other writer in now and then, as real turns do
    store.close()
    """
)


@pytest.mark.parametrize("shared", [True, False], ids=["same-session", "distinct-sessions"])
def test_two_processes_append_concurrently(tmp_path: Path, shared: bool) -> None:
    db = tmp_path / "astrid.db"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    go = tmp_path / "go"
    with SessionStore(SqliteBackend(db)) as store:
        sessions = [_session(1), _session(1)]
        for s in sessions:
            store.save(s)
    targets = [sessions[0].id.bare] * 2 if shared else [s.id.bare for s in sessions]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(db), sid, f"p{n}", str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n, sid in enumerate(targets)
    ]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
        Path(f"{go}.p{n}").exists() for n in range(len(procs))
    ):
        time.sleep(0.005)
    go.touch()
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert err == ""
    with SessionStore(SqliteBackend(db)) as store:
        for sid in set(targets):
            texts = _texts(store.load(sid))
            assert texts[0] == "question 0"
            written = texts[1:]
            assert len(written) == len(set(written)) == 200 * targets.count(sid)
            for n, target in enumerate(targets):
                if target == sid:
                    assert [t for t in written if t and t.startswith(f"p{n}-")] == [
                        f"p{n}-{i}" for i in range(200)
                    ]
            history = store.backend.history(sid)
            assert [h.seq for h in history] == list(range(len(texts)))
            [row] = [r for r in store.list_sessions() if r.id == sid]
            assert row.message_count == len(texts)
            assert row.revision == 1 + 200 * targets.count(sid)


# -- a differential check against the reference backend ---------------------------------------


def test_same_results_as_the_memory_backend(backend: SqliteBackend) -> None:
    memory = MemoryBackend()
    sid = "6f2c1c1e-8c1b-4d4e-9f39-1c2b3a4d5e6f"
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    m = [{"role": "user", "content": f"m{i}"} for i in range(10)]
    steps: list[Any] = [
        SessionWrite(sid, None, {"s": 0}, m[:3], 0, False, _summary(sid, t0)),
        SessionWrite(sid, 1, {"s": 1}, m[3:5], 3, False, _summary(sid, t0 + timedelta(1))),
        ("append", m[5:6]),
        SessionWrite(sid, 3, {"s": 2}, m[6:8], 0, True, _summary(sid, t0 + timedelta(2))),
        SessionWrite(sid, 4, {"s": 3}, m[8:9], 2, False, _summary(sid, t0 + timedelta(3))),
        SessionWrite(sid, 5, {"s": 4}, [], 0, True, _summary(sid, t0 + timedelta(4))),
        SessionWrite(sid, 6, {"s": 5}, m[9:], 0, False, _summary(sid, t0 + timedelta(5))),
    ]
    for step in steps:
        if isinstance(step, SessionWrite):
            assert backend.write(step) == memory.write(step)
        else:
            assert backend.append(sid, step[1])[1] == memory.append(sid, step[1])[1]
        for tail in (None, 0, 1, 2, 100):
            mine, ref = backend.load(sid, tail=tail), memory.load(sid, tail=tail)
            assert mine is not None and ref is not None
            assert (
                mine.state,
                mine.messages,
                mine.message_offset,
                mine.message_count,
                mine.revision,
            ) == (ref.state, ref.messages, ref.message_offset, ref.message_count, ref.revision), (
                step,
                tail,
            )
        assert backend.history(sid) == memory.history(sid)
    assert json.dumps([h.message for h in backend.history(sid)]) == json.dumps(m)


def test_text_messages_are_columns_and_other_messages_json(store: SessionStore, db: Path) -> None:
    session = AgentSession("p")
    call = ToolCall(id="c1", name="fs:read", arguments={"path": "a"})
    session.add_message(Message.user("plain 'text' \u00e9"))
    session.add_message(Message.assistant_with_tools([call]))
    session.add_message(Message.tool_result(ToolCallResult.success("c1", "data")))
    store.save(session)
    session.add_message(Message.assistant("one more, through the append trigger"))
    store.save(session)
    with sqlite3.connect(db) as raw:
        rows = raw.execute("SELECT role, text, body FROM messages ORDER BY seq").fetchall()
        as_json = [json.loads(r[0]) for r in raw.execute("SELECT body FROM message_json")]
    raw.close()
    assert rows[0] == ("user", "plain 'text' \u00e9", None)
    assert rows[1][:2] == (None, None) and json.loads(rows[1][2])["content"][0]["id"] == "c1"
    assert rows[3] == ("assistant", "one more, through the append trigger", None)
    assert as_json == [m.to_json() for m in session.messages]
    loaded = store.load(session.id)
    assert loaded is not None
    assert [m.to_json() for m in loaded.messages] == [m.to_json() for m in session.messages]


def test_foreign_text_shapes_keep_their_json(store: SessionStore, db: Path) -> None:
    """Only ``{"role", "content": str}`` becomes columns; other shapes stay JSON, unchanged."""
    shapes = [
        {"content": "text first", "role": "user"},
        {"role": "user", "content": "x", "name": "extra key"},
        {"role": "oracle", "content": "an unknown role is still text"},
    ]
    session = AgentSession("p")
    for shape in shapes:
        session.add_message(Message.from_json(shape))
    store.save(session)
    with sqlite3.connect(db) as raw:
        rows = raw.execute("SELECT role, text, body FROM messages ORDER BY seq").fetchall()
    raw.close()
    assert [r[2] is None for r in rows] == [True, False, True]
    loaded = store.load(session.id)
    assert loaded is not None
    got = [m.to_json() for m in loaded.messages]
    assert got == shapes


def test_schema_3_database_is_migrated_with_its_messages(tmp_path: Path) -> None:
    """A file written before the text columns (every message JSON in ``body``) still loads."""
    path = tmp_path / "astrid.db"
    session = _session(4, title="old")
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("CREATE TABLE _astrid_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for index, (name, migration) in enumerate(MIGRATIONS[:3], start=1):
        migration(raw)
        raw.execute("INSERT INTO _astrid_migrations VALUES (?, ?)", (name, "2026-01-01T00:00:00Z"))
        raw.execute(f"PRAGMA user_version = {index:d}")
    state = session.state_data()
    raw.execute(
        "INSERT INTO sessions VALUES (?, 7, ?, 'old', ?, ?, 4, 0, NULL, NULL, NULL, 6)",
        (
            session.id.bare,
            json.dumps(state),
            "2026-01-01T00:00:00.000000Z",
            "2026-01-02T00:00:00.000000Z",
        ),
    )
    archived = {"role": "user", "content": "replaced long ago"}
    raw.execute(
        "INSERT INTO messages VALUES (?, 0, 0, ?)", (session.id.bare, json.dumps(archived))
    )
    raw.execute(
        "INSERT INTO messages VALUES (?, 1, 0, ?)", (session.id.bare, json.dumps(archived))
    )
    for seq, message in enumerate(session.messages, start=2):
        raw.execute(
            "INSERT INTO messages VALUES (?, ?, 1, ?)",
            (session.id.bare, seq, json.dumps(message.to_json())),
        )
    raw.close()
    backend = SqliteBackend(path)
    assert backend.schema_version() == len(MIGRATIONS)
    store = SessionStore(backend)
    loaded = store.load(session.id)
    assert loaded is not None
    assert [m.to_json() for m in loaded.messages] == [m.to_json() for m in session.messages]
    assert [e.active for e in backend.history(session.id.bare)] == [False, False] + [True] * 4
    loaded.add_message(Message.user("after the migration"))
    assert store.save(loaded) == 8
    again = store.load(session.id, tail=2)
    assert again is not None and again.messages[-1].text() == "after the migration"
    store.close()


def test_stale_single_append_is_a_concurrency_error_and_writes_nothing(
    store: SessionStore, db: Path
) -> None:
    session = _session(2)
    store.save(session)
    other = store.load(session.id)
    assert other is not None
    other.add_message(Message.user("first writer"))
    store.save(other)
    session.add_message(Message.user("stale writer"))
    with pytest.raises(ConcurrencyError, match="stale save"):
        store.save(session)
    loaded = store.load(session.id)
    assert loaded is not None
    assert [m.text() for m in loaded.messages][-1] == "first writer"
    assert len(loaded.messages) == 3


# -- one migration ladder: the session backend and the capability store in one file ----------

SHARED_WORKER = textwrap.dedent(
    """
    import sys
    from astrid import AgentSession, Message
    from astrid.default_plugins.capability_stores import SqliteCapabilityBackend
    from astrid.default_plugins.sqlite_storage import SqliteBackend
    from astrid.security.actions import Permission
    from astrid.security.capabilities import (
        AuditEntryId, CapabilityStore, ResourcePattern, TokenBuilder,
    )
    from astrid.security.crypto import KeyPair
    from astrid.store import SessionStore

    component, path = sys.argv[1:3]
    if component == "sessions":
        store = SessionStore(SqliteBackend(path))
        session = AgentSession("shared")
        session.add_message(Message.user("from a process"))
        store.save(session)
        store.close()
        print("session", session.id.bare)
    else:
        key = KeyPair.generate()
        token = (
            TokenBuilder(ResourcePattern.new("mcp://server:tool"))
            .permission(Permission.INVOKE)
            .persistent()
            .build(key.key_id, AuditEntryId.new(), key)
        )
        backend = SqliteCapabilityBackend(path)
        CapabilityStore(backend).add(token)
        backend.close()
        print("token", token.id)
    """
)


def _token() -> Any:
    from astrid.security.actions import Permission
    from astrid.security.capabilities import AuditEntryId, ResourcePattern, TokenBuilder
    from astrid.security.crypto import KeyPair

    key = KeyPair.generate()
    builder = TokenBuilder(ResourcePattern.new("mcp://server:tool")).permission(Permission.INVOKE)
    return builder.persistent().single_use().build(key.key_id, AuditEntryId.new(), key)


def _applied_names(path: Path) -> list[str]:
    raw = sqlite3.connect(path)
    try:
        return sorted(str(r[0]) for r in raw.execute("SELECT name FROM _astrid_migrations"))
    finally:
        raw.close()


def _check_shared(path: Path, session_ids: list[str], token_ids: list[str]) -> None:
    """Open both components on ``path`` and find everything each wrote; the ladder is whole."""
    from uuid import UUID

    from astrid.default_plugins.capability_stores import SqliteCapabilityBackend
    from astrid.security.capabilities import CapabilityStore

    with SqliteCapabilityBackend(path) as caps, SessionStore(SqliteBackend(path)) as sessions:
        capabilities = CapabilityStore(caps)
        for token_id in token_ids:
            assert capabilities.get(UUID(token_id)) is not None, token_id
        for session_id in session_ids:
            loaded = sessions.load(session_id)
            assert loaded is not None, session_id
            assert _texts(loaded)[-1] == "from a process"
        assert sessions.backend.schema_version() == len(MIGRATIONS)
    assert _applied_names(path) == sorted(name for name, _ in MIGRATIONS)


@pytest.mark.parametrize("first", ["sessions", "capabilities"])
def test_sessions_and_capabilities_share_one_file_in_either_order(
    first: str, tmp_path: Path
) -> None:
    from astrid.default_plugins.capability_stores import SqliteCapabilityBackend
    from astrid.security.capabilities import CapabilityStore

    path = tmp_path / "shared.db"
    token, session = _token(), _session(2)
    for component in [first, *({"sessions", "capabilities"} - {first}), first]:
        if component == "sessions":  # open, use and close each; the third open is the first again
            with SessionStore(SqliteBackend(path)) as store:
                current = store.load(session.id) or session
                current.add_message(Message.user("saved"))
                store.save(current)
        else:
            with SqliteCapabilityBackend(path) as caps:
                CapabilityStore(caps).add(token)
    with closing(SqliteBackend(path)) as sessions_backend, SqliteCapabilityBackend(path) as caps:
        both = SessionStore(sessions_backend)
        capabilities = CapabilityStore(caps)
        loaded = both.load(session.id)
        saves = 2 if first == "sessions" else 1
        assert _texts(loaded) == ["question 0", "answer 1"] + ["saved"] * saves
        assert capabilities.use_token(token.id) == token
        both.save(_session(1))
        sessions_backend.kv().set("ns", "k", b"v")
        assert caps.used_ids() == {str(token.id)}
    assert _applied_names(path) == sorted(name for name, _ in MIGRATIONS)


def _worker(component: str, path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SHARED_WORKER, component, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _results(procs: list[subprocess.Popen[str]]) -> tuple[list[str], list[str]]:
    sessions: list[str] = []
    tokens: list[str] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        kind, value = out.split()
        (sessions if kind == "session" else tokens).append(value)
    return sessions, tokens


@pytest.mark.parametrize("first", ["sessions", "capabilities"])
def test_processes_open_one_shared_file_in_either_order(first: str, tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    second = "capabilities" if first == "sessions" else "sessions"
    sessions: list[str] = []
    tokens: list[str] = []
    for component in (first, second, first, second):  # one after the other, each its own process
        found_sessions, found_tokens = _results([_worker(component, path)])
        sessions += found_sessions
        tokens += found_tokens
    _check_shared(path, sessions, tokens)


def test_processes_opening_one_new_shared_file_at_once_apply_each_migration_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "shared.db"
    procs = [_worker(component, path) for component in ["sessions", "capabilities"] * 3]
    sessions, tokens = _results(procs)
    assert len(sessions) == len(tokens) == 3
    _check_shared(path, sessions, tokens)


def test_one_path_for_storage_and_capabilities_in_the_config_opens_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from astrid.store import open_store

    home = tmp_path / "home"
    shared = tmp_path / "shared.db"
    config = tmp_path / "astrid.toml"
    config.write_text(
        f'[storage]\nbackend = "sqlite"\n[storage.options]\npath = "{shared}"\n'
        f'[capabilities]\nstore = "sqlite"\n[capabilities.options]\npath = "{shared}"\n'
    )
    monkeypatch.setenv("ASTRID_HOME", str(home))
    token, session = _token(), _session(2)
    with open_store(config) as store:
        store.save(session)
        assert store.capabilities is not None
        store.capabilities.add(token)
    with open_store(config) as store:  # refused before: "unknown migrations: capabilities_0001"
        assert store.load(session.id) is not None
        assert store.capabilities is not None
        assert store.capabilities.use_token(token.id) == token
    assert not (home / "astrid.db").exists() and not (home / "capabilities.db").exists()


def _old_capability_file(path: Path, token_id: str) -> None:
    """A file exactly as the capability store made it before the one ladder (user_version 0)."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("CREATE TABLE _astrid_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    raw.execute("CREATE TABLE cap_tokens (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    raw.execute("CREATE TABLE cap_revoked (id TEXT PRIMARY KEY)")
    raw.execute("CREATE TABLE cap_used (id TEXT PRIMARY KEY)")
    raw.execute(
        "INSERT INTO _astrid_migrations VALUES ('capabilities_0001_tables', ?)",
        ("2026-01-01T00:00:00+00:00",),
    )
    raw.execute("INSERT INTO cap_revoked VALUES (?)", (token_id,))
    raw.close()


def _old_sessions_file(path: Path) -> None:
    """A file exactly as the session backend made it before the one ladder (six migrations)."""
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode = WAL")
    raw.execute("CREATE TABLE _astrid_migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    ladder = dict(MIGRATIONS)
    for index, name in enumerate(
        [
            "0001_sessions",
            "0002_messages",
            "0003_kv",
            "0004_message_columns",
            "0005_append_trigger",
            "0006_session_items",
        ],
        start=1,
    ):
        ladder[name](raw)
        raw.execute("INSERT INTO _astrid_migrations VALUES (?, '2026-01-01T00:00:00Z')", (name,))
        raw.execute(f"PRAGMA user_version = {index:d}")
    raw.execute("INSERT INTO kv VALUES ('ns', 'k', ?)", (b"kept",))
    raw.close()


@pytest.mark.parametrize("made_by", ["sessions", "capabilities"])
@pytest.mark.parametrize("opened_by", ["sessions", "capabilities"])
def test_files_made_before_the_one_ladder_still_open(
    made_by: str, opened_by: str, tmp_path: Path
) -> None:
    from astrid.default_plugins.capability_stores import SqliteCapabilityBackend

    path = tmp_path / "old.db"
    revoked = "0b0c8f6e-6a0e-4f8e-9d53-6f2b8c1e2a3d"
    if made_by == "sessions":
        _old_sessions_file(path)
    else:
        _old_capability_file(path, revoked)
    if opened_by == "sessions":
        SqliteBackend(path).close()
    else:
        SqliteCapabilityBackend(path).close()
    with closing(SqliteBackend(path)) as backend, SqliteCapabilityBackend(path) as caps:
        if made_by == "sessions":
            assert backend.kv().get("ns", "k") == b"kept"
        else:
            assert caps.revoked_ids() == {revoked}
        assert backend.schema_version() == len(MIGRATIONS)
        applied = dict(backend.migrations())
    assert sorted(applied) == sorted(name for name, _ in MIGRATIONS)
    kept = "capabilities_0001_tables" if made_by == "capabilities" else "0001_sessions"
    assert applied[kept].startswith("2026-01-01T00:00:00")  # recorded once, never re-applied


@pytest.mark.parametrize("future", ["0099_from_the_future", "capabilities_0002_from_the_future"])
@pytest.mark.parametrize("opened_by", ["sessions", "capabilities"])
def test_a_shared_file_with_an_unknown_migration_is_refused_by_both(
    future: str, opened_by: str, tmp_path: Path
) -> None:
    from astrid.default_plugins.capability_stores import SqliteCapabilityBackend

    path = tmp_path / "shared.db"
    SqliteBackend(path).close()
    SqliteCapabilityBackend(path).close()
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("INSERT INTO _astrid_migrations VALUES (?, '2030-01-01T00:00:00Z')", (future,))
    raw.close()
    before = _applied_names(path)
    refused = f"newer astrid.*unknown migrations: {future}"
    with pytest.raises(SchemaVersionError, match=refused) as info:
        if opened_by == "sessions":
            SqliteBackend(path)
        else:
            SqliteCapabilityBackend(path)
    assert str(path) in str(info.value)
    assert _applied_names(path) == before
