"""PostgreSQL: many session allowances and escape paths as keyed rows, saves writing only changes.

The backend-level cases of the core's ``tests/test_sqlite_keyed_state.py``, against a real
server, plus what only PostgreSQL needs (keys ``text`` cannot hold, concurrent deltas). Whatever
path a save takes (inline JSON, keyed rows, a delta of changed rows, a delta falling back to a
whole write), a load gives the state the session would have written whole.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, LiteralString

import pytest
from astrid import Message
from astrid.errors import ConcurrencyError, SerializationError
from astrid.store import KEYED_STATE_MIN, SessionStore, StateDelta
from astrid.testing.keyed_state import (
    SID,
    allowance_data,
    comparable,
    grow,
    loaded_state,
    no_full_state,
    partial_state,
    recorded_writes,
    sorted_paths,
    whole_state,
    write,
)
from astrid.timeutil import utcnow
from test_postgres_backend import prepare_roles

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.schema import KNOWN, MIGRATIONS, q
from astrid_postgres.testing import LoginRole, TemporaryServer


class Raw:
    """Plain SQL on one test schema, as the server's superuser (``{s}``: the schema)."""

    def __init__(self, server: TemporaryServer, schema: str) -> None:
        self.server = server
        self.schema = schema

    def rows(self, text: LiteralString, *params: Any) -> list[tuple[Any, ...]]:
        with self.server.admin() as conn:
            cursor = conn.execute(q(text, self.schema), params)
            return list(cursor.fetchall()) if cursor.description else []

    def keyed(self, sid: str = SID) -> tuple[bool, int]:
        """The session row's ``keyed`` flag and how many ``session_items`` rows it has."""
        ((flag,),) = self.rows("SELECT keyed FROM {s}.sessions WHERE id = %s", sid)
        ((count,),) = self.rows("SELECT count(*) FROM {s}.session_items WHERE session_id = %s", sid)
        return bool(flag), int(count)


@pytest.fixture
def raw(pg_server: TemporaryServer, schema: str) -> Raw:
    return Raw(pg_server, schema)


@pytest.fixture
def backend(pg_server: TemporaryServer, schema: str) -> Iterator[PostgresBackend]:
    b = PostgresBackend(pg_server.dsn(), schema=schema, max_size=4)
    yield b
    b.close()


# -- whole writes -------------------------------------------------------------------------


def test_the_migration_is_named(backend: PostgresBackend) -> None:
    assert "0005_session_items" in KNOWN
    assert backend.accepts_state_delta is True


def test_many_become_keyed_rows_and_load_back_identical(backend: PostgresBackend, raw: Raw) -> None:
    allowances = [allowance_data(i) for i in range(100)]
    state = whole_state(allowances, sorted_paths(40))
    write(backend, state, None, messages=[{"role": "user", "content": "hi"}])
    assert raw.keyed() == (True, 140)
    ((stored,),) = raw.rows("SELECT state FROM {s}.sessions WHERE id = %s", SID)
    assert '"allowances"' not in stored and "remembered_paths" not in stored
    assert '"note":"kept"' in stored.replace(" ", "")
    assert loaded_state(backend) == state
    assert loaded_state(backend, tail=0) == state


def test_few_stay_inline(backend: PostgresBackend, raw: Raw) -> None:
    state = whole_state([allowance_data(i) for i in range(KEYED_STATE_MIN - 1)], [])
    write(backend, state, None)
    assert raw.keyed() == (False, 0)
    assert loaded_state(backend) == state


def test_odd_keys_and_values_are_keyed_exactly(backend: PostgresBackend, raw: Raw) -> None:
    odd = ["/é", "/日本", "/\U0001f680", "NULL", '/a "b" {c}, \\d', " ", ""]
    paths = sorted([*odd, *sorted_paths(70)])
    allowances = [
        {"id": "NULL", "x": None},
        {"id": "ünï", "x": '{"a", NULL} \\ \0 nan', "f": 1e308},  # what a store can hold
        {"id": "", "nested": {"k": [1, 2.5, True]}},
    ]
    state = whole_state(allowances, paths)
    write(backend, state, None)
    assert raw.keyed() == (True, 80)
    assert loaded_state(backend) == state


def test_whole_write_of_a_small_state_makes_a_keyed_session_inline(
    backend: PostgresBackend, raw: Raw
) -> None:
    rev = write(backend, whole_state([allowance_data(i) for i in range(100)], []), None)
    assert raw.keyed() == (True, 100)
    small = whole_state([allowance_data(1)], ["/a"])
    # The one-statement save is for inline rows only: this one goes the general way.
    rev = write(backend, small, rev, messages=[{"role": "user", "content": "hi"}])
    assert raw.keyed() == (False, 0)
    assert loaded_state(backend) == small
    rev = write(backend, small, rev, messages=[{"role": "user", "content": "again"}], base=1)
    record = backend.load(SID)
    assert record is not None and record.revision == rev == 3 and len(record.messages) == 2


def test_whole_write_of_a_large_state_rewrites_the_rows(backend: PostgresBackend, raw: Raw) -> None:
    rev = write(backend, whole_state([allowance_data(i) for i in range(70)], sorted_paths(3)), None)
    bigger = whole_state([allowance_data(i) for i in range(200, 290)], sorted_paths(5))
    write(backend, bigger, rev, messages=[{"role": "user", "content": "m"}])
    assert raw.keyed() == (True, 95)
    assert loaded_state(backend) == bigger


def _row_versions(raw: Raw) -> dict[tuple[int, str], str]:
    rows = raw.rows(
        "SELECT kind, key, xmin::text FROM {s}.session_items WHERE session_id = %s", SID
    )
    return {(int(kind), str(key)): str(xmin) for kind, key, xmin in rows}


def test_whole_write_of_a_grown_state_writes_only_the_changed_rows(
    backend: PostgresBackend, raw: Raw
) -> None:
    """What the first save after a load sends (e.g. each request of a stateless server)."""
    allowances = [allowance_data(i) for i in range(70)]
    paths = sorted_paths(10)
    rev = write(backend, whole_state(allowances, paths), None)
    rev = write(
        backend,
        partial_state(whole_state([], [])),
        rev,
        StateDelta({}, {"/zz": True}, no_full_state),
    )
    before = _row_versions(raw)
    grown = [a for a in allowances if a["id"] != allowances[3]["id"]]
    grown[10] = dict(grown[10], uses_remaining=1)
    grown += [allowance_data(100), allowance_data(101)]
    new_paths = sorted([*paths[1:], "/zz", "/0"])
    state = whole_state(grown, new_paths)
    write(backend, state, rev, messages=[{"role": "user", "content": "m"}])
    assert loaded_state(backend) == state
    after = _row_versions(raw)
    rewritten = {key for key, version in after.items() if before.get(key) != version}
    assert rewritten == {
        (1, grown[10]["id"]),
        (1, grown[-2]["id"]),
        (1, grown[-1]["id"]),
        (2, "/0"),
    }
    assert set(before) - set(after) == {(1, allowances[3]["id"]), (2, paths[0])}
    # And the next delta's new rows still come last.
    later = allowance_data(102)
    write(
        backend,
        partial_state(state),
        rev + 1,
        StateDelta({later["id"]: later}, {}, no_full_state),
        base=1,
    )
    assert loaded_state(backend)["allowances"] == [*grown, later]


@pytest.mark.parametrize(
    "reorder",
    [
        pytest.param(lambda a, new: list(reversed(a)), id="reversed"),
        pytest.param(lambda a, new: [new, *a], id="new one first"),
        pytest.param(lambda a, new: [*a[:5], new, *a[5:]], id="new one inside"),
        pytest.param(lambda a, new: [*a[1:], a[0]], id="first moved last"),
    ],
)
def test_whole_write_that_reorders_allowances_renumbers_them(
    backend: PostgresBackend, raw: Raw, reorder: Callable[[list[Any], Any], list[Any]]
) -> None:
    allowances = [allowance_data(i) for i in range(70)]
    rev = write(backend, whole_state(allowances, sorted_paths(2)), None)
    state = whole_state(reorder(allowances, allowance_data(100)), sorted_paths(3))
    rev = write(backend, state, rev, messages=[{"role": "user", "content": "m"}])
    assert loaded_state(backend) == state
    count = len(state["allowances"]) + 3
    assert raw.rows("SELECT next_item FROM {s}.sessions") == [(count,)]  # renumbered from 0
    later = allowance_data(101)
    write(
        backend,
        partial_state(state),
        rev,
        StateDelta({later["id"]: later}, {}, no_full_state),
        base=1,
    )
    assert loaded_state(backend)["allowances"] == [*state["allowances"], later]


def test_a_replace_keeps_the_keyed_rows_right(backend: PostgresBackend, raw: Raw) -> None:
    allowances = [allowance_data(i) for i in range(70)]
    state = whole_state(allowances, sorted_paths(2))
    rev = write(backend, state, None, messages=[{"role": "user", "content": "a"}])
    new = allowance_data(999)
    delta = StateDelta({allowances[0]["id"]: None, new["id"]: new}, {"/zz": True}, no_full_state)
    summary = [{"role": "system", "content": "summary"}]
    rev = write(backend, partial_state(state), rev, delta, messages=summary, base=1, replace=True)
    record = backend.load(SID)
    assert record is not None and record.messages == summary and record.revision == rev
    assert record.state["allowances"] == [*allowances[1:], new]
    assert record.state["escape_state"]["remembered_paths"] == [*sorted_paths(2), "/zz"]
    assert raw.keyed() == (True, 70 - 1 + 1 + 3)


# -- deltas -------------------------------------------------------------------------------


def test_an_empty_delta_saves_messages_only(backend: PostgresBackend, raw: Raw) -> None:
    state = whole_state([allowance_data(i) for i in range(70)], sorted_paths(3))
    rev = write(backend, state, None)
    for n in range(3):
        message = [{"role": "user", "content": f"m{n}"}]
        rev = write(
            backend, partial_state(state), rev, StateDelta({}, {}, no_full_state), message, base=n
        )
    record = backend.load(SID)
    assert record is not None and record.state == state and len(record.messages) == 3
    assert raw.keyed() == (True, 73)


def test_a_delta_with_a_key_text_cannot_hold_writes_the_state_whole_inline(
    backend: PostgresBackend, raw: Raw
) -> None:
    state = whole_state([allowance_data(i) for i in range(70)], sorted_paths(2))
    rev = write(backend, state, None)
    whole = whole_state(state["allowances"], [*sorted_paths(2), "/x\0y"])
    delta = StateDelta({}, {"/x\0y": True}, lambda: whole)
    write(backend, partial_state(whole), rev, delta, messages=[{"role": "user", "content": "m"}])
    assert raw.keyed() == (False, 0)
    assert loaded_state(backend) == whole


def test_a_create_with_a_delta_writes_the_full_state(backend: PostgresBackend, raw: Raw) -> None:
    whole = whole_state([allowance_data(i) for i in range(70)], [])
    write(backend, partial_state(whole), None, StateDelta({}, {}, lambda: whole))
    assert raw.keyed() == (True, 70)
    assert loaded_state(backend) == whole


def test_concurrent_deltas_one_wins_the_other_is_stale(
    pg_server: TemporaryServer, schema: str, raw: Raw
) -> None:
    backends = [PostgresBackend(pg_server.dsn(), schema=schema) for _ in range(2)]
    state = whole_state([allowance_data(i) for i in range(70)], [])
    rev = write(backends[0], state, None)
    new = [allowance_data(500 + i) for i in range(2)]
    barrier = threading.Barrier(2)
    outcomes: dict[int, str] = {}

    def save(i: int) -> None:
        delta = StateDelta({new[i]["id"]: new[i]}, {f"/w{i}": True}, no_full_state)
        barrier.wait()
        try:
            write(backends[i], partial_state(state), rev, delta, [{"role": "user", "content": "m"}])
            outcomes[i] = "won"
        except ConcurrencyError:
            outcomes[i] = "stale"

    threads = [threading.Thread(target=save, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes.values()) == ["stale", "won"]
    winner = next(i for i, outcome in outcomes.items() if outcome == "won")
    loaded = loaded_state(backends[1])
    for b in backends:
        b.close()
    assert loaded["allowances"] == [*state["allowances"], new[winner]]
    assert loaded["escape_state"]["remembered_paths"] == [f"/w{winner}"]
    assert raw.keyed() == (True, 72)


# -- delete, bad rows, old schemas --------------------------------------------------------


def test_delete_removes_the_rows(backend: PostgresBackend, raw: Raw) -> None:
    write(backend, whole_state([allowance_data(i) for i in range(70)], []), None)
    assert backend.delete(SID)
    assert raw.rows("SELECT count(*) FROM {s}.session_items") == [(0,)]
    # The id can be created again, inline or keyed.
    write(backend, whole_state([allowance_data(i) for i in range(70)], []), None)
    assert raw.keyed() == (True, 70)


def test_prune_removes_the_rows(backend: PostgresBackend, raw: Raw) -> None:
    write(backend, whole_state([allowance_data(i) for i in range(70)], []), None)
    store = SessionStore(backend)
    assert store.prune(older_than=timedelta(0), now=utcnow() + timedelta(days=1)) == [SID]
    assert raw.rows("SELECT count(*) FROM {s}.session_items") == [(0,)]


def test_a_bad_stored_allowance_names_the_session(backend: PostgresBackend, raw: Raw) -> None:
    state = whole_state([allowance_data(i) for i in range(70)], [])
    write(backend, state, None)
    key = state["allowances"][3]["id"]
    raw.rows("UPDATE {s}.session_items SET value = %s WHERE key = %s", "{oops", key)
    with pytest.raises(SerializationError, match=f"session {SID}.*allowance {key}"):
        backend.load(SID)


def test_an_unknown_item_kind_names_the_session(backend: PostgresBackend, raw: Raw) -> None:
    write(backend, whole_state([allowance_data(i) for i in range(70)], []), None)
    raw.rows("INSERT INTO {s}.session_items VALUES (%s, 9, 'odd', 0, NULL)", SID)
    with pytest.raises(SerializationError, match=f"session {SID}.*'odd'.*unknown kind"):
        backend.load(SID)


def test_old_schema_migrates_and_keeps_inline_sessions(
    pg_server: TemporaryServer, schema: str, raw: Raw
) -> None:
    previous = [entry for entry in MIGRATIONS if entry[0] != "0005_session_items"]
    assert len(previous) == len(MIGRATIONS) - 1
    raw.rows("CREATE SCHEMA {s}")
    raw.rows(
        "CREATE TABLE {s}._astrid_migrations "
        "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for name, statements in previous:
        for statement in statements:
            raw.rows(statement)
        raw.rows("INSERT INTO {s}._astrid_migrations (name) VALUES (%s)", name)
    # A session written by the previous schema (its state inline, however many allowances).
    state = whole_state([allowance_data(i) for i in range(90)], sorted_paths(5))
    raw.rows(
        "INSERT INTO {s}.sessions (id, revision, state, created_at, updated_at, message_count, "
        "token_count, next_seq) VALUES (%s, 1, %s, now(), now(), 0, 0, 0)",
        SID,
        json.dumps(state),
    )
    backend = PostgresBackend(pg_server.dsn(), schema=schema)
    try:
        assert backend.schema_version() == len(KNOWN)
        assert [name for name, _ in backend.migrations()] == list(KNOWN)
        assert raw.keyed() == (False, 0)
        assert loaded_state(backend) == state
        # The next whole write keys it (not the one-statement save).
        write(backend, state, 1, messages=[{"role": "user", "content": "hi"}])
        assert raw.keyed() == (True, 95)
        record = backend.load(SID)
        assert record is not None and record.state == state and record.revision == 2
    finally:
        backend.close()


def test_an_app_role_with_dml_only_writes_keyed_rows(
    pg_server: TemporaryServer,
    schema: str,
    owner_role: LoginRole,
    app_role: LoginRole,
    raw: Raw,
) -> None:
    """The owner's migration creates ``session_items``; the app role can use it (the grants
    of docs/postgres.md cover tables added by later migrations)."""
    prepare_roles(pg_server, schema, owner_role, app_role)
    PostgresBackend(
        pg_server.dsn(user=owner_role.name), schema=schema, password=owner_role.password
    ).close()
    app = PostgresBackend(
        pg_server.dsn(user=app_role.name), schema=schema, password=app_role.password
    )
    try:
        state = whole_state([allowance_data(i) for i in range(70)], sorted_paths(2))
        rev = write(app, state, None)
        later = allowance_data(100)
        write(app, partial_state(state), rev, StateDelta({later["id"]: later}, {}, no_full_state))
        assert loaded_state(app)["allowances"] == [*state["allowances"], later]
        assert raw.keyed() == (True, 73)
        assert app.delete(SID)
    finally:
        app.close()


# -- through the store ----------------------------------------------------------------------


def test_store_saves_a_growing_session_as_deltas(
    pg_server: TemporaryServer,
    schema: str,
    backend: PostgresBackend,
    raw: Raw,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = SessionStore(backend)
    session = store.new_session("grow")
    for i in range(KEYED_STATE_MIN):
        grow(session, i, tmp_path)
    store.save(session)
    assert raw.keyed(session.id.bare) == (True, 2 * KEYED_STATE_MIN)
    writes = recorded_writes(backend, monkeypatch)
    for i in range(KEYED_STATE_MIN, KEYED_STATE_MIN + 20):
        grow(session, i, tmp_path)
        session.add_message(Message.user(f"m{i}"))
        store.save(session)
    assert all(w.delta is not None and len(w.delta) == 2 for w in writes)
    assert all("allowances" not in w.state for w in writes)
    with SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as other:
        loaded = other.load(session.id)
        assert loaded is not None
        assert comparable(loaded) == comparable(session)
