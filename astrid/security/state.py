"""The security state the interceptor checks, as a protocol: what it reads, nothing more.

``SecurityInterceptor`` takes any object with these members instead of importing
``AgentSession`` (which satisfies it structurally), so ``astrid.security`` depends on no ring
above it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from astrid.ids import SessionId
    from astrid.security.approvals import ApprovalManager
    from astrid.security.budget import BudgetTracker, WorkspaceBudgetTracker
    from astrid.security.capabilities import CapabilityStore

__all__ = ["SecurityState"]


@runtime_checkable
class SecurityState(Protocol):
    """The members of a session the interceptor uses (read at every call, so swaps take effect)."""

    @property
    def id(self) -> SessionId:
        """The session the audit entries name."""
        ...

    @property
    def capabilities(self) -> CapabilityStore:
        """Capability tokens looked up, used up and minted by the interceptor."""
        ...

    @property
    def approval_manager(self) -> ApprovalManager:
        """Allowances, the human handler and the deferred queue."""
        ...

    @property
    def budget_tracker(self) -> BudgetTracker:
        """The session budget reserved before an action runs."""
        ...

    @property
    def workspace_budget_tracker(self) -> WorkspaceBudgetTracker | None:
        """The workspace budget reserved alongside, if the session has a workspace."""
        ...
