"""The core's ``ToolConformance`` kit run on MCP tools of real servers: the notes server's
``notes__read_text`` and the published ``mcp-server-time``'s ``time__convert_time``.

The kit runs each call in its own event loop, and an MCP tool lives on the loop its toolset
opened on, so ``make_tool`` returns a tool that opens the toolset for each call and closes it
again; name, description, schema and ``classify`` are the real tool's."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from astrid.security.actions import SensitiveAction
from astrid.testing.tool_conformance import ToolConformance
from astrid.tools import ToolContext
from mcp_testing import stdio_notes

from astrid_mcp import McpOptions
from astrid_mcp.toolset import McpTool, McpToolset

TIME_SERVER = Path(sys.executable).parent / "mcp-server-time"


class OpenedPerCall:
    """One MCP tool, its toolset opened around each ``run`` (on the caller's loop)."""

    def __init__(self, servers: dict[str, Any], name: str, workspace: Path) -> None:
        self.options = McpOptions.model_validate({"servers": servers})
        self.workspace = workspace
        self.tool: McpTool = asyncio.run(self._with_tool(name, None))
        self.name = self.tool.name
        self.description = self.tool.description
        self.input_schema = self.tool.input_schema

    async def _with_tool(self, name: str, arguments: dict[str, Any] | None,
                         ctx: ToolContext | None = None) -> Any:
        toolset = McpToolset(self.options, self.workspace)
        try:
            tools = {t.name: t for t in await toolset.open()}
            tool = tools[name]
            assert isinstance(tool, McpTool)
            if arguments is None or ctx is None:
                return tool
            return await tool.run(arguments, ctx)
        finally:
            await toolset.aclose()

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        result: str = await self._with_tool(self.name, arguments, ctx)
        return result

    def classify(self, arguments: dict[str, Any], ctx: ToolContext) -> SensitiveAction | None:
        return self.tool.classify(arguments, ctx)


class TestNotesReadText(ToolConformance):
    valid_arguments: ClassVar = ({"file_path": "notes.txt"},)
    invalid_arguments: ClassVar = ({"file_path": "missing.txt"}, {"file_path": "/usr/bin"})

    def prepare(self, workspace: Path) -> None:
        (workspace / "notes.txt").write_text("milk\n", encoding="utf-8")

    def make_tool(self, workspace: Path) -> OpenedPerCall:  # type: ignore[override]
        return OpenedPerCall({"notes": stdio_notes()}, "notes__read_text", workspace)


@pytest.mark.skipif(shutil.which(str(TIME_SERVER)) is None,
                    reason="mcp-server-time (the plugin's test extra) is not installed")
class TestTimeConvert(ToolConformance):
    valid_arguments: ClassVar = (
        {"source_timezone": "UTC", "time": "08:30", "target_timezone": "Europe/Paris"},
    )
    invalid_arguments: ClassVar = (
        {"source_timezone": "Nowhere/Land", "time": "08:30", "target_timezone": "UTC"},
        {"source_timezone": "UTC", "time": "25:99", "target_timezone": "UTC"},
    )

    def make_tool(self, workspace: Path) -> OpenedPerCall:  # type: ignore[override]
        server = {"command": str(TIME_SERVER), "args": ["--local-timezone", "UTC"]}
        return OpenedPerCall({"time": server}, "time__convert_time", workspace)
