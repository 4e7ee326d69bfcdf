"""A host lists an MCP server in astrid.toml and an agent (the scripted provider) calls its
tools under approvals: through ``open_runtime`` in-process and through ``astrid run`` in
subprocesses (a pseudo-terminal answers ``--approve ask``). The store is the default SQLite one
under a temporary ``ASTRID_HOME``; the server is the real notes server over stdio."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from astrid.plugins import load_plugins
from astrid.runtime import open_runtime
from astrid.security.actions import McpToolCall
from astrid.security.approvals import ApprovalResponse, Approve
from astrid.security.deferred import ApprovalRequest
from mcp_testing import NOTES_SERVER, process_alive

ASTRID = Path(sys.executable).with_name("astrid")


class Handler:
    """Answers every approval request with one decision and keeps the requests."""

    def __init__(self, decision: Any) -> None:
        self.decision = decision
        self.requests: list[ApprovalRequest] = []

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse:
        self.requests.append(request)
        return ApprovalResponse.new(request.id, self.decision)

    def is_available(self) -> bool:
        return True


def call(name: str, call_id: str = "call_1", **arguments: Any) -> list[dict[str, Any]]:
    return [{"tool_call": {"id": call_id, "name": name, "arguments": arguments}}]


def answer(text: str) -> list[dict[str, Any]]:
    return [{"text": text}]


class Host:
    def __init__(self, root: Path, workspace: Path) -> None:
        self.root = root
        self.workspace = workspace

    def config(self, *turns: list[dict[str, Any]], server: str = "") -> Path:
        """An astrid.toml on the scripted provider with the notes server as ``notes``."""
        script = self.root / f"script-{secrets.token_hex(4)}.json"
        script.write_text(json.dumps(list(turns)), encoding="utf-8")
        path = self.root / f"astrid-{secrets.token_hex(4)}.toml"
        path.write_text(
            f'[llm]\nprovider = "scripted"\n[llm.options]\nscript_file = "{script}"\n'
            f'[runtime]\nworkspace_root = "{self.workspace}"\n'
            f'[mcp.servers.notes]\ncommand = "{sys.executable}"\n'
            f'args = ["{NOTES_SERVER}"]\ntimeout_s = 30\n{server}',
            encoding="utf-8",
        )
        return path


@pytest.fixture
def host(tmp_path: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    load_plugins()
    yield Host(tmp_path, workspace)
    load_plugins()


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ASTRID), "--config", str(config), *args],
        capture_output=True, text=True, timeout=120, env=dict(os.environ), stdin=subprocess.DEVNULL,
    )


def run_on_a_terminal(config: Path, prompt: str, keys: bytes) -> tuple[int, str]:
    """``astrid run --approve ask`` with a pseudo-terminal on stdin; ``keys`` are typed."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [str(ASTRID), "--config", str(config), "run", "--approve", "ask", prompt],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    os.close(slave)
    os.write(master, keys)
    deadline = time.monotonic() + 120
    try:
        while process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    os.read(master, 4096)  # the terminal's echo
                except OSError:
                    break
        out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return process.returncode, out + err


def test_open_runtime_offers_the_configured_servers_tools_under_approval(host: Host) -> None:
    handler = Handler(Approve())
    config = host.config(
        call("notes__add", text="milk"), call("notes__pid", "call_2"), answer("Noted.")
    )

    async def main() -> tuple[list[Any], int]:
        async with asyncio.timeout(90):
            async with open_runtime(config, approval_handler=handler) as runtime:
                names = [d.name for d in runtime.tool_definitions()]
                assert "notes__add" in names and "notes__list_notes" in names
                session = runtime.create_session()
                result = await runtime.run_turn(session, "note milk")
                assert result.text == "Noted."
                records = [(r.call.name, r.result.is_error, r.result.content)
                           for r in result.tool_calls]
                return records, int(records[1][2])

    records, pid = asyncio.run(main())
    assert records[0] == ("notes__add", False, "1 notes")
    assert [r.action for r in handler.requests] == [
        McpToolCall(server="notes", tool="add"), McpToolCall(server="notes", tool="pid")
    ]
    # The human sees the server, the mode and the server's (unverified) hints.
    assert handler.requests[0].context == (
        "MCP server notes (approval = ask), tool add; the server says: not read-only, "
        "not destructive (unverified)"
    )
    assert not process_alive(pid), "the server outlived the runtime"


def test_astrid_run_asks_on_the_terminal_and_a_later_run_honours_approve_always(
    host: Host,
) -> None:
    # 1. asked on the terminal, answered "a": approved always (a token in the SQLite store)
    config = host.config(call("notes__add", text="milk"), answer("Noted."))
    code, output = run_on_a_terminal(config, "note milk", b"a\n")
    assert code == 0, output
    assert "MCP tool call: notes/add" in output and "-> approved always" in output
    assert "[tool] notes__add" in output and "(error)" not in output
    # 2. another process under --approve policy: the stored token lets the same tool run
    config = host.config(call("notes__add", text="eggs"), answer("Noted again."))
    done = run_cli(config, "run", "--approve", "policy", "--json", "note eggs")
    assert done.returncode == 0, done.stderr
    [record] = json.loads(done.stdout)["tool_calls"]
    assert not record["is_error"] and record["result"] == "1 notes"
    # 3. a tool no grant covers is refused without asking anyone
    config = host.config(call("notes__list_notes"), answer("Could not."))
    done = run_cli(config, "run", "--approve", "policy", "--json", "list notes")
    assert done.returncode == 0, done.stderr
    [record] = json.loads(done.stdout)["tool_calls"]
    assert record["is_error"] and "was not run" in record["result"]


def test_astrid_run_under_approve_deny_never_reaches_the_server(host: Host) -> None:
    config = host.config(call("notes__add", text="milk"), answer("Sorry."))
    done = run_cli(config, "run", "--approve", "deny", "note milk")
    assert done.returncode == 0, done.stderr
    assert "MCP tool call: notes/add" in done.stdout and "denied" in done.stdout
    # A trusted server under the default policy runs without an approval, even under deny.
    config = host.config(call("notes__list_notes"), answer("Empty."),
                         server='approval = "trusted"\n')
    done = run_cli(config, "run", "--approve", "deny", "--json", "list notes")
    assert done.returncode == 0, done.stderr
    [record] = json.loads(done.stdout)["tool_calls"]
    assert (record["is_error"], record["result"]) == (False, "(no notes)")


def test_a_bad_mcp_table_is_one_line_naming_the_key(host: Host) -> None:
    config = host.config(answer("unused"), server="approval = \"sometimes\"\n")
    done = run_cli(config, "run", "--approve", "deny", "hi")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert "mcp.servers.notes.approval" in line
