"""The built-in tools: ``read_file``, ``write_file``, ``list_directory`` and ``task``.

Paths are resolved against the turn's working directory (the workspace root by default). The
runtime checks every path argument against the workspace boundary and the security policy
before a tool runs, so the tools themselves only do the I/O.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..hookspecs import hookimpl
from ..plugins import NoOptions, PluginContext
from ..tools import ToolContext, ToolError

__all__ = [
    "MAX_READ_BYTES",
    "MAX_TASK_TIMEOUT_SECS",
    "ListDirectoryTool",
    "ReadFileOptions",
    "ReadFileTool",
    "TaskTool",
    "WriteFileTool",
    "builtin_tools",
]

MAX_READ_BYTES = 1024 * 1024
"""``read_file`` refuses files larger than this (1 MiB); the runtime truncates output anyway."""

MAX_TASK_TIMEOUT_SECS = 3000
"""The ``task`` tool caps ``timeout_secs`` at this many seconds (as the original)."""


def _string_arg(arguments: dict[str, Any], key: str, *, required: bool = True) -> str | None:
    value = arguments.get(key)
    if value is None:
        if required:
            raise ToolError(f"missing required argument '{key}'")
        return None
    if not isinstance(value, str):
        raise ToolError(f"argument '{key}' must be a string, got {type(value).__name__}")
    return value


def _path_arg(arguments: dict[str, Any], ctx: ToolContext, *, default: str | None = None) -> Path:
    raw = _string_arg(arguments, "path", required=default is None)
    text = raw if raw is not None else default
    assert text is not None
    if not text.strip():
        raise ToolError("argument 'path' must not be empty")
    return ctx.resolve_path(text)


class ReadFileOptions(BaseModel):
    """``[tools.options.read_file]``."""

    model_config = ConfigDict(extra="forbid")

    max_bytes: int = Field(default=MAX_READ_BYTES, ge=1)
    """Files larger than this many bytes are refused."""


class ReadFileTool:
    """Read a UTF-8 text file."""

    name = "read_file"
    description = "Read a UTF-8 text file and return its contents."

    def __init__(self, options: ReadFileOptions | None = None) -> None:
        self.max_bytes = (options or ReadFileOptions()).max_bytes
    input_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "File path (relative to the workspace)."}
        },
        "required": ["path"],
    }

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        """The file's text."""
        path = _path_arg(arguments, ctx)
        try:
            if not path.is_file():
                raise ToolError(f"not a file: {path}")
            size = path.stat().st_size
            if size > self.max_bytes:
                raise ToolError(f"file too large: {path} is {size} bytes (limit {self.max_bytes})")
            data = path.read_bytes()
        except OSError as exc:
            raise ToolError(f"cannot read {path}: {exc.strerror or exc}") from exc
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ToolError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


class WriteFileTool:
    """Write a UTF-8 text file, creating parent directories."""

    name = "write_file"
    description = "Write text to a file (creating it and its parent directories, or replacing it)."
    input_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "path": {"type": "string", "description": "File path (relative to the workspace)."},
            "content": {"type": "string", "description": "The complete new contents."},
        },
        "required": ["path", "content"],
    }

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        """Write the content; a one-line confirmation."""
        path = _path_arg(arguments, ctx)
        content = _string_arg(arguments, "content")
        assert content is not None
        data = content.encode("utf-8")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except OSError as exc:
            raise ToolError(f"cannot write {path}: {exc.strerror or exc}") from exc
        return f"Wrote {len(data)} bytes to {path}"


class ListDirectoryTool:
    """List a directory's entries (directories get a trailing ``/``)."""

    name = "list_directory"
    description = "List the entries of a directory, sorted; directories end with '/'."
    input_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "path": {
                "type": "string",
                "description": "Directory path (relative to the workspace; default '.').",
            }
        },
    }

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        """One entry per line, or ``(empty directory)``."""
        path = _path_arg(arguments, ctx, default=".")
        try:
            if not path.is_dir():
                raise ToolError(f"not a directory: {path}")
            entries = sorted(
                (child.name + "/" if child.is_dir() else child.name) for child in path.iterdir()
            )
        except OSError as exc:
            raise ToolError(f"cannot list {path}: {exc.strerror or exc}") from exc
        return "\n".join(entries) if entries else "(empty directory)"


class TaskTool:
    """Delegate a task to a sub-agent (through the turn's spawner)."""

    name = "task"
    description = (
        "Delegate a self-contained task to a sub-agent and return its final answer. "
        "Give a short description and a complete prompt."
    )
    input_schema: dict[str, Any] = {
        "type": "object",
        "properties": {
            "description": {"type": "string", "description": "A short (3-5 word) task title."},
            "prompt": {"type": "string", "description": "The full instructions for the agent."},
            "timeout_secs": {
                "type": "number",
                "description": f"Optional time limit in seconds (at most {MAX_TASK_TIMEOUT_SECS}).",
            },
        },
        "required": ["description", "prompt"],
    }

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        """The sub-agent's answer; on failure a ``ToolError`` with the error and partial output."""
        from ..subagents import NO_TEXT_OUTPUT, SubAgentRequest

        description = _string_arg(arguments, "description")
        prompt = _string_arg(arguments, "prompt")
        assert description is not None and prompt is not None
        raw_timeout = arguments.get("timeout_secs")
        timeout: float | None = None
        if raw_timeout is not None:
            if isinstance(raw_timeout, bool) or not isinstance(raw_timeout, int | float):
                raise ToolError("argument 'timeout_secs' must be a number of seconds")
            if not math.isfinite(raw_timeout) or raw_timeout <= 0:
                raise ToolError("argument 'timeout_secs' must be a positive number of seconds")
            timeout = float(min(raw_timeout, MAX_TASK_TIMEOUT_SECS))
        spawner = ctx.spawner
        if spawner is None:
            raise ToolError("Sub-agent spawning is not available in this context")
        try:
            result = await spawner.spawn(
                SubAgentRequest(description=description, prompt=prompt, timeout=timeout)
            )
        except ToolError:
            raise
        except Exception as exc:
            raise ToolError(f"Failed to spawn sub-agent: {exc}") from exc
        if result.success:
            return result.output
        message = f"Sub-agent failed: {result.error or 'unknown error'}"
        if result.output and result.output != NO_TEXT_OUTPUT:
            message += f"\n\nPartial output:\n{result.output}"
        raise ToolError(message)


def builtin_tools() -> list[Any]:
    """Fresh instances of every built-in tool."""
    return [ReadFileTool(), WriteFileTool(), ListDirectoryTool(), TaskTool()]


@hookimpl
def register_tools(register: Any) -> None:
    """Register ``read_file`` (options: ``max_bytes``), ``write_file``, ``list_directory`` and
    ``task`` (the names in ``astrid.tools.BUILTIN_TOOLS``, the default of ``[tools] enabled``)."""

    def read_file(options: ReadFileOptions, context: PluginContext) -> Any:
        return ReadFileTool(options)

    def factory_of(cls: type[Any]) -> Any:
        def factory(options: NoOptions, context: PluginContext) -> Any:
            return cls()

        return factory

    register(ReadFileTool.name, read_file, ReadFileOptions, ReadFileTool.description)
    for cls in (WriteFileTool, ListDirectoryTool, TaskTool):
        register(cls.name, factory_of(cls), NoOptions, cls.description)
