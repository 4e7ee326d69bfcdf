"""The schema: named migrations recorded in ``<schema>._astrid_migrations``, applied in place.

Opening a store first checks, without locking, whether every migration is applied (the common
case; it needs only ``SELECT`` on the migrations table, so an application role without DDL
rights can open an up-to-date schema). Otherwise it takes ``pg_advisory_xact_lock`` and applies
the missing migrations in one transaction, so processes starting at once apply each migration
exactly once and never see half a schema. A schema holding migrations this version does not know
was written by a newer astrid-postgres and is refused with ``SchemaVersionError``.

Every table lives in the configured schema; its name is validated and quoted with
``psycopg.sql.Identifier``. JSON is stored as ``text`` (PostgreSQL's ``jsonb`` cannot hold the
NUL characters and NaN values astrid's JSON may carry); ids are ``uuid``.
"""

from __future__ import annotations

from typing import Any, LiteralString

import psycopg
from astrid.errors import SchemaVersionError, StorageError
from psycopg import sql

MIGRATION_LOCK = 0x6173_7472_6964_0001
"""The advisory lock key held while migrations are applied (``astrid`` + 1, as a bigint)."""

WORKSPACE_LOCK_CLASS = 0x6173_7472
"""The first key of the two-key advisory lock a workspace-state write holds (``astr``); the
second is ``hashtext`` of the schema and the workspace's namespace. Two-key and one-key advisory
locks never conflict, so it cannot meet ``MIGRATION_LOCK``."""

MIGRATIONS: tuple[tuple[str, tuple[LiteralString, ...]], ...] = (
    (
        "0001_sessions",
        (
            """
            CREATE TABLE {s}.sessions (
                id uuid PRIMARY KEY,
                revision bigint NOT NULL,
                state text NOT NULL,
                title text,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                message_count bigint NOT NULL,
                token_count bigint NOT NULL,
                workspace_path text,
                model text,
                parent_id text,
                next_seq bigint NOT NULL,
                nul_escaped smallint NOT NULL DEFAULT 0
            )
            """,
            "CREATE INDEX sessions_by_activity ON {s}.sessions (updated_at DESC, id)",
            "CREATE INDEX sessions_by_workspace ON {s}.sessions "
            "(workspace_path, updated_at DESC, id) WHERE workspace_path IS NOT NULL",
        ),
    ),
    (
        "0002_messages",
        (
            """
            CREATE TABLE {s}.messages (
                session_id uuid NOT NULL,
                seq bigint NOT NULL,
                active boolean NOT NULL,
                body text NOT NULL,
                PRIMARY KEY (session_id, seq)
            )
            """,
        ),
    ),
    (
        "0003_kv",
        (
            """
            CREATE TABLE {s}.kv (
                namespace text NOT NULL,
                key text NOT NULL,
                value bytea NOT NULL,
                PRIMARY KEY (namespace, key)
            )
            """,
        ),
    ),
    (
        "0004_capabilities",
        (
            "CREATE TABLE {s}.cap_tokens (id uuid PRIMARY KEY, body text NOT NULL)",
            "CREATE TABLE {s}.cap_revoked "
            "(id uuid PRIMARY KEY, recorded_at timestamptz NOT NULL DEFAULT now())",
            "CREATE TABLE {s}.cap_used "
            "(id uuid PRIMARY KEY, recorded_at timestamptz NOT NULL DEFAULT now())",
        ),
    ),
    (
        # Many session allowances / remembered escape paths become keyed rows, so a save writes
        # only the changed ones. ``sessions.keyed``: the session's state holds them in
        # ``session_items`` (its ``state`` then lacks ``allowances`` and
        # ``escape_state.remembered_paths``); ``next_item`` numbers new rows in order. Existing
        # sessions stay inline until their next whole write (the defaults need no table rewrite).
        "0005_session_items",
        (
            """
            CREATE TABLE {s}.session_items (
                session_id uuid NOT NULL,
                kind smallint NOT NULL,
                key text NOT NULL,
                ord bigint NOT NULL,
                value text,
                PRIMARY KEY (session_id, kind, key)
            )
            """,
            "ALTER TABLE {s}.sessions ADD COLUMN keyed boolean NOT NULL DEFAULT false",
            "ALTER TABLE {s}.sessions ADD COLUMN next_item bigint NOT NULL DEFAULT 0",
        ),
    ),
    (
        # The spend ledger (``astrid.ledger``): one row per LLM call, inserted in the
        # transaction of its session's save (an id already stored is skipped). Amounts are
        # exact ``numeric``. Rows are kept when their session is deleted; sessions saved before
        # this migration have none.
        "0006_ledger",
        (
            """
            CREATE TABLE {s}.ledger (
                id uuid PRIMARY KEY,
                session_id uuid NOT NULL,
                parent_session_id uuid,
                workspace text,
                workspace_charged boolean NOT NULL,
                model text NOT NULL,
                provider text NOT NULL,
                kind text NOT NULL,
                input_tokens bigint NOT NULL,
                output_tokens bigint NOT NULL,
                cache_read_tokens bigint NOT NULL,
                cache_write_tokens bigint NOT NULL,
                reasoning_tokens bigint NOT NULL,
                usage_reported boolean NOT NULL,
                reserved_usd numeric NOT NULL,
                cost_usd numeric NOT NULL,
                at timestamptz NOT NULL
            )
            """,
            "CREATE INDEX ledger_by_time ON {s}.ledger (at, id)",
            "CREATE INDEX ledger_by_session ON {s}.ledger (session_id, at)",
            "CREATE INDEX ledger_by_workspace ON {s}.ledger (workspace, at) "
            "WHERE workspace IS NOT NULL",
        ),
    ),
    (
        # The audit log (``astrid.security.audit``): security decisions chained per workspace
        # (``chain``, ``seq``) and signed, sealed in their session's save transaction under a
        # transaction-scoped advisory lock on the chain. ``body`` is the signed JSON text.
        "0007_audit",
        (
            """
            CREATE TABLE {s}.audit (
                chain text NOT NULL,
                seq bigint NOT NULL,
                id text NOT NULL,
                session_id uuid NOT NULL,
                at text NOT NULL,
                body text NOT NULL,
                hash text NOT NULL,
                signature text NOT NULL,
                PRIMARY KEY (chain, seq)
            )
            """,
            "CREATE INDEX audit_by_session ON {s}.audit (session_id)",
        ),
    ),
)
"""The migration ladder: applied in order, each once, recorded by name."""

KNOWN = tuple(name for name, _ in MIGRATIONS)


def q(text: LiteralString, schema: str) -> sql.Composed:
    """``text`` with ``{s}`` replaced by the quoted schema name."""
    return sql.SQL(text).format(s=sql.Identifier(schema))


def _migrations_table_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = %s "
        "AND tablename = '_astrid_migrations'",
        (schema,),
    ).fetchone()
    return row is not None


def _applied(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    rows = conn.execute(q("SELECT name FROM {s}._astrid_migrations", schema)).fetchall()
    return {str(r[0]) for r in rows}


def _check_known(applied: set[str], where: str) -> None:
    unknown = sorted(applied - set(KNOWN))
    if unknown:
        raise SchemaVersionError(
            f"{where} was written by a newer astrid-postgres (schema {len(applied)}, this "
            f"version knows {len(KNOWN)}); unknown migrations: {', '.join(unknown)}"
        )


def ensure_schema(conn: psycopg.Connection[Any], schema: str, where: str) -> int:
    """Apply the missing migrations (under the advisory lock); return how many were applied.

    ``conn`` is in autocommit mode. Raises ``SchemaVersionError`` for a newer schema and
    ``StorageError`` for a schema that holds another application's tables.
    """
    if _migrations_table_exists(conn, schema):
        applied = _applied(conn, schema)
        _check_known(applied, where)
        if applied >= set(KNOWN):
            return 0
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
        if exists is None:
            conn.execute(q("CREATE SCHEMA {s}", schema))
        if not _migrations_table_exists(conn, schema):
            foreign = conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_class c "
                "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'f')",
                (schema,),
            ).fetchone()
            if foreign is not None and int(foreign[0]) > 0:
                raise StorageError(
                    f"{where}: the schema holds tables of another application (no "
                    "_astrid_migrations table); choose another schema"
                )
            conn.execute(
                q(
                    "CREATE TABLE {s}._astrid_migrations "
                    "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
                    schema,
                )
            )
        applied = _applied(conn, schema)
        _check_known(applied, where)
        count = 0
        for name, statements in MIGRATIONS:
            if name in applied:
                continue
            for statement in statements:
                conn.execute(q(statement, schema))
            conn.execute(
                q("INSERT INTO {s}._astrid_migrations (name) VALUES (%s)", schema), (name,)
            )
            count += 1
        return count
