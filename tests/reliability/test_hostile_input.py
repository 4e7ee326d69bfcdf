"""Hostile and broken input: a clear typed error (an ``AstridError``) and the rest intact.

Each case damages one thing (a session file, a database row, a config file, an id, the home
directory) and checks that astrid refuses it with an ``AstridError`` subclass naming where the
problem is, that the damaged thing is left as it was (astrid never "repairs" by overwriting),
and that every other session is still listed, loaded and saved.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from astrid.config import load_config
from astrid.default_plugins.capability_stores import (
    FileCapabilityBackend,
    InvalidTokenId,
    SqliteCapabilityBackend,
)
from astrid.default_plugins.file_storage import FileBackend, FileKvStore
from astrid.default_plugins.sqlite_storage import MIGRATIONS, SqliteBackend
from astrid.document import SessionDocument
from astrid.errors import (
    AstridError,
    ConfigError,
    InvalidSessionId,
    SchemaVersionError,
    SerializationError,
    StorageError,
)
from astrid.ids import SessionId
from astrid.messages import Message
from astrid.session import AgentSession
from astrid.store import SessionStore, SessionSummary, SessionWrite, open_store
from astrid.testing.conformance import HOSTILE_IDS, sample_messages
from astrid.timeutil import utcnow

from .harness import child_env

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _tree(root: Path) -> dict[str, Any]:
    """Every path under ``root`` with its content (None for directories).

    A SQLite database is compared by its SQL dump (its pages move when a connection closes and
    checkpoints); its ``-wal``/``-shm`` side files are left out for the same reason.
    """
    out: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if name.endswith(("-wal", "-shm")):
            continue
        if path.is_dir():
            out[name] = None
            continue
        data = path.read_bytes()
        if data.startswith(b"SQLite format 3\0"):
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                out[name] = list(conn.iterdump())
            except sqlite3.DatabaseError:
                out[name] = data
            finally:
                conn.close()
        else:
            out[name] = data
    return out


def _raw_tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its exact bytes (None for directories)."""
    return {
        str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
        for p in sorted(root.rglob("*"))
    }


def _session(n: int, prefix: str = "m") -> AgentSession:
    session = AgentSession(f"prompt {prefix}")
    for i in range(n):
        session.add_message(Message.user(f"{prefix}{i}"))
    return session


# -- damaged session files (file backend) -----------------------------------------------------


def _good_document() -> dict[str, Any]:
    session = _session(3, "c")
    session.metadata.title = "victim"
    return session.to_document().to_data()


def _with(**changes: Any) -> Callable[[dict[str, Any], str], bytes]:
    def make(doc: dict[str, Any], other_id: str) -> bytes:
        data = dict(doc)
        for key, value in changes.items():
            if value is _DROP:
                data.pop(key, None)
            else:
                data[key] = value
        return json.dumps(data).encode()

    return make


_DROP = object()


def _text(raw: bytes) -> Callable[[dict[str, Any], str], bytes]:
    return lambda doc, other_id: raw


def _pretty(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


DAMAGED_FILES: dict[str, Callable[[dict[str, Any], str], bytes]] = {
    "truncated-half": lambda doc, _: _pretty(doc)[: len(_pretty(doc)) // 2],
    "truncated-last-byte": lambda doc, _: _pretty(doc)[:-1],
    "truncated-one-byte": lambda doc, _: b"{",
    "empty": _text(b""),
    "whitespace": _text(b" \n\t "),
    "invalid-json": _text(b"{not json"),
    "trailing-garbage": lambda doc, _: _pretty(doc) + b"\n}garbage",
    "binary-garbage": _text(random.Random(7).randbytes(4096)),
    "nul-bytes": _text(b"\0" * 512),
    "not-utf8": _text(b'{"id": "\xff\xfe"}'),
    "top-level-array": _text(b"[]"),
    "top-level-string": _text(b'"a session"'),
    "top-level-null": _text(b"null"),
    "top-level-number": _text(b"42"),
    "deeply-nested-array": _text(b"[" * 100_000 + b"]" * 100_000),
    "deeply-nested-message": lambda doc, _: (
        json.dumps(doc)
        .replace('"messages": [', '"messages": [' + "[" * 100_000 + "]" * 100_000 + ",", 1)
        .encode()
    ),
    "huge-integer": _text(b'{"token_count": ' + b"9" * 5000 + b"}"),
    "messages-missing": _with(messages=_DROP),
    "messages-an-object": _with(messages={"0": {"role": "user", "content": "x"}}),
    "messages-a-string": _with(messages="hello"),
    "id-not-a-uuid": _with(id="../../etc/passwd"),
    "id-a-number": _with(id=12345),
    "id-of-another-session": lambda doc, other: json.dumps({**doc, "id": other}).encode(),
    "user-id-not-hex": _with(user_id="zzzzzzzzzzzzzzzz"),
    "user-id-wrong-length": _with(user_id="00"),
    "created-at-garbage": _with(created_at="yesterday"),
    "token-count-a-string": _with(token_count="many"),
    "token-count-negative": _with(token_count=-1),
    "token-count-nan": lambda doc, _: json.dumps({**doc, "token_count": float("nan")}).encode(),
    "metadata-a-list": _with(metadata=[]),
    "metadata-counter-negative": lambda doc, _: json.dumps(
        {**doc, "metadata": {**doc["metadata"], "turn_count": -5}}
    ).encode(),
    "metadata-custom-not-strings": lambda doc, _: json.dumps(
        {**doc, "metadata": {**doc["metadata"], "custom": {"k": [1, 2]}}}
    ).encode(),
    "system-prompt-missing": _with(system_prompt=_DROP),
    "allowance-garbage": _with(allowances=[{"garbage": True}]),
    "allowance-bad-signature": lambda doc, _: json.dumps(
        {**doc, "allowances": [_allowance(signature="not base64!")]}
    ).encode(),
    "allowance-unknown-pattern": lambda doc, _: json.dumps(
        {**doc, "allowances": [_allowance(action_pattern={"type": "everything"})]}
    ).encode(),
    "budget-spend-a-string": _with(
        budget_snapshot={"session_spent_usd": "lots", "config": {}, "last_updated": "x"}
    ),
    "budget-limit-nan": lambda doc, _: json.dumps(
        {
            **doc,
            "budget_snapshot": {
                **doc["budget_snapshot"],
                "config": {"session_max_usd": float("nan"), "per_action_max_usd": 1.0},
            },
        }
    ).encode(),
    "escape-paths-a-string": _with(escape_state={"remembered_paths": "/etc"}),
    "parent-id-not-a-uuid": _with(parent_id="../parent"),
    "revision-negative": _with(astrid_revision=-1),
    "revision-a-bool": _with(astrid_revision=True),
    "revision-a-float": _with(astrid_revision=1.5),
    "updated-at-garbage": _with(astrid_updated_at="yesterday"),
    "archived-an-object": _with(astrid_archived_messages={}),
    "archived-item-without-seq": _with(astrid_archived_messages=[{"message": {}}]),
}
"""Damaged session documents (name -> bytes from a good document and another session's id)."""


def _allowance(**changes: Any) -> dict[str, Any]:
    allowance = {
        "id": str(uuid.uuid4()),
        "action_pattern": {"type": "exact_tool", "server": "s", "tool": "t"},
        "created_at": "2025-01-01T00:00:00Z",
        "expires_at": None,
        "max_uses": None,
        "uses_remaining": None,
        "session_only": True,
        "workspace_root": None,
        "signature": "A" * 86 + "==",
    }
    allowance.update(changes)
    return allowance


@pytest.fixture
def file_store(tmp_path: Path) -> Iterator[tuple[SessionStore, list[AgentSession]]]:
    store = SessionStore(FileBackend(tmp_path / "sessions"))
    good = [_session(2, "a"), _session(3, "b")]
    for session in good:
        store.save(session)
    yield store, good
    store.close()


def _assert_others_intact(store: SessionStore, good: list[AgentSession]) -> None:
    for session in good:
        loaded = store.load(session.id)
        assert loaded is not None
        assert [m.to_json() for m in loaded.messages] == [m.to_json() for m in session.messages]
    listed = {row.id for row in store.list_sessions()}
    assert {s.id.bare for s in good} <= listed
    fresh = _session(1, "new")
    store.save(fresh)
    assert store.load(fresh.id) is not None


@pytest.mark.parametrize("case", sorted(DAMAGED_FILES))
def test_a_damaged_session_file_is_refused_and_left_alone(
    case: str, file_store: tuple[SessionStore, list[AgentSession]]
) -> None:
    store, good = file_store
    backend = store.backend
    assert isinstance(backend, FileBackend)
    victim = str(uuid.uuid4())
    path = backend.directory / f"{victim}.json"
    raw = DAMAGED_FILES[case](_good_document() | {"id": victim}, good[0].id.bare)
    path.write_bytes(raw)

    with pytest.raises(SerializationError) as info:
        store.load(victim)
    assert str(path) in str(info.value)
    for attempt in (
        lambda: store.load(victim, tail=1),
        lambda: store.load_document(victim),
        lambda: store.save(AgentSession("overwrite?", session_id=victim)),
    ):
        with pytest.raises(AstridError):
            attempt()
    # Listed (leniently) or reported as a problem: never silently dropped.
    listed = {row.id for row in store.list_sessions()}
    problems = {str(p) for p, _why in backend.problems()}
    assert victim in listed or str(path) in problems
    assert path.read_bytes() == raw, "astrid rewrote a file it could not read"
    # history and append are raw (they do not validate the session state): they either refuse
    # or keep everything that was there.
    try:
        history = store.history(victim)
    except AstridError:
        history = None
    try:
        store.append_messages(victim, [Message.user("appended")])
    except AstridError:
        assert path.read_bytes() == raw
    else:
        assert history is not None
        after = json.loads(path.read_bytes())
        before = json.loads(raw)
        assert after["messages"] == [*before["messages"], {"role": "user", "content": "appended"}]
        assert {k: v for k, v in after.items() if not k.startswith(("messages", "astrid_"))} == {
            k: v for k, v in before.items() if not k.startswith(("messages", "astrid_"))
        }
    _assert_others_intact(store, good)


DAMAGED_INDEXES: dict[str, bytes] = {
    "deeply-nested": b"[" * 100_000,
    "binary-garbage": random.Random(11).randbytes(2048),
    "other-format": b'{"format": 99, "sessions": {}}',
    "wrong-types": b'{"format": 1, "sessions": {"x": 5, "y": {"summary": "no"}}}',
    "lying-counts": b"",  # filled in by the test: an index claiming 999 messages per session
}


@pytest.mark.parametrize("case", sorted(DAMAGED_INDEXES))
def test_a_damaged_listing_index_is_only_a_cache(
    case: str, file_store: tuple[SessionStore, list[AgentSession]]
) -> None:
    store, good = file_store
    backend = store.backend
    assert isinstance(backend, FileBackend)
    index = backend.directory / ".astrid-index.json"
    raw = DAMAGED_INDEXES[case]
    if case == "lying-counts":
        data = json.loads(index.read_bytes())
        for entry in data["sessions"].values():
            entry["message_count"] = 999
            entry["ino"] = entry["mtime_ns"] = entry["size"] = 0  # no longer the files' stat
        raw = json.dumps(data).encode()
    index.write_bytes(raw)
    fresh = SessionStore(FileBackend(backend.directory))  # a new process: nothing cached
    rows = {row.id: row.message_count for row in fresh.list_sessions()}
    assert rows == {s.id.bare: len(s.messages) for s in good}
    assert fresh.backend.problems() == []  # type: ignore[attr-defined]
    _assert_others_intact(fresh, good)


WORKSPACE_KV: dict[str, tuple[str, bytes]] = {
    "allowances-not-json": ("allowances", b"[{not json"),
    "allowances-deeply-nested": ("allowances", b"[" * 100_000),
    "allowances-wrong-shape": ("allowances", b'[{"id": 5}]'),
    "budget-not-json": ("budget", b"{"),
    "budget-deeply-nested": ("budget", b'{"a":' * 50_000),
    "budget-wrong-type": ("budget", b'{"total_spent_usd": "lots", "last_updated": 1}'),
    "escape-wrong-type": ("escape", b'{"remembered_paths": 5}'),
    "escape-not-utf8": ("escape", b"\xff\xfe"),
}


@pytest.mark.parametrize("case", sorted(WORKSPACE_KV))
@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_damaged_workspace_state_is_a_typed_error_for_that_workspace_only(
    backend: str, case: str, tmp_path: Path
) -> None:
    store = SessionStore(
        SqliteBackend(tmp_path / "a.db") if backend == "sqlite" else FileBackend(tmp_path / "s")
    )
    try:
        damaged, healthy = tmp_path / "ws-damaged", tmp_path / "ws-healthy"
        for ws in (damaged, healthy):
            ws.mkdir()
            store.attach_workspace(store.new_session("p"), ws, max_usd=5.0)
        part, raw = WORKSPACE_KV[case]
        store.kv(f"ws:{damaged}:{part}").set("all", raw)
        with pytest.raises(SerializationError):
            store.load_workspace_state(damaged)
        with pytest.raises(SerializationError):
            store.attach_workspace(store.new_session("p"), damaged)
        assert store.kv(f"ws:{damaged}:{part}").get("all") == raw  # left as it was
        tracker = store.attach_workspace(store.new_session("p"), healthy, max_usd=5.0)
        assert tracker.spent() == 0.0
    finally:
        store.close()


# -- damaged rows (SQLite) ---------------------------------------------------------------------

_NO_TEXT = "role = NULL, text = NULL,"
"""Text messages are ``role``/``text`` columns: damaging ``body`` means making it the message."""

DAMAGED_ROWS: dict[str, tuple[str, Any]] = {
    "state-not-json": ("UPDATE sessions SET state = ? WHERE id = ?", "{not json"),
    "state-an-array": ("UPDATE sessions SET state = ? WHERE id = ?", "[1, 2]"),
    "state-deeply-nested": ("UPDATE sessions SET state = ? WHERE id = ?", "[" * 100_000),
    "state-wrong-types": (
        "UPDATE sessions SET state = ? WHERE id = ?",
        json.dumps({"id": "x", "token_count": "many"}),
    ),
    "state-a-blob": ("UPDATE sessions SET state = ? WHERE id = ?", b"\xff\x00\xfe"),
    "body-not-json": (f"UPDATE messages SET {_NO_TEXT} body = ? WHERE session_id = ?", "{not json"),
    "body-a-blob": (f"UPDATE messages SET {_NO_TEXT} body = ? WHERE session_id = ?", b"\xff\xfe"),
    "body-deeply-nested": (
        f"UPDATE messages SET {_NO_TEXT} body = ? WHERE session_id = ?",
        "[" * 100_000,
    ),
    "text-a-blob": ("UPDATE messages SET text = ? WHERE session_id = ?", b"\xff\xfe"),
    "text-without-role": ("UPDATE messages SET role = ? WHERE session_id = ?", None),
    "neither-text-nor-body": (
        "UPDATE messages SET text = ?, body = NULL WHERE session_id = ?",
        None,
    ),
    "updated-at-garbage": ("UPDATE sessions SET updated_at = ? WHERE id = ?", "yesterday"),
    "created-at-garbage": ("UPDATE sessions SET created_at = ? WHERE id = ?", "yesterday"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED_ROWS))
def test_a_damaged_database_row_is_a_typed_error_for_that_session_only(
    case: str, tmp_path: Path
) -> None:
    db = tmp_path / "astrid.db"
    store = SessionStore(SqliteBackend(db))
    try:
        good = [_session(2, "a"), _session(3, "b")]
        for session in good:
            store.save(session)
        victim = _session(3, "v")
        store.save(victim)
        sql, value = DAMAGED_ROWS[case]
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA ignore_check_constraints = ON")  # a hand edit past the CHECKs
        conn.execute(sql, (value, victim.id.bare))
        conn.commit()
        conn.close()
        if case.endswith("-at-garbage"):
            # Listing columns only: the document itself is intact, so the session still
            # loads, and the unreadable time (read as the epoch) does not break the listing.
            loaded = store.load(victim.id)
            assert loaded is not None and len(loaded.messages) == len(victim.messages)
            listed = {row.id: row for row in store.list_sessions()}
            assert listed[victim.id.bare].updated_at.year == 1970 or case.startswith("created")
        else:
            with pytest.raises(SerializationError) as info:
                store.load(victim.id)
            assert victim.id.bare in str(info.value)
        _assert_others_intact(store, good)
    finally:
        store.close()


# -- sizes, unknown fields and unknown roles ---------------------------------------------------

TEN_MB = 10 * 1024 * 1024


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_a_ten_megabyte_message_round_trips_and_the_store_stays_usable(
    backend: str, tmp_path: Path
) -> None:
    store = SessionStore(
        SqliteBackend(tmp_path / "a.db") if backend == "sqlite" else FileBackend(tmp_path / "s")
    )
    try:
        others = [_session(2, "a")]
        store.save(others[0])
        huge = ('0123456789abcdef\u00e9\U0001f680"\\\n' * (TEN_MB // 19 + 1))[:TEN_MB]
        assert len(huge.encode()) > TEN_MB
        session = _session(1, "h")
        session.add_message(Message.user(huge))
        session.add_message(Message.tool_result(_tool_result(huge[: TEN_MB // 10][::-1])))
        store.save(session)
        session.add_message(Message.assistant("after the huge ones"))
        store.save(session)
        loaded = store.load(session.id)
        assert loaded is not None
        assert len(loaded.messages) == 4
        assert loaded.messages[1].text() == huge
        assert loaded.messages[2].to_json() == session.messages[2].to_json()
        tail = store.load(session.id, tail=1)
        assert tail is not None and tail.messages[0].text() == "after the huge ones"
        rows = {r.id: r.message_count for r in store.list_sessions()}
        assert rows == {others[0].id.bare: 2, session.id.bare: 4}
        _assert_others_intact(store, others)
    finally:
        store.close()


def _tool_result(text: str) -> Any:
    from astrid.messages import ToolCallResult

    return ToolCallResult.success("call-1", text)


RUST_WITH_EXTRAS: dict[str, Any] = {
    "id": "6f1c2a8e-0b7d-4f4e-9a51-2d3c4b5a6978",
    "user_id": "0102030405060708",
    "messages": [
        {"role": "user", "content": "hi", "x_message_field": {"kept": [1, None]}},
        {"role": "critic", "content": "an unknown role", "score": 0.5},
        {"role": "assistant", "content": {"kind": "future-content", "n": [1, 2]}},
        {"role": "tool"},
        ["not", "an", "object"],
        {"role": "user", "content": [{"type": "video", "url": "x"}]},
    ],
    "system_prompt": "You are ...",
    "created_at": "2026-02-22T03:48:10.123456789Z",
    "token_count": 205,
    "metadata": {
        "title": None,
        "tags": [],
        "turn_count": 0,
        "tool_call_count": 1,
        "approval_count": 0,
        "custom": {},
        "x_meta_field": {"from": "a newer writer"},
    },
    "allowances": [],
    "budget_snapshot": None,
    "escape_state": {"remembered_paths": []},
    "workspace_path": None,
    "model": None,
    "git_state": {"branch": "main", "commit": "0123abcd", "x_git_field": True},
    "x_top_level": {"nested": ["kept", 1, 2.5, None, True]},
}


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_unknown_fields_and_roles_survive_load_add_save(backend: str, tmp_path: Path) -> None:
    sid = RUST_WITH_EXTRAS["id"]
    if backend == "file":
        directory = tmp_path / "sessions"
        directory.mkdir()
        (directory / f"{sid}.json").write_text(json.dumps(RUST_WITH_EXTRAS, indent=2))
        store = SessionStore(FileBackend(directory))
    else:
        store = SessionStore(SqliteBackend(tmp_path / "a.db"))
        store.save(AgentSession.from_document(SessionDocument.from_data(RUST_WITH_EXTRAS)))
    try:
        for _round in range(2):
            session = store.load(sid)
            assert session is not None
            session.add_message(Message.user("added by astrid"))
            store.save(session)
        document = store.load_document(sid)
        assert document is not None
        data = document.to_data()
        stored = data["messages"]
        assert stored[: len(RUST_WITH_EXTRAS["messages"])] == RUST_WITH_EXTRAS["messages"]
        assert stored[-2:] == [{"role": "user", "content": "added by astrid"}] * 2
        for key in ("x_top_level",):
            assert data[key] == RUST_WITH_EXTRAS[key]
        assert data["metadata"]["x_meta_field"] == {"from": "a newer writer"}
        assert data["git_state"]["x_git_field"] is True
        if backend == "file":  # and on disk, where the Rust astrid reads them
            raw = json.loads((tmp_path / "sessions" / f"{sid}.json").read_text())
            assert raw["x_top_level"] == RUST_WITH_EXTRAS["x_top_level"]
            assert raw["messages"][:6] == RUST_WITH_EXTRAS["messages"]
    finally:
        store.close()


# -- hostile ids ------------------------------------------------------------------------------

MORE_HOSTILE_IDS = (
    *HOSTILE_IDS,
    "..%2f..%2fetc%2fpasswd",
    "..\\..\\windows",
    "00000000-0000-4000-8000-000000000001.json",
    "00000000-0000-4000-8000-000000000001/",
    "/00000000-0000-4000-8000-000000000001",
    "~/00000000-0000-4000-8000-000000000001",
    "\u202e00000000-0000-4000-8000-000000000001",
    "x" * 10_000,
)


@pytest.mark.parametrize("bad", MORE_HOSTILE_IDS, ids=lambda v: repr(v)[:40])
def test_hostile_ids_are_refused_before_any_filesystem_access(bad: str, tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "sessions", kv_directory=tmp_path / "kv")
    store = SessionStore(backend)
    store.save(_session(1))
    sqlite_store = SessionStore(SqliteBackend(tmp_path / "a.db"))
    sqlite_store.save(_session(1))
    caps = FileCapabilityBackend(tmp_path / "caps")
    before = _tree(tmp_path)
    summary = SessionSummary(
        id=bad,
        title=None,
        created_at=utcnow(),
        updated_at=utcnow(),
        message_count=0,
        token_count=0,
        workspace_path=None,
    )
    write = SessionWrite(
        session_id=bad,
        expected_revision=None,
        state={},
        messages=[],
        base_count=0,
        replace=False,
        summary=summary,
    )
    refused_as_session_ids: list[Callable[[], object]] = [
        lambda: backend.load(bad),
        lambda: backend.write(write),
        lambda: backend.append(bad, [{"role": "user", "content": "x"}]),
        lambda: backend.delete(bad),
        lambda: backend.history(bad),
        lambda: backend.path_of(bad),
        lambda: AgentSession("x", session_id=bad),
        lambda: SessionId.parse(bad),
    ]
    for facade in (store, sqlite_store):
        refused_as_session_ids += [
            lambda facade=facade: facade.load(bad),
            lambda facade=facade: facade.load_document(bad),
            lambda facade=facade: facade.history(bad),
            lambda facade=facade: facade.delete(bad),
            lambda facade=facade: facade.append_messages(bad, [Message.user("x")]),
            lambda facade=facade: facade.deferred_queue_kv(bad),
        ]
    for attempt in refused_as_session_ids:
        with pytest.raises(InvalidSessionId):
            attempt()
    for attempt in (
        lambda: caps.put_token(bad, "{}"),
        lambda: caps.get_token(bad),
        lambda: caps.delete_token(bad),
        lambda: caps.add_revoked(bad),
        lambda: caps.add_used(bad),
    ):
        with pytest.raises(InvalidTokenId):
            attempt()
    sqlite_store.close()
    assert _tree(tmp_path) == before, "a refused id still touched the filesystem"


def test_kv_names_with_traversal_stay_inside_the_kv_directory(tmp_path: Path) -> None:
    kv = FileKvStore(tmp_path / "root" / "kv")
    names = ["../../escaped", "/etc/passwd", "..", ".", "a/b/../../c", "~", "x" * 1000]
    for namespace in names:
        for key in names:
            kv.set(namespace, key, f"{namespace}|{key}".encode())
    for namespace in names:
        assert kv.list_keys(namespace) == sorted(names)
        for key in names:
            assert kv.get(namespace, key) == f"{namespace}|{key}".encode()
    outside = [p for p in tmp_path.rglob("*") if not str(p).startswith(str(tmp_path / "root"))]
    assert outside == []
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["kv"]


# -- config files ------------------------------------------------------------------------------

BAD_CONFIGS: dict[str, tuple[str | bytes, str]] = {
    "unknown-top-level-key": ("colour = 'blue'\n", "colour"),
    "unknown-section": ("[telemetry]\nenabled = true\n", "telemetry"),
    "unknown-key-in-section": ("[storage]\nbackend = 'sqlite'\nbackup = true\n", "backup"),
    "unknown-plugin-option": ("[storage.options]\npathh = '/x'\n", "pathh"),
    "unknown-backend": ("[storage]\nbackend = 'mongodb'\n", "mongodb"),
    "backend-traversal": ("[storage]\nbackend = '../../evil'\n", "storage.backend"),
    "backend-a-number": ("[storage]\nbackend = 5\n", "storage.backend"),
    "backend-a-list": ("[storage]\nbackend = ['sqlite']\n", "storage.backend"),
    "section-a-string": ("storage = 'sqlite'\n", "storage"),
    "options-a-string": ("[storage]\noptions = 'x'\n", "storage.options"),
    "option-wrong-type": ("[storage.options]\npath = 5\n", "storage.options.path"),
    "option-negative": ("[storage.options]\nbusy_timeout_ms = -1\n", "busy_timeout_ms"),
    "option-bad-literal": ("[storage.options]\nsynchronous = 'OFF'\n", "synchronous"),
    "budget-a-string": ("[budget]\nsession_max_usd = 'lots'\n", "budget.session_max_usd"),
    "budget-nan": ("[budget]\nsession_max_usd = nan\n", "budget.session_max_usd"),
    "budget-inf": ("[budget]\nper_action_max_usd = inf\n", "budget.per_action_max_usd"),
    "budget-negative": ("[budget]\nworkspace_max_usd = -1.0\n", "budget.workspace_max_usd"),
    "budget-huge-float": ("[budget]\nsession_max_usd = 1e400\n", "budget.session_max_usd"),
    "warn-over-100": ("[budget]\nwarn_at_percent = 101\n", "budget.warn_at_percent"),
    "warn-a-float": ("[budget]\nwarn_at_percent = 1.5\n", "budget.warn_at_percent"),
    "warn-a-date": ("[budget]\nwarn_at_percent = 1979-05-27\n", "budget.warn_at_percent"),
    "invalid-toml": ("[storage\n", "invalid TOML"),
    "duplicate-key": ("[budget]\nsession_max_usd = 1.0\nsession_max_usd = 2.0\n", "TOML"),
    "not-utf8": (b"[storage]\nbackend = '\xff\xfe'\n", "UTF-8"),
    "binary-garbage": (random.Random(3).randbytes(2048), "c.toml"),
    "huge-integer": ("[budget]\nwarn_at_percent = " + "9" * 5000 + "\n", "c.toml"),
    "deeply-nested-array": ("x = " + "[" * 5000 + "]" * 5000 + "\n", "c.toml"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_a_bad_config_file_is_a_config_error_naming_the_file_and_key(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("ASTRID_HOME", str(home))
    text, needle = BAD_CONFIGS[case]
    path = tmp_path / "c.toml"
    raw = text if isinstance(text, bytes) else text.encode()
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        open_store(path)
    message = str(info.value)
    assert str(path) in message and needle in message, message
    assert path.read_bytes() == raw
    assert not home.exists(), "a refused config still created the home directory"


@pytest.mark.parametrize(
    "text",
    [
        "[budget]\nsession_max_usd = true\n",
        "[budget]\nwarn_at_percent = false\n",
        "[storage.options]\nbusy_timeout_ms = true\n",
    ],
)
def test_a_boolean_where_a_number_belongs_is_a_config_error(
    text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_config(path)


# -- SQLite files that are not astrid databases ------------------------------------------------


def _foreign_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('somebody else''s data')")
    conn.commit()
    conn.close()


def _truncated_astrid_database(path: Path) -> None:
    scratch = path.with_name("full.db")
    store = SessionStore(SqliteBackend(scratch))
    for i in range(40):
        store.save(_session(20, f"s{i}-"))
    store.close()
    data = scratch.read_bytes()
    scratch.unlink()
    path.write_bytes(data[: len(data) // 3])


NOT_DATABASES: dict[str, Callable[[Path], None]] = {
    "text-file": lambda p: p.write_text("hello, I am a text file\n"),
    "random-bytes": lambda p: p.write_bytes(random.Random(5).randbytes(8192)),
    "header-then-garbage": lambda p: p.write_bytes(
        b"SQLite format 3\0" + random.Random(6).randbytes(8192)
    ),
    "json-session": lambda p: p.write_text(json.dumps(_good_document())),
    "another-applications-database": _foreign_database,
    "truncated-astrid-database": _truncated_astrid_database,
}


@pytest.mark.parametrize("case", sorted(NOT_DATABASES))
def test_a_file_that_is_not_an_astrid_database_is_refused_and_left_alone(
    case: str, tmp_path: Path
) -> None:
    path = tmp_path / "astrid.db"
    NOT_DATABASES[case](path)
    before = _raw_tree(tmp_path)
    with pytest.raises(StorageError) as info:
        store = SessionStore(SqliteBackend(path))
        try:  # a damaged database may open and fail on first use
            for row in store.list_sessions(limit=1000):
                store.load(row.id)
        finally:
            store.close()
    assert str(path) in str(info.value)
    assert _raw_tree(tmp_path) == before, "astrid changed a database that is not its own"


@pytest.mark.parametrize("case", ["text-file", "random-bytes", "header-then-garbage"])
def test_a_capability_database_that_is_not_a_database_is_refused(case: str, tmp_path: Path) -> None:
    path = tmp_path / "capabilities.db"
    NOT_DATABASES[case](path)
    before = path.read_bytes()
    with pytest.raises(StorageError):
        SqliteCapabilityBackend(path)
    assert path.read_bytes() == before


def test_a_directory_where_the_database_should_be_is_refused(tmp_path: Path) -> None:
    (tmp_path / "astrid.db").mkdir()
    with pytest.raises(StorageError, match="directory"):
        SqliteBackend(tmp_path / "astrid.db")


def _newer(path: Path, *, user_version: int | None, migration: str | None) -> None:
    SqliteBackend(path).close()
    conn = sqlite3.connect(path)
    if migration is not None:
        conn.execute(
            "INSERT INTO _astrid_migrations (name, applied_at) VALUES (?, ?)", (migration, "x")
        )
    if user_version is not None:
        conn.execute(f"PRAGMA user_version = {user_version:d}")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    ("user_version", "migration"),
    [(len(MIGRATIONS) + 1, None), (99, "0099_from_the_future"), (None, "0004_unknown")],
)
def test_a_database_from_a_newer_schema_is_refused_with_a_message(
    user_version: int | None, migration: str | None, tmp_path: Path
) -> None:
    path = tmp_path / "astrid.db"
    _newer(path, user_version=user_version, migration=migration)
    before = _tree(tmp_path)
    with pytest.raises(SchemaVersionError, match="newer astrid") as info:
        SqliteBackend(path)
    assert str(path) in str(info.value)
    assert _tree(tmp_path) == before
    conn = sqlite3.connect(path)
    names = {row[0] for row in conn.execute("SELECT name FROM _astrid_migrations")}
    conn.close()
    assert {name for name, _ in MIGRATIONS} <= names


def test_a_capability_database_from_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "capabilities.db"
    SqliteCapabilityBackend(path).close()
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO _astrid_migrations (name, applied_at) VALUES (?, ?)",
        ("capabilities_0002_from_the_future", "x"),
    )
    conn.commit()
    conn.close()
    with pytest.raises(SchemaVersionError):
        SqliteCapabilityBackend(path)


# -- a home directory astrid cannot write -----------------------------------------------------


def test_a_home_that_is_a_file_gives_storage_errors_not_crashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Works as root too: no mode bits involved, directory creation itself fails."""
    home = tmp_path / "home"
    home.write_text("I am a file, not a directory\n")
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError):
        open_store()  # the default: SQLite at <home>/astrid.db
    with pytest.raises(StorageError):
        SqliteBackend(home / "sub" / "astrid.db")
    with pytest.raises(StorageError, match=f"{home} is not a directory"):
        FileBackend(home / "sessions")  # refused at open, not listed as "no sessions"
    with pytest.raises(StorageError):
        FileKvStore(home / "kv").set("ns", "key", b"v")
    with pytest.raises(StorageError):
        FileCapabilityBackend(home / "capabilities")
    with pytest.raises(StorageError):
        SqliteCapabilityBackend(home / "capabilities.db")
    assert home.read_text() == "I am a file, not a directory\n"
    cli = subprocess.run(
        [sys.executable, "-m", "astrid.cli", "sessions", "list"],
        capture_output=True,
        text=True,
        env=child_env(home),
        cwd=str(tmp_path),
        timeout=60,
    )
    assert cli.returncode != 0
    assert "Traceback" not in cli.stderr and str(home) in cli.stderr, cli.stderr


READ_ONLY_SCRIPT = r"""
import sys, uuid
from pathlib import Path
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import AstridError, StorageError
from astrid.messages import Message
from astrid.session import AgentSession
from astrid.store import SessionStore

home, sid = Path(sys.argv[1]), sys.argv[2]
files = SessionStore(FileBackend(home / "sessions"))
loaded = files.load(sid)
assert loaded is not None and loaded.messages[0].text() == "kept", "cannot read a read-only store"
assert [r.id for r in files.list_sessions()] == [sid]
loaded.add_message(Message.user("more"))
try:
    files.save(loaded)
except StorageError:
    pass
else:
    raise SystemExit("saved into a read-only directory")
try:
    files.save(AgentSession("new"))
except StorageError:
    pass
else:
    raise SystemExit("created a session in a read-only directory")
try:
    SessionStore(SqliteBackend(home / "new.db"))
except StorageError:
    pass
else:
    raise SystemExit("created a database in a read-only directory")
try:  # a read-only database may refuse to open, or open and refuse the write
    store = SessionStore(SqliteBackend(home / "astrid.db"))
    store.list_sessions()
    store.save(AgentSession("new"))
except AstridError:
    pass
else:
    raise SystemExit("saved into a read-only database")
print("ok")
"""


NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]


def _as_nobody() -> list[str] | None:
    """The ``setpriv`` prefix that runs a command as ``nobody``, if that works here."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    try:
        probe = subprocess.run(
            [setpriv, *NOBODY, sys.executable, "-c", "import astrid, os; print(os.geteuid())"],
            env=child_env(),
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return [setpriv, *NOBODY] if probe.stdout.strip() == "65534" else None


def test_a_read_only_home_directory_reads_but_refuses_writes() -> None:
    """Every directory of the home 0500 and every file 0400: reads work, writes are refused.

    Root ignores mode bits, so as root the check runs in a child that drops to ``nobody``
    (``setpriv``); it is skipped only when that is impossible (the home-is-a-file test above
    covers root).
    """
    prefix: list[str] = []
    if IS_ROOT:
        nobody = _as_nobody()
        if nobody is None:
            pytest.skip("running as root without a way to drop to nobody: root ignores mode bits")
        prefix = nobody
    base = Path(tempfile.mkdtemp(prefix="astrid-read-only-"))  # reachable by nobody
    home = base / "home"
    try:
        files = SessionStore(FileBackend(home / "sessions"))
        session = _session(0)
        session.add_message(Message.user("kept"))
        files.save(session)
        files.close()
        sqlite = SessionStore(SqliteBackend(home / "astrid.db"))
        sqlite.save(_session(2))
        sqlite.close()
        if IS_ROOT:
            for path in [base, *base.rglob("*")]:
                os.chown(path, 65534, 65534)
        before = _tree(home)
        everything = [*sorted(home.rglob("*"), reverse=True), home]
        for path in everything:  # the whole home read-only: directories 0500, files 0400
            path.chmod(0o500 if path.is_dir() else 0o400)
        try:
            result = subprocess.run(
                [*prefix, sys.executable, "-c", READ_ONLY_SCRIPT, str(home), session.id.bare],
                env=child_env(home),
                cwd="/",
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            for path in reversed(everything):
                path.chmod(0o700 if path.is_dir() else 0o600)
        assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
        assert _tree(home) == before
    finally:
        shutil.rmtree(base)


def test_hostile_messages_of_every_kind_survive_both_backends(tmp_path: Path) -> None:
    """The conformance sample plus lone surrogates: a typed error where JSON cannot carry it."""
    stores = [
        SessionStore(SqliteBackend(tmp_path / "a.db")),
        SessionStore(FileBackend(tmp_path / "s")),
    ]
    for store in stores:
        session = AgentSession("p")
        for message in sample_messages():
            session.add_message(message)
        store.save(session)
        broken = AgentSession("p")
        broken.add_message(Message.user("lone surrogate \ud800 here"))
        with pytest.raises(SerializationError):
            store.save(broken)
        assert store.load(broken.id) is None
        loaded = store.load(session.id)
        assert loaded is not None
        assert [m.to_json() for m in loaded.messages] == [m.to_json() for m in session.messages]
        store.close()


# -- a model cannot poison a session (issue 14 item 9) ---------------------------------------

POISON_ARGUMENTS = {
    "lone-surrogate": '{"text": "\\ud800"}',
    "lone-surrogate-key": '{"\\udc00": "x"}',
    "nan": '{"text": NaN}',
    "infinity": '{"text": [1, -Infinity]}',
    "huge-integer": '{"text": 123456789012345678901234567890}',
    "too-many-digits": '{"text": ' + "9" * 5000 + "}",
}


def _poison_store(kind: str, tmp_path: Path) -> SessionStore:
    if kind == "sqlite":
        return SessionStore(SqliteBackend(tmp_path / "astrid.db"))
    return SessionStore(FileBackend(tmp_path / "sessions"))


def _echo_runtime(store: SessionStore, turns: list[list[dict[str, Any]]], workspace: Path) -> Any:
    from astrid.default_plugins.scripted_provider import ScriptedProvider
    from astrid.runtime import AgentRuntime, RuntimeConfig
    from astrid.tools import FunctionTool

    ran: list[Any] = []
    echo = FunctionTool(
        "echo",
        "Echo the text back.",
        {"type": "object", "properties": {"text": {"type": "string"}}},
        lambda args, ctx: ran.append(args) or f"echo: {args.get('text', '')}",
    )
    provider = ScriptedProvider(turns)
    runtime = AgentRuntime(
        provider, store=store, config=RuntimeConfig(workspace=workspace), tools=[echo]
    )
    return runtime, provider, ran


def _usage(tokens_in: int, tokens_out: int) -> dict[str, Any]:
    return {"usage": {"input_tokens": tokens_in, "output_tokens": tokens_out}}


@pytest.mark.parametrize("kind", ["sqlite", "file"])
@pytest.mark.parametrize("poison", sorted(POISON_ARGUMENTS))
def test_a_tool_call_no_store_can_keep_is_refused_and_the_session_still_saves(
    kind: str, poison: str, tmp_path: Path
) -> None:
    import asyncio

    workspace = tmp_path / "ws"
    workspace.mkdir()
    store = _poison_store(kind, tmp_path)
    turns = [
        [
            {"tool_call": {"id": "c1", "name": "echo", "arguments": POISON_ARGUMENTS[poison]}},
            _usage(1000, 500),
        ],
        [{"text": "I see the error."}, _usage(2000, 100)],
        [{"text": "second turn"}, _usage(10, 10)],
    ]
    runtime, provider, ran = _echo_runtime(store, turns, workspace)
    session = runtime.create_session("p")
    result = asyncio.run(runtime.run_turn(session, "go"))
    assert result.text == "I see the error."
    assert ran == []  # the tool was not run
    [record] = result.tool_calls
    assert record.result.is_error
    assert record.result.content.startswith("Invalid arguments for tool echo: ")
    # Python's json refuses 5 000 digits itself (an "invalid JSON" result, not a crash).
    assert ("refused" if poison != "too-many-digits" else "invalid JSON") in record.result.content
    seen = provider.requests[1][0]  # what the model was sent on its next call
    assert seen[-1].tool_result_content() == record.result
    spent = session.budget_tracker.spent()
    assert spent > 0
    loaded = store.load(session.id)
    assert loaded is not None
    assert [m.to_json() for m in loaded.messages] == [m.to_json() for m in session.messages]
    assert loaded.budget_tracker.spent() == pytest.approx(spent)
    assert asyncio.run(runtime.run_turn(session, "again")).text == "second turn"
    again = store.load(session.id)
    assert again is not None and again.messages[-1].text() == "second turn"
    assert again.budget_tracker.spent() == pytest.approx(session.budget_tracker.spent())
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_text_ids_names_and_tool_output_with_lone_surrogates_are_stored_replaced(
    kind: str, tmp_path: Path
) -> None:
    import asyncio

    workspace = tmp_path / "ws"
    workspace.mkdir()
    store = _poison_store(kind, tmp_path)
    turns = [
        [
            {"text": "thinking \ud800"},
            {"tool_call": {"id": "c\udfff", "name": "echo", "arguments": {"text": "ok"}}},
            {"tool_call": {"id": "c2", "name": "ech\ud800", "arguments": {}}},
        ],
        [{"text": "done \udc00"}],
    ]
    runtime, _provider, _ran = _echo_runtime(store, turns, workspace)
    session = runtime.create_session("p")
    result = asyncio.run(runtime.run_turn(session, "go"))
    assert result.text == "done \ufffd"
    assert [r.call.id for r in result.tool_calls] == ["c\ufffd", "c2"]
    assert result.tool_calls[0].result.content == "echo: ok"
    assert "Unknown tool: ech\ufffd" in result.tool_calls[1].result.content
    loaded = store.load(session.id)
    assert loaded is not None
    assert [m.to_json() for m in loaded.messages] == [m.to_json() for m in session.messages]
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_a_save_refused_for_a_host_message_still_stores_the_spend(
    kind: str, tmp_path: Path
) -> None:
    import asyncio

    workspace = tmp_path / "ws"
    workspace.mkdir()
    store = _poison_store(kind, tmp_path)
    turns = [[{"text": "one"}, _usage(1000, 500)], [{"text": "two"}, _usage(1000, 500)]]
    runtime, _provider, _ran = _echo_runtime(store, turns, workspace)
    session = runtime.create_session("p")
    asyncio.run(runtime.run_turn(session, "first"))
    session.add_message(Message.user("pasted \ud800 by the host"))
    with pytest.raises(SerializationError, match=rf"session {session.id.bare}: message 2 "):
        asyncio.run(runtime.run_turn(session, "second"))
    stored = store.load(session.id)
    assert stored is not None
    assert stored.budget_tracker.spent() == pytest.approx(session.budget_tracker.spent())
    assert [m.text() for m in stored.messages] == ["first", "one"]  # nothing else written
    session.messages[2] = Message.user("pasted by the host")  # the host fixes its message
    store.save(session)
    fixed = store.load(session.id)
    assert fixed is not None
    assert [m.to_json() for m in fixed.messages] == [m.to_json() for m in session.messages]
    store.close()
