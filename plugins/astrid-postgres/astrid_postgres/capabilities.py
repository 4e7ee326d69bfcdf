"""The ``postgres`` capability store: persistent tokens, revoked ids and used single-use ids.

It lives in the same schema (and the same migration ladder) as the storage backend, in the
tables ``cap_tokens``, ``cap_revoked`` and ``cap_used``. Token ids are checked to be UUIDs
before they reach a query. Every operation is one statement, so many processes share it safely.
"""

from __future__ import annotations

from typing import Any, LiteralString

from astrid.default_plugins.capability_stores import canonical_token_id
from psycopg import sql

from .connection import Conn, Database
from .schema import q


class PostgresCapabilityBackend:
    """A ``CapabilityBackend`` in a PostgreSQL schema, through its own small pool."""

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "astrid",
        password: str | None = None,
        min_size: int = 0,
        max_size: int = 4,
        timeout: float = 30.0,
        prepare_threshold: int | None = 5,
        check_connections: bool = False,
    ) -> None:
        self._db = Database(
            dsn,
            schema=schema,
            password=password,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            prepare_threshold=prepare_threshold,
            check_connections=check_connections,
        )
        self.schema = self._db.schema
        self._sql: dict[str, sql.Composed] = {}

    @property
    def where(self) -> str:
        """The server and schema (never the password)."""
        return self._db.where

    def _q(self, text: LiteralString) -> sql.Composed:
        found = self._sql.get(text)
        if found is None:
            found = self._sql[text] = q(text, self.schema)
        return found

    def _execute(self, text: LiteralString, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        query = self._q(text)

        def run(c: Conn) -> list[tuple[Any, ...]]:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description is not None else []

        result: list[tuple[Any, ...]] = self._db.run(run, write=False)
        return result

    def put_token(self, token_id: str, data: str) -> None:
        """Store (or replace) a token's JSON under its id."""
        key = canonical_token_id(token_id)
        self._execute(
            "INSERT INTO {s}.cap_tokens (id, body) VALUES (%s, %s) "
            "ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            (key, data),
        )

    def get_token(self, token_id: str) -> str | None:
        """A token's JSON, or None if absent."""
        key = canonical_token_id(token_id)
        rows = self._execute("SELECT body FROM {s}.cap_tokens WHERE id = %s", (key,))
        return str(rows[0][0]) if rows else None

    def delete_token(self, token_id: str) -> None:
        """Remove a token (no error if absent)."""
        key = canonical_token_id(token_id)
        self._execute("DELETE FROM {s}.cap_tokens WHERE id = %s", (key,))

    def list_tokens(self) -> list[str]:
        """The JSON of every stored token, by id."""
        return [str(r[0]) for r in self._execute("SELECT body FROM {s}.cap_tokens ORDER BY id")]

    def add_revoked(self, token_id: str) -> None:
        """Record a revoked token id."""
        key = canonical_token_id(token_id)
        self._execute(
            "INSERT INTO {s}.cap_revoked (id) VALUES (%s) ON CONFLICT (id) DO NOTHING", (key,)
        )

    def revoked_ids(self) -> set[str]:
        """Every recorded revoked token id."""
        return {str(r[0]) for r in self._execute("SELECT id FROM {s}.cap_revoked")}

    def add_used(self, token_id: str) -> None:
        """Record a used single-use token id."""
        key = canonical_token_id(token_id)
        self._execute(
            "INSERT INTO {s}.cap_used (id) VALUES (%s) ON CONFLICT (id) DO NOTHING", (key,)
        )

    def used_ids(self) -> set[str]:
        """Every recorded used token id."""
        return {str(r[0]) for r in self._execute("SELECT id FROM {s}.cap_used")}

    def claim_use(self, token_id: str) -> bool:
        """Record a used token id; False if already recorded (one insert ignoring a conflict)."""
        key = canonical_token_id(token_id)
        rows = self._execute(
            "INSERT INTO {s}.cap_used (id) VALUES (%s) ON CONFLICT (id) DO NOTHING RETURNING id",
            (key,),
        )
        return bool(rows)

    def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._db.close()

    def __enter__(self) -> PostgresCapabilityBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PostgresCapabilityBackend({self.where!r})"


__all__ = ["PostgresCapabilityBackend"]
