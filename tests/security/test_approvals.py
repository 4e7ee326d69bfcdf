"""Approval decisions, responses and the ApprovalManager flow (spec §3.1-§3.3, §10)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from datetime import timedelta
from uuid import UUID, uuid4

import pytest
from pydantic import ValidationError

from astrid.errors import ApprovalHandlerError, StorageError
from astrid.security.actions import FileDelete, McpToolCall, SensitiveAction
from astrid.security.allowances import Allowance, AllowanceStore, ExactTool, ServerTools
from astrid.security.approvals import (
    APPROVAL_DECISION_ADAPTER,
    DEFAULT_APPROVAL_TIMEOUT,
    AllowanceProof,
    Allowed,
    AlwaysAllow,
    ApprovalDecision,
    ApprovalHandler,
    ApprovalManager,
    ApprovalOutcome,
    ApprovalRequest,
    ApprovalResponse,
    Approve,
    ApproveAlways,
    ApproveSession,
    ApproveWithAllowance,
    ApproveWorkspace,
    CustomAllowance,
    Deferred,
    Denied,
    Deny,
    OneTimeApproval,
    SessionApproval,
    WorkspaceApproval,
)
from astrid.security.deferred import (
    ApprovalNeeded,
    DeferredResolution,
    DeferredResolutionStore,
    FallbackBehavior,
    Priority,
)
from astrid.security.kv import KvStore, MemoryKvStore, ScopedKvStore

NAMESPACE = "deferred:session"
DELETE = FileDelete(path="/important.txt")
READ_FILE = McpToolCall(server="filesystem", tool="read_file")


# ---------------------------------------------------------------------------
# Test handlers
# ---------------------------------------------------------------------------


class AutoApproveHandler:
    def __init__(self, decision: ApprovalDecision | None = None) -> None:
        self.decision: ApprovalDecision = decision if decision is not None else Approve()
        self.requests: list[ApprovalRequest] = []

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        self.requests.append(request)
        return ApprovalResponse.new(request.id, self.decision)

    def is_available(self) -> bool:
        return True


class AutoDenyHandler:
    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        return ApprovalResponse.new(request.id, Deny(reason="denied by test"))

    def is_available(self) -> bool:
        return True


class UnavailableHandler:
    def __init__(self) -> None:
        self.asked = False

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        self.asked = True
        return ApprovalResponse.new(request.id, Approve())

    def is_available(self) -> bool:
        return False


class NoResponseHandler:
    def __init__(self) -> None:
        self.requests: list[ApprovalRequest] = []

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        self.requests.append(request)
        return None

    def is_available(self) -> bool:
        return True


class SlowHandler:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        await asyncio.sleep(self.delay)
        return ApprovalResponse.new(request.id, Approve())

    def is_available(self) -> bool:
        return True


class RaisingHandler:
    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        raise RuntimeError("frontend crashed")

    def is_available(self) -> bool:
        return True


class RaisingAvailabilityHandler:
    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        return ApprovalResponse.new(request.id, Approve())

    def is_available(self) -> bool:
        raise ConnectionError("socket closed")


class WrongTypeHandler:
    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        return "yes"  # type: ignore[return-value]

    def is_available(self) -> bool:
        return True


class ServerAllowanceHandler:
    """Approves with a custom allowance covering every tool of the server."""

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        allowance = Allowance.create(ServerTools(server="filesystem"), session_only=True)
        return ApprovalResponse.new(request.id, ApproveWithAllowance(allowance=allowance))

    def is_available(self) -> bool:
        return True


class FailingAllowanceStore(AllowanceStore):
    def add_allowance(self, allowance: Allowance, owner: str | None = None) -> None:
        raise StorageError("allowance store is read-only")


class FailingSetKv(MemoryKvStore):
    def set(self, namespace: str, key: str, value: bytes) -> None:
        raise OSError("disk full")


def make_manager(queue: DeferredResolutionStore | None = None) -> ApprovalManager:
    return ApprovalManager(
        AllowanceStore(), queue if queue is not None else DeferredResolutionStore()
    )


def check(
    manager: ApprovalManager, action: SensitiveAction = DELETE, context: str = "cleanup"
) -> ApprovalOutcome:
    return asyncio.run(manager.check_approval(action, context, None))


def only_pending(manager: ApprovalManager) -> DeferredResolution:
    pending = manager.get_pending_resolutions()
    assert len(pending) == 1
    return pending[0]


# ---------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------


def make_allowance() -> Allowance:
    return Allowance.create(ExactTool(server="filesystem", tool="read_file"), session_only=True)


def test_decision_predicates() -> None:
    assert Approve().is_approved()
    assert not Approve().creates_grant()
    assert Approve().denial_reason() is None
    for decision in (
        ApproveSession(),
        ApproveWorkspace(),
        ApproveAlways(),
        ApproveWithAllowance(allowance=make_allowance()),
    ):
        assert decision.is_approved()
        assert decision.creates_grant()
    assert ApproveAlways().creates_capability()
    assert not ApproveSession().creates_capability()
    deny = Deny(reason="Too risky")
    assert not deny.is_approved()
    assert not deny.creates_grant()
    assert deny.denial_reason() == "Too risky"


def test_decision_display() -> None:
    allowance = make_allowance()
    assert str(Approve()) == "Approve (once)"
    assert str(ApproveSession()) == "Approve (session)"
    assert str(ApproveWorkspace()) == "Approve (workspace)"
    assert str(ApproveAlways()) == "Approve (always)"
    assert (
        str(ApproveWithAllowance(allowance=allowance))
        == f"Approve (allowance: allowance:{allowance.id})"
    )
    assert str(Deny(reason="nope")) == "Deny: nope"


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (Approve(), {"decision": "approve"}),
        (ApproveSession(), {"decision": "approve_session"}),
        (ApproveWorkspace(), {"decision": "approve_workspace"}),
        (ApproveAlways(), {"decision": "approve_always"}),
        (Deny(reason="test"), {"decision": "deny", "reason": "test"}),
    ],
)
def test_decision_json_round_trip(decision: ApprovalDecision, expected: dict[str, str]) -> None:
    raw = APPROVAL_DECISION_ADAPTER.dump_json(decision)
    assert json.loads(raw) == expected
    back = APPROVAL_DECISION_ADAPTER.validate_json(raw)
    assert back == decision
    assert back.is_approved() == decision.is_approved()


def test_approve_with_allowance_json_is_flattened() -> None:
    allowance = make_allowance()
    decision = ApproveWithAllowance(allowance=allowance)
    data = json.loads(APPROVAL_DECISION_ADAPTER.dump_json(decision))
    assert next(iter(data)) == "decision"
    assert data == {"decision": "approve_with_allowance", **json.loads(allowance.model_dump_json())}
    assert "allowance" not in data
    back = APPROVAL_DECISION_ADAPTER.validate_json(json.dumps(data))
    assert isinstance(back, ApproveWithAllowance)
    assert back.allowance == allowance
    assert back.creates_grant()
    # python-mode dumps round trip too
    assert APPROVAL_DECISION_ADAPTER.validate_python(decision.model_dump()) == decision


def test_approve_with_allowance_reads_original_json() -> None:
    raw = {
        "decision": "approve_with_allowance",
        "id": "12345678-1234-5678-1234-567812345678",
        "action_pattern": {"type": "server_tools", "server": "fs"},
        "created_at": "2025-01-01T00:00:00Z",
        "expires_at": None,
        "max_uses": None,
        "uses_remaining": 2,
        "session_only": False,
        "workspace_root": "/home/u/proj",
        "signature": base64.b64encode(bytes(range(64))).decode(),
    }
    decision = APPROVAL_DECISION_ADAPTER.validate_python(raw)
    assert isinstance(decision, ApproveWithAllowance)
    assert decision.allowance.id == UUID("12345678-1234-5678-1234-567812345678")
    assert decision.allowance.uses_remaining == 2
    assert json.loads(APPROVAL_DECISION_ADAPTER.dump_json(decision)) == raw


def test_unknown_decision_is_rejected() -> None:
    with pytest.raises(ValidationError):
        APPROVAL_DECISION_ADAPTER.validate_python({"decision": "maybe"})
    with pytest.raises(ValidationError):
        APPROVAL_DECISION_ADAPTER.validate_python({"decision": "deny"})


# ---------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------


def test_approval_response() -> None:
    request_id = uuid4()
    response = ApprovalResponse.new(request_id, Approve())
    assert response.is_approved()
    assert not response.is_signed()
    assert response.request_id == request_id
    assert response.signature is None


def test_approval_response_display() -> None:
    request_id = uuid4()
    response = ApprovalResponse.new(request_id, Deny(reason="Not allowed"))
    assert str(response) == f"req:{request_id} -> Deny: Not allowed"
    assert not response.is_approved()


def test_approval_response_signature() -> None:
    response = ApprovalResponse.new(uuid4(), Approve())
    signed = response.with_signature(bytes(range(64)))
    assert signed.is_signed()
    assert signed.signature == base64.b64encode(bytes(range(64))).decode()
    assert not response.is_signed()
    assert response.with_signature(signed.signature or "").signature == signed.signature
    with pytest.raises(ValidationError):
        response.with_signature(b"short")
    with pytest.raises(ValidationError):
        response.with_signature("not base64!")


def test_approval_response_json_round_trip() -> None:
    response = ApprovalResponse.new(
        uuid4(), ApproveWithAllowance(allowance=make_allowance())
    ).with_signature(bytes(64))
    data = json.loads(response.model_dump_json())
    assert set(data) == {"request_id", "decision", "timestamp", "signature"}
    assert data["decision"]["decision"] == "approve_with_allowance"
    assert ApprovalResponse.model_validate_json(response.model_dump_json()) == response
    unsigned = ApprovalResponse.new(uuid4(), Approve())
    assert json.loads(unsigned.model_dump_json())["signature"] is None


def test_handlers_satisfy_the_protocol() -> None:
    assert isinstance(AutoApproveHandler(), ApprovalHandler)
    assert isinstance(UnavailableHandler(), ApprovalHandler)


def test_outcome_predicates() -> None:
    allowed = Allowed(OneTimeApproval())
    denied = Denied("no")
    deferred = Deferred(uuid4(), FallbackBehavior.SKIP)
    assert allowed.is_allowed() and not allowed.is_denied() and not allowed.is_deferred()
    assert denied.is_denied() and not denied.is_allowed() and not denied.is_deferred()
    assert deferred.is_deferred() and not deferred.is_allowed() and not deferred.is_denied()


# ---------------------------------------------------------------------------
# Manager: the original's tests
# ---------------------------------------------------------------------------


def test_allowed_by_existing_allowance() -> None:
    manager = make_manager()
    handler = AutoApproveHandler()
    manager.register_handler(handler)
    allowance = make_allowance()
    manager.allowance_store.add_allowance(allowance)
    outcome = check(manager, READ_FILE, "need to read file")
    assert outcome == Allowed(AllowanceProof(allowance.id))
    assert handler.requests == []
    assert manager.approvals_granted == 0


def test_existing_allowance_is_consumed() -> None:
    manager = make_manager()
    one_shot = Allowance.create(
        ExactTool(server="filesystem", tool="read_file"), session_only=True, uses_remaining=1
    )
    manager.allowance_store.add_allowance(one_shot)
    assert check(manager, READ_FILE).is_allowed()
    assert check(manager, READ_FILE).is_deferred()


def test_approved_by_handler() -> None:
    manager = make_manager()
    manager.register_handler(AutoApproveHandler())
    assert check(manager, FileDelete(path="/tmp/test.txt")) == Allowed(OneTimeApproval())
    assert manager.approvals_granted == 1


def test_denied_by_handler() -> None:
    manager = make_manager()
    manager.register_handler(AutoDenyHandler())
    outcome = check(manager)
    assert outcome == Denied("denied by test")
    assert outcome.is_denied()
    assert manager.approvals_granted == 0
    assert manager.deferred_queue.count() == 0


def test_session_approval() -> None:
    manager = make_manager()
    manager.register_handler(AutoApproveHandler(ApproveSession()))
    outcome = check(manager, McpToolCall(server="github", tool="create_issue"), "filing a bug")
    assert isinstance(outcome, Allowed)
    assert isinstance(outcome.proof, SessionApproval)
    # The proof names the session allowance the manager stored.
    [allowance] = manager.allowance_store.all()
    assert allowance.id == outcome.proof.allowance_id and allowance.session_only


def test_workspace_and_always_approvals() -> None:
    manager = make_manager()
    manager.register_handler(AutoApproveHandler(ApproveWorkspace()))
    outcome = asyncio.run(manager.check_approval(DELETE, "cleanup", "/work/project"))
    assert isinstance(outcome, Allowed) and isinstance(outcome.proof, WorkspaceApproval)
    [allowance] = manager.allowance_store.all()
    assert allowance.id == outcome.proof.allowance_id and not allowance.session_only
    manager.register_handler(AutoApproveHandler(ApproveAlways()))
    other = FileDelete(path="/tmp/other.txt")
    assert check(manager, other) == Allowed(AlwaysAllow())  # the interceptor mints it
    assert manager.approvals_granted == 2


def test_workspace_approval_without_a_workspace_lasts_for_the_session() -> None:
    manager = make_manager()
    manager.register_handler(AutoApproveHandler(ApproveWorkspace()))
    outcome = check(manager)
    assert isinstance(outcome, Allowed) and isinstance(outcome.proof, SessionApproval)
    [allowance] = manager.allowance_store.all()
    assert allowance.session_only and allowance.id == outcome.proof.allowance_id


def test_deferred_no_handler() -> None:
    manager = make_manager()
    outcome = check(manager, DELETE, "cleanup")
    assert isinstance(outcome, Deferred)
    assert outcome.fallback is FallbackBehavior.SKIP
    assert manager.deferred_queue.count() == 1
    item = only_pending(manager)
    assert item.id == outcome.resolution_id
    assert item.reason == "no approval handler registered"
    assert item.fallback_taken == "fallback: skip"
    assert item.priority is Priority.NORMAL
    assert item.context.goal == "cleanup"
    assert item.context.task is None
    assert isinstance(item.action, ApprovalNeeded)
    assert item.action.request.action == DELETE
    assert item.action.request.context == "cleanup"


def test_deferred_handler_unavailable() -> None:
    manager = make_manager()
    handler = UnavailableHandler()
    manager.register_handler(handler)
    assert check(manager).is_deferred()
    assert not handler.asked
    assert only_pending(manager).reason == "approval handler unavailable"


def test_deferred_no_response() -> None:
    manager = make_manager()
    handler = NoResponseHandler()
    manager.register_handler(handler)
    assert check(manager).is_deferred()
    item = only_pending(manager)
    assert item.reason == "user did not respond"
    # The deferred item carries a new request, not the one the handler saw.
    assert isinstance(item.action, ApprovalNeeded)
    assert item.action.request.id != handler.requests[0].id


def test_resolve_deferred() -> None:
    manager = make_manager()
    outcome = check(manager)
    assert isinstance(outcome, Deferred)
    item = only_pending(manager)
    assert isinstance(item.action, ApprovalNeeded)
    response = ApprovalResponse.new(item.action.request.id, Approve())
    resolved = manager.resolve_deferred(outcome.resolution_id, response)
    assert resolved == Allowed(OneTimeApproval())
    assert manager.deferred_queue.count() == 0
    assert manager.approvals_granted == 1


def test_resolve_deferred_missing_id_is_only_logged(caplog: pytest.LogCaptureFixture) -> None:
    manager = make_manager()
    missing = uuid4()
    with caplog.at_level(logging.WARNING, logger="astrid.security.approvals"):
        outcome = manager.resolve_deferred(
            missing, ApprovalResponse.new(uuid4(), Deny(reason="later no"))
        )
    assert outcome == Denied("later no")
    assert f"resolution:{missing}" in caplog.text


def test_set_timeout() -> None:
    manager = make_manager()
    assert manager.timeout == DEFAULT_APPROVAL_TIMEOUT == 300.0
    manager.set_timeout(30)
    assert manager.timeout == 30.0
    manager.set_timeout(timedelta(minutes=2))
    assert manager.timeout == 120.0
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            manager.set_timeout(bad)
    assert manager.timeout == 120.0


def test_set_default_fallback() -> None:
    assert make_manager().default_fallback is FallbackBehavior.SKIP
    manager = make_manager()
    manager.set_default_fallback(FallbackBehavior.BLOCK)
    assert manager.default_fallback is FallbackBehavior.BLOCK
    outcome = check(manager)
    assert isinstance(outcome, Deferred)
    assert outcome.fallback is FallbackBehavior.BLOCK
    assert only_pending(manager).fallback_taken == "fallback: block"


def test_constructor_options() -> None:
    manager = ApprovalManager(
        AllowanceStore(),
        DeferredResolutionStore(),
        timeout=timedelta(seconds=5),
        default_fallback=FallbackBehavior.QUEUE,
    )
    assert manager.timeout == 5.0
    assert manager.default_fallback is FallbackBehavior.QUEUE
    assert manager.handler is None


def test_approve_with_custom_allowance() -> None:
    store = AllowanceStore()
    manager = ApprovalManager(store, DeferredResolutionStore())
    manager.register_handler(ServerAllowanceHandler())
    outcome = check(manager, READ_FILE, "need to read")
    assert isinstance(outcome, Allowed)
    assert isinstance(outcome.proof, CustomAllowance)
    assert store.count() == 1
    # Another tool on the same server is now covered by the stored allowance.
    second = check(manager, McpToolCall(server="filesystem", tool="write_file"), "need to write")
    assert second == Allowed(AllowanceProof(outcome.proof.allowance_id))
    assert manager.approvals_granted == 1


def test_custom_allowance_gets_the_owner_tag() -> None:
    store = AllowanceStore()
    manager = ApprovalManager(store, DeferredResolutionStore(), allowance_owner="session-1")
    manager.register_handler(ServerAllowanceHandler())
    outcome = check(manager, READ_FILE)
    assert isinstance(outcome, Allowed) and isinstance(outcome.proof, CustomAllowance)
    assert store.owner_of(outcome.proof.allowance_id) == "session-1"


def test_custom_allowance_store_failure_downgrades_to_one_time() -> None:
    manager = ApprovalManager(FailingAllowanceStore(), DeferredResolutionStore())
    manager.register_handler(ServerAllowanceHandler())
    assert check(manager, READ_FILE) == Allowed(OneTimeApproval())


def test_repr() -> None:
    manager = make_manager()
    manager.register_handler(AutoApproveHandler())
    text = repr(manager)
    assert "ApprovalManager" in text
    assert "AutoApproveHandler" in text


# ---------------------------------------------------------------------------
# Manager: our additions and fixes
# ---------------------------------------------------------------------------


def test_register_handler_replaces() -> None:
    manager = make_manager()
    manager.register_handler(AutoDenyHandler())
    approve = AutoApproveHandler()
    manager.register_handler(approve)
    assert manager.handler is approve
    assert check(manager).is_allowed()
    assert manager.unregister_handler() is approve
    assert check(manager).is_deferred()


def test_timeout_defers() -> None:
    manager = make_manager()
    manager.register_handler(SlowHandler(delay=5.0))
    manager.set_timeout(0.05)
    started = time.monotonic()
    outcome = check(manager)
    assert time.monotonic() - started < 2.0
    assert outcome.is_deferred()
    assert only_pending(manager).reason == "approval request timed out"
    assert manager.approvals_granted == 0


def test_handler_within_timeout_is_allowed() -> None:
    manager = make_manager()
    manager.register_handler(SlowHandler(delay=0.01))
    manager.set_timeout(2)
    assert check(manager) == Allowed(OneTimeApproval())


def test_handler_exception_fails_closed() -> None:
    manager = make_manager()
    manager.register_handler(RaisingHandler())
    outcome = check(manager)
    assert outcome.is_deferred()
    assert not outcome.is_allowed()
    assert only_pending(manager).reason == "approval handler failed: frontend crashed"


def test_availability_exception_fails_closed() -> None:
    manager = make_manager()
    manager.register_handler(RaisingAvailabilityHandler())
    assert check(manager).is_deferred()
    assert only_pending(manager).reason == "approval handler failed: socket closed"


def test_wrong_response_type_is_a_typed_error_naming_the_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    manager = make_manager()
    manager.register_handler(WrongTypeHandler())
    with (
        caplog.at_level(logging.WARNING, logger="astrid.security.approvals"),
        pytest.raises(ApprovalHandlerError, match=r"test_approvals\.WrongTypeHandler returned str"),
    ):
        check(manager)
    assert "WrongTypeHandler returned str" in caplog.text
    assert manager.deferred_queue.count() == 0  # never a silent deferral
    assert manager.approvals_granted == 0


class BareDecisionHandler:
    """What a host writes first: the decision alone, without ``ApprovalResponse.new``."""

    def __init__(self, decision: ApprovalDecision) -> None:
        self.decision = decision

    async def request_approval(self, request: ApprovalRequest) -> ApprovalDecision:
        return self.decision

    def is_available(self) -> bool:
        return True


def test_a_bare_decision_is_the_answer_to_the_request() -> None:
    manager = make_manager()
    manager.register_handler(BareDecisionHandler(ApproveSession()))
    outcome = check(manager)
    assert isinstance(outcome, Allowed) and isinstance(outcome.proof, SessionApproval)
    assert manager.deferred_queue.count() == 0
    assert check(manager) == Allowed(AllowanceProof(outcome.proof.allowance_id))
    manager.register_handler(BareDecisionHandler(Deny(reason="no")))
    assert check(manager, FileDelete(path="/other.txt")) == Denied("no")
    assert manager.deferred_queue.count() == 0


class StrayResponseHandler:
    """Answers a request that is not the one asked."""

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse:
        return ApprovalResponse.new(uuid4(), ApproveSession())

    def is_available(self) -> bool:
        return True


def test_a_response_to_another_request_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    manager = make_manager()
    manager.register_handler(StrayResponseHandler())
    with caplog.at_level(logging.WARNING, logger="astrid.security.approvals"):
        outcome = check(manager)
    assert isinstance(outcome, Denied)
    assert "StrayResponseHandler answered req:" in outcome.reason
    assert "refused" in caplog.text
    assert manager.allowance_store.count() == 0
    assert manager.deferred_queue.count() == 0
    assert manager.approvals_granted == 0


def test_deferral_is_persisted_when_the_queue_has_a_store() -> None:
    backend = MemoryKvStore()
    queue = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    manager = make_manager(queue)
    outcome = check(manager)
    assert isinstance(outcome, Deferred)
    assert backend.list_keys(NAMESPACE) == [str(outcome.resolution_id)]

    reloaded = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    assert [r.id for r in reloaded.get_pending()] == [outcome.resolution_id]


def test_resolve_deferred_removes_the_persisted_item() -> None:
    backend = MemoryKvStore()
    queue = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    manager = make_manager(queue)
    outcome = check(manager)
    assert isinstance(outcome, Deferred)
    manager.resolve_deferred(outcome.resolution_id, Approve())
    assert backend.list_keys(NAMESPACE) == []
    reloaded = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    assert reloaded.count() == 0


def test_deferral_failure_fails_closed() -> None:
    backend: KvStore = FailingSetKv()
    queue = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    manager = make_manager(queue)
    outcome = check(manager)
    assert isinstance(outcome, Denied)
    assert outcome.reason.startswith("failed to defer action: ")
    assert "disk full" in outcome.reason
    assert queue.count() == 0


def test_with_deferred_queue_keeps_handler_and_settings() -> None:
    store = AllowanceStore()
    manager = ApprovalManager(
        store,
        DeferredResolutionStore(),
        timeout=12,
        default_fallback=FallbackBehavior.SAFE_DEFAULT,
        allowance_owner="s",
    )
    handler = AutoApproveHandler()
    manager.register_handler(handler)
    assert check(manager).is_allowed()

    backend = MemoryKvStore()
    queue = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    swapped = manager.with_deferred_queue(queue)

    assert swapped is not manager
    assert swapped.allowance_store is store
    assert swapped.deferred_queue is queue
    assert swapped.handler is handler
    assert swapped.timeout == 12.0
    assert swapped.default_fallback is FallbackBehavior.SAFE_DEFAULT
    assert swapped.allowance_owner == "s"
    assert swapped.approvals_granted == 1
    assert check(swapped).is_allowed()
    assert len(handler.requests) == 2
    assert swapped.approvals_granted == 2

    # Deferrals of the new manager land in the new (persistent) queue.
    swapped.unregister_handler()
    outcome = check(swapped)
    assert isinstance(outcome, Deferred)
    assert outcome.fallback is FallbackBehavior.SAFE_DEFAULT
    assert backend.list_keys(NAMESPACE) == [str(outcome.resolution_id)]
    assert manager.deferred_queue.count() == 0
    # The original manager keeps its own handler registration.
    assert manager.handler is handler


def test_concurrent_checks_consume_a_one_shot_allowance_once() -> None:
    manager = make_manager()
    manager.allowance_store.add_allowance(
        Allowance.create(
            ExactTool(server="filesystem", tool="read_file"), session_only=True, uses_remaining=1
        )
    )

    async def run() -> list[ApprovalOutcome]:
        return list(
            await asyncio.gather(*(manager.check_approval(READ_FILE, "c") for _ in range(5)))
        )

    outcomes = asyncio.run(run())
    assert sum(isinstance(o, Allowed) for o in outcomes) == 1
    assert sum(isinstance(o, Deferred) for o in outcomes) == 4
    assert manager.deferred_queue.count() == 4
