"""Deferred resolutions: actions queued for a human who was not there to decide.

Also home of the approval request types (``RiskAssessment``, ``ApprovalRequest``) because a
deferred ``approval_needed`` item carries the request; :mod:`astrid.security.approvals`
re-exports them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Literal
from uuid import UUID, uuid4

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from astrid.errors import ResolutionNotFound, StorageError
from astrid.security.actions import OrderedStrEnum, Permission, RiskLevel, SensitiveAction
from astrid.security.kv import ScopedKvStore
from astrid.timeutil import Timestamp, to_utc, utcnow

__all__ = [
    "MAX_LOAD_AGE",
    "PENDING_ACTION_ADAPTER",
    "ActionContext",
    "ApprovalNeeded",
    "ApprovalRequest",
    "BudgetExceededAction",
    "CapabilityMissing",
    "DeferredResolution",
    "DeferredResolutionStore",
    "ErrorResolution",
    "FallbackBehavior",
    "PendingAction",
    "Priority",
    "RiskAssessment",
    "format_request_id",
    "format_resolution_id",
]

logger = logging.getLogger(__name__)

MAX_LOAD_AGE = timedelta(hours=24)
"""Persisted items queued longer ago than this are purged on load (anti-replay)."""


def format_request_id(request_id: UUID) -> str:
    """The display form of a request id: ``req:<uuid>``."""
    return f"req:{request_id}"


def format_resolution_id(resolution_id: UUID) -> str:
    """The display form of a resolution id: ``resolution:<uuid>``."""
    return f"resolution:{resolution_id}"


def _display_timestamp(value: Timestamp) -> str:
    return to_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------
# Request types (shared with approvals.py)
# ---------------------------------------------------------------------------


class RiskAssessment(BaseModel):
    """How risky an action is, why, and what could reduce the risk."""

    model_config = ConfigDict(frozen=True)

    level: RiskLevel
    reason: str
    mitigations: list[str] = Field(default_factory=list)

    @classmethod
    def new(cls, level: RiskLevel, reason: str) -> RiskAssessment:
        """An assessment with no mitigations."""
        return cls(level=level, reason=reason, mitigations=[])

    def with_mitigation(self, mitigation: str) -> RiskAssessment:
        """A copy with one more mitigation."""
        return self.model_copy(update={"mitigations": [*self.mitigations, mitigation]})

    def with_mitigations(self, mitigations: Iterable[str]) -> RiskAssessment:
        """A copy with several more mitigations."""
        return self.model_copy(update={"mitigations": [*self.mitigations, *mitigations]})

    def requires_approval(self) -> bool:
        """True when the level requires an approval (High or Critical)."""
        return self.level.requires_approval()

    def __str__(self) -> str:
        return f"[{self.level}] {self.reason}"


class ApprovalRequest(BaseModel):
    """A request for a human to approve one sensitive action."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    action: SensitiveAction
    assessment: RiskAssessment
    context: str
    timestamp: Timestamp

    @classmethod
    def new(cls, action: SensitiveAction, context: str) -> ApprovalRequest:
        """A fresh request assessed at the action's default risk level."""
        return cls(
            id=uuid4(),
            action=action,
            assessment=RiskAssessment.new(
                action.default_risk_level(), f"{action.action_type} operation"
            ),
            context=context,
            timestamp=utcnow(),
        )

    def with_assessment(self, assessment: RiskAssessment) -> ApprovalRequest:
        """A copy with ``assessment`` replacing the default one."""
        return self.model_copy(update={"assessment": assessment})

    def __str__(self) -> str:
        return f"[{self.assessment.level}] {self.action.summary()} - {self.context}"


# ---------------------------------------------------------------------------
# Deferred item types
# ---------------------------------------------------------------------------

class Priority(OrderedStrEnum):
    """How urgent a deferred item is; ordered Low < Normal < High < Critical."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"


class FallbackBehavior(StrEnum):
    """What the agent does meanwhile when an action cannot be resolved now."""

    BLOCK = "block"
    SKIP = "skip"
    SAFE_DEFAULT = "safe_default"
    QUEUE = "queue"

    def __str__(self) -> str:
        return self.value


class ActionContext(BaseModel):
    """What the agent was doing when the item was deferred."""

    model_config = ConfigDict(frozen=True)

    goal: str
    task: str | None = None

    @classmethod
    def new(cls, goal: str) -> ActionContext:
        """A context with a goal and no task."""
        return cls(goal=goal, task=None)

    def with_task(self, task: str) -> ActionContext:
        """A copy with ``task`` set."""
        return self.model_copy(update={"task": task})


class _Pending(BaseModel):
    model_config = ConfigDict(frozen=True)

    def summary(self) -> str:
        """A one-line human description of the pending action."""
        return type(self).__name__

    def __str__(self) -> str:
        return self.summary()


class ApprovalNeeded(_Pending):
    """An approval was needed but nobody answered."""

    type: Literal["approval_needed"] = "approval_needed"
    request: ApprovalRequest

    def summary(self) -> str:
        """``Approval needed: <action summary>``."""
        return f"Approval needed: {self.request.action.summary()}"


class BudgetExceededAction(_Pending):
    """An action would exceed the budget (amounts kept as strings, as in the original)."""

    type: Literal["budget_exceeded"] = "budget_exceeded"
    requested: str
    available: str

    def summary(self) -> str:
        """``Budget exceeded: requested $X, available $Y``."""
        return f"Budget exceeded: requested ${self.requested}, available ${self.available}"


class CapabilityMissing(_Pending):
    """A capability needed for the action is missing."""

    type: Literal["capability_missing"] = "capability_missing"
    resource: str
    permission: Permission

    def summary(self) -> str:
        """``Missing capability: <perm> on <resource>``."""
        return f"Missing capability: {self.permission} on {self.resource}"


class ErrorResolution(_Pending):
    """An error needs a human to decide how to go on."""

    type: Literal["error_resolution"] = "error_resolution"
    error: str
    attempted_action: str

    def summary(self) -> str:
        """``Error during <attempted_action>: <error>``."""
        return f"Error during {self.attempted_action}: {self.error}"


PendingAction = Annotated[
    ApprovalNeeded | BudgetExceededAction | CapabilityMissing | ErrorResolution,
    Field(discriminator="type"),
]
"""What a deferred item waits on (internally tagged by ``type``)."""

PENDING_ACTION_ADAPTER: TypeAdapter[PendingAction] = TypeAdapter(PendingAction)


class DeferredResolution(BaseModel):
    """One item of the deferred queue (JSON identical to the original)."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    action: PendingAction
    reason: str
    queued_at: Timestamp
    priority: Priority
    context: ActionContext
    fallback_taken: str | None = None

    @classmethod
    def new(
        cls,
        action: PendingAction,
        reason: str,
        priority: Priority,
        context: ActionContext,
    ) -> DeferredResolution:
        """A fresh item queued now, with a new id and no fallback recorded."""
        return cls(
            id=uuid4(),
            action=action,
            reason=reason,
            queued_at=utcnow(),
            priority=priority,
            context=context,
            fallback_taken=None,
        )

    def with_fallback(self, fallback: str) -> DeferredResolution:
        """A copy recording the fallback that was taken."""
        return self.model_copy(update={"fallback_taken": fallback})

    def is_older_than(self, max_age: timedelta) -> bool:
        """True if queued strictly before ``now - max_age``."""
        return self.queued_at < utcnow() - max_age

    def __str__(self) -> str:
        return (
            f"[{self.priority}] {format_resolution_id(self.id)} - {self.action.summary()} "
            f"(queued {_display_timestamp(self.queued_at)})"
        )


# ---------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------


class DeferredResolutionStore:
    """The deferred queue: in memory, optionally mirrored to a ``ScopedKvStore``; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._items: dict[UUID, DeferredResolution] = {}
        self._persistent: ScopedKvStore | None = None

    @classmethod
    def with_persistence(cls, store: ScopedKvStore) -> DeferredResolutionStore:
        """A store backed by ``store``, loaded from it (items older than 24 h are purged)."""
        queue = cls()
        queue._persistent = store
        queue._load()
        return queue

    def _load(self) -> None:
        store = self._persistent
        if store is None:
            return
        try:
            keys = store.list_keys()
        except StorageError:
            raise
        except Exception as exc:
            raise StorageError(
                f"cannot list deferred resolutions in namespace {store.namespace!r}: {exc}"
            ) from exc
        loaded: list[DeferredResolution] = []
        for key in keys:
            try:
                data = store.get_json(key)
                if data is None:
                    continue
                resolution = DeferredResolution.model_validate(data)
            except Exception as exc:
                logger.warning(
                    "skipping undecodable deferred resolution %r in namespace %r: %s",
                    key,
                    store.namespace,
                    exc,
                )
                continue
            if resolution.is_older_than(MAX_LOAD_AGE):
                logger.info(
                    "discarding stale deferred resolution %r (queued %s, older than 24h)",
                    key,
                    _display_timestamp(resolution.queued_at),
                )
                self._delete_quietly(key)
                continue
            loaded.append(resolution)
        with self._lock:
            for resolution in loaded:
                self._items[resolution.id] = resolution

    def _delete_quietly(self, key: str) -> None:
        store = self._persistent
        if store is None:
            return
        try:
            store.delete(key)
        except Exception as exc:
            logger.warning(
                "cannot delete deferred resolution %r from namespace %r: %s",
                key,
                store.namespace,
                exc,
            )

    @property
    def has_persistence(self) -> bool:
        """True when items can be written to a key-value store."""
        return self._persistent is not None

    def queue(self, resolution: DeferredResolution) -> UUID:
        """Add ``resolution`` to memory only; return its id."""
        with self._lock:
            self._items[resolution.id] = resolution
        return resolution.id

    def queue_persistent(self, resolution: DeferredResolution) -> UUID:
        """Write ``resolution`` to the store first (failing fast), then add it to memory."""
        store = self._persistent
        if store is not None:
            try:
                store.set_json(str(resolution.id), resolution)
            except StorageError:
                raise
            except Exception as exc:
                raise StorageError(
                    f"cannot persist deferred resolution {format_resolution_id(resolution.id)} "
                    f"in namespace {store.namespace!r}: {exc}"
                ) from exc
        return self.queue(resolution)

    def queue_auto(self, resolution: DeferredResolution) -> UUID:
        """``queue_persistent`` when a store is configured, else ``queue``."""
        if self._persistent is not None:
            return self.queue_persistent(resolution)
        return self.queue(resolution)

    async def aqueue_auto(self, resolution: DeferredResolution) -> UUID:
        """``queue_auto`` for code on an event loop: the store write runs in a worker thread,
        and a cancellation waits for it (the item is then in the store and in memory)."""
        if self._persistent is None:
            return self.queue(resolution)
        from astrid.offload import write_in_thread

        return await write_in_thread(self.queue_persistent, resolution)

    def get_pending(self) -> list[DeferredResolution]:
        """Every item, highest priority first, oldest first within a priority."""
        with self._lock:
            items = list(self._items.values())
        return sorted(items, key=lambda r: (-r.priority.rank, r.queued_at))

    def get(self, resolution_id: UUID) -> DeferredResolution | None:
        """The item with that id, or None."""
        with self._lock:
            return self._items.get(resolution_id)

    def resolve(self, resolution_id: UUID) -> DeferredResolution:
        """Remove and return the item (memory only); missing is ``ResolutionNotFound``."""
        with self._lock:
            item = self._items.pop(resolution_id, None)
        if item is None:
            raise ResolutionNotFound(f"resolution not found: {format_resolution_id(resolution_id)}")
        return item

    def resolve_persistent(self, resolution_id: UUID) -> DeferredResolution:
        """Remove the item from memory (missing is an error), then from the store (quietly)."""
        item = self.resolve(resolution_id)
        self._delete_quietly(str(resolution_id))
        return item

    def cleanup_old(self, max_age: timedelta) -> int:
        """Remove items older than ``max_age`` (from the store too); return how many."""
        with self._lock:
            stale = [rid for rid, r in self._items.items() if r.is_older_than(max_age)]
            for rid in stale:
                del self._items[rid]
        for rid in stale:
            self._delete_quietly(str(rid))
        return len(stale)

    def count(self) -> int:
        """How many items are pending."""
        with self._lock:
            return len(self._items)

    def __repr__(self) -> str:
        return (
            f"DeferredResolutionStore(count={self.count()}, has_persistence={self.has_persistence})"
        )
