"""Session and workspace budgets: the original's tests (spec §2, §10) plus our fixes."""

from __future__ import annotations

import json
import math
import threading
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from astrid.errors import ApprovalError, BudgetExceeded, InvalidCost, SecurityError
from astrid.security.budget import (
    BudgetConfig,
    BudgetReservation,
    BudgetResult,
    BudgetSnapshot,
    BudgetTracker,
    BudgetValidator,
    BudgetWarning,
    Exceeded,
    ExceededReason,
    InvalidBudgetLimit,
    ReservationError,
    WarnAndAllow,
    WithinBudget,
    WorkspaceBudgetSnapshot,
    WorkspaceBudgetTracker,
)

BAD_COSTS = [math.nan, math.inf, -math.inf, -0.01, -50.0]


# ------------------------------------------------------------------------------------ config


def test_config_defaults() -> None:
    config = BudgetConfig.default()
    assert config.session_max_usd == 100.0
    assert config.per_action_max_usd == 10.0
    assert config.warn_at_percent == 80
    assert BudgetConfig() == config
    assert BudgetConfig.new(5.0, 1.0).warn_at_percent == 80


def test_warn_threshold() -> None:
    assert BudgetConfig.new(100.0, 10.0).warn_threshold_usd() == 80.0
    assert BudgetConfig.new(50.0, 5.0).with_warn_at_percent(90).warn_threshold_usd() == 45.0


def test_warn_percent_clamped_by_builder_only() -> None:
    assert BudgetConfig.default().with_warn_at_percent(150).warn_at_percent == 100
    # new() and deserialization do not clamp (u8 range only)
    assert BudgetConfig(warn_at_percent=150).warn_at_percent == 150
    assert BudgetConfig.model_validate({"session_max_usd": 1, "per_action_max_usd": 1,
                                        "warn_at_percent": 200}).warn_at_percent == 200
    with pytest.raises(ValidationError):
        BudgetConfig(warn_at_percent=256)
    with pytest.raises(ValidationError):
        BudgetConfig(warn_at_percent=-1)


def test_config_serde() -> None:
    config = BudgetConfig.new(50.0, 5.0).with_warn_at_percent(90)
    data = json.loads(config.model_dump_json())
    assert data == {"session_max_usd": 50.0, "per_action_max_usd": 5.0, "warn_at_percent": 90}
    assert BudgetConfig.model_validate_json(config.model_dump_json()) == config


@pytest.mark.parametrize("field", ["session_max_usd", "per_action_max_usd"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_config_rejects_non_finite_limits(field: str, value: float) -> None:
    with pytest.raises(ValidationError):
        BudgetConfig.model_validate({field: value})


def test_config_is_immutable() -> None:
    config = BudgetConfig.default()
    with pytest.raises(ValidationError):
        config.session_max_usd = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------ results


def test_result_predicates() -> None:
    assert WithinBudget().is_allowed()
    assert not WithinBudget().is_exceeded()
    warn = WarnAndAllow(current_spend=85.0, session_max=100.0, percent_used=85.0)
    assert warn.is_allowed()
    assert not warn.is_exceeded()
    exceeded = Exceeded(ExceededReason.PER_ACTION_LIMIT, 15.0, 10.0)
    assert not exceeded.is_allowed()
    assert exceeded.is_exceeded()
    assert all(isinstance(r, BudgetResult) for r in (WithinBudget(), warn, exceeded))


def test_result_display() -> None:
    assert str(WithinBudget()) == "within budget"
    assert str(WarnAndAllow(85.0, 100.0, 85.0)) == "budget warning: 85% used"
    text = str(Exceeded(ExceededReason.PER_ACTION_LIMIT, 15.0, 10.0))
    assert text == "budget exceeded (per-action limit): requested $15.00, available $10.00"
    assert "per-action limit" in text
    assert str(Exceeded(ExceededReason.SESSION_BUDGET, 15.0, -5.0)).endswith("available -$5.00")


def test_exceeded_reason_json_and_display() -> None:
    assert str(ExceededReason.PER_ACTION_LIMIT) == "per-action limit"
    assert str(ExceededReason.SESSION_BUDGET) == "session budget"
    assert str(ExceededReason.WORKSPACE_BUDGET) == "workspace budget"
    assert f"{ExceededReason.SESSION_BUDGET}" == "session budget"
    assert ExceededReason("WorkspaceBudget") is ExceededReason.WORKSPACE_BUDGET
    assert [r.value for r in ExceededReason] == ["PerActionLimit", "SessionBudget",
                                                 "WorkspaceBudget"]


# ------------------------------------------------------------------------------------ tracker


def test_within_budget_is_allowed() -> None:
    tracker = BudgetTracker()
    assert tracker.check_budget(5.0) == WithinBudget()
    assert tracker.spent() == 0.0  # check_budget records nothing


def test_per_action_limit() -> None:
    result = BudgetTracker().check_budget(15.0)
    assert result == Exceeded(ExceededReason.PER_ACTION_LIMIT, 15.0, 10.0)


def test_session_budget_exceeded() -> None:
    tracker = BudgetTracker(BudgetConfig.new(100.0, 20.0))
    tracker.record_cost(90.0)
    result = tracker.check_budget(15.0)
    assert result == Exceeded(ExceededReason.SESSION_BUDGET, 15.0, 10.0)


def test_session_available_not_clamped_after_overspend() -> None:
    tracker = BudgetTracker(BudgetConfig.new(10.0, 10.0))
    tracker.record_cost(15.0)
    result = tracker.check_budget(1.0)
    assert isinstance(result, Exceeded)
    assert result.reason is ExceededReason.SESSION_BUDGET
    assert result.available == -5.0


def test_warning_at_threshold() -> None:
    tracker = BudgetTracker()
    tracker.record_cost(75.0)
    result = tracker.check_budget(10.0)
    assert result == WarnAndAllow(current_spend=85.0, session_max=100.0, percent_used=85.0)
    assert str(result) == "budget warning: 85% used"


def test_below_threshold_is_allowed() -> None:
    tracker = BudgetTracker()
    tracker.record_cost(70.0)
    assert tracker.check_budget(5.0) == WithinBudget()


def test_record_and_remaining() -> None:
    tracker = BudgetTracker(BudgetConfig.new(100.0, 60.0))
    tracker.record_cost(30.0)
    tracker.record_cost(50.0)
    assert tracker.spent() == 80.0
    assert tracker.remaining() == 20.0


def test_overspend_clamps_remaining() -> None:
    tracker = BudgetTracker(BudgetConfig.new(10.0, 10.0))
    tracker.record_cost(15.0)
    assert tracker.spent() == 15.0
    assert tracker.remaining() == 0.0


def test_reset() -> None:
    tracker = BudgetTracker()
    tracker.record_cost(42.0)
    tracker.reset()
    assert tracker.spent() == 0.0
    assert tracker.remaining() == 100.0


def test_default_tracker() -> None:
    tracker = BudgetTracker.default()
    assert tracker.config() == BudgetConfig.default()
    assert tracker.spent() == 0.0
    assert tracker.remaining() == 100.0


def test_repr() -> None:
    text = repr(BudgetTracker())
    for word in ("BudgetTracker", "config", "spent", "remaining"):
        assert word in text


def test_zero_cost() -> None:
    tracker = BudgetTracker()
    assert tracker.check_budget(0.0) == WithinBudget()
    assert tracker.check_and_reserve(0.0) == WithinBudget()
    assert tracker.spent() == 0.0
    tracker.record_cost(80.0)
    assert isinstance(tracker.check_budget(0.0), WarnAndAllow)
    zero_threshold = BudgetTracker(BudgetConfig.default().with_warn_at_percent(0))
    assert isinstance(zero_threshold.check_budget(0.0), WarnAndAllow)


def test_cost_equal_to_budget_warns() -> None:
    tracker = BudgetTracker(BudgetConfig.new(100.0, 100.0))
    result = tracker.check_budget(100.0)
    assert result == WarnAndAllow(current_spend=100.0, session_max=100.0, percent_used=100.0)


def test_zero_session_max_warns_at_100_percent() -> None:
    tracker = BudgetTracker(BudgetConfig.new(0.0, 0.0))
    assert tracker.check_budget(0.0) == WarnAndAllow(0.0, 0.0, 100.0)
    assert tracker.check_budget(0.01).is_exceeded()


def test_check_and_reserve_records() -> None:
    tracker = BudgetTracker()
    assert tracker.check_and_reserve(5.0) == WithinBudget()
    assert tracker.spent() == 5.0
    tracker.record_cost(70.0)
    assert tracker.check_and_reserve(10.0) == WarnAndAllow(85.0, 100.0, 85.0)
    assert tracker.spent() == 85.0
    exceeded = tracker.check_and_reserve(16.0)
    assert exceeded == Exceeded(ExceededReason.PER_ACTION_LIMIT, 16.0, 10.0)
    assert tracker.check_and_reserve(10.0).is_allowed()
    assert tracker.check_and_reserve(6.0) == Exceeded(ExceededReason.SESSION_BUDGET, 6.0, 5.0)
    assert tracker.spent() == 95.0


def test_refund_cost() -> None:
    tracker = BudgetTracker()
    tracker.record_cost(10.0)
    tracker.refund_cost(4.0)
    assert tracker.spent() == 6.0
    tracker.refund_cost(100.0)
    assert tracker.spent() == 0.0


@pytest.mark.parametrize("bad", [*BAD_COSTS, "1.0", None, True, 10**400])
def test_record_and_refund_refuse_bad_values(bad: float) -> None:
    """Issue 14 item 4: a bad recorded cost is refused (it was silently ignored before)."""
    tracker = BudgetTracker()
    tracker.record_cost(20.0)
    with pytest.raises(InvalidCost, match="invalid cost"):
        tracker.record_cost(bad)
    assert tracker.spent() == 20.0
    with pytest.raises(InvalidCost, match="invalid cost"):
        tracker.refund_cost(bad)
    assert tracker.spent() == 20.0


def test_record_and_refund_of_zero_change_nothing() -> None:
    tracker = BudgetTracker()
    tracker.record_cost(20.0)
    tracker.record_cost(0.0)
    tracker.refund_cost(0)
    assert tracker.spent() == 20.0


def test_invalid_cost_is_a_security_error_and_a_value_error() -> None:
    assert issubclass(InvalidCost, SecurityError) and issubclass(InvalidCost, ValueError)


@pytest.mark.parametrize(
    "tracker",
    [BudgetTracker(BudgetConfig.new(1.7e308, 1.7e308)), WorkspaceBudgetTracker(None)],
    ids=["session", "workspace"],
)
def test_a_spend_that_would_overflow_is_refused_and_the_total_stays_finite(
    tracker: BudgetTracker | WorkspaceBudgetTracker,
) -> None:
    """Issue 14 item 4: ``record_cost(1e308)`` twice used to give ``inf`` (then read back as 0)."""
    tracker.record_cost(1e308)
    with pytest.raises(InvalidCost, match="overflow"):
        tracker.record_cost(1e308)
    assert tracker.spent() == 1e308
    with pytest.raises(InvalidCost, match="too large"):
        tracker.record_cost(10**400)
    assert tracker.spent() == 1e308
    reservation = tracker.reserve(0.0)
    with pytest.raises(InvalidCost, match="overflow"):
        tracker.settle(reservation, 1e308)
    assert not reservation.closed and tracker.spent() == 1e308
    assert tracker.settle(reservation, 1.0)
    assert math.isfinite(tracker.spent())


def test_an_unlimited_workspace_refuses_a_reservation_that_would_overflow() -> None:
    tracker = WorkspaceBudgetTracker(None)
    tracker.reserve(1e308)
    with pytest.raises(InvalidCost, match="overflow"):
        tracker.reserve(1e308)
    with pytest.raises(InvalidCost, match="overflow"):
        tracker.check_and_reserve(1e308)
    assert tracker.spent() == 1e308
    with pytest.raises(InvalidCost):
        tracker.reserve(10**400)


# ---------------------------------------------------------------- our fix: refuse bad costs


@pytest.mark.parametrize("bad", BAD_COSTS)
def test_check_budget_refuses_bad_cost(bad: float) -> None:
    tracker = BudgetTracker()
    with pytest.raises(InvalidCost) as info:
        tracker.check_budget(bad)
    assert repr(float(bad)) in str(info.value)
    assert isinstance(info.value, SecurityError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", BAD_COSTS)
def test_check_and_reserve_refuses_bad_cost(bad: float) -> None:
    tracker = BudgetTracker()
    with pytest.raises(InvalidCost, match="invalid cost"):
        tracker.check_and_reserve(bad)
    with pytest.raises(InvalidCost):
        tracker.reserve(bad)
    assert tracker.spent() == 0.0


def test_nan_message_names_the_value() -> None:
    with pytest.raises(InvalidCost, match="nan"):
        BudgetTracker().check_budget(math.nan)
    with pytest.raises(InvalidCost, match="inf"):
        BudgetTracker().check_and_reserve(math.inf)


@pytest.mark.parametrize("bad", BAD_COSTS)
def test_workspace_refuses_bad_cost(bad: float) -> None:
    for tracker in (WorkspaceBudgetTracker(100.0, 80), WorkspaceBudgetTracker(None, 80)):
        with pytest.raises(InvalidCost):
            tracker.check_budget(bad)
        with pytest.raises(InvalidCost):
            tracker.check_and_reserve(bad)
        assert tracker.spent() == 0.0


@pytest.mark.parametrize("bad", BAD_COSTS)
def test_validator_refuses_bad_cost(bad: float) -> None:
    session = BudgetTracker()
    workspace = WorkspaceBudgetTracker(100.0, 80)
    validator = BudgetValidator(session, workspace)
    with pytest.raises(InvalidCost):
        validator.check_and_reserve(bad)
    assert session.spent() == 0.0
    assert workspace.spent() == 0.0


def test_non_numeric_cost_refused() -> None:
    with pytest.raises(InvalidCost):
        BudgetTracker().check_budget("5")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ snapshots


def test_snapshot_capture() -> None:
    tracker = BudgetTracker(BudgetConfig.new(50.0, 5.0))
    tracker.record_cost(17.5)
    before = datetime.now(UTC)
    snapshot = tracker.snapshot()
    assert snapshot.session_spent_usd == 17.5
    assert snapshot.config == BudgetConfig.new(50.0, 5.0)
    assert snapshot.last_updated >= before.replace(microsecond=0)


def test_snapshot_restore_round_trip() -> None:
    tracker = BudgetTracker(BudgetConfig.new(50.0, 5.0))
    tracker.record_cost(17.5)
    restored = BudgetTracker.restore(tracker.snapshot())
    assert restored.spent() == 17.5
    assert restored.remaining() == 32.5
    assert restored.config() == tracker.config()
    restored.record_cost(1.0)
    assert tracker.spent() == 17.5  # a new tracker


def test_snapshot_json() -> None:
    tracker = BudgetTracker(BudgetConfig.new(50.0, 5.0))
    tracker.record_cost(17.5)
    text = tracker.snapshot().model_dump_json()
    data = json.loads(text)
    assert set(data) == {"session_spent_usd", "config", "last_updated"}
    assert data["session_spent_usd"] == 17.5
    assert data["config"] == {"session_max_usd": 50.0, "per_action_max_usd": 5.0,
                              "warn_at_percent": 80}
    assert data["last_updated"].endswith("Z")
    again = BudgetSnapshot.model_validate_json(text)
    assert BudgetTracker.restore(again).spent() == 17.5


def test_snapshot_json_from_original() -> None:
    text = ('{"session_spent_usd": 42.5, "config": {"session_max_usd": 100.0, '
            '"per_action_max_usd": 10.0, "warn_at_percent": 80}, '
            '"last_updated": "2024-01-01T00:00:00.123456789+02:00", "extra": 1}')
    snapshot = BudgetSnapshot.model_validate_json(text)
    assert snapshot.last_updated == datetime(2023, 12, 31, 22, 0, 0, 123456, tzinfo=UTC)
    assert BudgetTracker.restore(snapshot).spent() == 42.5


@pytest.mark.parametrize("bad", [-50.0, math.nan, -math.inf, math.inf])
def test_a_bad_spend_is_refused_never_reset_to_zero(bad: float) -> None:
    """Issue 14 item 4: a non-finite or negative spend used to restore as 0 (a reset)."""
    with pytest.raises(ValidationError, match="finite, non-negative"):
        BudgetSnapshot(session_spent_usd=bad, config=BudgetConfig.default(),
                       last_updated=datetime.now(UTC))
    built = BudgetSnapshot.model_construct(
        session_spent_usd=bad, config=BudgetConfig.default(), last_updated=datetime.now(UTC)
    )
    with pytest.raises(InvalidCost, match="session budget snapshot"):
        BudgetTracker.restore(built)


@pytest.mark.parametrize("literal", ["NaN", "-Infinity", "Infinity", "1e999", "null", "-50.0"])
def test_a_bad_spend_from_json_is_refused(literal: str) -> None:
    text = ('{"session_spent_usd": ' + literal + ', "config": {"session_max_usd": 100.0, '
            '"per_action_max_usd": 10.0, "warn_at_percent": 80}, '
            '"last_updated": "2024-01-01T00:00:00Z"}')
    with pytest.raises(ValidationError, match="session_spent_usd"):
        BudgetSnapshot.model_validate_json(text)


# ------------------------------------------------------------------------------------ workspace


def test_workspace_unlimited() -> None:
    tracker = WorkspaceBudgetTracker(None, 80)
    assert tracker.check_budget(1000.0) == WithinBudget()
    assert tracker.remaining() is None
    assert tracker.spent() == 0.0
    assert tracker.check_and_reserve(1000.0) == WithinBudget()
    assert tracker.spent() == 1000.0  # recorded for reporting
    assert tracker.remaining() is None


def test_workspace_within_budget() -> None:
    tracker = WorkspaceBudgetTracker(100.0, 80)
    assert tracker.check_budget(10.0) == WithinBudget()


def test_workspace_exceeded() -> None:
    tracker = WorkspaceBudgetTracker(50.0, 80)
    tracker.record_cost(45.0)
    result = tracker.check_budget(10.0)
    assert result == Exceeded(ExceededReason.WORKSPACE_BUDGET, 10.0, 5.0)
    assert "workspace budget" in str(result)


def test_workspace_available_is_clamped() -> None:
    tracker = WorkspaceBudgetTracker(50.0, 80)
    tracker.record_cost(60.0)
    result = tracker.check_budget(1.0)
    assert result == Exceeded(ExceededReason.WORKSPACE_BUDGET, 1.0, 0.0)


def test_workspace_warning() -> None:
    tracker = WorkspaceBudgetTracker(100.0, 80)
    tracker.record_cost(75.0)
    result = tracker.check_budget(10.0)
    assert result == WarnAndAllow(current_spend=85.0, session_max=100.0, percent_used=85.0)


def test_workspace_no_per_action_limit() -> None:
    assert WorkspaceBudgetTracker(100.0, 80).check_budget(50.0) == WithinBudget()


def test_workspace_record_and_remaining() -> None:
    tracker = WorkspaceBudgetTracker(100.0, 80)
    tracker.record_cost(30.0)
    tracker.record_cost(20.0)
    assert tracker.spent() == 50.0
    assert tracker.remaining() == 50.0
    tracker.record_cost(70.0)
    assert tracker.remaining() == 0.0
    tracker.refund_cost(200.0)
    assert tracker.spent() == 0.0


def test_workspace_warn_percent_clamped() -> None:
    assert WorkspaceBudgetTracker(100.0, 150).warn_at_percent() == 100
    assert WorkspaceBudgetTracker(100.0, 150).max_usd() == 100.0


def test_workspace_check_and_reserve() -> None:
    tracker = WorkspaceBudgetTracker(50.0, 80)
    assert tracker.check_and_reserve(30.0) == WithinBudget()
    assert tracker.check_and_reserve(15.0) == WarnAndAllow(45.0, 50.0, 90.0)
    assert tracker.check_and_reserve(10.0).is_exceeded()
    assert tracker.spent() == 45.0


def test_workspace_snapshot_round_trip_with_different_limits() -> None:
    tracker = WorkspaceBudgetTracker(100.0, 80)
    tracker.record_cost(42.5)
    restored = WorkspaceBudgetTracker.restore(tracker.snapshot(), 200.0, 80)
    assert restored.spent() == 42.5
    assert restored.remaining() == 157.5
    assert restored.max_usd() == 200.0


@pytest.mark.parametrize("bad", [-50.0, math.nan, math.inf, -math.inf])
def test_workspace_restore_refuses_a_bad_spend(bad: float) -> None:
    with pytest.raises(ValidationError, match="finite, non-negative"):
        WorkspaceBudgetSnapshot(total_spent_usd=bad, last_updated=datetime.now(UTC))
    built = WorkspaceBudgetSnapshot.model_construct(
        total_spent_usd=bad, last_updated=datetime.now(UTC)
    )
    with pytest.raises(InvalidCost, match="workspace budget snapshot"):
        WorkspaceBudgetTracker.restore(built, 100.0, 80)


@pytest.mark.parametrize("bad", BAD_COSTS)
def test_workspace_record_refuses_bad_values(bad: float) -> None:
    tracker = WorkspaceBudgetTracker(100.0, 80)
    with pytest.raises(InvalidCost):
        tracker.record_cost(bad)
    with pytest.raises(InvalidCost):
        tracker.refund_cost(bad)
    tracker.record_cost(0.0)
    assert tracker.spent() == 0.0


def test_workspace_snapshot_json() -> None:
    tracker = WorkspaceBudgetTracker(100.0, 80)
    tracker.record_cost(42.5)
    data = json.loads(tracker.snapshot().model_dump_json())
    assert set(data) == {"total_spent_usd", "last_updated"}
    assert data["total_spent_usd"] == 42.5
    assert data["last_updated"].endswith("Z")
    with pytest.raises(ValidationError, match="total_spent_usd"):
        WorkspaceBudgetSnapshot.model_validate_json(
            '{"total_spent_usd": NaN, "last_updated": "2024-01-01T00:00:00Z"}'
        )


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_workspace_rejects_non_finite_limit(bad: float) -> None:
    with pytest.raises(InvalidBudgetLimit):
        WorkspaceBudgetTracker(bad, 80)


def test_workspace_repr() -> None:
    text = repr(WorkspaceBudgetTracker(100.0, 80))
    assert "WorkspaceBudgetTracker" in text
    assert "remaining" in text


# ------------------------------------------------------------------------------------ reservations


def test_reserve_then_settle_lower_refunds_difference() -> None:
    tracker = BudgetTracker()
    tracker.record_cost(1.0)
    reservation = tracker.reserve(5.0)
    assert isinstance(reservation, BudgetReservation)
    assert reservation.amount == 5.0
    assert tracker.spent() == 6.0
    assert tracker.settle(reservation, 2.0) is True
    assert tracker.spent() == 3.0
    assert reservation.closed
    assert reservation.settled_cost == 2.0


def test_settle_higher_records_extra_even_beyond_limits() -> None:
    tracker = BudgetTracker(BudgetConfig.new(10.0, 10.0))
    reservation = tracker.reserve(5.0)
    assert tracker.settle(reservation, 12.0)
    assert tracker.spent() == 12.0  # the cost was incurred
    assert tracker.remaining() == 0.0


def test_settle_equal_changes_nothing() -> None:
    tracker = BudgetTracker()
    reservation = tracker.reserve(4.0)
    assert tracker.settle(reservation, 4.0)
    assert tracker.spent() == 4.0


def test_settle_is_idempotent() -> None:
    tracker = BudgetTracker()
    reservation = tracker.reserve(5.0)
    assert tracker.settle(reservation, 2.0)
    assert tracker.settle(reservation, 2.0) is False
    assert tracker.settle(reservation, 9.0) is False
    assert tracker.release(reservation) is False
    assert tracker.spent() == 2.0


def test_release_refunds_and_is_idempotent() -> None:
    tracker = BudgetTracker()
    tracker.record_cost(3.0)
    reservation = tracker.reserve(5.0)
    assert tracker.release(reservation) is True
    assert tracker.spent() == 3.0
    assert tracker.release(reservation) is False
    assert tracker.settle(reservation, 5.0) is False
    assert tracker.spent() == 3.0
    assert reservation.settled_cost is None


def test_release_after_reset_never_goes_negative() -> None:
    tracker = BudgetTracker()
    reservation = tracker.reserve(5.0)
    tracker.reset()
    tracker.release(reservation)
    assert tracker.spent() == 0.0


def test_reserve_exceeded_raises_and_reserves_nothing() -> None:
    tracker = BudgetTracker()
    tracker.record_cost(95.0)
    with pytest.raises(BudgetExceeded) as info:
        tracker.reserve(8.0)
    assert str(info.value) == (
        "budget exceeded (session budget): requested $8.00, available $5.00"
    )
    assert isinstance(info.value, ApprovalError)
    assert tracker.spent() == 95.0
    with pytest.raises(BudgetExceeded, match=r"budget exceeded \(per-action limit\)"):
        tracker.reserve(11.0)


def test_reserve_carries_warning() -> None:
    tracker = BudgetTracker()
    tracker.record_cost(75.0)
    reservation = tracker.reserve(10.0)
    assert reservation.warning == WarnAndAllow(85.0, 100.0, 85.0)
    assert tracker.reserve(1.0).warning is not None
    fresh = BudgetTracker().reserve(1.0)
    assert fresh.warning is None
    assert fresh.result == WithinBudget()


def test_zero_reservation() -> None:
    tracker = BudgetTracker()
    reservation = tracker.reserve(0.0)
    assert reservation.amount == 0.0
    assert tracker.settle(reservation, 0.25)
    assert tracker.spent() == 0.25


def test_settle_with_invalid_actual_leaves_reservation_open() -> None:
    tracker = BudgetTracker()
    reservation = tracker.reserve(5.0)
    for bad in BAD_COSTS:
        with pytest.raises(InvalidCost):
            tracker.settle(reservation, bad)
    assert not reservation.closed
    assert tracker.spent() == 5.0
    assert tracker.release(reservation)
    assert tracker.spent() == 0.0


def test_reservation_belongs_to_its_tracker() -> None:
    one, other = BudgetTracker(), BudgetTracker()
    reservation = one.reserve(5.0)
    with pytest.raises(ReservationError):
        other.settle(reservation, 1.0)
    with pytest.raises(ReservationError):
        other.release(reservation)
    assert not reservation.closed


def test_workspace_reserve_settle_release() -> None:
    tracker = WorkspaceBudgetTracker(50.0, 80)
    first = tracker.reserve(30.0)
    assert first.warning is None
    second = tracker.reserve(15.0)
    assert second.warning == WarnAndAllow(45.0, 50.0, 90.0)
    with pytest.raises(BudgetExceeded, match=r"budget exceeded \(workspace budget\)"):
        tracker.reserve(10.0)
    assert tracker.settle(first, 20.0)
    assert tracker.spent() == 35.0
    assert tracker.release(second)
    assert tracker.spent() == 20.0
    assert not tracker.release(second)


def test_unlimited_workspace_reservation() -> None:
    tracker = WorkspaceBudgetTracker(None)
    reservation = tracker.reserve(1000.0)
    assert tracker.spent() == 1000.0
    assert tracker.settle(reservation, 10.0)
    assert tracker.spent() == 10.0


# ------------------------------------------------------------------------------------ validator


def test_budget_rollback_on_dual_budget_denial() -> None:
    workspace = WorkspaceBudgetTracker(100.0, 80)
    session = BudgetTracker(BudgetConfig.new(10.0, 50.0))
    validator = BudgetValidator(session, workspace)
    with pytest.raises(BudgetExceeded) as info:
        validator.check_and_reserve(50.0)
    assert "budget exceeded (session budget)" in str(info.value)
    assert workspace.spent() == 0.0
    assert session.spent() == 0.0


def test_rollback_when_session_reservation_races() -> None:
    # the pre-check passes, then another session spends: the workspace half is refunded
    workspace = WorkspaceBudgetTracker(100.0, 80)
    session = BudgetTracker(BudgetConfig.new(10.0, 10.0))
    validator = BudgetValidator(session, workspace)
    original_reserve = session.reserve

    def racing_reserve(estimate: float) -> BudgetReservation:
        session.record_cost(8.0)
        return original_reserve(estimate)

    session.reserve = racing_reserve  # type: ignore[method-assign]
    with pytest.raises(BudgetExceeded, match="session budget"):
        validator.check_and_reserve(5.0)
    assert workspace.spent() == 0.0
    assert session.spent() == 8.0


def test_validator_workspace_checked_first() -> None:
    workspace = WorkspaceBudgetTracker(5.0, 80)
    session = BudgetTracker(BudgetConfig.new(1.0, 1.0))
    validator = BudgetValidator(session, workspace)
    with pytest.raises(BudgetExceeded, match=r"budget exceeded \(workspace budget\)"):
        validator.check_and_reserve(6.0)
    assert workspace.spent() == 0.0
    assert session.spent() == 0.0


def test_validator_per_action_limit() -> None:
    validator = BudgetValidator(BudgetTracker(), None)
    with pytest.raises(BudgetExceeded, match="budget exceeded") as info:
        validator.check_and_reserve(15.0)
    assert str(info.value) == (
        "budget exceeded (per-action limit): requested $15.00, available $10.00"
    )


def test_validator_reserves_on_both() -> None:
    workspace = WorkspaceBudgetTracker(100.0, 80)
    session = BudgetTracker()
    validator = BudgetValidator(session, workspace)
    assert validator.check_and_reserve(5.0) is None
    assert workspace.spent() == 5.0
    assert session.spent() == 5.0


def test_validator_workspace_warning_kept_when_session_allowed() -> None:
    workspace = WorkspaceBudgetTracker(10.0, 50)
    session = BudgetTracker()
    warning = BudgetValidator(session, workspace).check_and_reserve(6.0)
    assert warning == BudgetWarning(current_spend=6.0, session_max=10.0, percent_used=60.0)


def test_validator_session_warning_replaces_workspace_warning() -> None:
    workspace = WorkspaceBudgetTracker(100.0, 10)
    session = BudgetTracker()
    session.record_cost(75.0)
    warning = BudgetValidator(session, workspace).check_and_reserve(10.0)
    assert warning == BudgetWarning(current_spend=85.0, session_max=100.0, percent_used=85.0)
    assert 0.0 <= warning.percent_used <= 100.0


def test_validator_without_workspace() -> None:
    session = BudgetTracker()
    session.record_cost(79.0)
    warning = BudgetValidator(session).check_and_reserve(1.0)
    assert warning is not None
    assert warning.percent_used == 80.0


def test_dual_reservation_settle_and_release() -> None:
    workspace = WorkspaceBudgetTracker(100.0, 80)
    session = BudgetTracker()
    validator = BudgetValidator(session, workspace)
    reservation = validator.reserve(5.0)
    assert reservation.amount == 5.0
    assert (session.spent(), workspace.spent()) == (5.0, 5.0)
    assert validator.settle(reservation, 3.5)
    assert (session.spent(), workspace.spent()) == (3.5, 3.5)
    assert not validator.settle(reservation, 9.0)
    assert not validator.release(reservation)
    assert reservation.closed

    denied = validator.reserve(4.0)
    assert validator.release(denied)
    assert not validator.release(denied)
    assert (session.spent(), workspace.spent()) == (3.5, 3.5)


def test_dual_reservation_settle_invalid_actual_changes_nothing() -> None:
    workspace = WorkspaceBudgetTracker(100.0, 80)
    session = BudgetTracker()
    validator = BudgetValidator(session, workspace)
    reservation = validator.reserve(5.0)
    with pytest.raises(InvalidCost):
        validator.settle(reservation, math.nan)
    assert not reservation.session.closed
    assert reservation.workspace is not None
    assert not reservation.workspace.closed


def test_dual_reservation_from_another_validator_refused() -> None:
    session = BudgetTracker()
    validator = BudgetValidator(session, WorkspaceBudgetTracker(10.0))
    reservation = validator.reserve(1.0)
    with pytest.raises(ReservationError):
        BudgetValidator(session, None).release(reservation)
    with pytest.raises(ReservationError):
        BudgetValidator(session, WorkspaceBudgetTracker(10.0)).settle(reservation, 1.0)
    assert not reservation.closed


def test_shared_tracker_visible_both_ways() -> None:
    tracker = BudgetTracker()
    child = tracker  # child sessions share the tracker object
    tracker.record_cost(10.0)
    child.record_cost(5.0)
    assert tracker.spent() == child.spent() == 15.0


# ------------------------------------------------------------------------------------ concurrency


def _hammer(worker: object, threads: int) -> None:
    barrier = threading.Barrier(threads)

    def run() -> None:
        barrier.wait()
        worker()  # type: ignore[operator]

    pool = [threading.Thread(target=run) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()


def test_check_and_reserve_is_atomic_across_threads() -> None:
    tracker = BudgetTracker(BudgetConfig.new(10.0, 1.0).with_warn_at_percent(100))
    successes: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            if tracker.check_and_reserve(0.25).is_allowed():
                with lock:
                    successes.append(1)

    _hammer(worker, 16)
    assert tracker.spent() <= 10.0
    assert len(successes) == 40
    assert tracker.spent() == 10.0


def test_validator_is_atomic_across_threads() -> None:
    workspace = WorkspaceBudgetTracker(7.0, 80)
    session = BudgetTracker(BudgetConfig.new(100.0, 1.0))
    validator = BudgetValidator(session, workspace)
    reservations = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(40):
            try:
                reservation = validator.reserve(0.5)
            except BudgetExceeded:
                continue
            with lock:
                reservations.append(reservation)

    _hammer(worker, 12)
    assert len(reservations) == 14
    assert workspace.spent() == 7.0
    assert session.spent() == 7.0

    def release_all() -> None:
        for reservation in reservations:
            validator.release(reservation)

    _hammer(release_all, 8)  # every thread releases every reservation: idempotent
    assert workspace.spent() == 0.0
    assert session.spent() == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=20.0), max_size=40))
def test_reserved_spend_never_exceeds_session_max(costs: list[float]) -> None:
    tracker = BudgetTracker(BudgetConfig.new(50.0, 15.0))
    for cost in costs:
        before = tracker.spent()
        result = tracker.check_and_reserve(cost)
        if result.is_exceeded():
            assert tracker.spent() == before
        assert tracker.spent() <= 50.0 + 1e-9
        assert 0.0 <= tracker.remaining() <= 50.0
        if isinstance(result, WarnAndAllow):
            assert 0.0 <= result.percent_used <= 100.0


# ------------------------------------------------------------------------------ workspace sync


def test_workspace_sync_sends_only_the_unsaved_spend_and_adopts_the_stored_total() -> None:
    """Issue 14 item 1: a save is an increment; the tracker then sees the others' spend."""
    stored = [10.0]
    sent: list[float] = []

    def write(delta: float) -> float:
        sent.append(delta)
        stored[0] += delta
        return stored[0]

    tracker = WorkspaceBudgetTracker.restore(
        WorkspaceBudgetSnapshot(total_spent_usd=10.0, last_updated=datetime.now(UTC)), 50.0
    )
    tracker.record_cost(3.0)
    reservation = tracker.reserve(2.0)
    tracker.settle(reservation, 1.5)
    assert tracker.unsaved() == 4.5
    stored[0] += 20.0  # another process saved meanwhile
    assert tracker.sync(write) == 34.5
    assert sent == [4.5] and tracker.spent() == 34.5 and tracker.unsaved() == 0.0
    tracker.refund_cost(0.5)
    tracker.sync(write)
    assert sent == [4.5, -0.5] and stored[0] == 34.0 == tracker.spent()
    assert tracker.check_budget(16.5).is_exceeded()  # the adopted total counts


def test_a_failed_workspace_sync_keeps_the_spend_unsaved() -> None:
    tracker = WorkspaceBudgetTracker(None)
    tracker.record_cost(2.0)

    def broken(delta: float) -> float:
        raise RuntimeError("store down")

    with pytest.raises(RuntimeError):
        tracker.sync(broken)
    assert tracker.unsaved() == 2.0 and tracker.spent() == 2.0
    assert tracker.sync(lambda delta: delta) == 2.0


def test_a_workspace_sync_refuses_a_non_finite_stored_total() -> None:
    tracker = WorkspaceBudgetTracker(10.0)
    tracker.record_cost(1.0)
    with pytest.raises(InvalidCost, match="stored workspace total"):
        tracker.sync(lambda delta: math.inf)
    assert tracker.unsaved() == 1.0 and tracker.spent() == 1.0


def test_workspace_refresh_adopts_a_newer_stored_total_and_keeps_the_unsaved_spend() -> None:
    tracker = WorkspaceBudgetTracker.restore(
        WorkspaceBudgetSnapshot(total_spent_usd=2.0, last_updated=datetime.now(UTC)), 10.0
    )
    tracker.record_cost(1.0)
    tracker.refresh(6.0)  # another process stored 4.0 more
    assert tracker.spent() == 7.0 and tracker.unsaved() == 1.0
    tracker.refresh(3.0)  # an older reading changes nothing
    assert tracker.spent() == 7.0 and tracker.unsaved() == 1.0
    with pytest.raises(InvalidCost):
        tracker.refresh(math.nan)
