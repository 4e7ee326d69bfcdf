"""The toolset on its own: real MCP servers over stdio and streamable HTTP, opened, called and
closed directly (``open`` / ``run`` / ``aclose``), plus a published server nobody here wrote."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from astrid.errors import ToolError
from astrid.security.actions import McpToolCall
from astrid.session import AgentSession
from astrid.tools import Tool, ToolContext
from mcp_testing import HttpServer, process_alive, stdio_notes

from astrid_mcp import McpOptions
from astrid_mcp.toolset import McpTool, McpToolset, path_arguments

TEST_BOUND_S = 90.0


def with_toolset(
    servers: dict[str, dict[str, Any]],
    body: Callable[[dict[str, McpTool], ToolContext, McpToolset], Awaitable[Any]],
    workspace: Path,
) -> Any:
    """Open a toolset of ``servers``, run ``body`` on its tools, always close it (bounded)."""

    async def main() -> Any:
        toolset = McpToolset(McpOptions.model_validate({"servers": servers}), workspace)
        async with asyncio.timeout(TEST_BOUND_S):
            try:
                tools = await toolset.open()
                by_name = {t.name: t for t in tools}
                assert all(isinstance(t, McpTool) and isinstance(t, Tool) for t in tools)
                ctx = ToolContext(session=AgentSession(""), workspace_root=workspace)
                return await body(by_name, ctx, toolset)  # type: ignore[arg-type]
            finally:
                await toolset.aclose()

    return asyncio.run(main())


def test_lists_and_calls_over_stdio(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        assert {"notes__add", "notes__list_notes", "notes__read_text"} <= set(tools)
        add = tools["notes__add"]
        assert add.input_schema["properties"]["text"]["type"] == "string"
        assert add.classify({"text": "x"}, ctx) == McpToolCall(server="notes", tool="add")
        assert await add.run({"text": "milk"}, ctx) == "1 notes"
        assert await add.run({"text": "eggs"}, ctx) == "2 notes"
        assert await tools["notes__list_notes"].run({}, ctx) == "milk\neggs"

    with_toolset({"notes": stdio_notes()}, body, workspace)


def test_lists_and_calls_over_streamable_http(workspace: Path, http_notes: HttpServer) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        assert await tools["web__add"].run({"text": "over http"}, ctx) == "1 notes"
        assert await tools["web__list_notes"].run({}, ctx) == "over http"
        with pytest.raises(ToolError, match=r"reported an error: .*no such note"):
            await tools["web__fail"].run({"reason": "no such note"}, ctx)

    with_toolset({"web": {"url": http_notes.url}}, body, workspace)


def test_an_http_server_that_went_away_is_reported_and_retried_within_the_bound(
    workspace: Path, http_notes: HttpServer
) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        assert await tools["web__add"].run({"text": "before"}, ctx) == "1 notes"
        http_notes.process.kill()
        http_notes.process.wait(timeout=10)
        with pytest.raises(ToolError, match=r"MCP server web went away during add.*1 restarts"):
            await tools["web__add"].run({"text": "lost"}, ctx)
        with pytest.raises(ToolError, match=r"web could not be restarted: .*ConnectError"):
            await tools["web__add"].run({"text": "lost"}, ctx)
        with pytest.raises(ToolError, match=r"not restarted.*max_restarts = 1"):
            await tools["web__add"].run({"text": "lost"}, ctx)

    with_toolset({"web": {"url": http_notes.url, "max_restarts": 1}}, body, workspace)


def test_a_server_killed_while_idle_is_restarted_after_the_failed_call(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        first = int(await tools["notes__pid"].run({}, ctx))
        os.kill(first, signal.SIGKILL)
        with pytest.raises(ToolError, match="crashed during add"):
            await tools["notes__add"].run({"text": "x"}, ctx)
        second = int(await tools["notes__pid"].run({}, ctx))
        assert second != first

    with_toolset({"notes": stdio_notes()}, body, workspace)


def test_annotations_are_shown_not_trusted(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        listed = tools["notes__list_notes"]
        assert "read-only (not verified by astrid)" in listed.description
        assert "not read-only, not destructive" in tools["notes__add"].description
        # A read-only hint changes nothing about the classification or the approval mode.
        assert listed.classify({}, ctx) == McpToolCall(server="notes", tool="list_notes")
        assert listed.approval == "ask"

    with_toolset({"notes": stdio_notes()}, body, workspace)


def test_a_tool_error_is_a_tool_error(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        with pytest.raises(ToolError, match=r"notes:fail reported an error: .*disk full"):
            await tools["notes__fail"].run({"reason": "disk full"}, ctx)
        assert await tools["notes__add"].run({"text": "still fine"}, ctx) == "1 notes"

    with_toolset({"notes": stdio_notes()}, body, workspace)


def test_a_crashed_server_is_reported_and_restarted_on_the_next_call(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        first = int(await tools["notes__pid"].run({}, ctx))
        await tools["notes__add"].run({"text": "lost in the crash"}, ctx)
        with pytest.raises(ToolError, match=r"crashed during crash.*restarted on the next call"):
            await tools["notes__crash"].run({}, ctx)
        second = int(await tools["notes__pid"].run({}, ctx))  # a new process
        assert second != first and not process_alive(first)
        assert await tools["notes__list_notes"].run({}, ctx) == "(no notes)"
        with pytest.raises(ToolError, match="no restarts left"):
            await tools["notes__crash"].run({}, ctx)
        with pytest.raises(ToolError, match=r"not restarted.*max_restarts = 1"):
            await tools["notes__pid"].run({}, ctx)

    with_toolset({"notes": stdio_notes(max_restarts=1)}, body, workspace)


def test_a_hung_call_is_cancelled_at_its_timeout(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        with pytest.raises(ToolError, match=r"no answer within 3 s \(timeout_s\).*cancelled"):
            await tools["notes__hang"].run({"seconds": 60}, ctx)
        # The server lives on and answers the next call.
        assert await tools["notes__hang"].run({"seconds": 0}, ctx) == "woke up"

    with_toolset({"notes": stdio_notes(timeout_s=3)}, body, workspace)


def test_aclose_stops_every_server_process(workspace: Path) -> None:
    pids: list[int] = []

    async def body(tools: dict[str, McpTool], ctx: ToolContext, toolset: McpToolset) -> None:
        for server in ("a", "b"):
            pids.append(int(await tools[f"{server}__pid"].run({}, ctx)))
        assert all(process_alive(p) for p in pids)

    with_toolset({"a": stdio_notes(), "b": stdio_notes()}, body, workspace)
    assert len(set(pids)) == 2
    assert not any(process_alive(p) for p in pids), "a server outlived aclose"


def test_a_cancelled_caller_cancels_the_call_and_close_still_stops_the_server(
    workspace: Path,
) -> None:
    pids: list[int] = []

    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        pids.append(int(await tools["notes__pid"].run({}, ctx)))
        task = asyncio.create_task(tools["notes__hang"].run({"seconds": 60}, ctx))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await tools["notes__add"].run({"text": "after"}, ctx) == "1 notes"

    with_toolset({"notes": stdio_notes()}, body, workspace)
    assert not process_alive(pids[0])


def test_the_tools_allow_list_offers_only_those(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        assert set(tools) == {"notes__add", "notes__list_notes"}

    with_toolset({"notes": stdio_notes(tools=["add", "list_notes"])}, body, workspace)


def test_an_allow_list_naming_a_missing_tool_fails_open(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        raise AssertionError("open should have failed")

    with pytest.raises(Exception, match=r"mcp.servers.notes.tools: the server has no tool 'nope'"):
        with_toolset({"notes": stdio_notes(tools=["add", "nope"])}, body, workspace)


def test_a_server_that_cannot_start_is_named(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        raise AssertionError("open should have failed")

    missing = {"command": str(workspace / "no-such-server")}
    with pytest.raises(Exception, match=r"mcp.servers.ghost: "):
        with_toolset({"ghost": missing}, body, workspace)


def test_path_arguments_outside_the_workspace_are_refused(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        count = tools["notes__count_files"]
        assert count.path_keys == {"repo_dir"}
        assert await count.run({"repo_dir": str(workspace)}, ctx) == "1"
        assert await count.run({"repo_dir": "."}, ctx) == "1"
        with pytest.raises(ToolError, match=r"repo_dir='/usr' .* outside the workspace"):
            await count.run({"repo_dir": "/usr"}, ctx)
        with pytest.raises(ToolError, match="outside the workspace"):
            await count.run({"repo_dir": "../.."}, ctx)

    with_toolset({"notes": stdio_notes()}, body, workspace)


def test_path_argument_rule() -> None:
    schema = {
        "type": "object",
        "properties": {
            "path": {"type": "string"},
            "repo_path": {"type": "string"},
            "output_dir": {"type": "string"},
            "target": {"type": "string", "format": "uri"},
            "files": {"type": "array", "items": {"type": "string", "format": "path"}},
            "count": {"type": "integer"},
            "file_count": {"type": "integer"},
            "text": {"type": "string"},
        },
    }
    assert path_arguments(schema) == {"path", "repo_path", "output_dir", "target", "files"}


@pytest.mark.skipif(shutil.which("mcp-server-time", path=str(Path(sys.executable).parent))
                    is None, reason="mcp-server-time (the plugin's test extra) is not installed")
def test_a_published_server_mcp_server_time(workspace: Path) -> None:
    command = str(Path(sys.executable).parent / "mcp-server-time")

    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        assert {"time__get_current_time", "time__convert_time"} <= set(tools)
        converted = await tools["time__convert_time"].run(
            {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}, ctx
        )
        assert "21:00" in converted and "Asia/Tokyo" in converted
        with pytest.raises(ToolError, match=r"Invalid timezone|Unknown|invalid|No time zone"):
            await tools["time__get_current_time"].run({"timezone": "Mars/Olympus"}, ctx)

    with_toolset(
        {"time": {"command": command, "args": ["--local-timezone", "UTC"]}}, body, workspace
    )


def server_children() -> list[int]:
    """Pids of this process's children running the notes server (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(") ", 1)[1].split()
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"notes_server.py" in cmdline:
            found.append(int(entry.name))
    return found


def test_a_cancelled_open_leaves_no_server_process(workspace: Path) -> None:
    async def main() -> None:
        toolset = McpToolset(
            McpOptions.model_validate({"servers": {"a": stdio_notes(), "b": stdio_notes()}}),
            workspace,
        )
        opening = asyncio.create_task(toolset.open())
        deadline = time.monotonic() + 30
        while len(server_children()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(server_children()) == 2  # both spawned, still starting
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        async with asyncio.timeout(TEST_BOUND_S):
            await toolset.aclose()  # the runtime always closes, also after a failed open

    asyncio.run(main())
    assert server_children() == []


def test_calls_to_one_server_run_side_by_side(workspace: Path) -> None:
    async def body(tools: dict[str, McpTool], ctx: ToolContext, _: McpToolset) -> None:
        slow = asyncio.create_task(tools["notes__hang"].run({"seconds": 30}, ctx))
        await asyncio.sleep(0.2)
        assert await tools["notes__add"].run({"text": "quick"}, ctx) == "1 notes"
        assert not slow.done()  # the quick call did not wait behind the slow one
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow

    with_toolset({"notes": stdio_notes()}, body, workspace)
