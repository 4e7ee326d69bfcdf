"""Session and workspace budgets (the original's ``astrid_approval::budget``), with our fixes.

The checks, clamps, JSON shapes and display strings follow the original. Our deliberate
differences (design §5 item 4):

* Every amount handed to a tracker (``check_budget``, ``check_and_reserve``, ``reserve``,
  ``settle``, ``record_cost``, ``refund_cost``) must be a finite, non-negative real number: NaN,
  infinities, negative amounts, non-numbers and integers too large for a float raise
  :class:`~astrid.errors.InvalidCost`, and so does a cost that would make the running total
  overflow (the original let a NaN estimate through as within budget, ignored bad recorded costs
  and could reach ``inf``, which then read back as 0).
* An estimate can be reserved (``reserve``) and later settled with the actual cost (``settle``)
  or handed back on denial or deferral (``release``); both are idempotent.
* Budget limits themselves must be real numbers: a NaN limit would disable every check.
* A stored spend must be a finite, non-negative number: a snapshot holding NaN, an infinity,
  ``null`` or a negative spend does not validate (the original read it back as 0, a reset).
* A workspace tracker remembers the stored total it last read and sends only what it charged
  since (``sync``), so sessions in any number of processes add up (see ``docs/storage.md``).
"""

from __future__ import annotations

import math
import numbers
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from astrid._exports import module_attributes
from astrid.errors import (
    BudgetExceeded,
    InvalidBudgetLimit,
    InvalidCost,
    ReservationError,
)
from astrid.money import money
from astrid.security._extras import unknown_keys, with_unknown_keys
from astrid.timeutil import Timestamp, format_rfc3339, utcnow

__all__ = [
    "BudgetConfig",
    "BudgetReservation",
    "BudgetResult",
    "BudgetSnapshot",
    "BudgetTracker",
    "BudgetValidator",
    "BudgetWarning",
    "DualReservation",
    "Exceeded",
    "ExceededReason",
    "InvalidBudgetLimit",
    "InvalidCost",
    "ReservationError",
    "WarnAndAllow",
    "WithinBudget",
    "WorkspaceBudgetSnapshot",
    "WorkspaceBudgetTracker",
]


# --------------------------------------------------------------------------------------------
# helpers


def _require_cost(cost: float) -> float:
    """``cost`` as a float; ``InvalidCost`` unless it is a finite, non-negative real number."""
    if isinstance(cost, bool) or not isinstance(cost, numbers.Real):
        raise InvalidCost(f"invalid cost {cost!r}: expected a number of USD")
    try:
        value = float(cost)
    except (OverflowError, ValueError):
        raise InvalidCost(
            f"invalid cost {cost!r:.40}: too large for a finite number of USD"
        ) from None
    if math.isnan(value) or math.isinf(value):
        raise InvalidCost(f"invalid cost {value!r}: a cost must be a finite number of USD")
    if value < 0:
        raise InvalidCost(f"invalid cost {value!r}: a cost must not be negative")
    return value


def _finite_total(spent: float, cost: float) -> float:
    """``spent + cost``, or ``InvalidCost`` if the running total would no longer be finite."""
    total = spent + cost
    if not math.isfinite(total):
        raise InvalidCost(
            f"invalid cost {cost!r}: the running total (now {spent!r} USD) would overflow"
        )
    return total


def _stored_spend(value: float) -> float:
    """Check a stored spend: finite and non-negative (a bad one fails closed, never reads 0)."""
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"a stored spend must be a finite, non-negative number of USD, not {value!r}"
        )
    return value + 0.0  # -0.0 reads as 0.0


def _restored_spend(value: float, where: str) -> float:
    """A snapshot's spend for ``restore``; ``InvalidCost`` naming ``where`` when it is invalid.

    A validated snapshot cannot hold one; this catches ``model_construct`` and edited models.
    """
    try:
        return _stored_spend(float(value))
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidCost(f"{where}: {exc}") from None


def _percent(current: float, maximum: float) -> float:
    """``current / maximum * 100`` kept within 0..100 (100 when the maximum is not positive)."""
    if maximum <= 0:
        return 100.0
    return min(max(current / maximum * 100.0, 0.0), 100.0)


_SpendFloat = Annotated[float, AfterValidator(_stored_spend)]
"""A stored spend: finite and non-negative; NaN, infinities, ``null`` and negatives are refused."""


# --------------------------------------------------------------------------------------------
# config and results


class BudgetConfig(BaseModel):
    """Session budget limits: total, per action, and the warning percentage (0..255)."""

    # Unknown keys are carried and written back; the checks never look at them.
    model_config = ConfigDict(frozen=True, extra="allow")

    session_max_usd: float = Field(default=100.0, allow_inf_nan=False)
    per_action_max_usd: float = Field(default=10.0, allow_inf_nan=False)
    warn_at_percent: int = Field(default=80, ge=0, le=255)

    @classmethod
    def new(cls, session_max_usd: float, per_action_max_usd: float) -> BudgetConfig:
        """A config with the given limits and a warning at 80 %."""
        return cls(session_max_usd=session_max_usd, per_action_max_usd=per_action_max_usd)

    @classmethod
    def default(cls) -> BudgetConfig:
        """$100 per session, $10 per action, a warning at 80 %."""
        return cls.new(100.0, 10.0)

    def with_warn_at_percent(self, percent: int) -> BudgetConfig:
        """A copy warning at ``min(percent, 100)`` % (negative values become 0)."""
        return self.model_copy(update={"warn_at_percent": max(0, min(int(percent), 100))})

    def warn_threshold_usd(self) -> float:
        """The spend at which warnings start: ``session_max * warn_at_percent / 100``."""
        return self.session_max_usd * float(self.warn_at_percent) / 100.0


class ExceededReason(StrEnum):
    """Which limit a cost would exceed (JSON: the PascalCase variant name)."""

    PER_ACTION_LIMIT = "PerActionLimit"
    SESSION_BUDGET = "SessionBudget"
    WORKSPACE_BUDGET = "WorkspaceBudget"

    def __str__(self) -> str:
        return _REASON_TEXT[self.value]

    def __format__(self, format_spec: str) -> str:
        return format(str(self), format_spec)


_REASON_TEXT = {
    "PerActionLimit": "per-action limit",
    "SessionBudget": "session budget",
    "WorkspaceBudget": "workspace budget",
}


class BudgetResult:
    """The outcome of a budget check: ``WithinBudget``, ``WarnAndAllow`` or ``Exceeded``."""

    __slots__ = ()

    def is_allowed(self) -> bool:
        """True for WithinBudget and WarnAndAllow."""
        return not isinstance(self, Exceeded)

    def is_exceeded(self) -> bool:
        """True for Exceeded only."""
        return isinstance(self, Exceeded)


@dataclass(frozen=True, slots=True)
class WithinBudget(BudgetResult):
    """The cost fits and the warning threshold is not reached."""

    def __str__(self) -> str:
        return "within budget"


@dataclass(frozen=True, slots=True)
class WarnAndAllow(BudgetResult):
    """The cost fits but the spend reaches the warning threshold (percent 0..100)."""

    current_spend: float
    session_max: float
    percent_used: float

    def __str__(self) -> str:
        return f"budget warning: {self.percent_used:.0f}% used"


@dataclass(frozen=True, slots=True)
class Exceeded(BudgetResult):
    """The cost would exceed a limit; ``available`` is what that limit still allows."""

    reason: ExceededReason
    requested: float
    available: float

    def __str__(self) -> str:
        return (
            f"budget exceeded ({self.reason}): requested {money(self.requested)}, "
            f"available {money(self.available)}"
        )


class BudgetWarning(BaseModel):
    """A warning passed back by ``BudgetValidator`` (``percent_used`` runs 0..100)."""

    model_config = ConfigDict(frozen=True)

    current_spend: float
    session_max: float
    percent_used: float

    @classmethod
    def from_result(cls, result: WarnAndAllow) -> BudgetWarning:
        """The warning carried by a ``WarnAndAllow`` result."""
        return cls(
            current_spend=result.current_spend,
            session_max=result.session_max,
            percent_used=result.percent_used,
        )


# --------------------------------------------------------------------------------------------
# snapshots


class BudgetSnapshot(BaseModel):
    """A session tracker's persisted state: ``{session_spent_usd, config, last_updated}``."""

    model_config = ConfigDict(frozen=True, extra="allow")  # unknown keys are carried

    session_spent_usd: _SpendFloat
    config: BudgetConfig
    last_updated: Timestamp


class WorkspaceBudgetSnapshot(BaseModel):
    """A workspace tracker's persisted state: ``{total_spent_usd, last_updated}``."""

    model_config = ConfigDict(frozen=True, extra="allow")  # unknown keys are carried

    total_spent_usd: _SpendFloat
    last_updated: Timestamp


# --------------------------------------------------------------------------------------------
# reservations


class BudgetReservation:
    """An amount reserved on one tracker, to be settled with the actual cost or released."""

    __slots__ = ("_closed", "_owner", "amount", "result", "settled_cost")

    def __init__(self, owner: _Ledger, amount: float, result: WithinBudget | WarnAndAllow) -> None:
        self._owner = owner
        self._closed = False
        self.amount = amount
        """The amount added to the spend when reserving (0 for a zero estimate)."""
        self.result = result
        """The check result at reservation time."""
        self.settled_cost: float | None = None
        """The actual cost once settled; ``None`` while open or after a release."""

    @property
    def warning(self) -> WarnAndAllow | None:
        """The warning raised when reserving, if any."""
        return self.result if isinstance(self.result, WarnAndAllow) else None

    @property
    def closed(self) -> bool:
        """True once settled or released (further settles and releases do nothing)."""
        return self._closed

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"BudgetReservation(amount={self.amount!r}, {state}, result={self.result!r})"


class _Ledger(ABC):
    """The locked spend shared by both trackers: record, refund, settle and release."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spent = 0.0

    @abstractmethod
    def _check_locked(self, cost: float) -> BudgetResult:
        """The tracker's check for a validated ``cost``; the caller holds the lock."""

    def _reserve_locked(self, cost: float) -> BudgetResult:
        """Check and reserve; the caller holds the lock and has validated ``cost``."""
        result = self._check_locked(cost)
        if not isinstance(result, Exceeded) and cost > 0:
            self._spent = _finite_total(self._spent, cost)
        return result

    def check_budget(self, cost: float) -> BudgetResult:
        """Check ``cost`` without recording it; ``InvalidCost`` unless finite and non-negative."""
        value = _require_cost(cost)
        with self._lock:
            return self._check_locked(value)

    def check_and_reserve(self, cost: float) -> BudgetResult:
        """Check and, unless Exceeded, add ``cost`` to the spend in one atomic step."""
        value = _require_cost(cost)
        with self._lock:
            return self._reserve_locked(value)

    def reserve(self, estimate: float) -> BudgetReservation:
        """Reserve ``estimate`` atomically; raises ``BudgetExceeded`` if a limit would be hit."""
        value = _require_cost(estimate)
        with self._lock:
            result = self._reserve_locked(value)
        if isinstance(result, WithinBudget | WarnAndAllow):
            return BudgetReservation(self, value if value > 0 else 0.0, result)
        raise BudgetExceeded(str(result))

    def _own(self, reservation: BudgetReservation) -> None:
        if reservation._owner is not self:
            raise ReservationError("the reservation was made on a different budget tracker")

    def settle(self, reservation: BudgetReservation, actual_cost: float) -> bool:
        """Replace the reserved estimate by ``actual_cost``; False if already settled/released.

        The extra is recorded even beyond the limits (the cost was incurred); a smaller actual
        cost refunds the difference. An invalid ``actual_cost`` (or one that would overflow the
        running total) raises ``InvalidCost`` and leaves the reservation open.
        """
        self._own(reservation)
        actual = _require_cost(actual_cost)
        with self._lock:
            if reservation._closed:
                return False
            difference = actual - reservation.amount
            if difference > 0:
                spent = _finite_total(self._spent, difference)
            else:
                spent = max(self._spent + difference, 0.0)
            self._spent = spent
            reservation._closed = True
            reservation.settled_cost = actual
            return True

    def release(self, reservation: BudgetReservation) -> bool:
        """Refund the whole reservation (denial or deferral); False if already closed."""
        self._own(reservation)
        with self._lock:
            if reservation._closed:
                return False
            reservation._closed = True
            self._spent = max(self._spent - reservation.amount, 0.0)
            return True

    def record_cost(self, cost: float) -> None:
        """Add ``cost`` to the spend.

        ``InvalidCost`` (nothing recorded) for a NaN, infinite, negative or non-numeric cost, or
        one that would overflow the running total; a zero cost records nothing.
        """
        value = _require_cost(cost)
        with self._lock:
            self._spent = _finite_total(self._spent, value)

    def refund_cost(self, cost: float) -> None:
        """Subtract ``cost`` from the spend, never below 0; ``InvalidCost`` as for a record."""
        value = _require_cost(cost)
        with self._lock:
            self._spent = max(self._spent - value, 0.0)

    def spent(self) -> float:
        """The current spend in USD."""
        with self._lock:
            return self._spent

    def reset(self) -> None:
        """Set the spend back to 0 (open reservations then refund against 0)."""
        with self._lock:
            self._spent = 0.0


# --------------------------------------------------------------------------------------------
# trackers


class BudgetTracker(_Ledger):
    """A session's budget: an immutable config and a thread-safe running spend."""

    def __init__(self, config: BudgetConfig | None = None) -> None:
        super().__init__()
        self._config = config if config is not None else BudgetConfig.default()
        self._config_data: tuple[BudgetConfig, dict[str, Any]] | None = None
        self._extra: dict[str, Any] = {}
        """The unknown snapshot keys it was restored from (written back by every snapshot)."""

    @classmethod
    def default(cls) -> BudgetTracker:
        """A tracker with ``BudgetConfig.default()``."""
        return cls()

    @classmethod
    def restore(cls, snapshot: BudgetSnapshot) -> Self:
        """A new tracker with the snapshot's config and spend (``InvalidCost`` for a bad spend)."""
        tracker = cls(snapshot.config)
        tracker._spent = _restored_spend(snapshot.session_spent_usd, "session budget snapshot")
        tracker._extra = unknown_keys(snapshot)
        return tracker

    def _check_locked(self, cost: float) -> BudgetResult:
        config = self._config
        if cost > config.per_action_max_usd:
            return Exceeded(ExceededReason.PER_ACTION_LIMIT, cost, config.per_action_max_usd)
        remaining = config.session_max_usd - self._spent
        if cost > remaining:
            return Exceeded(ExceededReason.SESSION_BUDGET, cost, remaining)
        new = self._spent + cost
        if new >= config.warn_threshold_usd():
            return WarnAndAllow(new, config.session_max_usd, _percent(new, config.session_max_usd))
        return WithinBudget()

    def config(self) -> BudgetConfig:
        """The (immutable) limits."""
        return self._config

    def remaining(self) -> float:
        """``max(session_max - spent, 0)``."""
        with self._lock:
            return max(self._config.session_max_usd - self._spent, 0.0)

    def snapshot(self) -> BudgetSnapshot:
        """The spend, the config and the current time, for persistence."""
        with self._lock:
            spent = self._spent
        known = {"session_spent_usd": spent, "config": self._config, "last_updated": utcnow()}
        return BudgetSnapshot.model_validate(with_unknown_keys(known, self._extra))

    def snapshot_data(self) -> dict[str, Any]:
        """``snapshot().model_dump(mode="json")``, built directly: every save writes it.

        The (immutable) config's dump is computed once; a subclass that overrides ``snapshot``
        gets its own snapshot dumped.
        """
        if type(self).snapshot is not BudgetTracker.snapshot:
            return self.snapshot().model_dump(mode="json")
        with self._lock:
            spent = self._spent
        config = self._config
        cached = self._config_data
        if cached is None or cached[0] is not config:
            dumped = BudgetSnapshot(session_spent_usd=0.0, config=config, last_updated=utcnow())
            cached = self._config_data = (config, dumped.model_dump(mode="json")["config"])
        data = {
            "session_spent_usd": spent,
            "config": dict(cached[1]),
            "last_updated": format_rfc3339(utcnow()),
        }
        return with_unknown_keys(data, self._extra) if self._extra else data

    def __repr__(self) -> str:
        return (
            f"BudgetTracker(config={self._config!r}, spent={self.spent()!r}, "
            f"remaining={self.remaining()!r})"
        )


class WorkspaceBudgetTracker(_Ledger):
    """The budget shared by every session of a workspace (``max_usd=None`` means unlimited)."""

    def __init__(self, max_usd: float | None, warn_at_percent: int = 80) -> None:
        super().__init__()
        if max_usd is not None and not math.isfinite(max_usd):
            raise InvalidBudgetLimit(
                f"invalid workspace budget {max_usd!r}: use a finite number, or None for no limit"
            )
        self._max_usd = None if max_usd is None else float(max_usd)
        self._warn_at_percent = max(0, min(int(warn_at_percent), 100))
        self._extra: dict[str, Any] = {}
        """The unknown snapshot keys it was restored from (written back by every snapshot)."""
        self._stored = 0.0
        """The stored total this tracker last read; ``spent - _stored`` is not yet stored."""
        self._sync_lock = threading.Lock()

    @classmethod
    def restore(
        cls, snapshot: WorkspaceBudgetSnapshot, max_usd: float | None, warn_at_percent: int = 80
    ) -> Self:
        """A new tracker with the caller's limits and the snapshot's spend (read as stored)."""
        tracker = cls(max_usd, warn_at_percent)
        spent = _restored_spend(snapshot.total_spent_usd, "workspace budget snapshot")
        tracker._spent = tracker._stored = spent
        tracker._extra = unknown_keys(snapshot)
        return tracker

    def unsaved(self) -> float:
        """What this tracker charged (minus refunds) since it last read the stored total."""
        with self._lock:
            return self._spent - self._stored

    def refresh(self, stored_total: float) -> None:
        """Adopt a stored total read from the store, if newer (larger) than the last one read.

        The unsaved spend is kept (both move together), so nothing is sent twice or lost.
        """
        total = _restored_spend(stored_total, "the stored workspace total")
        with self._sync_lock, self._lock:
            if total > self._stored:
                self._spent = _finite_total(self._spent, total - self._stored)
                self._stored = total

    def sync(self, write: Callable[[float], float]) -> float:
        """Store this tracker's unsaved spend as an increment and adopt the new stored total.

        ``write(delta)`` adds ``delta`` to the stored total atomically and returns the result
        (``SessionStore.save_workspace_of`` passes the backend's ``write_workspace_state``).
        Charges made while it runs stay unsaved for the next sync; if it raises, nothing is
        lost either. Afterwards ``spent()`` includes what other sessions stored. Returns it.
        """
        with self._sync_lock:
            with self._lock:
                delta = self._spent - self._stored
                self._stored = self._spent
            try:
                total = _restored_spend(write(delta), "the stored workspace total")
            except BaseException:
                with self._lock:
                    self._stored -= delta
                raise
            with self._lock:
                self._spent = max(_finite_total(total, self._spent - self._stored), 0.0)
                self._stored = total
                return self._spent

    def _check_locked(self, cost: float) -> BudgetResult:
        maximum = self._max_usd
        if maximum is None:
            return WithinBudget()
        remaining = maximum - self._spent
        if cost > remaining:
            return Exceeded(ExceededReason.WORKSPACE_BUDGET, cost, max(remaining, 0.0))
        new = self._spent + cost
        if new >= maximum * float(self._warn_at_percent) / 100.0:
            return WarnAndAllow(new, maximum, _percent(new, maximum))
        return WithinBudget()

    def max_usd(self) -> float | None:
        """The workspace limit, or ``None`` when unlimited."""
        return self._max_usd

    def warn_at_percent(self) -> int:
        """The warning percentage (0..100)."""
        return self._warn_at_percent

    def remaining(self) -> float | None:
        """``None`` when unlimited, otherwise ``max(max - spent, 0)``."""
        if self._max_usd is None:
            return None
        with self._lock:
            return max(self._max_usd - self._spent, 0.0)

    def snapshot(self) -> WorkspaceBudgetSnapshot:
        """The total spend and the current time, for persistence."""
        known = {"total_spent_usd": self.spent(), "last_updated": utcnow()}
        return WorkspaceBudgetSnapshot.model_validate(with_unknown_keys(known, self._extra))

    def __repr__(self) -> str:
        return (
            f"WorkspaceBudgetTracker(max_usd={self._max_usd!r}, "
            f"warn_at_percent={self._warn_at_percent!r}, spent={self.spent()!r}, "
            f"remaining={self.remaining()!r})"
        )


# --------------------------------------------------------------------------------------------
# the two budgets together


@dataclass(frozen=True, slots=True)
class DualReservation:
    """A reservation on the session tracker and, if there is one, the workspace tracker."""

    session: BudgetReservation
    workspace: BudgetReservation | None
    warning: BudgetWarning | None

    @property
    def amount(self) -> float:
        """The amount reserved (the same on both trackers)."""
        return self.session.amount

    @property
    def closed(self) -> bool:
        """True once settled or released."""
        return self.session.closed and (self.workspace is None or self.workspace.closed)


class BudgetValidator:
    """Checks and reserves a cost against the workspace budget and then the session budget."""

    def __init__(
        self,
        session_tracker: BudgetTracker,
        workspace_tracker: WorkspaceBudgetTracker | None = None,
    ) -> None:
        self.session_tracker = session_tracker
        self.workspace_tracker = workspace_tracker

    def reserve(self, estimate: float) -> DualReservation:
        """Pre-check both budgets, then reserve on the workspace and on the session.

        Raises ``BudgetExceeded`` (nothing stays reserved) or ``InvalidCost``. If the session
        reservation fails, the workspace reservation is released. A session warning replaces a
        workspace warning.
        """
        cost = _require_cost(estimate)
        workspace = self.workspace_tracker
        session = self.session_tracker
        if workspace is not None:
            pre = workspace.check_budget(cost)
            if isinstance(pre, Exceeded):
                raise BudgetExceeded(str(pre))
        pre = session.check_budget(cost)
        if isinstance(pre, Exceeded):
            raise BudgetExceeded(str(pre))

        workspace_reservation = workspace.reserve(cost) if workspace is not None else None
        try:
            session_reservation = session.reserve(cost)
        except BaseException:
            if workspace is not None and workspace_reservation is not None:
                workspace.release(workspace_reservation)
            raise

        warning: BudgetWarning | None = None
        if session_reservation.warning is not None:
            warning = BudgetWarning.from_result(session_reservation.warning)
        elif workspace_reservation is not None and workspace_reservation.warning is not None:
            warning = BudgetWarning.from_result(workspace_reservation.warning)
        return DualReservation(session_reservation, workspace_reservation, warning)

    def check_and_reserve(self, cost: float) -> BudgetWarning | None:
        """Reserve ``cost`` on both budgets (the original's API); returns any warning."""
        return self.reserve(cost).warning

    def settle(self, reservation: DualReservation, actual_cost: float) -> bool:
        """Settle both halves with ``actual_cost``; False if it was already closed."""
        actual = _require_cost(actual_cost)
        self._own(reservation)
        applied = self.session_tracker.settle(reservation.session, actual)
        if self.workspace_tracker is not None and reservation.workspace is not None:
            applied = self.workspace_tracker.settle(reservation.workspace, actual) or applied
        return applied

    def release(self, reservation: DualReservation) -> bool:
        """Refund both halves (denial or deferral); False if it was already closed."""
        self._own(reservation)
        applied = self.session_tracker.release(reservation.session)
        if self.workspace_tracker is not None and reservation.workspace is not None:
            applied = self.workspace_tracker.release(reservation.workspace) or applied
        return applied

    def _own(self, reservation: DualReservation) -> None:
        self.session_tracker._own(reservation.session)
        if reservation.workspace is not None:
            if self.workspace_tracker is None:
                raise ReservationError("the reservation was made with a workspace budget")
            self.workspace_tracker._own(reservation.workspace)

    def __repr__(self) -> str:
        return (
            f"BudgetValidator(session={self.session_tracker!r}, "
            f"workspace={self.workspace_tracker!r})"
        )


if not TYPE_CHECKING:  # the result's name before 0.2.0, served with a DeprecationWarning
    __getattr__, __dir__ = module_attributes(__name__, renamed={"Allowed": "WithinBudget"})
