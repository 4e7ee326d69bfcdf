"""A host on a real model: ``[llm] provider = "openai"`` against any OpenAI-compatible server.

    OPENAI_API_KEY=sk-... python openai_host.py --model gpt-4.1-mini
    OPENAI_API_KEY=ollama python openai_host.py --base-url http://127.0.0.1:11434/v1 --model qwen3
    python openai_host.py --fake          # offline: astrid's loopback fake server plays the model

It writes an ``astrid.toml`` (SQLite store, the ``openai`` provider, a budget, prices) in a
temporary home, opens the runtime from it with an approval handler and a host tool, and runs
two turns in which the model may read a file (asking for approval) and count its words.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from astrid.errors import AstridError
from astrid.runtime import open_runtime
from astrid.security.approvals import ApprovalResponse, ApproveSession
from astrid.security.deferred import ApprovalRequest
from astrid.tools import FunctionTool, ToolContext

CONFIG = """
[storage]
backend = "sqlite"

[llm]
provider = "openai"

[llm.options]
model = {model}
base_url = {base_url}
api_key_env = "OPENAI_API_KEY"
max_output_tokens = 1024
timeout_s = 120

[budget]
session_max_usd = 0.50

[runtime]
workspace_root = {workspace}
system_prompt = "You are a concise assistant. Use the tools to answer about files."

[pricing.{model}]
input_per_million = 0.40
output_per_million = 1.60
"""


class AskOnce:
    """Approves each request for the rest of the session (a real host asks its user here)."""

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        print(f"[approval] {request.action.summary()} -> approved for this session")
        return ApprovalResponse.new(request.id, ApproveSession())

    def is_available(self) -> bool:
        return True


def count_words(arguments: dict[str, Any], ctx: ToolContext) -> str:
    """The host's own tool."""
    return f"{len(str(arguments.get('text', '')).split())} words"


WORD_COUNT = FunctionTool(
    "word_count",
    "Count the words in a text.",
    {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    count_words,
)


@contextlib.contextmanager
def fake_model() -> Iterator[str]:
    """astrid's loopback fake Chat Completions server, scripted like a model; its base_url."""
    from astrid.testing.fake_llm import FakeOpenAIServer, Tokens, ToolCallSpec, text_reply
    from astrid.testing.fake_llm import tool_call_reply as calls

    used = Tokens(900, 60)
    with FakeOpenAIServer(api_key=os.environ["OPENAI_API_KEY"]) as server:
        server.script(
            calls(ToolCallSpec("call_1", '{"path": "notes.txt"}', name="read_file"), usage=used),
            calls(ToolCallSpec("call_2", '{"text": "buy milk, eggs and bread"}'), usage=used),
            text_reply("notes.txt is a shopping list of 5 words.", pieces=5, usage=used),
            text_reply("Milk, eggs and bread.", usage=used),
        )
        yield server.base_url


async def run(config: Path) -> None:
    runtime = open_runtime(config, approval_handler=AskOnce())
    runtime.add_tool(WORD_COUNT)
    with runtime:
        assert runtime.store is not None
        session = runtime.store.new_session(runtime.config.system_prompt)
        for prompt in ("What is in notes.txt, and how many words?", "List the items."):
            result = await runtime.run_turn(session, prompt)
            print(f"> {prompt}\n{result.text}")
            print(f"  ({len(result.tool_calls)} tool call(s), ${result.cost_usd:.6f})")
        print(f"spent ${session.budget_tracker.spent():.6f} of $0.50")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="https://api.openai.com/v1")
    parser.add_argument("--model", default="gpt-4.1-mini")
    parser.add_argument("--fake", action="store_true", help="run offline against a fake server")
    args = parser.parse_args()
    if args.fake:
        os.environ.setdefault("OPENAI_API_KEY", "sk-fake-server-key")
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        base_url = stack.enter_context(fake_model()) if args.fake else args.base_url
        workspace = Path(tmp) / "workspace"
        workspace.mkdir()
        (workspace / "notes.txt").write_text("buy milk, eggs and bread\n")
        os.environ["ASTRID_HOME"] = str(Path(tmp) / "home")
        config = Path(tmp) / "astrid.toml"
        config.write_text(
            CONFIG.format(
                model=json.dumps("fake-model" if args.fake else args.model),
                base_url=json.dumps(base_url),
                workspace=json.dumps(str(workspace)),
            )
        )
        try:
            asyncio.run(run(config))
        except AstridError as exc:  # a missing key, a refused key, a budget: one line
            raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
