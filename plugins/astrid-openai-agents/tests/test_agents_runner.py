"""Real ``Runner.run`` conversations through the fake server, stored by ``AstridSession``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool
from astrid.errors import BudgetExceeded
from astrid.runtime import RuntimeConfig
from astrid.store import SessionStore
from astrid.testing.fake_llm import (
    FakeOpenAIServer,
    Tokens,
    ToolCallSpec,
    text_reply,
    tool_call_reply,
)

from astrid_openai_agents import AstridBudgetHooks, AstridSession


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"18 C and clear in {city}"


PRICES = RuntimeConfig(builtin_prices=False)
"""astrid's default prices ($3 per million input tokens), whatever genai-prices says."""


def _user_texts(request: Any) -> list[str]:
    return [m["content"] for m in request.json()["messages"] if m["role"] == "user"]


def test_two_runs_resumed_from_a_reopened_store(
    server: FakeOpenAIServer,
    model: OpenAIChatCompletionsModel,
    open_sqlite: Callable[..., SessionStore],
) -> None:
    server.script(
        tool_call_reply(ToolCallSpec("call_1", json.dumps({"city": "Paris"}), "get_weather")),
        text_reply("It is 18 C and clear in Paris."),
        text_reply("Yes, take sunglasses."),
    )
    agent = Agent(name="weather", instructions="Be brief.", model=model, tools=[get_weather])

    async def first() -> list[Any]:
        with open_sqlite() as store:
            session = AstridSession("trip-1", store)
            result = await Runner.run(agent, "Weather in Paris?", session=session)
            assert result.final_output == "It is 18 C and clear in Paris."
            return await session.get_items()

    async def both() -> tuple[list[Any], list[Any]]:
        items = await first()
        return items, await second(items)

    async def second(items: list[Any]) -> list[Any]:
        with open_sqlite() as store:  # a restart: a new backend over the same file
            session = AstridSession("trip-1", store)
            assert await session.get_items() == items
            result = await Runner.run(agent, "Sunglasses?", session=session)
            assert result.final_output == "Yes, take sunglasses."
            return await session.get_items()

    items, after = asyncio.run(both())
    types = [item.get("type", "message") for item in items]
    assert "function_call" in types and "function_call_output" in types
    assert after[: len(items)] == items
    assert after[len(items)] == {"content": "Sunglasses?", "role": "user"}
    # The third request carried the whole stored conversation to the model.
    last = server.requests[-1].json()["messages"]
    assert _user_texts(server.requests[-1]) == ["Weather in Paris?", "Sunglasses?"]
    assert any(m["role"] == "tool" for m in last)
    with open_sqlite() as store:
        row = store.list_sessions()[0]
        assert row.title == "Weather in Paris?"
        assert row.message_count == len(after)


def test_budget_guard_refuses_a_run_over_budget(
    server: FakeOpenAIServer,
    model: OpenAIChatCompletionsModel,
    open_sqlite: Callable[..., SessionStore],
) -> None:
    # 1M input tokens at the default $3/M: each call costs $3; the session may spend $5.
    big = Tokens(1_000_000, 0)
    server.script(text_reply("one", usage=big), text_reply("two", usage=big))
    agent = Agent(name="a", model=model)

    async def run(prompt: str) -> str:
        with open_sqlite(session_max_usd=5.0) as store:
            session = AstridSession("budgeted", store)
            hooks = AstridBudgetHooks(session, pricing=PRICES)
            result = await Runner.run(agent, prompt, session=session, hooks=hooks)
            return str(result.final_output)

    async def runs() -> None:
        assert await run("first") == "one"
        assert await run("second") == "two"  # $3 spent < $5: allowed, now $6
        with pytest.raises(BudgetExceeded, match=r"budgeted.*agent 'a' is refused"):
            await run("third")  # a restart: the stored spend refuses it

    asyncio.run(runs())
    assert len(server.requests) == 2  # the refused call never reached the server
    with open_sqlite() as store:
        stored = store.load(AstridSession("budgeted", store).astrid_id)
        assert stored is not None
        assert stored.budget_tracker.spent() == pytest.approx(6.0)
        assert store.keeps_ledger  # SQLite keeps the spend ledger: one row per model call
        rows = store.list_ledger(session_id=stored.id)
        assert [r.provider for r in rows] == ["openai-agents"] * 2
        assert [r.input_tokens for r in rows] == [1_000_000] * 2
        assert [float(r.cost_usd) for r in rows] == [3.0, 3.0]


def test_budget_spans_agents_as_tools_and_the_workspace(
    server: FakeOpenAIServer,
    model: OpenAIChatCompletionsModel,
    open_sqlite: Callable[..., SessionStore],
    tmp_path: Any,
) -> None:
    cost = Tokens(1_000_000, 0)  # $3 a call
    server.script(
        tool_call_reply(
            ToolCallSpec("c1", json.dumps({"input": "Paris"}), "ask_expert"), usage=cost
        ),
        text_reply("expert says sunny", usage=cost),
        text_reply("sunny", usage=cost),
    )
    with open_sqlite() as store:
        session = AstridSession("manager", store)
        hooks = AstridBudgetHooks(
            session, workspace=tmp_path, workspace_max_usd=8.0, pricing=PRICES
        )
        expert = Agent(name="expert", model=model)
        manager = Agent(
            name="manager",
            model=model,
            tools=[expert.as_tool(tool_name="ask_expert", tool_description="ask", hooks=hooks)],
        )
        other = AstridSession("other", store)
        guard = AstridBudgetHooks(other, workspace=tmp_path, workspace_max_usd=8.0, pricing=PRICES)

        async def runs() -> None:
            result = await Runner.run(manager, "weather?", session=session, hooks=hooks)
            assert result.final_output == "sunny"
            # $9 spent of the workspace's $8: another session of the workspace is refused.
            with pytest.raises(BudgetExceeded, match="workspace"):
                await Runner.run(Agent(name="b", model=model), "hi", session=other, hooks=guard)

        asyncio.run(runs())
        stored = store.load(session.astrid_id)
        assert stored is not None and stored.budget_tracker.spent() == pytest.approx(9.0)
        assert store.load_workspace_state(tmp_path).budget is not None
        assert store.load_workspace_state(tmp_path).budget.total_spent_usd == pytest.approx(9.0)
    assert len(server.requests) == 3


def test_budget_spans_a_handoff(
    server: FakeOpenAIServer,
    model: OpenAIChatCompletionsModel,
    open_sqlite: Callable[..., SessionStore],
) -> None:
    cost = Tokens(1_000_000, 0)  # $3 a call
    server.script(
        tool_call_reply(ToolCallSpec("h1", "{}", "transfer_to_billing"), usage=cost),
        text_reply("billing here", usage=cost),
        text_reply("never sent", usage=cost),
    )
    billing = Agent(name="billing", model=model)
    triage = Agent(name="triage", model=model, handoffs=[billing])

    async def runs() -> None:
        with open_sqlite(session_max_usd=5.0) as store:
            session = AstridSession("handoff", store)
            hooks = AstridBudgetHooks(session, pricing=PRICES)
            result = await Runner.run(triage, "refund?", session=session, hooks=hooks)
            assert result.final_output == "billing here"
            assert result.last_agent.name == "billing"
            stored = store.load(session.astrid_id)
            assert stored is not None and stored.budget_tracker.spent() == pytest.approx(6.0)
            kinds = [r.kind for r in store.list_ledger(session_id=stored.id)]
            assert kinds == ["turn", "subagent_turn"]
            with pytest.raises(BudgetExceeded, match="agent 'triage' is refused"):
                await Runner.run(triage, "again?", session=session, hooks=hooks)

    asyncio.run(runs())
    assert len(server.requests) == 2
