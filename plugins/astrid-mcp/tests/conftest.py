"""Fixtures: real MCP servers started by the tests (stdio subprocesses, an HTTP server on
127.0.0.1 on a free port), each stopped by the test within a bounded time."""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp_testing import NOTES_SERVER, HttpServer


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    (ws / "hello.txt").write_text("hello from the workspace\n", encoding="utf-8")
    return ws


@pytest.fixture
def http_notes() -> Iterator[HttpServer]:
    """The notes server over streamable HTTP on 127.0.0.1 (a free port) in a subprocess."""
    process = subprocess.Popen(
        [sys.executable, str(NOTES_SERVER), "http"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the HTTP MCP server did not print its port within 30 s"
        line = process.stdout.readline().split()
        assert line[:1] == ["PORT"], line
        yield HttpServer(f"http://127.0.0.1:{int(line[1])}/mcp", process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
