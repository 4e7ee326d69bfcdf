"""Tools the agent may call: the ``Tool`` protocol, the per-turn ``ToolContext`` and helpers.

A tool is any object with ``name``, ``description``, ``input_schema`` and an async
``run(arguments, ctx) -> str``. Raising (``ToolError`` or anything else) makes the call an error
result the model sees; it never aborts the turn. Tools are registered by plugins through the
``register_tools`` hook or handed to ``AgentRuntime(tools=[...])`` by a host.

A tool may also define ``classify(arguments, ctx) -> SensitiveAction | None`` to tell the runtime
which security action it performs (otherwise the runtime applies the original's built-in rules),
``approval`` (``"ask"``, ``"policy"`` or ``"trusted"``: how that action is approved) and
``approval_context`` (the text an approval request shows).

A ``Toolset`` is a source of tools known only after an async connect (an MCP server): the
``register_toolsets`` hook registers its factory, and the runtime opens it once when entered
(``async with``) and closes it on exit.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import ToolError
from .llm import ToolDefinition
from .security.actions import SensitiveAction

if TYPE_CHECKING:
    from .session import AgentSession
    from .store import SessionStore
    from .subagents import SubAgentExecutor

__all__ = [
    "BUILTIN_TOOLS",
    "FunctionTool",
    "Tool",
    "ToolContext",
    "ToolError",
    "ToolFunction",
    "Toolset",
    "enabled_tool_names",
    "tool_definition",
]


BUILTIN_TOOLS: tuple[str, ...] = ("read_file", "write_file", "list_directory", "task")
"""The tools ``astrid.default_plugins.builtin_tools`` registers: the default of ``[tools]
enabled`` (and of ``AgentRuntime(enabled_tools=None)``)."""


def enabled_tool_names(enabled: Iterable[str] | None, registered: Iterable[str]) -> list[str]:
    """The registered tools offered to the model: ``enabled`` as given, or when it is None the
    built-ins that are registered (a plugin's tool is off until it is listed)."""
    if enabled is not None:
        return list(enabled)
    present = set(registered)
    return [name for name in BUILTIN_TOOLS if name in present]


@dataclass
class ToolContext:
    """What a tool may use during one turn: the session, the workspace, the store, a spawner."""

    session: AgentSession
    workspace_root: Path
    cwd: Path | None = None
    store: SessionStore | None = None
    spawner: SubAgentExecutor | None = None

    def __post_init__(self) -> None:
        self.workspace_root = Path(self.workspace_root)
        if self.cwd is None:
            self.cwd = self.workspace_root

    def resolve_path(self, path: str | os.PathLike[str]) -> Path:
        """``path`` with ``~`` expanded and, if relative, joined to the working directory."""
        expanded = Path(os.path.expanduser(os.fspath(path)))
        if expanded.is_absolute():
            return expanded
        base = self.cwd if self.cwd is not None else self.workspace_root
        return base / expanded


@runtime_checkable
class Tool(Protocol):
    """A tool: its name, description, JSON schema, and an async ``run`` returning text."""

    name: str
    description: str
    input_schema: dict[str, Any]

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        """Run with the parsed arguments; raise to report an error to the model."""
        ...


@runtime_checkable
class Toolset(Protocol):
    """A source of tools known only after an async connect (e.g. an MCP client).

    ``open`` connects and returns the tools (ordinary ``Tool`` objects, each with ``classify`` so
    policy, approvals, capabilities and budgets apply); the runtime calls it once. ``aclose``
    releases everything ``open`` started; the runtime calls it once, also after a failed or
    cancelled ``open``, so it must cope with a partly opened toolset.
    """

    name: str

    async def open(self) -> list[Tool]:
        """Connect and return the tools this toolset offers (names unique, no ``:``)."""
        ...

    async def aclose(self) -> None:
        """Disconnect and stop whatever ``open`` started."""
        ...


ToolFunction = Callable[[dict[str, Any], ToolContext], "str | Awaitable[str]"]
"""What ``FunctionTool`` wraps: ``fn(arguments, ctx)`` returning text or an awaitable of text."""

ActionClassifier = Callable[[dict[str, Any], ToolContext], "SensitiveAction | None"]
"""Maps a call's arguments to the security action it performs (None: the built-in rules)."""


class FunctionTool:
    """A ``Tool`` made from a plain sync or async function ``fn(arguments, ctx)``."""

    def __init__(
        self,
        name: str,
        description: str,
        schema: dict[str, Any] | None,
        fn: ToolFunction,
        *,
        classify: ActionClassifier | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError("a tool needs a non-empty name")
        self.name = name
        self.description = description
        self.input_schema: dict[str, Any] = (
            dict(schema) if schema is not None else {"type": "object", "properties": {}}
        )
        self._fn = fn
        self._classify = classify

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        """Call the function (awaiting it if it returns an awaitable); the text it returns."""
        result = self._fn(arguments, ctx)
        if inspect.isawaitable(result):
            result = await result
        return result if isinstance(result, str) else str(result)

    def classify(self, arguments: dict[str, Any], ctx: ToolContext) -> SensitiveAction | None:
        """The security action of this call, if a classifier was given."""
        return self._classify(arguments, ctx) if self._classify is not None else None

    def __repr__(self) -> str:
        return f"FunctionTool(name={self.name!r})"


def tool_definition(tool: Tool) -> ToolDefinition:
    """The ``ToolDefinition`` a provider is given for ``tool``."""
    return ToolDefinition(
        name=tool.name, description=tool.description or "", input_schema=dict(tool.input_schema)
    )
