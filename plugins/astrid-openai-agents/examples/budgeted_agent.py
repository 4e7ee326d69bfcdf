"""An OpenAI Agents SDK agent whose conversation and budget live in astrid's SQLite store.

Two runs, the second in a reopened store, continue one conversation; the budget hooks charge
each response and refuse the third run once the session's $5 is spent. The model is the
loopback fake server of ``astrid.testing`` (no key, no internet); point ``AsyncOpenAI`` at a
real endpoint to use a real model.

Run: ``python examples/budgeted_agent.py [DIRECTORY]``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from agents import Agent, OpenAIChatCompletionsModel, Runner, set_tracing_disabled
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import BudgetExceeded
from astrid.runtime import RuntimeConfig
from astrid.security.budget import BudgetConfig
from astrid.store import SessionStore
from astrid.testing.fake_llm import FakeOpenAIServer, Tokens, text_reply
from openai import AsyncOpenAI

from astrid_openai_agents import AstridBudgetHooks, AstridSession

set_tracing_disabled(True)  # the SDK would export traces to the vendor


def open_store(directory: Path) -> SessionStore:
    """astrid's SQLite store; new sessions may spend $5 (per call too)."""
    return SessionStore(SqliteBackend(directory / "astrid.db"), budget=BudgetConfig.new(5.0, 5.0))


async def turn(directory: Path, agent: Agent[None], prompt: str) -> str:
    """One run in a freshly opened store (as after a restart)."""
    with open_store(directory) as store:
        session = AstridSession("support-7", store)
        hooks = AstridBudgetHooks(session, pricing=RuntimeConfig(builtin_prices=False))
        result = await Runner.run(agent, prompt, session=session, hooks=hooks)
        return str(result.final_output)


async def main(directory: Path) -> None:
    with FakeOpenAIServer(api_key="test") as server:
        million = Tokens(1_000_000, 0)  # $3 a call at astrid's default prices
        server.script(text_reply("Hello!", usage=million), text_reply("Still here.", usage=million))
        client = AsyncOpenAI(base_url=server.base_url, api_key="test")
        model = OpenAIChatCompletionsModel(model="gpt-4.1-mini", openai_client=client)
        agent = Agent(name="support", instructions="Be brief.", model=model)

        print("run 1:", await turn(directory, agent, "Hi"))
        print("run 2:", await turn(directory, agent, "Are you there?"))
        try:
            await turn(directory, agent, "One more?")
        except BudgetExceeded as exc:
            print("run 3 refused:", exc)
        with open_store(directory) as store:
            for row in store.list_sessions():
                print("astrid sessions list:", row.display_title(), f"({row.message_count} items)")
            items = await AstridSession("support-7", store).get_items()
            print("items:", [item.get("role", item.get("type")) for item in items])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(Path(sys.argv[1])))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(Path(tmp)))
