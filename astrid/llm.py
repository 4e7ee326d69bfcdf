"""LLM providers: the protocol a provider plugin implements and the events its stream yields."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .messages import Message


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
    """Tokens billed for this response."""

    input_tokens: int
    output_tokens: int

    def total(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class Done:
    """The response is complete."""


@dataclass(frozen=True)
class StreamError:
    """The provider failed mid-stream."""

    message: str


StreamEvent = TextDelta | ToolCallStart | ToolCallDelta | ToolCallEnd | Usage | Done | StreamError
"""Everything a provider's stream may yield."""


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
