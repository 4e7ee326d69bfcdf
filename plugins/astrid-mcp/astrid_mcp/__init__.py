"""astrid-mcp: MCP servers (stdio or streamable HTTP) as astrid tools, on the official SDK.

Installed, it registers the toolset ``mcp`` (entry point ``mcp`` in the group ``astrid``); the
top-level ``[mcp]`` table configures it::

    [mcp.servers.notes]
    command = "notes-mcp-server"
    args = ["--db", "notes.db"]
    approval = "ask"            # ask (default) | policy | trusted
    timeout_s = 30

    [mcp.servers.search]
    url = "http://127.0.0.1:8931/mcp"
    headers_from_env = { Authorization = "SEARCH_MCP_AUTH" }

The model sees each tool as ``<server>__<tool>``; every call is an ``McpToolCall(server, tool)``
under astrid's policy, capability tokens, allowances, approvals and budgets. The ``mcp`` SDK is
imported only when a server starts. See docs/mcp.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from astrid import hookimpl
from astrid.plugins import PluginContext, version_attribute

from .options import ApprovalMode, McpOptions, McpServerOptions

if TYPE_CHECKING:
    from .toolset import McpToolset

    __version__: str
else:  # from the package metadata, on first access
    __getattr__ = version_attribute(__name__, "astrid-mcp")

TOOLSET_NAME = "mcp"


def create_toolset(options: McpOptions, context: PluginContext) -> McpToolset:
    """The toolset of the configured servers; starts nothing until ``open``."""
    from .toolset import McpToolset

    return McpToolset(options, context.home)


@hookimpl
def register_toolsets(register: Any) -> None:
    """Register the ``mcp`` toolset."""
    register(
        TOOLSET_NAME,
        create_toolset,
        McpOptions,
        "MCP servers ([mcp.servers.<name>]: stdio command or streamable HTTP url) as tools "
        "<server>__<tool>, under policy, capabilities and approvals.",
    )


__all__ = [
    "TOOLSET_NAME",
    "ApprovalMode",
    "McpOptions",
    "McpServerOptions",
    "__version__",
    "create_toolset",
]
