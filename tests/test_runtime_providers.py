"""The runtime against real providers: the version-2 protocol and budgets a provider cannot fool.

Real parts: the ``astrid-openai`` and ``astrid-anthropic`` plugins (installed in the venv) on
loopback fake servers from ``astrid.testing.fake_llm`` (real sockets, real SSE), the runtime
built by ``open_runtime`` from a TOML file, the SQLite store; the scripted provider (protocol 1)
where the provider does not matter.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytest

from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.errors import AuthenticationFailed, BudgetExceeded, LLMError
from astrid.llm import (
    CallSettings,
    Completion,
    Done,
    StreamEvent,
    TextDelta,
    ToolDefinition,
    Usage,
)
from astrid.messages import Message
from astrid.runtime import AgentRuntime, ModelPricing, RuntimeConfig, open_runtime
from astrid.security.budget import BudgetConfig
from astrid.store import SessionStore
from astrid.testing.fake_llm import (
    FakeAnthropicServer,
    FakeLLMServer,
    FakeOpenAIServer,
    Tokens,
    ToolCallSpec,
    auth_failed,
    text_reply,
    tool_call_reply,
)
from astrid.tools import FunctionTool

KEY_ENV = "ASTRID_TEST_PROVIDER_KEY"

CONFIG = """
[storage]
backend = "sqlite"

[llm]
provider = "{provider}"

[llm.options]
model = "provider-default-model"
base_url = "{base_url}"
api_key_env = "{key_env}"
max_retries = 0

[budget]
session_max_usd = {session_max}

[runtime]
workspace_root = "{workspace}"
estimated_output_tokens = 100
{runtime_extra}

{pricing}
"""

SESSION_PRICING = """
[pricing."session-model"]
input_per_million = 1000.0
output_per_million = 2000.0
cache_read_per_million = 100.0
cache_write_per_million = 1250.0
"""

Wire = Literal["openai", "anthropic"]


@pytest.fixture
def api_key() -> str:
    return f"sk-test-{secrets.token_hex(16)}"


@pytest.fixture(params=["openai", "anthropic"])
def wire(request: pytest.FixtureRequest) -> Wire:
    value: Wire = request.param
    return value


@pytest.fixture
def server(wire: Wire, api_key: str) -> Iterator[FakeLLMServer]:
    fake: FakeLLMServer = (
        FakeOpenAIServer(api_key=api_key, io_timeout_s=10.0)
        if wire == "openai"
        else FakeAnthropicServer(api_key=api_key, io_timeout_s=10.0)
    )
    with fake:
        yield fake


def runtime_for(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    wire: Wire,
    server: FakeLLMServer,
    api_key: str,
    *,
    pricing: str = SESSION_PRICING,
    session_max: float = 100.0,
    runtime_extra: str = "",
    tools: Sequence[FunctionTool] = (),
) -> AgentRuntime:
    """A runtime from a TOML file naming the plugin ``wire`` and the fake server."""
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    monkeypatch.setenv("ASTRID_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.setenv(KEY_ENV, api_key)
    config = tmp_path / "astrid.toml"
    config.write_text(
        CONFIG.format(
            provider=wire,
            base_url=server.base_url,
            key_env=KEY_ENV,
            workspace=workspace,
            session_max=session_max,
            runtime_extra=runtime_extra,
            pricing=pricing,
        )
    )
    return open_runtime(config, tools=list(tools))


def echo_tool(seen: list[dict[str, Any]]) -> FunctionTool:
    def echo(args: dict[str, Any], ctx: Any) -> str:
        seen.append(args)
        return f"echo: {args.get('text', '')}"

    return FunctionTool(
        "echo",
        "Echo the text back.",
        {"type": "object", "properties": {"text": {"type": "string"}}},
        echo,
    )


def test_the_model_sent_is_the_sessions_model_and_the_one_priced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wire: Wire, server: FakeLLMServer,
    api_key: str,
) -> None:
    runtime = runtime_for(tmp_path, monkeypatch, wire, server, api_key)
    assert runtime.store is not None
    session = runtime.store.new_session("Be brief.").with_model("session-model")
    server.script(text_reply("hi", usage=Tokens(1000, 100)))
    result = asyncio.run(runtime.run_turn(session, "hello"))
    assert result.text == "hi"
    assert server.requests[0].json()["model"] == "session-model"
    # priced as session-model ($1000 / $2000 per million), not the provider's default model
    assert result.cost_usd == pytest.approx(1.0 + 0.2)
    runtime.close()


def test_a_server_without_usage_is_charged_the_reservation_not_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wire: Wire, server: FakeLLMServer,
    api_key: str,
) -> None:
    runtime = runtime_for(tmp_path, monkeypatch, wire, server, api_key)
    assert runtime.store is not None
    session = runtime.store.new_session("Be brief.").with_model("session-model")
    server.script(text_reply("free lunch?", usage=None))
    result = asyncio.run(runtime.run_turn(session, "hello"))
    assert result.text == "free lunch?"
    assert result.cost_usd > 0
    assert any(
        f"usage not reported by {wire}; charged the reservation" in n for n in result.notices
    )
    runtime.close()
    # what the store holds, read by another runtime on the same files
    again = runtime_for(tmp_path, monkeypatch, wire, server, api_key)
    assert again.store is not None
    loaded = again.store.load(session.id)
    assert loaded is not None
    assert loaded.budget_tracker.spent() == pytest.approx(result.cost_usd)
    assert loaded.budget_tracker.spent() > 0
    again.close()


def test_cache_reads_and_writes_are_priced_at_their_rates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wire: Wire, server: FakeLLMServer,
    api_key: str,
) -> None:
    runtime = runtime_for(tmp_path, monkeypatch, wire, server, api_key)
    assert runtime.store is not None
    session = runtime.store.new_session("Be brief.").with_model("session-model")
    cache_write = 100 if wire == "anthropic" else 0  # Chat Completions reports no cache writes
    server.script(text_reply("hi", usage=Tokens(1000, 10, cache_read=800, cache_write=cache_write)))
    result = asyncio.run(runtime.run_turn(session, "hello"))
    plain = 1000 - 800 - cache_write
    expected = (plain * 1000.0 + 800 * 100.0 + cache_write * 1250.0 + 10 * 2000.0) / 1e6
    assert result.cost_usd == pytest.approx(expected)
    assert result.usage.cache_read_tokens == 800
    runtime.close()


def test_an_unlisted_model_is_priced_by_the_default_with_a_one_time_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wire: Wire, server: FakeLLMServer,
    api_key: str,
) -> None:
    model = f"unlisted-{uuid.uuid4().hex}"  # known to no price source, new to this process
    pricing = "[pricing.default]\ninput_per_million = 50.0\noutput_per_million = 70.0\n"
    runtime = runtime_for(tmp_path, monkeypatch, wire, server, api_key, pricing=pricing)
    assert runtime.store is not None
    session = runtime.store.new_session("Be brief.").with_model(model)
    server.script(
        text_reply("one", usage=Tokens(1000, 100)), text_reply("two", usage=Tokens(1000, 100))
    )
    first = asyncio.run(runtime.run_turn(session, "hello"))
    second = asyncio.run(runtime.run_turn(session, "again"))
    assert first.cost_usd == pytest.approx((1000 * 50.0 + 100 * 70.0) / 1e6)
    assert [n for n in first.notices if "[pricing.default]" in n] == [
        f"model {model!r} has no [pricing] entry and no built-in price; priced by "
        "[pricing.default] ($50 input, $70 output per million tokens)"
    ]
    assert not [n for n in second.notices if "[pricing.default]" in n]
    runtime.close()


def test_truncated_tool_arguments_at_max_tokens_are_not_executed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wire: Wire, server: FakeLLMServer,
    api_key: str,
) -> None:
    seen: list[dict[str, Any]] = []
    runtime = runtime_for(
        tmp_path, monkeypatch, wire, server, api_key, tools=[echo_tool(seen)],
        runtime_extra="max_output_tokens = 64",
    )
    assert runtime.store is not None
    session = runtime.store.new_session("Be brief.").with_model("session-model")
    server.script(
        tool_call_reply(ToolCallSpec("call_1", '{"text": "hel', name="echo"), stop="max_tokens"),
        text_reply("Sorry, I ran out of room."),
    )
    result = asyncio.run(runtime.run_turn(session, "echo hello"))
    assert seen == []  # the tool never ran
    [record] = result.tool_calls
    assert record.result.is_error
    assert "output token limit (max_tokens)" in record.result.content
    assert any("stopped at the output token limit" in n for n in result.notices)
    assert result.text == "Sorry, I ran out of room."
    # the model was told: the second request carries the error result
    assert "output token limit (max_tokens)" in json.dumps(server.requests[1].json())
    # the configured limit is sent with the request
    body = server.requests[0].json()
    assert body.get("max_tokens", body.get("max_completion_tokens")) == 64
    runtime.close()


def test_a_typed_provider_error_reaches_the_host_and_costs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wire: Wire, server: FakeLLMServer,
    api_key: str,
) -> None:
    runtime = runtime_for(tmp_path, monkeypatch, wire, server, api_key)
    assert runtime.store is not None
    session = runtime.store.new_session("Be brief.").with_model("session-model")
    server.script(auth_failed())
    with pytest.raises(AuthenticationFailed) as info:
        asyncio.run(runtime.run_turn(session, "hello"))
    assert info.value.status == 401
    assert session.budget_tracker.spent() == 0.0  # refused before any model work
    runtime.close()


def test_a_stream_dropped_mid_response_saves_nothing_half_and_is_charged_not_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wire: Wire, server: FakeLLMServer,
    api_key: str,
) -> None:
    runtime = runtime_for(tmp_path, monkeypatch, wire, server, api_key)
    assert runtime.store is not None
    session = runtime.store.new_session("Be brief.").with_model("session-model")
    # text arrives, then the socket closes before the usage and the end of the stream
    server.script(text_reply("half an answer", pieces=4, usage=None, disconnect_after=4))
    with pytest.raises(LLMError):
        asyncio.run(runtime.run_turn(session, "hello"))
    spent = session.budget_tracker.spent()
    assert spent > 0  # the provider produced output: charged the reservation, never $0
    runtime.close()
    again = runtime_for(tmp_path, monkeypatch, wire, server, api_key)
    assert again.store is not None
    loaded = again.store.load(session.id)
    assert loaded is not None
    texts = [m.text() or "" for m in loaded.messages if m.role.value == "assistant"]
    assert not any("half" in t for t in texts)  # no half-streamed answer was stored
    assert loaded.budget_tracker.spent() == pytest.approx(spent)
    again.close()


# -- the reservation counts the whole request (scripted provider: protocol 1) ---------------


def scripted_runtime(system_prompt: str, tools: Sequence[FunctionTool] = ()) -> AgentRuntime:
    store = SessionStore(
        MemoryBackend(), budget=BudgetConfig(session_max_usd=0.5, per_action_max_usd=0.5)
    )
    provider = ScriptedProvider([[{"text": "ok"}, {"usage": {"input_tokens": 1,
                                                              "output_tokens": 1}}]])
    config = RuntimeConfig(
        system_prompt=system_prompt,
        estimated_output_tokens=0,
        pricing={provider.model: ModelPricing(input_per_million=100.0, output_per_million=0.0)},
    )
    return AgentRuntime(provider, store=store, config=config, tools=list(tools))


def test_a_budget_for_a_small_request_refuses_it_with_a_50_kb_system_prompt() -> None:
    small = scripted_runtime("Be brief.")
    result = asyncio.run(small.run_turn(small.create_session(), "hello"))
    assert result.text == "ok"

    large = scripted_runtime("Be brief. " + "x" * 50_000)  # ~12,500 tokens: $1.25 at $100/M
    session = large.create_session()
    with pytest.raises(BudgetExceeded, match="the next LLM call"):
        asyncio.run(large.run_turn(session, "hello"))
    assert session.budget_tracker.spent() == 0.0


def test_a_budget_for_a_small_request_refuses_it_with_many_tool_definitions() -> None:
    tools = [
        FunctionTool(
            f"tool_{n}",
            "A tool with a long description. " * 8,
            {"type": "object", "properties": {f"arg_{i}": {"type": "string"} for i in range(8)}},
            lambda args, ctx: "",
        )
        for n in range(200)
    ]
    small = scripted_runtime("Be brief.", tools[:1])
    assert asyncio.run(small.run_turn(small.create_session(), "hello")).text == "ok"
    large = scripted_runtime("Be brief.", tools)
    with pytest.raises(BudgetExceeded, match="the next LLM call"):
        asyncio.run(large.run_turn(large.create_session(), "hello"))


# -- closing ----------------------------------------------------------------------------------


class ClosingProvider:
    """A minimal version-2 provider that answers "ok" and records its ``aclose``."""

    name = "closing"
    model = "closing-model"
    provider_api: Literal[2] = 2

    def __init__(self) -> None:
        self.closed = 0
        self.settings: list[CallSettings] = []

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        *,
        settings: CallSettings,
    ) -> AsyncIterator[StreamEvent]:
        self.settings.append(settings)
        yield TextDelta("ok")
        yield Done()

    async def complete_simple(self, prompt: str, *, settings: CallSettings) -> Completion:
        return Completion("ok")

    async def aclose(self) -> None:
        self.closed += 1


def test_async_with_closes_the_provider_and_settings_carry_the_config() -> None:
    provider = ClosingProvider()

    async def main() -> None:
        config = RuntimeConfig(max_output_tokens=321, temperature=0.25)
        async with AgentRuntime(provider, config=config, tools=[]) as runtime:
            session = runtime.create_session("Be brief.").with_model("chosen-model")
            await runtime.run_turn(session, "hello")
            assert provider.closed == 0

    asyncio.run(main())
    assert provider.closed == 1
    assert provider.settings == [
        CallSettings(model="chosen-model", max_output_tokens=321, temperature=0.25)
    ]


def test_close_outside_an_event_loop_closes_the_provider() -> None:
    provider = ClosingProvider()
    with AgentRuntime(provider, tools=[]) as runtime:
        assert asyncio.run(runtime.run_turn(runtime.create_session(), "hi")).text == "ok"
    assert provider.closed == 1



# -- prices -----------------------------------------------------------------------------------


def test_reasoning_tokens_are_output_tokens_at_their_own_rate_if_given() -> None:
    usage = Usage(1000, 500, reasoning_tokens=400)
    plain = ModelPricing(input_per_million=1.0, output_per_million=10.0)
    assert plain.usage_cost(usage) == pytest.approx((1000 * 1.0 + 500 * 10.0) / 1e6)
    rated = plain.model_copy(update={"reasoning_per_million": 20.0})
    assert rated.usage_cost(usage) == pytest.approx((1000 * 1.0 + 100 * 10.0 + 400 * 20.0) / 1e6)
    # cache rates left out are the input rate: cached tokens are never charged twice
    assert plain.usage_cost(Usage(1000, 0, cache_read_tokens=600, cache_write_tokens=400)) == (
        pytest.approx(1000 * 1.0 / 1e6)
    )


def test_the_builtin_price_source_prices_a_well_known_model() -> None:
    pytest.importorskip("genai_prices")
    million_in = Usage(1_000_000, 0)
    cost, source = RuntimeConfig().price("gpt-4o", million_in)
    assert source == "genai-prices" and cost == pytest.approx(2.5)  # not the $3 default
    assert RuntimeConfig(builtin_prices=False).price("gpt-4o", million_in) == (3.0, "default")
    listed = RuntimeConfig(pricing={"gpt-4o": ModelPricing(input_per_million=7.0)})
    assert listed.price("gpt-4o", million_in) == (pytest.approx(7.0), "pricing")
