"""Helpers of the astrid-mcp tests: the test servers and process checks."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVERS = Path(__file__).parent / "servers"
NOTES_SERVER = SERVERS / "notes_server.py"


def stdio_notes(**options: Any) -> dict[str, Any]:
    """``[mcp.servers.<name>]`` options of the notes server over stdio."""
    return {"command": sys.executable, "args": [str(NOTES_SERVER)], **options}


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie not yet reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(") ", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class HttpServer:
    """A test MCP server over streamable HTTP: its URL and its process."""

    url: str
    process: subprocess.Popen[str]
