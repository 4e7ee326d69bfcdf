"""``SessionStore``: the one persistence facade, over a pluggable ``StorageBackend``.

The store turns sessions into backend writes that carry only what changed (new messages and the
small session state), checks revisions so a stale save never overwrites another writer, and
keeps workspace state and a scoped key-value store next to the sessions.

Backends see JSON-ready data only (``dict`` state, message JSON); they never import the session.
The storage contract they honour is documented in ``docs/storage.md`` and checked by
``astrid.testing``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import ValidationError

from .document import GitState, SessionDocument, describe_validation_error
from .errors import (
    ConcurrencyError,
    InvalidCost,
    SerializationError,
    SessionNotFound,
    StorageError,
)
from .ids import SessionId, validate_session_id
from .jsonutil import check_storable, json_problem
from .ledger import GroupBy, LedgerRow, LedgerTotals, aggregate
from .messages import Message, MessageRole
from .offload import read_in_thread, write_in_thread, yielding
from .security.allowances import Allowance, dump_allowances, load_allowances
from .security.audit import AuditRecord, PendingAudit
from .security.budget import (
    BudgetConfig,
    BudgetTracker,
    WorkspaceBudgetSnapshot,
    WorkspaceBudgetTracker,
)
from .security.capabilities import CapabilityStore, ClosableBackend
from .security.escape import EscapeState, WorkspaceBoundary, WorkspaceConfig
from .security.kv import AsyncScopedKvStore, KvStore, ScopedKvStore
from .session import AgentSession, GitCapture, StateBasis
from .timeutil import to_utc, utcnow
from .tokens import TokenEstimator

# -- what backends exchange ----------------------------------------------------------------


@dataclass(frozen=True)
class SessionSummary:
    """One row of a session listing, read without decoding the whole session."""

    id: str
    title: str | None
    created_at: datetime
    updated_at: datetime
    message_count: int
    token_count: int
    workspace_path: str | None
    model: str | None = None
    parent_id: str | None = None
    revision: int = 0

    def display_title(self) -> str:
        """The title, or ``Session <first 8 of the id>``."""
        return self.title if self.title else f"Session {self.id[:8]}"


@dataclass(frozen=True)
class SessionRecord:
    """A loaded session: its state (the document minus messages) and some or all messages."""

    state: dict[str, Any]
    messages: list[Any]
    message_offset: int
    message_count: int
    revision: int
    updated_at: datetime


PRUNE_BATCH = 200
"""Sessions ``prune`` hands a ``BatchDeleter`` at a time."""

KEYED_STATE_MIN = 64
"""From this many session allowances plus remembered escape paths, a backend that accepts state
deltas keeps them as keyed rows and the store sends it only what changed (below: inline JSON)."""


@dataclass(frozen=True)
class StateDelta:
    """The keyed collections of a session's state that changed since the save's base revision.

    ``allowances``: allowance id → its JSON data, or None when it is no longer exported (removed,
    used up, expired); ids new to the stored state come after the stored ones, in this mapping's
    order; a changed one keeps its place. ``remembered_paths``: escape path → True when
    remembered, False when forgotten (the state lists them sorted). ``full_state`` builds the
    complete state, for a backend whose stored state is not keyed (a delta cannot apply there).
    """

    allowances: Mapping[str, dict[str, Any] | None]
    remembered_paths: Mapping[str, bool]
    full_state: Callable[[], dict[str, Any]]

    def __len__(self) -> int:
        return len(self.allowances) + len(self.remembered_paths)


ITEM_ALLOWANCE = 1
"""Kind of a keyed session allowance row (key: its id; value: its JSON)."""
ITEM_ESCAPE_PATH = 2
"""Kind of a keyed remembered escape path row (key: the path; no value)."""

KeyedItem = tuple[int, str, Any]
"""``(kind, key, value)`` of one keyed row (value: the allowance's JSON data, or None)."""


def split_keyed_state(
    state: dict[str, Any], *, force: bool, key_ok: Callable[[str], bool] | None = None
) -> tuple[dict[str, Any], list[KeyedItem]] | None:
    """A whole state without its allowances and remembered escape paths, and those as rows.

    For a backend with ``accepts_state_delta``. None keeps the state inline: fewer than
    ``KEYED_STATE_MIN`` of them (unless ``force``), or not keyable without changing them (an
    allowance that is not an object with a string ``id``, a repeated id, paths that are not
    unique sorted strings, a key ``key_ok`` refuses): such a state is written back as given.
    """
    allowances = state.get("allowances")
    escape = state.get("escape_state")
    if type(allowances) is not list or type(escape) is not dict:
        return None
    paths = escape.get("remembered_paths")
    if type(paths) is not list:
        return None
    if not force and len(allowances) + len(paths) < KEYED_STATE_MIN:
        return None
    items: list[KeyedItem] = []
    ids: set[str] = set()
    for allowance in allowances:
        key = allowance.get("id") if type(allowance) is dict else None
        if type(key) is not str or key in ids or (key_ok is not None and not key_ok(key)):
            return None
        ids.add(key)
        items.append((ITEM_ALLOWANCE, key, allowance))
    previous: str | None = None
    for path in paths:
        if (
            type(path) is not str
            or (previous is not None and path <= previous)
            or (key_ok is not None and not key_ok(path))
        ):
            return None
        previous = path
        items.append((ITEM_ESCAPE_PATH, path, None))
    rest = {key: value for key, value in state.items() if key != "allowances"}
    rest["escape_state"] = {k: v for k, v in escape.items() if k != "remembered_paths"}
    return rest, items


def join_keyed_state(
    state: dict[str, Any], allowances: list[Any], paths: list[str], where: str
) -> None:
    """Put a keyed session's allowances (in stored order) and escape paths back into ``state``.

    Raises ``SerializationError`` naming ``where`` if the stored state has no escape state
    object to hold the paths.
    """
    escape = state.get("escape_state")
    if type(escape) is not dict:
        raise SerializationError(
            f"{where}: stored state has keyed escape paths but no escape_state object"
        )
    state["allowances"] = allowances
    escape["remembered_paths"] = sorted(paths)


@dataclass(frozen=True)
class SessionWrite:
    """One save: the new state and only the messages that changed.

    ``expected_revision`` None means "create; must not exist". With ``replace`` False the backend
    appends ``messages`` after ``base_count`` stored ones; with ``replace`` True the active
    messages become ``messages`` and the previous ones stay in the session's history.

    ``archived``: messages to record in the session's history as already replaced, before
    ``messages``; only for a create or a replace — used by migrations and imports, so a session
    and its history are written in one atomic write. Backends raise ``ValueError`` when it is
    non-empty on a plain append (``expected_revision`` set and ``replace`` False).

    ``messages`` and ``archived`` hold JSON values; for a backend that declares
    ``accepts_message_objects = True`` the store's saves put ``Message`` objects in
    ``messages`` instead (``MessageObjectWriter``; ``message_data`` gives an item's JSON).
    """

    session_id: str
    expected_revision: int | None
    state: dict[str, Any]
    messages: list[Any]
    base_count: int
    replace: bool
    summary: SessionSummary
    archived: Sequence[Any] = ()
    delta: StateDelta | None = None
    """Set only for backends with ``accepts_state_delta = True``, on a save of a stored session:
    ``state`` then has no ``allowances`` and its ``escape_state`` no ``remembered_paths``; those
    are the stored ones changed by ``delta``."""
    ledger: Sequence[LedgerRow] = ()
    """Spend-ledger rows to store in the same atomic write (only for a ``LedgerKeeper``
    backend); a row whose id is already stored is skipped (a retried save)."""
    audit: Sequence[PendingAudit] = ()
    """Security decisions to chain, sign (``astrid.security.audit.seal``) and store in the same
    atomic write (only for an ``AuditKeeper`` backend), after the chain head it reads there."""

    @property
    def is_append(self) -> bool:
        """True for a plain append (an existing session, ``replace`` False)."""
        return self.expected_revision is not None and not self.replace

    def check_storable(self) -> None:
        """Raise ``SerializationError`` if the state or a message holds what no store can keep.

        The rule of ``astrid.jsonutil`` (lone surrogates, NaN and infinities, integers beyond
        64 bits), applied by every backend before it writes anything, so all refuse alike.
        """
        where = f"session {self.session_id}"
        check_storable(self.state, f"{where}: the state")
        first = self.base_count if self.is_append else 0
        check_messages_storable(self.session_id, self.messages, first=first)
        for index, message in enumerate(self.archived):
            check_storable(message, f"{where}: archived message {index}")
        if self.delta is not None:
            for key, value in self.delta.allowances.items():
                check_storable([key, value], f"{where}: allowance {key!a}")
            check_storable(list(self.delta.remembered_paths), f"{where}: a remembered path")

    def check_archived(self) -> None:
        """Raise ``ValueError`` if ``archived`` is given on a plain append."""
        if self.archived and self.is_append:
            raise ValueError(
                f"session {self.session_id}: archived messages can only be written by a create "
                "or a replace, not by an append (expected_revision set and replace False)"
            )


def check_messages_storable(
    session_id: str, messages: Sequence[Any], *, first: int | None = None
) -> None:
    """Raise ``SerializationError`` naming the session and message no store can keep.

    ``first``: the index of ``messages[0]`` in the session (None: not known, an append).
    """
    for index, message in enumerate(yielding(messages) if len(messages) > 1 else messages):
        problem = message_problem(message)
        if problem is not None:
            which = f"message {first + index}" if first is not None else f"new message {index}"
            raise SerializationError(
                f"session {session_id}: {which} cannot be stored: {problem}"
            )


def message_problem(message: Any) -> str | None:
    """``json_problem`` of a message's JSON (a ``Message`` or its JSON value), or None.

    A ``Message`` of text content is checked without building its JSON object.
    """
    if not isinstance(message, Message):
        return json_problem(message)
    if message.verbatim is None and type(message.content) is str:
        role = message.role
        if json_problem(message.content) is None and (
            type(role) is MessageRole or json_problem(role) is None
        ):
            return None
    return json_problem(message.to_json())


def message_data(message: Any) -> Any:
    """The JSON of an item of ``SessionWrite.messages``: ``to_json()`` of a ``Message``, else
    the item itself (it is already JSON)."""
    return message.to_json() if isinstance(message, Message) else message


@dataclass(frozen=True)
class HistoryEntry:
    """A message ever stored for a session, active or replaced (e.g. by a summary)."""

    seq: int
    active: bool
    message: Any


@runtime_checkable
class StorageBackend(Protocol):
    """What a storage plugin implements. Every method is atomic; ids are validated UUIDs."""

    name: str

    def load(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        """The session (only its last ``tail`` active messages if given), or None."""
        ...

    def write(self, change: SessionWrite) -> int:
        """Apply one save atomically and return the new revision.

        Raises ``ConcurrencyError`` when the stored revision is not ``expected_revision``.
        On a create or a replace, ``change.archived`` goes into the session's history (as
        replaced messages, after any previously stored ones and before ``change.messages``)
        in the same atomic write; the active messages are ``change.messages`` only. A
        non-empty ``archived`` on a plain append raises ``ValueError`` (before anything is
        written).
        """
        ...

    def append(
        self, session_id: str, messages: Sequence[Any], summary: SessionSummary | None = None
    ) -> tuple[int, int]:
        """Append messages regardless of revision; return (new revision, message count)."""
        ...

    def delete(self, session_id: str) -> bool:
        """Remove a session and its history; False if it did not exist."""
        ...

    def list_sessions(
        self, *, workspace: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[SessionSummary]:
        """Sessions by last activity, newest first (ties by id), optionally for one workspace."""
        ...

    def count_sessions(self, *, workspace: str | None = None) -> int:
        """How many sessions (optionally in one workspace)."""
        ...

    def history(self, session_id: str) -> list[HistoryEntry]:
        """Every message ever stored for the session, in order, replaced ones included."""
        ...

    def kv(self) -> KvStore:
        """The backend's key-value store (deferred queues, workspace state, capabilities)."""
        ...

    def schema_version(self) -> int:
        """The applied schema version (0 for schemaless backends)."""
        ...

    def close(self) -> None:
        """Release files and connections."""
        ...


# -- optional backend features: one protocol each ------------------------------------------
# The store checks ``isinstance(backend, <protocol>)`` and falls back as documented in
# docs/plugin-authors.md ("Optional features"). ``WorkspaceStateWriter`` (below) and
# ``astrid.security.kv.NamespaceListing`` are two more.


@runtime_checkable
class StateDeltaAcceptor(Protocol):
    """A backend that stores the security state in pieces declares ``accepts_state_delta =
    True``; only the value True counts (``takes_state_delta``)."""

    accepts_state_delta: bool


def takes_state_delta(backend: object) -> bool:
    """True if ``backend`` declares ``accepts_state_delta = True`` (absent, or any other value:
    every save carries the whole state)."""
    return isinstance(backend, StateDeltaAcceptor) and backend.accepts_state_delta is True


@runtime_checkable
class LedgerKeeper(Protocol):
    """A backend that keeps the spend ledger (``astrid.ledger``): its ``write`` stores
    ``change.ledger`` in the save's own atomic write, skipping row ids already stored, and
    rows outlive their session's deletion. Without it the store drops the rows (the save works
    as before), ``SessionStore.list_ledger`` raises ``StorageError`` and ``astrid doctor``
    says the totals were not checked."""

    def list_ledger(
        self,
        *,
        session_id: str | None = None,
        workspace: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerRow]:
        """The rows passing every given filter (``since`` inclusive, ``until`` exclusive),
        by time, then id (``astrid.ledger.sort_rows``)."""
        ...


@runtime_checkable
class AuditKeeper(Protocol):
    """A backend that keeps the audit log (``astrid.security.audit``): its ``write`` seals
    ``change.audit`` after each chain's stored head, in the save's own transaction (so entries
    of one chain never interleave), and entries outlive their session's deletion. Without it
    the store drops the entries after the save (the in-memory ``AuditLog`` still has them)."""

    def list_audit(self, *, session_id: str | None = None) -> list[AuditRecord]:
        """The stored entries (of one session), by chain, then sequence number."""
        ...


@runtime_checkable
class AuditImporter(Protocol):
    """A backend that can store audit entries sealed by another store, verbatim (``astrid
    migrate`` copies the audit log through it; the entries are self-verifying)."""

    def import_audit(self, records: Sequence[AuditRecord]) -> int:
        """Store ``records`` (by chain, each in sequence order) after the target's entries
        with ``astrid.security.audit.to_import`` in one transaction per chain; how many were
        new. ``StorageError`` when a chain already holds other entries."""
        ...


@runtime_checkable
class MessageObjectWriter(Protocol):
    """A backend that encodes messages itself declares ``accepts_message_objects = True``: the
    ``messages`` of the store's writes are then ``Message`` objects, encoded in its ``write``
    (off the event loop under ``asave``, no JSON object built per message). Only the value
    True counts (``takes_message_objects``); without it the store sends each message's JSON,
    built in the thread that runs the write."""

    accepts_message_objects: bool


def takes_message_objects(backend: object) -> bool:
    """True if ``backend`` declares ``accepts_message_objects = True``."""
    return isinstance(backend, MessageObjectWriter) and backend.accepts_message_objects is True


@runtime_checkable
class DecodedLoader(Protocol):
    """A faster ``load`` whose message JSON is already decoded; without it ``load`` is used."""

    def load_decoded(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        """What ``load`` returns, read the backend's quickest way."""
        ...


@runtime_checkable
class SessionDescriber(Protocol):
    """Names where a session lives in error messages; without it: ``<name> session <id>``."""

    def describe(self, session_id: str) -> str:
        """Where the session lives (its file, or the database and the id)."""
        ...


@runtime_checkable
class ProblemReporter(Protocol):
    """Lists the entries the backend holds but cannot list; without it there are none."""

    def problems(self) -> Sequence[tuple[object, str]]:
        """(location, what is wrong) of each entry ``list_sessions`` leaves out."""
        ...


@runtime_checkable
class PersistenceFlag(Protocol):
    """A backend that keeps nothing after ``close`` declares ``persistent = False``; without
    the attribute it is persistent (``is_persistent``)."""

    persistent: bool


def is_persistent(backend: object) -> bool:
    """False only if ``backend`` declares a false ``persistent``."""
    return not isinstance(backend, PersistenceFlag) or bool(backend.persistent)


@runtime_checkable
class FileLocated(Protocol):
    """A backend kept in one file (``path``); ``SessionStore.location`` reports it."""

    path: object


@runtime_checkable
class DirectoryLocated(Protocol):
    """A backend kept in one directory (``directory``); ``SessionStore.location`` reports it."""

    directory: object


@runtime_checkable
class TempFileSweeper(Protocol):
    """A backend that removes the temp files killed writers left; without it there are none."""

    swept_temp_files: int
    """How many were removed when the backend was opened."""

    def sweep_temp_files(self) -> int:
        """Remove the ones left now; how many."""
        ...


@runtime_checkable
class HistoryCounter(Protocol):
    """Counts a session's history without reading it (SQL ``COUNT``); without it the store
    counts what ``history`` returns (``SessionStore.history_count``)."""

    def count_history(self, session_id: str) -> int:
        """How many messages ``history`` would return (0 for an unknown session)."""
        ...


@runtime_checkable
class StrayFileReporter(Protocol):
    """Lists what lies in the backend's directory that is neither a session nor its own
    (``astrid doctor`` reports each); without it there is none."""

    def stray_files(self) -> Sequence[tuple[object, str]]:
        """(path, what it is) of each entry the backend ignores; reads only names."""
        ...


@runtime_checkable
class BatchDeleter(Protocol):
    """Deletes several sessions in one step (the file backend: one directory fsync for all,
    where ``delete`` syncs per session); without it ``prune`` deletes one at a time."""

    def delete_many(self, session_ids: Sequence[str]) -> list[str]:
        """Delete each session as ``delete`` does; the ids that existed, in order."""
        ...


@runtime_checkable
class WholeLister(Protocol):
    """Lists every session in one pass (the file backend: one directory scan, where each page
    of ``list_sessions`` rescans); without it ``SessionStore.all_sessions`` pages."""

    def list_all_sessions(self) -> list[SessionSummary]:
        """What ``list_sessions`` pages through, newest activity first (ties by id)."""
        ...


# -- workspace state -----------------------------------------------------------------------

WORKSPACE_STATE_KEY = "state"
"""A workspace's state is one JSON document under this key of the namespace ``ws:<workspace>``:
``{"allowances": [...], "budget": {...}, "escape": {...}}`` (budget and escape optional)."""

LEGACY_WORKSPACE_PARTS = ("allowances", "budget", "escape")
"""The older layout: three keys ``ws:<workspace>:<part>`` / ``all``, read when the document is
absent and removed by the first write of the document."""


def workspace_namespace(workspace: str) -> str:
    """The key-value namespace of a workspace's state (``workspace``: its ``workspace_key``)."""
    return f"ws:{workspace}"


def deferred_namespace(session_id: str) -> str:
    """The key-value namespace of a session's deferred-approval queue (the original's name)."""
    return f"deferred:{session_id}"


def _json_of(raw: bytes, where: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SerializationError(f"{where}: not valid JSON: {exc}") from None


@dataclass(frozen=True)
class StoredWorkspace:
    """A workspace's stored state as JSON data, and whether it was read from the older layout."""

    doc: dict[str, Any]
    legacy: bool
    workspace: str
    where: str

    def source(self, part: str) -> str:
        """Where ``part`` (allowances, budget, escape) was read, for error messages."""
        namespace = workspace_namespace(self.workspace)
        if self.legacy:
            return f"{self.where}: {namespace}:{part}/all"
        return f"{self.where}: {namespace}/{WORKSPACE_STATE_KEY} ({part})"


def read_workspace_document(
    get: Callable[[str, str], bytes | None], workspace: str, where: str
) -> StoredWorkspace | None:
    """The stored state of ``workspace`` (None if there is none).

    ``get(namespace, key)`` reads the key-value store (inside the caller's transaction, for a
    backend's ``write_workspace_state``). The document is read when present, else the three
    keys of the older layout, assembled into one document. Bad JSON is a ``SerializationError``
    naming ``where`` and the key.
    """
    namespace = workspace_namespace(workspace)
    raw = get(namespace, WORKSPACE_STATE_KEY)
    if raw is not None:
        source = f"{where}: {namespace}/{WORKSPACE_STATE_KEY}"
        doc = _json_of(raw, source)
        if not isinstance(doc, dict) or not isinstance(doc.get("allowances", []), list):
            raise SerializationError(
                f"{source}: a workspace state must be a JSON object with an allowances array"
            )
        return StoredWorkspace(doc, False, workspace, where)
    doc = {}
    for part in LEGACY_WORKSPACE_PARTS:
        value = get(f"{namespace}:{part}", "all")
        if value is not None:
            doc[part] = _json_of(value, f"{where}: {namespace}:{part}/all")
    if not doc:
        return None
    if not isinstance(doc.get("allowances", []), list):
        raise SerializationError(f"{where}: {namespace}:allowances/all: not a JSON array")
    return StoredWorkspace(doc, True, workspace, where)


@dataclass(frozen=True)
class WorkspaceWrite:
    """One save of a workspace's state, for a backend's ``write_workspace_state``.

    ``allowances`` replace the stored ones. ``escape`` None keeps the stored escape paths;
    ``budget`` None keeps the stored budget. With ``spend_delta`` None the budget is stored as
    given (an administrative write: a copy, a restore); with a number, the stored total plus
    ``spend_delta`` (never below 0) becomes the budget's ``total_spent_usd``: what a session
    charged since it last read the total is added, never a last-writer-wins snapshot.
    """

    workspace: str
    allowances: list[Any]
    budget: dict[str, Any] | None = None
    escape: dict[str, Any] | None = None
    spend_delta: float | None = None

    @property
    def namespace(self) -> str:
        """The namespace of the workspace's document."""
        return workspace_namespace(self.workspace)

    def legacy_keys(self) -> list[tuple[str, str]]:
        """The (namespace, key) pairs of the older three-key layout, deleted by the write."""
        return [(f"{self.namespace}:{part}", "all") for part in LEGACY_WORKSPACE_PARTS]

    def apply(self, stored: StoredWorkspace | None, where: str) -> tuple[bytes, float | None]:
        """The document to store (UTF-8 JSON) and its budget total, given the stored one.

        A stored total that is not a finite, non-negative number is a ``SerializationError``
        (nothing is added to it); a total that would overflow is ``InvalidCost``.
        """
        current = stored.doc if stored is not None else {}
        doc = {k: v for k, v in current.items() if k not in LEGACY_WORKSPACE_PARTS}
        doc["allowances"] = self.allowances
        budget = self.budget if self.budget is not None else current.get("budget")
        if self.budget is not None and self.spend_delta is not None:
            total = 0.0
            if current.get("budget") is not None:
                source = stored.source("budget") if stored is not None else where
                snapshot = _validated(WorkspaceBudgetSnapshot, current["budget"], source)
                total = snapshot.total_spent_usd
            added = total + float(self.spend_delta)
            if not math.isfinite(added):
                raise InvalidCost(
                    f"{where}: {self.namespace}: adding {self.spend_delta!r} USD to the stored "
                    f"workspace total {total!r} would overflow"
                )
            budget = {**self.budget, "total_spent_usd": max(added, 0.0)}
        if budget is not None:
            doc["budget"] = budget
        escape = self.escape if self.escape is not None else current.get("escape")
        if escape is not None:
            doc["escape"] = escape
        try:
            text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"{where}: {self.namespace}: cannot encode the workspace state: {exc}"
            ) from None
        out = budget.get("total_spent_usd") if isinstance(budget, dict) else None
        if isinstance(out, bool) or not isinstance(out, int | float):
            return text.encode("utf-8"), None  # no budget, or a kept one not checked here
        return text.encode("utf-8"), float(out)


def apply_workspace_write(
    change: WorkspaceWrite,
    get: Callable[[str, str], bytes | None],
    put: Callable[[str, str, bytes], None],
    delete: Callable[[str, str], object],
    where: str,
) -> float | None:
    """``write_workspace_state`` over a backend's key-value primitives; return the new total.

    Call it inside ONE transaction (or under one lock across processes) that ``get``, ``put``
    and ``delete`` run in: it reads the stored state, writes the new document and removes the
    older layout's keys.
    """
    stored = read_workspace_document(get, change.workspace, where)
    data, total = change.apply(stored, where)
    put(change.namespace, WORKSPACE_STATE_KEY, data)
    for namespace, key in change.legacy_keys():
        delete(namespace, key)
    return total


@runtime_checkable
class WorkspaceStateWriter(Protocol):
    """The optional ``StorageBackend`` method that saves a workspace's state atomically."""

    def write_workspace_state(self, change: WorkspaceWrite) -> float | None:
        """Apply ``change`` in one atomic step across processes; return the stored total.

        Reads the stored document (or the older three-key layout), writes the new document
        (``WorkspaceWrite.apply``) and removes the older keys, in one transaction: after a crash
        the store holds the old state or the new one, and concurrent writers' spend deltas all
        add up. ``apply_workspace_write`` does it given the backend's transactional primitives.
        Returns the new budget total (None when no budget is stored).
        """
        ...


# -- the facade ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _PendingSave:
    """A write computed from a session, and what to record once the backend applied it."""

    change: SessionWrite
    count: int
    offset: int
    keyed: StateBasis | None
    messages: bool
    """True when the write carries the session's message changes (``save``, not
    ``save_state``): they were begun in its change set (``ChangeSet.begin_write``)."""
    ledger: tuple[LedgerRow, ...] = ()
    """The pending ledger rows the write took (dropped from the change set once written)."""
    audit: tuple[PendingAudit, ...] = ()
    """The pending audit entries the write took (likewise)."""


@dataclass
class WorkspaceState:
    """A workspace's persisted security state: allowances, budget spend, escape paths."""

    allowances: list[Allowance] = field(default_factory=list)
    budget: WorkspaceBudgetSnapshot | None = None
    escape: EscapeState | None = None


def workspace_key(path: str | Path) -> str:
    """The canonical key of a workspace: its absolute path (no symlink resolution)."""
    text = os.fspath(path)
    if os.path.isabs(text):
        return _absolute_key(text)  # no ``~`` and no working directory: a pure function
    return str(Path(text).expanduser().absolute())


@functools.lru_cache(maxsize=1024)
def _absolute_key(text: str) -> str:
    return str(Path(text).absolute())


class SessionStore:
    """Saves and loads sessions through a backend, writing only what changed."""

    def __init__(
        self,
        backend: StorageBackend,
        *,
        token_estimator: TokenEstimator | None = None,
        git_capture: GitCapture | None = None,
        budget: BudgetConfig | None = None,
        workspace_max_usd: float | None = None,
        capabilities: CapabilityStore | None = None,
    ) -> None:
        self.backend = backend
        self.token_estimator = token_estimator
        self.git_capture = git_capture
        self.budget = budget
        self.workspace_max_usd = workspace_max_usd
        self.capabilities = capabilities
        # The backend's optional features, read once (an isinstance against a protocol costs
        # about 10 µs, too much for every save and load).
        self._delta_writes = takes_state_delta(backend)
        self._message_objects = takes_message_objects(backend)
        self._ledger: LedgerKeeper | None = backend if isinstance(backend, LedgerKeeper) else None
        self._audit: AuditKeeper | None = backend if isinstance(backend, AuditKeeper) else None
        self._load: Callable[..., SessionRecord | None] = (
            backend.load_decoded if isinstance(backend, DecodedLoader) else backend.load
        )
        self._describe: Callable[[str], str] | None = (
            backend.describe if isinstance(backend, SessionDescriber) else None
        )
        self._token = object()
        """What a session's ``ChangeSet.store`` holds when this store loaded or saved it last."""
        self._workspace_trackers: weakref.WeakValueDictionary[
            tuple[str, float | None, int], WorkspaceBudgetTracker
        ] = weakref.WeakValueDictionary()
        """The workspace trackers of attached sessions, shared by workspace and limits."""

    # -- sessions --------------------------------------------------------------------------

    def new_session(self, system_prompt: str = "", **kwargs: Any) -> AgentSession:
        """A new (unsaved) session with this store's token estimator and budget limits."""
        kwargs.setdefault("token_estimator", self.token_estimator)
        if self.budget is not None:
            kwargs.setdefault("budget_tracker", BudgetTracker(self.budget))
        if self.capabilities is not None:
            kwargs.setdefault("capabilities", self.capabilities)
        return AgentSession(system_prompt, **kwargs)

    def save(self, session: AgentSession) -> int:
        """Save what changed since the session was loaded or last saved; return the revision.

        Raises ``ConcurrencyError`` if another writer saved the session in between.
        """
        pending = self._prepare_save(session)
        revision = self._write(pending.change)
        self._saved(session, pending, revision)
        return revision

    def save_state(self, session: AgentSession) -> int:
        """Save the session's state (budget spend, counters, security state) without messages.

        For when ``save`` failed because of a message (``SerializationError``): the spend is
        stored all the same, and the message changes stay pending for the next ``save``.
        Raises ``ConcurrencyError`` if another writer saved the session in between.
        """
        pending = self._prepare_save_state(session)
        revision = self._write(pending.change)
        self._saved(session, pending, revision)
        return revision

    def _prepare_save(self, session: AgentSession, *, capture_git: bool = True) -> _PendingSave:
        """The write a ``save`` sends, computed from the session's change set (on the caller's
        thread); it begins the change set's write (``_saved`` records it). ``capture_git=False``
        takes ``session.git_state`` as it is (``asave`` captured it in the worker thread). The
        messages go as ``Message`` objects (frozen, a list of their own): ``_write`` encodes
        them, in the thread of the write."""
        changes = session.changes
        ours = self._owns(session)
        basis = changes.basis if ours else None
        state, delta, keyed = self._state_for_write(session, basis, capture_git)
        messages = session.messages
        if not ours:  # never stored here: a create, with every message
            change_messages: list[Any] = list(messages)
            expected, base, replace = None, 0, False
            offset = 0
        else:
            offset = changes.offset
            loaded = changes.count - offset
            low = changes.rewritten_from
            if len(messages) >= loaded and (low is None or low >= loaded):
                change_messages = messages[loaded:]  # appended since
                replace = False
            else:
                if offset:
                    raise StorageError(
                        f"session {session.id.bare}: its messages were rewritten but only the "
                        f"last {loaded} of {changes.count} were loaded; load it whole to rewrite"
                    )
                change_messages = list(messages)
                replace = True
            expected, base = changes.revision, changes.count
        count = offset + len(messages)
        summary = self._summary_of(session, state, count)
        ledger, audit = tuple(changes.ledger), tuple(changes.audit)
        change = SessionWrite(
            session_id=session.id.bare,
            expected_revision=expected,
            state=state,
            messages=change_messages,
            base_count=base,
            replace=replace,
            summary=summary,
            delta=delta,
            ledger=ledger if self._ledger is not None else (),
            audit=audit if self._audit is not None else (),
        )
        changes.begin_write()
        return _PendingSave(
            change, count, offset, keyed, messages=True, ledger=ledger, audit=audit
        )

    def _prepare_save_state(
        self, session: AgentSession, *, capture_git: bool = True
    ) -> _PendingSave:
        """The write a ``save_state`` sends (the state, no messages)."""
        changes = session.changes
        ours = self._owns(session)
        basis = changes.basis if ours else None
        state, delta, keyed = self._state_for_write(session, basis, capture_git)
        if not ours:
            expected, count, offset = None, 0, 0  # a create: every message stays pending
        else:
            expected, count, offset = changes.revision, changes.count, changes.offset
        ledger, audit = tuple(changes.ledger), tuple(changes.audit)
        change = SessionWrite(
            session_id=session.id.bare,
            expected_revision=expected,
            state=state,
            messages=[],
            base_count=count,
            replace=False,
            summary=self._summary_of(session, state, count),
            delta=delta,
            ledger=ledger if self._ledger is not None else (),
            audit=audit if self._audit is not None else (),
        )
        return _PendingSave(
            change, count, offset, keyed, messages=False, ledger=ledger, audit=audit
        )

    def _write(self, change: SessionWrite) -> int:
        """``backend.write(change)``, with the ``Message`` objects of ``change.messages`` as
        their JSON unless the backend takes them as they are (``MessageObjectWriter``).

        Runs in the worker thread under ``asave``: the encoding of a first save of a long
        session happens there, pausing for the event loop (``yielding``).
        """
        if not self._message_objects and change.messages:
            change = dataclasses.replace(
                change, messages=[message_data(m) for m in yielding(change.messages)]
            )
        return self.backend.write(change)

    def _owns(self, session: AgentSession) -> bool:
        """True if this store loaded or saved the session last (its change set is ours).

        A session of another store is saved here as a create; one loaded from it as a tail
        window is refused (the copy would silently lose the messages before the window).
        """
        changes = session.changes
        if changes.store is self._token:
            return True
        if changes.offset:
            raise StorageError(
                f"session {session.id.bare}: only the last {changes.count - changes.offset} of "
                f"its {changes.count} messages were loaded, from another store; load it whole "
                "to save it here"
            )
        return False

    def _saved(self, session: AgentSession, pending: _PendingSave, revision: int) -> None:
        """Record a successful write of ``pending`` in the session's change set."""
        session.changes.stored(
            self._token,
            revision,
            pending.count,
            pending.offset,
            pending.keyed,
            messages=pending.messages,
        )
        # stored, or dropped by a backend without the feature
        session.changes.rows_saved(pending.ledger, pending.audit)

    def _state_for_write(
        self, session: AgentSession, basis: StateBasis | None, capture_git: bool = True
    ) -> tuple[dict[str, Any], StateDelta | None, StateBasis | None]:
        """The state to write, the keyed delta if the backend takes one, and the new basis.

        A delta needs a basis: this store's last write (or load) of the session, with many
        allowances and escape paths, through the same allowance store and escape handler
        objects. Otherwise the state goes whole (and a basis is kept if it is large).
        """
        if not self._delta_writes:
            return self._state_of(session, capture_git), None, None
        allowances, escape = session.allowance_store, session.escape_handler
        if basis is not None and basis.allowances is allowances and basis.escape is escape:
            changed = allowances.session_allowance_changes(basis.allowance_version, basis.until)
            paths = escape.remembered_path_changes(basis.escape_version)
            # A dropped id added again since goes last in the export, not in its stored
            # place: only a whole write puts it there.
            if changed is not None and any(
                changed.changes.get(k) is not None for k in basis.dropped_allowances
            ):
                changed = None
            if changed is not None and paths is not None:
                git = self.git_capture if capture_git else None
                state = session.state_data(git_capture=git, keyed=True)

                def full_state() -> dict[str, Any]:
                    return session.state_data(git_capture=None)

                allowance_changes = dict.fromkeys(basis.dropped_allowances)
                allowance_changes.update(changed.changes)
                path_changes = dict.fromkeys(basis.dropped_paths, False)
                path_changes.update(paths[1])
                delta = StateDelta(allowance_changes, path_changes, full_state)
                keyed = StateBasis(allowances, changed.version, changed.until, escape, paths[0])
                return state, delta, keyed
        # Versions read before the export: a change made meanwhile is sent again (harmless).
        version, escape_version = allowances.version, escape.version
        state = self._state_of(session, capture_git)
        exported = state.get("allowances")
        escape_state = state.get("escape_state")
        remembered = escape_state.get("remembered_paths") if type(escape_state) is dict else None
        if (
            type(exported) is not list
            or type(remembered) is not list
            or len(exported) + len(remembered) < KEYED_STATE_MIN
        ):
            return state, None, None
        until = allowances.export_session_allowances_snapshot()[1]
        return state, None, StateBasis(allowances, version, until, escape, escape_version)

    def append_messages(self, session_id: str | SessionId, messages: Iterable[Message]) -> int:
        """Append messages to a stored session without a revision check (concurrent writers)."""
        sid = validate_session_id(session_id)
        revision, _count = self.backend.append(sid, [m.to_json() for m in messages])
        return revision

    def load(self, session_id: str | SessionId, *, tail: int | None = None) -> AgentSession | None:
        """Load a session (or only its last ``tail`` messages); None if it does not exist."""
        loaded = self._load_session(session_id, tail)
        if loaded is None:
            return None
        self._loaded(*loaded)
        return loaded[0]

    def _load_session(
        self, session_id: str | SessionId, tail: int | None
    ) -> tuple[AgentSession, SessionRecord, StateBasis | None] | None:
        """Read and rebuild a session, not yet recorded as loaded (``_loaded`` does that).

        Touches only the new session, so ``aload`` runs it in a worker thread.
        """
        sid = validate_session_id(session_id)
        if tail is not None and tail < 0:
            raise ValueError("tail must be >= 0")
        record = self._load(sid, tail=tail)
        if record is None:
            return None
        data = dict(record.state)
        data["messages"] = record.messages
        doc = SessionDocument.from_data(data, source=self._source(sid))
        session = AgentSession.from_document(doc, token_estimator=self.token_estimator)
        if self.capabilities is not None:
            session.with_capability_store(self.capabilities)
        keyed = _loaded_basis(session, record.state) if self._delta_writes else None
        return session, record, keyed

    def _loaded(
        self, session: AgentSession, record: SessionRecord, keyed: StateBasis | None
    ) -> None:
        session.changes.loaded(
            self._token, record.revision, record.message_count, record.message_offset, keyed
        )

    def load_document(self, session_id: str | SessionId) -> SessionDocument | None:
        """The stored document of a session (all active messages), or None."""
        sid = validate_session_id(session_id)
        record = self.backend.load(sid)
        return None if record is None else self.decode_record(sid, record)

    def load_message_data(
        self, session_id: str | SessionId, *, tail: int | None = None
    ) -> list[Any] | None:
        """The stored JSON of a session's active messages (only the last ``tail`` if given),
        oldest first, without rebuilding the session; None if it does not exist. For adapters
        that hand messages on as JSON (astrid-openai-agents, astrid-claude-agent-sdk)."""
        sid = validate_session_id(session_id)
        if tail is not None and tail < 0:
            raise ValueError("tail must be >= 0")
        record = self.backend.load(sid, tail=tail)
        return None if record is None else record.messages

    def revision_of(self, session: AgentSession) -> int | None:
        """The revision this store last loaded or saved for ``session`` (None if never)."""
        changes = session.changes
        return changes.revision if changes.store is self._token else None

    def history(self, session_id: str | SessionId) -> list[Message]:
        """Every message ever stored for the session, replaced ones included, oldest first."""
        sid = validate_session_id(session_id)
        return [Message.from_json(entry.message) for entry in self.backend.history(sid)]

    def fork(self, session_id: str | SessionId, *, at: int | None = None) -> AgentSession:
        """A new saved session starting with the first ``at`` messages of ``session_id`` (all
        by default), its security state as of then (``astrid.forks``), linked in its metadata
        (``forked_from``, ``fork_point``). ``InvalidForkPoint`` for an index out of range."""
        from .forks import fork_session

        return fork_session(self, session_id, at=at)

    def delete(self, session_id: str | SessionId) -> bool:
        """Delete a session; False if it did not exist."""
        return self.backend.delete(validate_session_id(session_id))

    def list_sessions(
        self, *, workspace: str | Path | None = None, limit: int = 50, offset: int = 0
    ) -> list[SessionSummary]:
        """A page of sessions, newest activity first, optionally in one workspace."""
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        ws = workspace_key(workspace) if workspace is not None else None
        return self.backend.list_sessions(workspace=ws, limit=limit, offset=offset)

    def count(self, *, workspace: str | Path | None = None) -> int:
        """How many sessions are stored (optionally in one workspace)."""
        ws = workspace_key(workspace) if workspace is not None else None
        return self.backend.count_sessions(workspace=ws)

    def most_recent(self) -> AgentSession | None:
        """The session with the latest activity, or None."""
        page = self.backend.list_sessions(limit=1)
        return self.load(page[0].id) if page else None

    def all_sessions(self, page: int = 500) -> list[SessionSummary]:
        """Every listed session, newest activity first: one pass where the backend can
        (``WholeLister``), else ``list_sessions`` page by page."""
        if isinstance(self.backend, WholeLister):
            return self.backend.list_all_sessions()
        rows: list[SessionSummary] = []
        while True:
            chunk = self.backend.list_sessions(limit=page, offset=len(rows))
            rows.extend(chunk)
            if len(chunk) < page:
                return rows

    def prune(
        self,
        *,
        older_than: timedelta,
        dry_run: bool = False,
        now: datetime | None = None,
        progress: Callable[[Sequence[str]], Iterable[str]] | None = None,
    ) -> list[str]:
        """Delete sessions whose last activity is older than ``older_than``; return their ids.

        ``progress`` wraps the ids to delete (a progress bar); not called on a dry run.
        """
        cutoff = to_utc(now or utcnow()) - older_than
        doomed = [s.id for s in self.all_sessions() if s.updated_at < cutoff]
        if dry_run:
            return doomed
        ids = progress(doomed) if progress is not None else doomed
        if not isinstance(self.backend, BatchDeleter):
            return [sid for sid in ids if self.backend.delete(sid)]
        deleted: list[str] = []
        batch: list[str] = []
        for sid in ids:
            batch.append(sid)
            if len(batch) == PRUNE_BATCH:
                deleted += self.backend.delete_many(batch)
                batch = []
        return deleted + (self.backend.delete_many(batch) if batch else [])

    # -- workspace state -------------------------------------------------------------------

    def kv(self, namespace: str) -> ScopedKvStore:
        """A key-value view bound to one namespace of this store."""
        return ScopedKvStore(self.backend.kv(), namespace)

    def deferred_queue_kv(self, session_id: str | SessionId) -> ScopedKvStore:
        """The namespace the original uses for a session's deferred queue."""
        return self.kv(deferred_namespace(validate_session_id(session_id)))

    def load_workspace_state(self, workspace: str | Path) -> WorkspaceState:
        """The workspace's allowances, budget snapshot and escape paths (empty if none).

        Reads the one-document layout, or the older three-key layout when that is absent.
        """
        ws = workspace_key(workspace)
        stored = read_workspace_document(self.backend.kv().get, ws, self.backend.name)
        state = WorkspaceState()
        if stored is None:
            return state
        doc = stored.doc
        if doc.get("allowances") is not None:
            text = json.dumps(doc["allowances"], ensure_ascii=False)
            state.allowances = load_allowances(text, source=stored.source("allowances"))
        if doc.get("budget") is not None:
            budget = _validated(WorkspaceBudgetSnapshot, doc["budget"], stored.source("budget"))
            state.budget = budget
        if doc.get("escape") is not None:
            state.escape = _validated(EscapeState, doc["escape"], stored.source("escape"))
        return state

    def save_workspace_state(self, workspace: str | Path, state: WorkspaceState) -> None:
        """Store a workspace's allowances, budget snapshot and escape paths as given.

        One atomic write (the backend's ``write_workspace_state``). An administrative write (a
        copy, a restore): ``state.budget`` replaces the stored total, and None keeps the stored
        budget (likewise ``state.escape``). Sessions charge through ``save_workspace_of``, which
        adds what they spent instead.
        """
        self._write_workspace(
            WorkspaceWrite(
                workspace=workspace_key(workspace),
                allowances=json.loads(dump_allowances(state.allowances)),
                budget=state.budget.model_dump(mode="json") if state.budget else None,
                escape=state.escape.model_dump(mode="json") if state.escape else None,
            )
        )

    def attach_workspace(
        self,
        session: AgentSession,
        workspace: str | Path,
        *,
        max_usd: float | None = None,
        warn_at_percent: int = 80,
    ) -> WorkspaceBudgetTracker:
        """Set the session's workspace and load that workspace's allowances, budget and escapes.

        ``max_usd`` defaults to the store's ``workspace_max_usd`` (None: unlimited). Sessions
        attached through this store to one workspace with the same limits share one tracker,
        so they refuse together within the process; across processes their spend adds up in
        the store (``save_workspace_of``).
        """
        ws = workspace_key(workspace)
        return self._attach(session, ws, self.load_workspace_state(ws), max_usd, warn_at_percent)

    def _attach(
        self,
        session: AgentSession,
        ws: str,
        state: WorkspaceState,
        max_usd: float | None,
        warn_at_percent: int,
    ) -> WorkspaceBudgetTracker:
        """``attach_workspace`` once the workspace's state is read (no I/O)."""
        if max_usd is None:
            max_usd = self.workspace_max_usd
        session.with_workspace(ws)
        session.import_workspace_allowances(state.allowances)
        if state.budget is not None:
            tracker = WorkspaceBudgetTracker.restore(state.budget, max_usd, warn_at_percent)
        else:
            tracker = WorkspaceBudgetTracker(max_usd, warn_at_percent)
        shared_key = (ws, tracker.max_usd(), tracker.warn_at_percent())
        shared = self._workspace_trackers.setdefault(shared_key, tracker)
        if shared is not tracker and state.budget is not None:
            shared.refresh(state.budget.total_spent_usd)  # what others stored since
        tracker = shared
        session.with_workspace_budget(tracker)
        if state.escape is not None:
            # Stored paths are re-checked: a tampered workspace state cannot unlock /etc.
            boundary = WorkspaceBoundary(WorkspaceConfig.new(ws))
            session.escape_handler.restore_state(state.escape, boundary=boundary)
        return tracker

    def save_workspace_of(self, session: AgentSession) -> None:
        """Persist the workspace state a session carries (allowances, budget, escapes).

        One atomic write. The budget is an increment: what the session's workspace tracker
        charged since it last read the stored total is added to it, and the tracker then adopts
        the new total (so it sees what other sessions and processes spent).
        """
        self._workspace_write_of(session)()

    def _workspace_write_of(self, session: AgentSession) -> Callable[[], object]:
        """The I/O of ``save_workspace_of``, its data read from the session now.

        What the session carries is exported on the caller's thread; the returned call only
        writes (and syncs the thread-safe tracker), so ``asave_workspace_of`` runs it in a
        worker thread.
        """
        if session.workspace_path is None:
            raise StorageError(f"session {session.id.bare} has no workspace to save")
        ws = workspace_key(session.workspace_path)
        allowances = json.loads(dump_allowances(session.export_workspace_allowances()))
        escape = session.escape_handler.export_state().model_dump(mode="json")
        tracker = session.workspace_budget_tracker
        if tracker is None:
            return functools.partial(
                self._write_workspace, WorkspaceWrite(ws, allowances, None, escape)
            )
        budget = tracker.snapshot().model_dump(mode="json")

        def write(delta: float) -> float:
            total = self._write_workspace(WorkspaceWrite(ws, allowances, budget, escape, delta))
            if total is None:
                raise StorageError(
                    f"storage backend {self.backend.name!r}: write_workspace_state of {ws} "
                    "returned no budget total"
                )
            return total

        def sync() -> None:
            tracker.sync(write)

        return sync

    def _write_workspace(self, change: WorkspaceWrite) -> float | None:
        """``write_workspace_state`` of the backend; a backend without it fails closed."""
        if not isinstance(self.backend, WorkspaceStateWriter):
            raise StorageError(
                f"storage backend {self.backend.name!r} cannot save workspace state: it has no "
                "write_workspace_state (one atomic write that adds the workspace's spend; see "
                "docs/plugin-authors.md)"
            )
        return self.backend.write_workspace_state(change)

    # -- the audit log (astrid.security.audit) -------------------------------------------------

    @property
    def keeps_audit(self) -> bool:
        """True if the backend keeps the audit log (``AuditKeeper``)."""
        return self._audit is not None

    def list_audit(self, *, session_id: str | SessionId | None = None) -> list[AuditRecord]:
        """The stored audit entries (of one session), by chain then sequence number;
        ``StorageError`` if the backend keeps no audit log."""
        if self._audit is None:
            raise StorageError(
                f"storage backend {self.backend.name!r} keeps no audit log (it has no "
                "list_audit)"
            )
        sid = validate_session_id(session_id) if session_id is not None else None
        return self._audit.list_audit(session_id=sid)

    async def alist_audit(
        self, *, session_id: str | SessionId | None = None
    ) -> list[AuditRecord]:
        """``list_audit`` off the event loop."""
        return await read_in_thread(functools.partial(self.list_audit, session_id=session_id))

    @property
    def imports_audit(self) -> bool:
        """True if the backend can store audit entries copied from another store."""
        return isinstance(self.backend, AuditImporter)

    def import_audit(self, records: Sequence[AuditRecord]) -> int:
        """Store audit entries sealed by another store verbatim (``AuditImporter``); how many
        were new. ``StorageError`` if the backend cannot, or a chain holds other entries."""
        if not isinstance(self.backend, AuditImporter):
            raise StorageError(
                f"storage backend {self.backend.name!r} cannot store copied audit entries (it "
                "has no import_audit)"
            )
        return self.backend.import_audit(records)

    # -- the spend ledger (astrid.ledger) ------------------------------------------------------

    @property
    def keeps_ledger(self) -> bool:
        """True if the backend keeps the spend ledger (``LedgerKeeper``)."""
        return self._ledger is not None

    def list_ledger(
        self,
        *,
        session_id: str | SessionId | None = None,
        workspace: str | Path | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerRow]:
        """The stored ledger rows passing every given filter, by time (``since`` inclusive,
        ``until`` exclusive); ``StorageError`` if the backend keeps no ledger."""
        if self._ledger is None:
            raise StorageError(
                f"storage backend {self.backend.name!r} keeps no spend ledger (it has no "
                "list_ledger; see docs/plugin-authors.md)"
            )
        return self._ledger.list_ledger(
            session_id=validate_session_id(session_id) if session_id is not None else None,
            workspace=workspace_key(workspace) if workspace is not None else None,
            since=to_utc(since) if since is not None else None,
            until=to_utc(until) if until is not None else None,
        )

    def usage(
        self,
        *,
        by: GroupBy | None = None,
        session_id: str | SessionId | None = None,
        workspace: str | Path | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerTotals]:
        """Calls, tokens and exact cost of the ledger rows ``list_ledger`` selects, per
        session, workspace, model or UTC day (``by`` None: one total)."""
        rows = self.list_ledger(
            session_id=session_id, workspace=workspace, since=since, until=until
        )
        return aggregate(rows, by)

    # -- the async API -----------------------------------------------------------------------
    # The same operations for code on an event loop. Backend I/O runs in a worker thread
    # (``astrid.offload``); what a write needs from the session is read on the loop thread
    # before the hop and recorded there after it, so the session is never read from the
    # worker thread while the loop changes it.

    async def asave(self, session: AgentSession) -> int:
        """``save`` off the event loop; saves of one session run one after another.

        Cancelled while the write runs, it waits for the write to end and records it before
        the cancellation is raised: the session's stored state is never half recorded.
        """
        async with session.changes.save_lock():
            await self._acapture_git(session)
            pending = self._prepare_save(session, capture_git=False)
            return await write_in_thread(
                self._write,
                pending.change,
                done=functools.partial(self._saved, session, pending),
            )

    async def asave_state(self, session: AgentSession) -> int:
        """``save_state`` off the event loop (serialized with ``asave`` of the session)."""
        async with session.changes.save_lock():
            await self._acapture_git(session)
            pending = self._prepare_save_state(session, capture_git=False)
            return await write_in_thread(
                self._write,
                pending.change,
                done=functools.partial(self._saved, session, pending),
            )

    async def aload(
        self, session_id: str | SessionId, *, tail: int | None = None
    ) -> AgentSession | None:
        """``load`` off the event loop (reading and decoding run in the worker thread)."""
        loaded = await read_in_thread(self._load_session, session_id, tail)
        if loaded is None:
            return None
        self._loaded(*loaded)
        return loaded[0]

    async def alist_sessions(
        self, *, workspace: str | Path | None = None, limit: int = 50, offset: int = 0
    ) -> list[SessionSummary]:
        """``list_sessions`` off the event loop."""
        return await read_in_thread(
            functools.partial(self.list_sessions, workspace=workspace, limit=limit, offset=offset)
        )

    async def acount(self, *, workspace: str | Path | None = None) -> int:
        """``count`` off the event loop."""
        return await read_in_thread(functools.partial(self.count, workspace=workspace))

    async def adelete(self, session_id: str | SessionId) -> bool:
        """``delete`` off the event loop (a cancellation waits for the delete to end)."""
        return await write_in_thread(self.delete, session_id)

    async def aprune(
        self, *, older_than: timedelta, dry_run: bool = False, now: datetime | None = None
    ) -> list[str]:
        """``prune`` off the event loop (a cancellation waits for the prune to end)."""
        return await write_in_thread(
            functools.partial(self.prune, older_than=older_than, dry_run=dry_run, now=now)
        )

    async def ahistory_count(self, session_id: str | SessionId) -> int:
        """``history_count`` off the event loop."""
        return await read_in_thread(self.history_count, session_id)

    async def aall_sessions(self, page: int = 500) -> list[SessionSummary]:
        """``all_sessions`` off the event loop."""
        return await read_in_thread(self.all_sessions, page)

    async def ahistory(self, session_id: str | SessionId) -> list[Message]:
        """``history`` off the event loop."""
        return await read_in_thread(self.history, session_id)

    async def afork(self, session_id: str | SessionId, *, at: int | None = None) -> AgentSession:
        """``fork`` off the event loop (a cancellation waits for the fork's save to end)."""
        return await write_in_thread(functools.partial(self.fork, session_id, at=at))

    async def aload_message_data(
        self, session_id: str | SessionId, *, tail: int | None = None
    ) -> list[Any] | None:
        """``load_message_data`` off the event loop."""
        load = functools.partial(self.load_message_data, session_id, tail=tail)
        return await read_in_thread(load)

    async def aload_workspace_state(self, workspace: str | Path) -> WorkspaceState:
        """``load_workspace_state`` off the event loop."""
        return await read_in_thread(self.load_workspace_state, workspace)

    async def aattach_workspace(
        self,
        session: AgentSession,
        workspace: str | Path,
        *,
        max_usd: float | None = None,
        warn_at_percent: int = 80,
    ) -> WorkspaceBudgetTracker:
        """``attach_workspace``: the state is read in the worker thread, applied on the loop."""
        ws = workspace_key(workspace)
        state = await read_in_thread(self.load_workspace_state, ws)
        return self._attach(session, ws, state, max_usd, warn_at_percent)

    async def asave_workspace_of(self, session: AgentSession) -> None:
        """``save_workspace_of``: exported on the loop, written in the worker thread."""
        await write_in_thread(self._workspace_write_of(session))

    async def alist_ledger(
        self,
        *,
        session_id: str | SessionId | None = None,
        workspace: str | Path | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerRow]:
        """``list_ledger`` off the event loop."""
        return await read_in_thread(
            functools.partial(
                self.list_ledger,
                session_id=session_id,
                workspace=workspace,
                since=since,
                until=until,
            )
        )

    async def ausage(
        self,
        *,
        by: GroupBy | None = None,
        session_id: str | SessionId | None = None,
        workspace: str | Path | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerTotals]:
        """``usage`` off the event loop."""
        return await read_in_thread(
            functools.partial(
                self.usage,
                by=by,
                session_id=session_id,
                workspace=workspace,
                since=since,
                until=until,
            )
        )

    def akv(self, namespace: str) -> AsyncScopedKvStore:
        """``kv(namespace)`` with awaitable methods that run off the event loop."""
        return AsyncScopedKvStore(self.kv(namespace))

    def close(self) -> None:
        """Close the backend (and the capability store's backend, if it has one to close)."""
        self.backend.close()
        cap_backend = self.capabilities.backend if self.capabilities is not None else None
        if isinstance(cap_backend, ClosableBackend):
            cap_backend.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _state_of(self, session: AgentSession, capture_git: bool = True) -> dict[str, Any]:
        return session.state_data(git_capture=self.git_capture if capture_git else None)

    async def _acapture_git(self, session: AgentSession) -> None:
        """The save's git capture of the session's workspace, in a worker thread (a few
        ``lstat``s for ``fs``, two ``git`` processes for ``subprocess``)."""
        capture, workspace = self.git_capture, session.workspace_path
        if capture is not None and workspace is not None:
            session.git_state = await read_in_thread(capture, workspace)

    def _source(self, session_id: str) -> str:
        if self._describe is not None:
            return str(self._describe(session_id))
        return f"{self.backend.name} session {session_id}"

    def _summary_of(
        self, session: AgentSession, state: dict[str, Any], count: int
    ) -> SessionSummary:
        ws = state.get("workspace_path")
        return SessionSummary(
            id=session.id.bare,
            title=session.metadata.title,
            created_at=session.created_at,
            updated_at=utcnow(),
            message_count=count,
            token_count=session.token_count,
            workspace_path=workspace_key(ws) if ws else None,
            model=session.model,
            parent_id=session.parent_id.bare if session.parent_id else None,
        )

    # == administration (issue 15): the facade astrid.transfer and the CLI use ================
    # Whole-store operations for import, export, migrate and doctor, so no tool reaches into the
    # backend. Each is one backend call or a few; none changes what ``save``/``load`` do.

    @property
    def backend_name(self) -> str:
        """The storage backend's name (``sqlite``, ``file``, ``memory``, a plugin's)."""
        return self.backend.name

    @property
    def persistent(self) -> bool:
        """False when the backend declares ``persistent = False`` (memory); absent means True."""
        return is_persistent(self.backend)

    def same_store_as(self, other: SessionStore) -> bool:
        """True if both stores use one backend location (same backend type and path)."""
        return repr(self.backend) == repr(other.backend)

    def __repr__(self) -> str:
        return f"SessionStore({self.backend!r})"

    def location(self) -> str | None:
        """Where the backend keeps its data (its database file or directory), if it says."""
        if isinstance(self.backend, FileLocated) and self.backend.path is not None:
            return str(self.backend.path)
        if isinstance(self.backend, DirectoryLocated) and self.backend.directory is not None:
            return str(self.backend.directory)
        return None

    def describe(self, session_id: str | SessionId) -> str:
        """Where a session lives, as messages name it: its file, or the store and the id."""
        return self._source(validate_session_id(session_id))

    def schema_version(self) -> int:
        """The schema version the backend applied (0 for schemaless backends)."""
        return self.backend.schema_version()

    def problems(self) -> list[tuple[str, str]]:
        """(location, problem) of each entry the backend cannot list (the file backend: corrupt
        or misnamed session files); empty for a backend that lists everything it holds."""
        if not isinstance(self.backend, ProblemReporter):
            return []
        return [(str(where), str(what)) for where, what in self.backend.problems()]

    def sweep_temp_files(self) -> int:
        """Remove the temporary files killed writers left (the file backend); how many, those
        removed when the store was opened included."""
        if not isinstance(self.backend, TempFileSweeper):
            return 0
        return int(self.backend.swept_temp_files) + int(self.backend.sweep_temp_files())

    def not_found(self, session_id: str | SessionId) -> SessionNotFound:
        """The error for a session this store does not hold, naming the store."""
        sid = session_id.bare if isinstance(session_id, SessionId) else session_id
        return SessionNotFound(f"session {sid} not found in the {self.backend.name} store")

    def load_record(
        self, session_id: str | SessionId, *, tail: int | None = None
    ) -> SessionRecord | None:
        """A session as stored (state, messages, revision), not decoded; None if absent.

        ``tail=0`` reads the state only. ``decode_record`` checks it decodes.
        """
        return self.backend.load(validate_session_id(session_id), tail=tail)

    def decode_record(self, session_id: str | SessionId, record: SessionRecord) -> SessionDocument:
        """The document of a stored record (its loaded messages only); bad data is a
        ``SerializationError`` naming where the session lives."""
        sid = validate_session_id(session_id)
        data = dict(record.state)
        data["messages"] = record.messages
        return SessionDocument.from_data(data, source=self.describe(sid))

    def history_entries(self, session_id: str | SessionId) -> list[HistoryEntry]:
        """Every message ever stored for the session as JSON data, marked active or replaced."""
        return self.backend.history(validate_session_id(session_id))

    def stray_files(self) -> list[tuple[object, str]]:
        """What the backend's directory holds that is neither a session nor the backend's own
        (``StrayFileReporter``; none without it)."""
        if not isinstance(self.backend, StrayFileReporter):
            return []
        return list(self.backend.stray_files())

    def history_count(self, session_id: str | SessionId) -> int:
        """How many messages the session's history keeps, replaced ones included; read
        without loading them where the backend can (``HistoryCounter``)."""
        sid = validate_session_id(session_id)
        if isinstance(self.backend, HistoryCounter):
            return self.backend.count_history(sid)
        return len(self.backend.history(sid))

    def restore(
        self,
        summary: SessionSummary,
        state: dict[str, Any],
        messages: Sequence[Any],
        *,
        archived: Sequence[Any] = (),
        over: SessionRecord | None = None,
        ledger: Sequence[LedgerRow] = (),
    ) -> int:
        """Write a whole session as given (imports, copies) in ONE atomic backend write.

        ``state``: the document without messages; ``messages``: the active ones (JSON);
        ``archived``: replaced ones, recorded in its history before them. ``over``: the stored
        record this replaces (its messages stay in the history); None creates the session, which
        must not exist. ``ledger``: its spend-ledger rows, in the same write (dropped by a
        backend that keeps none). A kill at any moment leaves the previous state or the
        complete new one.
        """
        from dataclasses import replace as _with

        return self.backend.write(
            SessionWrite(
                session_id=validate_session_id(summary.id),
                expected_revision=over.revision if over is not None else None,
                state=dict(state),
                messages=list(messages),
                base_count=over.message_count if over is not None else 0,
                replace=over is not None,
                summary=_with(summary, message_count=len(messages)),
                archived=list(archived),
                ledger=tuple(ledger) if self._ledger is not None else (),
            )
        )

    def kv_store(self) -> KvStore:
        """The whole key-value store, every namespace (``kv`` gives a view of one)."""
        return self.backend.kv()

    @staticmethod
    def derived_namespaces(rows: Iterable[SessionSummary]) -> list[str]:
        """The key-value namespaces astrid keeps for these sessions, sorted: their deferred
        queues and their workspaces' state (the document and the older three-key layout)."""
        rows = list(rows)
        names = {deferred_namespace(row.id) for row in rows}
        for ws in {row.workspace_path for row in rows if row.workspace_path}:
            namespace = workspace_namespace(ws)
            names.add(namespace)
            names.update(f"{namespace}:{part}" for part in LEGACY_WORKSPACE_PARTS)
        return sorted(names)

    def copy_capabilities_to(self, target: SessionStore) -> tuple[int, int, int]:
        """Copy the persistent capability tokens, revocations and used markers into ``target``;
        return how many of each (0s when either has no capability store, or they share one)."""
        src = self.capabilities.backend if self.capabilities is not None else None
        dst = target.capabilities.backend if target.capabilities is not None else None
        if src is None or dst is None or src is dst:
            return 0, 0, 0
        tokens = 0
        for data in src.list_tokens():
            try:
                token_id = json.loads(data)["id"]
            except (ValueError, KeyError, TypeError):
                continue
            dst.put_token(str(token_id), data)
            tokens += 1
        revoked = src.revoked_ids()
        for token_id in revoked:
            dst.add_revoked(token_id)
        used = src.used_ids()
        for token_id in used:
            dst.add_used(token_id)
        return tokens, len(revoked), len(used)

    @staticmethod
    def configured_backend(config: Any) -> str:
        """The storage backend a ``LoadedConfig`` names (before anything is opened)."""
        return str(config.config.storage.backend)

    @staticmethod
    def backend_key(config: Any) -> str:
        """Where a ``LoadedConfig`` chooses its storage backend, as errors name it."""
        return f"{config.where}: key 'storage.backend'"

    @classmethod
    def open_to_inspect(cls, config: Any) -> SessionStore:
        """The store a ``LoadedConfig`` names, opened to inspect: its storage backend only,
        asked to create nothing (``PluginContext.read_only``; the file backend makes no
        directory, lock or index), and no capability store."""
        from .plugins import PluginContext, get_implementation

        where = cls.backend_key(config)
        impl = get_implementation("storage", cls.configured_backend(config), where=where)
        options = config.config.storage.options
        return cls(impl.create(options, PluginContext(home=config.home, read_only=True)))

    # == end of administration ================================================================


def _loaded_basis(session: AgentSession, state: dict[str, Any]) -> StateBasis | None:
    """A delta basis for a loaded session with many allowances and escape paths, so its first
    save need not rewrite them all.

    What the load refused (expired allowances, escape paths gone or never allowed) is kept in
    the basis and removed by the first delta. None when the loaded allowances are not the
    stored ones in the stored order less the refused ones (the save then writes whole).
    """
    allowances = state.get("allowances")
    escape_state = state.get("escape_state")
    paths = escape_state.get("remembered_paths") if isinstance(escape_state, dict) else None
    if not isinstance(allowances, list) or not isinstance(paths, list):
        return None
    if len(allowances) + len(paths) < KEYED_STATE_MIN:
        return None
    store, escape = session.allowance_store, session.escape_handler
    escape_version = escape.version
    version, until, ids = store.session_export_ids()
    stored_ids = [a.get("id") if isinstance(a, dict) else None for a in allowances]
    if not all(isinstance(i, str) for i in stored_ids):
        return None
    kept: set[Any] = set(ids)
    if [i for i in stored_ids if i in kept] != ids:
        return None  # reordered, or an entry the document did not hold
    loaded_paths = escape.remembered_paths
    stored_paths = {p for p in paths if isinstance(p, str)}
    if len(stored_paths) != len(paths) or not loaded_paths <= stored_paths:
        return None
    return StateBasis(
        store,
        version,
        until,
        escape,
        escape_version,
        dropped_allowances=frozenset(str(i) for i in stored_ids if i not in kept),
        dropped_paths=frozenset(stored_paths - loaded_paths),
    )


def _validated(model: Any, data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise SerializationError(f"{where}: {describe_validation_error(exc)}") from None


__all__ = [
    "ITEM_ALLOWANCE",
    "ITEM_ESCAPE_PATH",
    "KEYED_STATE_MIN",
    "WORKSPACE_STATE_KEY",
    "BatchDeleter",
    "ConcurrencyError",
    "DecodedLoader",
    "DirectoryLocated",
    "FileLocated",
    "GitState",
    "HistoryCounter",
    "HistoryEntry",
    "KeyedItem",
    "PersistenceFlag",
    "ProblemReporter",
    "SessionDescriber",
    "SessionRecord",
    "SessionStore",
    "SessionSummary",
    "SessionWrite",
    "StateDelta",
    "StateDeltaAcceptor",
    "StorageBackend",
    "StoredWorkspace",
    "StrayFileReporter",
    "TempFileSweeper",
    "WholeLister",
    "WorkspaceState",
    "WorkspaceStateWriter",
    "WorkspaceWrite",
    "apply_workspace_write",
    "check_messages_storable",
    "is_persistent",
    "join_keyed_state",
    "split_keyed_state",
    "takes_state_delta",
]


def open_store(config: Any = None) -> SessionStore:
    """A ``SessionStore`` built from configuration (a ``LoadedConfig``, a path, or discovery).

    The backend, token estimator and git capture are the implementations the config names.
    """
    from .config import LoadedConfig, load_config
    from .plugins import PluginContext, get_implementation

    loaded = config if isinstance(config, LoadedConfig) else load_config(config)
    cfg = loaded.config
    context = PluginContext(home=loaded.home)
    where = loaded.where
    backend = get_implementation(
        "storage", cfg.storage.backend, where=f"{where}: key 'storage.backend'"
    ).create(cfg.storage.options, context)
    estimator = get_implementation(
        "token_estimator", cfg.tokens.estimator, where=f"{where}: key 'tokens.estimator'"
    ).create(cfg.tokens.options, context)
    capture = get_implementation(
        "git_capture", cfg.git.capture, where=f"{where}: key 'git.capture'"
    ).create(cfg.git.options, context)
    cap_backend = get_implementation(
        "capability_store", cfg.capabilities.store, where=f"{where}: key 'capabilities.store'"
    ).create(cfg.capabilities.options, context)
    budget = BudgetConfig(
        session_max_usd=cfg.budget.session_max_usd,
        per_action_max_usd=cfg.budget.per_action_max_usd,
        warn_at_percent=cfg.budget.warn_at_percent,
    )
    return SessionStore(
        backend,
        token_estimator=estimator,
        git_capture=capture,
        budget=budget,
        workspace_max_usd=cfg.budget.workspace_max_usd,
        capabilities=CapabilityStore(cap_backend),
    )
