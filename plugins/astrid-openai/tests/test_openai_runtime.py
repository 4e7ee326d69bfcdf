"""A host's multi-turn agent through ``open_runtime`` with ``[llm] provider = "openai"``.

Real parts only: the TOML file, the SQLite store, the workspace directory, the built-in
``read_file`` tool behind an approval, the budget, and the fake server on a loopback socket.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from astrid.errors import BudgetExceeded
from astrid.messages import MessageRole
from astrid.runtime import open_runtime
from astrid.security.approvals import ApprovalResponse, ApproveSession
from astrid.security.deferred import ApprovalRequest
from astrid.testing.fake_llm import FakeOpenAIServer, Tokens, ToolCallSpec, text_reply
from astrid.testing.fake_llm import tool_call_reply as calls

KEY_ENV = "ASTRID_TEST_OPENAI_KEY"

CONFIG = """
[storage]
backend = "sqlite"

[llm]
provider = "openai"

[llm.options]
model = "fake-model"
base_url = "{base_url}"
api_key_env = "{key_env}"
max_retries = 0

[budget]
session_max_usd = 5.0

[runtime]
workspace_root = "{workspace}"
system_prompt = "You are a careful assistant."
estimated_output_tokens = 1000

[pricing."fake-model"]
input_per_million = 1000.0
output_per_million = 2000.0
"""


class Approvals:
    """Approves every request for the session and counts the requests."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        self.asked.append(request.action.summary())
        return ApprovalResponse.new(request.id, ApproveSession())

    def is_available(self) -> bool:
        return True


def test_multi_turn_agent_with_a_tool_call_an_approval_and_a_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeOpenAIServer, api_key: str
) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("buy milk\n")
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.setenv(KEY_ENV, api_key)
    config = tmp_path / "astrid.toml"
    config.write_text(
        CONFIG.format(base_url=server.base_url, key_env=KEY_ENV, workspace=workspace)
    )
    usage = Tokens(1000, 100)  # $1.00 input + $0.20 output per call at the prices above
    server.script(
        calls(ToolCallSpec("call_1", '{"path": "notes.txt"}', name="read_file"), usage=usage),
        text_reply("The notes say: buy milk.", pieces=4, usage=usage),
        text_reply("You are welcome.", usage=usage),
    )
    approvals = Approvals()
    runtime = open_runtime(config, approval_handler=approvals)
    assert runtime.provider.name == "openai"
    assert runtime.store is not None
    session = runtime.store.new_session("You are a careful assistant.")

    first = asyncio.run(runtime.run_turn(session, "What is in notes.txt?"))
    assert first.text == "The notes say: buy milk."
    assert len(approvals.asked) == 1  # reading the file needed an approval
    assert first.cost_usd == pytest.approx(2.4)

    second = asyncio.run(runtime.run_turn(session, "Thanks!"))  # a new event loop: new client
    assert second.text == "You are welcome."
    assert session.budget_tracker.spent() == pytest.approx(3.6)

    # the third request's body carries the whole conversation in Chat Completions form
    body = server.requests[2].json()
    roles = [(m["role"], m.get("tool_call_id")) for m in body["messages"]]
    assert roles == [
        ("system", None),
        ("user", None),
        ("assistant", None),
        ("tool", "call_1"),
        ("assistant", None),
        ("user", None),
    ]
    assert body["messages"][0]["content"] == "You are a careful assistant."
    assert body["messages"][2]["tool_calls"][0]["function"] == {
        "name": "read_file",
        "arguments": '{"path":"notes.txt"}',
    }
    assert "buy milk" in body["messages"][3]["content"]
    assert {t["function"]["name"] for t in body["tools"]} >= {"read_file"}

    # $3.60 spent of $5: the next call's reservation (about $2) does not fit; nothing is sent
    with pytest.raises(BudgetExceeded, match="budget exceeded"):
        asyncio.run(runtime.run_turn(session, "One more?"))
    assert len(server.requests) == 3 and server.pending == 0

    reloaded = runtime.store.load(session.id)
    assert reloaded is not None
    answers = [m.text() for m in reloaded.messages if m.role == MessageRole.ASSISTANT and m.text()]
    assert answers == ["The notes say: buy milk.", "You are welcome."]
    assert reloaded.budget_tracker.spent() == pytest.approx(3.6)
    runtime.close()
