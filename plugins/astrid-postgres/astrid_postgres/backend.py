"""The ``postgres`` storage backend: sessions, messages and key-value data in one schema.

Layout (the same as the ``sqlite`` backend's, in the configured PostgreSQL schema):

* ``sessions``: one row per session: the document minus its messages (``state``, JSON text),
  the summary columns a listing needs, the revision and the next message sequence number.
* ``messages``: append-only, one row per message ever stored (``active`` false once replaced),
  keyed by ``(session_id, seq)``. The active messages are the session's last ``message_count``
  sequence numbers, so full and tail loads are range scans of the primary key.
* ``session_items``: a session's allowances and remembered escape paths as keyed rows
  ``(session_id, kind, key, ord, value)`` once it has many (``KEYED_STATE_MIN``; the session row
  is then ``keyed`` and its ``state`` lacks them), so a save writes only the changed ones (the
  store sends a ``StateDelta``). Allowances load in ``ord`` order (new ones numbered from
  ``next_item``), paths sorted. Fewer, or ones that cannot be keyed exactly, stay in ``state``.
* ``kv``: the scoped key-value store (deferred queues, workspace state).
* ``cap_tokens``, ``cap_revoked``, ``cap_used``: the ``postgres`` capability store.

Concurrency: creating, saving and appending are one statement each (one round trip). A create
is ``INSERT ... ON CONFLICT DO NOTHING``; a save is a compare-and-set ``UPDATE ... WHERE revision
= expected``, which PostgreSQL re-checks on the newest row version after waiting for another
writer; an append reserves its sequence numbers with ``UPDATE ... SET next_seq = next_seq + n
... RETURNING``; each inserts its messages (and a delta save its changed keyed rows) in the
same statement. A replace, and a whole write of a keyed or large state, lock the row with
``SELECT ... FOR UPDATE`` first. So any number of processes on any number of hosts can save and
append to the same session: a stale save fails with ``ConcurrencyError`` and changes nothing, and
concurrent appends never collide or get lost. Reads are single statements (one snapshot each).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, LiteralString, TypeGuard

import pydantic_core
from astrid.errors import ConcurrencyError, SerializationError, SessionNotFound
from astrid.ledger import LedgerRow, usd
from astrid.security.audit import (
    AuditRecord,
    PendingAudit,
    by_chain,
    seal,
    to_import,
)
from astrid.security.kv import validate_name
from astrid.store import (
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
from astrid.timeutil import to_utc, utcnow
from psycopg import sql

from .connection import Conn, Database
from .schema import WORKSPACE_LOCK_CLASS, q

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


_LEDGER_MARK = "\\nul:"
"""Starts a ledger text column that was escaped: it held a NUL (or began with this mark)."""


def _ledger_text(value: str | None) -> str | None:
    """A ledger string fit for ``text``: one with a NUL (or starting with the mark) is
    backslash-escaped behind ``_LEDGER_MARK``; the ledger table has no flags column."""
    if value is None or ("\0" not in value and not value.startswith(_LEDGER_MARK)):
        return value
    return _LEDGER_MARK + value.replace("\\", "\\\\").replace("\0", "\\0")


def _ledger_str(value: str | None) -> str | None:
    """The original of a value ``_ledger_text`` stored."""
    if value is None or not value.startswith(_LEDGER_MARK):
        return value
    return _unescape(value[len(_LEDGER_MARK) :], 1, 1)


def _summary_columns(
    summary: SessionSummary,
) -> tuple[str | None, str | None, str | None, str | None, int]:
    """Title, model, workspace and parent fit for ``text`` columns, and their escape flags."""
    title, a = _escape(summary.title, _TITLE)
    model, b = _escape(summary.model, _MODEL)
    workspace, c = _escape(summary.workspace_path, _WORKSPACE)
    parent, d = _escape(summary.parent_id, _PARENT)
    return title, model, workspace, parent, a | b | c | d


# -- keyed state ---------------------------------------------------------------------------------

_NO_ITEMS: dict[str, Any] = {"ikinds": [], "ikeys": [], "ivalues": [], "nitems": 0}


def storable_key(key: object) -> TypeGuard[str]:
    """True for a string a ``text`` column holds exactly: no NUL, no lone surrogate."""
    if type(key) is not str or "\0" in key:
        return False
    if key.isascii():
        return True
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def split_state(
    state: dict[str, Any], *, force: bool
) -> tuple[dict[str, Any], list[KeyedItem]] | None:
    """``split_keyed_state`` (the sqlite backend's rules), refusing keys ``text`` cannot hold."""
    return split_keyed_state(state, force=force, key_ok=storable_key)


# -- the backend ---------------------------------------------------------------------------------


_LEDGER_COLUMNS: LiteralString = (
    "id, session_id, parent_session_id, workspace, workspace_charged, model, provider, kind, "
    "input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens, "
    "usage_reported, reserved_usd, cost_usd, at"
)


def _ledger_params(row: LedgerRow) -> tuple[Any, ...]:
    return (
        row.id,
        row.session_id,
        row.parent_session_id,
        _ledger_text(row.workspace),
        row.workspace_charged,
        _ledger_text(row.model),
        _ledger_text(row.provider),
        _ledger_text(row.kind),
        row.input_tokens,
        row.output_tokens,
        row.cache_read_tokens,
        row.cache_write_tokens,
        row.reasoning_tokens,
        row.usage_reported,
        row.reserved_usd,
        row.cost_usd,
        row.at,
    )


def _ledger_row(raw: Sequence[Any]) -> LedgerRow:
    return LedgerRow(
        id=str(raw[0]),
        session_id=str(raw[1]),
        parent_session_id=str(raw[2]) if raw[2] is not None else None,
        workspace=_ledger_str(raw[3]),
        workspace_charged=bool(raw[4]),
        model=str(_ledger_str(raw[5])),
        provider=str(_ledger_str(raw[6])),
        kind=str(_ledger_str(raw[7])),
        input_tokens=int(raw[8]),
        output_tokens=int(raw[9]),
        cache_read_tokens=int(raw[10]),
        cache_write_tokens=int(raw[11]),
        reasoning_tokens=int(raw[12]),
        usage_reported=bool(raw[13]),
        reserved_usd=usd(raw[14]),
        cost_usd=usd(raw[15]),
        at=to_utc(raw[16]),
    )


_AUDIT_INSERT = (
    "INSERT INTO {s}.audit (chain, seq, id, session_id, at, body, hash, signature) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
)
"""One audit entry (a sealed one, or one copied from another store)."""


class PostgresBackend:
    """Sessions in a PostgreSQL schema, through a psycopg connection pool (thread safe)."""

    name = "postgres"
    accepts_state_delta = True
    """Saves of sessions with many allowances / escape paths send only their changes."""

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
        # One statement (one snapshot): the row, its active messages and its keyed rows.
        query = self._q(
            "SELECT s.state, s.revision, s.message_count, s.updated_at, ARRAY("
            " SELECT m.body FROM {s}.messages m WHERE m.session_id = s.id"
            " AND m.seq >= s.next_seq - LEAST(s.message_count, COALESCE(%s::bigint,"
            " s.message_count)) AND m.active ORDER BY m.seq), "
            "CASE WHEN s.keyed THEN ARRAY("
            " SELECT ARRAY[i.kind::text, i.key, i.value] FROM {s}.session_items i"
            " WHERE i.session_id = s.id ORDER BY i.kind, i.ord, i.key) END "
            "FROM {s}.sessions s WHERE s.id = %s"
        )
        # Binary results: arrays of JSON text arrive without text-array unescaping.
        row = self._run(
            lambda c: c.execute(query, (tail, session_id), binary=True).fetchone(), write=False
        )
        if row is None:
            return None
        state_text, revision, count, updated_at, bodies, items = row
        state = self._decode(state_text, session_id, "state")
        if not isinstance(state, dict):
            raise SerializationError(
                f"{self.where}: session {session_id}: stored state is a JSON "
                f"{type(state).__name__}, not an object"
            )
        if items is not None:
            self._join_items(state, items, session_id)
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

    def _join_items(self, state: dict[str, Any], items: list[Any], session_id: str) -> None:
        """Put a keyed session's allowances and remembered escape paths back into its state."""
        allowances: list[Any] = []
        paths: list[str] = []
        allowance, path = str(ITEM_ALLOWANCE), str(ITEM_ESCAPE_PATH)
        for kind, key, value in items:
            if kind == allowance:
                allowances.append(self._decode(value, session_id, f"allowance {key}"))
            elif kind == path:
                paths.append(key)
            else:
                raise SerializationError(
                    f"{self.where}: session {session_id}: stored state item {key!r} has an "
                    f"unknown kind {kind!r}"
                )
        join_keyed_state(state, allowances, paths, f"{self.where}: session {session_id}")

    def _item_params(self, items: list[KeyedItem], sid: str) -> dict[str, Any]:
        """The parameters inserting ``items`` as rows numbered from 0 (``ikinds`` ...)."""
        kinds: list[int] = []
        keys: list[str] = []
        values: list[str | None] = []
        for kind, key, value in items:
            kinds.append(kind)
            keys.append(key)
            values.append(None if value is None else self._encode(value, sid, f"allowance {key}"))
        return {"ikinds": kinds, "ikeys": keys, "ivalues": values, "nitems": len(items)}

    def _delta_params(self, delta: StateDelta, sid: str) -> dict[str, Any] | None:
        """The parameters of a delta's deleted (``d*``) and upserted (``u*``) rows.

        None when a key cannot be stored exactly (the save then writes the whole state).
        """
        dkinds: list[int] = []
        dkeys: list[str] = []
        ukinds: list[int] = []
        ukeys: list[str] = []
        uvalues: list[str | None] = []
        for key, data in delta.allowances.items():
            if not storable_key(key):
                return None
            if data is None:
                dkinds.append(ITEM_ALLOWANCE)
                dkeys.append(key)
            else:
                ukinds.append(ITEM_ALLOWANCE)
                ukeys.append(key)
                uvalues.append(self._encode(data, sid, f"allowance {key}"))
        for path, present in delta.remembered_paths.items():
            if not storable_key(path):
                return None
            if present:
                ukinds.append(ITEM_ESCAPE_PATH)
                ukeys.append(path)
                uvalues.append(None)
            else:
                dkinds.append(ITEM_ESCAPE_PATH)
                dkeys.append(path)
        return {
            "dkinds": dkinds,
            "dkeys": dkeys,
            "ukinds": ukinds,
            "ukeys": ukeys,
            "uvalues": uvalues,
            "nnew": len(ukeys),
        }

    def write(self, change: SessionWrite) -> int:
        """Apply one save atomically; ``ConcurrencyError`` on a stale revision.

        Creating and appending are one statement each (one round trip): a conditional
        ``INSERT ... ON CONFLICT DO NOTHING`` or ``UPDATE ... WHERE revision = expected``, with
        the messages (and a delta's keyed rows) written by the same statement. A replace, a
        whole write of a keyed or large state, and a save the one statement did not apply (stale,
        or the row not keyed as the save expects) are a transaction that locks the row with
        ``SELECT ... FOR UPDATE`` first (and raises ``ConcurrencyError`` when stale).
        ``change.archived`` (a create or a replace only) is inserted inactive, before the active
        messages, by the same statement or transaction.

        Many session allowances and escape paths are kept as keyed rows (``session_items``): a
        whole state is split on the way in (``split_state``), and a ``change.delta`` updates
        only changed rows; a delta for an inline row writes ``delta.full_state()`` keyed.
        """
        change.check_archived()
        change.check_storable()
        sid = change.session_id
        summary = change.summary
        delta = change.delta
        state = change.state
        if delta is not None and change.expected_revision is None:
            state, delta = delta.full_state(), None  # nothing stored to apply a delta to
        split = None if delta is not None else split_state(state, force=False)
        title, model, workspace, parent, flags = _summary_columns(summary)
        params: dict[str, Any] = {
            "sid": sid,
            "state": self._encode(split[0] if split is not None else state, sid, "state"),
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
        items = self._item_params(split[1], sid) if split is not None else None
        changes = self._delta_params(delta, sid) if delta is not None else None
        ledger = [_ledger_params(row) for row in change.ledger]
        audit = list(change.audit)
        if change.expected_revision is None:
            created = {**params, **(items or _NO_ITEMS), "keyed": items is not None}
            result: int = self._run(
                self._with_ledger(lambda c: self._create(c, created), ledger, audit),
                write=bool(ledger or audit),
            )
            return result
        if not change.replace:
            # One statement when the stored row is what the save expects (inline for a whole
            # write, keyed for a delta); otherwise (or stale) the general transaction decides.
            done: int | None = None
            if delta is None and split is None:
                done = self._run(
                    self._with_ledger(lambda c: self._save(c, params), ledger, audit),
                    write=bool(ledger or audit),
                )
            elif changes is not None:
                saved = {**params, **changes}
                done = self._run(
                    self._with_ledger(lambda c: self._save_delta(c, saved), ledger, audit),
                    write=bool(ledger or audit),
                )
            if done is not None:
                return done
        result = self._run(
            self._with_ledger(
                lambda c: self._general(
                    c, params, replace=change.replace, delta=delta, changes=changes, items=items
                ),
                ledger,
                audit,
            ),
            write=True,
        )
        return result

    def _with_ledger(
        self,
        fn: Callable[[Conn], int | None],
        rows: list[tuple[Any, ...]],
        audit: Sequence[PendingAudit] = (),
    ) -> Callable[[Conn], int | None]:
        """``fn``, then (if it saved) the save's ledger rows and sealed audit entries, for one
        transaction: a save with rows runs in a transaction even where it is otherwise one
        statement."""
        if not rows and not audit:
            return fn

        def both(c: Conn) -> int | None:
            revision = fn(c)
            if revision is not None and audit:
                self._insert_audit(c, audit)
            if revision is not None and rows:
                c.cursor().executemany(
                    self._q(
                        "INSERT INTO {s}.ledger (" + _LEDGER_COLUMNS + ") VALUES (%s, %s, %s,"
                        " %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (id) DO NOTHING"
                    ),
                    rows,
                )
            return revision

        return both

    def _insert_audit(self, c: Conn, pending: Sequence[PendingAudit]) -> None:
        """Seal and store audit entries after each chain's head, read under a transaction-scoped
        advisory lock on the chain (writers of one workspace queue; others never wait)."""
        for chain, items in by_chain(pending).items():
            c.execute(
                self._q("SELECT pg_advisory_xact_lock(hashtextextended(%s, 21))"), (chain,)
            )
            row = c.execute(
                self._q(
                    "SELECT seq, hash FROM {s}.audit WHERE chain = %s ORDER BY seq DESC LIMIT 1"
                ),
                (chain,),
            ).fetchone()
            head = (int(row[0]), str(row[1])) if row is not None else None
            c.cursor().executemany(
                self._q(_AUDIT_INSERT),
                [
                    (r.chain, r.seq, r.id, r.session_id, r.at, r.body, r.hash, r.signature)
                    for r in seal(items, head)
                ],
            )

    def import_audit(self, records: Sequence[AuditRecord]) -> int:
        """Store entries copied from another store after each chain's own (``to_import``), one
        transaction per chain under the chain's advisory lock."""
        added = 0
        for chain, items in by_chain(records).items():

            def insert(c: Conn, chain: str = chain, items: list[AuditRecord] = items) -> int:
                c.execute(
                    self._q("SELECT pg_advisory_xact_lock(hashtextextended(%s, 21))"), (chain,)
                )
                stored = [
                    str(r[0])
                    for r in c.execute(
                        self._q("SELECT hash FROM {s}.audit WHERE chain = %s ORDER BY seq"),
                        (chain,),
                    ).fetchall()
                ]
                new = to_import(items, stored)
                if new:
                    c.cursor().executemany(
                        self._q(_AUDIT_INSERT),
                        [
                            (r.chain, r.seq, r.id, r.session_id, r.at, r.body, r.hash,
                             r.signature)
                            for r in new
                        ],
                    )
                return len(new)

            added += int(self._run(insert, write=True))
        return added

    def list_audit(self, *, session_id: str | None = None) -> list[AuditRecord]:
        """The stored audit entries (of one session), by chain then sequence."""

        def read(c: Conn) -> list[Any]:
            if session_id is None:
                return c.execute(
                    self._q(
                        "SELECT chain, seq, id, session_id::text, at, body, hash, signature "
                        "FROM {s}.audit ORDER BY chain, seq"
                    )
                ).fetchall()
            return c.execute(
                self._q(
                    "SELECT chain, seq, id, session_id::text, at, body, hash, signature "
                    "FROM {s}.audit WHERE session_id = %s ORDER BY chain, seq"
                ),
                (session_id,),
            ).fetchall()

        return [
            AuditRecord(str(r[0]), int(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]),
                        str(r[6]), str(r[7]))
            for r in self._run(read, write=False)
        ]

    def list_ledger(
        self,
        *,
        session_id: str | None = None,
        workspace: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerRow]:
        """The spend-ledger rows passing the filters, by time then id."""
        where: list[sql.Composable] = []
        params: list[Any] = []
        for condition, value in (
            ("session_id = %s", session_id),
            ("workspace = %s", _ledger_text(workspace)),
            ("at >= %s", since),
            ("at < %s", until),
        ):
            if value is not None:
                where.append(sql.SQL(condition))
                params.append(value)
        query = sql.SQL("SELECT {cols} FROM {s}.ledger{where} ORDER BY at, id").format(
            cols=sql.SQL(_LEDGER_COLUMNS),
            s=sql.Identifier(self.schema),
            where=sql.SQL(" WHERE ").join([sql.SQL(""), sql.SQL(" AND ").join(where)])
            if where
            else sql.SQL(""),
        )

        def read(c: Conn) -> list[Any]:
            return c.execute(query, params).fetchall()

        return [_ledger_row(raw) for raw in self._run(read, write=False)]

    def _create(self, c: Conn, p: dict[str, Any]) -> int:
        if p["archived"]:
            # The archived messages take the first seqs (inactive), the active ones the last.
            p = {**p, "bodies": p["archived"] + p["bodies"]}
        row = c.execute(
            self._q(
                "WITH created AS ("
                " INSERT INTO {s}.sessions (id, revision, state, title, created_at, updated_at,"
                " message_count, token_count, workspace_path, model, parent_id, next_seq,"
                " nul_escaped, keyed, next_item) VALUES (%(sid)s, 1, %(state)s, %(title)s,"
                " %(created)s, %(updated)s, %(n)s, %(tokens)s, %(workspace)s, %(model)s,"
                " %(parent)s, %(na)s::bigint + %(n)s::bigint, %(flags)s, %(keyed)s,"
                " %(nitems)s) ON CONFLICT (id) DO NOTHING RETURNING id"
                "), stored AS ("
                " INSERT INTO {s}.messages (session_id, seq, active, body)"
                " SELECT created.id, t.n - 1, t.n > %(na)s::bigint, t.body FROM created,"
                " unnest(%(bodies)s::text[]) WITH ORDINALITY AS t(body, n)"
                "), items AS ("
                " INSERT INTO {s}.session_items (session_id, kind, key, ord, value)"
                " SELECT created.id, t.kind, t.key, t.n - 1, t.value FROM created,"
                " unnest(%(ikinds)b::smallint[], %(ikeys)b::text[], %(ivalues)b::text[])"
                " WITH ORDINALITY AS t(kind, key, value, n)"
                ") SELECT count(*) FROM created"
            ),
            p,
        ).fetchone()
        if row is None or int(row[0]) != 1:
            raise self._stale(c, p["sid"], None, 0)
        return 1

    def _save(self, c: Conn, p: dict[str, Any]) -> int | None:
        """An inline session's save in one statement; None if the row is not as expected."""
        row = c.execute(
            self._q(
                "WITH saved AS ("
                " UPDATE {s}.sessions SET revision = revision + 1, state = %(state)s,"
                " title = %(title)s, created_at = %(created)s, updated_at = %(updated)s,"
                " message_count = message_count + %(n)s::bigint, token_count = %(tokens)s,"
                " workspace_path = %(workspace)s, model = %(model)s, parent_id = %(parent)s,"
                " next_seq = next_seq + %(n)s::bigint, nul_escaped = %(flags)s"
                " WHERE id = %(sid)s AND revision = %(expected)s AND message_count = %(base)s"
                " AND NOT keyed"
                " RETURNING id, revision, next_seq - %(n)s::bigint AS first_seq"
                "), stored AS ("
                " INSERT INTO {s}.messages (session_id, seq, active, body)"
                " SELECT saved.id, saved.first_seq + t.n - 1, true, t.body FROM saved,"
                " unnest(%(bodies)s::text[]) WITH ORDINALITY AS t(body, n)"
                ") SELECT revision FROM saved"
            ),
            p,
        ).fetchone()
        return None if row is None else int(row[0])

    def _save_delta(self, c: Conn, p: dict[str, Any]) -> int | None:
        """A keyed session's save with a delta in one statement; None if the row is not as
        expected. The compare-and-set reserves ``next_item`` numbers for new rows; a changed
        row keeps its ``ord``. A key is deleted or upserted, never both (the delta maps it to
        one change), so the statement's two item changes never touch the same row."""
        row = c.execute(
            self._q(
                "WITH saved AS ("
                " UPDATE {s}.sessions SET revision = revision + 1, state = %(state)s,"
                " title = %(title)s, created_at = %(created)s, updated_at = %(updated)s,"
                " message_count = message_count + %(n)s::bigint, token_count = %(tokens)s,"
                " workspace_path = %(workspace)s, model = %(model)s, parent_id = %(parent)s,"
                " next_seq = next_seq + %(n)s::bigint, nul_escaped = %(flags)s,"
                " next_item = next_item + %(nnew)s::bigint"
                " WHERE id = %(sid)s AND revision = %(expected)s AND message_count = %(base)s"
                " AND keyed"
                " RETURNING id, revision, next_seq - %(n)s::bigint AS first_seq,"
                " next_item - %(nnew)s::bigint AS first_item"
                "), stored AS ("
                " INSERT INTO {s}.messages (session_id, seq, active, body)"
                " SELECT saved.id, saved.first_seq + t.n - 1, true, t.body FROM saved,"
                " unnest(%(bodies)s::text[]) WITH ORDINALITY AS t(body, n)"
                "), dropped AS ("
                " DELETE FROM {s}.session_items i USING saved,"
                " unnest(%(dkinds)b::smallint[], %(dkeys)b::text[]) AS d(kind, key)"
                " WHERE i.session_id = saved.id AND i.kind = d.kind AND i.key = d.key"
                "), upserted AS ("
                " INSERT INTO {s}.session_items (session_id, kind, key, ord, value)"
                " SELECT saved.id, u.kind, u.key, saved.first_item + u.n - 1, u.value FROM saved,"
                " unnest(%(ukinds)b::smallint[], %(ukeys)b::text[], %(uvalues)b::text[])"
                " WITH ORDINALITY AS u(kind, key, value, n)"
                " ON CONFLICT (session_id, kind, key) DO UPDATE SET value = excluded.value"
                ") SELECT revision FROM saved"
            ),
            p,
        ).fetchone()
        return None if row is None else int(row[0])

    def _apply_delta(self, c: Conn, sid: str, changes: dict[str, Any], first: int) -> None:
        """Write a keyed session's changed rows (new ones numbered from ``first``)."""
        if changes["dkeys"] or changes["ukeys"]:
            c.execute(
                self._q(
                    "WITH dropped AS ("
                    " DELETE FROM {s}.session_items i"
                    " USING unnest(%(dkinds)b::smallint[], %(dkeys)b::text[]) AS d(kind, key)"
                    " WHERE i.session_id = %(sid)s AND i.kind = d.kind AND i.key = d.key"
                    ") INSERT INTO {s}.session_items (session_id, kind, key, ord, value)"
                    " SELECT %(sid)s, u.kind, u.key, %(first)s::bigint + u.n - 1, u.value"
                    " FROM unnest(%(ukinds)b::smallint[], %(ukeys)b::text[],"
                    " %(uvalues)b::text[]) WITH ORDINALITY AS u(kind, key, value, n)"
                    " ON CONFLICT (session_id, kind, key) DO UPDATE SET value = excluded.value"
                ),
                {**changes, "sid": sid, "first": first},
            )

    def _replace_items(self, c: Conn, sid: str, items: dict[str, Any] | None) -> None:
        """Make ``items`` (``_item_params``; None: none) the session's keyed rows."""
        c.execute(self._q("DELETE FROM {s}.session_items WHERE session_id = %s"), (sid,))
        if items is not None and items["nitems"]:
            c.execute(
                self._q(
                    "INSERT INTO {s}.session_items (session_id, kind, key, ord, value)"
                    " SELECT %(sid)s, t.kind, t.key, t.n - 1, t.value"
                    " FROM unnest(%(ikinds)b::smallint[], %(ikeys)b::text[],"
                    " %(ivalues)b::text[]) WITH ORDINALITY AS t(kind, key, value, n)"
                ),
                {**items, "sid": sid},
            )

    def _sync_items(self, c: Conn, sid: str, items: dict[str, Any], next_item: int) -> int | None:
        """Write a whole state's items onto a keyed session as the delta from its stored rows.

        A whole write of a keyed session (the first save after a load, e.g. on every request of
        a stateless server) then rewrites only what changed, not every row. Possible when the
        stored allowances that stay keep their relative order and every new one comes after
        them (how sessions grow): the kept rows keep their ``ord``, new ones are numbered from
        ``next_item``. Returns the new ``next_item``, or None (nothing written) when the order
        changed: the caller then replaces the rows.
        """
        rows = c.execute(
            self._q(
                "SELECT kind, key, value FROM {s}.session_items WHERE session_id = %s "
                "ORDER BY kind, ord, key"
            ),
            (sid,),
            binary=True,
        ).fetchall()
        stored: dict[str, str | None] = {}
        stored_order: list[str] = []
        stored_paths: set[str] = set()
        for kind, key, value in rows:
            if kind == ITEM_ALLOWANCE:
                stored[key] = value
                stored_order.append(key)
            elif kind == ITEM_ESCAPE_PATH:
                stored_paths.add(key)
            else:
                return None  # an odd row: replace them all
        kinds: list[int] = items["ikinds"]
        keys: list[str] = items["ikeys"]
        values: list[str | None] = items["ivalues"]
        wanted = {key for kind, key in zip(kinds, keys, strict=True) if kind == ITEM_ALLOWANCE}
        kept = iter([key for key in stored_order if key in wanted])
        changes: dict[str, Any] = {
            "dkinds": [],
            "dkeys": [],
            "ukinds": [],
            "ukeys": [],
            "uvalues": [],
        }
        dkinds, dkeys = changes["dkinds"], changes["dkeys"]
        ukinds, ukeys, uvalues = changes["ukinds"], changes["ukeys"], changes["uvalues"]
        growing = False
        paths: set[str] = set()
        for kind, key, value in zip(kinds, keys, values, strict=True):
            if kind == ITEM_ESCAPE_PATH:
                paths.add(key)
                if key not in stored_paths:
                    ukinds.append(kind)
                    ukeys.append(key)
                    uvalues.append(None)
            elif key in stored:
                if growing or next(kept, None) != key:
                    return None  # a kept allowance moved: renumber them all
                if stored[key] != value:
                    ukinds.append(kind)
                    ukeys.append(key)
                    uvalues.append(value)
            else:
                growing = True
                ukinds.append(kind)
                ukeys.append(key)
                uvalues.append(value)
        for key in stored_order:
            if key not in wanted:
                dkinds.append(ITEM_ALLOWANCE)
                dkeys.append(key)
        for key in stored_paths - paths:
            dkinds.append(ITEM_ESCAPE_PATH)
            dkeys.append(key)
        self._apply_delta(c, sid, changes, next_item)
        return next_item + len(ukeys)

    def _general(
        self,
        c: Conn,
        p: dict[str, Any],
        *,
        replace: bool,
        delta: StateDelta | None,
        changes: dict[str, Any] | None,
        items: dict[str, Any] | None,
    ) -> int:
        """Any save of a stored session, in one transaction holding the row lock."""
        sid = p["sid"]
        row = c.execute(
            self._q(
                "SELECT revision, message_count, next_seq, keyed, next_item FROM {s}.sessions "
                "WHERE id = %s FOR UPDATE"
            ),
            (sid,),
        ).fetchone()
        if row is None or int(row[0]) != p["expected"]:
            raise self._stale(c, sid, p["expected"], p["base"])
        count, next_seq = int(row[1]), int(row[2])
        keyed, next_item = bool(row[3]), int(row[4])
        if replace:
            c.execute(
                self._q(
                    "UPDATE {s}.messages SET active = false "
                    "WHERE session_id = %s AND seq >= %s AND active"
                ),
                (sid, next_seq - count),
            )
            count = 0
        elif count != p["base"]:
            raise self._stale(c, sid, p["expected"], p["base"])
        # Archived messages first (inactive), so the active ones stay the last seqs.
        self._insert(c, sid, next_seq, p["archived"], active=False)
        next_seq += p["na"]
        self._insert(c, sid, next_seq, p["bodies"])
        state = p["state"]
        if delta is not None and keyed and changes is not None:
            self._apply_delta(c, sid, changes, next_item)
            next_item += changes["nnew"]
        else:
            if delta is not None:
                # The stored state is inline (or a key cannot be stored): write it whole, kept
                # keyed however small (the store keeps sending deltas for it).
                full = delta.full_state()
                whole = split_state(full, force=True)
                state = self._encode(whole[0] if whole is not None else full, sid, "state")
                items = self._item_params(whole[1], sid) if whole is not None else None
            synced = (
                self._sync_items(c, sid, items, next_item) if items is not None and keyed else None
            )
            if synced is not None:
                next_item = synced
            else:
                if items is not None or keyed:
                    self._replace_items(c, sid, items)
                next_item = items["nitems"] if items is not None else 0
            keyed = items is not None
        revision = int(row[0]) + 1
        c.execute(
            self._q(
                "UPDATE {s}.sessions SET revision = %(revision)s, state = %(state)s,"
                " title = %(title)s, created_at = %(created)s, updated_at = %(updated)s,"
                " message_count = %(count)s, token_count = %(tokens)s,"
                " workspace_path = %(workspace)s, model = %(model)s, parent_id = %(parent)s,"
                " next_seq = %(next)s, nul_escaped = %(flags)s, keyed = %(keyed)s,"
                " next_item = %(next_item)s WHERE id = %(sid)s"
            ),
            {
                **p,
                "revision": revision,
                "state": state,
                "count": count + p["n"],
                "next": next_seq + p["n"],
                "keyed": keyed,
                "next_item": next_item,
            },
        )
        return revision

    def append(
        self, session_id: str, messages: Sequence[Any], summary: SessionSummary | None = None
    ) -> tuple[int, int]:
        """Append regardless of revision (one statement); ``SessionNotFound`` if absent.

        ``next_seq = next_seq + n ... RETURNING`` reserves the sequence numbers under the row
        lock, so appends from any number of processes never collide.
        """
        check_messages_storable(session_id, messages)
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
        """Remove a session row, its messages and its keyed rows; False if absent."""

        def apply(c: Conn) -> bool:
            # The session row first: it waits for (and then sees) appends in flight.
            gone = c.execute(
                self._q("DELETE FROM {s}.sessions WHERE id = %s"), (session_id,)
            ).rowcount
            c.execute(self._q("DELETE FROM {s}.messages WHERE session_id = %s"), (session_id,))
            c.execute(self._q("DELETE FROM {s}.session_items WHERE session_id = %s"), (session_id,))
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

    def count_history(self, session_id: str) -> int:
        """How many messages ``history`` returns, counted in SQL (``HistoryCounter``)."""
        row = self._run(
            lambda c: c.execute(
                self._q("SELECT count(*) FROM {s}.messages WHERE session_id = %s"), (session_id,)
            ).fetchone(),
            write=False,
        )
        return int(row[0])

    def write_workspace_state(self, change: WorkspaceWrite) -> float | None:
        """Apply a workspace write in one transaction; return the stored total.

        The transaction first takes a transaction-scoped advisory lock on the workspace (so the
        read of the stored total and the write of the new one are one step across connections
        and hosts; at READ COMMITTED every later statement sees the previous holder's commit).
        """

        def apply(c: Conn) -> float | None:
            c.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                (WORKSPACE_LOCK_CLASS, f"{self.schema} {change.namespace}"),
            )

            def get(namespace: str, key: str) -> bytes | None:
                row = c.execute(
                    self._q("SELECT value FROM {s}.kv WHERE namespace = %s AND key = %s"),
                    (namespace, key),
                ).fetchone()
                return None if row is None else bytes(row[0])

            def put(namespace: str, key: str, value: bytes) -> None:
                c.execute(
                    self._q(
                        "INSERT INTO {s}.kv (namespace, key, value) VALUES (%s, %s, %s) "
                        "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value"
                    ),
                    (namespace, key, value),
                )

            def delete(namespace: str, key: str) -> None:
                c.execute(
                    self._q("DELETE FROM {s}.kv WHERE namespace = %s AND key = %s"),
                    (namespace, key),
                )

            where = f"PostgreSQL store {self.where}"
            total: float | None = apply_workspace_write(change, get, put, delete, where)
            return total

        result: float | None = self._run(apply, write=True)
        return result

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
