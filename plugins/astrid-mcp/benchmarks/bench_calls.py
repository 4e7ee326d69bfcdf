"""What an MCP server costs astrid: start-up (spawn, initialize, list) and one tool call.

The notes server of the tests (``tests/servers/notes_server.py``, the SDK's ``MCPServer``) is
started over stdio and over streamable HTTP on 127.0.0.1; each round starts a toolset, times
``open()``, then ``--calls`` sequential ``notes__add`` calls through ``McpTool.run`` (the path
the runtime takes after its security checks), then ``aclose()``.

Run: ``.venv/bin/python plugins/astrid-mcp/benchmarks/bench_calls.py [--rounds N] [--calls N]``.
Figures are medians in milliseconds; docs/mcp.md quotes a run.
"""

from __future__ import annotations

import argparse
import asyncio
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from astrid.session import AgentSession
from astrid.tools import ToolContext

from astrid_mcp import McpOptions
from astrid_mcp.toolset import McpToolset

SERVER = Path(__file__).resolve().parent.parent / "tests" / "servers" / "notes_server.py"


async def one_round(server: dict[str, Any], calls: int, workspace: Path) -> tuple[float, float,
                                                                                   float]:
    """(open ms, median call ms, aclose ms) of one toolset on ``server``."""
    toolset = McpToolset(McpOptions.model_validate({"servers": {"notes": server}}), workspace)
    ctx = ToolContext(session=AgentSession(""), workspace_root=workspace)
    started = time.perf_counter()
    try:
        tools = {t.name: t for t in await toolset.open()}
        opened = (time.perf_counter() - started) * 1000
        add = tools["notes__add"]
        timings = []
        for index in range(calls):
            begin = time.perf_counter()
            await add.run({"text": f"note {index}"}, ctx)
            timings.append((time.perf_counter() - begin) * 1000)
    finally:
        begin = time.perf_counter()
        await toolset.aclose()
        closed = (time.perf_counter() - begin) * 1000
    return opened, statistics.median(timings), closed


def http_server() -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen([sys.executable, str(SERVER), "http"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], 30)
    if not ready:
        process.kill()
        raise SystemExit("the HTTP server did not start")
    port = int(process.stdout.readline().split()[1])
    return process, f"http://127.0.0.1:{port}/mcp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    workspace = Path.cwd()
    process, url = http_server()
    try:
        for label, server in (
            ("stdio", {"command": sys.executable, "args": [str(SERVER)]}),
            ("http", {"url": url}),
        ):
            rounds = [asyncio.run(one_round(server, args.calls, workspace))
                      for _ in range(args.rounds)]
            opened, call, closed = (statistics.median(r[i] for r in rounds) for i in range(3))
            print(f"{label:5}  open {opened:7.1f} ms   call {call:6.2f} ms   "
                  f"aclose {closed:7.1f} ms   ({args.rounds} rounds of {args.calls} calls)")
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    main()
