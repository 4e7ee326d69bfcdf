"""SecurityInterceptor: the original's interceptor tests (spec §4.2, §10) plus our fixes."""

from __future__ import annotations

import ast
import asyncio
import math
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

import astrid.security
from astrid.errors import ApprovalError, BudgetExceeded, InvalidCost
from astrid.ids import SessionId
from astrid.security.actions import (
    ExecuteCommand,
    FileDelete,
    FinancialTransaction,
    McpToolCall,
    Permission,
    PluginFileAccess,
    PluginHttpRequest,
    SensitiveAction,
    TransmitData,
)
from astrid.security.allowances import (
    Allowance,
    AllowanceStore,
    CommandPattern,
    ExactTool,
    FilePattern,
)
from astrid.security.approvals import (
    ApprovalDecision,
    ApprovalManager,
    ApprovalRequest,
    ApprovalResponse,
    Approve,
    ApproveAlways,
    ApproveSession,
    ApproveWithAllowance,
    ApproveWorkspace,
    Deny,
)
from astrid.security.budget import (
    BudgetConfig,
    BudgetTracker,
    BudgetValidator,
    WorkspaceBudgetTracker,
)
from astrid.security.capabilities import (
    AuditEntryId,
    CapabilityStore,
    CapabilityToken,
    ResourcePattern,
    TokenScope,
)
from astrid.security.crypto import KeyPair
from astrid.security.deferred import DeferredResolutionStore, FallbackBehavior
from astrid.security.interceptor import (
    ALLOW_ALWAYS_TTL,
    AllowanceProof,
    ApprovalDeferred,
    ApprovalDenied,
    AuditLog,
    AuditOutcome,
    Capability,
    CapabilityCreated,
    InterceptResult,
    PolicyAllowed,
    PolicyBlocked,
    SecurityInterceptor,
    SessionApproval,
    UserApproval,
    WorkspaceApproval,
    literal_resource_pattern,
)
from astrid.security.policy import SecurityPolicy
from astrid.security.state import SecurityState
from astrid.session import AgentSession
from astrid.timeutil import utcnow

HOME_FILE = FileDelete(path="/home/user/file.txt")
ROOT = Path("/work/project")


# ---------------------------------------------------------------------------
# Handlers (real async handlers, no mocks)
# ---------------------------------------------------------------------------


class DecisionHandler:
    """Answers every request with one decision and remembers what it was asked."""

    def __init__(self, decision: ApprovalDecision) -> None:
        self.decision = decision
        self.requests: list[ApprovalRequest] = []

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        self.requests.append(request)
        return ApprovalResponse.new(request.id, self.decision)

    def is_available(self) -> bool:
        return True


def auto_approve() -> DecisionHandler:
    return DecisionHandler(Approve())


def auto_deny() -> DecisionHandler:
    return DecisionHandler(Deny(reason="test deny"))


class SilentHandler:
    """A user who never answers (returns None): the manager defers."""

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        return None

    def is_available(self) -> bool:
        return True


class HangingHandler:
    """A handler that never returns, so the caller can cancel the intercept."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        self.asked.set()
        await asyncio.Event().wait()
        return None

    def is_available(self) -> bool:
        return True


class Harness:
    """An interceptor over a fresh session, with its audit log and runtime key."""

    def __init__(
        self,
        policy: SecurityPolicy | None = None,
        handler: DecisionHandler | SilentHandler | HangingHandler | None = None,
        *,
        workspace_root: Path | None = None,
        budget: BudgetConfig | None = None,
        workspace_budget: WorkspaceBudgetTracker | None = None,
    ) -> None:
        self.keypair = KeyPair.generate()
        self.audit = AuditLog()
        self.session = AgentSession(
            budget_tracker=BudgetTracker(budget or BudgetConfig.new(100.0, 10.0))
        )
        if workspace_budget is not None:
            self.session.with_workspace_budget(workspace_budget)
        if handler is not None:
            self.session.approval_manager.register_handler(handler)
        self.interceptor = SecurityInterceptor(
            self.session,
            policy if policy is not None else SecurityPolicy.default(),
            self.keypair,
            workspace_root=workspace_root,
            audit=self.audit,
        )

    def intercept(
        self, action: SensitiveAction, cost: float | None = None, context: str = "test"
    ) -> InterceptResult:
        return asyncio.run(self.interceptor.intercept(action, context, cost))

    def count(self) -> int:
        return self.audit.count_session(self.session.id)

    def spent(self) -> float:
        return self.session.budget_tracker.spent()


# ---------------------------------------------------------------------------
# Policy
# ---------------------------------------------------------------------------


def test_blocked_by_policy() -> None:
    h = Harness(SecurityPolicy.default())
    with pytest.raises(PolicyBlocked) as info:
        h.intercept(ExecuteCommand(command="sudo", args=[]))
    err = info.value
    assert isinstance(err, ApprovalError)
    assert err.tool == "execute_command"
    assert err.reason == "command 'sudo' is blocked by policy"
    entries = h.audit.session_entries(h.session.id)
    assert len(entries) == 1
    assert entries[0].outcome is AuditOutcome.DENIED
    assert entries[0].reason == err.reason


def test_blocked_by_policy_never_asks_and_never_reserves() -> None:
    handler = auto_approve()
    h = Harness(SecurityPolicy.default(), handler)
    with pytest.raises(PolicyBlocked):
        h.intercept(FileDelete(path="/etc/passwd"), cost=5.0)
    assert handler.requests == []
    assert h.spent() == 0.0


def test_allowed_by_policy() -> None:
    h = Harness(SecurityPolicy.permissive(), auto_approve())
    result = h.intercept(McpToolCall(server="safe", tool="read"))
    assert isinstance(result.proof, PolicyAllowed)
    assert result.reservation is None and result.budget_warning is None
    entry = h.audit.session_entries(h.session.id)[0]
    assert entry.outcome is AuditOutcome.ALLOWED and entry.id == result.audit_id


# ---------------------------------------------------------------------------
# Approval: approved / denied / deferred
# ---------------------------------------------------------------------------


def test_requires_approval_approved() -> None:
    handler = auto_approve()
    h = Harness(SecurityPolicy.default(), handler)
    result = h.intercept(HOME_FILE)
    assert isinstance(result.proof, UserApproval)
    assert len(handler.requests) == 1
    assert h.count() == 1, "one-time approval should create exactly one audit entry"
    entry = h.audit.session_entries(h.session.id)[0]
    assert entry.proof == UserApproval(entry.id)
    assert result.proof.approval_id == entry.id == result.audit_id
    assert entry.action == HOME_FILE.summary()
    assert entry.action_type == "file_delete"
    assert entry.session_id == h.session.id


def test_requires_approval_denied() -> None:
    h = Harness(SecurityPolicy.default(), auto_deny())
    with pytest.raises(ApprovalDenied) as info:
        h.intercept(HOME_FILE)
    assert info.value.reason == "test deny"
    assert str(info.value) == "approval denied: test deny"
    assert isinstance(info.value, ApprovalError)
    entry = h.audit.session_entries(h.session.id)[0]
    assert entry.outcome is AuditOutcome.DENIED and entry.reason == "test deny"


def test_no_handler_defers() -> None:
    h = Harness(SecurityPolicy.default())
    with pytest.raises(ApprovalDeferred) as info:
        h.intercept(HOME_FILE)
    err = info.value
    assert err.fallback is FallbackBehavior.SKIP
    assert h.session.approval_manager.deferred_queue.count() == 1
    pending = h.session.approval_manager.get_pending_resolutions()
    assert pending[0].id == err.resolution_id
    expected = f"action deferred (resolution: resolution:{err.resolution_id}, fallback: skip)"
    assert str(err) == expected
    entry = h.audit.session_entries(h.session.id)[0]
    assert entry.outcome is AuditOutcome.DENIED
    assert entry.reason is not None and entry.reason.startswith("action deferred (resolution: ")


def test_silent_user_defers() -> None:
    h = Harness(SecurityPolicy.default(), SilentHandler())
    with pytest.raises(ApprovalDeferred):
        h.intercept(HOME_FILE)


# ---------------------------------------------------------------------------
# Budget
# ---------------------------------------------------------------------------


def test_budget_exceeded() -> None:
    h = Harness(SecurityPolicy.default(), auto_approve())
    # The per-action max is 10.0 and the session max 100.0.
    with pytest.raises(BudgetExceeded) as info:
        h.intercept(McpToolCall(server="financial", tool="transfer"), cost=15.0)
    assert "budget exceeded" in str(info.value)
    assert "per-action limit" in str(info.value)
    assert h.spent() == 0.0


def test_budget_exceeded_is_audited_as_denied() -> None:
    h = Harness(SecurityPolicy.default(), auto_approve())
    with pytest.raises(BudgetExceeded):
        h.intercept(McpToolCall(server="financial", tool="transfer"), cost=15.0)
    entries = h.audit.session_entries(h.session.id)
    assert len(entries) == 1
    assert entries[0].outcome is AuditOutcome.DENIED
    assert entries[0].reason is not None and "budget exceeded" in entries[0].reason


def test_budget_exceeded_before_asking_the_user() -> None:
    handler = auto_approve()
    h = Harness(SecurityPolicy.default(), handler)
    with pytest.raises(BudgetExceeded):
        h.intercept(HOME_FILE, cost=15.0)
    assert handler.requests == []


def test_budget_rollback_on_dual_budget_denial() -> None:
    # The workspace budget is large, the session budget small; 50 is within the per-action 50.
    ws_tracker = WorkspaceBudgetTracker(100.0, 80)
    session_tracker = BudgetTracker(BudgetConfig.new(10.0, 50.0))
    validator = BudgetValidator(session_tracker, ws_tracker)
    with pytest.raises(ApprovalError) as info:
        validator.check_and_reserve(50.0)
    assert "budget exceeded (session budget)" in str(info.value)
    assert ws_tracker.spent() == 0.0
    assert ws_tracker.remaining() == 100.0


def test_budget_rollback_on_dual_budget_denial_through_the_interceptor() -> None:
    ws_tracker = WorkspaceBudgetTracker(100.0, 80)
    h = Harness(
        SecurityPolicy.permissive(),
        budget=BudgetConfig.new(10.0, 50.0),
        workspace_budget=ws_tracker,
    )
    with pytest.raises(BudgetExceeded) as info:
        h.intercept(McpToolCall(server="s", tool="t"), cost=50.0)
    assert "budget exceeded (session budget)" in str(info.value)
    assert ws_tracker.spent() == 0.0
    assert ws_tracker.remaining() == 100.0
    assert h.spent() == 0.0


def test_reservation_returned_and_settled_with_real_usage() -> None:
    ws_tracker = WorkspaceBudgetTracker(None)
    h = Harness(SecurityPolicy.default(), auto_approve(), workspace_budget=ws_tracker)
    result = h.intercept(HOME_FILE, cost=5.0)
    assert result.reservation is not None
    assert result.reservation.amount == 5.0
    assert h.spent() == 5.0 and ws_tracker.spent() == 5.0
    assert h.interceptor.settle(result.reservation, 2.0)
    assert h.spent() == 2.0 and ws_tracker.spent() == 2.0
    assert not h.interceptor.settle(result.reservation, 3.0)  # already settled
    assert h.spent() == 2.0


def test_policy_allowed_reserves_too() -> None:
    h = Harness(SecurityPolicy.permissive())
    result = h.intercept(McpToolCall(server="s", tool="t"), cost=4.0)
    assert isinstance(result.proof, PolicyAllowed)
    assert result.reservation is not None and h.spent() == 4.0
    assert h.interceptor.release(result.reservation)
    assert h.spent() == 0.0


def test_budget_warning_is_passed_through() -> None:
    h = Harness(SecurityPolicy.permissive())
    h.session.budget_tracker.record_cost(75.0)
    result = h.intercept(McpToolCall(server="s", tool="t"), cost=10.0)
    assert result.budget_warning is not None
    assert result.budget_warning.current_spend == 85.0
    assert result.budget_warning.percent_used == pytest.approx(85.0)


def test_reservation_released_on_denial() -> None:
    ws_tracker = WorkspaceBudgetTracker(100.0)
    h = Harness(SecurityPolicy.default(), auto_deny(), workspace_budget=ws_tracker)
    assert h.spent() == 0.0
    with pytest.raises(ApprovalDenied):
        h.intercept(HOME_FILE, cost=5.0)
    assert h.spent() == 0.0
    assert ws_tracker.spent() == 0.0


def test_reservation_released_on_deferral() -> None:
    ws_tracker = WorkspaceBudgetTracker(100.0)
    h = Harness(SecurityPolicy.default(), workspace_budget=ws_tracker)
    with pytest.raises(ApprovalDeferred):
        h.intercept(HOME_FILE, cost=5.0)
    assert h.spent() == 0.0
    assert ws_tracker.spent() == 0.0


def test_reservation_released_when_the_intercept_is_cancelled() -> None:
    handler = HangingHandler()
    h = Harness(SecurityPolicy.default(), handler)

    async def run() -> None:
        task = asyncio.create_task(h.interceptor.intercept(HOME_FILE, "test", 5.0))
        await handler.asked.wait()
        assert h.spent() == 5.0  # reserved while the user is being asked
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert h.spent() == 0.0


@pytest.mark.parametrize("cost", [math.nan, math.inf, -math.inf, -1.0])
def test_invalid_cost_refused(cost: float) -> None:
    handler = auto_approve()
    h = Harness(SecurityPolicy.default(), handler)
    with pytest.raises(InvalidCost):
        h.intercept(HOME_FILE, cost=cost)
    assert handler.requests == []
    assert h.spent() == 0.0
    assert h.count() == 0


def test_nan_cost_refused_even_when_policy_allows() -> None:
    h = Harness(SecurityPolicy.permissive())
    with pytest.raises(InvalidCost):
        h.intercept(McpToolCall(server="s", tool="t"), cost=math.nan)
    assert h.spent() == 0.0


def test_zero_cost_is_a_real_cost() -> None:
    h = Harness(SecurityPolicy.permissive())
    result = h.intercept(McpToolCall(server="s", tool="t"), cost=0.0)
    assert result.reservation is not None and result.reservation.amount == 0.0


# ---------------------------------------------------------------------------
# Session and workspace approvals
# ---------------------------------------------------------------------------


def test_session_approval_creates_audit_entry() -> None:
    h = Harness(SecurityPolicy.default(), DecisionHandler(ApproveSession()))
    result = h.intercept(HOME_FILE)
    assert isinstance(result.proof, SessionApproval)
    assert h.count() == 1, "session approval should create exactly one audit entry"


def test_session_approval_creates_a_signed_session_allowance() -> None:
    h = Harness(SecurityPolicy.default(), DecisionHandler(ApproveSession()), workspace_root=ROOT)
    result = h.intercept(HOME_FILE)
    assert isinstance(result.proof, SessionApproval)
    [allowance] = h.session.allowance_store.all()
    assert allowance.id == result.proof.allowance_id
    assert allowance.session_only
    assert allowance.workspace_root == ROOT
    assert allowance.uses_remaining is None and allowance.expires_at is None
    assert allowance.action_pattern == FilePattern(
        pattern="/home/user/file.txt", permission=Permission.DELETE
    )
    assert h.keypair.verify(allowance.id.bytes, allowance.signature_bytes)
    assert h.session.allowance_store.owner_of(allowance.id) == h.session.id.bare
    assert h.session.allowance_store.export_session_allowances() == [allowance]


def test_workspace_approval_creates_audit_entry() -> None:
    h = Harness(SecurityPolicy.default(), DecisionHandler(ApproveWorkspace()), workspace_root=ROOT)
    result = h.intercept(HOME_FILE)
    assert isinstance(result.proof, WorkspaceApproval)
    assert h.count() == 1, "workspace approval should create exactly one audit entry"


def test_workspace_approval_creates_a_workspace_allowance() -> None:
    h = Harness(SecurityPolicy.default(), DecisionHandler(ApproveWorkspace()), workspace_root=ROOT)
    result = h.intercept(HOME_FILE)
    assert isinstance(result.proof, WorkspaceApproval)
    [allowance] = h.session.allowance_store.all()
    assert allowance.id == result.proof.allowance_id
    assert not allowance.session_only
    assert allowance.workspace_root == ROOT
    assert h.session.export_workspace_allowances() == [allowance]
    assert h.session.allowance_store.owner_of(allowance.id) is None
    h.session.end_session()  # a workspace allowance outlives the session
    assert h.session.allowance_store.count() == 1


def test_session_approval_no_duplicate_audit_entry() -> None:
    # As in the original: an ordinary MCP tool is allowed by the default policy both times.
    h = Harness(SecurityPolicy.default(), DecisionHandler(ApproveSession()))
    action = McpToolCall(server="test", tool="read")
    h.intercept(action)
    assert h.count() == 1, "first call should create exactly one audit entry"
    h.intercept(action)
    assert h.count() == 2, "second call should add exactly one more audit entry"


def test_second_call_after_session_approval_is_matched_by_the_allowance() -> None:
    handler = DecisionHandler(ApproveSession())
    h = Harness(SecurityPolicy.default(), handler, workspace_root=ROOT)
    first = h.intercept(HOME_FILE)
    assert isinstance(first.proof, SessionApproval)
    assert h.count() == 1
    second = h.intercept(HOME_FILE)
    assert second.proof == AllowanceProof(first.proof.allowance_id)
    assert len(handler.requests) == 1  # the user was asked once
    assert h.count() == 2
    assert h.audit.session_entries(h.session.id)[1].proof == second.proof


def test_session_allowance_bound_to_the_workspace_root() -> None:
    handler = DecisionHandler(ApproveSession())
    h = Harness(SecurityPolicy.default(), handler, workspace_root=ROOT)
    h.intercept(HOME_FILE)
    elsewhere = SecurityInterceptor(
        h.session,
        SecurityPolicy.default(),
        h.keypair,
        workspace_root=Path("/other/project"),
        audit=h.audit,
    )
    result = asyncio.run(elsewhere.intercept(HOME_FILE, "test"))
    assert isinstance(result.proof, SessionApproval)  # asked again, new allowance
    assert len(handler.requests) == 2


def test_session_approval_without_pattern_falls_back_to_user_approval() -> None:
    h = Harness(SecurityPolicy.default(), DecisionHandler(ApproveSession()))
    result = h.intercept(FinancialTransaction(amount="10", recipient="bob"))
    assert isinstance(result.proof, UserApproval)
    assert h.session.allowance_store.count() == 0
    assert h.count() == 1


def test_command_session_approval_covers_exactly_that_command_and_its_args() -> None:
    handler = DecisionHandler(ApproveSession())
    h = Harness(SecurityPolicy.default(), handler, workspace_root=ROOT)
    first = h.intercept(ExecuteCommand(command="git", args=["status"]))
    assert isinstance(first.proof, SessionApproval)
    [allowance] = h.session.allowance_store.all()
    assert allowance.action_pattern == CommandPattern(command="git", args=("status",))

    again = h.intercept(ExecuteCommand(command="git", args=["status"]))
    assert again.proof == AllowanceProof(first.proof.allowance_id)
    assert len(handler.requests) == 1
    handler.decision = Deny(reason="ask me first")
    for args in (["push", "--force"], ["status", "--porcelain"], []):
        with pytest.raises(ApprovalDenied):
            h.intercept(ExecuteCommand(command="git", args=args))
    assert [r.action for r in handler.requests[1:]] == [
        ExecuteCommand(command="git", args=["push", "--force"]),
        ExecuteCommand(command="git", args=["status", "--porcelain"]),
        ExecuteCommand(command="git", args=[]),
    ]
    with pytest.raises(ApprovalDenied):
        h.intercept(ExecuteCommand(command="git2", args=["status"]))


@pytest.mark.parametrize(
    ("approved", "other"),
    [
        (ExecuteCommand(command="git", args=["status"]), ExecuteCommand(command="git", args=[])),
        (ExecuteCommand(command="git", args=[]), ExecuteCommand(command="git", args=["push"])),
        (
            PluginHttpRequest(plugin_id="w", url="https://api.example/a", method="GET"),
            PluginHttpRequest(plugin_id="w", url="https://api.example/b", method="GET"),
        ),
        (
            PluginFileAccess(plugin_id="w", path="/data/a", mode=Permission.READ),
            PluginFileAccess(plugin_id="w", path="/data/b", mode=Permission.READ),
        ),
    ],
    ids=lambda v: getattr(v, "action_type", None) or "",
)
def test_approve_always_of_an_action_a_capability_cannot_pin_is_an_exact_session_grant(
    approved: SensitiveAction, other: SensitiveAction
) -> None:
    handler = DecisionHandler(ApproveAlways())
    h = Harness(SecurityPolicy.default(), handler, workspace_root=ROOT)
    first = h.intercept(approved)
    assert isinstance(first.proof, SessionApproval)  # no capability: it would cover `other`
    assert h.session.capabilities.list_tokens() == []
    assert h.intercept(approved).proof == AllowanceProof(first.proof.allowance_id)
    handler.decision = Deny(reason="ask me first")
    with pytest.raises(ApprovalDenied):
        h.intercept(other)
    assert len(handler.requests) == 2


def test_custom_allowance_decision_gives_allowance_proof() -> None:
    custom = Allowance.create(ExactTool(server="fs", tool="write"), session_only=True)
    h = Harness(SecurityPolicy.default(), DecisionHandler(ApproveWithAllowance(allowance=custom)))
    h.interceptor.policy.approval_required_tools.add("fs")
    result = h.intercept(McpToolCall(server="fs", tool="write"))
    assert result.proof == AllowanceProof(custom.id)
    assert h.count() == 1


# ---------------------------------------------------------------------------
# Our fix: no wildcard grants from a concrete action
# ---------------------------------------------------------------------------


def test_session_approval_of_a_star_path_does_not_allow_other_paths() -> None:
    handler = DecisionHandler(ApproveSession())
    h = Harness(SecurityPolicy.default(), handler)
    first = h.intercept(FileDelete(path="/tmp/*"))
    assert isinstance(first.proof, SessionApproval)
    [allowance] = h.session.allowance_store.all()
    assert allowance.action_pattern == FilePattern(pattern="/tmp/\\*", permission=Permission.DELETE)

    handler.decision = Deny(reason="not that one")
    with pytest.raises(ApprovalDenied):
        h.intercept(FileDelete(path="/tmp/other"))
    with pytest.raises(ApprovalDenied):
        h.intercept(FileDelete(path="/tmp/a/b"))
    # The literal path itself is still covered by the allowance.
    again = h.intercept(FileDelete(path="/tmp/*"))
    assert again.proof == AllowanceProof(first.proof.allowance_id)


@pytest.mark.parametrize("path", ["/tmp/?", "/tmp/[ab]", "/tmp/{a,b}", "/tmp/**"])
def test_workspace_approval_of_glob_like_paths_stays_literal(path: str) -> None:
    handler = DecisionHandler(ApproveWorkspace())
    h = Harness(SecurityPolicy.default(), handler, workspace_root=ROOT)
    h.intercept(FileDelete(path=path))
    handler.decision = Deny(reason="no")
    for other in ("/tmp/a", "/tmp/b", "/tmp/x/y"):
        with pytest.raises(ApprovalDenied):
            h.intercept(FileDelete(path=other))
    assert isinstance(h.intercept(FileDelete(path=path)).proof, AllowanceProof)


def test_approve_always_mints_a_capability_that_does_not_grant_other_paths() -> None:
    handler = DecisionHandler(ApproveAlways())
    h = Harness(SecurityPolicy.default(), handler)
    result = h.intercept(FileDelete(path="/tmp/*"))
    assert isinstance(result.proof, CapabilityCreated)

    caps = h.session.capabilities
    assert caps.find_capability("file:///tmp/*", Permission.DELETE) is not None
    assert caps.find_capability("file:///tmp/other", Permission.DELETE) is None
    assert caps.find_capability("file:///tmp/a/b", Permission.DELETE) is None

    handler.decision = Deny(reason="not that one")
    with pytest.raises(ApprovalDenied):
        h.intercept(FileDelete(path="/tmp/other"))
    again = h.intercept(FileDelete(path="/tmp/*"))
    assert again.proof == Capability(result.proof.token_id)


def test_approve_always_token_details_and_two_audit_entries() -> None:
    h = Harness(SecurityPolicy.default(), DecisionHandler(ApproveAlways()))
    before = utcnow()
    result = h.intercept(HOME_FILE)
    assert isinstance(result.proof, CapabilityCreated)
    token = h.session.capabilities.get(result.proof.token_id)
    assert token is not None
    assert token.scope is TokenScope.PERSISTENT
    assert token.permissions == [Permission.DELETE]
    assert token.resource.as_str() == "file:///home/user/file.txt"
    assert not token.resource.is_glob()
    assert token.user_id == h.keypair.key_id
    assert token.issuer == h.keypair.public_key_bytes
    assert token.has_valid_signature()
    assert token.approval_audit_id == result.proof.approval_id
    assert token.expires_at is not None
    assert before + ALLOW_ALWAYS_TTL - timedelta(seconds=5) <= token.expires_at
    assert token.expires_at <= utcnow() + ALLOW_ALWAYS_TTL

    entries = h.audit.session_entries(h.session.id)
    assert len(entries) == 2  # the approval, then the grant
    assert entries[0].proof == UserApproval(entries[0].id, "always")
    assert entries[0].id == result.proof.approval_id
    assert entries[1].proof == result.proof
    assert h.session.allowance_store.count() == 0


def test_approve_always_capability_survives_a_json_round_trip_literally() -> None:
    h = Harness(SecurityPolicy.default(), DecisionHandler(ApproveAlways()))
    result = h.intercept(FileDelete(path="/tmp/*"))
    assert isinstance(result.proof, CapabilityCreated)
    token = h.session.capabilities.get(result.proof.token_id)
    assert token is not None
    restored = CapabilityToken.model_validate_json(token.model_dump_json())
    assert restored.has_valid_signature()
    assert restored.grants("file:///tmp/*", Permission.DELETE)
    assert not restored.grants("file:///tmp/other", Permission.DELETE)


def test_approve_always_without_resource_falls_back_to_user_approval() -> None:
    h = Harness(SecurityPolicy.default(), DecisionHandler(ApproveAlways()))
    result = h.intercept(TransmitData(destination="api.example.com", data_type="report"))
    assert isinstance(result.proof, UserApproval)
    assert h.session.capabilities.list_tokens() == []
    assert h.count() == 2


@pytest.mark.parametrize(
    ("resource", "other"),
    [
        ("file:///tmp/*", "file:///tmp/x"),
        ("mcp://s*:t?", "mcp://sx:ty"),
        ("file:///tmp/[ab]\\x", "file:///tmp/a\\x"),
    ],
)
def test_literal_resource_pattern_matches_only_itself(resource: str, other: str) -> None:
    pattern = literal_resource_pattern(resource)
    assert pattern.matches(resource)
    assert not pattern.matches(other)
    reparsed = ResourcePattern.new(pattern.as_str())
    assert reparsed.matches(resource) and not reparsed.matches(other)


def test_literal_resource_pattern_without_metacharacters_is_exact() -> None:
    for resource in ("file:///tmp/plain", "file:///tmp/a{b,c}", "file:///tmp/back\\slash"):
        pattern = literal_resource_pattern(resource)
        assert not pattern.is_glob()
        assert pattern.as_str() == resource
        assert ResourcePattern.new(pattern.as_str()).matches(resource)


# ---------------------------------------------------------------------------
# Capabilities
# ---------------------------------------------------------------------------


def _grant(
    h: Harness, resource: str, permission: Permission, *, single_use: bool = False
) -> CapabilityToken:
    token = CapabilityToken.create_with_options(
        ResourcePattern.new(resource),
        [permission],
        TokenScope.SESSION,
        h.keypair.key_id,
        AuditEntryId.new(),
        h.keypair,
        None,
        single_use=single_use,
    )
    h.session.capabilities.add(token)
    return token


def test_existing_capability_authorizes_without_asking() -> None:
    handler = auto_deny()
    h = Harness(SecurityPolicy.default(), handler)
    token = _grant(h, "file:///home/user/**", Permission.DELETE)
    result = h.intercept(HOME_FILE)
    assert result.proof == Capability(token.id)
    assert handler.requests == []
    assert h.count() == 1
    # The wrong permission is not covered.
    with pytest.raises(ApprovalDenied):
        h.intercept(ExecuteCommand(command="ls", args=[]))


def test_capability_path_reserves_budget() -> None:
    h = Harness(SecurityPolicy.default(), auto_deny())
    _grant(h, "file:///home/user/**", Permission.DELETE)
    result = h.intercept(HOME_FILE, cost=3.0)
    assert isinstance(result.proof, Capability)
    assert result.reservation is not None and h.spent() == 3.0


def test_capability_budget_exceeded_is_denied_and_audited() -> None:
    h = Harness(SecurityPolicy.default(), auto_deny())
    _grant(h, "file:///home/user/**", Permission.DELETE)
    with pytest.raises(BudgetExceeded):
        h.intercept(HOME_FILE, cost=15.0)
    assert h.spent() == 0.0
    [entry] = h.audit.session_entries(h.session.id)
    assert entry.outcome is AuditOutcome.DENIED
    assert entry.reason is not None and "budget exceeded" in entry.reason


def test_policy_block_wins_over_a_capability() -> None:
    h = Harness(SecurityPolicy.default())
    _grant(h, "exec://sudo", Permission.EXECUTE)
    with pytest.raises(PolicyBlocked):
        h.intercept(ExecuteCommand(command="sudo", args=[]))


def test_single_use_capability_is_consumed() -> None:
    handler = auto_deny()
    h = Harness(SecurityPolicy.default(), handler)
    token = _grant(h, "file:///home/user/file.txt", Permission.DELETE, single_use=True)
    assert h.intercept(HOME_FILE).proof == Capability(token.id)
    assert h.session.capabilities.is_used(token.id)
    with pytest.raises(ApprovalDenied):
        h.intercept(HOME_FILE, cost=2.0)
    assert h.spent() == 0.0


# ---------------------------------------------------------------------------
# Wiring
# ---------------------------------------------------------------------------


def test_default_audit_log_and_repr() -> None:
    session = AgentSession()
    interceptor = SecurityInterceptor(
        session, SecurityPolicy.permissive(), KeyPair.generate(), workspace_root=None
    )
    asyncio.run(interceptor.intercept(McpToolCall(server="s", tool="t"), "ctx"))
    assert len(interceptor.audit) == 1
    assert "SecurityInterceptor" in repr(interceptor)


def test_audit_log_is_shared_between_sessions_but_counted_per_session() -> None:
    audit = AuditLog()
    key = KeyPair.generate()
    sessions = [AgentSession(), AgentSession()]
    for session in sessions:
        interceptor = SecurityInterceptor(
            session, SecurityPolicy.permissive(), key, workspace_root=None, audit=audit
        )
        asyncio.run(interceptor.intercept(McpToolCall(server="s", tool="t"), "ctx"))
    assert len(audit) == 2
    assert [audit.count_session(s.id) for s in sessions] == [1, 1]
    assert audit.count_session(SessionId.new()) == 0


def test_interceptor_uses_the_sessions_current_approval_manager() -> None:
    h = Harness(SecurityPolicy.default())
    h.session.approval_manager.register_handler(auto_approve())
    assert isinstance(h.intercept(HOME_FILE).proof, UserApproval)
    h.session.approval_manager.unregister_handler()
    with pytest.raises(ApprovalDeferred):
        h.intercept(HOME_FILE)


# ---------------------------------------------------------------------------
# The security state the interceptor takes (a protocol, not AgentSession)
# ---------------------------------------------------------------------------


def _imported_modules(path: Path) -> set[str]:
    """Every module a source file imports, including under ``if TYPE_CHECKING:``."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = ["astrid", "security"][: 3 - node.level] if node.level else []
            base = ".".join([*package, *filter(None, [node.module])])
            names.update({base, *(f"{base}.{alias.name}" for alias in node.names)})
    return names


def test_the_security_package_never_imports_the_session() -> None:
    package = Path(astrid.security.__file__).parent
    imports = {path.name: _imported_modules(path) for path in package.glob("*.py")}
    assert "astrid.security.state" in imports["interceptor.py"]
    assert "astrid.ids" in imports["interceptor.py"]
    importers = sorted(name for name, modules in imports.items() if "astrid.session" in modules)
    assert importers == []


def test_an_agent_session_is_a_security_state() -> None:
    state: SecurityState = AgentSession()  # mypy checks the structure, isinstance the members
    assert isinstance(state, SecurityState)
    assert not isinstance(AllowanceStore(), SecurityState)


@dataclass
class BareState:
    """The members the interceptor reads, and nothing of a session's conversation."""

    id: SessionId
    capabilities: CapabilityStore
    approval_manager: ApprovalManager
    budget_tracker: BudgetTracker
    workspace_budget_tracker: WorkspaceBudgetTracker | None = None


def test_the_interceptor_runs_on_any_security_state() -> None:
    store = AllowanceStore()
    state = BareState(
        SessionId.new(),
        CapabilityStore(),
        ApprovalManager(store, DeferredResolutionStore()),
        BudgetTracker(BudgetConfig.new(10.0, 5.0)),
    )
    state.approval_manager.register_handler(DecisionHandler(ApproveSession()))
    interceptor = SecurityInterceptor(
        state, SecurityPolicy.default(), KeyPair.generate(), workspace_root=None
    )
    first = asyncio.run(interceptor.intercept(HOME_FILE, "ctx", 2.0))
    assert isinstance(first.proof, SessionApproval)
    assert store.find_matching(HOME_FILE, None) is not None
    assert state.budget_tracker.spent() == 2.0
    again = asyncio.run(interceptor.intercept(HOME_FILE, "ctx"))
    assert again.proof == AllowanceProof(first.proof.allowance_id)
    assert interceptor.audit.count_session(state.id) == 2
