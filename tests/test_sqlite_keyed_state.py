"""SQLite: many session allowances and escape paths as keyed rows, saves writing only changes.

Checked against the whole-state semantics: whatever path a save takes (inline JSON, keyed rows,
a delta of changed rows, a delta falling back to a whole write), a load gives the state the
session would have written whole.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from astrid import Message
from astrid.default_plugins.sqlite_storage import MIGRATIONS, SqliteBackend
from astrid.errors import ConcurrencyError, SerializationError
from astrid.store import KEYED_STATE_MIN, SessionStore
from astrid.testing.keyed_state import (
    SID,
    allowance_data,
    comparable,
    grow,
    loaded_state,
    recorded_writes,
    sorted_paths,
    whole_state,
    write,
)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "astrid.db"


@pytest.fixture
def backend(db: Path) -> Iterator[SqliteBackend]:
    b = SqliteBackend(db)
    yield b
    b.close()


def _raw(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as raw:
        rows = raw.execute(sql, params).fetchall()
    raw.close()
    return rows


def _keyed(db: Path, sid: str = SID) -> tuple[int, int]:
    ((flag,),) = _raw(db, "SELECT keyed FROM sessions WHERE id = ?", sid)
    ((count,),) = _raw(db, "SELECT count(*) FROM session_items WHERE session_id = ?", sid)
    return int(flag), int(count)


# -- whole writes -------------------------------------------------------------------------


def test_many_become_keyed_rows_and_load_back_identical(backend: SqliteBackend, db: Path) -> None:
    allowances = [allowance_data(i) for i in range(100)]
    state = whole_state(allowances, sorted_paths(40))
    write(backend, state, None)
    assert _keyed(db) == (1, 140)
    ((stored,),) = _raw(db, "SELECT state FROM sessions WHERE id = ?", SID)
    assert '"allowances"' not in stored and "remembered_paths" not in stored
    assert '"note":"kept"' in stored.replace(" ", "")
    assert loaded_state(backend) == state


def test_few_stay_inline(backend: SqliteBackend, db: Path) -> None:
    n = KEYED_STATE_MIN - 1
    state = whole_state([allowance_data(i) for i in range(n)], [])
    write(backend, state, None)
    assert _keyed(db) == (0, 0)
    assert loaded_state(backend) == state


def test_whole_write_of_a_small_state_makes_a_keyed_session_inline(
    backend: SqliteBackend, db: Path
) -> None:
    rev = write(backend, whole_state([allowance_data(i) for i in range(100)], []), None)
    assert _keyed(db) == (1, 100)
    small = whole_state([allowance_data(1)], ["/a"])
    write(backend, small, rev, messages=[{"role": "user", "content": "hi"}])
    assert _keyed(db) == (0, 0)
    assert loaded_state(backend) == small


# -- deltas -------------------------------------------------------------------------------


def test_delete_removes_the_rows(backend: SqliteBackend, db: Path) -> None:
    write(backend, whole_state([allowance_data(i) for i in range(70)], []), None)
    assert backend.delete(SID)
    assert _raw(db, "SELECT count(*) FROM session_items") == [(0,)]


def test_a_bad_stored_allowance_names_the_session(backend: SqliteBackend, db: Path) -> None:
    state = whole_state([allowance_data(i) for i in range(70)], [])
    write(backend, state, None)
    key = state["allowances"][3]["id"]
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE session_items SET value = '{oops' WHERE key = ?", (key,))
    raw.close()
    with pytest.raises(SerializationError, match=f"session {SID}.*allowance {key}"):
        backend.load(SID)


# -- through the store ----------------------------------------------------------------------


def test_store_saves_a_growing_session_as_deltas(
    db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = SqliteBackend(db)
    store = SessionStore(backend)
    session = store.new_session("grow")
    for i in range(KEYED_STATE_MIN):
        grow(session, i, tmp_path)
    store.save(session)
    assert _keyed(db, session.id.bare) == (1, 2 * KEYED_STATE_MIN)
    writes = recorded_writes(backend, monkeypatch)
    for i in range(KEYED_STATE_MIN, KEYED_STATE_MIN + 20):
        grow(session, i, tmp_path)
        session.add_message(Message.user(f"m{i}"))
        store.save(session)
    assert all(w.delta is not None and len(w.delta) == 2 for w in writes)
    assert all("allowances" not in w.state for w in writes)
    other = SessionStore(SqliteBackend(db))
    loaded = other.load(session.id)
    assert loaded is not None
    assert comparable(loaded) == comparable(session)
    other.close()
    store.close()


def test_old_database_migrates_and_keeps_inline_sessions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("CREATE TABLE _astrid_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for index, (name, migration) in enumerate(MIGRATIONS[:5], start=1):
        migration(raw)
        raw.execute("INSERT INTO _astrid_migrations VALUES (?, ?)", (name, "2026-01-01T00:00:00Z"))
        raw.execute(f"PRAGMA user_version = {index}")
    raw.close()
    # A session written by the previous schema (its state inline, however many allowances).
    state = whole_state([allowance_data(i) for i in range(90)], sorted_paths(5))
    raw = sqlite3.connect(path, isolation_level=None)
    now = "2026-01-01T00:00:00.000000Z"
    raw.execute(
        "INSERT INTO sessions (id, revision, state, title, created_at, updated_at, "
        "message_count, token_count, workspace_path, model, parent_id, next_seq) "
        "VALUES (?, 1, ?, NULL, ?, ?, 0, 0, NULL, NULL, NULL, 0)",
        (SID, json.dumps(state), now, now),
    )
    raw.close()
    backend = SqliteBackend(path)
    assert backend.schema_version() == len(MIGRATIONS)
    assert _keyed(path) == (0, 0)
    assert loaded_state(backend) == state
    # The next whole write keys it; a one-message append to it goes the general way.
    write(backend, state, 1, messages=[{"role": "user", "content": "hi"}])
    assert _keyed(path) == (1, 95)
    record = backend.load(SID)
    assert record is not None and record.state == state and record.revision == 2
    backend.close()


def test_session_state_view_gives_the_whole_state(backend: SqliteBackend, db: Path) -> None:
    keyed = whole_state([allowance_data(i) for i in range(80)], sorted_paths(30))
    write(backend, keyed, None)
    other = "0b0c3c55-6f43-4d2b-8a55-2b7d6f1e9a10"
    inline = whole_state([allowance_data(1)], ["/a"], sid=other)
    write(backend, inline, None, sid=other)
    views = dict(_raw(db, "SELECT id, state FROM session_state"))
    assert json.loads(views[SID]) == keyed
    assert json.loads(views[other]) == inline


def test_two_writers_deltas_on_one_session_one_wins(db: Path, tmp_path: Path) -> None:
    """Two stores (two processes' worth) load a keyed session and each save a delta: the
    second is stale and changes nothing; the stored state is the winner's."""
    first = SessionStore(SqliteBackend(db))
    session = first.new_session("shared")
    for i in range(KEYED_STATE_MIN + 2):
        grow(session, i, tmp_path)
    first.save(session)
    a_store, b_store = SessionStore(SqliteBackend(db)), SessionStore(SqliteBackend(db))
    a, b = a_store.load(session.id), b_store.load(session.id)
    assert a is not None and b is not None
    grow(a, 100, tmp_path)
    a.add_message(Message.user("from a"))
    grow(b, 101, tmp_path)
    b.add_message(Message.user("from b"))
    a_store.save(a)
    with pytest.raises(ConcurrencyError):
        b_store.save(b)
    stored = SessionStore(SqliteBackend(db)).load(session.id)
    assert stored is not None and comparable(stored) == comparable(a)
    for s in (first, a_store, b_store):
        s.close()
