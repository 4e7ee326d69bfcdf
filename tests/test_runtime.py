"""The agent runtime: the original's tests, the integration behaviours and the issue's scenarios.

Every turn runs against the ``scripted`` provider and a real ``SessionStore``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
import pytest

from astrid import hookimpl, hookspecs
from astrid.context import ContextManager, LLMSummarizer, is_summary_message
from astrid.default_plugins import builtin_tools
from astrid.default_plugins.builtin_tools import (
    ListDirectoryTool,
    ReadFileTool,
    TaskTool,
    WriteFileTool,
)
from astrid.default_plugins.capability_stores import SqliteCapabilityBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import BudgetExceeded, PluginError
from astrid.messages import MessageRole, ToolCallResult
from astrid.money import money
from astrid.plugins import load_plugins, register_plugin, registry, unregister_plugin
from astrid.runtime import (
    AgentRuntime,
    LLMError,
    MaxIterationsExceeded,
    ModelPricing,
    RuntimeConfig,
    classify_tool_call,
    extract_paths_from_args,
    infer_operation,
    risk_level_for,
    tokens_to_usd,
    truncate_output,
)
from astrid.security.actions import (
    ExecuteCommand,
    FileRead,
    FileWriteOutsideSandbox,
    McpToolCall,
    Permission,
    RiskLevel,
)
from astrid.security.approvals import (
    ApprovalResponse,
    Approve,
    ApproveAlways,
    ApproveSession,
    Deny,
)
from astrid.security.budget import BudgetConfig
from astrid.security.deferred import ApprovalRequest
from astrid.security.escape import EscapeOperation
from astrid.security.interceptor import AuditLog, SessionApproval
from astrid.session import AgentSession
from astrid.store import SessionStore
from astrid.subagents import NO_TEXT_OUTPUT, SubAgentRequest, SubAgentResult
from astrid.tools import FunctionTool, Tool, ToolContext, ToolError

ROOT = Path(__file__).resolve().parent.parent

Script = list[list[dict[str, Any]]]


# -- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    load_plugins()
    yield
    load_plugins()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("remember the milk\n")
    return ws


@pytest.fixture
def store() -> SessionStore:
    return SessionStore(MemoryBackend())


class Handler:
    """A host approval handler that answers every request with one decision."""

    def __init__(self, decision: Any) -> None:
        self.decision = decision
        self.requests: list[ApprovalRequest] = []

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        self.requests.append(request)
        return ApprovalResponse.new(request.id, self.decision)

    def is_available(self) -> bool:
        return True


def text(t: str, tokens: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    turn: list[dict[str, Any]] = [{"text": t}]
    if tokens is not None:
        turn.append({"usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]}})
    return turn


def call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"tool_call": {"id": call_id, "name": name, "arguments": arguments}}


def echo_tool() -> FunctionTool:
    return FunctionTool(
        "echo",
        "Echo the text back.",
        {"type": "object", "properties": {"text": {"type": "string"}}},
        lambda args, ctx: f"echo: {args.get('text', '')}",
    )


def make_runtime(
    script: Script,
    store: SessionStore | None,
    workspace: Path,
    *,
    tools: list[Tool] | None = None,
    handler: Handler | None = None,
    **config: Any,
) -> tuple[AgentRuntime, ScriptedProvider]:
    provider = ScriptedProvider(script)
    runtime = AgentRuntime(
        provider,
        store=store,
        config=RuntimeConfig(workspace=workspace, **config),
        tools=tools,
        approval_handler=handler,
    )
    return runtime, provider


def tool_results(session: AgentSession) -> list[ToolCallResult]:
    out = []
    for message in session.messages:
        result = message.tool_result_content()
        if result is not None:
            out.append(result)
    return out


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- the original's helper tests (runtime/tests.rs #44-49) ----------------------------------


def test_extract_paths_finds_path_key() -> None:
    args = {"path": "/home/user/file.txt", "content": "hello", "count": 42}
    assert extract_paths_from_args(args) == ["/home/user/file.txt"]


def test_extract_paths_ignores_non_paths_and_urls() -> None:
    assert extract_paths_from_args({"path": "not-a-path", "url": "https://example.com"}) == []


def test_extract_paths_strips_file_uri() -> None:
    assert extract_paths_from_args({"uri": "file:///tmp/test.txt"}) == ["/tmp/test.txt"]


def test_extract_paths_relative_forms() -> None:
    paths = extract_paths_from_args({"file": "./src/main.rs", "dir": "../other"})
    assert sorted(paths) == ["../other", "./src/main.rs"]


def test_infer_operation() -> None:
    assert infer_operation("read_file") is EscapeOperation.READ
    assert infer_operation("write_file") is EscapeOperation.WRITE
    assert infer_operation("create_directory") is EscapeOperation.CREATE
    assert infer_operation("delete_file") is EscapeOperation.DELETE
    assert infer_operation("execute_command") is EscapeOperation.EXECUTE
    assert infer_operation("list_files") is EscapeOperation.LIST
    assert infer_operation("unknown_tool") is EscapeOperation.READ


def test_risk_level_for_operation() -> None:
    assert risk_level_for(EscapeOperation.READ) is RiskLevel.MEDIUM
    assert risk_level_for(EscapeOperation.LIST) is RiskLevel.MEDIUM
    assert risk_level_for(EscapeOperation.WRITE) is RiskLevel.HIGH
    assert risk_level_for(EscapeOperation.CREATE) is RiskLevel.HIGH
    assert risk_level_for(EscapeOperation.DELETE) is RiskLevel.CRITICAL
    assert risk_level_for(EscapeOperation.EXECUTE) is RiskLevel.CRITICAL


# -- our helpers ----------------------------------------------------------------------------


def test_classify_tool_call_builtin_rules() -> None:
    assert classify_tool_call("bash", {"command": "ls"}) == ExecuteCommand(command="ls")
    assert classify_tool_call("bash", {}) == ExecuteCommand(command="bash")
    assert classify_tool_call("write_file", {"path": "a"}) == FileWriteOutsideSandbox(path="a")
    assert classify_tool_call("edit_file", {}) == FileWriteOutsideSandbox(path="unknown")
    assert classify_tool_call("read_file", {"file_path": "b"}) == FileRead(path="b")
    assert classify_tool_call("grep", {"pattern": "*.py"}) == FileRead(path="*.py")
    assert classify_tool_call("list_directory", {}) == FileRead(path=".")
    assert classify_tool_call("task", {}) == McpToolCall(server="builtin", tool="task")
    resolved = classify_tool_call("read_file", {"path": "x"}, lambda p: "/abs/" + p)
    assert resolved == FileRead(path="/abs/x")


def test_truncate_output_cuts_on_characters_with_notice() -> None:
    assert truncate_output("short", 10) == "short"
    cut = truncate_output("é" * 20, 9)
    assert cut.startswith("éééé\n\n[output truncated: 40 bytes")


def test_costs() -> None:
    assert tokens_to_usd(1000, 1000) == pytest.approx(0.018)
    config = RuntimeConfig(workspace="/tmp", pricing={"cheap": ModelPricing(
        input_per_million=1.0, output_per_million=2.0)})
    assert config.cost_usd("cheap", 1_000_000, 1_000_000) == pytest.approx(3.0)
    assert config.cost_usd("other", 1_000_000, 0) == pytest.approx(3.0)
    assert str(config.workspace.root) == "/tmp"
    with pytest.raises(ValueError):
        ModelPricing(input_per_million=float("nan"))
    with pytest.raises(ValueError):
        RuntimeConfig(max_iterations=0)


# -- integration behaviours -----------------------------------------------------------------


def test_text_only_turn_leaves_two_messages_and_is_saved(
    store: SessionStore, workspace: Path
) -> None:
    runtime, _ = make_runtime([text("Hi there!", (10, 5))], store, workspace)
    session = runtime.create_session("You are terse.")
    result = run(runtime.run_turn(session, "Hello"))
    assert result.text == "Hi there!"
    assert result.iterations == 1 and result.tool_calls == []
    assert result.usage.input_tokens == 10 and result.usage.output_tokens == 5
    assert result.cost_usd == pytest.approx(tokens_to_usd(10, 5))
    assert [m.role for m in session.messages] == [MessageRole.USER, MessageRole.ASSISTANT]
    assert session.metadata.turn_count == 1
    assert session.budget_tracker.spent() == pytest.approx(result.cost_usd)
    loaded = store.load(session.id)
    assert loaded is not None
    assert loaded.system_prompt == "You are terse."
    assert len(loaded.messages) == 2
    assert loaded.token_count > 0
    assert loaded.created_at == session.created_at


def test_sqlite_store_round_trip(tmp_path: Path, workspace: Path) -> None:
    sqlite_store = SessionStore(SqliteBackend(tmp_path / "s.db"))
    runtime, _ = make_runtime([text("one"), text("two")], sqlite_store, workspace)
    session = runtime.create_session("prompt")
    run(runtime.run_turn(session, "a"))
    run(runtime.run_turn(session, "b"))
    loaded = sqlite_store.load(session.id)
    assert loaded is not None and [m.text() for m in loaded.messages] == ["a", "one", "b", "two"]
    sqlite_store.close()


def test_tool_turn_has_four_messages_with_text_last(store: SessionStore, workspace: Path) -> None:
    script = [
        [call("c1", "echo", {"text": "ping"})],
        text("The tool said ping."),
    ]
    runtime, provider = make_runtime(script, store, workspace, tools=[echo_tool()])
    session = runtime.create_session()
    result = run(runtime.run_turn(session, "use the tool"))
    assert len(session.messages) >= 4
    assert session.messages[-1].role == MessageRole.ASSISTANT
    assert session.messages[-1].text() == "The tool said ping."
    assert [r.content for r in tool_results(session)] == ["echo: ping"]
    assert result.iterations == 2
    assert [r.call.name for r in result.tool_calls] == ["echo"]
    assert session.metadata.tool_call_count == 1
    assert provider.requests[0][1][0].name == "echo"


def test_two_tool_calls_give_two_tool_messages(store: SessionStore, workspace: Path) -> None:
    script = [
        [call("c1", "echo", {"text": "a"}), call("c2", "echo", {"text": "b"})],
        text("done"),
    ]
    runtime, _ = make_runtime(script, store, workspace, tools=[echo_tool()])
    session = runtime.create_session()
    run(runtime.run_turn(session, "twice"))
    tool_messages = [m for m in session.messages if m.role == MessageRole.TOOL]
    assert len(tool_messages) == 2
    assert [r.content for r in tool_results(session)] == ["echo: a", "echo: b"]
    assert session.metadata.tool_call_count == 2


def test_interleaved_argument_deltas_are_kept_per_call(
    store: SessionStore, workspace: Path
) -> None:
    calls = [
        {"id": "x", "name": "echo", "arguments": {"text": "first " * 5}},
        {"id": "y", "name": "echo", "arguments": {"text": "second " * 5}},
    ]
    script = [[{"parallel_tool_calls": calls}], text("ok")]
    runtime, _ = make_runtime(script, store, workspace, tools=[echo_tool()])
    session = runtime.create_session()
    run(runtime.run_turn(session, "go"))
    assert [r.content for r in tool_results(session)] == [
        "echo: " + "first " * 5,
        "echo: " + "second " * 5,
    ]


def test_stream_error_propagates_and_the_transcript_is_saved(
    store: SessionStore, workspace: Path
) -> None:
    runtime, _ = make_runtime([[{"text": "par"}, {"error": "overloaded"}]], store, workspace)
    session = runtime.create_session()
    with pytest.raises(LLMError, match="overloaded"):
        run(runtime.run_turn(session, "hello"))
    loaded = store.load(session.id)
    assert loaded is not None and [m.text() for m in loaded.messages] == ["hello"]
    # output ("par") arrived before the error: the call was billed, so it costs its reservation
    assert session.budget_tracker.spent() > 0.0
    assert loaded.budget_tracker.spent() == session.budget_tracker.spent()


def test_exhausted_script_is_an_llm_error(store: SessionStore, workspace: Path) -> None:
    runtime, _ = make_runtime([], store, workspace)
    with pytest.raises(LLMError, match="exhausted"):
        run(runtime.run_turn(runtime.create_session(), "hello"))


def test_unknown_tool_is_an_error_result_and_the_turn_succeeds(
    store: SessionStore, workspace: Path
) -> None:
    script = [[call("c1", "nope", {})], text("sorry")]
    runtime, _ = make_runtime(script, store, workspace, tools=[echo_tool()])
    session = runtime.create_session()
    result = run(runtime.run_turn(session, "go"))
    assert result.text == "sorry"
    [res] = tool_results(session)
    assert res.is_error and "Unknown tool: nope" in res.content and "echo" in res.content


@pytest.mark.parametrize(
    "raw, expected",
    [("{not json", "invalid JSON"), ("[1, 2]", "must be a JSON object")],
)
def test_bad_arguments_are_an_error_result(
    store: SessionStore, workspace: Path, raw: str, expected: str
) -> None:
    ran: list[Any] = []

    def record(args: dict[str, Any], ctx: ToolContext) -> str:
        ran.append(args)
        return "ran"

    tool = FunctionTool("echo", "", None, record)
    script = [[call("c1", "echo", raw)], text("fine")]
    runtime, _ = make_runtime(script, store, workspace, tools=[tool])
    session = runtime.create_session()
    result = run(runtime.run_turn(session, "go"))
    [res] = tool_results(session)
    assert res.is_error and expected in res.content and "echo" in res.content
    assert ran == []
    assert result.text == "fine"


def test_text_that_comes_with_tool_calls_is_kept(store: SessionStore, workspace: Path) -> None:
    script = [
        [{"text": "Let me check that."}, call("c1", "echo", {"text": "x"})],
        text("Checked."),
    ]
    runtime, _ = make_runtime(script, store, workspace, tools=[echo_tool()])
    session = runtime.create_session()
    run(runtime.run_turn(session, "check"))
    roles = [(m.role, m.text() is not None) for m in session.messages]
    assert roles == [
        (MessageRole.USER, True),
        (MessageRole.ASSISTANT, True),
        (MessageRole.ASSISTANT, False),
        (MessageRole.TOOL, False),
        (MessageRole.ASSISTANT, True),
    ]
    assert session.messages[1].text() == "Let me check that."


def test_tool_failures_become_error_results_and_output_is_truncated(
    store: SessionStore, workspace: Path
) -> None:
    def boom(args: dict[str, Any], ctx: ToolContext) -> str:
        raise ToolError("disk on fire")

    def crash(args: dict[str, Any], ctx: ToolContext) -> str:
        raise KeyError("missing")

    async def big(args: dict[str, Any], ctx: ToolContext) -> str:
        return "x" * 40_000

    tools: list[Tool] = [
        FunctionTool("boom", "", None, boom),
        FunctionTool("crash", "", None, crash),
        FunctionTool("big", "", None, big),
    ]
    script = [[call("1", "boom", {}), call("2", "crash", {}), call("3", "big", {})], text("ok")]
    runtime, _ = make_runtime(script, store, workspace, tools=tools)
    session = runtime.create_session()
    run(runtime.run_turn(session, "go"))
    boom_result, crash_result, big_result = tool_results(session)
    assert boom_result.is_error and boom_result.content == "disk on fire"
    assert crash_result.is_error and "KeyError" in crash_result.content
    assert not big_result.is_error
    assert big_result.content.startswith("x" * 30_000)
    assert "[output truncated: 40000 bytes" in big_result.content


def test_iteration_cap(store: SessionStore, workspace: Path) -> None:
    script = [[call(f"c{i}", "echo", {"text": str(i)})] for i in range(5)]
    runtime, provider = make_runtime(
        script, store, workspace, tools=[echo_tool()], max_iterations=3
    )
    session = runtime.create_session()
    with pytest.raises(MaxIterationsExceeded, match="3") as info:
        run(runtime.run_turn(session, "loop forever"))
    assert info.value.max_iterations == 3
    assert provider.turns_used == 3
    assert len(tool_results(session)) == 3
    loaded = store.load(session.id)
    assert loaded is not None and len(loaded.messages) == 7


def test_every_tool_call_gets_a_result_when_the_turn_is_cancelled(
    store: SessionStore, workspace: Path
) -> None:
    started = asyncio.Event()

    async def slow(args: dict[str, Any], ctx: ToolContext) -> str:
        started.set()
        await asyncio.sleep(30)
        return "never"

    tools: list[Tool] = [FunctionTool("slow", "", None, slow), echo_tool()]
    script = [[call("a", "slow", {}), call("b", "echo", {"text": "x"})], text("unused")]
    runtime, _ = make_runtime(script, store, workspace, tools=tools)
    session = runtime.create_session()

    async def scenario() -> None:
        task = asyncio.create_task(runtime.run_turn(session, "go"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(scenario())
    results = tool_results(session)
    assert [r.call_id for r in results] == ["a", "b"]
    assert all(r.is_error and "aborted (cancelled)" in r.content for r in results)
    loaded = store.load(session.id)
    assert loaded is not None and len(loaded.messages) == 4


# -- hooks ----------------------------------------------------------------------------------


class Gatekeeper:
    """A plugin that blocks ``echo`` and records what ran."""

    def __init__(self) -> None:
        self.after: list[tuple[str, str, bool]] = []

    @hookimpl
    def pre_tool_call(self, session: Any, tool_name: str, arguments: Any) -> str | None:
        if tool_name == "echo":
            return f"echo is disabled for session {session.id.bare[:8]}"
        return None

    @hookimpl
    def post_tool_call(
        self, session: Any, tool_name: str, arguments: Any, result: str, is_error: bool
    ) -> None:
        self.after.append((tool_name, result, is_error))


def test_pre_tool_call_plugin_blocks_with_a_reason(store: SessionStore, workspace: Path) -> None:
    pm = pluggy.PluginManager("astrid")
    pm.add_hookspecs(hookspecs)
    gate = Gatekeeper()
    pm.register(gate, name="gatekeeper")
    shout = FunctionTool("shout", "", None, lambda args, ctx: "HEY")
    script = [[call("1", "echo", {"text": "x"}), call("2", "shout", {})], text("ok")]
    runtime = AgentRuntime(
        ScriptedProvider(script),
        store=store,
        config=RuntimeConfig(workspace=workspace),
        tools=[echo_tool(), shout],
        plugin_manager=pm,
    )
    session = runtime.create_session()
    run(runtime.run_turn(session, "go"))
    blocked, allowed = tool_results(session)
    assert blocked.is_error and "echo is disabled" in blocked.content
    assert not allowed.is_error and allowed.content == "HEY"
    assert gate.after == [("shout", "HEY", False)]


def test_tools_come_from_the_given_plugin_manager(store: SessionStore, workspace: Path) -> None:
    pm = pluggy.PluginManager("astrid")
    pm.add_hookspecs(hookspecs)
    pm.register(builtin_tools)
    runtime = AgentRuntime(
        ScriptedProvider([]), store=store, config=RuntimeConfig(workspace=workspace),
        plugin_manager=pm,
    )
    assert sorted(runtime.tools) == ["list_directory", "read_file", "task", "write_file"]


class ShoutPlugin:
    """A third-party plugin that registers a tool."""

    @hookimpl
    def register_tools(self, register: Any) -> None:
        register(
            "shout",
            lambda options, context: FunctionTool(
                "shout", "Upper-case the text.", None, lambda a, c: str(a.get("text", "")).upper()
            ),
        )


def test_plugin_registered_tools_reach_the_model(store: SessionStore, workspace: Path) -> None:
    register_plugin(ShoutPlugin(), name="shout-plugin")
    try:
        script = [[call("1", "shout", {"text": "hey"})], text("done")]
        provider = ScriptedProvider(script)
        off = AgentRuntime(provider, store=store, config=RuntimeConfig(workspace=workspace))
        assert "shout" not in off.tools  # installed is not enabled: the built-ins by default
        runtime = AgentRuntime(
            provider, store=store, config=RuntimeConfig(workspace=workspace),
            enabled_tools=["read_file", "shout"],
        )
        assert sorted(runtime.tools) == ["read_file", "shout"]
        session = runtime.create_session()
        run(runtime.run_turn(session, "shout"))
        assert [r.content for r in tool_results(session)] == ["HEY"]
        assert "shout" in [d.name for d in provider.requests[0][1]]
    finally:
        unregister_plugin("shout-plugin")


class BrokenToolPlugin:
    @hookimpl
    def register_tools(self, register: Any) -> None:
        register("broken", lambda options, context: object())


def test_a_plugin_tool_that_is_not_a_tool_is_a_clear_error(workspace: Path) -> None:
    pm = pluggy.PluginManager("astrid")
    pm.add_hookspecs(hookspecs)
    pm.register(BrokenToolPlugin())
    with pytest.raises(PluginError, match=r"'broken'.*is not a Tool"):
        AgentRuntime(ScriptedProvider([]), config=RuntimeConfig(workspace=workspace),
                     enabled_tools=["broken"],
                     plugin_manager=pm)


def test_builtin_tools_are_registered() -> None:
    tools = registry("tool")
    assert {"read_file", "write_file", "list_directory", "task"} <= set(tools)
    assert tools["task"].plugin == "astrid.default_plugins.builtin_tools"
    runtime = AgentRuntime(ScriptedProvider([]), config=RuntimeConfig(workspace="/tmp"))
    names = [d.name for d in runtime.tool_definitions()]
    assert {"read_file", "write_file", "list_directory", "task"} <= set(names)
    with pytest.raises(ValueError, match="two tools"):
        AgentRuntime(ScriptedProvider([]), tools=[echo_tool(), echo_tool()])
    runtime.add_tool(echo_tool())
    assert "echo" in runtime.tools
    with pytest.raises(ValueError, match="already has a tool"):
        runtime.add_tool(echo_tool())


# -- built-in tools -------------------------------------------------------------------------


def test_builtin_file_tools(workspace: Path) -> None:
    ctx = ToolContext(session=AgentSession(), workspace_root=workspace)

    async def scenario() -> None:
        assert await ReadFileTool().run({"path": "notes.txt"}, ctx) == "remember the milk\n"
        written = await WriteFileTool().run({"path": "sub/new.txt", "content": "héllo"}, ctx)
        assert written.startswith("Wrote 6 bytes")
        assert (workspace / "sub" / "new.txt").read_text() == "héllo"
        listing = await ListDirectoryTool().run({}, ctx)
        assert listing.splitlines() == ["notes.txt", "sub/"]
        with pytest.raises(ToolError, match="not a file"):
            await ReadFileTool().run({"path": "sub"}, ctx)
        with pytest.raises(ToolError, match="missing required argument 'path'"):
            await ReadFileTool().run({}, ctx)
        with pytest.raises(ToolError, match="must be a string"):
            await WriteFileTool().run({"path": "a", "content": 3}, ctx)
        (workspace / "bin.dat").write_bytes(b"\xff\xfe")
        with pytest.raises(ToolError, match="not UTF-8"):
            await ReadFileTool().run({"path": "bin.dat"}, ctx)

    run(scenario())


class FakeSpawner:
    def __init__(self, result: SubAgentResult) -> None:
        self.result = result
        self.requests: list[SubAgentRequest] = []

    async def spawn(self, request: SubAgentRequest) -> SubAgentResult:
        self.requests.append(request)
        return self.result


def test_task_tool_reports_partial_output_and_caps_timeout() -> None:
    session = AgentSession()
    failed = FakeSpawner(SubAgentResult(success=False, output="half done", error="boom"))
    ctx = ToolContext(session=session, workspace_root=Path("/tmp"), spawner=failed)  # type: ignore[arg-type]
    args = {"description": "d", "prompt": "p", "timeout_secs": 99_999}
    with pytest.raises(ToolError) as info:
        run(TaskTool().run(args, ctx))
    assert str(info.value).startswith("Sub-agent failed: boom")
    assert "half done" in str(info.value)
    assert failed.requests[0].timeout == 3000

    no_text = FakeSpawner(SubAgentResult(success=False, output=NO_TEXT_OUTPUT, error="x"))
    ctx.spawner = no_text  # type: ignore[assignment]
    with pytest.raises(ToolError) as info:
        run(TaskTool().run({"description": "d", "prompt": "p"}, ctx))
    assert str(info.value) == "Sub-agent failed: x"

    ok = FakeSpawner(SubAgentResult(success=True, output="the answer"))
    ctx.spawner = ok  # type: ignore[assignment]
    assert run(TaskTool().run({"description": "d", "prompt": "p"}, ctx)) == "the answer"
    with pytest.raises(ToolError, match="positive"):
        run(TaskTool().run({"description": "d", "prompt": "p", "timeout_secs": -1}, ctx))
    ctx.spawner = None
    with pytest.raises(ToolError, match="not available"):
        run(TaskTool().run({"description": "d", "prompt": "p"}, ctx))


# -- approvals ------------------------------------------------------------------------------


def read_script(turns: int) -> Script:
    script: Script = []
    for i in range(turns):
        script.append([call(f"r{i}", "read_file", {"path": "notes.txt"})])
        script.append(text(f"read {i}"))
    return script


def two_reads(
    store: SessionStore, workspace: Path, handler: Handler | None
) -> tuple[AgentRuntime, AgentSession, list[ToolCallResult]]:
    runtime, _ = make_runtime(read_script(2), store, workspace, handler=handler)
    session = runtime.create_session()
    run(runtime.run_turn(session, "read it"))
    run(runtime.run_turn(session, "read it again"))
    return runtime, session, tool_results(session)


def test_approval_once_asks_every_time(store: SessionStore, workspace: Path) -> None:
    handler = Handler(Approve())
    _, session, results = two_reads(store, workspace, handler)
    assert [r.content for r in results] == ["remember the milk\n"] * 2
    assert len(handler.requests) == 2
    request = handler.requests[0]
    assert isinstance(request.action, FileRead)
    assert request.action.path == str((workspace / "notes.txt").resolve())
    assert session.metadata.approval_count == 2


def test_approval_for_the_session_asks_once(store: SessionStore, workspace: Path) -> None:
    handler = Handler(ApproveSession())
    _, session, results = two_reads(store, workspace, handler)
    assert all(not r.is_error for r in results)
    assert len(handler.requests) == 1
    assert session.metadata.approval_count == 1
    loaded = store.load(session.id)
    assert loaded is not None and loaded.metadata.approval_count == 1


def test_approval_always_mints_a_capability(store: SessionStore, workspace: Path) -> None:
    handler = Handler(ApproveAlways())
    _, session, results = two_reads(store, workspace, handler)
    assert all(not r.is_error for r in results)
    assert len(handler.requests) == 1
    target = f"file://{(workspace / 'notes.txt').resolve()}"
    assert session.capabilities.has_capability(target, Permission.READ)


def test_approval_denied_is_an_error_result(store: SessionStore, workspace: Path) -> None:
    handler = Handler(Deny(reason="not today"))
    _, _, results = two_reads(store, workspace, handler)
    assert all(r.is_error and "not today" in r.content for r in results)
    assert len(handler.requests) == 2


def test_no_handler_defers(store: SessionStore, workspace: Path) -> None:
    _, session, results = two_reads(store, workspace, None)
    assert all(r.is_error and "deferred" in r.content for r in results)
    assert len(session.approval_manager.get_pending_resolutions()) == 2


def test_policy_allowed_tools_need_no_approval(store: SessionStore, workspace: Path) -> None:
    handler = Handler(Deny(reason="should not be asked"))
    audit = AuditLog()
    runtime = AgentRuntime(
        ScriptedProvider([[call("1", "echo", {"text": "x"})], text("ok")]),
        store=store,
        config=RuntimeConfig(workspace=workspace),
        tools=[echo_tool()],
        approval_handler=handler,
        audit=audit,
    )
    session = runtime.create_session()
    run(runtime.run_turn(session, "go"))
    assert handler.requests == []
    assert [r.content for r in tool_results(session)] == ["echo: x"]
    assert len(audit.session_entries(session.id)) == 1


def test_blocked_tool_and_custom_classification(store: SessionStore, workspace: Path) -> None:
    sudo = FunctionTool(
        "admin",
        "",
        None,
        lambda args, ctx: "rooted",
        classify=lambda args, ctx: ExecuteCommand(command="sudo", args=["ls"]),
    )
    handler = Handler(Approve())
    script = [[call("1", "admin", {})], text("ok")]
    runtime, _ = make_runtime(script, store, workspace, tools=[sudo], handler=handler)
    session = runtime.create_session()
    run(runtime.run_turn(session, "go"))
    [res] = tool_results(session)
    assert res.is_error and "blocked by policy" in res.content
    assert handler.requests == []


# -- workspace boundary ---------------------------------------------------------------------


def test_protected_paths_are_refused_without_asking(store: SessionStore, workspace: Path) -> None:
    handler = Handler(Approve())
    script = [[call("1", "read_file", {"path": "/etc/passwd"})], text("ok")]
    runtime, _ = make_runtime(script, store, workspace, handler=handler)
    session = runtime.create_session()
    run(runtime.run_turn(session, "go"))
    [res] = tool_results(session)
    assert res.is_error and "protected system path" in res.content
    assert handler.requests == []


def test_a_workspace_under_a_never_allowed_path_is_named_in_one_warning(
    store: SessionStore, workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from astrid.security.escape import WorkspaceConfig

    script = [[call("1", "read_file", {"path": "notes.txt"})], text("ok")] * 2
    config = WorkspaceConfig.new(workspace).never_allow(workspace.parent)
    runtime = AgentRuntime(
        ScriptedProvider(script), store=store, config=RuntimeConfig(workspace=config)
    )
    session = runtime.create_session()
    with caplog.at_level(logging.WARNING, logger="astrid.runtime"):
        run(runtime.run_turn(session, "read it"))
        run(runtime.run_turn(session, "again"))
    assert all(r.is_error and "protected" in r.content for r in tool_results(session))
    [warning] = [r.getMessage() for r in caplog.records if "never-allowed" in r.getMessage()]
    assert warning.startswith(f"workspace {workspace} lies under a never-allowed path")
    caplog.clear()
    fine, _ = make_runtime([[call("1", "read_file", {"path": "notes.txt"})], text("ok")],
                           store, workspace)
    with caplog.at_level(logging.WARNING, logger="astrid.runtime"):
        run(fine.run_turn(fine.create_session(), "read it"))
    assert not [r for r in caplog.records if "never-allowed" in r.getMessage()]


def test_outside_workspace_read_asks_once_through_the_approval_manager(
    store: SessionStore, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret plans")
    handler = Handler(ApproveSession())
    script = [
        [call("1", "read_file", {"path": "../outside.txt"})],
        text("ok"),
        [call("2", "read_file", {"path": str(outside)})],
        text("ok again"),
    ]
    runtime, _ = make_runtime(script, store, workspace, handler=handler)
    session = runtime.create_session()
    run(runtime.run_turn(session, "peek"))
    run(runtime.run_turn(session, "peek again"))
    assert [r.content for r in tool_results(session)] == ["secret plans"] * 2
    assert len(handler.requests) == 1
    assert str(outside.resolve()) in session.escape_handler.session_paths


def test_host_tool_escaping_the_workspace_needs_approval(
    store: SessionStore, workspace: Path, tmp_path: Path
) -> None:
    seen: list[str] = []

    def count(args: dict[str, Any], ctx: ToolContext) -> str:
        seen.append(args["path"])
        return "3 lines"

    counter = FunctionTool("count_lines", "", None, count)
    script = [[call("1", "count_lines", {"path": str(tmp_path / "elsewhere.txt")})], text("ok")]
    handler = Handler(Deny(reason="stay home"))
    runtime, _ = make_runtime(script, store, workspace, tools=[counter], handler=handler)
    session = runtime.create_session()
    run(runtime.run_turn(session, "count"))
    [res] = tool_results(session)
    assert res.is_error and "outside workspace" in res.content and "stay home" in res.content
    assert seen == []
    [request] = handler.requests
    assert isinstance(request.action, FileRead)
    assert "Workspace escape" in request.context


# -- budgets --------------------------------------------------------------------------------


def test_budget_runs_out_mid_conversation(workspace: Path) -> None:
    limit = 0.05
    budget_store = SessionStore(
        MemoryBackend(), budget=BudgetConfig(session_max_usd=limit, per_action_max_usd=1.0)
    )
    real_cost = tokens_to_usd(1000, 500)
    script = [text(f"answer {i}", (1000, 500)) for i in range(10)]
    runtime, provider = make_runtime(script, budget_store, workspace)
    session = runtime.create_session()
    results = [run(runtime.run_turn(session, f"question {i}")) for i in range(4)]
    assert [r.cost_usd for r in results] == [pytest.approx(real_cost)] * 4
    assert results[2].warnings == []
    assert results[3].warnings and results[3].warnings[0].percent_used >= 80
    spent_before = session.budget_tracker.spent()
    with pytest.raises(BudgetExceeded) as info:
        run(runtime.run_turn(session, "question 4"))
    message = str(info.value)
    assert f"session spend {money(spent_before)}" in message
    assert f"{money(limit)} limit" in message
    # the estimate counts the request (messages, system prompt, tool definitions) + output
    assert re.search(r"needs an estimated \$0\.01\d* \(\d+ input \+ 1024 output tokens\)", message)
    assert provider.turns_used == 4
    spent = session.budget_tracker.spent()
    assert spent == pytest.approx(spent_before)
    assert spent <= limit + real_cost
    loaded = budget_store.load(session.id)
    assert loaded is not None and len(loaded.messages) == 9
    assert loaded.messages[-1].text() == "question 4"
    assert loaded.budget_tracker.spent() == pytest.approx(spent)


def test_workspace_budget_is_enforced_and_named(store: SessionStore, workspace: Path) -> None:
    runtime, _ = make_runtime([text("hi", (10, 10))], store, workspace)
    session = runtime.create_session()
    store.attach_workspace(session, workspace, max_usd=0.01)
    with pytest.raises(BudgetExceeded, match=r"workspace spend \$0\.00 of a \$0\.01 limit"):
        run(runtime.run_turn(session, "hello"))
    assert session.workspace_budget_tracker is not None
    assert session.workspace_budget_tracker.spent() == 0.0


def test_no_usage_is_charged_the_reservation(store: SessionStore, workspace: Path) -> None:
    # a call without usage used to be free (its reservation released); now it costs the estimate
    runtime, _ = make_runtime([text("not free")], store, workspace)
    session = runtime.create_session()
    result = run(runtime.run_turn(session, "hello"))
    assert result.cost_usd > 0.0
    assert session.budget_tracker.spent() == pytest.approx(result.cost_usd)
    notice = "usage not reported by scripted; charged the reservation"
    assert any(notice in n for n in result.notices)


def test_pricing_per_model(store: SessionStore, workspace: Path) -> None:
    runtime, _ = make_runtime(
        [text("hi", (1_000_000, 0))],
        store,
        workspace,
        pricing={"scripted-1": ModelPricing(input_per_million=0.5, output_per_million=1.0)},
    )
    session = runtime.create_session()
    result = run(runtime.run_turn(session, "hello"))
    assert result.cost_usd == pytest.approx(0.5)


# -- summarization --------------------------------------------------------------------------


def test_conversation_crossing_the_threshold_keeps_every_message(
    store: SessionStore, workspace: Path
) -> None:
    turns = 12
    script = [text(f"Answer number {i}: " + "details " * 6) for i in range(turns)]
    runtime, _ = make_runtime(
        script, store, workspace, max_context_tokens=300, keep_recent_count=4
    )
    session = runtime.create_session()
    sent = [f"Question number {i}: " + "context " * 6 for i in range(turns)]
    summarized = []
    for question in sent:
        result = run(runtime.run_turn(session, question))
        if result.summarization is not None and result.summarization.messages_evicted:
            summarized.append(result.summarization)
    assert summarized, "the threshold was never crossed"
    assert is_summary_message(session.messages[0])
    assert len(session.messages) < 2 * turns
    history = store.history(session.id)
    history_texts = [m.text() for m in history]
    for i, question in enumerate(sent):
        assert question in history_texts
        assert any(t and t.startswith(f"Answer number {i}:") for t in history_texts)
    loaded = store.load(session.id)
    assert loaded is not None and len(loaded.messages) == len(session.messages)


def test_llm_summarizer_is_scripted_before_the_llm_call(
    store: SessionStore, workspace: Path
) -> None:
    script = [text("short answer one"), text("THE SUMMARY"), text("answer two")]
    provider = ScriptedProvider(script)
    runtime = AgentRuntime(
        provider,
        store=store,
        config=RuntimeConfig(workspace=workspace),
        tools=[],
        context_manager=ContextManager(
            20, threshold=0.5, keep_recent=1, summarizer=LLMSummarizer()
        ),
    )
    session = runtime.create_session()
    run(runtime.run_turn(session, "first question with enough words to count"))
    result = run(runtime.run_turn(session, "second question"))
    assert result.summarization is not None and result.summarization.summary == "THE SUMMARY"
    assert provider.prompts and provider.prompts[0].startswith("Summarize the following")
    assert session.messages[0].text() == "[Previous conversation summary]\nTHE SUMMARY"
    assert [m.text() for m in session.messages[1:]] == ["second question", "answer two"]
    # The LLM saw the summary, not the evicted turn.
    last_request = provider.requests[-1][0]
    assert last_request[0].text() is not None and "THE SUMMARY" in (last_request[0].text() or "")


# -- sub-agents -----------------------------------------------------------------------------


def test_subagent_success_saves_the_child_with_its_parent(
    store: SessionStore, workspace: Path
) -> None:
    script = [
        [
            call("t1", "task", {"description": "count things", "prompt": "count to 3"}),
            {"usage": {"input_tokens": 0, "output_tokens": 0}},
        ],
        text("1, 2, 3", (10, 10)),
        text("The sub-agent counted to 3.", (0, 0)),
    ]
    handler = Handler(ApproveSession())
    runtime, _ = make_runtime(script, store, workspace, handler=handler)
    session = runtime.create_session()
    run(runtime.run_turn(session, "delegate"))
    [res] = tool_results(session)
    assert not res.is_error and res.content == "1, 2, 3"
    children = [s for s in store.list_sessions() if s.parent_id == session.id.bare]
    assert len(children) == 1
    child = store.load(children[0].id)
    assert child is not None and [m.text() for m in child.messages] == ["count to 3", "1, 2, 3"]
    assert session.budget_tracker.spent() == pytest.approx(tokens_to_usd(10, 10))
    assert runtime.pool.stats().succeeded == 1


def test_parent_spawns_two_subagents_one_cancelled_one_timing_out(
    store: SessionStore, workspace: Path
) -> None:
    script: Script = [
        [
            {"text": "Delegating both."},
            call("a", "task", {"description": "A", "prompt": "do A", "timeout_secs": 30}),
            call("b", "task", {"description": "B", "prompt": "do B", "timeout_secs": 0.2}),
        ],
        [{"sleep": 30}, {"text": "A never finishes"}],
        [{"sleep": 30}, {"text": "B never finishes"}],
        text("Both sub-agents failed."),
    ]
    handler = Handler(ApproveSession())
    runtime, provider = make_runtime(script, store, workspace, handler=handler)
    session = runtime.create_session()

    async def scenario() -> Any:
        async def stop_a() -> str:
            while True:
                for handle in runtime.pool.list_active():
                    if handle.task == "A":
                        runtime.pool.stop(handle.id)
                        return str(handle.id)
                await asyncio.sleep(0.01)

        stopper = asyncio.create_task(stop_a())
        result = await asyncio.wait_for(runtime.run_turn(session, "do A and B"), 20)
        await stopper
        drained = await runtime.pool.wait_for_completion_timeout(1.0)
        return result, drained

    result, drained = run(scenario())
    assert drained and runtime.pool.active_count() == 0
    assert runtime.pool.available_permits() == runtime.config.max_concurrent_subagents
    stats = runtime.pool.stats()
    assert (stats.cancelled, stats.timed_out, stats.total_completed) == (1, 1, 2)
    a_result, b_result = tool_results(session)
    assert a_result.is_error
    assert a_result.content.startswith("Sub-agent failed: Sub-agent cancelled")
    assert b_result.is_error and "timed out after 0.2 seconds" in b_result.content
    assert result.text == "Both sub-agents failed."
    assert provider.turns_used == 4
    children = [s for s in store.list_sessions() if s.parent_id == session.id.bare]
    assert len(children) == 2
    prompts = set()
    for summary in children:
        child = store.load(summary.id)
        assert child is not None and child.parent_id == session.id
        prompts.add(child.messages[0].text())
    assert prompts == {"do A", "do B"}
    assert len(handler.requests) == 1  # builtin:task approved for the session


# -- the example host -----------------------------------------------------------------------


def test_example_host_runs() -> None:
    env = dict(os.environ)
    env.pop("ASTRID_LOAD_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "host.py")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[approval]" in out
    assert "word_count" in out
    assert "reloaded" in out



# -- what the model is told after an approval (issue 14 item 7) -----------------------------


class BareHandler:
    """A host handler that returns ``answer`` as it is (a bare decision, or something wrong)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.requests: list[ApprovalRequest] = []

    async def request_approval(self, request: ApprovalRequest) -> Any:
        self.requests.append(request)
        return self.answer

    def is_available(self) -> bool:
        return True


def one_read(
    store: SessionStore, workspace: Path, handler: Any
) -> tuple[AgentRuntime, AgentSession, ToolCallResult]:
    runtime = AgentRuntime(
        ScriptedProvider(read_script(1)),
        store=store,
        config=RuntimeConfig(workspace=workspace),
        approval_handler=handler,
    )
    session = runtime.create_session()
    run(runtime.run_turn(session, "read it"))
    [result] = tool_results(session)
    return runtime, session, result


def test_a_bare_session_decision_runs_the_tool_and_grants_the_session(
    store: SessionStore, workspace: Path
) -> None:
    handler = BareHandler(ApproveSession())
    _, session, results = two_reads(store, workspace, handler)  # type: ignore[arg-type]
    assert [(r.content, r.is_error) for r in results] == [("remember the milk\n", False)] * 2
    assert len(handler.requests) == 1  # the second read was allowed by the session allowance
    assert session.approval_manager.get_pending_resolutions() == []
    assert session.metadata.approval_count == 1


def test_a_bare_denial_tells_the_model_the_tool_did_not_run(
    store: SessionStore, workspace: Path
) -> None:
    _, session, result = one_read(store, workspace, BareHandler(Deny(reason="not today")))
    assert result.is_error
    assert result.content == "Tool read_file was not run: approval denied: not today"
    assert session.approval_manager.get_pending_resolutions() == []


def test_a_deferral_tells_the_model_it_is_pending(store: SessionStore, workspace: Path) -> None:
    _, session, result = one_read(store, workspace, None)
    [pending] = session.approval_manager.get_pending_resolutions()
    assert result.is_error
    assert result.content.startswith("Tool read_file was not run: it needs an approval")
    assert f"resolution:{pending.id}" in result.content
    assert "pending a later decision" in result.content


def test_a_handler_returning_something_else_is_a_failure_naming_it(
    store: SessionStore, workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="astrid.security.approvals"):
        _, session, result = one_read(store, workspace, BareHandler({"decision": "approve"}))
    assert result.is_error
    assert result.content.startswith(
        "Tool read_file was not run: the approval failed: approval handler "
        "tests.test_runtime.BareHandler returned dict"
    )
    assert "BareHandler returned dict" in caplog.text
    assert session.approval_manager.get_pending_resolutions() == []  # not deferred silently
    assert session.metadata.approval_count == 0


def test_a_response_to_another_request_is_refused_and_the_tool_not_run(
    store: SessionStore, workspace: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stray = ApprovalResponse.new(ApprovalRequest.new(FileRead(path="/x"), "other").id, Approve())
    with caplog.at_level("WARNING", logger="astrid.security.approvals"):
        _, session, result = one_read(store, workspace, BareHandler(stray))
    assert result.is_error
    assert result.content.startswith("Tool read_file was not run: approval denied: ")
    assert f"answered req:{stray.request_id}" in result.content
    assert "refused" in caplog.text
    assert session.allowance_store.count() == 0


def test_a_deferred_read_resolved_for_the_session_runs_next_turn_without_asking(
    store: SessionStore, workspace: Path
) -> None:
    runtime = AgentRuntime(
        ScriptedProvider(read_script(2)), store=store, config=RuntimeConfig(workspace=workspace)
    )
    session = runtime.create_session()
    run(runtime.run_turn(session, "read it"))
    [pending] = session.approval_manager.get_pending_resolutions()
    proof = runtime.resolve_deferred(session, pending.id, ApproveSession())
    assert isinstance(proof, SessionApproval)
    assert proof.allowance_id in {a.id for a in session.allowance_store.all()}
    run(runtime.run_turn(session, "read it again"))  # no handler: it would be deferred again
    first, second = tool_results(session)
    assert first.is_error and not second.is_error
    assert second.content == "remember the milk\n"
    assert session.approval_manager.get_pending_resolutions() == []
    assert session.metadata.approval_count == 1


# -- off the event loop (issue 15): saves, the deferred queue and capability use ------------

if TYPE_CHECKING:
    from astrid.security.kv import KvStore
    from astrid.store import SessionWrite


class ThreadRecordingSqlite(SqliteBackend):
    """A real SQLite backend that notes the thread of each session write and key-value write."""

    def __init__(self, path: Path, **options: Any) -> None:
        super().__init__(path, **options)
        self.write_threads: list[int] = []
        self.recording_kv = ThreadRecordingKv(super().kv())

    def write(self, change: SessionWrite) -> int:
        self.write_threads.append(threading.get_ident())
        return int(super().write(change))

    def kv(self) -> Any:
        return self.recording_kv


class ThreadRecordingKv:
    """A real key-value store (the SQLite backend's) that notes the thread of each write."""

    def __init__(self, inner: KvStore) -> None:
        self.inner = inner
        self.write_threads: list[int] = []

    def get(self, namespace: str, key: str) -> bytes | None:
        return self.inner.get(namespace, key)

    def set(self, namespace: str, key: str, value: bytes) -> None:
        self.write_threads.append(threading.get_ident())
        self.inner.set(namespace, key, value)

    def delete(self, namespace: str, key: str) -> bool:
        self.write_threads.append(threading.get_ident())
        return self.inner.delete(namespace, key)

    def exists(self, namespace: str, key: str) -> bool:
        return self.inner.exists(namespace, key)

    def list_keys(self, namespace: str) -> list[str]:
        return self.inner.list_keys(namespace)

    def clear_namespace(self, namespace: str) -> int:
        self.write_threads.append(threading.get_ident())
        return self.inner.clear_namespace(namespace)


class ThreadRecordingCapabilities(SqliteCapabilityBackend):
    """A real SQLite capability store that notes the thread of each lookup, use and mint."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.threads: dict[str, list[int]] = {}

    def _note(self, call: str) -> None:
        self.threads.setdefault(call, []).append(threading.get_ident())

    def put_token(self, token_id: str, data: str) -> None:
        self._note("put_token")
        super().put_token(token_id, data)

    def list_tokens(self) -> list[str]:
        self._note("list_tokens")
        return list(super().list_tokens())

    def claim_use(self, token_id: str) -> bool:
        self._note("claim_use")
        return bool(super().claim_use(token_id))


async def on_the_loop(work: Any) -> tuple[Any, int]:
    """Await ``work``; its result and the loop's thread."""
    return await work, threading.get_ident()


def test_the_loop_keeps_running_while_a_save_waits_on_another_writers_lock(
    tmp_path: Path, workspace: Path
) -> None:
    db = tmp_path / "astrid.db"
    backend = ThreadRecordingSqlite(db, busy_timeout_ms=1000)
    store = SessionStore(backend)
    runtime, _ = make_runtime([text("hello")], store, workspace)
    session = runtime.create_session()
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another connection holds the write lock

    async def heartbeat_during_the_turn() -> int:
        turn = asyncio.create_task(runtime.run_turn(session, "hi"))
        ticks = 0
        try:
            while ticks < 20:
                await asyncio.sleep(0.005)
                assert not turn.done(), "the turn's save finished under another writer's lock"
                ticks += 1
            # The save started and is waiting on the lock: nothing is recorded yet.
            assert len(backend.write_threads) == 1
            assert store.revision_of(session) is None
        finally:
            other.execute("COMMIT")
        await turn
        return ticks

    try:
        assert run(heartbeat_during_the_turn()) == 20
    finally:
        other.close()
    assert store.revision_of(session) is not None
    loaded = store.load(session.id)
    assert loaded is not None and [m.text() for m in loaded.messages] == ["hi", "hello"]
    store.close()


def test_turn_saves_run_in_a_worker_thread(tmp_path: Path, workspace: Path) -> None:
    backend = ThreadRecordingSqlite(tmp_path / "astrid.db")
    store = SessionStore(backend)
    runtime, _ = make_runtime([text("one"), text("two")], store, workspace)
    session = runtime.create_session()

    async def two_turns() -> None:
        await runtime.run_turn(session, "first")
        await runtime.run_turn(session, "second")

    _, loop_thread = run(on_the_loop(two_turns()))
    assert len(backend.write_threads) == 2
    assert loop_thread not in backend.write_threads
    store.close()


def test_a_deferral_and_its_resolution_touch_the_persistent_queue_off_the_loop(
    tmp_path: Path, workspace: Path
) -> None:
    backend = ThreadRecordingSqlite(tmp_path / "astrid.db")
    store = SessionStore(backend)
    kv = backend.recording_kv
    runtime, _ = make_runtime(read_script(2), store, workspace)  # no handler: deferred
    session = runtime.create_session()
    session.with_persistent_deferred_queue(store.deferred_queue_kv(session.id))

    _, loop_thread = run(on_the_loop(runtime.run_turn(session, "read it")))
    [pending] = session.approval_manager.get_pending_resolutions()
    assert store.deferred_queue_kv(session.id).list_keys() == [str(pending.id)]
    assert len(kv.write_threads) == 1 and loop_thread not in kv.write_threads

    proof, loop_thread = run(
        on_the_loop(runtime.aresolve_deferred(session, pending.id, ApproveSession()))
    )
    assert isinstance(proof, SessionApproval)
    assert store.deferred_queue_kv(session.id).list_keys() == []
    assert len(kv.write_threads) == 2 and loop_thread not in kv.write_threads
    run(runtime.run_turn(session, "read it again"))  # the session allowance covers it now
    assert tool_results(session)[-1].content == "remember the milk\n"
    store.close()


def test_capability_lookups_uses_and_mints_run_off_the_loop(
    tmp_path: Path, workspace: Path
) -> None:
    from astrid.security.capabilities import (
        AuditEntryId,
        CapabilityStore,
        ResourcePattern,
        TokenBuilder,
    )

    capabilities = ThreadRecordingCapabilities(tmp_path / "capabilities.db")
    store = SessionStore(
        SqliteBackend(tmp_path / "astrid.db"), capabilities=CapabilityStore(capabilities)
    )
    (workspace / "once.txt").write_text("only once\n")
    script = [*read_script(2), [call("o", "read_file", {"path": "once.txt"})], text("read once")]
    handler = Handler(ApproveAlways())
    runtime, _ = make_runtime(script, store, workspace, handler=handler)
    session = runtime.create_session()
    once = (
        TokenBuilder(ResourcePattern.exact(f"file://{(workspace / 'once.txt').resolve()}"))
        .permission(Permission.READ)
        .persistent()
        .single_use()
        .build(runtime.keypair.key_id, AuditEntryId.new(), runtime.keypair)
    )
    session.capabilities.add(once)
    capabilities.threads.clear()

    async def three_turns() -> None:
        await runtime.run_turn(session, "read it")  # approved always: a token is minted
        await runtime.run_turn(session, "read it again")  # the minted token authorizes it
        await runtime.run_turn(session, "read the other one")  # the single-use token is used

    _, loop_thread = run(on_the_loop(three_turns()))
    assert [r.content for r in tool_results(session)] == ["remember the milk\n"] * 2 + [
        "only once\n"
    ]
    assert len(handler.requests) == 1
    assert session.capabilities.is_used(once.id)
    assert {"put_token", "list_tokens", "claim_use"} <= set(capabilities.threads)
    for call_name, threads in capabilities.threads.items():
        assert loop_thread not in threads, f"{call_name} ran on the event loop's thread"
    store.close()


def test_the_git_capture_of_a_turns_save_runs_off_the_loop(
    tmp_path: Path, workspace: Path
) -> None:
    from astrid.gitstate import capture_fs

    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")} | {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    for args in (["init", "-q", "-b", "work"], ["add", "notes.txt"], ["commit", "-qm", "one"]):
        subprocess.run(["git", *args], cwd=workspace, env=env, check=True, capture_output=True)
    threads: list[int] = []

    def capture(path: Path) -> Any:
        threads.append(threading.get_ident())
        return capture_fs(path)

    store = SessionStore(SqliteBackend(tmp_path / "astrid.db"), git_capture=capture)
    runtime, _ = make_runtime([text("one"), text("two")], store, workspace)
    session = runtime.create_session().with_workspace(workspace)

    async def two_turns() -> None:
        await runtime.run_turn(session, "first")
        await runtime.run_turn(session, "second")

    _, loop_thread = run(on_the_loop(two_turns()))
    assert len(threads) == 2 and loop_thread not in threads
    loaded = store.load(session.id)
    assert loaded is not None and loaded.git_state is not None
    assert loaded.git_state.branch == "work"
    store.close()


def test_run_turn_streams_text_and_shows_each_tool_call_before_it_runs(
    store: SessionStore, workspace: Path
) -> None:
    events: list[str] = []

    def record(args: dict[str, Any], ctx: Any) -> str:
        events.append("ran echo")
        return f"echo: {args.get('text', '')}"

    tool = FunctionTool("echo", "Echo.", {"type": "object"}, record)
    answer = "The echo said hello, twice over."
    script = [[call("c1", "echo", {"text": "hello"})], text(answer)]
    runtime, _ = make_runtime(script, store, workspace, tools=[tool], handler=Handler(Approve()))
    session = runtime.create_session()
    pieces: list[str] = []
    result = run(runtime.run_turn(
        session, "echo hello",
        on_text=pieces.append,
        on_tool_call=lambda c: events.append(f"call {c.name} {c.arguments}"),
    ))
    assert "".join(pieces) == answer == result.text
    assert len(pieces) > 1  # pieces as they arrived, not the whole answer at the end
    assert events == ["call echo {'text': 'hello'}", "ran echo"]
