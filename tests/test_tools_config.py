"""``[tools]``: the registered tools offered to the model, and their options, chosen in TOML.

Real parts: a plugin registering a tool through the process-wide plugin manager, TOML files,
``open_runtime`` with the scripted provider (whose recorded requests are the tool definitions
the model was given), the SQLite store under a temporary ``ASTRID_HOME``, the CLI through
click's runner.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner
from pydantic import BaseModel, ConfigDict

from astrid.cli import cli
from astrid.config import DEFAULT_CONFIG_TEXT, load_config, parse_config
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.errors import ConfigError, PluginError
from astrid.hookspecs import hookimpl
from astrid.plugins import register_plugin, registry, unregister_plugin
from astrid.runtime import AgentRuntime, RuntimeConfig, TurnResult, open_runtime
from astrid.tools import BUILTIN_TOOLS, FunctionTool, ToolContext, enabled_tool_names


class ShoutOptions(BaseModel):
    """``[tools.options.shout]``."""

    model_config = ConfigDict(extra="forbid")
    suffix: str = "!"
    repeat: int = 1


class ShoutPlugin:
    """A third-party plugin registering one tool with options."""

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def factory(options: ShoutOptions, context: Any) -> FunctionTool:
            def shout(arguments: dict[str, Any], ctx: ToolContext) -> str:
                return (str(arguments.get("text", "")).upper() + options.suffix) * options.repeat

            return FunctionTool("shout", "Upper-case the text.", None, shout)

        register("shout", factory, ShoutOptions, "Shouts")


@pytest.fixture(autouse=True)
def shout_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    register_plugin(ShoutPlugin(), name="shout-plugin")
    try:
        yield
    finally:
        unregister_plugin("shout-plugin")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "notes.txt").write_text("buy milk and bread\n", encoding="utf-8")
    return ws


def config_file(tmp_path: Path, workspace: Path, script: list[Any], **tables: Any) -> Path:
    data: dict[str, Any] = {
        "llm": {"provider": "scripted", "options": {"script": script}},
        "runtime": {"workspace_root": str(workspace)},
        **tables,
    }
    path = tmp_path / "astrid.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def calls(*named: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"tool_call": {"id": f"c{i}", "name": name, "arguments": args}}
        for i, (name, args) in enumerate(named)
    ]


def one_turn(config: Path) -> tuple[list[str], TurnResult]:
    """The tool names the model was offered, and the turn's result."""

    async def scenario() -> tuple[list[str], TurnResult]:
        async with open_runtime(config) as runtime:
            result = await runtime.run_turn(runtime.create_session(), "go")
            provider = runtime.provider
            assert isinstance(provider, ScriptedProvider)
            return [d.name for d in provider.requests[0][1]], result

    return asyncio.run(scenario())


def config_error(tmp_path: Path, workspace: Path, **tables: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(config_file(tmp_path, workspace, [], **tables))
    return str(caught.value)


# -- the built-ins are the default ------------------------------------------------------------


def test_the_builtins_are_what_the_builtin_plugin_registers() -> None:
    builtins = [
        impl.name for impl in registry("tool").values()
        if impl.plugin == "astrid.default_plugins.builtin_tools"
    ]
    assert sorted(builtins) == sorted(BUILTIN_TOOLS)
    assert BUILTIN_TOOLS == ("read_file", "write_file", "list_directory", "task")
    assert enabled_tool_names(None, ["shout", "task", "read_file"]) == ["read_file", "task"]
    assert enabled_tool_names(["shout"], []) == ["shout"]


def test_an_installed_tool_that_is_not_enabled_is_never_shown_to_the_model(
    tmp_path: Path, workspace: Path
) -> None:
    script = [calls(("shout", {"text": "hey"})), [{"text": "done"}]]
    offered, result = one_turn(config_file(tmp_path, workspace, script))
    assert offered == list(BUILTIN_TOOLS)  # "shout" is installed, not enabled
    [record] = result.tool_calls
    assert record.result.is_error
    assert record.result.content == (
        "Unknown tool: shout (available tools: list_directory, read_file, task, write_file)"
    )


def test_enabled_tools_are_exactly_the_ones_offered_and_callable(
    tmp_path: Path, workspace: Path
) -> None:
    script = [
        calls(("shout", {"text": "hey"}), ("write_file", {"path": "x.txt", "content": "x"})),
        [{"text": "done"}],
    ]
    config = config_file(
        tmp_path, workspace, script, tools={"enabled": ["shout", "read_file"]}
    )
    offered, result = one_turn(config)
    assert offered == ["shout", "read_file"]
    shout, write = result.tool_calls
    assert not shout.result.is_error and shout.result.content == "HEY!"
    assert write.result.is_error and write.result.content.startswith("Unknown tool: write_file")
    assert not (workspace / "x.txt").exists()
    # no tool at all is a valid choice
    config = config_file(tmp_path, workspace, [[{"text": "hi"}]], tools={"enabled": []})
    assert one_turn(config)[0] == []


def test_a_host_runtime_defaults_to_the_builtins_and_refuses_an_unknown_name(
    workspace: Path,
) -> None:
    runtime = AgentRuntime(ScriptedProvider([]), config=RuntimeConfig(workspace=workspace))
    assert list(runtime.tools) == list(BUILTIN_TOOLS)
    with pytest.raises(PluginError) as caught:
        AgentRuntime(ScriptedProvider([]), config=RuntimeConfig(workspace=workspace),
                     enabled_tools=["read_file", "nope"])
    assert str(caught.value).startswith("unknown tool 'nope'; known tools: list_directory, ")


# -- errors -----------------------------------------------------------------------------------


def test_an_unknown_enabled_tool_is_one_line_naming_the_file_key_and_known_tools(
    tmp_path: Path, workspace: Path
) -> None:
    where = tmp_path / "astrid.toml"
    known = ", ".join(sorted(registry("tool")))
    assert "shout" in known and "read_file" in known
    assert config_error(tmp_path, workspace, tools={"enabled": ["read_file", "grep"]}) == (
        f"{where}: key 'tools.enabled': unknown tool 'grep'; known tools: {known}"
    )
    assert config_error(tmp_path, workspace, tools={"enabled": ["task", "task"]}) == (
        f"{where}: key 'tools.enabled': a tool is listed twice"
    )
    assert config_error(tmp_path, workspace, tools={"enabled": "read_file"}) == (
        f"{where}: key 'tools.enabled': Input should be a valid list"
    )
    assert config_error(tmp_path, workspace, tools={"colour": "red"}) == (
        f"{where}: unknown key 'tools.colour'; valid keys: enabled, options, toolsets"
    )
    result = CliRunner().invoke(cli, ["--config", str(where), "config", "validate"])
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        f"astrid: error: {where}: unknown key 'tools.colour'; valid keys: enabled, options, "
        "toolsets"
    ]


def test_a_tool_two_plugins_register_is_an_error_only_when_enabled(
    tmp_path: Path, workspace: Path
) -> None:
    register_plugin(ShoutPlugin(), name="another-shout-plugin")
    try:
        assert load_config(config_file(tmp_path, workspace, [])).config.tools.enabled is None
        assert config_error(tmp_path, workspace, tools={"enabled": ["shout"]}) == (
            f"{tmp_path / 'astrid.toml'}: key 'tools.enabled': tool 'shout' is registered by "
            "two plugins: 'another-shout-plugin' and 'shout-plugin'"
        )
    finally:
        unregister_plugin("another-shout-plugin")


def test_tool_options_are_validated_by_the_tools_own_model(
    tmp_path: Path, workspace: Path
) -> None:
    where = tmp_path / "astrid.toml"

    def options(**tables: Any) -> str:
        return config_error(tmp_path, workspace, tools={"options": tables})

    assert options(read_file={"max_bytes": "big"}) == (
        f"{where}: key 'tools.options.read_file.max_bytes': Input should be a valid integer, "
        "unable to parse string as an integer (options of tool 'read_file')"
    )
    assert options(read_file={"max_bytes": 0}) == (
        f"{where}: key 'tools.options.read_file.max_bytes': Input should be greater than or "
        "equal to 1 (options of tool 'read_file')"
    )
    assert options(shout={"repeat": True}) == (
        f"{where}: key 'tools.options.shout.repeat': expected a number or a string, not a "
        "boolean (options of tool 'shout')"
    )
    assert options(shout={"volume": 11}) == (
        f"{where}: unknown key 'tools.options.shout.volume'; valid keys: repeat, suffix "
        "(options of tool 'shout')"
    )
    assert options(grep={"x": 1}).startswith(
        f"{where}: key 'tools.options.grep': unknown tool 'grep'; known tools: "
    )
    assert options(task={"x": 1}) == (
        f"{where}: unknown key 'tools.options.task.x' (options of tool 'task')"
    )


def test_tool_options_reach_the_tool(tmp_path: Path, workspace: Path) -> None:
    script = [
        calls(("read_file", {"path": "notes.txt"}), ("shout", {"text": "hi"})),
        [{"text": "done"}],
    ]
    config = config_file(tmp_path, workspace, script, tools={
        "enabled": ["read_file", "shout"],
        "options": {"read_file": {"max_bytes": 8}, "shout": {"suffix": "?", "repeat": 2}},
    })

    async def scenario() -> TurnResult:
        from astrid.security.approvals import ApprovalResponse, Approve

        class Yes:
            async def request_approval(self, request: Any) -> ApprovalResponse:
                return ApprovalResponse.new(request.id, Approve())

            def is_available(self) -> bool:
                return True

        async with open_runtime(config, approval_handler=Yes()) as runtime:
            return await runtime.run_turn(runtime.create_session(), "go")

    read, shout = asyncio.run(scenario()).tool_calls
    assert read.result.is_error and read.result.content == (
        f"file too large: {workspace / 'notes.txt'} is 19 bytes (limit 8)"
    )
    assert shout.result.content == "HI?HI?"


# -- what the CLI shows -----------------------------------------------------------------------


def test_config_show_says_which_tools_are_on_and_where_that_came_from(
    tmp_path: Path, workspace: Path
) -> None:
    runner = CliRunner()
    config = config_file(tmp_path, workspace, [])
    shown = runner.invoke(cli, ["--config", str(config), "config", "show"])
    assert "tools on: read_file, write_file, list_directory, task" in shown.stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines() if line}
    assert rows["tools.enabled"] == ['["read_file","write_file","list_directory","task"]',
                                     "default"]
    assert rows["tools.options.read_file.max_bytes"] == ["1048576", "default"]

    config = config_file(tmp_path, workspace, [], tools={
        "enabled": ["shout"], "options": {"shout": {"repeat": 3}}
    })
    shown = runner.invoke(cli, ["--config", str(config), "config", "show"])
    assert shown.exit_code == 0, shown.output
    assert "tools on: shout" in shown.stdout.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in shown.stdout.splitlines() if line}
    assert rows["tools.enabled"] == ['["shout"]', str(config)]
    assert rows["tools.options.shout.repeat"] == ["3", str(config)]
    assert rows["tools.options.shout.suffix"] == ['"!"', "default"]
    assert "tools.options.read_file.max_bytes" not in rows  # read_file is off
    data = json.loads(runner.invoke(cli, ["--config", str(config), "config", "show",
                                          "--json"]).stdout)
    assert data["config"]["tools"] == {
        "enabled": ["shout"], "options": {"shout": {"suffix": "!", "repeat": 3}}, "toolsets": []
    }


def test_astrid_plugins_marks_the_tools_that_are_on(tmp_path: Path, workspace: Path) -> None:
    runner = CliRunner()

    def on(config: Path) -> dict[str, bool]:
        result = runner.invoke(cli, ["--config", str(config), "plugins", "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["config"] == str(config)
        return {i["name"]: i["on"] for i in data["implementations"]["tool"]}

    default = on(config_file(tmp_path, workspace, []))
    assert default["shout"] is False and all(default[name] for name in BUILTIN_TOOLS)
    chosen = on(config_file(tmp_path, workspace, [], tools={"enabled": ["shout", "task"]}))
    assert {name for name, is_on in chosen.items() if is_on} == {"shout", "task"}
    text = runner.invoke(cli, ["--config", str(tmp_path / "astrid.toml"), "plugins"]).stdout
    rows = {tuple(line.split()[:3]) for line in text.splitlines() if line.startswith("tool ")}
    assert ("tool", "shout", "on") in rows and ("tool", "write_file", "-") in rows

    # a configuration that does not load: still the list, the 'on' column unknown, a warning
    broken = config_file(tmp_path, workspace, [], tools={"enabled": ["grep"]})
    result = runner.invoke(cli, ["--config", str(broken), "plugins", "--json"])
    assert result.exit_code == 0
    assert "unknown tool 'grep'" in result.stderr
    data = json.loads(result.stdout)
    assert data["config"] is None
    assert {i["on"] for i in data["implementations"]["tool"]} == {None}


def test_the_default_config_file_documents_tools_and_still_parses() -> None:
    assert "[tools]" in DEFAULT_CONFIG_TEXT
    config = parse_config(tomllib.loads(DEFAULT_CONFIG_TEXT))
    assert config.tools.enabled is None and config.tools.options == {}
    assert config.toolsets_to_open() == []
