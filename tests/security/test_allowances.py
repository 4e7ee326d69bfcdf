"""Allowances, their patterns and the store (ports of the original's tests, then ours)."""

from __future__ import annotations

import base64
import json
import threading
import uuid
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from astrid.errors import AllowanceNotFound, SerializationError
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
    SensitiveAction,
    TransmitData,
)
from astrid.security.allowances import (
    ALLOWANCE_PATTERN_ADAPTER,
    UNSIGNED_SIGNATURE,
    Allowance,
    AllowancePattern,
    AllowanceStore,
    CommandPattern,
    Custom,
    ExactTool,
    FilePattern,
    NetworkHost,
    PluginCapability,
    PluginWildcard,
    ServerTools,
    WorkspaceRelative,
    dump_allowances,
    load_allowances,
    path_in_workspace,
    pattern_for_action,
)
from astrid.timeutil import utcnow

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

_KEY = Ed25519PrivateKey.generate()


def make(
    pattern: AllowancePattern,
    *,
    session_only: bool = True,
    workspace_root: str | None = None,
    uses: int | None = None,
    expires_in: timedelta | None = None,
) -> Allowance:
    return Allowance.create(
        pattern,
        session_only=session_only,
        workspace_root=workspace_root,
        expires_at=None if expires_in is None else utcnow() + expires_in,
        max_uses=uses,
        uses_remaining=uses,
        signer=_KEY.sign,
    )


def expired(pattern: AllowancePattern, *, session_only: bool = True) -> Allowance:
    return make(pattern, session_only=session_only, expires_in=timedelta(hours=-1))


FS_READ = McpToolCall(server="filesystem", tool="read_file")

ALL_PATTERNS: list[AllowancePattern] = [
    ExactTool(server="filesystem", tool="read_file"),
    ServerTools(server="github"),
    FilePattern(pattern="/home/user/docs/*", permission=Permission.READ),
    NetworkHost(host="api.example.com", ports=(443, 8080)),
    NetworkHost(host="api.example.com", ports=None),
    CommandPattern(command="cargo*"),
    WorkspaceRelative(pattern="/project/src/**", permission=Permission.WRITE),
    Custom(pattern="anything"),
    PluginCapability(plugin_id="weather", capability="http_request"),
    PluginWildcard(plugin_id="weather"),
]

ALL_DISPLAYS = [
    "mcp://filesystem/read_file",
    "mcp://github/*",
    "file:/home/user/docs/* (read)",
    "net:api.example.com:[443,8080]",
    "net:api.example.com:*",
    "cmd:cargo*",
    "workspace:/project/src/** (write)",
    "custom:anything",
    "plugin://weather:http_request",
    "plugin://weather:*",
]

NON_PLUGIN_ACTIONS: list[SensitiveAction] = [
    FileRead(path="/tmp/x"),
    FileDelete(path="/tmp/x"),
    FileWriteOutsideSandbox(path="/tmp/x"),
    ExecuteCommand(command="weather", args=[]),
    NetworkRequest(host="weather", port=443),
    TransmitData(destination="weather", data_type="pii"),
    FinancialTransaction(amount="10", recipient="weather"),
    AccessControlChange(resource="weather", change="grant"),
    CapabilityGrant(resource_pattern="weather", permissions=[Permission.INVOKE]),
    McpToolCall(server="weather", tool="http_request"),
]

UNMAPPED_ACTIONS: list[SensitiveAction] = [
    TransmitData(destination="evil.com", data_type="pii"),
    FinancialTransaction(amount="10", recipient="bob"),
    AccessControlChange(resource="repo", change="grant admin"),
    CapabilityGrant(resource_pattern="file:///**", permissions=[Permission.READ]),
]


# ---------------------------------------------------------------------------
# Allowance record
# ---------------------------------------------------------------------------


def test_allowance_ids_are_unique_and_display_with_prefix() -> None:
    a = make(ServerTools(server="fs"))
    b = make(ServerTools(server="fs"))
    assert a.id != b.id
    assert str(a) == f"allowance:{a.id}"
    assert str(a).startswith("allowance:")


def test_allowance_without_limits_is_valid() -> None:
    a = make(ServerTools(server="fs"))
    assert not a.is_expired()
    assert a.has_uses_remaining()
    assert a.is_valid()


def test_allowance_expired_an_hour_ago_is_invalid() -> None:
    a = expired(ServerTools(server="fs"))
    assert a.is_expired()
    assert not a.is_valid()


def test_allowance_expiring_in_future_is_valid() -> None:
    assert make(ServerTools(server="fs"), expires_in=timedelta(hours=1)).is_valid()


def test_allowance_expiry_is_strictly_in_the_past() -> None:
    a = make(ServerTools(server="fs"), expires_in=timedelta(hours=1))
    assert a.expires_at is not None
    assert not a.is_expired(now=a.expires_at)
    assert a.is_expired(now=a.expires_at + timedelta(microseconds=1))


def test_allowance_zero_uses_is_invalid_three_is_valid() -> None:
    assert not make(ServerTools(server="fs"), uses=0).is_valid()
    assert not make(ServerTools(server="fs"), uses=0).has_uses_remaining()
    assert make(ServerTools(server="fs"), uses=3).is_valid()


def test_allowance_serde_round_trip_keeps_id_and_session_only() -> None:
    a = make(ExactTool(server="fs", tool="read_file"), session_only=False, workspace_root="/p")
    back = Allowance.model_validate_json(a.model_dump_json())
    assert back.id == a.id
    assert back.session_only is False
    assert back == a


def test_allowance_json_shape_matches_original() -> None:
    a = make(ExactTool(server="fs", tool="read_file"), workspace_root="/home/u/proj")
    data = json.loads(a.model_dump_json())
    assert list(data) == [
        "id",
        "action_pattern",
        "created_at",
        "expires_at",
        "max_uses",
        "uses_remaining",
        "session_only",
        "workspace_root",
        "signature",
    ]
    assert data["id"] == str(a.id)
    assert str(uuid.UUID(data["id"])) == data["id"]
    assert data["action_pattern"] == {"type": "exact_tool", "server": "fs", "tool": "read_file"}
    assert data["created_at"].endswith("Z")
    assert data["expires_at"] is None
    assert data["max_uses"] is None
    assert data["uses_remaining"] is None
    assert data["session_only"] is True
    assert data["workspace_root"] == "/home/u/proj"
    assert len(data["signature"]) == 88


def test_allowance_reads_original_json_with_offsets_nanos_and_extra_keys() -> None:
    raw = {
        "id": "6f1c2b7e-3a4d-4e5f-8a9b-0c1d2e3f4a5b",
        "action_pattern": {"type": "server_tools", "server": "fs", "future": 1},
        "created_at": "2025-01-01T02:00:00.123456789+02:00",
        "expires_at": "2999-01-01T00:00:00Z",
        "max_uses": 5,
        "uses_remaining": 2,
        "session_only": False,
        "workspace_root": None,
        "signature": UNSIGNED_SIGNATURE,
        "principal": "ignored",
    }
    a = Allowance.model_validate_json(json.dumps(raw))
    assert a.created_at.isoformat() == "2025-01-01T00:00:00.123456+00:00"
    assert a.uses_remaining == 2
    assert a.action_pattern == ServerTools(server="fs")
    # Written in the original's form (UTC, Z) with the digits as read (issue 14 item 12).
    assert json.loads(a.model_dump_json())["created_at"] == "2025-01-01T00:00:00.123456789Z"


def test_allowance_missing_optional_keys_become_none() -> None:
    a = Allowance.model_validate(
        {
            "id": str(uuid.uuid4()),
            "action_pattern": {"type": "custom", "pattern": "x"},
            "created_at": "2025-01-01T00:00:00Z",
            "session_only": True,
            "signature": UNSIGNED_SIGNATURE,
        }
    )
    assert a.expires_at is None
    assert a.max_uses is None
    assert a.uses_remaining is None
    assert a.workspace_root is None


@pytest.mark.parametrize(
    "signature",
    [
        "",
        "not base64!",
        base64.b64encode(bytes(63)).decode(),
        base64.b64encode(bytes(65)).decode(),
        base64.b64encode(bytes(64)).decode().rstrip("="),
        base64.urlsafe_b64encode(b"\xff" * 64).decode(),
    ],
)
def test_allowance_rejects_bad_signature(signature: str) -> None:
    data = json.loads(make(ServerTools(server="fs")).model_dump_json())
    data["signature"] = signature
    with pytest.raises(ValidationError):
        Allowance.model_validate(data)


@pytest.mark.parametrize("field", ["max_uses", "uses_remaining"])
def test_allowance_rejects_negative_or_oversized_counters(field: str) -> None:
    data = json.loads(make(ServerTools(server="fs")).model_dump_json())
    for bad in (-1, 2**32):
        data[field] = bad
        with pytest.raises(ValidationError):
            Allowance.model_validate(data)


def test_allowance_create_signs_the_raw_uuid_bytes() -> None:
    key = Ed25519PrivateKey.generate()
    a = Allowance.create(ServerTools(server="fs"), session_only=True, signer=key.sign)
    assert len(a.signature_bytes) == 64
    key.public_key().verify(a.signature_bytes, a.id.bytes)  # raises if it does not verify
    assert a.id.version == 4
    assert abs(utcnow() - a.created_at) < timedelta(seconds=5)


def test_allowance_create_without_signer_uses_zero_signature() -> None:
    a = Allowance.create(ServerTools(server="fs"), session_only=False, workspace_root="/p")
    assert a.signature == UNSIGNED_SIGNATURE
    assert a.signature_bytes == bytes(64)
    assert a.workspace_root == Path("/p")
    assert a.session_only is False


def test_allowance_is_immutable() -> None:
    a = make(ServerTools(server="fs"), uses=1)
    with pytest.raises(ValidationError):
        a.uses_remaining = 5  # type: ignore[misc]


# ---------------------------------------------------------------------------
# Pattern display and serde
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "display"), list(zip(ALL_PATTERNS, ALL_DISPLAYS, strict=True)))
def test_pattern_display(pattern: AllowancePattern, display: str) -> None:
    assert str(pattern) == display


@pytest.mark.parametrize("pattern", ALL_PATTERNS)
def test_pattern_display_survives_serde_round_trip(pattern: AllowancePattern) -> None:
    text = ALLOWANCE_PATTERN_ADAPTER.dump_json(pattern)
    back = ALLOWANCE_PATTERN_ADAPTER.validate_json(text)
    assert str(back) == str(pattern)
    assert back == pattern
    assert type(back) is type(pattern)


def test_pattern_json_tags_and_fields() -> None:
    dumped = [ALLOWANCE_PATTERN_ADAPTER.dump_python(p, mode="json") for p in ALL_PATTERNS]
    assert dumped == [
        {"type": "exact_tool", "server": "filesystem", "tool": "read_file"},
        {"type": "server_tools", "server": "github"},
        {"type": "file_pattern", "pattern": "/home/user/docs/*", "permission": "read"},
        {"type": "network_host", "host": "api.example.com", "ports": [443, 8080]},
        {"type": "network_host", "host": "api.example.com", "ports": None},
        {"type": "command_pattern", "command": "cargo*"},
        {"type": "workspace_relative", "pattern": "/project/src/**", "permission": "write"},
        {"type": "custom", "pattern": "anything"},
        {"type": "plugin_capability", "plugin_id": "weather", "capability": "http_request"},
        {"type": "plugin_wildcard", "plugin_id": "weather"},
    ]


def test_pattern_rejects_unknown_tag() -> None:
    with pytest.raises(ValidationError):
        ALLOWANCE_PATTERN_ADAPTER.validate_python({"type": "everything"})


def test_patterns_are_frozen() -> None:
    p = ServerTools(server="fs")
    with pytest.raises(ValidationError):
        p.server = "other"  # type: ignore[misc]


# ---------------------------------------------------------------------------
# ExactTool / ServerTools
# ---------------------------------------------------------------------------


def test_exact_tool_matches() -> None:
    assert ExactTool(server="filesystem", tool="read_file").matches(FS_READ, None)


def test_exact_tool_wrong_tool() -> None:
    pattern = ExactTool(server="filesystem", tool="read_file")
    assert not pattern.matches(McpToolCall(server="filesystem", tool="write_file"), None)


def test_exact_tool_is_case_sensitive() -> None:
    pattern = ExactTool(server="filesystem", tool="read_file")
    assert not pattern.matches(McpToolCall(server="Filesystem", tool="read_file"), None)


def test_exact_tool_wrong_action_type() -> None:
    pattern = ExactTool(server="filesystem", tool="read_file")
    assert not pattern.matches(FileDelete(path="/tmp/test"), None)


def test_server_tools_matches_any_tool_on_its_server() -> None:
    pattern = ServerTools(server="filesystem")
    assert pattern.matches(McpToolCall(server="filesystem", tool="read_file"), None)
    assert pattern.matches(McpToolCall(server="filesystem", tool="write_file"), None)
    assert not pattern.matches(McpToolCall(server="github", tool="create_issue"), None)
    assert not pattern.matches(FileRead(path="filesystem"), None)


# ---------------------------------------------------------------------------
# FilePattern
# ---------------------------------------------------------------------------


def test_file_pattern_delete() -> None:
    pattern = FilePattern(pattern="/tmp/**", permission=Permission.DELETE)
    assert pattern.matches(FileDelete(path="/tmp/build/output.o"), None)
    assert not pattern.matches(FileDelete(path="/home/user/important.txt"), None)


def test_file_pattern_double_star_excludes_the_directory_itself() -> None:
    pattern = FilePattern(pattern="/tmp/**", permission=Permission.DELETE)
    assert not pattern.matches(FileDelete(path="/tmp"), None)


def test_file_pattern_write() -> None:
    pattern = FilePattern(pattern="/home/user/docs/*", permission=Permission.WRITE)
    assert pattern.matches(FileWriteOutsideSandbox(path="/home/user/docs/report.txt"), None)
    assert not pattern.matches(FileWriteOutsideSandbox(path="/etc/passwd"), None)


def test_file_pattern_star_crosses_slash() -> None:
    pattern = FilePattern(pattern="/home/user/docs/*", permission=Permission.WRITE)
    assert pattern.matches(FileWriteOutsideSandbox(path="/home/user/docs/a/b"), None)


def test_file_pattern_read() -> None:
    pattern = FilePattern(pattern="/home/user/docs/**", permission=Permission.READ)
    assert pattern.matches(FileRead(path="/home/user/docs/report.txt"), None)
    assert not pattern.matches(FileRead(path="/etc/passwd"), None)


def test_file_pattern_permission_mismatch_never_matches() -> None:
    write = FilePattern(pattern="/tmp/**", permission=Permission.WRITE)
    assert not write.matches(FileDelete(path="/tmp/file.txt"), None)
    assert not write.matches(FileRead(path="/tmp/file.txt"), None)
    read = FilePattern(pattern="/home/user/**", permission=Permission.READ)
    assert not read.matches(FileWriteOutsideSandbox(path="/home/user/file.txt"), None)
    assert not read.matches(FileDelete(path="/home/user/file.txt"), None)


@pytest.mark.parametrize(
    "permission",
    [Permission.EXECUTE, Permission.INVOKE, Permission.LIST, Permission.CREATE],
)
def test_file_pattern_with_non_file_permission_never_matches(permission: Permission) -> None:
    pattern = FilePattern(pattern="**", permission=permission)
    for action in (
        FileRead(path="/a"),
        FileDelete(path="/a"),
        FileWriteOutsideSandbox(path="/a"),
        ExecuteCommand(command="/a", args=[]),
        McpToolCall(server="a", tool="b"),
    ):
        assert not pattern.matches(action, Path("/"))


def test_file_pattern_rejects_path_traversal_for_delete() -> None:
    pattern = FilePattern(pattern="/home/user/**", permission=Permission.DELETE)
    assert not pattern.matches(FileDelete(path="/home/user/../../etc/passwd"), None)


def test_file_pattern_rejects_path_traversal_for_read() -> None:
    pattern = FilePattern(pattern="/home/user/**", permission=Permission.READ)
    assert not pattern.matches(FileRead(path="/home/user/../../etc/passwd"), None)


def test_file_pattern_allows_double_dots_inside_a_name() -> None:
    pattern = FilePattern(pattern="/home/user/**", permission=Permission.READ)
    assert pattern.matches(FileRead(path="/home/user/foo..bar"), None)


def test_file_pattern_invalid_glob_matches_nothing() -> None:
    pattern = FilePattern(pattern="/tmp/[abc", permission=Permission.READ)
    assert not pattern.matches(FileRead(path="/tmp/[abc"), None)
    assert not pattern.matches(FileRead(path="/tmp/a"), None)


def test_file_pattern_ignores_workspace_root() -> None:
    pattern = FilePattern(pattern="/other/**", permission=Permission.READ)
    assert pattern.matches(FileRead(path="/other/file"), Path("/project"))


def test_file_pattern_glob_features() -> None:
    pattern = FilePattern(pattern="/src/{a,b}/[!x]?.rs", permission=Permission.READ)
    assert pattern.matches(FileRead(path="/src/a/yz.rs"), None)
    assert pattern.matches(FileRead(path="/src/b/y/.rs"), None)
    assert not pattern.matches(FileRead(path="/src/a/xz.rs"), None)
    assert not pattern.matches(FileRead(path="/src/c/yz.rs"), None)
    assert not pattern.matches(FileRead(path="/SRC/a/yz.rs"), None)


# ---------------------------------------------------------------------------
# WorkspaceRelative
# ---------------------------------------------------------------------------


def test_workspace_relative_read_without_root() -> None:
    pattern = WorkspaceRelative(pattern="/project/src/**", permission=Permission.READ)
    assert pattern.matches(FileRead(path="/project/src/main.rs"), None)
    assert not pattern.matches(FileRead(path="/other/path/file.rs"), None)


def test_workspace_relative_file_requires_path_under_root() -> None:
    pattern = WorkspaceRelative(pattern="/project-b/**", permission=Permission.READ)
    assert not pattern.matches(FileRead(path="/project-b/file.rs"), Path("/project-a"))
    assert pattern.matches(FileRead(path="/project-b/file.rs"), Path("/project-b"))
    assert pattern.matches(FileRead(path="/project-b/file.rs"), "/project-b/")


def test_workspace_relative_root_is_compared_component_wise() -> None:
    pattern = WorkspaceRelative(pattern="/a/**", permission=Permission.DELETE)
    assert not pattern.matches(FileDelete(path="/a/bc/file"), Path("/a/b"))
    assert pattern.matches(FileDelete(path="/a/b/file"), Path("/a/b"))


def test_workspace_relative_write_and_delete_use_file_mapping() -> None:
    write = WorkspaceRelative(pattern="/p/**", permission=Permission.WRITE)
    delete = WorkspaceRelative(pattern="/p/**", permission=Permission.DELETE)
    assert write.matches(FileWriteOutsideSandbox(path="/p/x"), Path("/p"))
    assert not write.matches(FileDelete(path="/p/x"), Path("/p"))
    assert delete.matches(FileDelete(path="/p/x"), Path("/p"))
    assert not delete.matches(FileRead(path="/p/x"), Path("/p"))


def test_workspace_relative_rejects_traversal() -> None:
    pattern = WorkspaceRelative(pattern="/p/**", permission=Permission.READ)
    assert not pattern.matches(FileRead(path="/p/../etc/passwd"), Path("/p"))
    assert not pattern.matches(FileRead(path="/p/../etc/passwd"), None)


def test_workspace_relative_invoke_requires_workspace_and_matching_resource() -> None:
    pattern = WorkspaceRelative(pattern="filesystem/*", permission=Permission.INVOKE)
    assert pattern.matches(FS_READ, Path("/project"))
    assert not pattern.matches(FS_READ, None)
    assert not pattern.matches(McpToolCall(server="github", tool="read_file"), Path("/project"))
    assert not pattern.matches(FileRead(path="filesystem/read_file"), Path("/project"))


def test_workspace_relative_invoke_rejects_traversal_in_server_tool() -> None:
    pattern = WorkspaceRelative(pattern="**", permission=Permission.INVOKE)
    assert not pattern.matches(McpToolCall(server="..", tool="x"), Path("/project"))


def test_workspace_relative_execute_requires_workspace_and_ignores_args() -> None:
    pattern = WorkspaceRelative(pattern="cargo*", permission=Permission.EXECUTE)
    action = ExecuteCommand(command="cargo", args=["build", "--release"])
    assert pattern.matches(action, Path("/project"))
    assert not pattern.matches(action, None)
    assert not pattern.matches(ExecuteCommand(command="sudo", args=[]), Path("/project"))


@pytest.mark.parametrize("permission", [Permission.LIST, Permission.CREATE])
def test_workspace_relative_other_permissions_never_match(permission: Permission) -> None:
    pattern = WorkspaceRelative(pattern="**", permission=permission)
    for action in NON_PLUGIN_ACTIONS:
        assert not pattern.matches(action, Path("/"))


def test_path_in_workspace() -> None:
    assert path_in_workspace("/anything", None)
    assert path_in_workspace("/a/b", "/a/b")
    assert path_in_workspace("/a/b/c", PurePosixPath("/a/b"))
    assert path_in_workspace("/a//b/./c", "/a/b/")
    assert not path_in_workspace("/a/bc", "/a/b")
    assert not path_in_workspace("/a", "/a/b")
    assert not path_in_workspace("a/b", "/a")


# ---------------------------------------------------------------------------
# CommandPattern
# ---------------------------------------------------------------------------


def test_command_pattern_exact_name() -> None:
    pattern = CommandPattern(command="cargo")
    assert pattern.matches(ExecuteCommand(command="cargo", args=[]), None)
    assert not pattern.matches(ExecuteCommand(command="sudo", args=[]), None)


def test_command_pattern_glob_matches_bare_command() -> None:
    assert CommandPattern(command="cargo*").matches(ExecuteCommand(command="cargo", args=[]), None)
    assert CommandPattern(command="cargo*").matches(
        ExecuteCommand(command="cargo-fmt", args=[]), None
    )


def test_command_pattern_ignores_args() -> None:
    pattern = CommandPattern(command="cargo")
    assert pattern.matches(ExecuteCommand(command="cargo", args=["build"]), None)


def test_command_pattern_never_matches_other_action_types() -> None:
    pattern = CommandPattern(command="cargo")
    assert not pattern.matches(FileRead(path="cargo"), None)
    assert not pattern.matches(McpToolCall(server="cargo", tool="cargo"), None)


def test_command_pattern_rejects_traversal() -> None:
    pattern = CommandPattern(command="**")
    assert not pattern.matches(ExecuteCommand(command="../bin/evil", args=[]), None)


# ---------------------------------------------------------------------------
# NetworkHost
# ---------------------------------------------------------------------------


def test_network_host_any_port() -> None:
    pattern = NetworkHost(host="api.example.com", ports=None)
    assert pattern.matches(NetworkRequest(host="api.example.com", port=443), None)
    assert pattern.matches(NetworkRequest(host="api.example.com", port=8080), None)


def test_network_host_with_ports() -> None:
    pattern = NetworkHost(host="api.example.com", ports=[443, 8443])
    assert pattern.ports == (443, 8443)
    assert pattern.matches(NetworkRequest(host="api.example.com", port=443), None)
    assert not pattern.matches(NetworkRequest(host="api.example.com", port=80), None)


def test_network_host_wrong_host_or_action() -> None:
    pattern = NetworkHost(host="api.example.com", ports=None)
    assert not pattern.matches(NetworkRequest(host="evil.com", port=443), None)
    assert not pattern.matches(NetworkRequest(host="API.example.com", port=443), None)
    assert not pattern.matches(McpToolCall(server="api.example.com", tool="x"), None)


def test_network_host_rejects_out_of_range_port() -> None:
    with pytest.raises(ValidationError):
        NetworkHost(host="h", ports=(70000,))


# ---------------------------------------------------------------------------
# Custom
# ---------------------------------------------------------------------------


def test_custom_never_matches() -> None:
    pattern = Custom(pattern="anything")
    assert not pattern.matches(FileDelete(path="/tmp/file"), None)
    assert not pattern.matches(McpToolCall(server="anything", tool="anything"), None)
    assert not pattern.matches(PluginExecution(plugin_id="anything", capability="x"), Path("/"))


# ---------------------------------------------------------------------------
# Plugin patterns
# ---------------------------------------------------------------------------


def test_plugin_capability_matches_execution() -> None:
    pattern = PluginCapability(plugin_id="weather", capability="forecast")
    assert pattern.matches(PluginExecution(plugin_id="weather", capability="forecast"), None)
    assert not pattern.matches(PluginExecution(plugin_id="weather", capability="other"), None)
    assert not pattern.matches(PluginExecution(plugin_id="other", capability="forecast"), None)


def test_plugin_capability_matches_http_request() -> None:
    http = PluginHttpRequest(plugin_id="weather", url="https://api.weather.com/", method="GET")
    assert PluginCapability(plugin_id="weather", capability="http_request").matches(http, None)
    assert not PluginCapability(plugin_id="weather", capability="forecast").matches(http, None)
    assert not PluginCapability(plugin_id="other", capability="http_request").matches(http, None)


@pytest.mark.parametrize(
    ("mode", "capability"),
    [
        (Permission.READ, "file_read"),
        (Permission.WRITE, "file_write"),
        (Permission.DELETE, "file_delete"),
    ],
)
def test_plugin_capability_matches_file_access(mode: Permission, capability: str) -> None:
    action = PluginFileAccess(plugin_id="cache", path="/tmp/c", mode=mode)
    assert PluginCapability(plugin_id="cache", capability=capability).matches(action, None)
    assert not PluginCapability(plugin_id="other", capability=capability).matches(action, None)
    for wrong in {"file_read", "file_write", "file_delete"} - {capability}:
        assert not PluginCapability(plugin_id="cache", capability=wrong).matches(action, None)


@pytest.mark.parametrize(
    "mode", [Permission.EXECUTE, Permission.INVOKE, Permission.LIST, Permission.CREATE]
)
def test_plugin_capability_other_file_modes_never_match(mode: Permission) -> None:
    action = PluginFileAccess(plugin_id="cache", path="/tmp/c", mode=mode)
    for capability in ("file_read", "file_write", "file_delete", f"file_{mode}", str(mode)):
        assert not PluginCapability(plugin_id="cache", capability=capability).matches(action, None)


def test_plugin_wildcard_matches_every_plugin_action_of_its_plugin() -> None:
    pattern = PluginWildcard(plugin_id="weather")
    assert pattern.matches(PluginExecution(plugin_id="weather", capability="x"), None)
    assert pattern.matches(PluginHttpRequest(plugin_id="weather", url="u", method="POST"), None)
    assert pattern.matches(
        PluginFileAccess(plugin_id="weather", path="/p", mode=Permission.INVOKE), None
    )
    assert not pattern.matches(PluginExecution(plugin_id="other", capability="x"), None)


@pytest.mark.parametrize("action", NON_PLUGIN_ACTIONS, ids=lambda a: a.action_type)
def test_plugin_patterns_never_match_non_plugin_actions(action: SensitiveAction) -> None:
    assert not PluginWildcard(plugin_id="weather").matches(action, Path("/"))
    for capability in ("http_request", "file_read", "weather"):
        pattern = PluginCapability(plugin_id="weather", capability=capability)
        assert not pattern.matches(action, Path("/"))


@pytest.mark.parametrize("action", UNMAPPED_ACTIONS, ids=lambda a: a.action_type)
@pytest.mark.parametrize("pattern", ALL_PATTERNS, ids=str)
def test_no_pattern_matches_actions_without_a_rule(
    pattern: AllowancePattern, action: SensitiveAction
) -> None:
    assert not pattern.matches(action, Path("/"))
    assert not pattern.matches(action, None)


# ---------------------------------------------------------------------------
# pattern_for_action (with glob escaping)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (FS_READ, ExactTool(server="filesystem", tool="read_file")),
        (FileRead(path="/a/b"), FilePattern(pattern="/a/b", permission=Permission.READ)),
        (FileDelete(path="/a/b"), FilePattern(pattern="/a/b", permission=Permission.DELETE)),
        (
            FileWriteOutsideSandbox(path="/a/b"),
            FilePattern(pattern="/a/b", permission=Permission.WRITE),
        ),
        (
            ExecuteCommand(command="cargo", args=["build"]),
            CommandPattern(command="cargo", args=("build",)),
        ),
        (NetworkRequest(host="h.example", port=443), NetworkHost(host="h.example", ports=(443,))),
        (
            PluginExecution(plugin_id="w", capability="forecast"),
            PluginCapability(plugin_id="w", capability="forecast"),
        ),
        (
            PluginHttpRequest(plugin_id="w", url="https://x/", method="GET"),
            PluginCapability(plugin_id="w", capability="http_request", resource="GET https://x/"),
        ),
        (
            PluginFileAccess(plugin_id="w", path="/p", mode=Permission.READ),
            PluginCapability(plugin_id="w", capability="file_read", resource="/p"),
        ),
        (
            PluginFileAccess(plugin_id="w", path="/p", mode=Permission.WRITE),
            PluginCapability(plugin_id="w", capability="file_write", resource="/p"),
        ),
        (
            PluginFileAccess(plugin_id="w", path="/p", mode=Permission.DELETE),
            PluginCapability(plugin_id="w", capability="file_delete", resource="/p"),
        ),
    ],
    ids=lambda v: getattr(v, "action_type", None) or "",
)
def test_pattern_for_action_mapping(action: SensitiveAction, expected: AllowancePattern) -> None:
    pattern = pattern_for_action(action)
    assert pattern == expected
    assert pattern is not None and pattern.matches(action, None)


@pytest.mark.parametrize("action", UNMAPPED_ACTIONS, ids=lambda a: a.action_type)
def test_pattern_for_action_has_no_mapping_for_always_ask_actions(action: SensitiveAction) -> None:
    assert pattern_for_action(action) is None


def test_pattern_for_action_plugin_file_access_with_other_mode_has_no_mapping() -> None:
    action = PluginFileAccess(plugin_id="w", path="/p", mode=Permission.INVOKE)
    assert pattern_for_action(action) is None


def test_approving_a_star_path_grants_only_that_path() -> None:
    pattern = pattern_for_action(FileDelete(path="/tmp/*"))
    assert pattern == FilePattern(pattern="/tmp/\\*", permission=Permission.DELETE)
    assert pattern.matches(FileDelete(path="/tmp/*"), None)
    assert not pattern.matches(FileDelete(path="/tmp/other"), None)
    assert not pattern.matches(FileDelete(path="/tmp/a/b"), None)


@pytest.mark.parametrize(
    ("path", "other"),
    [
        ("/tmp/file?.txt", "/tmp/file1.txt"),
        ("/tmp/[abc].txt", "/tmp/a.txt"),
        ("/tmp/{a,b}.txt", "/tmp/a.txt"),
        ("/tmp/**", "/tmp/x/y"),
        ("/tmp/back\\slash", "/tmp/backslash"),
    ],
)
def test_approving_a_metacharacter_path_grants_only_that_path(path: str, other: str) -> None:
    for action_type in (FileRead, FileDelete, FileWriteOutsideSandbox):
        pattern = pattern_for_action(action_type(path=path))
        assert pattern is not None
        assert pattern.matches(action_type(path=path), None)
        assert not pattern.matches(action_type(path=other), None)


def test_approving_a_star_command_grants_only_that_command() -> None:
    pattern = pattern_for_action(ExecuteCommand(command="rm*", args=[]))
    assert pattern == CommandPattern(command="rm\\*", args=())
    assert pattern.matches(ExecuteCommand(command="rm*", args=[]), None)
    assert not pattern.matches(ExecuteCommand(command="rm*", args=["-f"]), None)
    assert not pattern.matches(ExecuteCommand(command="rmdir", args=[]), None)


# ---------------------------------------------------------------------------
# An approval of a concrete action never widens (issue 14 item 6)
# ---------------------------------------------------------------------------


def test_a_command_pattern_with_args_matches_exactly_those_args() -> None:
    pattern = CommandPattern(command="git", args=("status",))
    assert pattern.matches(ExecuteCommand(command="git", args=["status"]), None)
    for args in ([], ["push", "--force"], ["status", "--porcelain"], ["Status"], ["status", ""]):
        assert not pattern.matches(ExecuteCommand(command="git", args=args), None), args
    # The arguments are literal, never globs.
    star = CommandPattern(command="rm", args=("*",))
    assert star.matches(ExecuteCommand(command="rm", args=["*"]), None)
    assert not star.matches(ExecuteCommand(command="rm", args=["-rf"]), None)


def test_an_explicit_command_glob_without_args_still_covers_every_argument_list() -> None:
    pattern = ALLOWANCE_PATTERN_ADAPTER.validate_python(
        {"type": "command_pattern", "command": "cargo*"}
    )
    assert isinstance(pattern, CommandPattern) and pattern.args is None
    assert pattern.matches(ExecuteCommand(command="cargo-fmt", args=["--all"]), None)
    assert ALLOWANCE_PATTERN_ADAPTER.dump_python(pattern, mode="json") == {
        "type": "command_pattern",
        "command": "cargo*",
    }


def test_command_args_survive_a_json_round_trip() -> None:
    allowance = Allowance.create(
        CommandPattern(command="git", args=("status",)), session_only=True
    )
    data = json.loads(allowance.model_dump_json())
    assert data["action_pattern"] == {
        "type": "command_pattern",
        "command": "git",
        "args": ["status"],
    }
    loaded = Allowance.model_validate(data)
    assert loaded.action_pattern == allowance.action_pattern
    assert not loaded.action_pattern.matches(ExecuteCommand(command="git", args=["push"]), None)


@pytest.mark.parametrize(
    ("approved", "others"),
    [
        (
            PluginHttpRequest(plugin_id="w", url="https://api.example/a", method="GET"),
            [
                PluginHttpRequest(plugin_id="w", url="https://api.example/b", method="GET"),
                PluginHttpRequest(plugin_id="w", url="https://api.example/a", method="POST"),
            ],
        ),
        (
            PluginFileAccess(plugin_id="w", path="/data/a", mode=Permission.READ),
            [
                PluginFileAccess(plugin_id="w", path="/data/b", mode=Permission.READ),
                PluginFileAccess(plugin_id="w", path="/data/a", mode=Permission.WRITE),
            ],
        ),
        (
            ExecuteCommand(command="git", args=["status"]),
            [
                ExecuteCommand(command="git", args=[]),
                ExecuteCommand(command="git", args=["push", "--force"]),
                ExecuteCommand(command="git", args=["status", "--porcelain"]),
            ],
        ),
    ],
    ids=lambda v: getattr(v, "action_type", None) or "",
)
def test_the_pattern_of_a_concrete_action_covers_nothing_else(
    approved: SensitiveAction, others: list[SensitiveAction]
) -> None:
    pattern = pattern_for_action(approved)
    assert pattern is not None and pattern.matches(approved, None)
    for other in others:
        assert not pattern.matches(other, None), other


_path_segment = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="/\x00"), min_size=1, max_size=8
).filter(lambda s: s != "..")
_paths = st.lists(_path_segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


@given(path=_paths, other=_paths)
def test_pattern_from_concrete_path_matches_exactly_that_path(path: str, other: str) -> None:
    pattern = pattern_for_action(FileRead(path=path))
    assert pattern is not None
    assert pattern.matches(FileRead(path=path), None)
    assert pattern.matches(FileRead(path=other), None) == (other == path)


# ---------------------------------------------------------------------------
# AllowanceStore (ported)
# ---------------------------------------------------------------------------


def test_store_add_and_count() -> None:
    store = AllowanceStore()
    assert store.count() == 0
    store.add_allowance(make(ServerTools(server="fs")))
    assert store.count() == 1
    assert len(store) == 1


def test_store_add_replaces_same_id() -> None:
    store = AllowanceStore()
    a = make(ServerTools(server="fs"))
    store.add_allowance(a)
    store.add_allowance(a.model_copy(update={"session_only": False}))
    assert store.count() == 1
    assert store.all()[0].session_only is False


def test_store_find_matching() -> None:
    store = AllowanceStore()
    a = make(ExactTool(server="filesystem", tool="read_file"))
    store.add_allowance(a)
    found = store.find_matching(FS_READ, None)
    assert found is not None
    assert found.id == a.id


def test_store_find_matching_no_match() -> None:
    store = AllowanceStore()
    store.add_allowance(make(ExactTool(server="filesystem", tool="read_file")))
    assert store.find_matching(McpToolCall(server="github", tool="create_issue"), None) is None


def test_store_find_matching_skips_expired() -> None:
    store = AllowanceStore()
    store.add_allowance(expired(ServerTools(server="filesystem")))
    assert store.find_matching(FS_READ, None) is None
    assert store.count() == 1  # find_matching purges nothing


def test_store_find_matching_skips_exhausted() -> None:
    store = AllowanceStore()
    a = make(ServerTools(server="filesystem"), uses=1).model_copy(update={"uses_remaining": 0})
    store.add_allowance(a)
    assert store.find_matching(FS_READ, None) is None
    assert store.count() == 1
    assert store.consume_use(a.id) is False


def test_store_find_matching_does_not_consume() -> None:
    store = AllowanceStore()
    store.add_allowance(make(ServerTools(server="filesystem"), uses=1))
    for _ in range(3):
        found = store.find_matching(FS_READ, None)
        assert found is not None and found.uses_remaining == 1


def test_store_consume_use_limited() -> None:
    store = AllowanceStore()
    a = make(ServerTools(server="fs"), uses=3)
    store.add_allowance(a)
    assert store.consume_use(a.id) is True
    assert store.consume_use(a.id) is True
    assert store.consume_use(a.id) is False
    assert store.consume_use(a.id) is False  # saturates at 0
    assert store.all()[0].uses_remaining == 0


def test_store_consume_use_unlimited() -> None:
    store = AllowanceStore()
    a = make(ServerTools(server="fs"))
    store.add_allowance(a)
    assert store.consume_use(a.id) is True
    assert store.consume_use(a.id) is True
    assert store.all()[0].uses_remaining is None


def test_store_consume_use_not_found() -> None:
    store = AllowanceStore()
    missing = uuid.uuid4()
    with pytest.raises(AllowanceNotFound, match=f"allowance not found: allowance:{missing}"):
        store.consume_use(missing)


def test_store_cleanup_expired() -> None:
    store = AllowanceStore()
    store.add_allowance(expired(ServerTools(server="old")))
    store.add_allowance(make(ServerTools(server="current")))
    assert store.count() == 2
    assert store.cleanup_expired() == 1
    assert store.count() == 1
    assert store.cleanup_expired() == 0


def test_store_cleanup_expired_keeps_exhausted() -> None:
    store = AllowanceStore()
    store.add_allowance(make(ServerTools(server="fs"), uses=0))
    assert store.cleanup_expired() == 0
    assert store.count() == 1


def test_store_clear_session_allowances_keeps_non_session() -> None:
    store = AllowanceStore()
    store.add_allowance(make(ServerTools(server="session"), session_only=True))
    store.add_allowance(make(ServerTools(server="persistent"), session_only=False))
    assert store.count() == 2
    store.clear_session_allowances()
    assert store.count() == 1
    assert store.find_matching(McpToolCall(server="persistent", tool="any"), None) is not None
    assert store.find_matching(McpToolCall(server="session", tool="any"), None) is None


def test_store_default_and_repr() -> None:
    store = AllowanceStore()
    assert store.count() == 0
    assert "AllowanceStore" in repr(store)
    assert "count" in repr(store)
    store.add_allowance(make(ServerTools(server="fs")))
    assert repr(store) == "AllowanceStore(count=1)"


def test_empty_store_is_truthy() -> None:
    assert AllowanceStore()


# ---------------------------------------------------------------------------
# find_matching_and_consume
# ---------------------------------------------------------------------------


def test_consume_one_shot_is_used_once_and_kept_with_zero() -> None:
    store = AllowanceStore()
    a = make(ServerTools(server="filesystem"), uses=1)
    store.add_allowance(a)
    found = store.find_matching_and_consume(FS_READ, None)
    assert found is not None
    assert found.id == a.id
    assert found.uses_remaining == 1  # the copy is taken before the decrement
    assert store.find_matching_and_consume(FS_READ, None) is None
    assert store.count() == 1
    assert store.all()[0].uses_remaining == 0


def test_consume_unlimited_never_runs_out() -> None:
    store = AllowanceStore()
    store.add_allowance(make(ServerTools(server="filesystem")))
    for _ in range(5):
        found = store.find_matching_and_consume(FS_READ, None)
        assert found is not None and found.uses_remaining is None


def test_consume_purges_expired_but_keeps_exhausted() -> None:
    store = AllowanceStore()
    store.add_allowance(expired(ServerTools(server="other")))
    store.add_allowance(make(ServerTools(server="other"), uses=0))
    assert store.find_matching_and_consume(FS_READ, None) is None
    assert store.count() == 1
    assert store.all()[0].uses_remaining == 0


def test_consume_falls_through_to_next_valid_entry() -> None:
    store = AllowanceStore()
    first = make(ServerTools(server="filesystem"), uses=1)
    second = make(ExactTool(server="filesystem", tool="read_file"), uses=1)
    store.add_allowance(first)
    store.add_allowance(second)
    got = [store.find_matching_and_consume(FS_READ, None) for _ in range(3)]
    assert [g.id if g else None for g in got] == [first.id, second.id, None]


def test_rooted_allowance_needs_the_exact_same_root() -> None:
    store = AllowanceStore()
    store.add_allowance(make(ServerTools(server="filesystem"), workspace_root="/home/u/proj"))
    assert store.find_matching(FS_READ, None) is None
    assert store.find_matching(FS_READ, Path("/home/u")) is None
    assert store.find_matching(FS_READ, Path("/home/u/proj/sub")) is None
    assert store.find_matching(FS_READ, Path("/home/u/proj")) is not None
    assert store.find_matching(FS_READ, "/home/u/proj/") is not None
    assert store.find_matching_and_consume(FS_READ, None) is None
    assert store.find_matching_and_consume(FS_READ, Path("/home/u/proj")) is not None


def test_unrooted_allowance_matches_in_any_workspace() -> None:
    store = AllowanceStore()
    store.add_allowance(make(ServerTools(server="filesystem")))
    assert store.find_matching(FS_READ, None) is not None
    assert store.find_matching(FS_READ, Path("/anywhere")) is not None


def test_store_passes_root_to_pattern() -> None:
    store = AllowanceStore()
    store.add_allowance(
        make(WorkspaceRelative(pattern="filesystem/*", permission=Permission.INVOKE))
    )
    assert store.find_matching(FS_READ, None) is None
    assert store.find_matching(FS_READ, Path("/p")) is not None


def test_concurrent_consumption_grants_exactly_n_uses() -> None:
    uses, threads, attempts = 25, 8, 10
    store = AllowanceStore()
    store.add_allowance(make(ServerTools(server="filesystem"), uses=uses))
    barrier = threading.Barrier(threads)
    successes: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        mine = sum(
            store.find_matching_and_consume(FS_READ, None) is not None for _ in range(attempts)
        )
        with lock:
            successes.append(mine)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert sum(successes) == uses
    assert store.all()[0].uses_remaining == 0


def test_concurrent_consume_use_never_goes_below_zero() -> None:
    store = AllowanceStore()
    a = make(ServerTools(server="fs"), uses=10)
    store.add_allowance(a)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            r = store.consume_use(a.id)
            with lock:
                results.append(r)

    pool = [threading.Thread(target=worker) for _ in range(6)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert results.count(True) == 9  # 9, 8, ..., 1 remaining; the 10th use leaves 0
    assert store.all()[0].uses_remaining == 0


# ---------------------------------------------------------------------------
# export / import
# ---------------------------------------------------------------------------


def test_export_session_allowances_only_valid_session_entries() -> None:
    store = AllowanceStore()
    keep = make(ServerTools(server="a"), session_only=True, workspace_root="/p")
    store.add_allowance(keep)
    store.add_allowance(expired(ServerTools(server="b")))
    store.add_allowance(make(ServerTools(server="c"), uses=0))
    store.add_allowance(make(ServerTools(server="d"), session_only=False, workspace_root="/p"))
    assert [a.id for a in store.export_session_allowances()] == [keep.id]


def test_export_workspace_allowances_needs_root_and_validity() -> None:
    store = AllowanceStore()
    keep = make(ServerTools(server="a"), session_only=False, workspace_root="/p")
    store.add_allowance(keep)
    store.add_allowance(make(ServerTools(server="b"), session_only=False))  # no root: lost
    store.add_allowance(make(ServerTools(server="c"), session_only=True, workspace_root="/p"))
    store.add_allowance(
        make(ServerTools(server="d"), session_only=False, workspace_root="/p", uses=0)
    )
    assert [a.id for a in store.export_workspace_allowances()] == [keep.id]


def test_non_session_allowance_without_root_is_exported_by_neither() -> None:
    store = AllowanceStore()
    store.add_allowance(make(ServerTools(server="b"), session_only=False))
    assert store.export_session_allowances() == []
    assert store.export_workspace_allowances() == []


def test_import_drops_invalid_and_replaces_by_id() -> None:
    store = AllowanceStore()
    existing = make(ServerTools(server="a"), uses=5)
    store.add_allowance(existing)
    updated = existing.model_copy(update={"uses_remaining": 2})
    fresh = make(ServerTools(server="b"))
    store.import_allowances(
        [updated, fresh, expired(ServerTools(server="c")), make(ServerTools(server="d"), uses=0)]
    )
    assert [a.id for a in store.all()] == [existing.id, fresh.id]
    assert store.all()[0].uses_remaining == 2


def test_export_then_import_restores_session() -> None:
    source = AllowanceStore()
    source.add_allowance(make(ExactTool(server="filesystem", tool="read_file")))
    saved = dump_allowances(source.export_session_allowances())
    target = AllowanceStore()
    target.import_allowances(load_allowances(saved, source="session.json"))
    assert target.find_matching(FS_READ, None) is not None


def test_load_allowances_names_source_on_error() -> None:
    with pytest.raises(SerializationError, match="ws:1234:allowances"):
        load_allowances('[{"id": "nope"}]', source="ws:1234:allowances")
    with pytest.raises(SerializationError):
        load_allowances("not json", source="x")


def test_dump_allowances_is_a_json_array_of_original_shape() -> None:
    a = make(ServerTools(server="fs"))
    data: list[dict[str, Any]] = json.loads(dump_allowances([a]))
    assert data == [json.loads(a.model_dump_json())]


def test_store_hands_out_snapshots() -> None:
    store = AllowanceStore()
    a = make(ServerTools(server="fs"), uses=2)
    store.add_allowance(a)
    listing = store.all()
    listing.clear()
    assert store.count() == 1
    found = store.find_matching_and_consume(McpToolCall(server="fs", tool="t"), None)
    assert found is not None and found.uses_remaining == 2
    assert a.uses_remaining == 2  # the caller's object is untouched by the decrement
    assert store.all()[0].uses_remaining == 1


# ---------------------------------------------------------------------------
# owner-scoped session clearing (child sessions must not wipe the parent's)
# ---------------------------------------------------------------------------


def test_clear_session_allowances_for_one_owner() -> None:
    store = AllowanceStore()
    parent = make(ServerTools(server="parent"))
    child = make(ServerTools(server="child"))
    untagged = make(ServerTools(server="untagged"))
    child_persistent = make(ServerTools(server="child-ws"), session_only=False, workspace_root="/p")
    store.add_allowance(parent, owner="session-parent")
    store.add_allowance(child, owner="session-child")
    store.add_allowance(untagged)
    store.add_allowance(child_persistent, owner="session-child")

    store.clear_session_allowances(owner="session-child")
    assert [a.id for a in store.all()] == [parent.id, untagged.id, child_persistent.id]

    store.clear_session_allowances()
    assert [a.id for a in store.all()] == [child_persistent.id]


def test_owner_tag_follows_the_latest_add() -> None:
    store = AllowanceStore()
    a = make(ServerTools(server="fs"))
    store.add_allowance(a, owner="s1")
    assert store.owner_of(a.id) == "s1"
    store.add_allowance(a, owner="s2")
    assert store.owner_of(a.id) == "s2"
    store.clear_session_allowances(owner="s1")
    assert store.count() == 1
    store.add_allowance(a)
    assert store.owner_of(a.id) is None


def test_import_with_owner_and_export_by_owner() -> None:
    store = AllowanceStore()
    mine = make(ServerTools(server="mine"))
    theirs = make(ServerTools(server="theirs"))
    store.import_allowances([mine], owner="me")
    store.add_allowance(theirs, owner="them")
    assert [a.id for a in store.export_session_allowances(owner="me")] == [mine.id]
    assert [a.id for a in store.export_session_allowances()] == [mine.id, theirs.id]
    store.clear_session_allowances(owner="me")
    assert [a.id for a in store.all()] == [theirs.id]
    assert store.owner_of(mine.id) is None


def test_owner_tag_is_not_serialized() -> None:
    store = AllowanceStore()
    store.add_allowance(make(ServerTools(server="fs")), owner="session-x")
    assert "session-x" not in dump_allowances(store.all())


def test_removed_entries_drop_their_owner_tag() -> None:
    store = AllowanceStore()
    old = expired(ServerTools(server="old"))
    store.add_allowance(old, owner="s")
    store.cleanup_expired()
    assert store.owner_of(old.id) is None
