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

from astrid import AgentSession, Message
from astrid.default_plugins.sqlite_storage import MIGRATIONS, SqliteBackend
from astrid.errors import ConcurrencyError, SerializationError
from astrid.security.allowances import Allowance, ExactTool
from astrid.security.escape import EscapeDecision, EscapeOperation, EscapeRequest
from astrid.store import KEYED_STATE_MIN, SessionStore, SessionSummary, SessionWrite, StateDelta
from astrid.timeutil import utcnow

SID = "6f1c1b7e-3c1a-4a5e-9d7e-1f2a3b4c5d6e"


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


def _allowance(i: int) -> dict[str, Any]:
    return Allowance.create(ExactTool(server="fs", tool=f"t{i}"), session_only=True).model_dump(
        mode="json"
    )


def _state(allowances: list[dict[str, Any]], paths: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "id": SID,
        "user_id": "00" * 8,
        "system_prompt": "p",
        "created_at": "2026-01-01T00:00:00Z",
        "token_count": 0,
        "metadata": {},
        "allowances": allowances,
        "budget_snapshot": None,
        "escape_state": {"remembered_paths": paths, "note": "kept"},
        **extra,
    }


def _summary() -> SessionSummary:
    now = utcnow()
    return SessionSummary(SID, None, now, now, 0, 0, None)


def _write(
    backend: SqliteBackend,
    state: dict[str, Any],
    revision: int | None,
    delta: StateDelta | None = None,
    messages: list[Any] | None = None,
    base: int = 0,
) -> int:
    return backend.write(
        SessionWrite(
            session_id=SID,
            expected_revision=revision,
            state=state,
            messages=messages or [],
            base_count=base,
            replace=False,
            summary=_summary(),
            delta=delta,
        )
    )


def _keyed(db: Path, sid: str = SID) -> tuple[int, int]:
    ((flag,),) = _raw(db, "SELECT keyed FROM sessions WHERE id = ?", sid)
    ((count,),) = _raw(db, "SELECT count(*) FROM session_items WHERE session_id = ?", sid)
    return int(flag), int(count)


def _loaded(backend: SqliteBackend) -> dict[str, Any]:
    record = backend.load(SID)
    assert record is not None
    return record.state


def _paths(n: int) -> list[str]:
    return sorted(f"/work/p{i:04d}" for i in range(n))


# -- whole writes -------------------------------------------------------------------------


def test_many_become_keyed_rows_and_load_back_identical(backend: SqliteBackend, db: Path) -> None:
    allowances = [_allowance(i) for i in range(100)]
    state = _state(allowances, _paths(40))
    _write(backend, state, None)
    assert _keyed(db) == (1, 140)
    ((stored,),) = _raw(db, "SELECT state FROM sessions WHERE id = ?", SID)
    assert '"allowances"' not in stored and "remembered_paths" not in stored
    assert '"note":"kept"' in stored.replace(" ", "")
    assert _loaded(backend) == state


def test_few_stay_inline(backend: SqliteBackend, db: Path) -> None:
    n = KEYED_STATE_MIN - 1
    state = _state([_allowance(i) for i in range(n)], [])
    _write(backend, state, None)
    assert _keyed(db) == (0, 0)
    assert _loaded(backend) == state


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda a, p: ([*a, a[0]], p), id="repeated id"),
        pytest.param(lambda a, p: ([*a, {"no": "id"}], p), id="allowance without id"),
        pytest.param(lambda a, p: ([*a, "text"], p), id="allowance not an object"),
        pytest.param(lambda a, p: (a, list(reversed(p))), id="unsorted paths"),
        pytest.param(lambda a, p: (a, [*p, p[0]]), id="repeated path"),
        pytest.param(lambda a, p: (a, [*p, 7]), id="path not a string"),
    ],
)
def test_unkeyable_state_is_written_back_exactly(
    backend: SqliteBackend, db: Path, bad: Any
) -> None:
    allowances, paths = bad([_allowance(i) for i in range(80)], _paths(10))
    state = _state(allowances, paths)
    _write(backend, state, None)
    assert _keyed(db) == (0, 0)
    assert _loaded(backend) == state


def test_whole_write_of_a_small_state_makes_a_keyed_session_inline(
    backend: SqliteBackend, db: Path
) -> None:
    rev = _write(backend, _state([_allowance(i) for i in range(100)], []), None)
    assert _keyed(db) == (1, 100)
    small = _state([_allowance(1)], ["/a"])
    _write(backend, small, rev, messages=[{"role": "user", "content": "hi"}])
    assert _keyed(db) == (0, 0)
    assert _loaded(backend) == small


# -- deltas -------------------------------------------------------------------------------


def _no_full() -> dict[str, Any]:
    raise AssertionError("a delta on a keyed session must not ask for the whole state")


def test_delta_updates_only_changed_rows_in_place(backend: SqliteBackend, db: Path) -> None:
    allowances = [_allowance(i) for i in range(70)]
    paths = _paths(10)
    rev = _write(backend, _state(allowances, paths), None)
    changed = dict(allowances[5], uses_remaining=3)
    new = [_allowance(100), _allowance(101)]
    delta = StateDelta(
        allowances={
            allowances[2]["id"]: None,
            new[1]["id"]: new[1],
            allowances[5]["id"]: changed,
            new[0]["id"]: new[0],
        },
        remembered_paths={paths[0]: False, "/zz": True, "/0": True},
        full_state=_no_full,
    )
    partial = _state([], [])
    del partial["allowances"]
    del partial["escape_state"]["remembered_paths"]
    partial["token_count"] = 9
    rev = _write(backend, partial, rev, delta, messages=[{"role": "user", "content": "m"}], base=0)
    expected_allowances = [a for a in allowances if a["id"] != allowances[2]["id"]]
    expected_allowances[4] = changed
    expected_allowances += [new[1], new[0]]
    loaded = _loaded(backend)
    assert loaded["allowances"] == expected_allowances
    assert loaded["escape_state"] == {
        "remembered_paths": sorted(["/0", "/zz", *paths[1:]]),
        "note": "kept",
    }
    assert loaded["token_count"] == 9
    assert _keyed(db) == (1, 70 - 1 + 2 + 10 - 1 + 2)
    record = backend.load(SID)
    assert record is not None and record.revision == rev == 2 and len(record.messages) == 1


def test_delta_on_an_inline_session_writes_it_whole(backend: SqliteBackend, db: Path) -> None:
    inline = _state([_allowance(i) for i in range(3)], ["/a"])
    rev = _write(backend, inline, None)
    assert _keyed(db) == (0, 0)
    whole = _state([_allowance(i) for i in range(5)], ["/a", "/b"])
    partial = {k: v for k, v in whole.items() if k != "allowances"}
    partial["escape_state"] = {"note": "kept"}
    delta = StateDelta({"x": None}, {"/b": True}, lambda: whole)
    _write(backend, partial, rev, delta, messages=[{"role": "user", "content": "m"}])
    assert _keyed(db) == (1, 7)  # asked for a delta: kept keyed, however few
    assert _loaded(backend) == whole


def test_stale_delta_changes_nothing(backend: SqliteBackend, db: Path) -> None:
    state = _state([_allowance(i) for i in range(70)], [])
    rev = _write(backend, state, None)
    partial = {k: v for k, v in state.items() if k != "allowances"}
    partial["escape_state"] = {"note": "kept"}
    delta = StateDelta({state["allowances"][0]["id"]: None}, {"/x": True}, _no_full)
    with pytest.raises(ConcurrencyError):
        _write(backend, partial, rev + 1, delta)
    with pytest.raises(ConcurrencyError):
        _write(backend, partial, rev, delta, base=3)
    assert _loaded(backend) == state and _keyed(db) == (1, 70)


def test_delete_removes_the_rows(backend: SqliteBackend, db: Path) -> None:
    _write(backend, _state([_allowance(i) for i in range(70)], []), None)
    assert backend.delete(SID)
    assert _raw(db, "SELECT count(*) FROM session_items") == [(0,)]


def test_a_bad_stored_allowance_names_the_session(backend: SqliteBackend, db: Path) -> None:
    state = _state([_allowance(i) for i in range(70)], [])
    _write(backend, state, None)
    key = state["allowances"][3]["id"]
    with sqlite3.connect(db) as raw:
        raw.execute("UPDATE session_items SET value = '{oops' WHERE key = ?", (key,))
    raw.close()
    with pytest.raises(SerializationError, match=f"session {SID}.*allowance {key}"):
        backend.load(SID)


# -- through the store ----------------------------------------------------------------------


def _grow(session: AgentSession, i: int, where: Path) -> None:
    session.add_session_allowance(
        Allowance.create(ExactTool(server="fs", tool=f"t{i}"), session_only=True)
    )
    path = where / f"d{i}"
    path.mkdir()
    session.escape_handler.process_decision(
        EscapeRequest.new(path, EscapeOperation.READ, "test"), EscapeDecision.ALLOW_ALWAYS
    )


def _document(session: AgentSession) -> dict[str, Any]:
    data = session.to_document().to_data()
    data["budget_snapshot"].pop("last_updated")  # the time of each export
    return data


def test_store_saves_a_growing_session_as_deltas(db: Path, tmp_path: Path) -> None:
    backend = SqliteBackend(db)
    store = SessionStore(backend)
    session = store.new_session("grow")
    for i in range(KEYED_STATE_MIN):
        _grow(session, i, tmp_path)
    store.save(session)
    assert _keyed(db, session.id.bare) == (1, 2 * KEYED_STATE_MIN)
    writes: list[SessionWrite] = []
    real = backend.write

    def spy(change: SessionWrite) -> int:
        writes.append(change)
        return real(change)

    backend.write = spy  # type: ignore[method-assign]
    for i in range(KEYED_STATE_MIN, KEYED_STATE_MIN + 20):
        _grow(session, i, tmp_path)
        session.add_message(Message.user(f"m{i}"))
        store.save(session)
    assert all(w.delta is not None and len(w.delta) == 2 for w in writes)
    assert all("allowances" not in w.state for w in writes)
    other = SessionStore(SqliteBackend(db))
    loaded = other.load(session.id)
    assert loaded is not None
    assert _document(loaded) == _document(session)
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
    state = _state([_allowance(i) for i in range(90)], _paths(5))
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
    assert _loaded(backend) == state
    # The next whole write keys it; a one-message append to it goes the general way.
    _write(backend, state, 1, messages=[{"role": "user", "content": "hi"}])
    assert _keyed(path) == (1, 95)
    record = backend.load(SID)
    assert record is not None and record.state == state and record.revision == 2
    backend.close()


def test_session_state_view_gives_the_whole_state(backend: SqliteBackend, db: Path) -> None:
    keyed = _state([_allowance(i) for i in range(80)], _paths(30))
    _write(backend, keyed, None)
    other = "0b0c3c55-6f43-4d2b-8a55-2b7d6f1e9a10"
    inline = dict(_state([_allowance(1)], ["/a"]), id=other)
    now = utcnow()
    backend.write(
        SessionWrite(
            other, None, inline, [], 0, False, SessionSummary(other, None, now, now, 0, 0, None)
        )
    )
    views = dict(_raw(db, "SELECT id, state FROM session_state"))
    assert json.loads(views[SID]) == keyed
    assert json.loads(views[other]) == inline
