"""``AgentSession``: a conversation and its security state. No I/O of its own.

A port of the original ``AgentSession`` (``session.rs``): the same fields, constructors, builders
and methods, with object identity kept where the original shares (``Arc``) a store. Persistence
goes through ``to_document`` / ``from_document``; the ``SessionStore`` moves documents.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, SupportsIndex, TypeVar, overload

from .document import GitState, SessionDocument, SessionMetadata
from .errors import StorageError
from .ids import SessionId
from .ledger import LedgerRow
from .messages import Message, MessageRole
from .security.allowances import Allowance, AllowanceStore
from .security.approvals import ApprovalManager
from .security.audit import PendingAudit
from .security.budget import BudgetTracker, WorkspaceBudgetTracker
from .security.capabilities import CapabilityStore
from .security.deferred import DeferredResolutionStore
from .security.escape import EscapeHandler, WorkspaceBoundary, WorkspaceConfig
from .security.kv import ScopedKvStore
from .timeutil import format_rfc3339, to_utc, utcnow
from .tokens import DEFAULT_ESTIMATOR, TokenEstimator

GitCapture = Callable[[Path], GitState | None]
"""Reads the git state of a workspace directory (None outside a repository)."""

NO_USER = bytes(8)


def _user_id(value: bytes | bytearray | Iterable[int]) -> bytes:
    raw = bytes(value)
    if len(raw) != 8:
        raise ValueError(f"user_id must be 8 bytes, got {len(raw)}")
    return raw


def _git_data(state: GitState | None) -> dict[str, Any] | None:
    """``state.model_dump(mode="json")`` (None without a state); plain for the usual shape."""
    if not state:
        return None
    if state.__pydantic_extra__ or type(state) is not GitState:
        return state.model_dump(mode="json")
    return {"branch": state.branch, "commit": state.commit}


def _lower(a: int | None, b: int | None) -> int | None:
    """The lower of two optional indexes (None: no index)."""
    if a is None:
        return b
    return a if b is None or a <= b else b


@dataclass(frozen=True)
class StateBasis:
    """The versions of a session's allowance-store and escape-handler journals that a store's
    keyed copy of its allowances and escape paths reflects (see ``astrid.store.StateDelta``)."""

    allowances: AllowanceStore
    allowance_version: int
    until: datetime | None
    escape: EscapeHandler
    escape_version: int
    dropped_allowances: frozenset[str] = frozenset()
    """Ids stored but refused by the load (expired): the next delta removes them."""
    dropped_paths: frozenset[str] = frozenset()
    """Escape paths stored but refused by the load (gone, never allowed): removed likewise."""


_R = TypeVar("_R")


def _without(pending: list[_R], written: Iterable[_R]) -> list[_R]:
    """``pending`` less the very objects in ``written`` (rows have no other identity here)."""
    ids = {id(item) for item in written}
    return [item for item in pending if id(item) not in ids] if ids else pending


class ChangeSet:
    """What changed in a session since a store last loaded or saved it: what the store saves.

    The store records what it holds (``store``, ``revision``, ``count``, ``offset``, the state's
    ``basis``); the session's ``MessageList`` records its edits. Messages past the stored ones
    (index ``count - offset`` on) are appended since; ``rewritten_from`` is the lowest index
    replaced, removed or inserted since (None: only appends), and the messages from there on
    are what replaced the stored ones. The state is small and written whole with every save,
    except the allowances and escape paths of a keyed backend, which go by the journal
    versions in ``basis``. A change set belongs to one store: saving the session to another
    is a create there (every message), after which it belongs to that one.
    """

    __slots__ = (
        "_async_save",
        "_low",
        "_writing",
        "audit",
        "basis",
        "count",
        "ledger",
        "offset",
        "revision",
        "session_bound",
        "store",
    )

    def __init__(self, *, session_bound: bool = False) -> None:
        self.session_bound = session_bound
        """True for a session's own change set (a list recording in it is that session's)."""
        self.store: object | None = None
        """The token of the store that last loaded or saved the session (None: none did)."""
        self.revision = 0
        self.count = 0
        """How many messages the store holds for the session (its stored message count)."""
        self.offset = 0
        """How many of them come before ``session.messages[0]`` (a tail load)."""
        self.basis: StateBasis | None = None
        self.ledger: list[LedgerRow] = []
        """Spend-ledger rows of calls made since the last save: the next save writes them in
        its own atomic write (``astrid.ledger``); a failed save keeps them for the next."""
        self.audit: list[PendingAudit] = []
        """Security decisions recorded since the last save (``astrid.security.audit``): the
        next save chains, signs and stores them in its own atomic write, like ``ledger``."""
        self._low: int | None = None
        self._writing: int | None = None
        """The lowest rewritten index of writes begun and not yet recorded."""
        self._async_save: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    @property
    def rewritten_from(self) -> int | None:
        """The lowest message index rewritten since the stored state (None: only appends)."""
        return _lower(self._low, self._writing)

    def rewrote(self, index: int) -> None:
        """Record that the message at ``index`` (and maybe later ones) changed."""
        low = self._low
        if low is None or index < low:
            self._low = max(0, index)

    def begin_write(self) -> None:
        """A store is writing every message change recorded so far: record edits afresh.

        What it writes stays in ``rewritten_from`` until ``stored`` records the write, so a
        write that fails leaves it pending (the next write carries it again).
        """
        self._writing = _lower(self._writing, self._low)
        self._low = None

    def stored(
        self,
        store: object,
        revision: int,
        count: int,
        offset: int,
        basis: StateBasis | None,
        *,
        messages: bool,
    ) -> None:
        """Record what ``store`` now holds; ``messages``: the write carried the message changes
        begun by ``begin_write`` (a load passes True with nothing begun)."""
        if messages:
            self._writing = None
        self.store, self.revision, self.count, self.offset = store, revision, count, offset
        self.basis = basis

    def loaded(
        self, store: object, revision: int, count: int, offset: int, basis: StateBasis | None
    ) -> None:
        """Record a fresh load from ``store``: nothing has changed since."""
        self._low = self._writing = None
        self.stored(store, revision, count, offset, basis, messages=True)

    def rows_saved(self, ledger: Iterable[LedgerRow], audit: Iterable[PendingAudit]) -> None:
        """Drop what a save wrote from the pending ledger rows and audit entries (those added
        while it ran stay for the next save)."""
        self.ledger = _without(self.ledger, ledger)
        self.audit = _without(self.audit, audit)

    def save_lock(self) -> asyncio.Lock:
        """The lock that runs the session's async saves one at a time (one per event loop)."""
        loop = asyncio.get_running_loop()
        held = self._async_save
        if held is None or held[0] is not loop:
            held = self._async_save = (loop, asyncio.Lock())
        return held[1]

    def __repr__(self) -> str:
        return (
            f"ChangeSet(revision={self.revision}, count={self.count}, offset={self.offset}, "
            f"rewritten_from={self.rewritten_from})"
        )


class MessageList(list[Message]):
    """A session's messages: a ``list`` that records its edits in a ``ChangeSet``.

    Appending (``append``, ``extend``, ``+=``) is the plain ``list`` operation: it changes no
    earlier message and records nothing (the change set knows how many are stored). Every other
    change (item or slice assignment, ``del``, ``insert``, ``pop``, ``remove``, ``clear``,
    ``sort``, ``reverse``, ``*=``) lowers ``changes.rewritten_from``. A session's list records
    in the session's change set; a list of its own (or a copy) in a fresh one.
    """

    __slots__ = ("_changes",)

    def __init__(self, messages: Iterable[Message] = (), *, changes: ChangeSet | None = None):
        super().__init__(messages)
        self._changes = changes if changes is not None else ChangeSet()

    @property
    def changes(self) -> ChangeSet:
        """The change set this list records its edits in."""
        return self._changes

    def _changed(self, index: int) -> None:
        self._changes.rewrote(index)

    def _slice_start(self, key: slice) -> int:
        start, stop, step = key.indices(len(self))
        return min(start, stop) if step < 0 else start

    @overload
    def __setitem__(self, key: SupportsIndex, value: Message, /) -> None: ...
    @overload
    def __setitem__(self, key: slice, value: Iterable[Message], /) -> None: ...
    def __setitem__(self, key: Any, value: Any, /) -> None:
        low = self._slice_start(key) if isinstance(key, slice) else self._index(key)
        super().__setitem__(key, value)
        self._changed(low)

    def __delitem__(self, key: SupportsIndex | slice, /) -> None:
        low = self._slice_start(key) if isinstance(key, slice) else self._index(key)
        super().__delitem__(key)
        self._changed(low)

    def _index(self, key: SupportsIndex) -> int:
        index = key.__index__()
        return index + len(self) if index < 0 else index

    def insert(self, index: SupportsIndex, value: Message, /) -> None:
        """Insert before ``index`` (recorded as a change from there)."""
        n = len(self)
        where = index.__index__()
        where = max(0, where + n) if where < 0 else min(where, n)
        super().insert(where, value)
        self._changed(where)

    def pop(self, index: SupportsIndex = -1, /) -> Message:
        """Remove and return the message at ``index`` (the last by default)."""
        where = self._index(index)
        value = super().pop(index)
        self._changed(where)
        return value

    def remove(self, value: Message, /) -> None:
        """Remove the first message equal to ``value``."""
        self.__delitem__(self.index(value))

    def clear(self) -> None:
        """Remove every message."""
        super().clear()
        self._changed(0)

    def sort(self, *args: Any, **kwargs: Any) -> None:
        """Sort in place (recorded as a change of every message)."""
        super().sort(*args, **kwargs)
        self._changed(0)

    def reverse(self) -> None:
        """Reverse in place (recorded as a change of every message)."""
        super().reverse()
        self._changed(0)

    def __imul__(self, count: SupportsIndex, /) -> MessageList:
        if count.__index__() <= 0:
            self.clear()
        else:
            super().__imul__(count)  # repeats after the end: an append
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        # A copy (copy, deepcopy, pickle) is a new list with a change set of its own.
        return (MessageList, (list(self),))


class AgentSession:
    """One agent conversation with its security state (allowances, approvals, budget, ...).

    ``allowance_store``, ``capabilities`` and ``budget_tracker`` may be shared with a parent or
    child session (the same objects); ``approval_manager`` and its deferred queue never are.
    """

    def __init__(
        self,
        system_prompt: str = "",
        *,
        user_id: bytes | bytearray | Iterable[int] = NO_USER,
        session_id: SessionId | str | None = None,
        token_estimator: TokenEstimator | None = None,
        allowance_store: AllowanceStore | None = None,
        capabilities: CapabilityStore | None = None,
        budget_tracker: BudgetTracker | None = None,
    ) -> None:
        self.id: SessionId = (
            SessionId.new() if session_id is None else SessionId.parse(session_id)
        )
        self.user_id: bytes = _user_id(user_id)
        self._changes = ChangeSet(session_bound=True)
        self._messages = MessageList(changes=self._changes)
        self.capabilities: CapabilityStore = (
            capabilities if capabilities is not None else CapabilityStore()
        )
        self.allowance_store: AllowanceStore = (
            allowance_store if allowance_store is not None else AllowanceStore()
        )
        self.approval_manager: ApprovalManager = ApprovalManager(
            self.allowance_store, DeferredResolutionStore(), allowance_owner=self.id.bare
        )
        self.system_prompt: str = system_prompt
        self.created_at: datetime = utcnow()
        self.token_count: int = 0
        self.metadata: SessionMetadata = SessionMetadata()
        self.escape_handler: EscapeHandler = EscapeHandler()
        self.budget_tracker: BudgetTracker = (
            budget_tracker if budget_tracker is not None else BudgetTracker()
        )
        self.workspace_budget_tracker: WorkspaceBudgetTracker | None = None
        self.workspace_path: Path | None = None
        self.model: str | None = None
        self.is_subagent: bool = False
        self.plugin_context: str | None = None
        self.parent_id: SessionId | None = None
        self.git_state: GitState | None = None
        self.token_estimator: TokenEstimator = token_estimator or DEFAULT_ESTIMATOR
        self.extra_fields: dict[str, Any] = {}
        self._approvals_counted = 0
        self._created_text: tuple[datetime, str] | None = None

    @property
    def changes(self) -> ChangeSet:
        """What changed since a store last loaded or saved the session (``SessionStore.save``
        writes it and records the new stored state here)."""
        return self._changes

    @property
    def messages(self) -> MessageList:
        """The conversation, oldest first; edit it in place or assign a new list.

        Every change is recorded in ``changes`` (see ``MessageList``) and saved by the next
        ``SessionStore.save``. Assigning a ``MessageList`` of no session keeps it (it records
        here from now on); anything else is copied into a new one. From the first place where
        the new list does not hold the old list's message, it counts as rewritten. The old
        list is detached: its later edits change nothing here.
        """
        return self._messages

    @messages.setter
    def messages(self, value: Iterable[Message]) -> None:
        previous = self._messages
        if isinstance(value, MessageList) and not value._changes.session_bound:
            messages = value
            messages._changes = self._changes
        else:
            messages = MessageList(value, changes=self._changes)
        if messages is not previous:
            n = min(len(messages), len(previous))
            same = next((i for i in range(n) if messages[i] is not previous[i]), n)
            if same < len(previous):  # a message replaced or dropped (else only appended)
                self._changes.rewrote(same)
            previous._changes = ChangeSet()
        self._messages = messages

    # -- constructors (the original's names) ------------------------------------------------

    @classmethod
    def new(
        cls, user_id: bytes | Iterable[int] = NO_USER, system_prompt: str = ""
    ) -> AgentSession:
        """A new session with a random id and fresh stores."""
        return cls(system_prompt, user_id=user_id)

    @classmethod
    def with_id(
        cls,
        session_id: SessionId | str,
        user_id: bytes | Iterable[int] = NO_USER,
        system_prompt: str = "",
    ) -> AgentSession:
        """A new session with a caller-given id and fresh stores."""
        return cls(system_prompt, user_id=user_id, session_id=session_id)

    @classmethod
    def with_shared_stores(
        cls,
        session_id: SessionId | str,
        user_id: bytes | Iterable[int],
        system_prompt: str,
        allowance_store: AllowanceStore,
        capabilities: CapabilityStore,
        budget_tracker: BudgetTracker,
    ) -> AgentSession:
        """A child session: the three stores are the given objects; approvals are its own."""
        session = cls(
            system_prompt,
            user_id=user_id,
            session_id=session_id,
            allowance_store=allowance_store,
            capabilities=capabilities,
            budget_tracker=budget_tracker,
        )
        session.is_subagent = True
        return session

    def child(
        self, system_prompt: str, *, session_id: SessionId | str | None = None
    ) -> AgentSession:
        """A sub-agent session of this one.

        Shares the allowance, capability and budget stores (as ``with_shared_stores``) and, unlike
        the original, also the workspace budget, workspace path, model and token estimator, so a
        sub-agent's spend counts against the workspace too. ``parent_id`` links it back here.
        """
        session = AgentSession.with_shared_stores(
            session_id if session_id is not None else SessionId.new(),
            self.user_id,
            system_prompt,
            self.allowance_store,
            self.capabilities,
            self.budget_tracker,
        )
        session.parent_id = self.id
        session.workspace_budget_tracker = self.workspace_budget_tracker
        session.workspace_path = self.workspace_path
        session.model = self.model
        session.token_estimator = self.token_estimator
        return session

    # -- builders (mutate and return self, for chaining) ------------------------------------

    def with_workspace(self, path: str | Path) -> AgentSession:
        """Set the workspace path (used for workspace-scoped listing and git capture)."""
        self.workspace_path = Path(path)
        return self

    def with_model(self, model: str) -> AgentSession:
        """Set the model name."""
        self.model = model
        return self

    def with_capability_store(self, store: CapabilityStore) -> AgentSession:
        """Replace the capability store (e.g. with a persistent, shared one)."""
        self.capabilities = store
        return self

    def with_workspace_budget(self, tracker: WorkspaceBudgetTracker) -> AgentSession:
        """Attach the workspace's cumulative budget tracker (shared by its sessions)."""
        self.workspace_budget_tracker = tracker
        return self

    def with_token_estimator(self, estimator: TokenEstimator) -> AgentSession:
        """Use another token estimator for messages added from now on."""
        self.token_estimator = estimator
        return self

    def with_persistent_deferred_queue(self, store: ScopedKvStore) -> AgentSession:
        """Back the deferred-approval queue with a scoped key-value store.

        Unlike the original, the approval manager keeps its registered handler, timeout and
        fallback. Raises ``StorageError`` if the queue cannot be loaded.
        """
        try:
            queue = DeferredResolutionStore.with_persistence(store)
        except StorageError:
            raise
        except Exception as exc:  # a backend's own error type
            raise StorageError(
                f"session {self.id.bare}: cannot load deferred queue from "
                f"namespace {store.namespace!r}: {exc}"
            ) from exc
        self.approval_manager = self.approval_manager.with_deferred_queue(queue)
        return self

    # -- workspace allowances ---------------------------------------------------------------

    def import_workspace_allowances(self, allowances: Iterable[Allowance]) -> None:
        """Load workspace allowances (valid ones only; same id replaces)."""
        self.allowance_store.import_allowances(list(allowances))

    def export_workspace_allowances(self) -> list[Allowance]:
        """Valid, non-session allowances tied to a workspace root, for persistence."""
        return self.allowance_store.export_workspace_allowances()

    def add_session_allowance(self, allowance: Allowance) -> None:
        """Add an allowance owned by this session (``end_session`` of this session removes it)."""
        self.allowance_store.add_allowance(allowance, owner=self.id.bare)

    # -- conversation -----------------------------------------------------------------------

    def add_message(self, message: Message) -> None:
        """Append a message, add its token estimate and keep the metadata counters."""
        self.messages.append(message)
        self.token_count += max(0, self.token_estimator.estimate(message))
        if message.role == MessageRole.USER:
            self.metadata.turn_count += 1
        if message.role == MessageRole.ASSISTANT:
            calls = message.tool_calls()
            if calls:
                self.metadata.tool_call_count += len(calls)

    def last_messages(self, n: int) -> list[Message]:
        """The last ``min(n, len)`` messages, oldest first."""
        if n <= 0:
            return []
        return self.messages[-n:]

    def clear_messages(self) -> None:
        """Drop every message and reset the token count (metadata and stores untouched)."""
        self.messages = []
        self.token_count = 0

    def recount_tokens(self) -> int:
        """Recompute ``token_count`` from the messages with the current estimator."""
        self.token_count = sum(max(0, self.token_estimator.estimate(m)) for m in self.messages)
        return self.token_count

    def duration(self) -> timedelta:
        """Time since creation (for a restored session this includes downtime)."""
        return utcnow() - self.created_at

    def is_near_limit(self, max_tokens: int, threshold: float) -> bool:
        """True when ``token_count > max_tokens * threshold`` (strict, as in the original)."""
        return float(self.token_count) > float(max_tokens) * threshold

    def end_session(self) -> None:
        """Remove session-scoped allowances.

        A top-level session removes every session allowance in its store (the original's
        behaviour). A sub-agent removes only those it added itself, so ending a child never wipes
        its parent's session allowances.
        """
        if self.is_subagent:
            self.allowance_store.clear_session_allowances(owner=self.id.bare)
        else:
            self.allowance_store.clear_session_allowances()

    def record_approvals(self) -> int:
        """Fold approvals granted since the last call into ``metadata.approval_count``."""
        granted = self.approval_manager.approvals_granted
        if granted < self._approvals_counted:  # the manager was replaced
            self._approvals_counted = 0
        new = granted - self._approvals_counted
        if new > 0:
            self.metadata.approval_count += new
            self._approvals_counted = granted
        return self.metadata.approval_count

    # -- persistence ------------------------------------------------------------------------

    def to_document(
        self, *, git_capture: GitCapture | None = None, include_messages: bool = True
    ) -> SessionDocument:
        """The persisted form (the original's ``SerializableSession``).

        Git state is captured only when ``git_capture`` is given and a workspace is set;
        otherwise the last known state is written back unchanged. Without messages the
        document is the session's state alone (what a store writes next to new messages).
        """
        data = self.state_data(git_capture=git_capture)
        data["messages"] = list(self.messages) if include_messages else []
        return SessionDocument.from_data(data, source=f"session {self.id.bare}")

    def state_data(
        self, *, git_capture: GitCapture | None = None, keyed: bool = False
    ) -> dict[str, Any]:
        """The document without its messages, as JSON-ready data (the store's hot path).

        The dict and the lists and dicts it holds directly are the caller's; deeper values (each
        allowance's dict) may be shared with the stores' caches and must not be modified.
        ``keyed``: without ``allowances`` and the escape state's ``remembered_paths`` (a backend
        storing those as keyed rows gets only their changes, see ``StateDelta``).
        """
        self.record_approvals()
        if git_capture is not None and self.workspace_path is not None:
            self.git_state = git_capture(self.workspace_path)
        if self._created_text is None or self._created_text[0] != self.created_at:
            self._created_text = (self.created_at, format_rfc3339(self.created_at))
        data: dict[str, Any] = dict(
            id=self.id.bare,
            user_id=self.user_id.hex(),
            system_prompt=self.system_prompt,
            created_at=self._created_text[1],
            token_count=self.token_count,
            metadata=self.metadata.model_dump(mode="json"),
            allowances=None if keyed else self.allowance_store.export_session_allowances_data(),
            budget_snapshot=self.budget_tracker.snapshot_data(),
            escape_state=self.escape_handler.export_state_data(paths=not keyed),
            workspace_path=str(self.workspace_path) if self.workspace_path is not None else None,
            model=self.model,
            git_state=_git_data(self.git_state),
        )
        if keyed:
            del data["allowances"]
        if self.parent_id is not None:
            data["parent_id"] = self.parent_id.bare
        for key, value in self.extra_fields.items():
            data.setdefault(key, value)
        return data

    @classmethod
    def from_document(
        cls,
        doc: SessionDocument,
        *,
        token_estimator: TokenEstimator | None = None,
        boundary: WorkspaceBoundary | None = None,
    ) -> AgentSession:
        """Rebuild a session from its document (fresh stores, restored security state).

        Restored escape paths are re-checked against the never-allowed paths of ``boundary``
        (by default the standard list), so a tampered document cannot unlock ``/etc``.
        """
        session = cls(
            doc.system_prompt,
            user_id=bytes.fromhex(doc.user_id),
            session_id=doc.id,
            token_estimator=token_estimator,
        )
        session.messages = list(doc.messages)
        session.created_at = to_utc(doc.created_at)
        session.token_count = doc.token_count
        session.metadata = doc.metadata.model_copy(deep=True)
        session.workspace_path = Path(doc.workspace_path) if doc.workspace_path else None
        session.model = doc.model
        session.git_state = doc.git_state.model_copy() if doc.git_state is not None else None
        if doc.allowances:
            session.allowance_store.import_allowances(doc.allowances, owner=session.id.bare)
        if doc.budget_snapshot is not None:
            session.budget_tracker = BudgetTracker.restore(doc.budget_snapshot)
        if doc.escape_state is not None:
            check = boundary or WorkspaceBoundary(
                WorkspaceConfig.new(session.workspace_path or Path("/"))
            )
            session.escape_handler.restore_state(doc.escape_state, boundary=check)
        if doc.parent_id is not None:
            session.parent_id = SessionId.parse(doc.parent_id)
        session.extra_fields = dict(doc.__pydantic_extra__ or {})
        return session

    def __repr__(self) -> str:
        return (
            f"AgentSession(id={self.id.bare!r}, messages={len(self.messages)}, "
            f"tokens={self.token_count}, subagent={self.is_subagent})"
        )
