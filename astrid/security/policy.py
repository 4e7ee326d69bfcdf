"""The security policy: admin-configured hard boundaries checked before anything else.

A port of the original ``astrid_approval::policy``: the same JSON fields, defaults, rule order
and messages. ``check`` says whether an action is blocked outright, needs a human approval, or
may run freely. Our deliberate differences (each one fails closed):

* A plugin URL's host ends at the **first** of ``:``, ``/``, ``?`` or ``#`` (the original cut at
  the first ``:`` anywhere, so ``https://evil.com/a:b`` gave host ``evil.com/a`` and slipped past
  ``denied_hosts``); a bracketed IPv6 host is kept whole.
* A plugin file access whose path has a ``..`` component is blocked, like any other file action
  (the original only glob-matched ``denied_paths``, which a ``..`` path never matches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from astrid._exports import module_attributes
from astrid.security.actions import (
    AccessControlChange,
    CapabilityGrant,
    ExecuteCommand,
    FileDelete,
    FileRead,
    FileWriteOutsideSandbox,
    FinancialTransaction,
    McpToolCall,
    NetworkRequest,
    Permission,
    PluginExecution,
    PluginFileAccess,
    PluginHttpRequest,
    RiskLevel,
    SensitiveAction,
    TransmitData,
)
from astrid.security.deferred import RiskAssessment
from astrid.security.globs import glob_match, has_traversal

__all__ = [
    "DEFAULT_BLOCKED_TOOLS",
    "DEFAULT_DENIED_PATHS",
    "DEFAULT_MAX_ARGUMENT_SIZE",
    "Blocked",
    "PolicyAllowed",
    "PolicyResult",
    "RequiresApproval",
    "SecurityPolicy",
    "action_resource",
    "capability_widens",
    "extract_host_from_url",
]

DEFAULT_BLOCKED_TOOLS: frozenset[str] = frozenset(
    {
        "rm -rf /",
        "rm -rf /*",
        "sudo",
        "su",
        "mkfs",
        "dd",
        "chmod 777",
        "shutdown",
        "reboot",
        "init",
    }
)
"""Commands and tools the default policy blocks."""

DEFAULT_APPROVAL_REQUIRED_TOOLS: frozenset[str] = frozenset({"builtin:task"})
"""Tools the default policy always asks about."""

DEFAULT_DENIED_PATHS: tuple[str, ...] = ("/etc/**", "/boot/**", "/sys/**", "/proc/**", "/dev/**")
"""System path globs the default policy blocks."""

DEFAULT_MAX_ARGUMENT_SIZE = 1024 * 1024
"""The default limit on the total byte size of command arguments (1 MiB)."""

_PLUGIN_FILE_CAPABILITIES: dict[Permission, str] = {
    Permission.READ: "file_read",
    Permission.WRITE: "file_write",
    Permission.DELETE: "file_delete",
}


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True, slots=True)
class PolicyAllowed:
    """The action may run without an approval (also the interceptor's proof that it did)."""

    def is_allowed(self) -> bool:
        """True: the action may run."""
        return True

    def requires_approval(self) -> bool:
        """False: no approval needed."""
        return False

    def is_blocked(self) -> bool:
        """False: not blocked."""
        return False

    def __str__(self) -> str:
        return "allowed"


@dataclass(frozen=True, slots=True)
class RequiresApproval:
    """The action needs a human approval (or an allowance or capability)."""

    assessment: RiskAssessment

    def is_allowed(self) -> bool:
        """False: not freely allowed."""
        return False

    def requires_approval(self) -> bool:
        """True: an approval is needed."""
        return True

    def is_blocked(self) -> bool:
        """False: not blocked."""
        return False

    def __str__(self) -> str:
        return f"requires approval: {self.assessment}"


@dataclass(frozen=True, slots=True)
class Blocked:
    """The action is never allowed."""

    reason: str

    def is_allowed(self) -> bool:
        """False: never allowed."""
        return False

    def requires_approval(self) -> bool:
        """False: no approval can allow it."""
        return False

    def is_blocked(self) -> bool:
        """True: blocked by policy."""
        return True

    def __str__(self) -> str:
        return f"blocked: {self.reason}"


PolicyResult = PolicyAllowed | RequiresApproval | Blocked
"""The outcome of ``SecurityPolicy.check``."""


def _approval(level: RiskLevel, reason: str) -> RequiresApproval:
    return RequiresApproval(RiskAssessment.new(level, reason))


def _matches_any_glob(patterns: list[str], path: str) -> bool:
    return any(glob_match(pattern, path) for pattern in patterns)


# --------------------------------------------------------------------------------------------
# the policy


class SecurityPolicy(BaseModel):
    """Hard boundaries for agent actions (the JSON fields of the original ``SecurityPolicy``).

    A field missing from the input takes the ``default()`` value, so ``SecurityPolicy()`` is the
    default policy; unknown fields are ignored.
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    blocked_tools: set[str] = Field(default_factory=lambda: set(DEFAULT_BLOCKED_TOOLS))
    approval_required_tools: set[str] = Field(
        default_factory=lambda: set(DEFAULT_APPROVAL_REQUIRED_TOOLS)
    )
    allowed_paths: list[str] = Field(default_factory=list)
    denied_paths: list[str] = Field(default_factory=lambda: list(DEFAULT_DENIED_PATHS))
    allowed_hosts: list[str] = Field(default_factory=list)
    denied_hosts: list[str] = Field(default_factory=list)
    max_argument_size: int = Field(default=DEFAULT_MAX_ARGUMENT_SIZE, ge=0)
    require_approval_for_delete: bool = True
    require_approval_for_network: bool = True
    blocked_plugins: set[str] = Field(default_factory=set)

    @classmethod
    def default(cls) -> SecurityPolicy:
        """Block dangerous commands and system paths; ask for deletes, network and builtin:task."""
        return cls()

    @classmethod
    def permissive(cls) -> SecurityPolicy:
        """Everything empty, zero or false: only the always-ask actions need an approval."""
        return cls(
            blocked_tools=set(),
            approval_required_tools=set(),
            allowed_paths=[],
            denied_paths=[],
            allowed_hosts=[],
            denied_hosts=[],
            max_argument_size=0,
            require_approval_for_delete=False,
            require_approval_for_network=False,
            blocked_plugins=set(),
        )

    def check(self, action: SensitiveAction) -> PolicyResult:
        """Blocked, RequiresApproval or PolicyAllowed, by the rules of the action's kind."""
        if isinstance(action, ExecuteCommand):
            return self._check_command(action.command, action.args)
        if isinstance(action, McpToolCall):
            return self._check_mcp_tool(action.server, action.tool)
        if isinstance(action, FileRead):
            return self._check_file_path(action.path, "file read")
        if isinstance(action, FileWriteOutsideSandbox):
            return self._check_file_path(action.path, "file write outside sandbox")
        if isinstance(action, FileDelete):
            return self._check_file_delete(action.path)
        if isinstance(action, NetworkRequest):
            return self._check_network(action.host)
        if isinstance(action, TransmitData):
            return self._check_network(action.destination)
        if isinstance(action, FinancialTransaction):
            return _approval(RiskLevel.CRITICAL, "Financial transactions always require approval")
        if isinstance(action, AccessControlChange):
            return _approval(RiskLevel.CRITICAL, "Access control changes always require approval")
        if isinstance(action, CapabilityGrant):
            return _approval(RiskLevel.HIGH, "Capability grants require approval")
        return self._check_plugin(action)

    def _check_command(self, command: str, args: list[str]) -> PolicyResult:
        if command in self.blocked_tools:
            return Blocked(f"command '{command}' is blocked by policy")
        if args:
            # A plain string-prefix test, as in the original: "sum x" is blocked by "su".
            full_command = f"{command} {' '.join(args)}"
            for blocked in sorted(self.blocked_tools):
                if full_command.startswith(blocked):
                    return Blocked(f"command '{full_command}' matches blocked pattern '{blocked}'")
        if self.max_argument_size > 0:
            total = sum(len(arg.encode("utf-8")) for arg in args)
            if total > self.max_argument_size:
                return Blocked(f"argument size {total} exceeds limit {self.max_argument_size}")
        return _approval(RiskLevel.HIGH, f"command execution: {command}")

    def _check_mcp_tool(self, server: str, tool: str) -> PolicyResult:
        qualified = f"{server}:{tool}"
        blocked = self.blocked_tools
        if qualified in blocked or server in blocked or tool in blocked:
            return Blocked(f"tool '{qualified}' is blocked by policy")
        required = self.approval_required_tools
        if qualified in required or server in required:
            return _approval(RiskLevel.MEDIUM, f"tool '{qualified}' requires approval")
        return PolicyAllowed()

    def _path_block(self, path: str) -> Blocked | None:
        if has_traversal(path):
            return Blocked("path contains traversal sequence (..)")
        if _matches_any_glob(self.denied_paths, path):
            return Blocked(f"path '{path}' is denied by policy")
        if self.allowed_paths and not _matches_any_glob(self.allowed_paths, path):
            return Blocked(f"path '{path}' is not in allowed paths")
        return None

    def _check_file_path(self, path: str, operation: str) -> PolicyResult:
        blocked = self._path_block(path)
        if blocked is not None:
            return blocked
        return _approval(RiskLevel.HIGH, f"{operation}: {path}")

    def _check_file_delete(self, path: str) -> PolicyResult:
        result = self._check_file_path(path, "file delete")
        if isinstance(result, Blocked):
            return result
        if self.require_approval_for_delete:
            return _approval(RiskLevel.HIGH, f"file deletion requires approval: {path}")
        return result

    def _check_network(self, host: str) -> PolicyResult:
        if host in self.denied_hosts:
            return Blocked(f"host '{host}' is denied by policy")
        if self.allowed_hosts and host not in self.allowed_hosts:
            return Blocked(f"host '{host}' is not in allowed hosts")
        if self.require_approval_for_network:
            return _approval(RiskLevel.MEDIUM, f"network access requires approval: {host}")
        return PolicyAllowed()

    def _check_plugin(
        self, action: PluginExecution | PluginHttpRequest | PluginFileAccess
    ) -> PolicyResult:
        plugin_id = action.plugin_id
        if plugin_id in self.blocked_plugins:
            return Blocked(f"plugin '{plugin_id}' is blocked by policy")
        if isinstance(action, PluginHttpRequest):
            host = extract_host_from_url(action.url)
            if host is not None and host in self.denied_hosts:
                return Blocked(f"plugin '{plugin_id}' HTTP request to denied host '{host}'")
        if isinstance(action, PluginFileAccess):
            if has_traversal(action.path):
                return Blocked(f"plugin '{plugin_id}' file path contains traversal sequence (..)")
            if _matches_any_glob(self.denied_paths, action.path):
                return Blocked(f"plugin '{plugin_id}' file access to denied path '{action.path}'")
        return _approval(RiskLevel.HIGH, f"plugin '{plugin_id}' action requires approval")


# --------------------------------------------------------------------------------------------
# helpers shared with the interceptor


def extract_host_from_url(url: str) -> str | None:
    """The host of ``scheme://[user:pass@]host[:port][/path]``; None without ``://`` or host."""
    _, sep, rest = url.partition("://")
    if not sep:
        return None
    authority_end = len(rest)
    for delimiter in "/?#":
        index = rest.find(delimiter)
        if index != -1:
            authority_end = min(authority_end, index)
    authority = rest[:authority_end]
    host = authority[authority.rfind("@") + 1 :]
    if host.startswith("["):
        close = host.find("]")
        host = host if close == -1 else host[: close + 1]
    else:
        host = host.partition(":")[0]
    return host or None


def action_resource(action: SensitiveAction) -> tuple[str, Permission] | None:
    """The capability resource string and permission for ``action``, or None if it has none."""
    if isinstance(action, McpToolCall):
        return f"mcp://{action.server}:{action.tool}", Permission.INVOKE
    if isinstance(action, FileRead):
        return f"file://{action.path}", Permission.READ
    if isinstance(action, FileDelete):
        return f"file://{action.path}", Permission.DELETE
    if isinstance(action, FileWriteOutsideSandbox):
        return f"file://{action.path}", Permission.WRITE
    if isinstance(action, ExecuteCommand):
        return f"exec://{action.command}", Permission.EXECUTE
    if isinstance(action, NetworkRequest):
        return f"net://{action.host}:{action.port}", Permission.INVOKE
    if isinstance(action, PluginExecution):
        return f"plugin://{action.plugin_id}:{action.capability}", Permission.INVOKE
    if isinstance(action, PluginHttpRequest):
        return f"plugin://{action.plugin_id}:http_request", Permission.INVOKE
    if isinstance(action, PluginFileAccess):
        capability = _PLUGIN_FILE_CAPABILITIES.get(action.mode)
        if capability is None:
            return None
        return f"plugin://{action.plugin_id}:{capability}", Permission.INVOKE
    # TransmitData, FinancialTransaction, AccessControlChange, CapabilityGrant: no resource.
    return None


def capability_widens(action: SensitiveAction) -> bool:
    """True if a capability for ``action_resource(action)`` would cover more than ``action``.

    A command's resource leaves out its arguments, a plugin HTTP request's its URL and method and
    a plugin file access's its path: "approve always" must not mint a token for those.
    """
    return isinstance(action, ExecuteCommand | PluginHttpRequest | PluginFileAccess) and (
        action_resource(action) is not None
    )


if not TYPE_CHECKING:  # the result's name before 0.2.0, served with a DeprecationWarning
    __getattr__, __dir__ = module_attributes(__name__, renamed={"Allowed": "PolicyAllowed"})
