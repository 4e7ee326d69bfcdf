"""The approval flow: decisions, responses, the handler protocol and the ``ApprovalManager``.

``check_approval`` tries an existing allowance first, then asks the registered handler (with a
timeout), and defers to the queue when nobody can answer. Every failure path ends in a deferral
or a denial, never in an approval.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, Literal, Protocol, runtime_checkable
from uuid import UUID, uuid4

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    field_validator,
    model_serializer,
    model_validator,
)

from astrid.errors import ApprovalError, ApprovalHandlerError, ResolutionNotFound
from astrid.security.actions import SensitiveAction
from astrid.security.allowances import (
    SIGNATURE_LENGTH,
    Allowance,
    AllowanceStore,
    WorkspaceRoot,
    pattern_for_action,
)
from astrid.security.deferred import (
    ActionContext,
    ApprovalNeeded,
    ApprovalRequest,
    DeferredResolution,
    DeferredResolutionStore,
    FallbackBehavior,
    Priority,
    RiskAssessment,
    format_request_id,
    format_resolution_id,
)
from astrid.security.policy import capability_widens
from astrid.timeutil import Timestamp, utcnow

__all__ = [
    "APPROVAL_DECISION_ADAPTER",
    "DEFAULT_APPROVAL_TIMEOUT",
    "AllowanceProof",
    "Allowed",
    "AlwaysAllow",
    "ApprovalDecision",
    "ApprovalHandler",
    "ApprovalManager",
    "ApprovalOutcome",
    "ApprovalProof",
    "ApprovalRequest",
    "ApprovalResponse",
    "Approve",
    "ApproveAlways",
    "ApproveSession",
    "ApproveWithAllowance",
    "ApproveWorkspace",
    "CapabilityMinter",
    "CustomAllowance",
    "Deferred",
    "Denied",
    "Deny",
    "OneTimeApproval",
    "RiskAssessment",
    "SessionApproval",
    "Signer",
    "WorkspaceApproval",
]

logger = logging.getLogger(__name__)

DEFAULT_APPROVAL_TIMEOUT = 300.0
"""Seconds a handler gets to answer before the action is deferred (5 minutes)."""


# ---------------------------------------------------------------------------
# Decisions and responses
# ---------------------------------------------------------------------------


class _Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    def is_approved(self) -> bool:
        """True for every decision except Deny."""
        return True

    def creates_grant(self) -> bool:
        """True for session, workspace, always and custom-allowance approvals."""
        return False

    def creates_capability(self) -> bool:
        """True only for ApproveAlways."""
        return False

    def denial_reason(self) -> str | None:
        """The reason of a Deny, else None."""
        return None


class Approve(_Decision):
    """Approve this one action."""

    decision: Literal["approve"] = "approve"

    def __str__(self) -> str:
        return "Approve (once)"


class ApproveSession(_Decision):
    """Approve matching actions for the rest of the session."""

    decision: Literal["approve_session"] = "approve_session"

    def creates_grant(self) -> bool:
        """A session approval creates a session allowance."""
        return True

    def __str__(self) -> str:
        return "Approve (session)"


class ApproveWorkspace(_Decision):
    """Approve matching actions in this workspace."""

    decision: Literal["approve_workspace"] = "approve_workspace"

    def creates_grant(self) -> bool:
        """A workspace approval creates a workspace allowance."""
        return True

    def __str__(self) -> str:
        return "Approve (workspace)"


class ApproveAlways(_Decision):
    """Approve always (the interceptor mints a capability token)."""

    decision: Literal["approve_always"] = "approve_always"

    def creates_grant(self) -> bool:
        """An always-approval creates a capability."""
        return True

    def creates_capability(self) -> bool:
        """Only ApproveAlways creates a capability."""
        return True

    def __str__(self) -> str:
        return "Approve (always)"


class ApproveWithAllowance(_Decision):
    """Approve and store a custom allowance (its JSON fields sit next to ``decision``)."""

    decision: Literal["approve_with_allowance"] = "approve_with_allowance"
    allowance: Allowance

    @model_validator(mode="before")
    @classmethod
    def _unflatten(cls, data: Any) -> Any:
        if isinstance(data, dict) and "allowance" not in data:
            fields = {k: v for k, v in data.items() if k != "decision"}
            nested: dict[str, Any] = {"allowance": fields}
            if "decision" in data:
                nested["decision"] = data["decision"]
            return nested
        return data

    @model_serializer(mode="wrap")
    def _flatten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {"decision": data["decision"], **data["allowance"]}

    def creates_grant(self) -> bool:
        """A custom allowance is a grant."""
        return True

    def __str__(self) -> str:
        return f"Approve (allowance: allowance:{self.allowance.id})"


class Deny(_Decision):
    """Deny the action, with a reason."""

    decision: Literal["deny"] = "deny"
    reason: str

    def is_approved(self) -> bool:
        """A denial approves nothing."""
        return False

    def denial_reason(self) -> str | None:
        """The reason given for the denial."""
        return self.reason

    def __str__(self) -> str:
        return f"Deny: {self.reason}"


ApprovalDecision = Annotated[
    Approve | ApproveSession | ApproveWorkspace | ApproveAlways | ApproveWithAllowance | Deny,
    Field(discriminator="decision"),
]
"""A human's decision (internally tagged by ``decision``, as in the original)."""

APPROVAL_DECISION_ADAPTER: TypeAdapter[ApprovalDecision] = TypeAdapter(ApprovalDecision)

_DECISION_TYPES = (
    Approve,
    ApproveSession,
    ApproveWorkspace,
    ApproveAlways,
    ApproveWithAllowance,
    Deny,
)


class ApprovalResponse(BaseModel):
    """A decision on one request, optionally signed by the user."""

    model_config = ConfigDict(frozen=True)

    request_id: UUID
    decision: ApprovalDecision
    timestamp: Timestamp
    signature: str | None = None

    @field_validator("signature")
    @classmethod
    def _check_signature(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("signature is not valid base64") from exc
        if len(raw) != SIGNATURE_LENGTH:
            raise ValueError(f"signature must be {SIGNATURE_LENGTH} bytes, got {len(raw)}")
        return value

    @classmethod
    def new(cls, request_id: UUID, decision: ApprovalDecision) -> ApprovalResponse:
        """An unsigned response made now."""
        return cls(request_id=request_id, decision=decision, timestamp=utcnow(), signature=None)

    def with_signature(self, signature: str | bytes) -> ApprovalResponse:
        """A copy carrying ``signature`` (raw 64 bytes or their padded base64)."""
        text = (
            base64.b64encode(signature).decode("ascii")
            if isinstance(signature, bytes)
            else signature
        )
        return ApprovalResponse(
            request_id=self.request_id,
            decision=self.decision,
            timestamp=self.timestamp,
            signature=text,
        )

    def is_approved(self) -> bool:
        """True unless the decision is Deny."""
        return self.decision.is_approved()

    def is_signed(self) -> bool:
        """True when a signature is attached."""
        return self.signature is not None

    def __str__(self) -> str:
        return f"{format_request_id(self.request_id)} -> {self.decision}"


# ---------------------------------------------------------------------------
# Handler protocol
# ---------------------------------------------------------------------------


@runtime_checkable
class ApprovalHandler(Protocol):
    """A frontend that asks a human (CLI, chat, web)."""

    async def request_approval(
        self, request: ApprovalRequest
    ) -> ApprovalResponse | ApprovalDecision | None:
        """Ask the human: a response to ``request``, a bare decision, or None (nobody answered)."""
        ...

    def is_available(self) -> bool:
        """False when the human cannot be reached right now."""
        ...


# ---------------------------------------------------------------------------
# Proofs and outcomes
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllowanceProof:
    """Allowed by an existing allowance (which was consumed once)."""

    allowance_id: UUID


@dataclass(frozen=True, slots=True)
class OneTimeApproval:
    """Allowed once by a human."""


@dataclass(frozen=True, slots=True)
class SessionApproval:
    """Allowed for the session; ``allowance_id`` names the session allowance the manager stored."""

    allowance_id: UUID


@dataclass(frozen=True, slots=True)
class WorkspaceApproval:
    """Allowed for the workspace; ``allowance_id`` names the workspace allowance stored."""

    allowance_id: UUID


@dataclass(frozen=True, slots=True)
class AlwaysAllow:
    """Allowed always; ``token_id`` is the capability minted (None: the interceptor mints it)."""

    token_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class CustomAllowance:
    """Allowed with a custom allowance the manager stored."""

    allowance_id: UUID


ApprovalProof = (
    AllowanceProof
    | OneTimeApproval
    | SessionApproval
    | WorkspaceApproval
    | AlwaysAllow
    | CustomAllowance
)
"""How an allowed action was authorized."""


class _Outcome:
    __slots__ = ()

    def is_allowed(self) -> bool:
        """True if the action may proceed."""
        return isinstance(self, Allowed)

    def is_denied(self) -> bool:
        """True if the action was denied."""
        return isinstance(self, Denied)

    def is_deferred(self) -> bool:
        """True if the action was queued for later."""
        return isinstance(self, Deferred)


@dataclass(frozen=True, slots=True)
class Allowed(_Outcome):
    """The action may proceed."""

    proof: ApprovalProof


@dataclass(frozen=True, slots=True)
class Denied(_Outcome):
    """The action was denied."""

    reason: str


@dataclass(frozen=True, slots=True)
class Deferred(_Outcome):
    """The action was queued; the agent applies ``fallback`` meanwhile."""

    resolution_id: UUID
    fallback: FallbackBehavior


ApprovalOutcome = Allowed | Denied | Deferred
"""The result of ``check_approval``."""


# ---------------------------------------------------------------------------
# Manager
# ---------------------------------------------------------------------------


Signer = Callable[[bytes], bytes]
"""Signs an allowance's id (the runtime's ``KeyPair.sign``)."""

CapabilityMinter = Callable[[SensitiveAction], UUID | None]
"""Mints the capability an "approve always" grants for an action; None if it grants none."""


def _handler_name(handler: object) -> str:
    """``module.QualName`` of a handler's class, as error messages name it."""
    kind = type(handler)
    return f"{kind.__module__}.{kind.__qualname__}"


def _answer_to(
    request: ApprovalRequest, answer: object, handler: object
) -> ApprovalResponse | Denied:
    """The handler's answer as a response to ``request``; Denied if it answers another one.

    A bare decision (what a host writes first) is taken as the answer to ``request``. Anything
    else is a bug in the handler: ``ApprovalHandlerError``, never a silent deferral.
    """
    if isinstance(answer, _DECISION_TYPES):
        return ApprovalResponse.new(request.id, answer)
    if not isinstance(answer, ApprovalResponse):
        name = _handler_name(handler)
        logger.warning(
            "approval handler %s returned %s for %s",
            name,
            type(answer).__qualname__,
            format_request_id(request.id),
        )
        raise ApprovalHandlerError(
            f"approval handler {name} returned {type(answer).__qualname__} for "
            f"{format_request_id(request.id)} ({request.action.summary()}): expected an "
            "ApprovalResponse, an approval decision such as ApproveSession(), or None"
        )
    if answer.request_id != request.id:
        name = _handler_name(handler)
        logger.warning(
            "approval handler %s answered %s instead of %s: refused",
            name,
            format_request_id(answer.request_id),
            format_request_id(request.id),
        )
        return Denied(
            f"approval handler {name} answered {format_request_id(answer.request_id)}, "
            f"not {format_request_id(request.id)}"
        )
    return answer


def _seconds(timeout: float | timedelta) -> float:
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"approval timeout must be a positive number of seconds, got {timeout!r}")
    return seconds


class ApprovalManager:
    """Decides whether a sensitive action may run: allowance, then handler, else deferral."""

    def __init__(
        self,
        allowance_store: AllowanceStore,
        deferred_queue: DeferredResolutionStore,
        *,
        timeout: float | timedelta = DEFAULT_APPROVAL_TIMEOUT,
        default_fallback: FallbackBehavior = FallbackBehavior.SKIP,
        allowance_owner: str | None = None,
    ) -> None:
        self._allowance_store = allowance_store
        self._deferred_queue = deferred_queue
        self._handler: ApprovalHandler | None = None
        self._timeout = _seconds(timeout)
        self._default_fallback = FallbackBehavior(default_fallback)
        self._allowance_owner = allowance_owner
        self.approvals_granted: int = 0
        """How many Allowed outcomes came from a human decision (not from an allowance)."""

    # -- state -------------------------------------------------------------

    @property
    def allowance_store(self) -> AllowanceStore:
        """The allowance store (shared with the session)."""
        return self._allowance_store

    @property
    def deferred_queue(self) -> DeferredResolutionStore:
        """The deferred-resolution queue."""
        return self._deferred_queue

    @property
    def handler(self) -> ApprovalHandler | None:
        """The registered handler, if any."""
        return self._handler

    @property
    def timeout(self) -> float:
        """Seconds a handler gets to answer."""
        return self._timeout

    @property
    def default_fallback(self) -> FallbackBehavior:
        """The fallback reported with every deferral."""
        return self._default_fallback

    @property
    def allowance_owner(self) -> str | None:
        """The owner tag given to custom allowances this manager stores."""
        return self._allowance_owner

    def register_handler(self, handler: ApprovalHandler) -> None:
        """Register ``handler``, replacing any previous one."""
        self._handler = handler

    def unregister_handler(self) -> ApprovalHandler | None:
        """Remove the handler (later checks defer); return the one removed."""
        previous, self._handler = self._handler, None
        return previous

    def set_timeout(self, timeout: float | timedelta) -> None:
        """Set how long a handler gets (seconds or a timedelta; must be positive)."""
        self._timeout = _seconds(timeout)

    def set_default_fallback(self, fallback: FallbackBehavior) -> None:
        """Set the fallback reported with deferrals."""
        self._default_fallback = FallbackBehavior(fallback)

    def with_deferred_queue(self, queue: DeferredResolutionStore) -> ApprovalManager:
        """A manager over the same allowance store and ``queue`` that keeps handler and settings."""
        manager = ApprovalManager(
            self._allowance_store,
            queue,
            timeout=self._timeout,
            default_fallback=self._default_fallback,
            allowance_owner=self._allowance_owner,
        )
        manager._handler = self._handler
        manager.approvals_granted = self.approvals_granted
        return manager

    # -- the flow ----------------------------------------------------------

    async def check_approval(
        self,
        action: SensitiveAction,
        context: str,
        workspace_root: WorkspaceRoot = None,
        *,
        signer: Signer | None = None,
    ) -> ApprovalOutcome:
        """Allowance first, then the handler (with the timeout); defer when nobody answers.

        The handler may answer with an ``ApprovalResponse`` for this request or a bare decision;
        a response to another request is Denied (logged), and any other value raises
        ``ApprovalHandlerError`` naming the handler. A session or workspace approval stores its
        allowance (signed with ``signer``) before this returns, so the proof names an allowance
        that exists.
        """
        allowance = self._allowance_store.find_matching_and_consume(action, workspace_root)
        if allowance is not None:
            return Allowed(AllowanceProof(allowance.id))

        request = ApprovalRequest.new(action, context)
        handler = self._handler
        if handler is None:
            return await self.adefer(action, context, "no approval handler registered")

        try:
            available = handler.is_available()
        except Exception as exc:
            logger.warning("approval handler availability check failed: %s", exc)
            return await self.adefer(action, context, f"approval handler failed: {exc}")
        if not available:
            return await self.adefer(action, context, "approval handler unavailable")

        try:
            response = await asyncio.wait_for(
                handler.request_approval(request), timeout=self._timeout
            )
        except TimeoutError:
            return await self.adefer(action, context, "approval request timed out")
        except Exception as exc:
            logger.warning("approval handler failed: %s", exc)
            return await self.adefer(action, context, f"approval handler failed: {exc}")

        if response is None:
            return await self.adefer(action, context, "user did not respond")
        answer = _answer_to(request, response, handler)
        if isinstance(answer, Denied):
            return answer
        outcome = self.handle_response(answer, action, workspace_root, signer=signer)
        if isinstance(outcome, Allowed):
            self.approvals_granted += 1
        return outcome

    def handle_response(
        self,
        response: ApprovalResponse,
        action: SensitiveAction | None = None,
        workspace_root: WorkspaceRoot = None,
        *,
        signer: Signer | None = None,
    ) -> ApprovalOutcome:
        """Map a response to an outcome, storing the allowance it grants; counts nothing.

        A session or workspace approval stores an allowance for exactly ``action`` (a workspace
        one needs ``workspace_root``; without it the grant lasts for the session). Without an
        action, or for one no allowance pattern covers, it allows this one action only. "Approve
        always" of an action a capability cannot pin down (a command with its arguments) is a
        session allowance for exactly that action.
        """
        decision = response.decision
        if isinstance(decision, Approve):
            return Allowed(OneTimeApproval())
        widens = action is not None and capability_widens(action)
        if isinstance(decision, ApproveAlways) and not widens:
            return Allowed(AlwaysAllow())
        if isinstance(decision, ApproveSession | ApproveWorkspace | ApproveAlways):
            # "Always" gets here when a capability would cover more than this action (a
            # command's resource has no arguments): the exact grant is a session allowance.
            session_only = not isinstance(decision, ApproveWorkspace) or workspace_root is None
            granted = (
                None
                if action is None
                else self.grant_allowance(
                    action, session_only=session_only, workspace_root=workspace_root, signer=signer
                )
            )
            if granted is None:
                return Allowed(OneTimeApproval())
            if session_only:
                return Allowed(SessionApproval(granted))
            return Allowed(WorkspaceApproval(granted))
        if isinstance(decision, ApproveWithAllowance):
            try:
                self._allowance_store.add_allowance(decision.allowance, self._allowance_owner)
            except Exception as exc:
                logger.warning("failed to store allowance: %s", exc)
                return Allowed(OneTimeApproval())
            return Allowed(CustomAllowance(decision.allowance.id))
        return Denied(decision.reason)

    def grant_allowance(
        self,
        action: SensitiveAction,
        *,
        session_only: bool,
        workspace_root: WorkspaceRoot = None,
        signer: Signer | None = None,
    ) -> UUID | None:
        """Store an allowance covering exactly ``action``; its id, or None if none was stored.

        None when no pattern covers the action or the store fails (logged). A session allowance
        carries this manager's owner tag (ending the session removes it); a workspace one is
        rooted at ``workspace_root``, untagged, so ``save_workspace_of`` persists it.
        """
        pattern = pattern_for_action(action)
        if pattern is None:
            return None
        allowance = Allowance.create(
            pattern, session_only=session_only, workspace_root=workspace_root, signer=signer
        )
        try:
            self._allowance_store.add_allowance(
                allowance, self._allowance_owner if session_only else None
            )
        except Exception as exc:
            logger.warning("failed to store the allowance for %s: %s", action.summary(), exc)
            return None
        return allowance.id

    def defer(self, action: SensitiveAction, context: str, reason: str) -> ApprovalOutcome:
        """Queue the action (persisted when the queue has a store); Denied if queueing fails."""
        resolution, fallback = self._deferral(action, context, reason)
        try:
            resolution_id = self._deferred_queue.queue_auto(resolution)
        except Exception as exc:
            logger.warning("failed to defer action: %s", exc)
            return Denied(f"failed to defer action: {exc}")
        return Deferred(resolution_id, fallback)

    async def adefer(self, action: SensitiveAction, context: str, reason: str) -> ApprovalOutcome:
        """``defer`` for code on an event loop: a persistent queue is written off the loop."""
        resolution, fallback = self._deferral(action, context, reason)
        try:
            resolution_id = await self._deferred_queue.aqueue_auto(resolution)
        except Exception as exc:
            logger.warning("failed to defer action: %s", exc)
            return Denied(f"failed to defer action: {exc}")
        return Deferred(resolution_id, fallback)

    def _deferral(
        self, action: SensitiveAction, context: str, reason: str
    ) -> tuple[DeferredResolution, FallbackBehavior]:
        fallback = self._default_fallback
        resolution = DeferredResolution.new(
            ApprovalNeeded(request=ApprovalRequest.new(action, context)),
            reason,
            Priority.NORMAL,
            ActionContext.new(context),
        ).with_fallback(f"fallback: {fallback}")
        return resolution, fallback

    def get_pending_resolutions(self) -> list[DeferredResolution]:
        """Every deferred item, highest priority first."""
        return self._deferred_queue.get_pending()

    def resolve_deferred(
        self,
        resolution_id: UUID,
        response: ApprovalResponse | ApprovalDecision,
        workspace_root: WorkspaceRoot = None,
        *,
        signer: Signer | None = None,
        mint: CapabilityMinter | None = None,
    ) -> ApprovalOutcome:
        """Take the item off the queue (store too) and grant what the decision names.

        ``response`` may be a bare decision. A session or workspace approval stores the
        allowance for the queued action, so that action is not deferred again; "approve
        always" needs ``mint`` (``SecurityInterceptor.resolve_deferred`` passes the runtime's):
        without it this raises ``ApprovalError`` and the item stays queued. A response to
        another request is refused (Denied, logged) and the item stays queued; an unknown id
        is logged and Denied unless the decision is a denial.
        """
        item = self._deferred_queue.get(resolution_id)
        label = format_resolution_id(resolution_id)
        if isinstance(response, ApprovalResponse):
            decision = response.decision
        else:
            decision = response
            response = ApprovalResponse.new(
                item.action.request.id
                if item is not None and isinstance(item.action, ApprovalNeeded)
                else uuid4(),
                decision,
            )
        if item is None:
            logger.warning("resolving unknown deferred item %s", label)
            if isinstance(decision, Deny):
                return Denied(decision.reason)
            return Denied(f"deferred item {label} is not pending")
        request = item.action.request if isinstance(item.action, ApprovalNeeded) else None
        action = request.action if request is not None else None
        if request is not None and response.request_id != request.id:
            logger.warning(
                "refusing a response to %s for deferred item %s, which holds %s",
                format_request_id(response.request_id),
                label,
                format_request_id(request.id),
            )
            return Denied(
                f"the response answers {format_request_id(response.request_id)}, not "
                f"{format_request_id(request.id)} of deferred item {label}"
            )
        mints = (
            isinstance(decision, ApproveAlways)
            and action is not None
            and not capability_widens(action)
        )
        if mints and mint is None:
            raise ApprovalError(
                f"cannot resolve deferred item {label} with ApproveAlways here: the capability "
                "it grants is minted with the runtime's key; use SecurityInterceptor."
                "resolve_deferred or AgentRuntime.resolve_deferred"
            )
        try:
            self._deferred_queue.resolve_persistent(resolution_id)
        except ResolutionNotFound:
            logger.warning("deferred item %s was resolved meanwhile", label)
            return Denied(f"deferred item {label} is not pending")
        outcome: ApprovalOutcome
        if mints:
            token_id = mint(action) if mint is not None and action is not None else None
            outcome = Allowed(OneTimeApproval() if token_id is None else AlwaysAllow(token_id))
        else:
            outcome = self.handle_response(response, action, workspace_root, signer=signer)
        if isinstance(outcome, Allowed):
            self.approvals_granted += 1
        return outcome

    def __repr__(self) -> str:
        handler = type(self._handler).__name__ if self._handler is not None else None
        return (
            f"ApprovalManager(allowance_store={self._allowance_store!r}, "
            f"deferred_queue={self._deferred_queue!r}, handler={handler}, "
            f"timeout={self._timeout}, default_fallback={self._default_fallback}, "
            f"approvals_granted={self.approvals_granted})"
        )
