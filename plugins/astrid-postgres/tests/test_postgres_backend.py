"""What the conformance suite does not cover: registration, options, passwords, roles, schema
versions, PostgreSQL's text limits, the capability store."""

from __future__ import annotations

import logging
import os
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path

import psycopg
import pytest
from astrid.errors import SchemaVersionError, SerializationError, StorageError
from astrid.messages import Message
from astrid.plugins import PluginContext, get_implementation, plugin_info
from astrid.security.actions import Permission
from astrid.security.capabilities import (
    AuditEntryId,
    CapabilityStore,
    CapabilityToken,
    ResourcePattern,
    TokenBuilder,
)
from astrid.security.crypto import KeyPair
from astrid.store import SessionStore
from psycopg import sql
from pydantic import ValidationError

from astrid_postgres import PostgresOptions
from astrid_postgres.backend import PostgresBackend
from astrid_postgres.capabilities import PostgresCapabilityBackend
from astrid_postgres.connection import describe_dsn, redact
from astrid_postgres.schema import KNOWN
from astrid_postgres.testing import LoginRole, TemporaryServer

PASSWORD_ENV = "ASTRID_TEST_PG_PASSWORD"
RESOURCE = "mcp://server:tool"


def admin_execute(server: TemporaryServer, *statements: sql.Composed) -> None:
    with server.admin() as conn:
        for statement in statements:
            conn.execute(statement)


def prepare_roles(server: TemporaryServer, schema: str, owner: LoginRole, app: LoginRole) -> None:
    """The deployment recipe of docs/postgres.md: the owner owns the schema, the app uses it."""
    s, o, a = sql.Identifier(schema), sql.Identifier(owner.name), sql.Identifier(app.name)
    admin_execute(
        server,
        sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(s, o),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, a),
        sql.SQL(
            "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} "
            "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {}"
        ).format(o, s, a),
    )


def create(kind: str, options: Mapping[str, object], home: Path) -> object:
    return get_implementation(kind, "postgres").create(dict(options), PluginContext(home=home))


def save_one(store: SessionStore, text: str = "hello") -> str:
    session = store.new_session("p")
    session.add_message(Message.user(text))
    store.save(session)
    return session.id.bare


# -- registration and options -------------------------------------------------------------------


def test_the_plugin_registers_a_storage_backend_and_a_capability_store() -> None:
    assert get_implementation("storage", "postgres").plugin == "postgres"
    assert get_implementation("capability_store", "postgres").plugin == "postgres"
    info = {p["name"]: p for p in plugin_info()}
    assert "postgres" in info


def test_options_are_validated() -> None:
    ok = PostgresOptions.model_validate({"dsn": "host=x", "schema": "my_schema"})
    assert ok.schema_name == "my_schema" and ok.min_size == 1 and ok.max_size == 10
    bad: list[dict[str, object]] = [
        {},
        {"dsn": ""},
        {"dsn": "host=x", "password": "inline"},
        {"dsn": "host=x", "schema": "Astrid"},
        {"dsn": "host=x", "schema": "a; DROP TABLE x"},
        {"dsn": "host=x", "schema": "pg_catalog"},
        {"dsn": "host=x", "schema": "x" * 64},
        {"dsn": "host=x", "password_env": "A", "password_file": "b"},
        {"dsn": "host=x", "min_size": 5, "max_size": 2},
        {"dsn": "host=x", "max_size": 0},
        {"dsn": "host=x", "password_file": ""},
        {"dsn": "host=x", "password_file": "pg\x00.password"},
    ]
    for options in bad:
        with pytest.raises(ValidationError):
            PostgresOptions.model_validate(options)


def test_a_bad_schema_name_is_refused_before_any_query(pg_server: TemporaryServer) -> None:
    with pytest.raises(StorageError, match="invalid schema name"):
        PostgresBackend(pg_server.dsn(), schema='x"; DROP SCHEMA public; --')


def test_an_unreachable_server_is_a_storage_error_naming_it() -> None:
    from astrid_postgres.testing import free_port

    port = free_port()
    with pytest.raises(StorageError, match=f"127.0.0.1:{port}/astrid schema astrid"):
        PostgresBackend(f"host=127.0.0.1 port={port} user=u dbname=astrid", timeout=2)


# -- passwords -----------------------------------------------------------------------------------


def test_password_from_the_environment(
    pg_server: TemporaryServer,
    schema: str,
    owner_role: LoginRole,
    app_role: LoginRole,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prepare_roles(pg_server, schema, owner_role, app_role)
    monkeypatch.setenv(PASSWORD_ENV, owner_role.password)
    options = {
        "dsn": pg_server.dsn(user=owner_role.name),
        "schema": schema,
        "password_env": PASSWORD_ENV,
    }
    backend = create("storage", options, tmp_path)
    assert isinstance(backend, PostgresBackend)
    with SessionStore(backend) as store:
        sid = save_one(store)
        assert store.load(sid) is not None
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(StorageError, match=f"{PASSWORD_ENV} .*is not set"):
        create("storage", options, tmp_path)


def test_password_from_a_file_relative_to_home(
    pg_server: TemporaryServer,
    schema: str,
    owner_role: LoginRole,
    app_role: LoginRole,
    tmp_path: Path,
) -> None:
    prepare_roles(pg_server, schema, owner_role, app_role)
    secret = tmp_path / "pg.password"
    secret.write_text(owner_role.password + "\n", encoding="utf-8")
    os.chmod(secret, stat.S_IRUSR | stat.S_IWUSR)
    options = {
        "dsn": pg_server.dsn(user=owner_role.name),
        "schema": schema,
        "password_file": "pg.password",
    }
    backend = create("storage", options, tmp_path)
    assert isinstance(backend, PostgresBackend)
    with SessionStore(backend) as store:
        assert store.load(save_one(store)) is not None
    with pytest.raises(StorageError, match="cannot read the password file"):
        create("storage", {**options, "password_file": "missing"}, tmp_path)
    (tmp_path / "empty").write_text("\n", encoding="utf-8")
    with pytest.raises(StorageError, match="is empty"):
        create("storage", {**options, "password_file": "empty"}, tmp_path)


def test_a_wrong_password_is_reported_without_showing_it(
    pg_server: TemporaryServer,
    schema: str,
    owner_role: LoginRole,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wrong = "not-the-password-" + uuid.uuid4().hex
    monkeypatch.setenv(PASSWORD_ENV, wrong)
    caplog.set_level(logging.DEBUG)
    options = {
        "dsn": pg_server.dsn(user=owner_role.name),
        "schema": schema,
        "password_env": PASSWORD_ENV,
    }
    with pytest.raises(StorageError) as caught:
        create("storage", options, tmp_path)
    text = str(caught.value)
    assert "password authentication failed" in text and wrong not in text
    assert f"{owner_role.name}@127.0.0.1:{pg_server.port}" in text
    # A password written into the DSN itself is not shown either.
    uri = f"postgresql://{owner_role.name}:{wrong}@127.0.0.1:{pg_server.port}/{pg_server.database}"
    with pytest.raises(StorageError) as caught:
        PostgresBackend(uri, schema=schema)
    assert wrong not in str(caught.value) and wrong not in repr(caught.value.__cause__)
    assert wrong not in caplog.text
    assert wrong not in describe_dsn(uri)


def test_the_password_never_appears_in_reprs_or_errors(
    pg_server: TemporaryServer, schema: str, owner_role: LoginRole, app_role: LoginRole
) -> None:
    prepare_roles(pg_server, schema, owner_role, app_role)
    backend = PostgresBackend(
        pg_server.dsn(user=owner_role.name), schema=schema, password=owner_role.password
    )
    try:
        shown = [repr(backend), repr(backend.kv()), backend.where, backend.describe("x")]
        assert all(owner_role.password not in text for text in shown)
    finally:
        backend.close()
    with pytest.raises(StorageError) as caught:
        backend.kv().get("ns", "k")
    assert "closed" in str(caught.value) and owner_role.password not in str(caught.value)
    assert redact(f"x {owner_role.password} y", [owner_role.password]) == "x *** y"
    with pytest.raises(StorageError, match="invalid dsn") as bad:
        PostgresBackend("host=x password=hunter2hunter2 junk")
    assert "hunter2hunter2" not in str(bad.value)


# -- roles and permissions ----------------------------------------------------------------------


def test_an_app_role_with_dml_only_uses_a_schema_the_owner_migrated(
    pg_server: TemporaryServer, schema: str, owner_role: LoginRole, app_role: LoginRole
) -> None:
    prepare_roles(pg_server, schema, owner_role, app_role)
    app_dsn = pg_server.dsn(user=app_role.name)
    with pytest.raises(StorageError, match="permission denied"):
        PostgresBackend(app_dsn, schema=schema, password=app_role.password)  # not migrated yet
    owner = PostgresBackend(
        pg_server.dsn(user=owner_role.name), schema=schema, password=owner_role.password
    )
    owner.close()
    app = PostgresBackend(app_dsn, schema=schema, password=app_role.password)
    with SessionStore(app) as store:
        sid = save_one(store)
        store.append_messages(sid, [Message.assistant("hi")])
        store.kv("ns").set("k", b"v")
        assert store.count() == 1 and store.delete(sid)
        assert app.schema_version() == len(KNOWN)
    caps = PostgresCapabilityBackend(app_dsn, schema=schema, password=app_role.password)
    with caps:
        caps.add_revoked(str(uuid.uuid4()))
    with (
        psycopg.connect(app_dsn, password=app_role.password) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(sql.SQL("DROP TABLE {}.messages").format(sql.Identifier(schema)))


# -- schema versions ----------------------------------------------------------------------------


def test_migrations_are_recorded_by_name(pg_server: TemporaryServer, schema: str) -> None:
    backend = PostgresBackend(pg_server.dsn(), schema=schema)
    try:
        assert backend.schema_version() == len(KNOWN)
        assert [name for name, _ in backend.migrations()] == list(KNOWN)
    finally:
        backend.close()
    again = PostgresBackend(pg_server.dsn(), schema=schema)
    assert again.schema_version() == len(KNOWN)
    again.close()


def test_a_schema_from_a_newer_version_is_refused(pg_server: TemporaryServer, schema: str) -> None:
    PostgresBackend(pg_server.dsn(), schema=schema).close()
    admin_execute(
        pg_server,
        sql.SQL("INSERT INTO {}._astrid_migrations (name) VALUES ('9999_from_the_future')").format(
            sql.Identifier(schema)
        ),
    )
    with pytest.raises(SchemaVersionError, match="9999_from_the_future"):
        PostgresBackend(pg_server.dsn(), schema=schema)
    with pytest.raises(SchemaVersionError, match="newer"):
        PostgresCapabilityBackend(pg_server.dsn(), schema=schema)


def test_a_schema_of_another_application_is_refused(
    pg_server: TemporaryServer, schema: str
) -> None:
    s = sql.Identifier(schema)
    admin_execute(
        pg_server,
        sql.SQL("CREATE SCHEMA {}").format(s),
        sql.SQL("CREATE TABLE {}.sessions (x int)").format(s),
    )
    with pytest.raises(StorageError, match="another application"):
        PostgresBackend(pg_server.dsn(), schema=schema)


def test_a_missing_migration_is_applied_in_place(pg_server: TemporaryServer, schema: str) -> None:
    backend = PostgresBackend(pg_server.dsn(), schema=schema)
    with SessionStore(backend) as store:
        sid = save_one(store, "kept")
    s = sql.Identifier(schema)
    admin_execute(
        pg_server,
        sql.SQL("DROP TABLE {}.cap_tokens, {}.cap_revoked, {}.cap_used").format(s, s, s),
        sql.SQL("DELETE FROM {}._astrid_migrations WHERE name = '0004_capabilities'").format(s),
    )
    with SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as store:
        assert store.backend.schema_version() == len(KNOWN)
        loaded = store.load(sid)
        assert loaded is not None and loaded.messages[0].text() == "kept"


# -- what PostgreSQL text cannot hold -----------------------------------------------------------


def test_nul_in_summary_columns_round_trips_and_filters_exactly(
    pg_server: TemporaryServer, schema: str, tmp_path: Path
) -> None:
    with SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as store:
        odd = store.new_session("p").with_model("m\0odel\\0")
        odd.metadata.title = "a\0b\\0c\\\\"
        odd.with_workspace(str(tmp_path / "w\\0s"))
        odd.add_message(Message.user("x\0y"))
        store.save(odd)
        plain = store.new_session("p").with_workspace(str(tmp_path / "w\\0s"))
        store.save(plain)
        rows = {r.id: r for r in store.list_sessions()}
        assert rows[odd.id.bare].title == "a\0b\\0c\\\\"
        assert rows[odd.id.bare].model == "m\0odel\\0"
        assert store.count(workspace=tmp_path / "w\\0s") == 2
        loaded = store.load(odd.id)
        assert loaded is not None and loaded.messages[0].text() == "x\0y"
        assert loaded.metadata.title == "a\0b\\0c\\\\"


def test_lone_surrogates_and_nan_are_refused_like_every_backend(
    pg_server: TemporaryServer, schema: str
) -> None:
    """They were kept as JSON escapes here while SQLite and files refused them (issue 14 item 9)."""
    backend = PostgresBackend(pg_server.dsn(), schema=schema)
    with SessionStore(backend) as store:
        sid = save_one(store)
        before = backend.load(sid)
        for odd in (
            {"role": "user", "content": "half a pair: \ud800 and \U0001f680"},
            {"role": "user", "content": "x", "\udfff": 1},
            {"role": "tool", "content": {"n": float("nan")}},
        ):
            with pytest.raises(SerializationError, match=f"session {sid}: new message 0"):
                backend.append(sid, [odd])
        assert backend.load(sid) == before


def test_a_closed_backend_says_so(pg_server: TemporaryServer, schema: str) -> None:
    backend = PostgresBackend(pg_server.dsn(), schema=schema)
    backend.close()
    backend.close()
    with pytest.raises(StorageError, match="is closed"):
        backend.list_sessions()


# -- the capability store -----------------------------------------------------------------------


def make_token(key: KeyPair, *, single_use: bool = False) -> CapabilityToken:
    builder = TokenBuilder(ResourcePattern.new(RESOURCE)).permission(Permission.INVOKE)
    builder = builder.persistent()
    if single_use:
        builder = builder.single_use()
    return builder.build(key.key_id, AuditEntryId.new(), key)


def test_capability_tokens_revocations_and_used_ids_survive_a_reopen(
    pg_server: TemporaryServer, schema: str, tmp_path: Path
) -> None:
    key = KeyPair.generate()
    options = {"dsn": pg_server.dsn(), "schema": schema}
    kept, revoked, single = make_token(key), make_token(key), make_token(key, single_use=True)
    never_stored = uuid.uuid4()
    first = create("capability_store", options, tmp_path)
    assert isinstance(first, PostgresCapabilityBackend)
    store = CapabilityStore(first)
    for token in (kept, revoked, single):
        store.add(token)
    store.revoke(revoked.id)
    store.revoke(never_stored)
    assert store.use_token(single.id) == single
    first.close()

    second = create("capability_store", options, tmp_path)
    assert isinstance(second, PostgresCapabilityBackend)
    with second:
        again = CapabilityStore(second)
        assert again.get(kept.id) == kept
        assert again.is_revoked(revoked.id) and again.is_revoked(never_stored)
        assert again.is_used(single.id)
        assert second.revoked_ids() == {str(revoked.id), str(never_stored)}
        assert second.used_ids() == {str(single.id)}
        assert second.get_token(str(revoked.id)) is None
        assert sorted(t.id for t in again.list_tokens()) == sorted([kept.id, single.id])
        second.delete_token(str(kept.id))
        second.delete_token(str(kept.id))
        assert second.get_token(str(kept.id)) is None
        with pytest.raises(StorageError):
            second.put_token("../../etc/passwd", "{}")


# -- operations ---------------------------------------------------------------------------------


def test_checked_pools_survive_connections_the_server_dropped(
    pg_server: TemporaryServer, schema: str
) -> None:
    backend = PostgresBackend(pg_server.dsn(), schema=schema, check_connections=True)
    with SessionStore(backend) as store:
        sid = save_one(store)
        with pg_server.admin() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = %s",
                (pg_server.database,),
            )
        assert store.load(sid) is not None


def test_python_m_astrid_postgres_migrate(
    pg_server: TemporaryServer,
    schema: str,
    owner_role: LoginRole,
    app_role: LoginRole,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from astrid_postgres.__main__ import main

    prepare_roles(pg_server, schema, owner_role, app_role)
    monkeypatch.setenv(PASSWORD_ENV, owner_role.password)
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path))
    argv = ["migrate", "--dsn", pg_server.dsn(user=owner_role.name), "--schema", schema]
    assert main([*argv, "--password-env", PASSWORD_ENV]) == 0
    out = capsys.readouterr().out
    assert f"schema version {len(KNOWN)}" in out and all(name in out for name in KNOWN)
    assert owner_role.password not in out
    config = tmp_path / "owner.toml"
    config.write_text(
        f'[storage]\nbackend = "postgres"\n[storage.options]\n'
        f'dsn = "{pg_server.dsn(user=owner_role.name)}"\nschema = "{schema}"\n'
        f'password_env = "{PASSWORD_ENV}"\n',
        encoding="utf-8",
    )
    assert main(["migrate", "--config", str(config)]) == 0
    # The app role can now work without any DDL right.
    app = PostgresBackend(
        pg_server.dsn(user=app_role.name), schema=schema, password=app_role.password
    )
    app.close()
    assert main([*argv, "--password-env", "ASTRID_TEST_NOT_SET"]) == 1
    assert "ASTRID_TEST_NOT_SET" in capsys.readouterr().err


def test_prepared_statements_can_be_turned_off_for_poolers(
    pg_server: TemporaryServer, tmp_path: Path
) -> None:
    def prepared_after_saves(**extra: object) -> int:
        options = {"dsn": pg_server.dsn(), "schema": f"p_{uuid.uuid4().hex[:12]}", **extra}
        backend = create("storage", options, tmp_path)
        assert isinstance(backend, PostgresBackend)
        with SessionStore(backend) as store:
            session = store.new_session("p")
            for i in range(8):
                session.add_message(Message.user(f"m{i}"))
                store.save(session)
            # One thread, min_size 1: every statement ran on the same pooled connection.
            row = backend._run(
                lambda c: c.execute("SELECT count(*) FROM pg_prepared_statements").fetchone(),
                write=False,
            )
            return int(row[0])

    assert prepared_after_saves() > 0
    assert prepared_after_saves(prepared_statements=False) == 0
