"""The built-in capability stores: ``memory``, ``file`` and ``sqlite``.

Each is a ``CapabilityBackend``: persistent tokens (JSON text by token id), revoked ids and used
single-use ids. Ids are checked to be UUIDs before they reach a path or a query, and are stored
in their canonical lowercase form.

``file`` layout under its directory (default ``<home>/capabilities``)::

    tokens/<uuid>.json   the token's JSON
    revoked/<uuid>       an empty marker
    used/<uuid>          an empty marker (created with ``O_EXCL``: the first use of a
                         single-use token creates it, any later one finds it)

``sqlite`` (default ``<home>/capabilities.db``) keeps the same three things in the tables
``cap_tokens``, ``cap_revoked`` and ``cap_used``. Its file has the one migration ladder of an
astrid SQLite file (``sqlite_storage.MIGRATIONS``), so it may be the session store's file too.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from ..config import PathOption, resolve_home_path
from ..errors import InvalidTokenId, StorageError
from ..fsutil import atomic_write, create_private_file, fsync_dir, make_private_dirs
from ..hookspecs import hookimpl
from ..plugins import PluginContext
from ..security.capabilities import MemoryCapabilityBackend
from .sqlite_storage import ensure_schema, refuse_foreign, run_in_transaction

__all__ = [
    "FileCapabilityBackend",
    "FileCapabilityOptions",
    "InvalidTokenId",
    "MemoryCapabilityOptions",
    "SqliteCapabilityBackend",
    "SqliteCapabilityOptions",
    "canonical_token_id",
]

_T = TypeVar("_T")

def canonical_token_id(token_id: object) -> str:
    """The canonical lowercase hyphenated form of a UUID token id; ``InvalidTokenId`` otherwise."""
    if not isinstance(token_id, str):
        raise InvalidTokenId(
            f"invalid capability token id: expected a UUID string, not {type(token_id).__name__}"
        )
    try:
        return str(UUID(token_id))
    except ValueError:
        raise InvalidTokenId(f"invalid capability token id {token_id!r}: not a UUID") from None


def _is_canonical_id(name: str) -> bool:
    try:
        return str(UUID(name)) == name
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Options


class MemoryCapabilityOptions(BaseModel):
    """The memory capability store takes no options."""

    model_config = ConfigDict(extra="forbid")


class FileCapabilityOptions(BaseModel):
    """Options of the file capability store."""

    model_config = ConfigDict(extra="forbid")

    directory: PathOption | None = "capabilities"
    """The store's directory; default ``<home>/capabilities``."""


class SqliteCapabilityOptions(BaseModel):
    """Options of the SQLite capability store."""

    model_config = ConfigDict(extra="forbid")

    path: PathOption | None = "capabilities.db"
    """The database file; default ``<home>/capabilities.db``."""


# --------------------------------------------------------------------------------------------
# File helpers


def _ensure_private_dir(path: Path) -> None:
    """Create ``path`` and its missing parents as 0700 directories (existing ones are kept)."""
    make_private_dirs(path)
    if not path.is_dir():
        raise StorageError(f"capability store: {path} exists and is not a directory")


# --------------------------------------------------------------------------------------------
# file


class FileCapabilityBackend:
    """Tokens, revocations and used ids as files under one private directory."""

    name = "file"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        """Open (creating if needed, 0700) the store at ``directory``."""
        self._root = Path(directory)
        self._tokens = self._root / "tokens"
        self._revoked = self._root / "revoked"
        self._used = self._root / "used"
        try:
            for sub in (self._root, self._tokens, self._revoked, self._used):
                _ensure_private_dir(sub)
        except OSError as exc:
            raise StorageError(f"capability store: cannot create {self._root}: {exc}") from exc

    @property
    def directory(self) -> Path:
        """The store's root directory."""
        return self._root

    def _token_path(self, token_id: str) -> Path:
        return self._tokens / f"{canonical_token_id(token_id)}.json"

    def put_token(self, token_id: str, data: str) -> None:
        """Store (or replace) a token's JSON under its id, atomically."""
        path = self._token_path(token_id)
        try:
            atomic_write(path, data.encode("utf-8"))
        except OSError as exc:
            raise StorageError(f"capability store: cannot write {path}: {exc}") from exc

    def get_token(self, token_id: str) -> str | None:
        """A token's JSON, or None if absent (undecodable bytes are replaced, not fatal)."""
        path = self._token_path(token_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"capability store: cannot read {path}: {exc}") from exc
        return raw.decode("utf-8", errors="replace")

    def delete_token(self, token_id: str) -> None:
        """Remove a token (no error if absent)."""
        path = self._token_path(token_id)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"capability store: cannot delete {path}: {exc}") from exc
        self._sync(self._tokens)

    def _entries(self, directory: Path, suffix: str) -> Iterator[tuple[str, Path]]:
        """(canonical id, path) of every entry named ``<uuid><suffix>``, sorted by id."""
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise StorageError(f"capability store: cannot list {directory}: {exc}") from exc
        for name in names:
            if not name.endswith(suffix):
                continue
            stem = name[: len(name) - len(suffix)] if suffix else name
            if _is_canonical_id(stem):
                yield stem, directory / name

    def list_tokens(self) -> list[str]:
        """The JSON of every token file in the tokens directory."""
        out: list[str] = []
        for _, path in self._entries(self._tokens, ".json"):
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"capability store: cannot read {path}: {exc}") from exc
            out.append(raw.decode("utf-8", errors="replace"))
        return out

    def _add_marker(self, directory: Path, token_id: str) -> None:
        path = directory / canonical_token_id(token_id)
        if path.exists():
            return
        try:
            atomic_write(path, b"")
        except OSError as exc:
            raise StorageError(f"capability store: cannot write {path}: {exc}") from exc

    def add_revoked(self, token_id: str) -> None:
        """Record a revoked token id (a marker file)."""
        self._add_marker(self._revoked, token_id)

    def revoked_ids(self) -> set[str]:
        """Every recorded revoked token id."""
        return {token_id for token_id, _ in self._entries(self._revoked, "")}

    def add_used(self, token_id: str) -> None:
        """Record a used single-use token id (a marker file)."""
        self._add_marker(self._used, token_id)

    def used_ids(self) -> set[str]:
        """Every recorded used token id."""
        return {token_id for token_id, _ in self._entries(self._used, "")}

    def claim_use(self, token_id: str) -> bool:
        """Record a used token id; False if already recorded (an ``O_EXCL`` marker create)."""
        path = self._used / canonical_token_id(token_id)
        try:
            if not create_private_file(path):
                return False
        except OSError as exc:
            raise StorageError(f"capability store: cannot write {path}: {exc}") from exc
        self._sync(self._used)
        return True

    def _sync(self, directory: Path) -> None:
        try:
            fsync_dir(directory)
        except OSError as exc:
            raise StorageError(f"capability store: cannot sync {directory}: {exc}") from exc

    def close(self) -> None:
        """Nothing to release (every operation opens and closes its own files)."""

    def __repr__(self) -> str:
        return f"FileCapabilityBackend({str(self._root)!r})"


# --------------------------------------------------------------------------------------------
# sqlite

def _create_private_file(path: Path) -> None:
    """Create ``path`` as an empty 0600 file if it does not exist (an existing file is kept)."""
    if create_private_file(path):
        fsync_dir(path.parent)


class SqliteCapabilityBackend:
    """Tokens, revocations and used ids in a SQLite database (WAL, safe across processes)."""

    name = "sqlite"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open (creating if needed: file 0600, new parent directories 0700) the database."""
        self._path = Path(path)
        self._lock = threading.Lock()
        try:
            _ensure_private_dir(self._path.parent)
            _create_private_file(self._path)
        except OSError as exc:
            raise StorageError(f"capability store: cannot create {self._path}: {exc}") from exc
        try:
            conn = sqlite3.connect(
                self._path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StorageError(f"capability store: cannot open {self._path}: {exc}") from exc
        self._conn: sqlite3.Connection | None = conn
        try:
            conn.execute("PRAGMA busy_timeout = 5000")
            refuse_foreign(conn, self._path)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            ensure_schema(self._transaction, self._path)
        except sqlite3.DatabaseError as exc:
            self._conn = None
            conn.close()
            if "readonly" in str(exc):  # SQLITE_READONLY: the file or its directory
                raise StorageError(
                    f"capability store: {self._path} is read-only (its file or directory is "
                    "not writable): cannot write"
                ) from exc
            raise StorageError(
                f"capability store: {self._path} is not a usable SQLite database: {exc}"
            ) from exc
        except BaseException:
            self._conn = None
            conn.close()
            raise

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    def _transaction(
        self, fn: Callable[[sqlite3.Connection], _T], mode: Literal["read", "write", "single"]
    ) -> _T:
        """Run ``fn`` in ``BEGIN IMMEDIATE`` (``write``), ``BEGIN`` (``read``) or as is."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StorageError(f"capability store: {self._path} is closed")
            return run_in_transaction(conn, fn, mode)

    def migrations(self) -> list[str]:
        """The names of the applied migrations, in the order applied."""
        return self._run(
            lambda conn: [
                row[0] for row in conn.execute("SELECT name FROM _astrid_migrations ORDER BY rowid")
            ]
        )

    def _run(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._lock:
            if self._conn is None:
                raise StorageError(f"capability store: {self._path} is closed")
            try:
                return operation(self._conn)
            except sqlite3.Error as exc:
                raise StorageError(f"capability store: {self._path}: {exc}") from exc

    def put_token(self, token_id: str, data: str) -> None:
        """Store (or replace) a token's JSON under its id."""
        key = canonical_token_id(token_id)
        self._run(
            lambda conn: conn.execute(
                "INSERT INTO cap_tokens (id, body) VALUES (?, ?) "
                "ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                (key, data),
            )
        )

    def get_token(self, token_id: str) -> str | None:
        """A token's JSON, or None if absent."""
        key = canonical_token_id(token_id)
        row = self._run(
            lambda conn: conn.execute("SELECT body FROM cap_tokens WHERE id = ?", (key,)).fetchone()
        )
        return None if row is None else str(row[0])

    def delete_token(self, token_id: str) -> None:
        """Remove a token (no error if absent)."""
        key = canonical_token_id(token_id)
        self._run(lambda conn: conn.execute("DELETE FROM cap_tokens WHERE id = ?", (key,)))

    def list_tokens(self) -> list[str]:
        """The JSON of every stored token, by id."""
        rows = self._run(
            lambda conn: conn.execute("SELECT body FROM cap_tokens ORDER BY id").fetchall()
        )
        return [str(row[0]) for row in rows]

    def add_revoked(self, token_id: str) -> None:
        """Record a revoked token id."""
        key = canonical_token_id(token_id)
        self._run(
            lambda conn: conn.execute("INSERT OR IGNORE INTO cap_revoked (id) VALUES (?)", (key,))
        )

    def revoked_ids(self) -> set[str]:
        """Every recorded revoked token id."""
        rows = self._run(lambda conn: conn.execute("SELECT id FROM cap_revoked").fetchall())
        return {str(row[0]) for row in rows}

    def add_used(self, token_id: str) -> None:
        """Record a used single-use token id."""
        key = canonical_token_id(token_id)
        self._run(
            lambda conn: conn.execute("INSERT OR IGNORE INTO cap_used (id) VALUES (?)", (key,))
        )

    def used_ids(self) -> set[str]:
        """Every recorded used token id."""
        rows = self._run(lambda conn: conn.execute("SELECT id FROM cap_used").fetchall())
        return {str(row[0]) for row in rows}

    def claim_use(self, token_id: str) -> bool:
        """Record a used token id; False if already recorded (one insert ignoring a conflict)."""
        key = canonical_token_id(token_id)
        inserted = self._run(
            lambda conn: (
                conn.execute(
                    "INSERT INTO cap_used (id) VALUES (?) ON CONFLICT(id) DO NOTHING", (key,)
                ).rowcount
            )
        )
        return inserted == 1

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> SqliteCapabilityBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteCapabilityBackend({str(self._path)!r})"


# --------------------------------------------------------------------------------------------
# Registration


def _file_factory(options: FileCapabilityOptions, context: PluginContext) -> FileCapabilityBackend:
    return FileCapabilityBackend(
        resolve_home_path(options.directory or "capabilities", context.home)
    )


def _sqlite_factory(
    options: SqliteCapabilityOptions, context: PluginContext
) -> SqliteCapabilityBackend:
    return SqliteCapabilityBackend(
        resolve_home_path(options.path or "capabilities.db", context.home)
    )


def _memory_factory(
    options: MemoryCapabilityOptions, context: PluginContext
) -> MemoryCapabilityBackend:
    return MemoryCapabilityBackend()


@hookimpl
def register_capability_stores(register: Any) -> None:
    """Register the ``memory``, ``file`` and ``sqlite`` capability stores."""
    register(
        "memory",
        _memory_factory,
        MemoryCapabilityOptions,
        "In-process memory; persistent tokens and revocations last as long as the process.",
    )
    register(
        "file",
        _file_factory,
        FileCapabilityOptions,
        "One file per token, revocation and used id under <home>/capabilities (0700/0600).",
    )
    register(
        "sqlite",
        _sqlite_factory,
        SqliteCapabilityOptions,
        "A SQLite database at <home>/capabilities.db (WAL, safe across processes).",
    )
