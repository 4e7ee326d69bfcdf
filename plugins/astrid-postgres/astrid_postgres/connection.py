"""Connecting: the password, the conninfo, the pool, and errors that never show the password.

The password never goes into the TOML: ``password_env`` names an environment variable holding
it, ``password_file`` a file. It is added to the conninfo with ``make_conninfo`` and kept only
inside the pool. Error messages name the server as ``user@host:port/dbname`` and any text that
contains the password is redacted before it is raised.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from astrid.errors import StorageError
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from .schema import ensure_schema

_T = TypeVar("_T")

SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
"""A schema name: a lowercase SQL identifier of at most 63 bytes (quoted anyway)."""

RETRIES = 5
"""How many times a transaction aborted by a serialization failure or deadlock is retried."""

_MIN_SECRET = 4
"""Secrets shorter than this are not searched for in messages (they would mangle them)."""

Conn = psycopg.Connection[Any]


def validate_schema_name(name: object) -> str:
    """``name`` if it is a valid schema name for astrid; ``StorageError`` otherwise."""
    if not isinstance(name, str) or not SCHEMA_NAME.match(name) or name.startswith("pg_"):
        raise StorageError(
            f"postgres: invalid schema name {name!r}: use 1 to 63 lowercase letters, digits "
            "and underscores, starting with a letter or an underscore, and not 'pg_'"
        )
    return name


def read_password(password_env: str | None, password_file: str | None) -> str | None:
    """The password named by ``password_env`` or ``password_file`` (None if neither is set)."""
    if password_env is not None and password_file is not None:
        raise StorageError("postgres: set password_env or password_file, not both")
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise StorageError(
                f"postgres: the environment variable {password_env} (password_env) is not set"
            )
        if not value:
            raise StorageError(
                f"postgres: the environment variable {password_env} (password_env) is empty"
            )
        return value
    if password_file is not None:
        path = Path(password_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc)
            raise StorageError(
                f"postgres: cannot read the password file {path} (password_file): {reason}"
            ) from None
        value = text.rstrip("\r\n")
        if not value:
            raise StorageError(f"postgres: the password file {path} (password_file) is empty")
        return value
    return None


def describe_dsn(dsn: str) -> str:
    """The server a DSN names, as ``user@host:port/dbname`` (never the password)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "postgres (unparsable dsn)"
    user = str(params.get("user") or "")
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = str(params.get("port") or "5432")
    dbname = str(params.get("dbname") or user or "postgres")
    return f"postgres {user + '@' if user else ''}{host}:{port}/{dbname}"


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (of at least 4 characters) replaced by ``***``."""
    for secret in secrets:
        if len(secret) >= _MIN_SECRET:
            text = text.replace(secret, "***")
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Database:
    """One pool over one schema: runs transactions and turns psycopg errors into StorageError."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "astrid",
        password: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
        prepare_threshold: int | None = 5,
        check_connections: bool = False,
    ) -> None:
        self.schema = validate_schema_name(schema)
        if min_size < 0 or max_size < 1 or min_size > max_size:
            raise StorageError(
                f"postgres: need 0 <= min_size <= max_size and max_size >= 1 "
                f"(got min_size={min_size}, max_size={max_size})"
            )
        if timeout <= 0:
            raise StorageError("postgres: timeout must be > 0 seconds")
        self.where = f"{describe_dsn(dsn)} schema {schema}"
        self.timeout = float(timeout)
        secrets = [password] if password else []
        try:
            in_dsn = conninfo_to_dict(dsn).get("password")
        except psycopg.Error:
            in_dsn = None
        if isinstance(in_dsn, str) and in_dsn:
            secrets.append(in_dsn)
        self._secrets: tuple[str, ...] = tuple(secrets)
        extra: dict[str, Any] = {}
        if password is not None:
            extra["password"] = password
        try:
            if "connect_timeout" not in conninfo_to_dict(dsn):
                extra["connect_timeout"] = max(2, round(timeout))
            conninfo = make_conninfo(dsn, **extra)
        except psycopg.Error as exc:
            raise StorageError(
                f"postgres: invalid dsn: {redact(_one_line(str(exc)), self._secrets)}"
            ) from None
        try:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                ensure_schema(conn, self.schema, self.where)
        except psycopg.Error as exc:
            raise self.error(exc, "cannot open the store") from self._cause(exc)
        self._pool: ConnectionPool[Conn] | None = ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=max_size,
            timeout=self.timeout,
            kwargs={"autocommit": True, "prepare_threshold": prepare_threshold},
            check=ConnectionPool.check_connection if check_connections else None,
            open=False,
            name=f"astrid-{schema}",
        )
        try:
            self._pool.open(wait=min_size > 0, timeout=self.timeout)
        except PoolTimeout as exc:
            self._pool.close()
            raise StorageError(
                f"{self.where}: could not open {min_size} pooled connections within "
                f"{self.timeout:g} s: {redact(_one_line(str(exc)), self._secrets)}"
            ) from None

    def error(self, exc: BaseException, doing: str = "") -> StorageError:
        """A ``StorageError`` naming the server and schema, with the password redacted."""
        what = f"{doing}: " if doing else ""
        text = redact(_one_line(str(exc)) or type(exc).__name__, self._secrets)
        return StorageError(f"PostgreSQL store {self.where}: {what}{text}")

    def _cause(self, exc: BaseException) -> BaseException | None:
        """``exc`` to chain, unless its text holds a secret (then nothing is chained)."""
        text = str(exc)
        return None if redact(text, self._secrets) != text else exc

    def run(self, fn: Callable[[Conn], _T], *, write: bool) -> _T:
        """Run ``fn`` on a pooled connection, in a transaction when ``write``.

        A transaction aborted by a serialization failure or a deadlock is retried with backoff;
        other database errors become ``StorageError``. Errors raised by ``fn`` itself (e.g.
        ``ConcurrencyError``) roll the transaction back and pass through.
        """
        pool = self._pool
        if pool is None:
            raise StorageError(f"the PostgreSQL store {self.where} is closed")
        delay = 0.01
        attempt = 0
        while True:
            try:
                with pool.connection() as conn:
                    if not write:
                        return fn(conn)
                    with conn.transaction():
                        return fn(conn)
            except (pg_errors.SerializationFailure, pg_errors.DeadlockDetected) as exc:
                if attempt >= RETRIES:
                    raise self.error(exc) from self._cause(exc)
            except PoolClosed:
                raise StorageError(f"the PostgreSQL store {self.where} is closed") from None
            except PoolTimeout as exc:
                raise StorageError(
                    f"PostgreSQL store {self.where}: no connection within {self.timeout:g} s "
                    f"(pool of {pool.max_size}; is the server up?): "
                    f"{redact(_one_line(str(exc)), self._secrets)}"
                ) from None
            except psycopg.Error as exc:
                raise self.error(exc) from self._cause(exc)
            attempt += 1
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)

    def close(self) -> None:
        """Close the pool (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.close()

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._pool is None

    def __repr__(self) -> str:
        return f"Database({self.where!r})"
