"""The ``postgres`` storage backend: sessions, messages and key-value data in one schema.

Layout (the same as the ``sqlite`` backend's, in the configured PostgreSQL schema):

* ``sessions``: one row per session: the document minus its messages (``state``, JSON text),
  the summary columns a listing needs, the revision and the next message sequence number.
* ``messages``: append-only, one row per message ever stored (``active`` false once replaced),
  keyed by ``(session_id, seq)``. The active messages are the session's last ``message_count``
  sequence numbers, so full and tail loads are range scans of the primary key.
* ``kv``: the scoped key-value store (deferred queues, workspace state).
* ``cap_tokens``, ``cap_revoked``, ``cap_used``: the ``postgres`` capability store.

Concurrency: creating, saving and appending are one statement each (one round trip). A create
is ``INSERT ... ON CONFLICT DO NOTHING``; a save is a compare-and-set ``UPDATE ... WHERE revision
= expected``, which PostgreSQL re-checks on the newest row version after waiting for another
writer; an append reserves its sequence numbers with ``UPDATE ... SET next_seq = next_seq + n
... RETURNING``; each inserts its messages in the same statement. A replace locks the row with
``SELECT ... FOR UPDATE`` first. So any number of processes on any number of hosts can save and
append to the same session: a stale save fails with ``ConcurrencyError`` and concurrent appends
never collide or get lost. Reads are single statements (one snapshot each).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, LiteralString

import pydantic_core
from astrid.errors import ConcurrencyError, SerializationError, SessionNotFound
from astrid.security.kv import validate_name
from astrid.store import HistoryEntry, SessionRecord, SessionSummary, SessionWrite
from astrid.timeutil import to_utc, utcnow
from psycopg import sql

from .connection import Conn, Database
from .schema import q

# -- JSON ---------------------------------------------------------------------------------------

_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_ASCII_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


def _dumps_fast(value: Any) -> str:
    return pydantic_core.to_json(value, inf_nan_mode="constants").decode("utf-8")


def _pick_encoder() -> Callable[[Any], str]:
    """Compact UTF-8 JSON: pydantic-core's encoder when it writes what ``json`` writes."""
    probe = {"x": [float("nan"), "\u00e9\0"]}
    try:
        if _dumps_fast(probe) == _ENCODER.encode(probe):
            return _dumps_fast
    except (TypeError, ValueError):
        pass
    return _ENCODER.encode


_dumps = _pick_encoder()


def encode_json(value: Any, what: str) -> str:
    """Compact JSON text for a ``text`` column (lone surrogates are written as escapes)."""
    try:
        return _dumps(value)
    except (TypeError, ValueError) as first:
        try:
            # Strings with lone surrogates cannot be UTF-8: ASCII JSON escapes them losslessly.
            return _ASCII_ENCODER.encode(value)
        except (TypeError, ValueError):
            raise SerializationError(f"{what} cannot be encoded as JSON: {first}") from first


# -- summary text columns ------------------------------------------------------------------------

_TITLE, _MODEL, _WORKSPACE, _PARENT = 1, 2, 4, 8
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _escape(value: str | None, bit: int) -> tuple[str | None, int]:
    """A summary string fit for ``text`` (no NUL: backslash-escaped and flagged by ``bit``)."""
    if value is None or "\0" not in value:
        return value, 0
    return value.replace("\\", "\\\\").replace("\0", "\\0"), bit


def _unescape(value: str | None, flags: int, bit: int) -> str | None:
    """The original of a value ``_escape`` flagged with ``bit``."""
    if value is None or not flags & bit:
        return value
    return _UNESCAPE.sub(lambda m: "\0" if m.group(1) == "0" else m.group(1), value)


def _summary_columns(
    summary: SessionSummary,
) -> tuple[str | None, str | None, str | None, str | None, int]:
    """Title, model, workspace and parent fit for ``text`` columns, and their escape flags."""
    title, a = _escape(summary.title, _TITLE)
    model, b = _escape(summary.model, _MODEL)
    workspace, c = _escape(summary.workspace_path, _WORKSPACE)
    parent, d = _escape(summary.parent_id, _PARENT)
    return title, model, workspace, parent, a | b | c | d


# -- the backend ---------------------------------------------------------------------------------


class PostgresBackend:
    """Sessions in a PostgreSQL schema, through a psycopg connection pool (thread safe)."""

    name = "postgres"

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
        self._kv = PostgresKvStore(self)

    @property
    def where(self) -> str:
        """The server and schema, as errors name them (never the password)."""
        return self._db.where

    def _q(self, text: LiteralString) -> sql.Composed:
        """``text`` with ``{s}`` bound to this backend's schema (composed once)."""
        found = self._sql.get(text)
        if found is None:
            found = self._sql[text] = q(text, self.schema)
        return found

    def _run(self, fn: Callable[[Conn], Any], *, write: bool) -> Any:
        return self._db.run(fn, write=write)

    def describe(self, session_id: str) -> str:
        """Where a session lives, for error messages."""
        return f"{self.where} session {session_id}"

    def _encode(self, value: Any, session_id: str, what: str) -> str:
        return encode_json(value, f"session {session_id}: the {what}")

    def _decode(self, text: Any, session_id: str, what: str) -> Any:
        try:
            return json.loads(text)
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"{self.where}: session {session_id}: stored {what} is not valid JSON: {exc}"
            ) from None

    # -- sessions -----------------------------------------------------------------------------

    def load(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        """The session (only its last ``tail`` active messages if given), or None."""
        if tail is not None and tail < 0:
            raise ValueError("tail must be >= 0")
        query = self._q(
            "SELECT s.state, s.revision, s.message_count, s.updated_at, ARRAY("
            " SELECT m.body FROM {s}.messages m WHERE m.session_id = s.id"
            " AND m.seq >= s.next_seq - LEAST(s.message_count, COALESCE(%s::bigint,"
            " s.message_count)) AND m.active ORDER BY m.seq) "
            "FROM {s}.sessions s WHERE s.id = %s"
        )
        row = self._run(lambda c: c.execute(query, (tail, session_id)).fetchone(), write=False)
        if row is None:
            return None
        state_text, revision, count, updated_at, bodies = row
        state = self._decode(state_text, session_id, "state")
        if not isinstance(state, dict):
            raise SerializationError(
                f"{self.where}: session {session_id}: stored state is a JSON "
                f"{type(state).__name__}, not an object"
            )
        messages = [self._decode(b, session_id, "message") for b in bodies or ()]
        return SessionRecord(
            state=state,
            messages=messages,
            message_offset=int(count) - len(messages),
            message_count=int(count),
            revision=int(revision),
            updated_at=to_utc(updated_at),
        )

    def _insert(
        self, c: Conn, sid: str, first_seq: int, bodies: list[str], *, active: bool = True
    ) -> None:
        if bodies:
            c.execute(
                self._q(
                    "INSERT INTO {s}.messages (session_id, seq, active, body) "
                    "SELECT %s, %s + t.n - 1, %s, t.body "
                    "FROM unnest(%s::text[]) WITH ORDINALITY AS t(body, n)"
                ),
                (sid, first_seq, active, bodies),
            )

    def _stale(self, c: Conn, sid: str, expected: int | None, base: int) -> ConcurrencyError:
        """Why a compare-and-set found nothing to update: the error naming what moved."""
        row = c.execute(
            self._q("SELECT revision, message_count FROM {s}.sessions WHERE id = %s"), (sid,)
        ).fetchone()
        current = int(row[0]) if row is not None else None
        if row is not None and current == expected:
            return ConcurrencyError(
                f"session {sid}: stale save (based on {base} messages, {int(row[1])} stored)"
            )
        return ConcurrencyError(
            f"session {sid}: stale save (based on revision {expected}, stored revision is "
            f"{current})"
        )

    def write(self, change: SessionWrite) -> int:
        """Apply one save atomically; ``ConcurrencyError`` on a stale revision.

        Creating and appending are one statement each (one round trip): a conditional
        ``INSERT ... ON CONFLICT DO NOTHING`` or ``UPDATE ... WHERE revision = expected``, with
        the messages inserted by the same statement. A replace is a transaction that locks the
        row with ``SELECT ... FOR UPDATE`` first. ``change.archived`` (a create or a replace
        only) is inserted inactive, before the active messages, by the same statement or
        transaction.
        """
        change.check_archived()
        sid = change.session_id
        summary = change.summary
        title, model, workspace, parent, flags = _summary_columns(summary)
        params: dict[str, Any] = {
            "sid": sid,
            "state": self._encode(change.state, sid, "state"),
            "bodies": [self._encode(m, sid, "message") for m in change.messages],
            "n": len(change.messages),
            "archived": [self._encode(m, sid, "message") for m in change.archived],
            "na": len(change.archived),
            "title": title,
            "created": summary.created_at,
            "updated": summary.updated_at,
            "tokens": int(summary.token_count),
            "workspace": workspace,
            "model": model,
            "parent": parent,
            "flags": flags,
            "expected": change.expected_revision,
            "base": change.base_count,
        }
        if change.expected_revision is None:
            fn = self._create
        elif change.replace:
            fn = self._replace
        else:
            fn = self._save
        result: int = self._run(lambda c: fn(c, params), write=change.replace)
        return result

    def _create(self, c: Conn, p: dict[str, Any]) -> int:
        if p["archived"]:
            # The archived messages take the first seqs (inactive), the active ones the last.
            p = {**p, "bodies": p["archived"] + p["bodies"]}
        row = c.execute(
            self._q(
                "WITH created AS ("
                " INSERT INTO {s}.sessions (id, revision, state, title, created_at, updated_at,"
                " message_count, token_count, workspace_path, model, parent_id, next_seq,"
                " nul_escaped) VALUES (%(sid)s, 1, %(state)s, %(title)s, %(created)s,"
                " %(updated)s, %(n)s, %(tokens)s, %(workspace)s, %(model)s, %(parent)s,"
                " %(na)s::bigint + %(n)s::bigint, %(flags)s) ON CONFLICT (id) DO NOTHING"
                " RETURNING id"
                "), stored AS ("
                " INSERT INTO {s}.messages (session_id, seq, active, body)"
                " SELECT created.id, t.n - 1, t.n > %(na)s::bigint, t.body FROM created,"
                " unnest(%(bodies)s::text[]) WITH ORDINALITY AS t(body, n)"
                ") SELECT count(*) FROM created"
            ),
            p,
        ).fetchone()
        if row is None or int(row[0]) != 1:
            raise self._stale(c, p["sid"], None, 0)
        return 1

    def _save(self, c: Conn, p: dict[str, Any]) -> int:
        row = c.execute(
            self._q(
                "WITH saved AS ("
                " UPDATE {s}.sessions SET revision = revision + 1, state = %(state)s,"
                " title = %(title)s, created_at = %(created)s, updated_at = %(updated)s,"
                " message_count = message_count + %(n)s::bigint, token_count = %(tokens)s,"
                " workspace_path = %(workspace)s, model = %(model)s, parent_id = %(parent)s,"
                " next_seq = next_seq + %(n)s::bigint, nul_escaped = %(flags)s"
                " WHERE id = %(sid)s AND revision = %(expected)s AND message_count = %(base)s"
                " RETURNING id, revision, next_seq - %(n)s::bigint AS first_seq"
                "), stored AS ("
                " INSERT INTO {s}.messages (session_id, seq, active, body)"
                " SELECT saved.id, saved.first_seq + t.n - 1, true, t.body FROM saved,"
                " unnest(%(bodies)s::text[]) WITH ORDINALITY AS t(body, n)"
                ") SELECT revision FROM saved"
            ),
            p,
        ).fetchone()
        if row is None:
            raise self._stale(c, p["sid"], p["expected"], p["base"])
        return int(row[0])

    def _replace(self, c: Conn, p: dict[str, Any]) -> int:
        sid = p["sid"]
        row = c.execute(
            self._q(
                "SELECT revision, message_count, next_seq FROM {s}.sessions "
                "WHERE id = %s FOR UPDATE"
            ),
            (sid,),
        ).fetchone()
        if row is None or int(row[0]) != p["expected"]:
            raise self._stale(c, sid, p["expected"], p["base"])
        count, next_seq = int(row[1]), int(row[2])
        c.execute(
            self._q(
                "UPDATE {s}.messages SET active = false "
                "WHERE session_id = %s AND seq >= %s AND active"
            ),
            (sid, next_seq - count),
        )
        # Archived messages first (inactive), so the active ones stay the last seqs.
        self._insert(c, sid, next_seq, p["archived"], active=False)
        next_seq += p["na"]
        self._insert(c, sid, next_seq, p["bodies"])
        revision = int(row[0]) + 1
        c.execute(
            self._q(
                "UPDATE {s}.sessions SET revision = %(revision)s, state = %(state)s,"
                " title = %(title)s, created_at = %(created)s, updated_at = %(updated)s,"
                " message_count = %(n)s, token_count = %(tokens)s,"
                " workspace_path = %(workspace)s, model = %(model)s, parent_id = %(parent)s,"
                " next_seq = %(next)s, nul_escaped = %(flags)s WHERE id = %(sid)s"
            ),
            {**p, "revision": revision, "next": next_seq + p["n"]},
        )
        return revision

    def append(
        self, session_id: str, messages: Sequence[Any], summary: SessionSummary | None = None
    ) -> tuple[int, int]:
        """Append regardless of revision (one statement); ``SessionNotFound`` if absent.

        ``next_seq = next_seq + n ... RETURNING`` reserves the sequence numbers under the row
        lock, so appends from any number of processes never collide.
        """
        params: dict[str, Any] = {
            "sid": session_id,
            "bodies": [self._encode(m, session_id, "message") for m in messages],
            "n": len(messages),
            "updated": utcnow(),
        }
        if summary is None:
            columns: LiteralString = ""
        else:
            title, model, workspace, parent, flags = _summary_columns(summary)
            params.update(
                title=title,
                created=summary.created_at,
                tokens=int(summary.token_count),
                workspace=workspace,
                model=model,
                parent=parent,
                flags=flags,
            )
            columns = (
                ", title = %(title)s, created_at = %(created)s, token_count = %(tokens)s,"
                " workspace_path = %(workspace)s, model = %(model)s, parent_id = %(parent)s,"
                " nul_escaped = %(flags)s"
            )
        query = self._q(
            "WITH appended AS ("
            " UPDATE {s}.sessions SET revision = revision + 1, updated_at = %(updated)s,"
            " message_count = message_count + %(n)s::bigint,"
            " next_seq = next_seq + %(n)s::bigint" + columns + " WHERE id = %(sid)s"
            " RETURNING id, revision, message_count, next_seq - %(n)s::bigint AS first_seq"
            "), stored AS ("
            " INSERT INTO {s}.messages (session_id, seq, active, body)"
            " SELECT appended.id, appended.first_seq + t.n - 1, true, t.body FROM appended,"
            " unnest(%(bodies)s::text[]) WITH ORDINALITY AS t(body, n)"
            ") SELECT revision, message_count FROM appended"
        )
        row = self._run(lambda c: c.execute(query, params).fetchone(), write=False)
        if row is None:
            raise SessionNotFound(
                f"session {session_id} not found in the PostgreSQL store {self.where}"
            )
        return int(row[0]), int(row[1])

    def delete(self, session_id: str) -> bool:
        """Remove a session row and its messages; False if absent."""

        def apply(c: Conn) -> bool:
            # The session row first: it waits for (and then sees) appends in flight.
            gone = c.execute(
                self._q("DELETE FROM {s}.sessions WHERE id = %s"), (session_id,)
            ).rowcount
            c.execute(self._q("DELETE FROM {s}.messages WHERE session_id = %s"), (session_id,))
            return gone > 0

        result: bool = self._run(apply, write=True)
        return result

    def list_sessions(
        self, *, workspace: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[SessionSummary]:
        """A page of summaries, newest activity first (ties by id), from the columns only."""
        if workspace is None:
            query = self._q(
                "SELECT id, title, created_at, updated_at, message_count, token_count, "
                "workspace_path, model, parent_id, revision, nul_escaped FROM {s}.sessions "
                "ORDER BY updated_at DESC, id LIMIT %s OFFSET %s"
            )
            params: tuple[Any, ...] = (limit, offset)
        else:
            value, bit = _escape(workspace, _WORKSPACE)
            query = self._q(
                "SELECT id, title, created_at, updated_at, message_count, token_count, "
                "workspace_path, model, parent_id, revision, nul_escaped FROM {s}.sessions "
                "WHERE workspace_path = %s AND (nul_escaped & 4) = %s "
                "ORDER BY updated_at DESC, id LIMIT %s OFFSET %s"
            )
            params = (value, bit, limit, offset)
        rows = self._run(lambda c: c.execute(query, params).fetchall(), write=False)
        out: list[SessionSummary] = []
        for r in rows:
            flags = int(r[10])
            out.append(
                SessionSummary(
                    id=str(r[0]),
                    title=_unescape(r[1], flags, _TITLE),
                    created_at=to_utc(r[2]),
                    updated_at=to_utc(r[3]),
                    message_count=int(r[4]),
                    token_count=int(r[5]),
                    workspace_path=_unescape(r[6], flags, _WORKSPACE),
                    model=_unescape(r[7], flags, _MODEL),
                    parent_id=_unescape(r[8], flags, _PARENT),
                    revision=int(r[9]),
                )
            )
        return out

    def count_sessions(self, *, workspace: str | None = None) -> int:
        """How many sessions (optionally in one workspace)."""
        if workspace is None:
            query = self._q("SELECT count(*) FROM {s}.sessions")
            params: tuple[Any, ...] = ()
        else:
            value, bit = _escape(workspace, _WORKSPACE)
            query = self._q(
                "SELECT count(*) FROM {s}.sessions "
                "WHERE workspace_path = %s AND (nul_escaped & 4) = %s"
            )
            params = (value, bit)
        row = self._run(lambda c: c.execute(query, params).fetchone(), write=False)
        return int(row[0])

    def history(self, session_id: str) -> list[HistoryEntry]:
        """Every message ever stored for the session, replaced ones included, by sequence."""
        rows = self._run(
            lambda c: c.execute(
                self._q(
                    "SELECT seq, active, body FROM {s}.messages WHERE session_id = %s ORDER BY seq"
                ),
                (session_id,),
            ).fetchall(),
            write=False,
        )
        return [
            HistoryEntry(int(seq), bool(active), self._decode(body, session_id, "message"))
            for seq, active, body in rows
        ]

    def kv(self) -> PostgresKvStore:
        """The key-value store in the same schema."""
        return self._kv

    def schema_version(self) -> int:
        """The applied schema version: the number of migrations recorded."""
        row = self._run(
            lambda c: c.execute(self._q("SELECT count(*) FROM {s}._astrid_migrations")).fetchone(),
            write=False,
        )
        return int(row[0])

    def migrations(self) -> list[tuple[str, str]]:
        """The applied migrations as (name, applied_at in RFC 3339), in name order."""
        rows = self._run(
            lambda c: c.execute(
                self._q("SELECT name, applied_at FROM {s}._astrid_migrations ORDER BY name")
            ).fetchall(),
            write=False,
        )
        return [(str(n), to_utc(a).isoformat()) for n, a in rows]

    def close(self) -> None:
        """Close the connection pool (idempotent)."""
        self._db.close()

    def __repr__(self) -> str:
        return f"PostgresBackend({self.where!r})"


class PostgresKvStore:
    """A ``KvStore`` in the ``kv`` table of a ``PostgresBackend``'s schema."""

    def __init__(self, backend: PostgresBackend) -> None:
        self._backend = backend

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        b = self._backend
        row = b._run(
            lambda c: c.execute(
                b._q("SELECT value FROM {s}.kv WHERE namespace = %s AND key = %s"),
                (namespace, key),
            ).fetchone(),
            write=False,
        )
        return None if row is None else bytes(row[0])

    def set(self, namespace: str, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        data = bytes(value)
        b = self._backend
        b._run(
            lambda c: c.execute(
                b._q(
                    "INSERT INTO {s}.kv (namespace, key, value) VALUES (%s, %s, %s) "
                    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value"
                ),
                (namespace, key, data),
            ),
            write=False,
        )

    def delete(self, namespace: str, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        b = self._backend
        count = b._run(
            lambda c: (
                c.execute(
                    b._q("DELETE FROM {s}.kv WHERE namespace = %s AND key = %s"), (namespace, key)
                ).rowcount
            ),
            write=False,
        )
        return int(count) > 0

    def exists(self, namespace: str, key: str) -> bool:
        """True if ``key`` is stored in ``namespace``."""
        validate_name("namespace", namespace)
        validate_name("key", key)
        b = self._backend
        row = b._run(
            lambda c: c.execute(
                b._q("SELECT 1 FROM {s}.kv WHERE namespace = %s AND key = %s"), (namespace, key)
            ).fetchone(),
            write=False,
        )
        return row is not None

    def list_keys(self, namespace: str) -> list[str]:
        """Every key of ``namespace``, sorted (by code point, whatever the collation)."""
        validate_name("namespace", namespace)
        b = self._backend
        rows = b._run(
            lambda c: c.execute(
                b._q("SELECT key FROM {s}.kv WHERE namespace = %s"), (namespace,)
            ).fetchall(),
            write=False,
        )
        return sorted(str(r[0]) for r in rows)

    def clear_namespace(self, namespace: str) -> int:
        """Remove every key of ``namespace``; return how many were removed."""
        validate_name("namespace", namespace)
        b = self._backend
        count = b._run(
            lambda c: (
                c.execute(b._q("DELETE FROM {s}.kv WHERE namespace = %s"), (namespace,)).rowcount
            ),
            write=False,
        )
        return int(count)

    def list_namespaces(self) -> list[str]:
        """Every namespace holding at least one key, sorted (by code point, like ``list_keys``)."""
        b = self._backend
        rows = b._run(
            lambda c: c.execute(b._q("SELECT DISTINCT namespace FROM {s}.kv")).fetchall(),
            write=False,
        )
        return sorted(str(r[0]) for r in rows)

    def __repr__(self) -> str:
        return f"PostgresKvStore({self._backend.where!r})"


__all__ = ["PostgresBackend", "PostgresKvStore", "encode_json"]
