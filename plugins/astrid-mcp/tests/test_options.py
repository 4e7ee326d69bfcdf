"""``[mcp]`` validation: one transport per server, names the model can see, no secrets in TOML."""

from __future__ import annotations

from pathlib import Path

import pytest
from astrid.errors import ConfigError
from pydantic import ValidationError

from astrid_mcp import McpOptions
from astrid_mcp.toolset import McpToolset


def errors(data: dict[str, object]) -> str:
    with pytest.raises(ValidationError) as caught:
        McpOptions.model_validate(data)
    return str(caught.value)


def test_defaults_fail_closed() -> None:
    options = McpOptions.model_validate({"servers": {"notes": {"command": "notes-server"}}})
    server = options.servers["notes"]
    assert server.approval == "ask"
    assert (server.timeout_s, server.max_restarts, server.tools) == (60.0, 3, None)


def test_errors_name_the_server_and_key() -> None:
    text = errors({"servers": {"notes": {"command": "x", "timeout": 5}}})
    assert "servers.notes.timeout" in text and "Extra inputs are not permitted" in text
    text = errors({"servers": {"notes": {"command": "x", "approval": "always"}}})
    assert "servers.notes.approval" in text and "'ask', 'policy' or 'trusted'" in text
    text = errors({"servers": {"notes": {"command": "x", "timeout_s": 0}}})
    assert "servers.notes.timeout_s" in text


def test_exactly_one_transport() -> None:
    assert "exactly one of 'command'" in errors({"servers": {"n": {}}})
    assert "exactly one of 'command'" in errors(
        {"servers": {"n": {"command": "x", "url": "http://127.0.0.1:1/mcp"}}}
    )
    assert "apply to a stdio server" in errors(
        {"servers": {"n": {"url": "http://127.0.0.1:1/mcp", "args": ["-v"]}}}
    )
    assert "applies to an HTTP server" in errors(
        {"servers": {"n": {"command": "x", "headers_from_env": {"Authorization": "TOKEN"}}}}
    )
    assert "http:// or https://" in errors({"servers": {"n": {"url": "ftp://host/mcp"}}})


def test_server_names_keep_the_double_underscore_for_the_tool() -> None:
    assert "server name 'a__b'" in errors({"servers": {"a__b": {"command": "x"}}})
    assert "server name 'a:b'" in errors({"servers": {"a:b": {"command": "x"}}})


def test_header_values_come_from_the_environment_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    text = errors(
        {"servers": {"w": {"url": "http://127.0.0.1:1/mcp",
                           "headers_from_env": {"Authorization": "Bearer sk-123"}}}}
    )
    assert "never the value itself" in text
    monkeypatch.delenv("ASTRID_MCP_TEST_TOKEN", raising=False)
    options = McpOptions.model_validate(
        {"servers": {"w": {"url": "http://127.0.0.1:1/mcp",
                           "headers_from_env": {"Authorization": "ASTRID_MCP_TEST_TOKEN"}}}}
    )
    with pytest.raises(ConfigError, match=r"mcp.servers.w: environment variable "
                       r"ASTRID_MCP_TEST_TOKEN \(headers_from_env.Authorization\) is not set"):
        McpToolset(options, tmp_path)
    monkeypatch.setenv("ASTRID_MCP_TEST_TOKEN", "Bearer t0k")
    assert options.servers["w"].resolved_headers() == {"Authorization": "Bearer t0k"}


def test_env_from_copies_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASTRID_MCP_TEST_DB", "secret-dsn")
    options = McpOptions.model_validate(
        {"servers": {"n": {"command": "x", "env": {"MODE": "test"},
                           "env_from": {"DSN": "ASTRID_MCP_TEST_DB"}}}}
    )
    assert options.servers["n"].resolved_env() == {"MODE": "test", "DSN": "secret-dsn"}
