"""A runnable host: an approval handler, a host tool, a scripted conversation, a SQLite store.

Run with ``python examples/host.py``. It needs no network and no key: the ``scripted`` provider
replays the model's side. The host

* registers an approval handler (it prints each request and approves it for the session),
* adds its own tool, ``word_count``, next to the built-ins,
* runs two turns against a SQLite store in a temporary directory,
* prints the transcript, the cost and what the store kept.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.messages import Message
from astrid.runtime import AgentRuntime, RuntimeConfig
from astrid.security.approvals import ApprovalResponse, ApproveSession
from astrid.security.deferred import ApprovalRequest
from astrid.store import SessionStore
from astrid.tools import FunctionTool, ToolContext

SCRIPT: list[list[dict[str, Any]]] = [
    # Turn 1: the model reads a file (needs approval), then counts its words with the host tool.
    [
        {"text": "Let me read the notes first."},
        {"tool_call": {"id": "call_1", "name": "read_file", "arguments": {"path": "notes.txt"}}},
        {"usage": {"input_tokens": 120, "output_tokens": 30}},
    ],
    [
        {"tool_call": {"id": "call_2", "name": "word_count",
                       "arguments": {"text": "buy milk, eggs and bread"}}},
        {"usage": {"input_tokens": 180, "output_tokens": 20}},
    ],
    [
        {"text": "The notes list 5 words: buy milk, eggs and bread."},
        {"usage": {"input_tokens": 220, "output_tokens": 25}},
    ],
    # Turn 2: the same read again; the session approval covers it, so nobody is asked.
    [
        {"tool_call": {"id": "call_3", "name": "read_file", "arguments": {"path": "notes.txt"}}},
        {"usage": {"input_tokens": 260, "output_tokens": 15}},
    ],
    [
        {"text": "Still the same shopping list."},
        {"usage": {"input_tokens": 300, "output_tokens": 10}},
    ],
]


class ConsoleApprovals:
    """Prints every approval request and approves it for the rest of the session."""

    def __init__(self) -> None:
        self.asked = 0

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        """Approve for the session (a real host would ask the user here)."""
        self.asked += 1
        print(f"[approval] {request.action.summary()} ({request.context}) -> approve for session")
        return ApprovalResponse.new(request.id, ApproveSession())

    def is_available(self) -> bool:
        """Always reachable."""
        return True


def count_words(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """The host tool: count the words of ``text``."""
    words = str(arguments.get("text", "")).split()
    return f"{len(words)} words"


WORD_COUNT = FunctionTool(
    "word_count",
    "Count the words in a text.",
    {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    count_words,
)


def render(message: Message) -> str:
    """One transcript line."""
    role = message.role.value if hasattr(message.role, "value") else str(message.role)
    calls = message.tool_calls()
    result = message.tool_result_content()
    if calls is not None:
        body = ", ".join(f"{c.name}({c.arguments})" for c in calls)
        return f"{role:>9}: [calls] {body}"
    if result is not None:
        flag = "error" if result.is_error else "result"
        return f"{role:>9}: [{flag}] {result.content.strip()}"
    return f"{role:>9}: {message.text()}"


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "workspace"
        workspace.mkdir()
        (workspace / "notes.txt").write_text("buy milk, eggs and bread\n")

        store = SessionStore(SqliteBackend(Path(tmp) / "sessions.db"))
        approvals = ConsoleApprovals()
        runtime = AgentRuntime(
            ScriptedProvider(SCRIPT),
            store=store,
            config=RuntimeConfig(workspace=workspace),
            approval_handler=approvals,
        )
        runtime.add_tool(WORD_COUNT)  # a host tool next to the built-ins

        session = runtime.create_session("You are a helpful assistant.")
        total = 0.0
        for prompt in ("What is in notes.txt?", "Read it once more."):
            result = await runtime.run_turn(session, prompt)
            total += result.cost_usd
            print(f"turn: {len(result.tool_calls)} tool call(s), {result.iterations} LLM call(s), "
                  f"${result.cost_usd:.6f}")

        print("\ntranscript:")
        for message in session.messages:
            print(render(message))

        reloaded = store.load(session.id)
        assert reloaded is not None
        print(f"\napprovals asked: {approvals.asked}; recorded: {session.metadata.approval_count}")
        print(f"spent ${total:.6f}; session budget left ${session.budget_tracker.remaining():.2f}")
        print(f"reloaded {session.id.bare}: {len(reloaded.messages)} messages, "
              f"{reloaded.metadata.tool_call_count} tool calls")
        store.close()


if __name__ == "__main__":
    asyncio.run(main())
