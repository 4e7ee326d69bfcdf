"""Moving sessions between SQLite and PostgreSQL: through the public API and ``astrid migrate``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from astrid.config import load_config
from astrid.messages import Message
from astrid.store import SessionStore, WorkspaceState, open_store
from astrid.testing import HOSTILE_TEXTS, sample_messages
from psycopg import sql

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.testing import LoginRole, TemporaryServer

PASSWORD_ENV = "ASTRID_TEST_PG_PASSWORD"


def populate(store: SessionStore, workspace: Path) -> list[str]:
    """Sessions with every message kind, summarized history, a child, workspace and kv state."""
    first = store.new_session("You are first.")
    store.attach_workspace(first, workspace)
    for message in sample_messages():
        first.add_message(message)
    first.budget_tracker.record_cost(0.5)
    first.metadata.title = "first \U0001f680"
    store.save(first)
    first.messages = [Message.system("summary of the start"), *first.messages[-2:]]
    store.save(first)  # a rewrite: the replaced messages stay in the history
    first.add_message(Message.user("after the summary"))
    store.save(first)
    store.save_workspace_of(first)
    store.deferred_queue_kv(first.id).set("pending", b'{"x": 1}')
    child = first.child("You are a child.")
    child.add_message(Message.user("sub task"))
    store.save(child)
    hostile = store.new_session(HOSTILE_TEXTS[2])
    hostile.metadata.title = "NUL\0title"
    for text in HOSTILE_TEXTS:
        hostile.add_message(Message.user(text))
    store.save(hostile)
    ids = [first.id.bare, child.id.bare, hostile.id.bare]
    for n in range(3):
        session = store.new_session(f"prompt {n}")
        for i in range(n):
            session.add_message(Message.user(f"question {i}"))
            session.add_message(Message.assistant(f"answer {i}"))
        store.save(session)
        ids.append(session.id.bare)
    if store.capabilities is not None and store.capabilities.backend is not None:
        store.capabilities.backend.add_revoked(str(uuid.uuid4()))
    return ids


def copy_through_the_api(source: SessionStore, target: SessionStore, workspace: Path) -> None:
    """Load every session from one store and save it into the other (active messages only)."""
    for row in source.list_sessions(limit=1000):
        session = source.load(row.id)
        assert session is not None
        target.save(session)
    target.save_workspace_state(workspace, source.load_workspace_state(workspace))


def document(store: SessionStore, sid: str, *, resaved: bool) -> dict[str, Any]:
    doc = store.load_document(sid)
    assert doc is not None
    data = doc.to_data()
    if resaved:
        # Saving a loaded session takes a fresh budget snapshot: only its time may differ.
        data["budget_snapshot"].pop("last_updated", None)
    return data


def same_documents(a: SessionStore, b: SessionStore, ids: list[str], *, resaved: bool) -> None:
    assert sorted(s.id for s in a.list_sessions(limit=1000)) == sorted(ids)
    assert sorted(s.id for s in b.list_sessions(limit=1000)) == sorted(ids)
    for sid in ids:
        assert document(a, sid, resaved=resaved) == document(b, sid, resaved=resaved), sid


def test_sqlite_to_postgres_to_sqlite_through_the_public_api(
    pg_server: TemporaryServer, schema: str, tmp_path: Path
) -> None:
    from astrid.default_plugins.sqlite_storage import SqliteBackend

    workspace = tmp_path / "ws"
    workspace.mkdir()
    with (
        SessionStore(SqliteBackend(tmp_path / "a.db")) as first,
        SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as middle,
        SessionStore(SqliteBackend(tmp_path / "c.db")) as last,
    ):
        ids = populate(first, workspace)
        copy_through_the_api(first, middle, workspace)
        copy_through_the_api(middle, last, workspace)
        same_documents(first, middle, ids, resaved=True)
        same_documents(first, last, ids, resaved=True)
        assert first.load_workspace_state(workspace) == middle.load_workspace_state(workspace)
        assert middle.load_workspace_state(workspace) == last.load_workspace_state(workspace)
        assert first.load_workspace_state(workspace) != WorkspaceState()


def write_configs(
    tmp_path: Path, server: TemporaryServer, schema: str, owner: LoginRole
) -> tuple[Path, Path, Path]:
    def sqlite(name: str) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(
            f'[storage]\nbackend = "sqlite"\n[storage.options]\npath = "{tmp_path}/{name}.db"\n'
            f'[capabilities]\nstore = "sqlite"\n'
            f'[capabilities.options]\npath = "{tmp_path}/{name}-caps.db"\n',
            encoding="utf-8",
        )
        return path

    postgres = tmp_path / "pg.toml"
    options = (
        f'dsn = "{server.dsn(user=owner.name)}"\nschema = "{schema}"\n'
        f'password_env = "{PASSWORD_ENV}"\n'
    )
    postgres.write_text(
        f'[storage]\nbackend = "postgres"\n[storage.options]\n{options}'
        f'[capabilities]\nstore = "postgres"\n[capabilities.options]\n{options}',
        encoding="utf-8",
    )
    return sqlite("a"), postgres, sqlite("c")


def test_astrid_migrate_copies_sqlite_to_postgres_and_back(
    pg_server: TemporaryServer,
    schema: str,
    owner_role: LoginRole,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pg_server.admin() as conn:
        conn.execute(
            sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                sql.Identifier(schema), sql.Identifier(owner_role.name)
            )
        )
    a, pg, c = write_configs(tmp_path, pg_server, schema, owner_role)
    home = tmp_path / "home"
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.setenv(PASSWORD_ENV, owner_role.password)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with open_store(load_config(a)) as source:
        ids = populate(source, workspace)
        source.kv("host:notes \U0001f680").set("note", HOSTILE_TEXTS[2].encode())

    env = {**os.environ, "ASTRID_HOME": str(home), PASSWORD_ENV: owner_role.password}
    for src, dst in ((a, pg), (pg, c)):
        done = subprocess.run(
            [sys.executable, "-m", "astrid.cli", "migrate", "--from", str(src), "--to", str(dst)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr + done.stdout
        assert f"copied {len(ids)}, skipped 0" in done.stdout, done.stdout
        assert "(every namespace the source lists)" in done.stdout, done.stdout
        assert owner_role.password not in done.stdout + done.stderr

    with (
        open_store(load_config(a)) as first,
        open_store(load_config(pg)) as middle,
        open_store(load_config(c)) as last,
    ):
        for other in (middle, last):
            assert [s.id for s in other.list_sessions(limit=100)] == [
                s.id for s in first.list_sessions(limit=100)
            ]
            same_documents(first, other, ids, resaved=False)
            for sid in ids:
                assert [(h.active, h.message) for h in first.backend.history(sid)] == [
                    (h.active, h.message) for h in other.backend.history(sid)
                ]
                assert first.deferred_queue_kv(sid).list_keys() == (
                    other.deferred_queue_kv(sid).list_keys()
                )
            assert first.load_workspace_state(workspace) == other.load_workspace_state(workspace)
            assert other.kv("host:notes \U0001f680").get("note") == HOSTILE_TEXTS[2].encode()
            assert first.capabilities is not None and other.capabilities is not None
            assert first.capabilities.backend is not None
            assert other.capabilities.backend is not None
            assert (
                first.capabilities.backend.revoked_ids() == other.capabilities.backend.revoked_ids()
            )
