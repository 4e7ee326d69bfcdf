"""A host on ``[llm] provider = "anthropic"`` through ``open_runtime``, against the fake server:
several turns with a tool call, an approval and a budget; and the key never leaks (logs at
DEBUG, the SQLite store, reprs, ``astrid config show``, error messages)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from anthropic_testkit import TEST_KEY
from astrid.cli import cli
from astrid.errors import AuthenticationFailed, BudgetExceeded, LLMError
from astrid.messages import MessageRole
from astrid.runtime import open_runtime
from astrid.security.approvals import ApprovalResponse, Approve
from astrid.security.deferred import ApprovalRequest
from astrid.testing.fake_llm import (
    FakeAnthropicServer,
    Tokens,
    ToolCallSpec,
    auth_failed,
    text_reply,
    tool_call_reply,
)
from click.testing import CliRunner

KEY_ENV = "ASTRID_TEST_ANTHROPIC_KEY"

CONFIG = """
[storage]
backend = "sqlite"

[llm]
provider = "anthropic"

[llm.options]
model = "claude-test"
base_url = "{base_url}"
api_key_env = "{key_env}"
max_retries = 0
timeout_s = 10

[budget]
session_max_usd = 3.35
per_action_max_usd = 2.0

[runtime]
workspace_root = "{workspace}"
system_prompt = "You are a careful assistant."

[pricing."claude-test"]
input_per_million = 100.0
output_per_million = 100.0
"""


class Approver:
    """A host approval handler that approves once and records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[ApprovalRequest] = []

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse:
        self.requests.append(request)
        return ApprovalResponse.new(request.id, Approve())

    def is_available(self) -> bool:
        return True


def write_config(tmp_path: Path, server: FakeAnthropicServer, monkeypatch: Any) -> Path:
    home, workspace = tmp_path / "home", tmp_path / "work"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("remember the milk\n")
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.setenv(KEY_ENV, TEST_KEY)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "astrid.toml"
    path.write_text(CONFIG.format(
        base_url=server.base_url, key_env=KEY_ENV, workspace=workspace
    ))
    return path


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_multi_turn_agent_with_a_tool_an_approval_and_a_budget(
    tmp_path: Path, server: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(tmp_path, server, monkeypatch)
    server.script(
        tool_call_reply(ToolCallSpec("toolu_r1", '{"path": "notes.txt"}', name="read_file"),
                        text="Let me read it.", usage=Tokens(10_000, 1_000)),
        text_reply("The note says: remember the milk.", pieces=3, usage=Tokens(10_000, 1_000)),
        text_reply("You asked about the note.", usage=Tokens(10_000, 1_000)),
    )
    approver = Approver()
    runtime = open_runtime(config, approval_handler=approver)
    with runtime:
        session = runtime.create_session()
        first = run(runtime.run_turn(session, "What does notes.txt say?"))
        assert first.text == "The note says: remember the milk."
        assert [record.call.name for record in first.tool_calls] == ["read_file"]
        assert first.tool_calls[0].result.content == "remember the milk\n"
        assert len(approver.requests) == 1
        assert first.cost_usd == pytest.approx(2.2)  # 2 calls x 11 000 tokens at $100/M

        second = run(runtime.run_turn(session, "What did I ask?"))
        assert second.text == "You asked about the note."
        assert session.budget_tracker.spent() == pytest.approx(3.3)

        # the next call's reservation would pass the session's $3.35: refused before sending
        sent = len(server.requests)
        with pytest.raises(BudgetExceeded, match="budget exceeded"):
            run(runtime.run_turn(session, "And again?"))
        assert len(server.requests) == sent

        loaded = runtime.store.load(session.id) if runtime.store else None
        assert loaded is not None
        assert loaded.budget_tracker.spent() == pytest.approx(3.3)
        roles = [m.role for m in loaded.messages]
        assert roles.count(MessageRole.TOOL) == 1

    bodies = [r.json() for r in server.requests_to("/v1/messages")]
    assert len(bodies) == 3 and server.pending == 0
    assert all(b["model"] == "claude-test" and b["stream"] is True for b in bodies)
    assert bodies[0]["system"] == [{"type": "text", "text": "You are a careful assistant."}]
    assert [t["name"] for t in bodies[0]["tools"]][:1] == ["read_file"]
    # the tool loop: the call and its result as the API wants them, the result first
    follow_up = bodies[1]["messages"]
    assert [m["role"] for m in follow_up] == ["user", "assistant", "user"]
    assert [b["type"] for b in follow_up[1]["content"]] == ["text", "tool_use"]
    assert follow_up[2]["content"] == [{
        "type": "tool_result", "tool_use_id": "toolu_r1", "content": "remember the milk\n",
    }]
    # the next turn: the whole history, roles alternating, the new question merged after
    history = bodies[2]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant", "user"]
    assert history[-1]["content"] == [{"type": "text", "text": "What did I ask?"}]


def test_the_key_never_leaks(
    tmp_path: Path, server: FakeAnthropicServer, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = write_config(tmp_path, server, monkeypatch)
    for name in ("", "anthropic", "httpx", "httpx2", "httpcore", "astrid", "astrid_anthropic"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    server.script(
        tool_call_reply(ToolCallSpec("toolu_k", '{"path": "notes.txt"}', name="read_file")),
        text_reply("done"),
    )
    runtime = open_runtime(config, approval_handler=Approver())
    seen: list[str] = [repr(runtime), repr(runtime.provider), repr(vars(runtime.provider))]
    with runtime:
        session = runtime.create_session()
        run(runtime.run_turn(session, "read the notes"))
        server.script(auth_failed())
        with pytest.raises((AuthenticationFailed, LLMError), match="401") as info:
            run(runtime.run_turn(session, "again"))
        seen += [str(info.value), repr(info.value), repr(info.value.__cause__)]
    # the key did reach the server, so a leak would have had something to leak
    assert server.requests[0].headers.get("authorization", "").endswith(TEST_KEY)
    assert any("HTTP Request" in r.getMessage() or "Request options" in r.getMessage()
               for r in caplog.records), "the SDK's DEBUG logs were not captured"
    logs = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert TEST_KEY not in logs
    store_files = list((tmp_path / "home").rglob("*"))
    assert any(p.name.startswith("astrid.db") for p in store_files)
    for path in store_files:
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path
    result = CliRunner().invoke(cli, ["--config", str(config), "config", "show"])
    assert result.exit_code == 0, result.output
    assert KEY_ENV in result.output
    shown = CliRunner().invoke(cli, ["--config", str(config), "config", "show", "--json"])
    assert shown.exit_code == 0
    for text in [*seen, result.output, shown.output]:
        assert TEST_KEY not in text


DOCS = Path(__file__).resolve().parents[3] / "docs" / "anthropic.md"


def test_the_documented_host_runs(tmp_path: Path, server: FakeAnthropicServer) -> None:
    """docs/anthropic.md's host (its TOML and Python, as printed) against the fake server."""
    import os
    import re
    import subprocess
    import sys

    blocks = re.findall(r"^```(\w+)\n(.*?)^```", DOCS.read_text(encoding="utf-8"),
                        re.DOTALL | re.MULTILINE)
    (toml,) = [body for lang, body in blocks if lang == "toml" and "[budget]" in body]
    (host,) = [body for lang, body in blocks if lang == "python" and "host.py" in body]
    toml = toml.replace("[llm.options]\n", f'[llm.options]\nbase_url = "{server.base_url}"\n')
    (tmp_path / "astrid.toml").write_text(toml)
    (tmp_path / "host.py").write_text(host)
    server.script(
        tool_call_reply(ToolCallSpec("toolu_1", '{"path": "notes.txt"}', name="read_file")),
        tool_call_reply(ToolCallSpec("toolu_2", '{"text": "buy milk, eggs and bread"}',
                                     name="word_count")),
        text_reply("The notes hold 5 words."),
        text_reply("Bread comes last."),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASTRID_", "ANTHROPIC_"))}
    env.update(ASTRID_HOME=str(tmp_path / "home"), ANTHROPIC_API_KEY=TEST_KEY)
    proc = subprocess.run(
        [sys.executable, "host.py"], cwd=tmp_path, env=env, input="y\n", capture_output=True,
        text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "The notes hold 5 words." in proc.stdout
    assert "(tools: read_file, word_count;" in proc.stdout
    assert "allow " in proc.stdout  # the approval was asked on the terminal
    assert "Bread comes last." in proc.stdout and "spent" in proc.stdout
    assert server.pending == 0
    assert TEST_KEY not in proc.stdout + proc.stderr
