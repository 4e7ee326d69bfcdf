"""Embedding astrid in a host application: config from TOML, an approval handler, resume.

Run with ``python examples/embedding.py``. It needs no network and no key (the ``scripted``
provider plays the model) and leaves nothing behind (everything lives in a temporary directory).
The host

1. writes an ``astrid.toml``: a SQLite store under a temporary astrid home, a $5 session
   budget, the runtime's system prompt and workspace, the model's prices, and the LLM provider
   (``scripted``, whose replies it reads from ``model-replies.json``; a real host names its
   provider plugin and its options here instead);
2. registers a tool, ``lookup_order``, through an in-process plugin object (the same
   ``register_tools`` hook an installed plugin would implement), enabled in ``[tools]``;
3. answers approval requests with its own handler class (``request_approval`` /
   ``is_available``);
4. builds the runtime (and its store) from the TOML with ``astrid.open_runtime``, runs
   two turns, then closes everything, as if the host process exited;
5. builds a **second** runtime from the same TOML, loads the session by id and runs a third turn
   on it: the transcript, the spend and the session approval given in turn 1 are all still
   there, so the handler is not asked again.

Inside the coroutine the host uses the store's async API (``aattach_workspace``, ``aload``,
``alist_sessions``, ``asave_workspace_of``), so no storage I/O runs on its event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from astrid import (
    AgentRuntime,
    ApprovalRequest,
    ApprovalResponse,
    ApproveSession,
    FunctionTool,
    LoadedConfig,
    SessionStore,
    ToolContext,
    TurnResult,
    hookimpl,
    load_config,
    open_runtime,
    register_plugin,
    unregister_plugin,
)

CONFIG_TOML = """\
# The host's astrid configuration (every key is optional; see docs/configuration.md).
[storage]
backend = "sqlite"

[storage.options]
path = "host-sessions.db"   # relative paths live under the astrid home

[tokens]
estimator = "content"

[git]
capture = "none"            # the workspace is not a git repository

[budget]
session_max_usd = 5.0
per_action_max_usd = 1.0
warn_at_percent = 80

[llm]
provider = "scripted"       # a real host names its provider plugin here

[llm.options]
script_file = "{replies}"
model = "scripted-1"

[tools]
enabled = ["read_file", "lookup_order"]   # a plugin's tool is offered only when listed

[runtime]
system_prompt = "You help with orders."
workspace_root = "{workspace}"
max_iterations = 8

[pricing."scripted-1"]
input_per_million = 1.0
output_per_million = 5.0
"""

ORDERS = {"A-17": "shipped on Monday", "B-42": "waiting for stock"}

# The model's side of the conversation, one list per LLM call.
FIRST_SCRIPT: list[list[dict[str, Any]]] = [
    # turn 1: read a file in the workspace (file reads need an approval)
    [
        {"tool_call": {"id": "c1", "name": "read_file", "arguments": {"path": "orders.txt"}}},
        {"usage": {"input_tokens": 200, "output_tokens": 20}},
    ],
    [
        {"text": "You have two open orders: A-17 and B-42."},
        {"usage": {"input_tokens": 260, "output_tokens": 15}},
    ],
    # turn 2: the host's own tool (no approval needed by the default policy)
    [
        {"tool_call": {"id": "c2", "name": "lookup_order", "arguments": {"order": "A-17"}}},
        {"usage": {"input_tokens": 300, "output_tokens": 20}},
    ],
    [
        {"text": "Order A-17 shipped on Monday."},
        {"usage": {"input_tokens": 340, "output_tokens": 12}},
    ],
]

RESUMED_SCRIPT: list[list[dict[str, Any]]] = [
    # turn 3, in the second runtime: the same read again (covered by turn 1's session approval)
    [
        {"tool_call": {"id": "c3", "name": "read_file", "arguments": {"path": "orders.txt"}}},
        {"tool_call": {"id": "c4", "name": "lookup_order", "arguments": {"order": "B-42"}}},
        {"usage": {"input_tokens": 380, "output_tokens": 25}},
    ],
    [
        {"text": "B-42 is still waiting for stock; A-17 has shipped."},
        {"usage": {"input_tokens": 450, "output_tokens": 14}},
    ],
]


class HostApprovals:
    """The host's approval handler: a real host would show a dialog; this one approves reads.

    ``request_approval`` returns an ``ApprovalResponse`` (or None to defer the action);
    ``is_available`` says whether anyone is there to ask.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked: list[str] = []

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        """Approve the action for the rest of the session."""
        summary = request.action.summary()
        self.asked.append(summary)
        print(f"  [{self.name}] approval asked: {summary} -> approved for the session")
        return ApprovalResponse.new(request.id, ApproveSession())

    def is_available(self) -> bool:
        """The user is at the keyboard."""
        return True


def lookup_order(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """The host's tool: the status of one order."""
    order = str(arguments.get("order", ""))
    return f"order {order}: {ORDERS.get(order, 'unknown order')}"


class HostTools:
    """An in-process plugin object: registers the host's tools like an installed plugin would."""

    @hookimpl
    def register_tools(self, register: Any) -> None:
        """Register ``lookup_order``."""
        register(
            "lookup_order",
            lambda options, context: FunctionTool(
                "lookup_order",
                "Look up the status of an order by its id.",
                {
                    "type": "object",
                    "properties": {"order": {"type": "string"}},
                    "required": ["order"],
                },
                lookup_order,
            ),
            description="The host's order lookup.",
        )


def show_calls(result: TurnResult) -> None:
    """One line per tool call of a turn: the call and what the model got back."""
    for record in result.tool_calls:
        flag = "error" if record.result.is_error else "ok"
        output = " ".join(record.result.content.split())
        print(f"  {record.call.name}({record.call.arguments}) -> {flag}: {output}")


def start_runtime(
    loaded: LoadedConfig, handler: HostApprovals
) -> tuple[AgentRuntime, SessionStore]:
    """The runtime the TOML describes (provider, store, limits, prices) with the host's handler."""
    runtime = open_runtime(loaded, approval_handler=handler)
    assert runtime.store is not None  # open_runtime always opens the configured store
    return runtime, runtime.store


async def run(tmp: Path) -> None:
    home = tmp / "astrid-home"
    workspace = tmp / "workspace"
    workspace.mkdir()
    (workspace / "orders.txt").write_text("A-17\nB-42\n", encoding="utf-8")
    replies = tmp / "model-replies.json"
    config_path = tmp / "astrid.toml"
    config_path.write_text(
        CONFIG_TOML.format(replies=replies, workspace=workspace), encoding="utf-8"
    )
    os.environ["ASTRID_HOME"] = str(home)  # the host decides where astrid keeps its files

    loaded = load_config(config_path)
    cfg = loaded.config
    print(f"config: {loaded.where}")
    print(f"  storage {cfg.storage.backend} {cfg.storage.options}, "
          f"session budget ${cfg.budget.session_max_usd:.2f}, llm {cfg.llm.provider}, "
          f"{len(cfg.pricing)} priced model(s)")

    # -- the first run of the host --------------------------------------------------------
    replies.write_text(json.dumps(FIRST_SCRIPT), encoding="utf-8")
    first_handler = HostApprovals("first run")
    runtime, store = start_runtime(loaded, first_handler)
    with store:
        print(f"tools: {', '.join(sorted(runtime.tools))}")
        session = runtime.create_session()
        await store.aattach_workspace(session, workspace)
        session_id = session.id.bare
        print(f"session {session_id}")
        for number, prompt in enumerate(("Which orders are open?", "Where is A-17?"), start=1):
            result = await runtime.run_turn(session, prompt)
            print(f"turn {number}: {result.text!r} (${result.cost_usd:.6f})")
            show_calls(result)
        spent_before = session.budget_tracker.spent()
        messages_before = len(session.messages)
        await store.asave_workspace_of(session)
    print(f"first run done: {messages_before} messages, ${spent_before:.6f} spent, "
          f"{len(first_handler.asked)} approval(s) asked")

    # -- a later run: a new store and runtime from the same TOML, the session resumed --------
    replies.write_text(json.dumps(RESUMED_SCRIPT), encoding="utf-8")
    second_handler = HostApprovals("second run")
    runtime, store = start_runtime(load_config(config_path), second_handler)
    with store:
        listed = await store.alist_sessions()
        print(f"stored sessions: {[(s.id[:8], s.message_count) for s in listed]}")
        resumed = await store.aload(session_id)
        assert resumed is not None, "the session was saved by the first run"
        await store.aattach_workspace(resumed, workspace)
        print(f"resumed {resumed.id.bare}: {len(resumed.messages)} messages, "
              f"${resumed.budget_tracker.spent():.6f} spent, "
              f"budget limit ${resumed.budget_tracker.config().session_max_usd:.2f}")
        result = await runtime.run_turn(resumed, "Any news on B-42?")
        print(f"turn 3: {result.text!r} (${result.cost_usd:.6f})")
        show_calls(result)
        print(f"approvals asked in the second run: {len(second_handler.asked)} "
              "(turn 1's session approval was saved with the session)")
        final = await store.aload(session_id)
        assert final is not None
        print(f"stored: {len(final.messages)} messages, {final.metadata.turn_count} turns, "
              f"{final.metadata.tool_call_count} tool calls, "
              f"${final.budget_tracker.spent():.6f} spent, "
              f"{final.metadata.approval_count} approval(s) recorded")


def main() -> None:
    previous_home = os.environ.get("ASTRID_HOME")
    register_plugin(HostTools(), name="embedding-host")
    try:
        with tempfile.TemporaryDirectory(prefix="astrid-embedding-") as tmp:
            asyncio.run(run(Path(tmp).resolve()))
    finally:
        unregister_plugin("embedding-host")
        if previous_home is None:
            os.environ.pop("ASTRID_HOME", None)
        else:
            os.environ["ASTRID_HOME"] = previous_home


if __name__ == "__main__":
    main()
