"""The astrid exception hierarchy: every error astrid raises is an ``AstridError``.

Messages name what was wrong and where (file, key, session id) so a host can show them as-is.

Every public exception class of astrid is defined here, under one of the branches below; the
modules that raise one re-export it (``from astrid.security.budget import InvalidBudgetLimit``
keeps working). A class that is also a ``ValueError`` stays one, for callers that catch that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from .security.deferred import FallbackBehavior


class AstridError(Exception):
    """Base class of every error raised by astrid."""


class ConfigError(AstridError):
    """A configuration file or value is invalid (names the file and the key)."""


class PluginError(AstridError):
    """A plugin could not be loaded or registered something invalid."""


class PluginWarning(AstridError, UserWarning):
    """A plugin setting astrid cannot honour exactly (an unknown name in ``ASTRID_LOAD_PLUGINS``
    or ``ASTRID_DISABLE_PLUGINS``, a missing ``ASTRID_PLUGINS_DIR``): a warning, which the CLI
    prints as one ``warning:`` line."""


class InvalidSessionId(AstridError, ValueError):
    """A session id is not a UUID (checked before it touches a path)."""


class SerializationError(AstridError):
    """A document could not be decoded or encoded (names the source)."""


class StorageError(AstridError):
    """A storage backend failed (names the backend, the session or the key)."""


class InvalidKey(StorageError):
    """A key-value namespace or key is empty or contains NUL."""


class SessionNotFound(StorageError):
    """No session with the given id exists in the store."""


class SessionDecryptionError(StorageError):
    """A stored session does not decrypt with the configured key (wrong key, tampering)."""


class InvalidForkPoint(StorageError, ValueError):
    """A fork was asked at a message index the source session does not have."""


class ConcurrencyError(StorageError):
    """A save was based on a stale revision: another writer saved first."""


class SchemaVersionError(StorageError):
    """A store was written by a newer schema version than this astrid knows."""


class InvalidTokenId(StorageError, ValueError):
    """A capability token id given to a store is not a UUID (checked before any path or query)."""


class SecurityError(AstridError):
    """Base class of security-state errors (allowances, approvals, budget, capabilities)."""


class AllowanceNotFound(SecurityError):
    """An allowance id is not in the store."""


class ResolutionNotFound(SecurityError):
    """A deferred resolution id is not in the queue."""


class ApprovalError(SecurityError):
    """An approval was denied or could not be obtained."""


class ApprovalHandlerError(ApprovalError):
    """An approval handler answered with something that is not an answer (names the handler)."""


class PolicyBlocked(ApprovalError):
    """The security policy blocks the action outright."""

    def __init__(self, tool: str, reason: str) -> None:
        super().__init__(f"blocked by policy: {tool}: {reason}")
        self.tool = tool
        self.reason = reason


class ApprovalDenied(ApprovalError):
    """The human (or the failure to queue a deferral) denied the action."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"approval denied: {reason}")
        self.reason = reason


class ApprovalDeferred(ApprovalError):
    """Nobody could answer now: the action was queued; the agent applies ``fallback``."""

    def __init__(self, resolution_id: UUID, fallback: FallbackBehavior) -> None:
        from .security.deferred import format_resolution_id

        super().__init__(
            f"action deferred (resolution: {format_resolution_id(resolution_id)}, "
            f"fallback: {fallback})"
        )
        self.resolution_id = resolution_id
        self.fallback = fallback


class BudgetExceeded(ApprovalError):
    """A cost would exceed the per-action, session or workspace budget."""


class InvalidCost(SecurityError, ValueError):
    """A cost is NaN, infinite or negative where a real cost is required."""


class InvalidBudgetLimit(SecurityError, ValueError):
    """A budget limit is NaN or infinite (use ``None`` for an unlimited workspace)."""


class ReservationError(SecurityError, ValueError):
    """A reservation was handed to a tracker or validator that did not make it."""


class GlobSyntaxError(SecurityError, ValueError):
    """A glob pattern cannot be compiled (unclosed class or group, dangling escape)."""


class CryptoKeyError(SecurityError):
    """A stored key cannot be read or has the wrong size."""


class CapabilityError(SecurityError):
    """Base class of capability-token errors."""


class TokenExpired(CapabilityError):
    """The capability token expired (beyond the allowed clock skew)."""


class TokenRevoked(CapabilityError):
    """The capability token was revoked."""


class TokenNotFound(CapabilityError):
    """No capability token with that id exists."""


class TokenAlreadyUsed(CapabilityError):
    """A single-use capability token was already used."""


class InvalidSignature(CapabilityError):
    """A signature did not verify (tampered token or foreign issuer)."""


class InvalidPattern(CapabilityError, ValueError):
    """A resource pattern is invalid (bad glob or path traversal)."""


class SubAgentError(AstridError):
    """A sub-agent could not be spawned or failed."""


class LLMError(AstridError):
    """The LLM provider failed or its stream reported an error."""


class MaxIterationsExceeded(AstridError):
    """The model kept calling tools past the configured iteration cap."""

    def __init__(self, max_iterations: int) -> None:
        super().__init__(
            f"turn stopped: the model was still calling tools after {max_iterations} LLM calls "
            f"(max_iterations = {max_iterations})"
        )
        self.max_iterations = max_iterations


class ToolError(AstridError):
    """A tool failed; its message becomes the error result the model sees."""


class SummarizationError(AstridError):
    """A summary could not be produced; the session was left exactly as it was."""


class ScriptedProviderError(AstridError):
    """The script is malformed, exhausted, or (for ``complete_simple``) scripted an error."""


class ProviderError(AstridError):
    """An LLM provider's request failed (names the provider; ``status`` is the HTTP status).

    ``retried`` says whether the provider (or its SDK) already retried before giving up.
    """

    def __init__(
        self, message: str, *, provider: str = "", status: int | None = None, retried: bool = False
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retried = retried


class RateLimited(ProviderError):
    """The provider refused the request for its rate limit (HTTP 429); ``retry_after_s`` if sent."""

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        status: int | None = 429,
        retried: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, status=status, retried=retried)
        self.retry_after_s = retry_after_s


class AuthenticationFailed(ProviderError):
    """The provider refused the API key (HTTP 401/403), or no key was configured."""


class ContextTooLong(ProviderError):
    """The request is larger than the model's context window."""
