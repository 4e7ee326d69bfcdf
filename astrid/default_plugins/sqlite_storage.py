"""The ``sqlite`` storage backend (the default): sessions, messages and key-value data in one file.

Layout (JSON is stored as TEXT so ``sqlite3`` and Datasette can read it):

* ``sessions``: one row per session: the document minus its messages (``state``), the summary
  columns a listing needs, the revision and the next message sequence number.
* ``messages``: append-only, one row per message ever stored (``active`` 0 once replaced, e.g. by
  a summary), keyed by ``(session_id, seq)``. The active messages are always the session's last
  ``message_count`` sequence numbers (a replace deactivates them all, then appends), so full and
  tail loads are range scans of the primary key. A text message (``{"role", "content"}`` with
  string content) is stored as its ``role`` and ``text`` columns, so loading it parses nothing;
  any other message is its JSON in ``body``. The view ``message_json`` shows every row as JSON.
* ``kv``: the scoped key-value store (deferred queues, workspace state, capability tokens).
* ``cap_tokens``, ``cap_revoked``, ``cap_used``: the ``sqlite`` capability store's tables (one
  file may serve both; both open it through ``ensure_schema``).
* ``_astrid_migrations``: the named migrations applied (``PRAGMA user_version`` = their number).

The database runs in WAL mode. Every write is one transaction (``BEGIN IMMEDIATE``, or a single
statement: appending one message goes through the ``_astrid_append`` view, whose trigger
compare-and-sets the session row and inserts the message), so several threads and several
processes may share a file; a lock that outlasts ``busy_timeout`` is retried
with backoff inside the backend. Saving one more message costs the same at any session length:
the session row keeps the active message count, nothing is counted or rewritten.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, overload

import pydantic_core
from pydantic import BaseModel, ConfigDict, Field

from ..config import PathOption, resolve_home_path
from ..errors import (
    ConcurrencyError,
    SchemaVersionError,
    SerializationError,
    SessionNotFound,
    StorageError,
)
from ..fsutil import create_private_file, make_private_dirs
from ..hookspecs import hookimpl
from ..ledger import LedgerRow, usd_text
from ..messages import Message, MessageRole
from ..offload import yielding
from ..plugins import PluginContext
from ..security.audit import (
    AuditRecord,
    PendingAudit,
    by_chain,
    seal,
    to_import,
)
from ..security.kv import validate_name
from ..store import (
    ITEM_ALLOWANCE,
    ITEM_ESCAPE_PATH,
    HistoryEntry,
    KeyedItem,
    SessionRecord,
    SessionSummary,
    SessionWrite,
    StateDelta,
    WorkspaceWrite,
    apply_workspace_write,
    check_messages_storable,
    join_keyed_state,
    split_keyed_state,
)
from ..timeutil import parse_rfc3339, to_utc, utcnow

DEFAULT_FILENAME = "astrid.db"
SQLITE_HEADER = b"SQLite format 3\x00"
BUSY_RETRIES = 6
"""How many times a write that found the database locked beyond ``busy_timeout`` is retried."""
DEFAULT_MMAP_MB = 256
DEFAULT_WAL_AUTOCHECKPOINT = 2000
"""WAL pages after which a commit copies the log back into the database (SQLite's own: 1000).

Twice SQLite's default halves the checkpoints, each with its two fsyncs, and a page rewritten
by many saves (the session row, the listing index) is copied once per checkpoint: appends of
~3 KB messages got ~4% cheaper on average and their p99 went from ~350 to ~150 us, for a WAL
file of up to ~8 MB instead of ~4 MB (docs/performance.md).
"""

_T = TypeVar("_T")
_Mode = Literal["read", "write", "single"]
_ROLES: dict[str, MessageRole] = {role.value: role for role in MessageRole}
_Columns = tuple[str | None, str | None, str | None]
"""A message as stored: ``(role, text, body)``; either ``text`` or ``body`` is set."""


class SqliteOptions(BaseModel):
    """Options of the ``sqlite`` backend.

    ``path`` defaults to ``<home>/astrid.db``; a relative path is taken relative to ``<home>``.
    ``synchronous``: with WAL, ``NORMAL`` (the default) is durable against a crash of the process
    (a committed save survives; the file always opens cleanly) but the last commits may be lost
    on power loss or an OS crash; ``FULL`` fsyncs every commit and is durable against power loss
    too, at the cost of one fsync per save.
    ``mmap_size_mb``: how much of the file SQLite reads through a memory map instead of a
    ``read()`` per page (loading a long session reads thousands of pages); 0 turns it off.
    ``wal_autocheckpoint``: after how many pages in the write-ahead log a commit copies them back
    into the database; 0 turns automatic checkpoints off (the log then grows until the last
    connection closes).
    """

    model_config = ConfigDict(extra="forbid")

    path: PathOption | None = DEFAULT_FILENAME
    busy_timeout_ms: int = Field(default=5000, ge=0)
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    mmap_size_mb: int = Field(default=DEFAULT_MMAP_MB, ge=0)
    wal_autocheckpoint: int = Field(default=DEFAULT_WAL_AUTOCHECKPOINT, ge=0)


# -- schema ---------------------------------------------------------------------------------


def _m0001_sessions(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS sessions (
            id TEXT PRIMARY KEY,
            revision INTEGER NOT NULL,
            state TEXT NOT NULL,
            title TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            message_count INTEGER NOT NULL,
            token_count INTEGER NOT NULL,
            workspace_path TEXT,
            model TEXT,
            parent_id TEXT,
            next_seq INTEGER NOT NULL
        )
        """
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS sessions_by_activity ON sessions (updated_at DESC, id)"
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS sessions_by_workspace "
        "ON sessions (workspace_path, updated_at DESC, id) WHERE workspace_path IS NOT NULL"
    )


def _m0002_messages(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS messages (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            active INTEGER NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID
        """
    )


def _m0003_kv(conn: sqlite3.Connection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS kv (
            namespace TEXT NOT NULL,
            key TEXT NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (namespace, key)
        ) WITHOUT ROWID
        """
    )


def _m0004_message_columns(conn: sqlite3.Connection) -> None:
    """Text messages get ``role``/``text`` columns (no JSON to parse); existing rows are copied."""
    conn.execute(
        """
        CREATE TABLE messages_v2 (
            session_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            active INTEGER NOT NULL,
            role TEXT,
            text TEXT,
            body TEXT,
            PRIMARY KEY (session_id, seq),
            CHECK ((text IS NULL) <> (body IS NULL)),
            CHECK (text IS NULL OR role IS NOT NULL)
        ) WITHOUT ROWID
        """
    )
    conn.execute(
        "INSERT INTO messages_v2 (session_id, seq, active, body) "
        "SELECT session_id, seq, active, body FROM messages"
    )
    conn.execute("DROP TABLE messages")
    conn.execute("ALTER TABLE messages_v2 RENAME TO messages")
    conn.execute(
        """
        CREATE VIEW IF NOT EXISTS message_json AS
        SELECT session_id, seq, active,
               coalesce(body, json_object('role', role, 'content', text)) AS body
        FROM messages
        """
    )


STALE_APPEND = "astrid: stale append"
"""The message of the ``_astrid_append`` trigger's abort when the revision check fails (the
trigger's SQL spells it out: SQL text is always a constant)."""


def _m0005_append_trigger(conn: sqlite3.Connection) -> None:
    """One-statement append of one message: compare-and-set the session row, insert the row."""
    conn.execute(
        """
        CREATE VIEW IF NOT EXISTS _astrid_append AS SELECT
            NULL AS session_id, NULL AS expected_revision, NULL AS base_count, NULL AS state,
            NULL AS title, NULL AS updated_at, NULL AS token_count, NULL AS workspace_path,
            NULL AS model, NULL AS parent_id, NULL AS role, NULL AS text, NULL AS body
        WHERE 0
        """
    )
    conn.execute(
        """
        CREATE TRIGGER IF NOT EXISTS _astrid_append_one INSTEAD OF INSERT ON _astrid_append
        BEGIN
            UPDATE sessions SET revision = revision + 1, state = NEW.state, title = NEW.title,
                updated_at = NEW.updated_at, message_count = message_count + 1,
                token_count = NEW.token_count, workspace_path = NEW.workspace_path,
                model = NEW.model, parent_id = NEW.parent_id, next_seq = next_seq + 1
            WHERE id = NEW.session_id AND revision = NEW.expected_revision
                AND message_count = NEW.base_count;
            SELECT RAISE(ABORT, 'astrid: stale append') WHERE changes() = 0;
            INSERT INTO messages (session_id, seq, active, role, text, body)
            SELECT NEW.session_id, next_seq - 1, 1, NEW.role, NEW.text, NEW.body
            FROM sessions WHERE id = NEW.session_id;
        END
        """
    )


def _m0006_session_items(conn: sqlite3.Connection) -> None:
    """Many session allowances / escape paths become keyed rows, so a save writes only changes.

    ``sessions.keyed`` is 1 when a session's state holds them in ``session_items`` (its
    ``state`` then lacks ``allowances`` and ``escape_state.remembered_paths``); ``next_item``
    numbers new rows in order. Existing sessions stay inline until their next whole write. The
    one-statement append applies only to inline sessions. The ``session_state`` view gives every
    session's whole state JSON, however it is stored (for ``sqlite3`` and Datasette).
    """
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS session_items (
            session_id TEXT NOT NULL,
            kind INTEGER NOT NULL,
            key TEXT NOT NULL,
            ord INTEGER NOT NULL,
            value TEXT,
            PRIMARY KEY (session_id, kind, key)
        ) WITHOUT ROWID
        """
    )
    conn.execute("ALTER TABLE sessions ADD COLUMN keyed INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE sessions ADD COLUMN next_item INTEGER NOT NULL DEFAULT 0")
    conn.execute(
        """
        CREATE VIEW IF NOT EXISTS session_state AS
        SELECT id, CASE WHEN keyed THEN json_set(state,
            '$.allowances', (SELECT json_group_array(json(value)) FROM (
                SELECT value FROM session_items
                WHERE session_id = sessions.id AND kind = 1 ORDER BY ord)),
            '$.escape_state.remembered_paths', (SELECT json_group_array(key) FROM (
                SELECT key FROM session_items
                WHERE session_id = sessions.id AND kind = 2 ORDER BY key)))
            ELSE state END AS state
        FROM sessions
        """
    )
    conn.execute("DROP TRIGGER IF EXISTS _astrid_append_one")
    conn.execute(
        """
        CREATE TRIGGER _astrid_append_one INSTEAD OF INSERT ON _astrid_append
        BEGIN
            UPDATE sessions SET revision = revision + 1, state = NEW.state, title = NEW.title,
                updated_at = NEW.updated_at, message_count = message_count + 1,
                token_count = NEW.token_count, workspace_path = NEW.workspace_path,
                model = NEW.model, parent_id = NEW.parent_id, next_seq = next_seq + 1
            WHERE id = NEW.session_id AND revision = NEW.expected_revision
                AND message_count = NEW.base_count AND keyed = 0;
            SELECT RAISE(ABORT, 'astrid: stale append') WHERE changes() = 0;
            INSERT INTO messages (session_id, seq, active, role, text, body)
            SELECT NEW.session_id, next_seq - 1, 1, NEW.role, NEW.text, NEW.body
            FROM sessions WHERE id = NEW.session_id;
        END
        """
    )


def _m0007_ledger(conn: sqlite3.Connection) -> None:
    """The spend ledger: one row per LLM call (``astrid.ledger``), written in the transaction of
    its session's save. Amounts are exact decimal text; ``at`` is fixed-width UTC text (sorts in
    time order). Rows are kept when their session is deleted; sessions saved before this
    migration have none."""
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS ledger (
            id TEXT PRIMARY KEY,
            session_id TEXT NOT NULL,
            parent_session_id TEXT,
            workspace TEXT,
            workspace_charged INTEGER NOT NULL,
            model TEXT NOT NULL,
            provider TEXT NOT NULL,
            kind TEXT NOT NULL,
            input_tokens INTEGER NOT NULL,
            output_tokens INTEGER NOT NULL,
            cache_read_tokens INTEGER NOT NULL,
            cache_write_tokens INTEGER NOT NULL,
            reasoning_tokens INTEGER NOT NULL,
            usage_reported INTEGER NOT NULL,
            reserved_usd TEXT NOT NULL,
            cost_usd TEXT NOT NULL,
            at TEXT NOT NULL
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX IF NOT EXISTS ledger_by_time ON ledger (at, id)")
    conn.execute("CREATE INDEX IF NOT EXISTS ledger_by_session ON ledger (session_id, at)")
    conn.execute("CREATE INDEX IF NOT EXISTS ledger_by_workspace ON ledger (workspace, at)")


_LEDGER_COLUMNS = (
    "id, session_id, parent_session_id, workspace, workspace_charged, model, provider, kind, "
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, "
    "usage_reported, reserved_usd, cost_usd, at"
)


_LEDGER_FILTERS = " at >= ? AND at < ? AND (? IS NULL OR workspace = ?) ORDER BY at, id"
_LEDGER_SELECT = "SELECT " + _LEDGER_COLUMNS + " FROM ledger WHERE" + _LEDGER_FILTERS
"""The rows in a time range (``ledger_by_time``), optionally of one workspace."""
_LEDGER_SELECT_SESSION = (
    "SELECT " + _LEDGER_COLUMNS + " FROM ledger WHERE session_id = ? AND" + _LEDGER_FILTERS
)
"""The same, of one session (``ledger_by_session``)."""


def _ledger_params(row: LedgerRow) -> tuple[Any, ...]:
    return (
        row.id,
        row.session_id,
        row.parent_session_id,
        row.workspace,
        int(row.workspace_charged),
        row.model,
        row.provider,
        row.kind,
        row.input_tokens,
        row.output_tokens,
        row.cache_read_tokens,
        row.cache_write_tokens,
        row.reasoning_tokens,
        int(row.usage_reported),
        usd_text(row.reserved_usd),
        usd_text(row.cost_usd),
        format_timestamp(row.at),
    )


_LEDGER_INSERT = (
    "INSERT OR IGNORE INTO ledger (" + _LEDGER_COLUMNS + ") "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _insert_ledger(c: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Store ledger rows in the caller's transaction; an id already stored is skipped."""
    if rows:
        c.executemany(_LEDGER_INSERT, rows)


def _m0008_audit(conn: sqlite3.Connection) -> None:
    """The audit log (``astrid.security.audit``): one row per security decision, chained per
    workspace (``chain``, ``seq``) and signed; sealed and written in its session's save
    transaction. ``body`` is the signed canonical JSON; the other columns index it."""
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS audit (
            chain TEXT NOT NULL,
            seq INTEGER NOT NULL,
            id TEXT NOT NULL,
            session_id TEXT NOT NULL,
            at TEXT NOT NULL,
            body TEXT NOT NULL,
            hash TEXT NOT NULL,
            signature TEXT NOT NULL,
            PRIMARY KEY (chain, seq)
        ) WITHOUT ROWID
        """
    )
    conn.execute("CREATE INDEX IF NOT EXISTS audit_by_session ON audit (session_id)")


_AUDIT_HEAD = "SELECT seq, hash FROM audit WHERE chain = ? ORDER BY seq DESC LIMIT 1"
_AUDIT_HASHES = "SELECT hash FROM audit WHERE chain = ? ORDER BY seq"
_AUDIT_INSERT = (
    "INSERT INTO audit (chain, seq, id, session_id, at, body, hash, signature) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_AUDIT_ALL = (
    "SELECT chain, seq, id, session_id, at, body, hash, signature FROM audit ORDER BY chain, seq"
)
_AUDIT_OF_SESSION = (
    "SELECT chain, seq, id, session_id, at, body, hash, signature FROM audit "
    "WHERE session_id = ? ORDER BY chain, seq"
)


def _insert_audit(c: sqlite3.Connection, pending: Sequence[PendingAudit]) -> None:
    """Seal and store audit entries in the caller's write transaction, after each chain's
    head as this transaction reads it (the write lock orders concurrent writers)."""
    for chain, items in by_chain(pending).items():
        row = c.execute(_AUDIT_HEAD, (chain,)).fetchone()
        head = (int(row[0]), str(row[1])) if row is not None else None
        c.executemany(
            _AUDIT_INSERT,
            [
                (r.chain, r.seq, r.id, r.session_id, r.at, r.body, r.hash, r.signature)
                for r in seal(items, head)
            ],
        )


def _m_capabilities_0001_tables(conn: sqlite3.Connection) -> None:
    """The ``sqlite`` capability store's tables: token JSON by id, revoked and used ids.

    Its name and SQL are those the capability store applied on its own before the ladder was
    one, so a file it created then is recognised as already migrated.
    """
    conn.execute("CREATE TABLE IF NOT EXISTS cap_tokens (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    conn.execute("CREATE TABLE IF NOT EXISTS cap_revoked (id TEXT PRIMARY KEY)")
    conn.execute("CREATE TABLE IF NOT EXISTS cap_used (id TEXT PRIMARY KEY)")


MIGRATIONS: tuple[tuple[str, Callable[[sqlite3.Connection], None]], ...] = (
    ("0001_sessions", _m0001_sessions),
    ("0002_messages", _m0002_messages),
    ("0003_kv", _m0003_kv),
    ("0004_message_columns", _m0004_message_columns),
    ("0005_append_trigger", _m0005_append_trigger),
    ("0006_session_items", _m0006_session_items),
    ("capabilities_0001_tables", _m_capabilities_0001_tables),
    ("0007_ledger", _m0007_ledger),
    ("0008_audit", _m0008_audit),
)
"""The one migration ladder of an astrid SQLite file: applied in order, each once, each in its
own transaction, by the session backend and the ``sqlite`` capability store alike
(``ensure_schema``), so one file may hold both. A new migration of either goes at the end."""


class SchemaTransactions(Protocol):
    """Runs ``fn`` on a connection to the file (``write``: in ``BEGIN IMMEDIATE``; ``single``)."""

    def __call__(self, fn: Callable[[sqlite3.Connection], _T], mode: _Mode, /) -> _T: ...


def not_an_astrid_database(path: Path, why: str = "") -> StorageError:
    """The error for a file that is not an astrid SQLite database (``why``: how it was told)."""
    suffix = f" ({why})" if why else ""
    return StorageError(f"{path} is not an astrid SQLite database{suffix}")


def refuse_foreign(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a database holding tables but no ``_astrid_migrations`` (another application's)."""
    tables = {
        row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if tables and "_astrid_migrations" not in tables:
        raise not_an_astrid_database(path, "it holds tables of another application")


def _check_version(c: sqlite3.Connection, path: Path) -> set[str]:
    """The applied migration names; ``SchemaVersionError`` if one (or the version) is unknown."""
    known = {name for name, _ in MIGRATIONS}
    version = int(c.execute("PRAGMA user_version").fetchone()[0])
    names = {str(row[0]) for row in c.execute("SELECT name FROM _astrid_migrations")}
    unknown = sorted(names - known)
    if version > len(MIGRATIONS) or unknown:
        schema = max(version, len(names))
        detail = f"; unknown migrations: {', '.join(unknown)}" if unknown else ""
        raise SchemaVersionError(
            f"{path} was written by a newer astrid (schema {schema}, this astrid "
            f"knows {len(MIGRATIONS)}){detail}"
        )
    return names


def run_in_transaction(
    conn: sqlite3.Connection,
    fn: Callable[[sqlite3.Connection], _T],
    mode: _Mode,
) -> _T:
    """Run ``fn`` in ``BEGIN IMMEDIATE`` (``write``), ``BEGIN`` (``read``) or as is
    (``single``), committing on success and rolling back on any exception."""
    if mode == "single":
        return fn(conn)
    conn.execute("BEGIN IMMEDIATE" if mode == "write" else "BEGIN")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


def ensure_schema(run: SchemaTransactions, path: Path) -> None:
    """Apply the migrations of ``MIGRATIONS`` missing from the file at ``path``.

    Each runs once in its own write transaction, re-checked inside it, so processes opening one
    file at once apply it once; ``PRAGMA user_version`` ends as the ladder's length. Refuses
    another application's database (``StorageError``) and a file holding a migration this astrid
    does not know (``SchemaVersionError``), before changing anything.
    """

    def bootstrap(c: sqlite3.Connection) -> set[str]:
        refuse_foreign(c, path)
        c.execute(
            "CREATE TABLE IF NOT EXISTS _astrid_migrations "
            "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        return _check_version(c, path)

    applied = run(bootstrap, "write")
    for index, (name, migration) in enumerate(MIGRATIONS, start=1):
        if name in applied:
            continue

        def step(
            c: sqlite3.Connection,
            name: str = name,
            migration: Callable[[sqlite3.Connection], None] = migration,
            index: int = index,
        ) -> None:
            if name in _check_version(c, path):
                return
            migration(c)
            c.execute(
                "INSERT INTO _astrid_migrations (name, applied_at) VALUES (?, ?)",
                (name, format_timestamp(utcnow())),
            )
            c.execute(f"PRAGMA user_version = {index:d}")

        run(step, "write")

    def settle(c: sqlite3.Connection) -> None:
        _check_version(c, path)
        c.execute(f"PRAGMA user_version = {len(MIGRATIONS):d}")

    if run(lambda c: int(c.execute("PRAGMA user_version").fetchone()[0]), "single") != len(
        MIGRATIONS
    ):
        run(settle, "write")


# -- helpers --------------------------------------------------------------------------------


def format_timestamp(value: datetime) -> str:
    """Fixed-width RFC 3339 UTC with microseconds (sorts as text in time order).

    The text up to the second is kept for the last second formatted: every save formats its
    time, and ``isoformat`` alone costs ~2.5 us of a ~60 us save.
    """
    global _LAST_SECOND
    v = value if value.tzinfo is UTC else to_utc(value)
    key = (v.second, v.minute, v.hour, v.day, v.month, v.year)
    last = _LAST_SECOND
    if last[0] != key:
        last = _LAST_SECOND = (key, v.replace(microsecond=0, tzinfo=None).isoformat())
    return f"{last[1]}.{v.microsecond:06d}Z"


_LAST_SECOND: tuple[tuple[int, ...], str] = ((), "")
"""``format_timestamp``'s last second: its fields and its text (one tuple: thread-safe)."""


_format_created = functools.lru_cache(maxsize=256)(format_timestamp)
"""``created_at`` of a session never changes: format it once."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

def _parse_timestamp(text: str) -> datetime:
    """A stored timestamp; an unreadable one (edited by hand) counts as the epoch.

    One bad row must not break listing the others: it sorts last and ``astrid doctor``
    reports the session when it fails to load.
    """
    try:
        return to_utc(datetime.fromisoformat(text))
    except (TypeError, ValueError):
        pass
    try:
        parsed = parse_rfc3339(text)
    except (TypeError, ValueError):
        return _EPOCH
    return parsed if isinstance(parsed, datetime) else _EPOCH


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _dumps_fast(value: Any) -> str:
    return pydantic_core.to_json(value, inf_nan_mode="constants").decode("utf-8")


def _pick_encoder() -> Callable[[Any], str]:
    """Compact UTF-8 JSON: pydantic-core's encoder (3x faster) when it writes NaN as json does."""
    try:
        if _dumps_fast({"x": [float("nan"), "é"]}) == _ENCODER.encode({"x": [float("nan"), "é"]}):
            return _dumps_fast
    except (TypeError, ValueError):
        pass
    return _ENCODER.encode


_dumps = _pick_encoder()


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return (code & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


LAZY_ROWS = 64
"""From this many messages a write encodes each as the insert reads it (``_LazyRows``)."""


class _LazyRows(Sequence[_Columns]):
    """Message rows encoded on access, never all held at once: the cyclic GC sees no
    thousands of new objects (whose full collections would stop every thread, the event loop
    included), and off the loop the encoding steps aside for it (``yielding``)."""

    __slots__ = ("_encode", "_messages")

    def __init__(self, messages: Sequence[Any], encode: Callable[[Any], _Columns]) -> None:
        self._messages = messages
        self._encode = encode

    def __len__(self) -> int:
        return len(self._messages)

    @overload
    def __getitem__(self, index: int) -> _Columns: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[_Columns]: ...
    def __getitem__(self, index: int | slice) -> _Columns | Sequence[_Columns]:
        if isinstance(index, slice):
            return [self._encode(m) for m in self._messages[index]]
        return self._encode(self._messages[index])

    def __iter__(self) -> Iterator[_Columns]:
        encode = self._encode
        for message in yielding(self._messages):
            yield encode(message)


# -- the backend ----------------------------------------------------------------------------


class SqliteBackend:
    """Sessions in a SQLite file; one connection per backend, guarded by a lock."""

    name = "sqlite"
    accepts_state_delta = True
    """Saves of sessions with many allowances / escape paths send only their changes."""
    accepts_message_objects = True
    """Saves send ``Message`` objects: a text message goes to its columns with no JSON built."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_ms: int = 5000,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        mmap_size_mb: int = DEFAULT_MMAP_MB,
        wal_autocheckpoint: int = DEFAULT_WAL_AUTOCHECKPOINT,
        read_only: bool = False,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise StorageError(f"sqlite: synchronous must be NORMAL or FULL, not {synchronous!r}")
        if busy_timeout_ms < 0:
            raise StorageError("sqlite: busy_timeout_ms must be >= 0")
        if mmap_size_mb < 0:
            raise StorageError("sqlite: mmap_size_mb must be >= 0")
        if wal_autocheckpoint < 0:
            raise StorageError("sqlite: wal_autocheckpoint must be >= 0")
        self.path = Path(path).expanduser().absolute()
        self.busy_timeout_ms = int(busy_timeout_ms)
        self.synchronous = synchronous
        self.mmap_size_mb = int(mmap_size_mb)
        self.wal_autocheckpoint = int(wal_autocheckpoint)
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._kv = SqliteKvStore(self)
        self.read_only = read_only
        """Opened to read (``PluginContext.read_only``): nothing is created or migrated, and
        every write is a ``StorageError`` saying so (``mode=ro``)."""
        if read_only:
            self._open_read_only()
        else:
            self._open()

    # -- opening ----------------------------------------------------------------------------

    def _not_ours(self, why: str = "") -> StorageError:
        return not_an_astrid_database(self.path, why)

    def _open_read_only(self) -> None:
        """Open ``mode=ro``; a file that does not exist (or is empty) reads as an empty store
        and is not created. A WAL file whose directory cannot hold the ``-shm`` index is read
        as ``immutable`` (nobody can be writing it then)."""
        if self.path.exists() and self.path.stat().st_size > 0:
            self._check_header()
            uri = self.path.as_uri() + "?mode=ro"
            conn = self._connect_ro(uri)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except sqlite3.OperationalError:
                conn.close()
                conn = self._connect_ro(uri + "&immutable=1")
            except sqlite3.DatabaseError as exc:  # "file is not a database"
                conn.close()
                raise self._not_ours(str(exc)) from exc
        else:
            ancestor = self.path.parent  # a home that is a file must not read as "no sessions"
            while not ancestor.exists() and ancestor.parent != ancestor:
                ancestor = ancestor.parent
            if not ancestor.is_dir():
                raise StorageError(f"cannot open {self.path}: {ancestor} is not a directory")
            conn = self._conn = self._connect_ro(":memory:")
            ensure_schema(self._run_unchecked, self.path)
        self._conn = conn
        try:
            self._run(lambda c: refuse_foreign(c, self.path), "single")
            applied = self._run(lambda c: _check_version(c, self.path), "single")
            if len(applied) < len(MIGRATIONS):
                raise SchemaVersionError(
                    f"{self.path}: schema {len(applied)} of {len(MIGRATIONS)}; the store is "
                    "opened read-only, so it cannot be upgraded (open it once writable)"
                )
            self._run(self._configure_read_only, "single")
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def _configure_read_only(self, c: sqlite3.Connection) -> None:
        # PRAGMA values cannot be bound; busy_timeout_ms is validated above (an int).
        c.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms:d}")
        c.execute("PRAGMA query_only = ON")

    def _connect_ro(self, target: str) -> sqlite3.Connection:
        try:
            return sqlite3.connect(
                target,
                uri=target != ":memory:",
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self.path} read-only: {exc}") from exc

    def _run_unchecked(self, fn: Callable[[sqlite3.Connection], _T], mode: _Mode) -> _T:
        """``_run`` without the read-only refusal: builds the empty schema in memory."""
        assert self._conn is not None
        return run_in_transaction(self._conn, fn, mode)

    def _open(self) -> None:
        try:
            make_private_dirs(self.path.parent)
        except OSError as exc:
            raise StorageError(f"cannot create the directory of {self.path}: {exc}") from exc
        if self.path.exists():
            self._check_header()
        else:
            try:
                created = create_private_file(self.path)
            except OSError as exc:
                raise StorageError(f"cannot create {self.path}: {exc}") from exc
            if not created:
                self._check_header()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        self._conn = conn
        try:
            self._refuse_foreign(conn)
            self._configure(conn)
            self._migrate()
        except BaseException:
            self._conn = None
            conn.close()
            raise
        self._private_sidecars()

    def _check_header(self) -> None:
        if self.path.is_dir():
            raise self._not_ours("it is a directory")
        try:
            with open(self.path, "rb") as fh:
                header = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {exc}") from exc
        if header and header != SQLITE_HEADER:
            raise self._not_ours("the file is not a SQLite database")

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Refuse another application's database before changing anything in it (e.g. WAL)."""

        self._run(lambda c: refuse_foreign(c, self.path), "single")

    def _configure(self, conn: sqlite3.Connection) -> None:
        def setup(c: sqlite3.Connection) -> None:
            # PRAGMA values cannot be bound; they are validated above (ints and a literal).
            c.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms:d}")
            mode = c.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StorageError(f"{self.path}: cannot switch the database to WAL mode")
            c.execute(f"PRAGMA synchronous = {self.synchronous}")
            c.execute("PRAGMA foreign_keys = ON")
            c.execute(f"PRAGMA mmap_size = {self.mmap_size_mb * 1024 * 1024:d}")
            c.execute(f"PRAGMA wal_autocheckpoint = {self.wal_autocheckpoint:d}")

        self._run(setup, "single")

    def _migrate(self) -> None:
        ensure_schema(self._run, self.path)

    def _private_sidecars(self) -> None:
        for suffix in ("-wal", "-shm"):
            sidecar = self.path.with_name(self.path.name + suffix)
            try:
                if sidecar.exists() and (sidecar.stat().st_mode & 0o777) != 0o600:
                    os.chmod(sidecar, 0o600)
            except OSError:
                continue

    # -- transactions -----------------------------------------------------------------------

    def _run(self, fn: Callable[[sqlite3.Connection], _T], mode: _Mode) -> _T:
        """Run ``fn`` in a transaction (``write``: BEGIN IMMEDIATE, ``read``: a snapshot).

        A database lock outlasting ``busy_timeout`` is retried with backoff; other SQLite
        errors become ``StorageError`` naming the file.
        """
        delay = 0.02
        attempt = 0
        while True:
            with self._lock:
                conn = self._conn
                if conn is None:
                    raise StorageError(f"the SQLite store {self.path} is closed")
                if mode == "write" and self.read_only:
                    raise self._read_only_error()
                try:
                    return run_in_transaction(conn, fn, mode)
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or attempt >= BUSY_RETRIES:
                        raise self._storage_error(exc) from exc
                except sqlite3.DatabaseError as exc:
                    if "not a database" in str(exc):
                        raise self._not_ours(str(exc)) from exc
                    raise self._storage_error(exc) from exc
                except sqlite3.Error as exc:
                    raise self._storage_error(exc) from exc
            attempt += 1
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    def _storage_error(self, exc: sqlite3.Error) -> StorageError:
        if "readonly" in str(exc):  # SQLITE_READONLY: "attempt to write a readonly database"
            return self._read_only_error()
        return StorageError(f"SQLite store {self.path}: {exc}")

    def _read_only_error(self) -> StorageError:
        why = "opened read-only" if self.read_only else "its file or directory is not writable"
        return StorageError(f"the SQLite store {self.path} is read-only ({why}): cannot write")

    # -- sessions ---------------------------------------------------------------------------

    def load(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        """The session (only its last ``tail`` active messages if given), or None."""
        return self._load(session_id, tail, self._messages_of)

    def load_decoded(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        """``load``, with the messages already ``Message`` objects (what ``SessionStore`` wants).

        Text rows become messages without an intermediate JSON object: a whole load of a long
        session allocates (and makes the garbage collector walk) half as many objects.
        """
        return self._load(session_id, tail, self._decoded_messages_of)

    def _load(
        self,
        session_id: str,
        tail: int | None,
        decode: Callable[[list[tuple[Any, Any, Any]], str], list[Any]],
    ) -> SessionRecord | None:
        if tail is not None and tail < 0:
            raise ValueError("tail must be >= 0")

        def read(c: sqlite3.Connection) -> tuple[Any, ...] | None:
            row = c.execute(
                "SELECT state, revision, message_count, updated_at, next_seq, keyed "
                "FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
            if row is None:
                return None
            count, next_seq = int(row[2]), int(row[4])
            wanted = count if tail is None else min(tail, count)
            rows = c.execute(
                "SELECT role, text, body FROM messages "
                "WHERE session_id = ? AND seq >= ? AND active = 1 ORDER BY seq",
                (session_id, next_seq - wanted),
            ).fetchall()
            items = (
                c.execute(
                    "SELECT kind, key, value FROM session_items WHERE session_id = ? "
                    "ORDER BY kind, ord",
                    (session_id,),
                ).fetchall()
                if row[5]
                else None
            )
            return (*row[:4], rows, items)

        found = self._run(read, "read")
        if found is None:
            return None
        state_text, revision, count, updated_at, rows, items = found
        state = self._decode(state_text, session_id, "state")
        if not isinstance(state, dict):
            raise SerializationError(
                f"{self.path}: session {session_id}: stored state is a JSON "
                f"{type(state).__name__}, not an object"
            )
        if items is not None:
            self._join_items(state, items, session_id)
        messages = decode(rows, session_id)
        return SessionRecord(
            state=state,
            messages=messages,
            message_offset=int(count) - len(messages),
            message_count=int(count),
            revision=int(revision),
            updated_at=_parse_timestamp(updated_at),
        )

    def _join_items(
        self, state: dict[str, Any], items: list[tuple[Any, Any, Any]], session_id: str
    ) -> None:
        """Put a keyed session's allowances and remembered escape paths back into its state."""
        allowances: list[Any] = []
        paths: list[str] = []
        for kind, key, value in items:
            if kind == ITEM_ALLOWANCE:
                allowances.append(self._decode(value, session_id, f"allowance {key}"))
            elif kind == ITEM_ESCAPE_PATH and type(key) is str:
                paths.append(key)
            else:
                raise SerializationError(
                    f"{self.path}: session {session_id}: stored state item {key!r} has an "
                    f"unknown kind {kind!r}"
                )
        join_keyed_state(state, allowances, paths, f"{self.path}: session {session_id}")

    def _item_rows(
        self, items: list[KeyedItem], session_id: str, first: int
    ) -> list[tuple[str, int, str, int, str | None]]:
        """``session_items`` rows for ``items``, numbered from ``first``."""
        return [
            (
                session_id,
                kind,
                key,
                first + i,
                None if value is None else self._encode(value, session_id, f"allowance {key}"),
            )
            for i, (kind, key, value) in enumerate(items)
        ]

    def _apply_delta(
        self, c: sqlite3.Connection, session_id: str, delta: StateDelta, first: int
    ) -> None:
        """Write a keyed session's changed allowances and escape paths (new rows from ``first``)."""
        deletes: list[tuple[str, int, str]] = []
        upserts: list[KeyedItem] = []
        for key, data in delta.allowances.items():
            if data is None:
                deletes.append((session_id, ITEM_ALLOWANCE, key))
            else:
                upserts.append((ITEM_ALLOWANCE, key, data))
        for path, present in delta.remembered_paths.items():
            if present:
                upserts.append((ITEM_ESCAPE_PATH, path, None))
            else:
                deletes.append((session_id, ITEM_ESCAPE_PATH, path))
        if deletes:
            c.executemany(
                "DELETE FROM session_items WHERE session_id = ? AND kind = ? AND key = ?", deletes
            )
        if upserts:
            # A changed row keeps its place (``ord``); a new one goes after the stored ones.
            c.executemany(
                "INSERT INTO session_items (session_id, kind, key, ord, value) "
                "VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (session_id, kind, key) DO UPDATE SET value = excluded.value",
                self._item_rows(upserts, session_id, first),
            )

    @staticmethod
    def _replace_items(
        c: sqlite3.Connection,
        session_id: str,
        rows: list[tuple[str, int, str, int, str | None]],
    ) -> None:
        """Make ``rows`` (encoded by ``_item_rows``) the session's keyed rows."""
        c.execute("DELETE FROM session_items WHERE session_id = ?", (session_id,))
        if rows:
            c.executemany(
                "INSERT INTO session_items (session_id, kind, key, ord, value) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )

    def _messages_of(self, rows: list[tuple[Any, Any, Any]], session_id: str) -> list[Any]:
        """Stored ``(role, text, body)`` rows as JSON values: text rows need no parsing."""
        loads = json.loads
        out: list[Any] = []
        append = out.append
        for role, text, body in rows:
            if type(text) is str and type(role) is str:
                append({"role": role, "content": text})
                continue
            if text is None and type(body) is str:
                try:
                    append(loads(body))
                    continue
                except (ValueError, RecursionError):
                    pass
            append(self._bad_row(role, text, body, session_id))
        return out

    def _decoded_messages_of(
        self, rows: list[tuple[Any, Any, Any]], session_id: str
    ) -> list[Message]:
        """Stored rows as ``Message`` objects (text rows of a known role built directly)."""
        roles = _ROLES
        from_json = Message.from_json
        text_message = Message.text_message
        loads = json.loads
        out: list[Message] = []
        append = out.append
        for role, text, body in rows:
            if type(text) is str and type(role) is str:
                known = roles.get(role)
                append(
                    text_message(known, text)
                    if known is not None
                    else from_json({"role": role, "content": text})
                )
                continue
            if text is None and type(body) is str:
                try:
                    append(from_json(loads(body)))
                    continue
                except (ValueError, RecursionError):
                    pass
            append(from_json(self._bad_row(role, text, body, session_id)))
        return out

    def _bad_row(self, role: Any, text: Any, body: Any, session_id: str) -> Any:
        """Decode a row that failed the fast path, or raise naming the session and the fault."""
        where = f"{self.path}: session {session_id}"
        if type(text) is not str and text is not None:
            raise SerializationError(f"{where}: stored message text is a {type(text).__name__}")
        if text is not None:
            raise SerializationError(f"{where}: stored text message has no role ({role!r})")
        if body is None:
            raise SerializationError(f"{where}: stored message has neither text nor body")
        return self._decode(body, session_id, "message")

    def _decode(self, text: Any, session_id: str, what: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError, RecursionError) as exc:
            raise SerializationError(
                f"{self.path}: session {session_id}: stored {what} is not valid JSON: {exc}"
            ) from None

    def _encode(self, value: Any, session_id: str, what: str) -> str:
        try:
            return _dumps(value)
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"session {session_id}: the {what} cannot be encoded as JSON: {exc}"
            ) from exc

    def _columns(self, message: Any, session_id: str) -> _Columns:
        """``(role, text, body)`` for a message (a ``Message`` or its JSON): text messages as
        columns, others as JSON."""
        if isinstance(message, Message):
            text = message.content
            if type(text) is str and message.verbatim is None:
                kind = message.role
                return kind.value if isinstance(kind, MessageRole) else kind, text, None
            message = message.to_json()
        if type(message) is dict and len(message) == 2 and next(iter(message)) == "role":
            role, content = message["role"], message.get("content")
            if type(role) is str and type(content) is str:
                return role, content, None
        return None, None, self._encode(message, session_id, "message")

    def _rows(self, messages: Sequence[Any], session_id: str) -> Sequence[_Columns]:
        """The rows of ``messages``: encoded now if few, else as the insert reads them, so a
        long first save holds one encoded row at a time (and pauses for the event loop)."""
        if len(messages) < LAZY_ROWS:
            return [self._columns(m, session_id) for m in messages]
        return _LazyRows(messages, functools.partial(self._columns, session_id=session_id))

    def _guarded(self, fn: Callable[[sqlite3.Connection], _T], mode: _Mode, sid: str) -> _T:
        """``_run``, with text SQLite cannot store (lone surrogates) as ``SerializationError``."""
        try:
            return self._run(fn, mode)
        except UnicodeEncodeError as exc:
            raise SerializationError(
                f"session {sid}: a message cannot be stored as UTF-8 text: {exc}"
            ) from None

    def write(self, change: SessionWrite) -> int:
        """Apply one save in one transaction; ``ConcurrencyError`` on a stale revision.

        Many session allowances and escape paths are kept as keyed rows (``session_items``): a
        whole state is split on the way in, and a ``change.delta`` updates only changed rows.
        """
        sid = change.session_id
        change.check_archived()
        change.check_storable()
        delta = change.delta
        split = None if delta is not None else split_keyed_state(change.state, force=False)
        state = self._encode(split[0] if split is not None else change.state, sid, "state")
        item_rows = self._item_rows(split[1], sid, 0) if split is not None else None
        rows = self._rows(change.messages, sid)
        archived = self._rows(change.archived, sid)
        summary = change.summary
        created = _format_created(summary.created_at)
        updated = format_timestamp(summary.updated_at)
        ledger = [_ledger_params(r) for r in change.ledger]

        def append_one(c: sqlite3.Connection) -> bool:
            # The common case in one statement (the trigger of the ``_astrid_append`` view):
            # compare-and-set the revision and message count, then insert at ``next_seq``.
            try:
                c.execute(
                    "INSERT INTO _astrid_append VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        sid,
                        change.expected_revision,
                        change.base_count,
                        state,
                        summary.title,
                        updated,
                        int(summary.token_count),
                        summary.workspace_path,
                        summary.model,
                        summary.parent_id,
                        *rows[0],
                    ),
                )
            except sqlite3.IntegrityError as exc:
                if STALE_APPEND in str(exc):
                    return False
                raise
            return True

        def fast_append(c: sqlite3.Connection) -> int | None:
            # Several messages (or a delta of keyed rows): one UPDATE compare-and-sets and
            # learns where the messages and new keyed rows go.
            n = len(rows)
            reserved = len(delta) if delta is not None else 0
            row = c.execute(
                "UPDATE sessions SET revision = revision + 1, state = ?, title = ?, "
                "updated_at = ?, message_count = message_count + ?, token_count = ?, "
                "workspace_path = ?, model = ?, parent_id = ?, next_seq = next_seq + ?, "
                "next_item = next_item + ? "
                "WHERE id = ? AND revision = ? AND message_count = ? AND keyed = ? "
                "RETURNING revision, next_seq, next_item",
                (
                    state,
                    summary.title,
                    updated,
                    n,
                    int(summary.token_count),
                    summary.workspace_path,
                    summary.model,
                    summary.parent_id,
                    n,
                    reserved,
                    sid,
                    change.expected_revision,
                    change.base_count,
                    1 if delta is not None else 0,
                ),
            ).fetchone()
            if row is None:
                return None
            self._insert(c, sid, int(row[1]) - n, rows)
            if delta is not None:
                self._apply_delta(c, sid, delta, int(row[2]) - reserved)
            _insert_ledger(c, ledger)
            _insert_audit(c, change.audit)
            return int(row[0])

        if change.is_append and change.expected_revision is not None and split is None:
            if len(rows) == 1 and delta is None and not ledger and not change.audit:
                if self._guarded(append_one, "single", sid):
                    return change.expected_revision + 1
            else:
                done = self._guarded(fast_append, "write", sid)
                if done is not None:
                    return done

        def apply(c: sqlite3.Connection) -> int:
            row = c.execute(
                "SELECT revision, message_count, next_seq, keyed, next_item "
                "FROM sessions WHERE id = ?",
                (sid,),
            ).fetchone()
            current = int(row[0]) if row is not None else None
            if current != change.expected_revision:
                raise ConcurrencyError(
                    f"session {sid}: stale save (based on revision "
                    f"{change.expected_revision}, stored revision is {current})"
                )
            if row is None:
                revision, count, next_seq = 0, 0, 0
            else:
                revision, count, next_seq = current or 0, int(row[1]), int(row[2])
                if change.replace:
                    c.execute(
                        "UPDATE messages SET active = 0 "
                        "WHERE session_id = ? AND seq >= ? AND active = 1",
                        (sid, next_seq - count),
                    )
                    count = 0
                elif count != change.base_count:
                    raise ConcurrencyError(
                        f"session {sid}: stale save (based on {change.base_count} "
                        f"messages, {count} stored)"
                    )
            # Replaced messages first, so the active ones stay the last ``count`` seqs.
            self._insert(c, sid, next_seq, archived, active=False)
            next_seq += len(archived)
            self._insert(c, sid, next_seq, rows)
            revision += 1
            state_text, keyed, next_item = state, 0, 0
            if delta is not None and row is not None and row[3]:
                keyed, next_item = 1, int(row[4]) + len(delta)
                self._apply_delta(c, sid, delta, int(row[4]))
            else:
                new_rows = item_rows
                if delta is not None:
                    # The stored state is inline: the delta cannot apply, write it whole.
                    full = delta.full_state()
                    whole = split_keyed_state(full, force=True)
                    state_text = self._encode(whole[0] if whole else full, sid, "state")
                    new_rows = self._item_rows(whole[1], sid, 0) if whole else None
                if new_rows is not None:
                    keyed, next_item = 1, len(new_rows)
                if new_rows is not None or (row is not None and row[3]):
                    self._replace_items(c, sid, new_rows or [])
            values = (
                revision,
                state_text,
                summary.title,
                created,
                updated,
                count + len(rows),
                int(summary.token_count),
                summary.workspace_path,
                summary.model,
                summary.parent_id,
                next_seq + len(rows),
                keyed,
                next_item,
                sid,
            )
            if row is None:
                c.execute(
                    "INSERT INTO sessions (revision, state, title, created_at, updated_at, "
                    "message_count, token_count, workspace_path, model, parent_id, next_seq, "
                    "keyed, next_item, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    values,
                )
            else:
                c.execute(
                    "UPDATE sessions SET revision = ?, state = ?, title = ?, created_at = ?, "
                    "updated_at = ?, message_count = ?, token_count = ?, workspace_path = ?, "
                    "model = ?, parent_id = ?, next_seq = ?, keyed = ?, next_item = ? "
                    "WHERE id = ?",
                    values,
                )
            _insert_ledger(c, ledger)
            _insert_audit(c, change.audit)
            return revision

        return self._guarded(apply, "write", sid)

    @staticmethod
    def _insert(
        c: sqlite3.Connection,
        sid: str,
        first_seq: int,
        rows: Sequence[_Columns],
        *,
        active: bool = True,
    ) -> None:
        sql = (
            "INSERT INTO messages (session_id, seq, active, role, text, body) "
            "VALUES (?, ?, 1, ?, ?, ?)"
            if active
            else "INSERT INTO messages (session_id, seq, active, role, text, body) "
            "VALUES (?, ?, 0, ?, ?, ?)"
        )
        if len(rows) == 1:
            c.execute(sql, (sid, first_seq, *rows[0]))
        elif rows:
            c.executemany(sql, ((sid, first_seq + i, *row) for i, row in enumerate(rows)))

    def append(
        self, session_id: str, messages: Sequence[Any], summary: SessionSummary | None = None
    ) -> tuple[int, int]:
        """Append regardless of revision; ``SessionNotFound`` if the session does not exist."""
        check_messages_storable(session_id, messages)
        rows = [self._columns(m, session_id) for m in messages]
        updated = format_timestamp(utcnow())

        def apply(c: sqlite3.Connection) -> tuple[int, int]:
            row = c.execute(
                "SELECT revision, message_count, next_seq FROM sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
            if row is None:
                raise SessionNotFound(
                    f"session {session_id} not found in the SQLite store {self.path}"
                )
            revision, count, next_seq = int(row[0]) + 1, int(row[1]) + len(rows), int(row[2])
            self._insert(c, session_id, next_seq, rows)
            if summary is None:
                c.execute(
                    "UPDATE sessions SET revision = ?, updated_at = ?, message_count = ?, "
                    "next_seq = ? WHERE id = ?",
                    (revision, updated, count, next_seq + len(rows), session_id),
                )
            else:
                c.execute(
                    "UPDATE sessions SET revision = ?, updated_at = ?, message_count = ?, "
                    "next_seq = ?, title = ?, created_at = ?, token_count = ?, "
                    "workspace_path = ?, model = ?, parent_id = ? WHERE id = ?",
                    (
                        revision,
                        updated,
                        count,
                        next_seq + len(rows),
                        summary.title,
                        _format_created(summary.created_at),
                        int(summary.token_count),
                        summary.workspace_path,
                        summary.model,
                        summary.parent_id,
                        session_id,
                    ),
                )
            return revision, count

        return self._guarded(apply, "write", session_id)

    def delete(self, session_id: str) -> bool:
        """Remove a session row and its messages; False if absent."""

        def apply(c: sqlite3.Connection) -> bool:
            c.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            c.execute("DELETE FROM session_items WHERE session_id = ?", (session_id,))
            return c.execute("DELETE FROM sessions WHERE id = ?", (session_id,)).rowcount > 0

        return self._run(apply, "write")

    def list_sessions(
        self, *, workspace: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[SessionSummary]:
        """A page of summaries, newest activity first (ties by id), from the columns only."""
        columns = (
            "SELECT id, title, created_at, updated_at, message_count, token_count, "
            "workspace_path, model, parent_id, revision FROM sessions "
        )
        if workspace is None:
            sql = columns + "ORDER BY updated_at DESC, id LIMIT ? OFFSET ?"
            params: tuple[Any, ...] = (limit, offset)
        else:
            sql = columns + "WHERE workspace_path = ? ORDER BY updated_at DESC, id LIMIT ? OFFSET ?"
            params = (workspace, limit, offset)
        rows = self._run(lambda c: c.execute(sql, params).fetchall(), "single")
        return [
            SessionSummary(
                id=r[0],
                title=r[1],
                created_at=_parse_timestamp(r[2]),
                updated_at=_parse_timestamp(r[3]),
                message_count=int(r[4]),
                token_count=int(r[5]),
                workspace_path=r[6],
                model=r[7],
                parent_id=r[8],
                revision=int(r[9]),
            )
            for r in rows
        ]

    def count_sessions(self, *, workspace: str | None = None) -> int:
        """How many sessions (optionally in one workspace)."""
        if workspace is None:
            return self._run(
                lambda c: int(c.execute("SELECT count(*) FROM sessions").fetchone()[0]), "single"
            )
        return self._run(
            lambda c: int(
                c.execute(
                    "SELECT count(*) FROM sessions WHERE workspace_path = ?", (workspace,)
                ).fetchone()[0]
            ),
            "single",
        )

    def history(self, session_id: str) -> list[HistoryEntry]:
        """Every message ever stored for the session, replaced ones included, by sequence."""
        rows = self._run(
            lambda c: c.execute(
                "SELECT seq, active, role, text, body FROM messages "
                "WHERE session_id = ? ORDER BY seq",
                (session_id,),
            ).fetchall(),
            "single",
        )
        messages = self._messages_of([row[2:] for row in rows], session_id)
        return [
            HistoryEntry(int(row[0]), bool(row[1]), message)
            for row, message in zip(rows, messages, strict=True)
        ]

    def count_history(self, session_id: str) -> int:
        """How many messages ``history`` returns, counted in SQL (``HistoryCounter``)."""
        row = self._run(
            lambda c: c.execute(
                "SELECT COUNT(*) FROM messages WHERE session_id = ?", (session_id,)
            ).fetchone(),
            "single",
        )
        return int(row[0])

    def import_audit(self, records: Sequence[AuditRecord]) -> int:
        """Store entries copied from another store after each chain's own (``to_import``),
        one write transaction per chain."""
        added = 0
        for chain, items in by_chain(records).items():

            def insert(c: sqlite3.Connection, chain: str = chain, items: list[AuditRecord] = items
                       ) -> int:
                stored = [r[0] for r in c.execute(_AUDIT_HASHES, (chain,))]
                new = to_import(items, stored)
                c.executemany(
                    _AUDIT_INSERT,
                    [(r.chain, r.seq, r.id, r.session_id, r.at, r.body, r.hash, r.signature)
                     for r in new],
                )
                return len(new)

            added += self._run(insert, "write")
        return added

    def list_audit(self, *, session_id: str | None = None) -> list[AuditRecord]:
        """The stored audit entries (of one session), by chain then sequence (one snapshot)."""

        def read(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            if session_id is None:
                return c.execute(_AUDIT_ALL).fetchall()
            return c.execute(_AUDIT_OF_SESSION, (session_id,)).fetchall()

        return [
            AuditRecord(str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]),
                        str(r[6]), str(r[7]))
            for r in self._run(read, "read")
        ]

    def list_ledger(
        self,
        *,
        session_id: str | None = None,
        workspace: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerRow]:
        """The spend-ledger rows passing the filters, by time then id (one read snapshot)."""
        bounds = (
            format_timestamp(since) if since is not None else "",
            format_timestamp(until) if until is not None else "~",  # after every timestamp
            workspace,
            workspace,
        )

        def read(c: sqlite3.Connection) -> list[tuple[Any, ...]]:
            if session_id is None:
                return c.execute(_LEDGER_SELECT, bounds).fetchall()
            return c.execute(_LEDGER_SELECT_SESSION, (session_id, *bounds)).fetchall()

        names = _LEDGER_COLUMNS.split(", ")
        out: list[LedgerRow] = []
        for raw in self._run(read, "read"):
            data = dict(zip(names, raw, strict=True))
            for flag in ("workspace_charged", "usage_reported"):
                data[flag] = bool(data[flag]) if data[flag] in (0, 1) else data[flag]
            out.append(LedgerRow.from_data(data, f"SQLite store {self.path}: ledger row {raw[0]}"))
        return out

    def kv(self) -> SqliteKvStore:
        """The key-value store in the same database file."""
        return self._kv

    def write_workspace_state(self, change: WorkspaceWrite) -> float | None:
        """Apply a workspace write in one ``BEGIN IMMEDIATE`` transaction; the stored total."""

        def apply(c: sqlite3.Connection) -> float | None:
            def get(namespace: str, key: str) -> bytes | None:
                row = c.execute(
                    "SELECT value FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
                ).fetchone()
                return None if row is None else bytes(row[0])

            def put(namespace: str, key: str, value: bytes) -> None:
                c.execute(
                    "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) "
                    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                    (namespace, key, value),
                )

            def delete(namespace: str, key: str) -> None:
                c.execute("DELETE FROM kv WHERE namespace = ? AND key = ?", (namespace, key))

            return apply_workspace_write(change, get, put, delete, f"SQLite store {self.path}")

        return self._run(apply, "write")

    def schema_version(self) -> int:
        """The applied schema version (``PRAGMA user_version``: the number of migrations)."""
        return self._run(lambda c: int(c.execute("PRAGMA user_version").fetchone()[0]), "single")

    def migrations(self) -> list[tuple[str, str]]:
        """The applied migrations as (name, applied_at), in name order."""
        rows = self._run(
            lambda c: c.execute(
                "SELECT name, applied_at FROM _astrid_migrations ORDER BY name"
            ).fetchall(),
            "single",
        )
        return [(str(n), str(a)) for n, a in rows]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def describe(self, session_id: str) -> str:
        """Where a session lives, for error messages: the database file and the id."""
        return f"{self.path}: session {session_id}"

    def __repr__(self) -> str:
        return f"SqliteBackend({str(self.path)!r})"


class SqliteKvStore:
    """A ``KvStore`` in the ``kv`` table of a ``SqliteBackend``'s database."""

    def __init__(self, backend: SqliteBackend) -> None:
        self._backend = backend

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        row = self._backend._run(
            lambda c: c.execute(
                "SELECT value FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
            ).fetchone(),
            "single",
        )
        return None if row is None else bytes(row[0])

    def set(self, namespace: str, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        data = bytes(value)
        self._backend._run(
            lambda c: c.execute(
                "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                (namespace, key, data),
            ),
            "write",
        )

    def delete(self, namespace: str, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        return self._backend._run(
            lambda c: (
                c.execute(
                    "DELETE FROM kv WHERE namespace = ? AND key = ?", (namespace, key)
                ).rowcount
                > 0
            ),
            "write",
        )

    def exists(self, namespace: str, key: str) -> bool:
        """True if ``key`` is stored in ``namespace``."""
        return self.get(namespace, key) is not None

    def list_keys(self, namespace: str) -> list[str]:
        """Every key of ``namespace``, sorted."""
        validate_name("namespace", namespace)
        rows = self._backend._run(
            lambda c: c.execute("SELECT key FROM kv WHERE namespace = ?", (namespace,)).fetchall(),
            "single",
        )
        return sorted(str(r[0]) for r in rows)

    def clear_namespace(self, namespace: str) -> int:
        """Remove every key of ``namespace``; return how many were removed."""
        validate_name("namespace", namespace)
        return self._backend._run(
            lambda c: int(c.execute("DELETE FROM kv WHERE namespace = ?", (namespace,)).rowcount),
            "write",
        )

    def list_namespaces(self) -> list[str]:
        """Every namespace holding at least one key, sorted."""
        rows = self._backend._run(
            lambda c: c.execute("SELECT DISTINCT namespace FROM kv").fetchall(),
            "single",
        )
        return sorted(str(r[0]) for r in rows)

    def __repr__(self) -> str:
        return f"SqliteKvStore({str(self._backend.path)!r})"


def resolve_path(path: str | None, home: Path) -> Path:
    """The database file: ``<home>/astrid.db`` by default; relative paths under ``home``."""
    return resolve_home_path(path or DEFAULT_FILENAME, home)


def _create(options: SqliteOptions, context: PluginContext) -> SqliteBackend:
    return SqliteBackend(
        resolve_path(options.path, context.home),
        busy_timeout_ms=options.busy_timeout_ms,
        synchronous=options.synchronous,
        mmap_size_mb=options.mmap_size_mb,
        wal_autocheckpoint=options.wal_autocheckpoint,
        read_only=context.read_only,
    )


@hookimpl
def register_storage_backends(register: Any) -> None:
    """Register the ``sqlite`` backend."""
    register(
        "sqlite",
        lambda options, context: _create(options, context),
        SqliteOptions,
        "One SQLite file (WAL) at <home>/astrid.db: append-only messages, fast listing.",
    )


__all__ = [
    "MIGRATIONS",
    "SchemaTransactions",
    "SqliteBackend",
    "SqliteKvStore",
    "SqliteOptions",
    "ensure_schema",
    "not_an_astrid_database",
    "refuse_foreign",
    "resolve_path",
]
