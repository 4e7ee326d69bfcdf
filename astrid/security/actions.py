"""Permissions, risk levels and the sensitive actions that security checks match against."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


class Permission(StrEnum):
    """A permission on a resource (snake_case in JSON, like the original)."""

    READ = "read"
    WRITE = "write"
    EXECUTE = "execute"
    DELETE = "delete"
    INVOKE = "invoke"
    LIST = "list"
    CREATE = "create"

    def __str__(self) -> str:
        return self.value


class OrderedStrEnum(StrEnum):
    """A string enum whose members compare by declaration order, not alphabetically."""

    def __str__(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        """Position in declaration order (0 for the first member)."""
        return type(self)._member_names_.index(self.name)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank < other.rank

    def __le__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank <= other.rank

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank > other.rank

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self.rank >= other.rank


class RiskLevel(OrderedStrEnum):
    """How risky an action is; ordered Low < Medium < High < Critical."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    def requires_approval(self) -> bool:
        """High and Critical actions need an approval."""
        return self.rank >= 2

    def requires_dm_verification(self) -> bool:
        """Only Critical actions need direct-message verification."""
        return self is RiskLevel.CRITICAL


class _Action(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    @property
    def action_type(self) -> str:
        """The snake_case label of the variant (its JSON ``type``)."""
        return str(type(self).model_fields["type"].default)

    def default_risk_level(self) -> RiskLevel:
        """The risk level an approval request starts with."""
        return RiskLevel.HIGH

    def summary(self) -> str:
        """A one-line human description of the action (each variant words its own)."""
        return self.action_type

    def __str__(self) -> str:
        return self.summary()


class FileRead(_Action):
    """Reading a file."""

    type: Literal["file_read"] = "file_read"
    path: str

    def default_risk_level(self) -> RiskLevel:
        return RiskLevel.MEDIUM

    def summary(self) -> str:
        return f"Read: {self.path}"


class FileDelete(_Action):
    """Deleting a file."""

    type: Literal["file_delete"] = "file_delete"
    path: str

    def summary(self) -> str:
        return f"Delete file: {self.path}"


class FileWriteOutsideSandbox(_Action):
    """Writing a file outside the workspace."""

    type: Literal["file_write_outside_sandbox"] = "file_write_outside_sandbox"
    path: str

    def summary(self) -> str:
        return f"Write file outside workspace: {self.path}"


class ExecuteCommand(_Action):
    """Running a command with arguments."""

    type: Literal["execute_command"] = "execute_command"
    command: str
    args: list[str] = Field(default_factory=list)

    def summary(self) -> str:
        if self.args:
            return f"Execute: {self.command} {' '.join(self.args)}"
        return f"Execute: {self.command}"


class NetworkRequest(_Action):
    """A network connection to host:port."""

    type: Literal["network_request"] = "network_request"
    host: str
    port: int = Field(ge=0, le=65535)

    def default_risk_level(self) -> RiskLevel:
        return RiskLevel.MEDIUM

    def summary(self) -> str:
        return f"Network request to {self.host}:{self.port}"


class TransmitData(_Action):
    """Sending data of some kind to a destination."""

    type: Literal["transmit_data"] = "transmit_data"
    destination: str
    data_type: str

    def summary(self) -> str:
        return f"Transmit {self.data_type} to {self.destination}"


class FinancialTransaction(_Action):
    """Moving money."""

    type: Literal["financial_transaction"] = "financial_transaction"
    amount: str
    recipient: str

    def default_risk_level(self) -> RiskLevel:
        return RiskLevel.CRITICAL

    def summary(self) -> str:
        return f"Financial transaction: {self.amount} to {self.recipient}"


class AccessControlChange(_Action):
    """Changing who may access a resource."""

    type: Literal["access_control_change"] = "access_control_change"
    resource: str
    change: str

    def default_risk_level(self) -> RiskLevel:
        return RiskLevel.CRITICAL

    def summary(self) -> str:
        return f"Access control change on {self.resource}: {self.change}"


class CapabilityGrant(_Action):
    """Granting a capability on a resource pattern."""

    type: Literal["capability_grant"] = "capability_grant"
    resource_pattern: str
    permissions: list[Permission]

    def summary(self) -> str:
        perms = ", ".join(p.value for p in self.permissions)
        return f"Grant capability: [{perms}] on {self.resource_pattern}"


class McpToolCall(_Action):
    """Calling a tool on an MCP server."""

    type: Literal["mcp_tool_call"] = "mcp_tool_call"
    server: str
    tool: str

    def default_risk_level(self) -> RiskLevel:
        return RiskLevel.MEDIUM

    def summary(self) -> str:
        return f"MCP tool call: {self.server}/{self.tool}"


class PluginExecution(_Action):
    """A plugin invoking one of its capabilities."""

    type: Literal["plugin_execution"] = "plugin_execution"
    plugin_id: str
    capability: str

    def summary(self) -> str:
        return f"Plugin '{self.plugin_id}' wants to invoke capability '{self.capability}'"


class PluginHttpRequest(_Action):
    """A plugin making an HTTP request."""

    type: Literal["plugin_http_request"] = "plugin_http_request"
    plugin_id: str
    url: str
    method: str

    def summary(self) -> str:
        return f"Plugin '{self.plugin_id}' wants to {self.method} {self.url}"


class PluginFileAccess(_Action):
    """A plugin accessing a file."""

    type: Literal["plugin_file_access"] = "plugin_file_access"
    plugin_id: str
    path: str
    mode: Permission

    def summary(self) -> str:
        return f"Plugin '{self.plugin_id}' wants to {self.mode.value} {self.path}"


SensitiveAction = Annotated[
    FileRead
    | FileDelete
    | FileWriteOutsideSandbox
    | ExecuteCommand
    | NetworkRequest
    | TransmitData
    | FinancialTransaction
    | AccessControlChange
    | CapabilityGrant
    | McpToolCall
    | PluginExecution
    | PluginHttpRequest
    | PluginFileAccess,
    Field(discriminator="type"),
]
"""Any sensitive action (internally tagged by ``type``, as in the original)."""

SENSITIVE_ACTION_ADAPTER: TypeAdapter[SensitiveAction] = TypeAdapter(SensitiveAction)
