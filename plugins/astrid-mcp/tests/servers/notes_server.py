"""A small MCP server written with the SDK (MCPServer, the SDK's FastMCP), for the tests.

``python notes_server.py`` serves over stdio; ``python notes_server.py http`` serves streamable
HTTP on 127.0.0.1 on a free port and prints ``PORT <n>`` on its first stdout line.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

server = MCPServer("notes")
NOTES: list[str] = []


@server.tool(annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False))
def add(text: str) -> str:
    """Add a note; returns how many notes there are."""
    NOTES.append(text)
    return f"{len(NOTES)} notes"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def list_notes() -> str:
    """Every note, one per line."""
    return "\n".join(NOTES) if NOTES else "(no notes)"


@server.tool()
def pid() -> str:
    """The server's process id."""
    return str(os.getpid())


@server.tool()
def fail(reason: str) -> str:
    """Always fails with ``reason``."""
    raise ToolError(reason)


@server.tool()
def crash() -> str:
    """Exits the server process at once (a crash)."""
    os._exit(3)


@server.tool()
async def hang(seconds: float) -> str:
    """Sleeps ``seconds`` before answering."""
    await asyncio.sleep(seconds)
    return "woke up"


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def read_text(file_path: str) -> str:
    """The text of the file at ``file_path``."""
    return Path(file_path).read_text(encoding="utf-8")


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def count_files(repo_dir: str) -> str:
    """How many entries the directory ``repo_dir`` has."""
    return str(len(os.listdir(repo_dir)))


async def _serve_http() -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # connections made before uvicorn accepts wait in the backlog
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    app = server.streamable_http_app()
    config = uvicorn.Config(app, log_level="warning")
    await uvicorn.Server(config).serve(sockets=[sock])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "http":
        asyncio.run(_serve_http())
    else:
        server.run()
