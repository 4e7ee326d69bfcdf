"""The security interceptor: the one gate every sensitive action passes before it runs.

A port of the original ``SecurityInterceptor``. ``intercept`` runs, in order: the policy (a
block is final), an existing capability token, the budget reservation, a policy allowance, and
finally the ``ApprovalManager`` (allowance, then the human, else a deferral). Every decision is
written to an audit log.

Our deliberate differences from the original (design §5 items 4 and 5):

* A NaN, infinite or negative ``estimated_cost`` raises ``InvalidCost`` before anything else
  happens (the original let a NaN estimate through).
* The budget reservation is returned in ``InterceptResult.reservation`` so the caller can settle
  it with the real cost; it is released when the approval is denied or deferred, or when the
  approval step fails or is cancelled (the original kept the money reserved).
* A session or workspace approval creates an allowance for exactly the action
  (``pattern_for_action``: glob-escaped, a command with its arguments), and "approve always"
  mints a token whose pattern matches the concrete resource only (``literal_resource_pattern``):
  approving ``/tmp/*`` never grants ``/tmp/other``, approving ``git status`` never grants
  ``git push``. "Always" of an action whose resource leaves something out (``capability_widens``)
  is an exact session allowance instead.
* A budget denial is audited like every other denial (the original returned it unaudited).
* A single-use capability token is consumed when it authorizes an action.
* ``intercept`` never waits on a store on the event loop: with a persistent capability store,
  looking a token up, using a single-use one and minting one run in a worker thread, and a
  deferral is written to a persistent queue the same way.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from astrid import tracing
from astrid._exports import module_attributes
from astrid.errors import (
    ApprovalDeferred,
    ApprovalDenied,
    ApprovalError,
    CapabilityError,
    InvalidCost,
    PolicyBlocked,
)
from astrid.ids import SessionId
from astrid.money import money
from astrid.security import approvals, audit
from astrid.security.actions import SensitiveAction
from astrid.security.approvals import AllowanceProof, SessionApproval, WorkspaceApproval
from astrid.security.budget import BudgetValidator, BudgetWarning, DualReservation
from astrid.security.capabilities import (
    AuditEntryId,
    CapabilityToken,
    ResourcePattern,
    TokenScope,
)
from astrid.security.crypto import KeyPair
from astrid.security.deferred import ApprovalNeeded, format_resolution_id
from astrid.security.escape import ESCAPE_CONTEXT
from astrid.security.policy import Blocked, PolicyAllowed, SecurityPolicy, action_resource
from astrid.security.state import SecurityState
from astrid.timeutil import utcnow

__all__ = [
    "ALLOW_ALWAYS_TTL",
    "AllowanceProof",
    "ApprovalDeferred",
    "ApprovalDenied",
    "AuditEntry",
    "AuditLog",
    "AuditOutcome",
    "Capability",
    "CapabilityCreated",
    "InterceptProof",
    "InterceptResult",
    "PolicyAllowed",
    "PolicyBlocked",
    "SecurityInterceptor",
    "SessionApproval",
    "UserApproval",
    "WorkspaceApproval",
    "describe_spend",
    "literal_resource_pattern",
]

ALLOW_ALWAYS_TTL = timedelta(hours=1)
"""How long a capability minted by an "approve always" decision lives."""


# --------------------------------------------------------------------------------------------
# errors


# --------------------------------------------------------------------------------------------
# proofs and results


@dataclass(frozen=True, slots=True)
class Capability:
    """An existing capability token authorized the action."""

    token_id: UUID


@dataclass(frozen=True, slots=True)
class UserApproval:
    """A human approved this one action; ``approval_id`` is the audit entry of the approval.

    ``scope`` is ``"once"``, or ``"always"`` for the approval an "approve always" decision
    records before its token is minted (and its proof when the mint failed)."""

    approval_id: AuditEntryId
    scope: str = "once"


@dataclass(frozen=True, slots=True)
class CapabilityCreated:
    """A human approved always: a capability token was minted."""

    token_id: UUID
    approval_id: AuditEntryId


InterceptProof = (
    PolicyAllowed
    | Capability
    | AllowanceProof
    | UserApproval
    | SessionApproval
    | WorkspaceApproval
    | CapabilityCreated
)
"""How an action that passed the interceptor was authorized.

``PolicyAllowed`` is the policy's own result; ``AllowanceProof`` (an existing or custom
allowance), ``SessionApproval`` and ``WorkspaceApproval`` are the approval manager's proofs,
passed on as they are.
"""


@dataclass(frozen=True, slots=True)
class InterceptResult:
    """A passed intercept: the proof, any budget warning and the open budget reservation."""

    proof: InterceptProof
    budget_warning: BudgetWarning | None = None
    reservation: DualReservation | None = None
    audit_id: AuditEntryId | None = None


# --------------------------------------------------------------------------------------------
# audit


class AuditOutcome(StrEnum):
    """Whether an audited action was let through."""

    ALLOWED = "allowed"
    DENIED = "denied"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One security decision: who, what, the outcome, the proof or the reason."""

    id: AuditEntryId
    session_id: SessionId
    action_type: str
    action: str
    outcome: AuditOutcome
    proof: InterceptProof | None = None
    reason: str | None = None
    timestamp: datetime = field(default_factory=utcnow)


class AuditLog:
    """A thread-safe, in-memory, append-only audit log (subclass it to persist entries)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[AuditEntry] = []

    def append(self, entry: AuditEntry) -> None:
        """Record ``entry``."""
        with self._lock:
            self._entries.append(entry)

    def entries(self) -> list[AuditEntry]:
        """Every entry, oldest first."""
        with self._lock:
            return list(self._entries)

    def session_entries(self, session_id: SessionId) -> list[AuditEntry]:
        """The entries of one session, oldest first."""
        with self._lock:
            return [e for e in self._entries if e.session_id == session_id]

    def count_session(self, session_id: SessionId) -> int:
        """How many entries one session has."""
        return len(self.session_entries(session_id))

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __bool__(self) -> bool:
        # An empty log is still a log: never let `log or default` replace it.
        return True

    def __repr__(self) -> str:
        return f"AuditLog(entries={len(self)})"


# --------------------------------------------------------------------------------------------
# helpers


def literal_resource_pattern(resource: str) -> ResourcePattern:
    """A pattern matching exactly ``resource``, stable through ``ResourcePattern.new``.

    A resource with ``*``, ``?`` or ``[`` becomes a glob with every metacharacter escaped (so it
    still matches only itself after a JSON round trip, which re-parses with ``new``); any other
    resource is an exact pattern. Raises ``InvalidPattern`` for a ``..`` segment.
    """
    return ResourcePattern.exact(resource)


def _granted_proof(proof: approvals.ApprovalProof, approval_id: AuditEntryId) -> InterceptProof:
    """The interceptor's proof for what the approval manager granted."""
    if isinstance(proof, AllowanceProof | SessionApproval | WorkspaceApproval):
        return proof
    if isinstance(proof, approvals.CustomAllowance):
        return AllowanceProof(proof.allowance_id)
    if isinstance(proof, approvals.AlwaysAllow) and proof.token_id is not None:
        return CapabilityCreated(proof.token_id, approval_id)
    return UserApproval(approval_id)


def _actor(proof: InterceptProof | None) -> str:
    """Who made the decision: a human for an approval, else the runtime's own checks."""
    if isinstance(proof, UserApproval | SessionApproval | WorkspaceApproval | CapabilityCreated):
        return "user"
    return "runtime"


def describe_spend(state: SecurityState) -> str:
    """The session's spend against its limits, and its workspace's: the reason text of the
    budget reservation and refusal entries."""
    tracker = state.budget_tracker
    limits = tracker.config()
    text = (
        f"session spend {money(tracker.spent())} of a {money(limits.session_max_usd)} limit "
        f"(per call at most {money(limits.per_action_max_usd)})"
    )
    workspace = state.workspace_budget_tracker
    if workspace is not None:
        maximum = workspace.max_usd()
        limit = "no limit" if maximum is None else f"a {money(maximum)} limit"
        text += f"; workspace spend {money(workspace.spent())} of {limit}"
    return text


def _require_cost(cost: float) -> float:
    """``cost`` as a float; ``InvalidCost`` for a non-number, NaN, infinity or a negative."""
    if isinstance(cost, bool) or not isinstance(cost, numbers.Real):
        raise InvalidCost(f"invalid estimated cost {cost!r}: expected a number of USD")
    value = float(cost)
    if not math.isfinite(value) or value < 0:
        raise InvalidCost(
            f"invalid estimated cost {value!r}: a cost must be a finite, non-negative number"
        )
    return value


# --------------------------------------------------------------------------------------------
# the interceptor


class SecurityInterceptor:
    """Policy, capability, budget and approval checks for one session, with an audit trail.

    ``session`` is any ``SecurityState`` (an ``AgentSession`` is one). Its stores are read at
    each call, so a store or manager the session swaps in (for example a persistent deferred
    queue) is used from then on.
    """

    def __init__(
        self,
        session: SecurityState,
        policy: SecurityPolicy,
        keypair: KeyPair,
        *,
        workspace_root: Path | None,
        audit: AuditLog | None = None,
        trusted_issuers: Iterable[bytes] = (),
    ) -> None:
        self.session: SecurityState = session
        self.policy = policy
        self.keypair = keypair
        self.workspace_root = None if workspace_root is None else Path(workspace_root)
        self.audit: AuditLog = audit if audit is not None else AuditLog()
        # Only tokens this runtime's key (or a key the host trusts) issued authorize actions.
        self.trusted_issuers: frozenset[bytes] = frozenset(
            {keypair.public_key_bytes, *(bytes(k) for k in trusted_issuers)}
        )

    @property
    def budget_validator(self) -> BudgetValidator:
        """A validator over the session's budget and its workspace budget (if any)."""
        return BudgetValidator(self.session.budget_tracker, self.session.workspace_budget_tracker)

    def settle(self, reservation: DualReservation, actual_cost: float) -> bool:
        """Settle a reservation from ``intercept`` with the real cost; False if already closed."""
        return self.budget_validator.settle(reservation, actual_cost)

    def release(self, reservation: DualReservation) -> bool:
        """Hand a reservation from ``intercept`` back in full; False if already closed."""
        return self.budget_validator.release(reservation)

    async def intercept(
        self,
        action: SensitiveAction,
        context: str,
        estimated_cost: float | None = None,
        *,
        require_approval: bool = False,
        ask_human: bool = True,
        audit_type: str | None = None,
    ) -> InterceptResult:
        """Authorize ``action`` or raise (PolicyBlocked, BudgetExceeded, ApprovalDenied, ...).

        ``require_approval`` treats an action the policy allows as one needing an approval (a
        token, an allowance or the human); ``ask_human=False`` never asks the human: an action
        needing an approval runs only if an existing token or allowance covers it, else it is
        denied. Neither can lift a policy block. ``audit_type`` is the action type the audit
        entries carry (default the action's own; the runtime's workspace escapes: ``escape``).
        """
        cost = None if estimated_cost is None else _require_cost(estimated_cost)
        kind = audit_type or action.action_type

        # 1. Policy: a block is final.
        policy_result = self.policy.check(action)
        if isinstance(policy_result, Blocked):
            self._audit_denied(action, policy_result.reason, kind=kind)
            raise PolicyBlocked(action.action_type, policy_result.reason)

        # 2. An existing capability token.
        mapped = action_resource(action)
        if mapped is not None:
            token = await self.session.capabilities.afind_capability(
                *mapped, trusted_issuers=self.trusted_issuers
            )
            if token is not None:
                result = await self._authorize_with_token(action, token, cost, kind)
                if result is not None:
                    return result

        # 3. Budget: reserve the estimate on both budgets.
        reservation = self._reserve(action, cost, kind)
        try:
            # 4. The policy needs no approval.
            if isinstance(policy_result, PolicyAllowed) and not require_approval:
                return self._allowed(action, policy_result, reservation, kind=kind)
            # 5. Allowance, human, or deferral (allowance only when no human may be asked).
            if not ask_human:
                return self._allowance_only(action, reservation, kind)
            return await self._approve(action, context, reservation, kind)
        except BaseException:
            if reservation is not None:
                self.budget_validator.release(reservation)
            raise

    # -- steps --------------------------------------------------------------------------------

    def _reserve(
        self, action: SensitiveAction, cost: float | None, kind: str
    ) -> DualReservation | None:
        if cost is None:
            return None
        try:
            reservation = self.budget_validator.reserve(cost)
        except ApprovalError as exc:
            self._audit_denied(action, str(exc), kind=kind)
            raise
        audit.record(
            self.session, self.keypair, actor="runtime", action_type="budget_reservation",
            action=action.summary(), decision="reserved",
            reason=f"reserved {money(cost)}; {describe_spend(self.session)}",
        )
        return reservation

    async def _authorize_with_token(
        self, action: SensitiveAction, token: CapabilityToken, cost: float | None, kind: str
    ) -> InterceptResult | None:
        reservation = self._reserve(action, cost, kind)
        if token.single_use:
            try:
                await self.session.capabilities.ause_token(token.id)
            except CapabilityError:
                # Used up, revoked or expired since the lookup: fall through to the approval.
                if reservation is not None:
                    self.budget_validator.release(reservation)
                return None
        try:
            return self._allowed(action, Capability(token.id), reservation, kind=kind)
        except BaseException:
            if reservation is not None:
                self.budget_validator.release(reservation)
            raise

    def _allowance_only(
        self, action: SensitiveAction, reservation: DualReservation | None, kind: str
    ) -> InterceptResult:
        """Allowed by a stored allowance, else denied: nobody is asked."""
        store = self.session.approval_manager.allowance_store
        allowance = store.find_matching_and_consume(action, self.workspace_root)
        if allowance is None:
            reason = (
                f"{action.summary()} needs an approval and no capability or allowance covers "
                "it; no one is asked for this tool"
            )
            self._audit_denied(action, reason, kind=kind)
            raise ApprovalDenied(reason)
        return self._allowed(action, AllowanceProof(allowance.id), reservation, kind=kind)

    async def _approve(
        self,
        action: SensitiveAction,
        context: str,
        reservation: DualReservation | None,
        kind: str,
    ) -> InterceptResult:
        tracing.security_event("approval.requested", action_type=str(action.action_type))
        try:
            outcome = await self.session.approval_manager.check_approval(
                action, context, self.workspace_root, signer=self.keypair.sign
            )
        except ApprovalError as exc:  # a handler that answered with something else
            self._audit_denied(action, str(exc), kind=kind)
            raise
        if not isinstance(outcome, approvals.Allowed) or not isinstance(
            outcome.proof, approvals.AllowanceProof | approvals.CustomAllowance
        ):  # a human was asked (or would have been: a deferral), not answered by an allowance
            audit.record(
                self.session, self.keypair, actor="runtime", action_type=kind,
                action=action.summary(), decision="approval_asked", reason=context,
            )
        if isinstance(outcome, approvals.Denied):
            self._audit_denied(action, outcome.reason, kind=kind)
            raise ApprovalDenied(outcome.reason)
        if isinstance(outcome, approvals.Deferred):
            error = ApprovalDeferred(outcome.resolution_id, outcome.fallback)
            self._audit_denied(action, str(error), "deferred", kind=kind)
            raise error

        proof = outcome.proof
        if isinstance(proof, approvals.AllowanceProof | approvals.CustomAllowance):
            return self._allowed(
                action, AllowanceProof(proof.allowance_id), reservation, kind=kind
            )

        approval_id = AuditEntryId.new()
        if not isinstance(proof, approvals.AlwaysAllow):
            return self._allowed(
                action, _granted_proof(proof, approval_id), reservation, approval_id, kind
            )

        # AlwaysAllow: record the approval, mint the capability, record the grant.
        approved = UserApproval(approval_id, "always")
        self._audit(action, AuditOutcome.ALLOWED, approved, None, approval_id, kind=kind)
        token_id = await self._amint_capability(action, approval_id)
        minted: InterceptProof = (
            approved if token_id is None else CapabilityCreated(token_id, approval_id)
        )
        return self._allowed(action, minted, reservation, kind=kind)

    def resolve_deferred(
        self, resolution_id: UUID, response: approvals.ApprovalResponse | approvals.ApprovalDecision
    ) -> InterceptProof:
        """Resolve a deferred item of the session and create the grant its decision names.

        A session or workspace approval stores the allowance for the queued action (in this
        interceptor's workspace), "approve always" mints its capability, so the same action is
        then allowed without being deferred again. Raises ``ApprovalDenied`` for a denial, an
        unknown item or a response to another request. Audited like a live approval.
        """
        manager = self.session.approval_manager
        item = manager.deferred_queue.get(resolution_id)
        request = (
            item.action.request
            if item is not None and isinstance(item.action, ApprovalNeeded)
            else None
        )
        queued = request.action if request is not None else None
        kind = "escape" if request is not None and request.context.startswith(
            ESCAPE_CONTEXT
        ) else None
        approval_id = AuditEntryId.new()
        outcome = manager.resolve_deferred(
            resolution_id,
            response,
            self.workspace_root,
            signer=self.keypair.sign,
            mint=lambda action: self._mint_capability(action, approval_id),
        )
        if isinstance(outcome, approvals.Denied):
            if queued is not None:
                self._audit_denied(queued, outcome.reason, "resolved_denied", kind=kind)
            raise ApprovalDenied(outcome.reason)
        if isinstance(outcome, approvals.Deferred):  # resolve_deferred never defers again
            raise ApprovalDenied(f"deferred item {format_resolution_id(resolution_id)} stays")
        proof = _granted_proof(outcome.proof, approval_id)
        if queued is not None:
            self._audit(queued, AuditOutcome.ALLOWED, proof, None, approval_id, "resolved_allowed",
                        kind=kind)
        return proof

    def _mint_capability(self, action: SensitiveAction, approval_id: AuditEntryId) -> UUID | None:
        """Mint and store a 1 h persistent token for exactly this resource; None on failure."""
        token = self._new_capability(action, approval_id)
        try:
            if token is not None:
                self.session.capabilities.add(token)
        except Exception:
            return None
        return None if token is None else token.id

    async def _amint_capability(
        self, action: SensitiveAction, approval_id: AuditEntryId
    ) -> UUID | None:
        """``_mint_capability`` with the capability store's write off the event loop."""
        token = self._new_capability(action, approval_id)
        try:
            if token is not None:
                await self.session.capabilities.aadd(token)
        except Exception:
            return None
        return None if token is None else token.id

    def _new_capability(
        self, action: SensitiveAction, approval_id: AuditEntryId
    ) -> CapabilityToken | None:
        """The signed 1 h persistent token for exactly this action's resource, or None."""
        mapped = action_resource(action)
        if mapped is None:
            return None
        resource, permission = mapped
        try:
            return CapabilityToken.create(
                literal_resource_pattern(resource),
                [permission],
                TokenScope.PERSISTENT,
                self.keypair.key_id,
                approval_id,
                self.keypair,
                ALLOW_ALWAYS_TTL,
            )
        except Exception:
            return None

    # -- audit --------------------------------------------------------------------------------

    def _allowed(
        self,
        action: SensitiveAction,
        proof: InterceptProof,
        reservation: DualReservation | None,
        entry_id: AuditEntryId | None = None,
        kind: str | None = None,
    ) -> InterceptResult:
        audit_id = self._audit(action, AuditOutcome.ALLOWED, proof, None, entry_id, kind=kind)
        warning = reservation.warning if reservation is not None else None
        return InterceptResult(proof, warning, reservation, audit_id)

    def _audit_denied(
        self,
        action: SensitiveAction,
        reason: str,
        decision: str | None = None,
        *,
        kind: str | None = None,
    ) -> AuditEntryId:
        return self._audit(action, AuditOutcome.DENIED, None, reason, None, decision, kind=kind)

    def _audit(
        self,
        action: SensitiveAction,
        outcome: AuditOutcome,
        proof: InterceptProof | None,
        reason: str | None,
        entry_id: AuditEntryId | None,
        decision: str | None = None,
        *,
        kind: str | None = None,
    ) -> AuditEntryId:
        """Record a decision in the in-memory log and, persisted with the session's next save,
        the audit log (``decision``: the stored label when it says more than the outcome;
        ``kind``: the action type recorded, default the action's own)."""
        entry = AuditEntry(
            id=entry_id if entry_id is not None else AuditEntryId.new(),
            session_id=self.session.id,
            action_type=kind or action.action_type,
            action=action.summary(),
            outcome=outcome,
            proof=proof,
            reason=reason,
        )
        self.audit.append(entry)
        audit.record(
            self.session,
            self.keypair,
            actor=_actor(proof),
            action_type=entry.action_type,
            action=entry.action,
            decision=decision or str(outcome),
            proof=proof,
            reason=reason,
            entry_id=str(entry.id.uuid),
        )
        return entry.id

    def __repr__(self) -> str:
        return (
            f"SecurityInterceptor(session={self.session.id}, policy={self.policy!r}, "
            f"workspace_root={self.workspace_root!r}, audit={self.audit!r})"
        )


if not TYPE_CHECKING:  # the proof's name before 0.2.0, served with a DeprecationWarning
    __getattr__, __dir__ = module_attributes(__name__, renamed={"Allowance": "AllowanceProof"})
