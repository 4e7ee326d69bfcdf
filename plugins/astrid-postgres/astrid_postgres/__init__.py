"""astrid-postgres: a ``postgres`` storage backend and capability store for astrid.

Installed, it is found through the entry point ``postgres`` in the group ``astrid``. Select it::

    [storage]
    backend = "postgres"

    [storage.options]
    dsn = "postgresql://astrid_app@db.internal:5432/astrid"
    password_env = "ASTRID_PG_PASSWORD"

    [capabilities]
    store = "postgres"

    [capabilities.options]
    dsn = "postgresql://astrid_app@db.internal:5432/astrid"
    password_env = "ASTRID_PG_PASSWORD"

psycopg is imported only when a store is opened. See ``docs/postgres.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from astrid import hookimpl
from astrid.config import PathOption
from astrid.plugins import PluginContext, version_attribute
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from .backend import PostgresBackend
    from .capabilities import PostgresCapabilityBackend

    __version__: str
else:  # from the package metadata, on first access
    __getattr__ = version_attribute(__name__, "astrid-postgres")

_SCHEMA_HELP = (
    "1 to 63 lowercase letters, digits and underscores, starting with a letter or an underscore"
)


class PostgresOptions(BaseModel):
    """Options of the ``postgres`` storage backend and capability store.

    ``dsn`` is a libpq connection string or URI, best without the password: give that through
    ``password_env`` (the name of an environment variable) or ``password_file`` (a file holding
    only the password). ``schema`` is the PostgreSQL schema holding astrid's tables.
    ``min_size``/``max_size`` size the connection pool of each process; ``timeout`` is how long
    to wait for a connection, in seconds. ``prepared_statements`` false turns psycopg's
    server-side prepared statements off, for poolers that do not support them.
    ``check_connections`` checks each pooled connection before use (one extra round trip), for
    networks or proxies that drop idle connections.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dsn: str = Field(min_length=1)
    password_env: str | None = Field(default=None, min_length=1)
    password_file: PathOption | None = None
    min_size: int = Field(default=1, ge=0)
    max_size: int = Field(default=10, ge=1)
    schema_name: str = Field(default="astrid", alias="schema")
    timeout: float = Field(default=30.0, gt=0)
    prepared_statements: bool = True
    check_connections: bool = False

    @field_validator("schema_name")
    @classmethod
    def _valid_schema(cls, value: str) -> str:
        from .connection import SCHEMA_NAME

        if not SCHEMA_NAME.match(value) or value.startswith("pg_"):
            raise ValueError(f"invalid schema name {value!r}: use {_SCHEMA_HELP}, not 'pg_'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PostgresOptions:
        if self.password_env is not None and self.password_file is not None:
            raise ValueError("set password_env or password_file, not both")
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) exceeds max_size ({self.max_size})")
        return self


class PostgresCapabilityOptions(PostgresOptions):
    """Options of the ``postgres`` capability store (a smaller pool by default)."""

    min_size: int = Field(default=0, ge=0)
    max_size: int = Field(default=4, ge=1)


def _password(options: PostgresOptions, context: PluginContext) -> str | None:
    from .connection import read_password

    password_file = options.password_file
    if password_file is not None:
        path = Path(password_file).expanduser()
        password_file = str(path if path.is_absolute() else context.home / path)
    return read_password(options.password_env, password_file)


def create_backend(options: PostgresOptions, context: PluginContext) -> PostgresBackend:
    """The storage backend the options describe (a relative password_file is under home)."""
    from .backend import PostgresBackend

    return PostgresBackend(
        options.dsn,
        schema=options.schema_name,
        password=_password(options, context),
        min_size=options.min_size,
        max_size=options.max_size,
        timeout=options.timeout,
        prepare_threshold=5 if options.prepared_statements else None,
        check_connections=options.check_connections,
    )


def create_capability_backend(
    options: PostgresCapabilityOptions, context: PluginContext
) -> PostgresCapabilityBackend:
    """The capability store the options describe."""
    from .capabilities import PostgresCapabilityBackend

    return PostgresCapabilityBackend(
        options.dsn,
        schema=options.schema_name,
        password=_password(options, context),
        min_size=options.min_size,
        max_size=options.max_size,
        timeout=options.timeout,
        prepare_threshold=5 if options.prepared_statements else None,
        check_connections=options.check_connections,
    )


@hookimpl
def register_storage_backends(register: Any) -> None:
    """Register the ``postgres`` storage backend."""
    register(
        "postgres",
        create_backend,
        PostgresOptions,
        "A PostgreSQL schema shared by many processes and hosts (psycopg 3, pooled).",
    )


@hookimpl
def register_capability_stores(register: Any) -> None:
    """Register the ``postgres`` capability store."""
    register(
        "postgres",
        create_capability_backend,
        PostgresCapabilityOptions,
        "Capability tokens, revocations and used ids in a PostgreSQL schema.",
    )


__all__ = [
    "PostgresCapabilityOptions",
    "PostgresOptions",
    "__version__",
    "create_backend",
    "create_capability_backend",
]
