"""LLM providers: the protocol a provider plugin implements and the events its stream yields.

Two versions of the protocol are served. Version 1 (``LLMProvider``): ``stream(messages, tools,
system_prompt)`` and ``complete_simple(prompt) -> str``, the provider calling its own model.
Version 2 (``LLMProviderV2``, a provider with ``provider_api = 2``): the model and per-call
settings come with each request (``CallSettings``), ``complete_simple`` returns a ``Completion``
with its usage, the stream may end with a ``Stop`` reason, ``Usage`` carries cache and reasoning
tokens, ``count_tokens`` is optional, and failures are the typed ``ProviderError`` family of
``astrid.errors``. Callers go through ``stream_request`` / ``complete_request``, which serve
both versions, so a version-1 provider keeps working unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, cast, runtime_checkable

from .errors import PluginError
from .messages import Message

PROVIDER_API = 2
"""The newest provider protocol version (a provider declares its own as ``provider_api``)."""


@dataclass(frozen=True)
class ToolDefinition:
    """A tool as the model sees it: name, description and JSON schema of its arguments."""

    name: str
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True)
class TextDelta:
    """A piece of the assistant's text."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """The model starts a tool call."""

    id: str
    name: str


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of a tool call's JSON arguments (deltas of different ids may interleave)."""

    id: str
    args_delta: str


@dataclass(frozen=True)
class ToolCallEnd:
    """A tool call's arguments are complete."""

    id: str


@dataclass(frozen=True)
class Usage:
    """Tokens billed for this response.

    ``input_tokens`` counts every input token, cached ones included; ``cache_read_tokens`` and
    ``cache_write_tokens`` say how many of those were read from / written to the provider's
    prompt cache, and ``reasoning_tokens`` how many of ``output_tokens`` were hidden reasoning,
    so that each can be priced at its own rate.
    """

    input_tokens: int
    output_tokens: int
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def total(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class StopReason(StrEnum):
    """Why the model stopped: the providers' own words mapped to one vocabulary."""

    END_TURN = "end_turn"
    TOOL_USE = "tool_use"
    MAX_TOKENS = "max_tokens"
    CONTENT_FILTER = "content_filter"
    OTHER = "other"


@dataclass(frozen=True)
class Stop:
    """The model stopped generating; ``raw`` is the provider's own word for it, if any."""

    reason: StopReason
    raw: str | None = None


@dataclass(frozen=True)
class Done:
    """The response is complete."""


@dataclass(frozen=True)
class StreamError:
    """The provider failed mid-stream."""

    message: str


StreamEvent = (
    TextDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | Usage | Stop | Done | StreamError
)
"""Everything a provider's stream may yield (``Stop`` from version-2 providers only)."""


@dataclass(frozen=True)
class CallSettings:
    """What one request asks for: the model (the one the runtime prices) and sampling settings.

    None leaves a setting to the provider's configured default. ``extra`` holds
    provider-specific settings passed through as given.
    """

    model: str
    max_output_tokens: int | None = None
    temperature: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """The answer of ``complete_simple``: its text, usage (None: not reported) and stop."""

    text: str
    usage: Usage | None = None
    stop: StopReason | None = None


@runtime_checkable
class LLMProvider(Protocol):
    """A chat model. ``stream`` yields ``StreamEvent`` objects for one response."""

    name: str
    model: str

    def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
    ) -> AsyncIterator[StreamEvent]:
        """Stream one response to the conversation."""
        ...

    async def complete_simple(self, prompt: str) -> str:
        """One user message, no tools, empty system prompt; the response text ('' if none)."""
        ...


@runtime_checkable
class LLMProviderV2(Protocol):
    """Version 2 of the provider protocol: settings per request, usage from every call."""

    name: str
    model: str
    """The provider's configured default model (used when the session names none)."""
    provider_api: Literal[2]

    def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        *,
        settings: CallSettings,
    ) -> AsyncIterator[StreamEvent]:
        """Stream one response; raises (or yields ``StreamError`` for) a failed request."""
        ...

    async def complete_simple(self, prompt: str, *, settings: CallSettings) -> Completion:
        """One user message, no tools, empty system prompt: the text with its usage."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """The optional ``count_tokens`` of a version-2 provider: the input tokens of a request."""

    async def count_tokens(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        *,
        settings: CallSettings,
    ) -> int:
        """How many input tokens the request would bill, as the provider counts them."""
        ...


async def complete_from_stream(events: AsyncIterator[StreamEvent], provider: str) -> Completion:
    """A ``Completion`` from one streamed response: for a provider whose ``complete_simple``
    streams. A ``StreamError`` raises ``ProviderError`` naming ``provider``; no usage stays None.
    """
    from .errors import ProviderError

    text: list[str] = []
    usage: Usage | None = None
    stop: StopReason | None = None
    async for event in events:
        if isinstance(event, TextDelta):
            text.append(event.text)
        elif isinstance(event, Usage):
            usage = event
        elif isinstance(event, Stop):
            stop = event.reason
        elif isinstance(event, StreamError):
            raise ProviderError(event.message, provider=provider)
    return Completion("".join(text), usage=usage, stop=stop)


def provider_api(provider: object) -> int:
    """The protocol version a provider implements (1 when it declares none)."""
    version = getattr(provider, "provider_api", 1)
    return version if isinstance(version, int) and not isinstance(version, bool) else 1


def stream_request(
    provider: LLMProvider | LLMProviderV2,
    messages: Sequence[Message],
    tools: Sequence[ToolDefinition],
    system_prompt: str,
    settings: CallSettings,
) -> AsyncIterator[StreamEvent]:
    """Start one streamed request on a provider of either version (v1 ignores ``settings``)."""
    if provider_api(provider) >= 2:
        return cast(LLMProviderV2, provider).stream(
            messages, tools, system_prompt, settings=settings
        )
    return cast(LLMProvider, provider).stream(messages, tools, system_prompt)


async def complete_request(
    provider: LLMProvider | LLMProviderV2, prompt: str, settings: CallSettings
) -> Completion:
    """``complete_simple`` on a provider of either version, as a ``Completion``.

    A version-1 provider's answer is a bare string: its usage is None (not reported), which
    callers that charge budgets must treat as unknown, never as free.
    """
    if provider_api(provider) >= 2:
        result: Any = await cast(LLMProviderV2, provider).complete_simple(
            prompt, settings=settings
        )
    else:
        result = await cast(LLMProvider, provider).complete_simple(prompt)
    if isinstance(result, Completion):
        return result
    if isinstance(result, str):
        return Completion(result)
    name = getattr(provider, "name", type(provider).__name__)
    raise PluginError(
        f"LLM provider {name!r}: complete_simple returned {type(result).__name__}, "
        "expected str (protocol 1) or Completion (protocol 2)"
    )
