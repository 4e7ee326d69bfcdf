"""Provider protocol versions 1 and 2 through ``stream_request`` / ``complete_request``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Literal

import pytest

from astrid.errors import (
    AstridError,
    AuthenticationFailed,
    ContextTooLong,
    PluginError,
    ProviderError,
    RateLimited,
)
from astrid.llm import (
    CallSettings,
    Completion,
    Done,
    LLMProvider,
    LLMProviderV2,
    Stop,
    StopReason,
    StreamEvent,
    TextDelta,
    ToolDefinition,
    Usage,
    complete_request,
    provider_api,
    stream_request,
)
from astrid.messages import Message


class V1:
    """A provider written against version 1: no settings, complete_simple gives a string."""

    name = "v1"
    model = "v1-model"

    async def stream(
        self, messages: Sequence[Message], tools: Sequence[ToolDefinition], system_prompt: str
    ) -> AsyncIterator[StreamEvent]:
        yield TextDelta(f"{len(messages)} {system_prompt}")
        yield Usage(3, 4)
        yield Done()

    async def complete_simple(self, prompt: str) -> str:
        return f"v1:{prompt}"


class V2:
    """A version-2 provider: settings per request, usage with every answer."""

    name = "v2"
    model = "default-model"
    provider_api: Literal[2] = 2

    def __init__(self) -> None:
        self.seen: list[CallSettings] = []

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        *,
        settings: CallSettings,
    ) -> AsyncIterator[StreamEvent]:
        self.seen.append(settings)
        yield TextDelta(settings.model)
        yield Usage(10, 2, cache_read_tokens=6, reasoning_tokens=1)
        yield Stop(StopReason.END_TURN, raw="stop")
        yield Done()

    async def complete_simple(self, prompt: str, *, settings: CallSettings) -> Completion:
        self.seen.append(settings)
        return Completion(f"v2:{prompt}", Usage(1, 1), StopReason.END_TURN)


async def _collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


def test_a_version_1_provider_is_served_unchanged() -> None:
    provider = V1()
    assert isinstance(provider, LLMProvider)
    assert provider_api(provider) == 1
    settings = CallSettings(model="priced-model", temperature=0.5)
    request = stream_request(provider, [Message.user("hi")], [], "sys", settings)
    events = asyncio.run(_collect(request))
    assert events == [TextDelta("1 sys"), Usage(3, 4), Done()]
    answer = asyncio.run(complete_request(provider, "p", settings))
    assert answer == Completion("v1:p")
    assert answer.usage is None  # not reported: never read as free


def test_a_version_2_provider_gets_the_model_and_settings_of_each_request() -> None:
    provider = V2()
    assert isinstance(provider, LLMProviderV2)
    assert provider_api(provider) == 2
    settings = CallSettings(model="priced-model", max_output_tokens=64, temperature=0.0)
    events = asyncio.run(_collect(stream_request(provider, [], [], "", settings)))
    assert events[0] == TextDelta("priced-model")
    assert events[1] == Usage(10, 2, cache_read_tokens=6, cache_write_tokens=0, reasoning_tokens=1)
    assert Stop(StopReason.END_TURN, "stop") in events
    answer = asyncio.run(complete_request(provider, "p", settings))
    assert answer.text == "v2:p" and answer.usage == Usage(1, 1)
    assert provider.seen == [settings, settings]


def test_usage_defaults_keep_version_1_constructors_working() -> None:
    usage = Usage(5, 7)
    assert (usage.cache_read_tokens, usage.cache_write_tokens, usage.reasoning_tokens) == (0, 0, 0)
    assert usage.total() == 12


@pytest.mark.parametrize("declared", ["2", True, None, 2.0])
def test_a_provider_api_that_is_not_an_int_counts_as_version_1(declared: object) -> None:
    provider = V1()
    provider.provider_api = declared  # type: ignore[attr-defined]
    assert provider_api(provider) == 1


def test_complete_simple_returning_something_else_is_a_plugin_error_naming_the_provider() -> None:
    class Odd(V1):
        name = "odd"

        async def complete_simple(self, prompt: str) -> str:
            return 42  # type: ignore[return-value]

    with pytest.raises(PluginError, match=r"'odd'.*int"):
        asyncio.run(complete_request(Odd(), "p", CallSettings(model="m")))


def test_provider_errors_are_typed_and_carry_status_and_retry() -> None:
    limited = RateLimited("slow down", provider="openai", retried=True, retry_after_s=2.0)
    assert isinstance(limited, ProviderError) and isinstance(limited, AstridError)
    assert (limited.status, limited.retried, limited.retry_after_s) == (429, True, 2.0)
    auth = AuthenticationFailed("bad key", provider="anthropic", status=401)
    assert auth.status == 401 and not auth.retried and auth.provider == "anthropic"
    assert issubclass(ContextTooLong, ProviderError)


def test_complete_from_stream_collects_text_usage_and_stop() -> None:
    from astrid.llm import complete_from_stream

    provider = V2()
    events = provider.stream([], [], "", settings=CallSettings(model="m"))
    answer = asyncio.run(complete_from_stream(events, "v2"))
    assert answer == Completion("m", Usage(10, 2, 6, 0, 1), StopReason.END_TURN)


def test_complete_from_stream_raises_a_stream_error_naming_the_provider() -> None:
    from astrid.llm import StreamError, complete_from_stream

    async def broken() -> AsyncIterator[StreamEvent]:
        yield TextDelta("half")
        yield StreamError("connection reset")

    with pytest.raises(ProviderError, match="connection reset") as caught:
        asyncio.run(complete_from_stream(broken(), "p"))
    assert caught.value.provider == "p"
