"""SecurityPolicy: the original's policy tests (spec §4.1, §10) plus our fail-closed fixes."""

from __future__ import annotations

import json

import pytest

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
from astrid.security.policy import (
    DEFAULT_MAX_ARGUMENT_SIZE,
    Blocked,
    PolicyAllowed,
    PolicyResult,
    RequiresApproval,
    SecurityPolicy,
    action_resource,
    extract_host_from_url,
)


def level(result: PolicyResult) -> RiskLevel:
    assert isinstance(result, RequiresApproval), result
    return result.assessment.level


# ------------------------------------------------------------------------------- default policy


def test_default_blocks_dangerous_commands() -> None:
    policy = SecurityPolicy.default()
    assert policy.check(ExecuteCommand(command="sudo", args=["rm"])).is_blocked()
    assert policy.check(ExecuteCommand(command="sudo")).is_blocked()
    assert policy.check(ExecuteCommand(command="mkfs", args=[])).is_blocked()


def test_default_blocks_rm_rf_root() -> None:
    policy = SecurityPolicy.default()
    result = policy.check(ExecuteCommand(command="rm", args=["-rf", "/"]))
    assert isinstance(result, Blocked)
    assert "rm -rf /" in result.reason


def test_blocked_prefix_is_a_plain_string_prefix() -> None:
    policy = SecurityPolicy.default()
    # "rm -rf /home/x" starts with the blocked "rm -rf /"; "sum x" starts with "su".
    assert policy.check(ExecuteCommand(command="rm", args=["-rf", "/home/x"])).is_blocked()
    assert policy.check(ExecuteCommand(command="sum", args=["x"])).is_blocked()
    # Without args only the exact command name is checked.
    assert policy.check(ExecuteCommand(command="sum")).requires_approval()
    assert policy.check(ExecuteCommand(command="ls", args=["-la"])).requires_approval()


def test_default_blocks_system_paths() -> None:
    policy = SecurityPolicy.default()
    assert policy.check(FileWriteOutsideSandbox(path="/etc/passwd")).is_blocked()
    assert policy.check(FileDelete(path="/boot/vmlinuz")).is_blocked()
    assert policy.check(FileRead(path="/proc/self/environ")).is_blocked()


def test_default_requires_approval_for_delete() -> None:
    result = SecurityPolicy.default().check(FileDelete(path="/home/user/file.txt"))
    assert result.requires_approval()
    assert isinstance(result, RequiresApproval)
    assert result.assessment.level is RiskLevel.HIGH
    assert "file deletion requires approval" in result.assessment.reason


def test_default_requires_approval_for_network() -> None:
    result = SecurityPolicy.default().check(NetworkRequest(host="api.example.com", port=443))
    assert result.requires_approval()
    assert level(result) is RiskLevel.MEDIUM


def test_default_values() -> None:
    policy = SecurityPolicy.default()
    assert policy.blocked_tools == {
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
    assert policy.approval_required_tools == {"builtin:task"}
    assert policy.denied_paths == ["/etc/**", "/boot/**", "/sys/**", "/proc/**", "/dev/**"]
    assert policy.allowed_paths == [] and policy.allowed_hosts == [] and policy.denied_hosts == []
    assert policy.max_argument_size == DEFAULT_MAX_ARGUMENT_SIZE == 1024 * 1024
    assert policy.require_approval_for_delete and policy.require_approval_for_network
    assert policy.blocked_plugins == set()
    assert SecurityPolicy() == policy


def test_default_blocks_mcp_tools_named_like_blocked_commands() -> None:
    policy = SecurityPolicy.default()
    for tool in ("init", "dd", "su"):
        assert policy.check(McpToolCall(server="anything", tool=tool)).is_blocked()


# ---------------------------------------------------------------------------- permissive policy


def test_permissive_allows_everything() -> None:
    policy = SecurityPolicy.permissive()
    assert policy.check(McpToolCall(server="anything", tool="anything")).is_allowed()
    assert policy.check(NetworkRequest(host="evil.com", port=80)).is_allowed()
    assert policy.check(TransmitData(destination="evil.com", data_type="x")).is_allowed()
    # Delete without the flag falls back to the path result.
    assert level(policy.check(FileDelete(path="/tmp/x"))) is RiskLevel.HIGH


def test_permissive_values() -> None:
    policy = SecurityPolicy.permissive()
    assert policy.blocked_tools == set() and policy.approval_required_tools == set()
    assert policy.denied_paths == [] and policy.allowed_paths == []
    assert policy.max_argument_size == 0
    assert not policy.require_approval_for_delete
    assert not policy.require_approval_for_network
    assert policy.blocked_plugins == set()


# ------------------------------------------------------------------------------------ MCP tools


def test_blocked_mcp_tool() -> None:
    policy = SecurityPolicy.permissive()
    policy.blocked_tools.add("danger:nuke")
    assert policy.check(McpToolCall(server="danger", tool="nuke")).is_blocked()
    assert policy.check(McpToolCall(server="danger", tool="other")).is_allowed()


def test_blocked_mcp_server() -> None:
    policy = SecurityPolicy.permissive()
    policy.blocked_tools.add("danger")
    result = policy.check(McpToolCall(server="danger", tool="any_tool"))
    assert isinstance(result, Blocked)
    assert result.reason == "tool 'danger:any_tool' is blocked by policy"


def test_approval_required_mcp_tool() -> None:
    policy = SecurityPolicy.permissive()
    policy.approval_required_tools.add("filesystem:write_file")
    result = policy.check(McpToolCall(server="filesystem", tool="write_file"))
    assert result.requires_approval()
    assert level(result) is RiskLevel.MEDIUM
    assert policy.check(McpToolCall(server="filesystem", tool="read_file")).is_allowed()


def test_approval_required_mcp_server() -> None:
    policy = SecurityPolicy.permissive()
    policy.approval_required_tools.add("filesystem")
    assert policy.check(McpToolCall(server="filesystem", tool="anything")).requires_approval()


def test_approval_required_does_not_match_tool_name_alone() -> None:
    policy = SecurityPolicy.permissive()
    policy.approval_required_tools.add("write_file")
    assert policy.check(McpToolCall(server="fs", tool="write_file")).is_allowed()


def test_builtin_task_requires_approval() -> None:
    result = SecurityPolicy.default().check(McpToolCall(server="builtin", tool="task"))
    assert result.requires_approval(), "builtin:task should require approval by default"


def test_default_allows_ordinary_mcp_tools() -> None:
    assert SecurityPolicy.default().check(McpToolCall(server="fs", tool="read")).is_allowed()


# ---------------------------------------------------------------------------------- file paths


def test_denied_path() -> None:
    policy = SecurityPolicy.permissive()
    policy.denied_paths.append("/secrets/**")
    assert policy.check(FileWriteOutsideSandbox(path="/secrets/key.pem")).is_blocked()
    assert policy.check(FileRead(path="/secrets/key.pem")).is_blocked()


def test_allowed_path_enforcement() -> None:
    policy = SecurityPolicy.permissive()
    policy.allowed_paths.append("/home/user/**")
    result = policy.check(FileWriteOutsideSandbox(path="/home/user/docs/file.txt"))
    assert result.requires_approval()  # allowed, but a write outside the sandbox still asks
    blocked = policy.check(FileWriteOutsideSandbox(path="/var/lib/data.db"))
    assert isinstance(blocked, Blocked)
    assert "not in allowed paths" in blocked.reason


def test_denied_paths_win_over_allowed_paths() -> None:
    policy = SecurityPolicy.permissive()
    policy.allowed_paths.append("/home/**")
    policy.denied_paths.append("/home/user/.ssh/**")
    assert policy.check(FileRead(path="/home/user/.ssh/id_rsa")).is_blocked()
    assert policy.check(FileRead(path="/home/user/notes.txt")).requires_approval()


@pytest.mark.parametrize(
    "action",
    [
        FileWriteOutsideSandbox(path="/home/user/../../etc/passwd"),
        FileRead(path="/tmp/../etc/shadow"),
        FileDelete(path="../x"),
        FileRead(path="/tmp/.."),
    ],
)
def test_path_traversal_blocked(action: SensitiveAction) -> None:
    for policy in (SecurityPolicy.permissive(), SecurityPolicy.default()):
        result = policy.check(action)
        assert isinstance(result, Blocked)
        assert result.reason == "path contains traversal sequence (..)"


def test_double_dots_inside_a_name_are_not_traversal() -> None:
    policy = SecurityPolicy.permissive()
    assert policy.check(FileRead(path="/tmp/file..txt")).requires_approval()
    assert policy.check(FileRead(path="/tmp/a...b/./c")).requires_approval()


def test_invalid_glob_in_policy_never_matches() -> None:
    policy = SecurityPolicy.permissive()
    policy.denied_paths.append("/tmp/[unclosed")
    assert policy.check(FileRead(path="/tmp/[unclosed")).requires_approval()


def test_file_actions_risk_and_reasons() -> None:
    policy = SecurityPolicy.permissive()
    read = policy.check(FileRead(path="/a"))
    write = policy.check(FileWriteOutsideSandbox(path="/a"))
    assert isinstance(read, RequiresApproval) and isinstance(write, RequiresApproval)
    assert read.assessment == RiskAssessment.new(RiskLevel.HIGH, "file read: /a")
    assert write.assessment.reason == "file write outside sandbox: /a"


# ------------------------------------------------------------------------------------- network


def test_denied_host() -> None:
    policy = SecurityPolicy.permissive()
    policy.denied_hosts.append("evil.com")
    assert policy.check(NetworkRequest(host="evil.com", port=443)).is_blocked()


def test_allowed_hosts_enforcement() -> None:
    policy = SecurityPolicy.permissive()
    policy.allowed_hosts.append("api.example.com")
    assert policy.check(NetworkRequest(host="api.example.com", port=443)).is_allowed()
    assert policy.check(NetworkRequest(host="other.com", port=443)).is_blocked()


def test_denied_hosts_checked_before_allowed_hosts() -> None:
    policy = SecurityPolicy.permissive()
    policy.allowed_hosts.append("evil.com")
    policy.denied_hosts.append("evil.com")
    result = policy.check(NetworkRequest(host="evil.com", port=443))
    assert isinstance(result, Blocked)
    assert "denied" in result.reason


def test_transmit_data_checks_host() -> None:
    policy = SecurityPolicy.permissive()
    policy.denied_hosts.append("evil.com")
    assert policy.check(TransmitData(destination="evil.com", data_type="report")).is_blocked()
    assert policy.check(TransmitData(destination="good.com", data_type="report")).is_allowed()


def test_hosts_are_exact_strings() -> None:
    policy = SecurityPolicy.permissive()
    policy.denied_hosts.append("evil.com")
    assert policy.check(NetworkRequest(host="sub.evil.com", port=443)).is_allowed()


# ------------------------------------------------------------------------------- argument size


def test_argument_size_limit() -> None:
    policy = SecurityPolicy.permissive()
    policy.max_argument_size = 100
    result = policy.check(ExecuteCommand(command="echo", args=["x" * 200]))
    assert isinstance(result, Blocked)
    assert result.reason == "argument size 200 exceeds limit 100"


def test_argument_size_within_limit() -> None:
    policy = SecurityPolicy.permissive()
    policy.max_argument_size = 100
    result = policy.check(ExecuteCommand(command="echo", args=["hello"]))
    assert result.requires_approval()  # within the limit, but execution still asks
    assert level(result) is RiskLevel.HIGH


def test_argument_size_counts_utf8_bytes_across_all_args() -> None:
    policy = SecurityPolicy.permissive()
    policy.max_argument_size = 10
    assert policy.check(ExecuteCommand(command="echo", args=["12345", "12345"])).requires_approval()
    assert policy.check(ExecuteCommand(command="echo", args=["12345", "123456"])).is_blocked()
    assert policy.check(ExecuteCommand(command="echo", args=["ééééé", "é"])).is_blocked()


def test_zero_argument_size_means_no_limit() -> None:
    policy = SecurityPolicy.permissive()
    assert policy.check(ExecuteCommand(command="echo", args=["x" * 5_000_000])).requires_approval()


# ------------------------------------------------------------------------ always-ask actions


def test_financial_always_requires_approval() -> None:
    result = SecurityPolicy.permissive().check(
        FinancialTransaction(amount="100.00", recipient="merchant")
    )
    assert level(result) is RiskLevel.CRITICAL


def test_access_control_always_requires_approval() -> None:
    result = SecurityPolicy.permissive().check(
        AccessControlChange(resource="/var/data", change="chmod 777")
    )
    assert level(result) is RiskLevel.CRITICAL


def test_capability_grant_requires_approval() -> None:
    result = SecurityPolicy.permissive().check(
        CapabilityGrant(resource_pattern="mcp://server:*", permissions=[Permission.INVOKE])
    )
    assert level(result) is RiskLevel.HIGH


# --------------------------------------------------------------------------------- PolicyResult


def test_policy_result_display_and_predicates() -> None:
    assert str(PolicyAllowed()) == "allowed"
    blocked = Blocked("test")
    assert "blocked" in str(blocked)
    assert str(blocked) == "blocked: test"
    approval = RequiresApproval(RiskAssessment.new(RiskLevel.HIGH, "why"))
    assert str(approval) == "requires approval: [high] why"
    assert PolicyAllowed().is_allowed() and not PolicyAllowed().requires_approval()
    assert blocked.is_blocked() and not blocked.is_allowed()
    assert approval.requires_approval() and not approval.is_blocked()


# ------------------------------------------------------------------------------------ serde


def test_policy_serialization() -> None:
    policy = SecurityPolicy.default()
    restored = SecurityPolicy.model_validate_json(policy.model_dump_json())
    assert len(restored.blocked_tools) == len(policy.blocked_tools)
    assert restored.require_approval_for_delete
    assert restored.blocked_plugins == set()
    assert restored == policy


def test_policy_json_field_names() -> None:
    data = json.loads(SecurityPolicy.default().model_dump_json())
    assert set(data) == {
        "blocked_tools",
        "approval_required_tools",
        "allowed_paths",
        "denied_paths",
        "allowed_hosts",
        "denied_hosts",
        "max_argument_size",
        "require_approval_for_delete",
        "require_approval_for_network",
        "blocked_plugins",
    }
    assert sorted(data["blocked_tools"]) == sorted(SecurityPolicy.default().blocked_tools)


def test_plugin_policy_serialization() -> None:
    policy = SecurityPolicy.default()
    policy.blocked_plugins.add("bad-plugin")
    restored = SecurityPolicy.model_validate_json(policy.model_dump_json())
    assert "bad-plugin" in restored.blocked_plugins


def test_policy_json_missing_fields_take_defaults_and_unknown_are_ignored() -> None:
    policy = SecurityPolicy.model_validate_json('{"denied_hosts": ["evil.com"], "extra": 1}')
    assert policy.denied_hosts == ["evil.com"]
    assert policy.blocked_tools == SecurityPolicy.default().blocked_tools


def test_negative_argument_size_rejected() -> None:
    with pytest.raises(ValueError):
        SecurityPolicy.model_validate({"max_argument_size": -1})


# ------------------------------------------------------------------------------------- plugins


def test_blocked_plugin() -> None:
    policy = SecurityPolicy.permissive()
    policy.blocked_plugins.add("evil-plugin")
    actions: list[SensitiveAction] = [
        PluginExecution(plugin_id="evil-plugin", capability="anything"),
        PluginHttpRequest(plugin_id="evil-plugin", url="https://safe.com", method="GET"),
        PluginFileAccess(plugin_id="evil-plugin", path="/tmp/safe", mode=Permission.READ),
    ]
    for action in actions:
        result = policy.check(action)
        assert isinstance(result, Blocked)
        assert result.reason == "plugin 'evil-plugin' is blocked by policy"


def test_plugin_requires_approval() -> None:
    result = SecurityPolicy.permissive().check(
        PluginExecution(plugin_id="good-plugin", capability="config_read")
    )
    assert level(result) is RiskLevel.HIGH


def test_plugin_http_denied_host() -> None:
    policy = SecurityPolicy.permissive()
    policy.denied_hosts.append("evil.com")
    blocked = policy.check(
        PluginHttpRequest(plugin_id="weather", url="https://evil.com/api", method="GET")
    )
    assert isinstance(blocked, Blocked)
    assert "denied host 'evil.com'" in blocked.reason
    ok = policy.check(
        PluginHttpRequest(plugin_id="weather", url="https://safe.com/api", method="GET")
    )
    assert ok.requires_approval()


def test_plugin_http_host_cannot_hide_behind_a_colon_in_the_path() -> None:
    # Our fix: the original cut at the first ':' anywhere, giving host "evil.com/a".
    policy = SecurityPolicy.permissive()
    policy.denied_hosts.append("evil.com")
    for url in ("https://evil.com/a:b", "https://evil.com?x=a:b", "https://evil.com#a:b"):
        action = PluginHttpRequest(plugin_id="weather", url=url, method="GET")
        assert policy.check(action).is_blocked(), url


def test_plugin_http_ignores_allowed_hosts_and_network_flag() -> None:
    policy = SecurityPolicy.default()
    policy.allowed_hosts.append("only.example")
    action = PluginHttpRequest(plugin_id="p", url="https://other.example/", method="GET")
    assert level(policy.check(action)) is RiskLevel.HIGH


def test_plugin_file_denied_path() -> None:
    policy = SecurityPolicy.permissive()
    policy.denied_paths.append("/etc/**")
    blocked = PluginFileAccess(plugin_id="cache", path="/etc/passwd", mode=Permission.READ)
    assert policy.check(blocked).is_blocked()
    safe = PluginFileAccess(plugin_id="cache", path="/tmp/cache.json", mode=Permission.READ)
    assert policy.check(safe).requires_approval()


def test_plugin_file_traversal_blocked() -> None:
    # Our fix: "/tmp/../etc/passwd" never matches "/etc/**", so it must be blocked outright.
    policy = SecurityPolicy.default()
    action = PluginFileAccess(plugin_id="cache", path="/tmp/../etc/passwd", mode=Permission.READ)
    assert policy.check(action).is_blocked()


def test_every_plugin_action_requires_approval_even_when_permissive() -> None:
    policy = SecurityPolicy.permissive()
    actions: list[SensitiveAction] = [
        PluginExecution(plugin_id="p", capability="c"),
        PluginHttpRequest(plugin_id="p", url="https://x.com", method="POST"),
        PluginFileAccess(plugin_id="p", path="/tmp/x", mode=Permission.WRITE),
    ]
    for action in actions:
        assert level(policy.check(action)) is RiskLevel.HIGH


# ------------------------------------------------------------------------------ host extraction


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://example.com", "example.com"),
        ("https://example.com:8080", "example.com"),
        ("https://example.com/path", "example.com"),
        ("https://example.com:443/path", "example.com"),
        ("http://user:pass@example.com/path", "example.com"),
        ("not-a-url", None),
        ("", None),
        ("://", None),
        # Our additions: the authority ends at the first '/', '?' or '#'.
        ("https://example.com/a:b", "example.com"),
        ("https://example.com?q=1", "example.com"),
        ("https://example.com#frag", "example.com"),
        ("https://example.com/p?next=http://user@other.com", "example.com"),
        ("http://[::1]:8080/x", "[::1]"),
        ("https://user@/path", None),
    ],
)
def test_extract_host_from_url(url: str, host: str | None) -> None:
    assert extract_host_from_url(url) == host


# ---------------------------------------------------------------------------- resource strings


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        (McpToolCall(server="fs", tool="read"), ("mcp://fs:read", Permission.INVOKE)),
        (FileRead(path="/abs/f"), ("file:///abs/f", Permission.READ)),
        (FileDelete(path="/abs/f"), ("file:///abs/f", Permission.DELETE)),
        (FileWriteOutsideSandbox(path="rel/f"), ("file://rel/f", Permission.WRITE)),
        (ExecuteCommand(command="cargo", args=["build"]), ("exec://cargo", Permission.EXECUTE)),
        (NetworkRequest(host="h.com", port=443), ("net://h.com:443", Permission.INVOKE)),
        (PluginExecution(plugin_id="p", capability="c"), ("plugin://p:c", Permission.INVOKE)),
        (
            PluginHttpRequest(plugin_id="p", url="https://x", method="GET"),
            ("plugin://p:http_request", Permission.INVOKE),
        ),
        (
            PluginFileAccess(plugin_id="p", path="/x", mode=Permission.READ),
            ("plugin://p:file_read", Permission.INVOKE),
        ),
        (
            PluginFileAccess(plugin_id="p", path="/x", mode=Permission.WRITE),
            ("plugin://p:file_write", Permission.INVOKE),
        ),
        (
            PluginFileAccess(plugin_id="p", path="/x", mode=Permission.DELETE),
            ("plugin://p:file_delete", Permission.INVOKE),
        ),
        (PluginFileAccess(plugin_id="p", path="/x", mode=Permission.EXECUTE), None),
        (TransmitData(destination="d", data_type="t"), None),
        (FinancialTransaction(amount="1", recipient="r"), None),
        (AccessControlChange(resource="r", change="c"), None),
        (CapabilityGrant(resource_pattern="x", permissions=[]), None),
    ],
)
def test_action_resource(action: SensitiveAction, expected: tuple[str, Permission] | None) -> None:
    assert action_resource(action) == expected
