"""The ``mcp`` toolset: every configured server's tools as astrid ``Tool``\\ s.

Each tool is named ``<server>__<tool>`` for the model and classifies every call as
``McpToolCall(server, tool)``, so the runtime's policy (``server:tool`` entries), capability
tokens (``mcp://server:tool``), stored allowances, approvals and budgets decide it like any
other tool. ``approval`` is the server's approval mode, which the runtime reads (see
docs/mcp.md). A crashed server is reported as the call's error and restarted on the next call,
at most ``max_restarts`` times.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from astrid.errors import ConfigError, ToolError
from astrid.runtime import PATH_ARGUMENT_KEYS
from astrid.security.actions import McpToolCall
from astrid.security.escape import WorkspaceBoundary, WorkspaceConfig, resolve_path
from astrid.tools import Tool, ToolContext

from .client import CallTimedOut, ServerConnection, ServerGone
from .options import McpOptions, McpServerOptions

if TYPE_CHECKING:
    import mcp.types as mcp_types

logger = logging.getLogger(__name__)

__all__ = ["McpTool", "McpToolset", "ServerHandle", "path_arguments"]

_MODEL_NAME = re.compile(r"[^A-Za-z0-9_-]")
MAX_TOOL_NAME = 64
"""The longest tool name the providers accept."""

_PATH_SUFFIXES = ("path", "file", "dir", "directory", "folder", "filename")
_PATH_FORMATS = frozenset({"path", "file-path", "uri", "uri-reference", "iri", "iri-reference"})


def path_arguments(schema: Mapping[str, Any]) -> frozenset[str]:
    """The top-level properties of ``schema`` astrid treats as paths.

    A property counts when its name is one of the runtime's path keys (``path``, ``file``,
    ``dir``, ``uri``, ...) or ends in ``path``, ``file``, ``dir``, ``directory``, ``folder`` or
    ``filename`` (``repo_path``, ``output_dir``), or when its JSON schema ``format`` is
    ``path``, ``file-path``, ``uri`` or ``uri-reference``; with a string or array-of-strings
    type (or none given).
    """
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return frozenset()
    found: set[str] = set()
    for name, spec in properties.items():
        if not isinstance(name, str):
            continue
        spec = spec if isinstance(spec, Mapping) else {}
        lowered = name.lower()
        named = lowered in PATH_ARGUMENT_KEYS or lowered.endswith(_PATH_SUFFIXES)
        formats = {spec.get("format")}
        items = spec.get("items")
        if isinstance(items, Mapping):
            formats.add(items.get("format"))
        if named or formats & _PATH_FORMATS:
            kind = spec.get("type")
            if kind in (None, "string", "array") or (
                isinstance(kind, list) and ("string" in kind or "array" in kind)
            ):
                found.add(name)
    return frozenset(found)


def _path_of(value: str) -> str | None:
    """The filesystem path a string argument names, or None for a non-file URI."""
    if value.startswith("file://"):
        return value[len("file://") :]
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value):
        return None
    return value


def _annotation_text(tool: mcp_types.Tool) -> str:
    """The server's own hints about the tool, worded as claims (never trusted)."""
    notes = tool.annotations
    if notes is None:
        return ""
    hints: list[str] = []
    for field, label in (
        ("read_only_hint", "read-only"),
        ("destructive_hint", "destructive"),
        ("idempotent_hint", "idempotent"),
        ("open_world_hint", "open-world"),
    ):
        value = getattr(notes, field, None)
        if value is not None:
            hints.append(label if value else f"not {label}")
    return ", ".join(hints)


def result_text(result: mcp_types.CallToolResult) -> str:
    """A ``tools/call`` result as text for the model: text parts, other parts described."""
    parts: list[str] = []
    for item in result.content:
        kind = getattr(item, "type", "")
        if kind == "text":
            parts.append(str(getattr(item, "text", "")))
        elif kind in ("image", "audio"):
            data = str(getattr(item, "data", ""))
            parts.append(f"[{kind} {getattr(item, 'mime_type', '?')}, {len(data) * 3 // 4} bytes]")
        elif kind == "resource_link":
            parts.append(f"[resource {getattr(item, 'uri', '?')}]")
        elif kind == "resource":
            resource = getattr(item, "resource", None)
            text = getattr(resource, "text", None)
            uri = getattr(resource, "uri", "?")
            parts.append(str(text) if text is not None else f"[resource {uri} (binary)]")
        else:
            parts.append(f"[{kind or 'unknown'} content]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts)


class ServerHandle:
    """One configured server: its live connection and the restart budget."""

    def __init__(self, name: str, options: McpServerOptions, home: Path) -> None:
        self.name = name
        self.options = options
        self.home = home
        self.restarts = 0
        self.connection: ServerConnection | None = None
        self._lock = asyncio.Lock()

    def _new_connection(self) -> ServerConnection:
        options = self.options
        if options.command is not None:
            options.resolved_env()  # a variable gone since the start is named, not passed empty
            options = options.model_copy(update={"cwd": options.resolved_cwd(self.home)})
        return ServerConnection(self.name, options, options.resolved_headers())

    async def start(self) -> list[mcp_types.Tool]:
        """Start the server and list its tools."""
        connection = self._new_connection()
        self.connection = connection
        return await connection.start()

    async def live(self) -> ServerConnection:
        """The live connection, restarting a crashed server if restarts are left."""
        async with self._lock:
            connection = self.connection
            if connection is not None and connection.alive:
                return connection
            if connection is not None:
                await connection.stop()
            if self.restarts >= self.options.max_restarts:
                raise ToolError(
                    f"MCP server {self.name} is down and was not restarted: it was restarted "
                    f"{self.restarts} times already (max_restarts = {self.options.max_restarts})"
                )
            self.restarts += 1
            logger.info("restarting MCP server %s (restart %d of at most %d)", self.name,
                        self.restarts, self.options.max_restarts)
            try:
                await self.start()
            except ToolError:
                raise
            except Exception as exc:
                raise ToolError(
                    f"MCP server {self.name} could not be restarted: {exc}"
                ) from exc
            assert self.connection is not None
            return self.connection

    async def stop(self) -> None:
        """Stop the server if it runs."""
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.stop()


class McpTool:
    """One MCP tool as an astrid ``Tool``: ``<server>__<tool>``, classified ``McpToolCall``."""

    def __init__(self, handle: ServerHandle, tool: mcp_types.Tool, name: str) -> None:
        self.handle = handle
        self.server = handle.name
        self.tool = tool.name
        self.name = name
        self.approval = handle.options.approval
        hints = _annotation_text(tool)
        self.annotations = hints
        description = (tool.description or tool.title or "").strip()
        suffix = f"[MCP tool {tool.name} on server {self.server}"
        if hints:
            suffix += f"; the server describes it as: {hints} (not verified by astrid)"
        self.description = f"{description}\n\n{suffix}]" if description else f"{suffix}]"
        schema = dict(tool.input_schema) if tool.input_schema else {}
        schema.setdefault("type", "object")
        self.input_schema: dict[str, Any] = schema
        self.path_keys = path_arguments(schema)
        self.approval_context = (
            f"MCP server {self.server} (approval = {self.approval}), tool {self.tool}"
            + (f"; the server says: {hints} (unverified)" if hints else "")
        )

    def classify(self, arguments: dict[str, Any], ctx: ToolContext) -> McpToolCall:
        """Every call is ``McpToolCall(server, tool)``: policy, tokens and allowances match it."""
        return McpToolCall(server=self.server, tool=self.tool)

    def outside_paths(self, arguments: Mapping[str, Any], ctx: ToolContext) -> list[str]:
        """Path arguments outside the workspace that no escape grant of the session covers.

        The runtime itself checks (and asks about) its own path keys; this covers the others
        this tool's schema marks as paths, and the runtime's keys when they hold a list.
        """
        boundary = WorkspaceBoundary(WorkspaceConfig.new(ctx.workspace_root))
        refused: list[str] = []
        for key in self.path_keys:
            value = arguments.get(key)
            values = value if isinstance(value, list) else [value]
            runtime_checked = key.lower() in PATH_ARGUMENT_KEYS and not isinstance(value, list)
            for item in values:
                if not isinstance(item, str) or not item.strip():
                    continue
                if runtime_checked and (item.startswith("file://") or "://" not in item):
                    continue
                raw = _path_of(item)
                if raw is None:
                    continue
                path = resolve_path(ctx.resolve_path(raw))
                never = boundary.config.never_allowed
                if ctx.session.escape_handler.is_allowed(path, never):
                    continue
                if boundary.check(path).is_allowed():
                    continue
                refused.append(f"{key}={item!r} ({path})")
        return refused

    def absolute_paths(self, arguments: Mapping[str, Any], ctx: ToolContext) -> dict[str, Any]:
        """``arguments`` with each relative (or ``~``) path argument made absolute the way
        astrid resolved it for the boundary check, so the server (whose working directory is
        its own) gets the path that was checked."""
        sent = dict(arguments)
        for key in self.path_keys:
            value = sent.get(key)
            if isinstance(value, str):
                sent[key] = self._absolute(value, ctx)
            elif isinstance(value, list):
                sent[key] = [self._absolute(v, ctx) if isinstance(v, str) else v for v in value]
        return sent

    @staticmethod
    def _absolute(value: str, ctx: ToolContext) -> str:
        raw = _path_of(value)
        if raw is None or not raw.strip():
            return value
        path = str(ctx.resolve_path(raw))
        return f"file://{path}" if value.startswith("file://") else path

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        """Check path arguments against the workspace, then call the tool on its server."""
        refused = self.outside_paths(arguments, ctx)
        if refused:
            raise ToolError(
                f"{self.name} was not run: {', '.join(refused)} is outside the workspace "
                f"{ctx.workspace_root}"
            )
        connection = await self.handle.live()
        try:
            result = await connection.call(self.tool, self.absolute_paths(arguments, ctx))
        except CallTimedOut as exc:
            raise ToolError(f"MCP tool {self.server}:{self.tool}: {exc}") from None
        except ServerGone as exc:
            tail = await connection.stderr_tail()
            left = self.handle.options.max_restarts - self.handle.restarts
            what = "crashed" if self.handle.options.command is not None else "went away"
            text = (
                f"MCP server {self.server} {what} during {self.tool}: {exc}; it will be "
                f"restarted on the next call ({left} restarts left)"
                if left > 0
                else f"MCP server {self.server} {what} during {self.tool}: {exc}; no restarts "
                f"left (max_restarts = {self.handle.options.max_restarts})"
            )
            if tail:
                text += f"; its stderr ended with: {tail[-500:]}"
            raise ToolError(text) from None
        except Exception as exc:  # a protocol error answer from the server
            raise ToolError(f"MCP tool {self.server}:{self.tool} failed: {exc}") from None
        text = result_text(result)
        if result.is_error:
            raise ToolError(f"MCP tool {self.server}:{self.tool} reported an error: {text}")
        return text

    def __repr__(self) -> str:
        return f"McpTool({self.name!r}, approval={self.approval!r})"


class McpToolset:
    """The configured MCP servers as one toolset: ``open`` starts them all, ``aclose`` stops
    them all (also after a partial or failed ``open``)."""

    name = "mcp"

    def __init__(self, options: McpOptions, home: Path) -> None:
        self.options = options
        self.handles = {
            name: ServerHandle(name, server, home) for name, server in options.servers.items()
        }
        for name, server in options.servers.items():  # missing variables fail at start-up
            try:
                server.resolved_env()
                server.resolved_headers()
            except ConfigError as exc:
                raise ConfigError(f"mcp.servers.{name}: {exc}") from None

    async def open(self) -> list[Tool]:
        """Start every server (concurrently) and return their tools."""
        names = list(self.handles)
        results = await asyncio.gather(
            *(self.handles[n].start() for n in names), return_exceptions=True
        )
        failures: list[str] = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                failures.append(f"mcp.servers.{name}: {result}")
        if failures:
            raise ConfigError("MCP server failed to start: " + "; ".join(failures))
        tools: list[Tool] = []
        seen: dict[str, str] = {}
        for name, listing in zip(names, results, strict=True):
            assert not isinstance(listing, BaseException)
            tools.extend(self._tools_of(self.handles[name], listing, seen))
        return tools

    def _tools_of(
        self, handle: ServerHandle, listing: list[mcp_types.Tool], seen: dict[str, str]
    ) -> list[Tool]:
        wanted = handle.options.tools
        offered = {t.name for t in listing}
        if wanted is not None:
            missing = [t for t in wanted if t not in offered]
            if missing:
                raise ConfigError(
                    f"mcp.servers.{handle.name}.tools: the server has no tool "
                    f"{', '.join(map(repr, missing))} (it offers {', '.join(sorted(offered))})"
                )
        tools: list[Tool] = []
        for tool in listing:
            if wanted is not None and tool.name not in wanted:
                continue
            name = f"{handle.name}__{_MODEL_NAME.sub('_', tool.name)}"
            if len(name) > MAX_TOOL_NAME:
                logger.warning("MCP server %s: tool %r skipped: %r is longer than %d", handle.name,
                               tool.name, name, MAX_TOOL_NAME)
                continue
            if name in seen:
                logger.warning("MCP server %s: tool %r skipped: %r is already %s", handle.name,
                               tool.name, name, seen[name])
                continue
            seen[name] = f"{handle.name}:{tool.name}"
            tools.append(McpTool(handle, tool, name))
        return tools

    async def aclose(self) -> None:
        """Stop every server (concurrently); each stop is bounded."""
        await asyncio.gather(*(h.stop() for h in self.handles.values()), return_exceptions=True)

    def __repr__(self) -> str:
        return f"McpToolset(servers={sorted(self.handles)})"
