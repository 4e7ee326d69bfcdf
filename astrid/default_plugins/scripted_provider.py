"""The ``scripted`` LLM provider: replays a script of responses, offline and deterministic.

A script is a list of turns; each ``stream()`` (or ``complete_simple``) call consumes the next
turn. A turn is a list of steps, each a one-key mapping:

* ``{"text": "..."}``: streamed as several ``TextDelta`` events;
* ``{"tool_call": {"id", "name", "arguments"}}``: ``ToolCallStart``, the arguments' JSON in
  several ``ToolCallDelta`` pieces, ``ToolCallEnd``. A string ``arguments`` is sent verbatim
  (so a script can send malformed JSON);
* ``{"parallel_tool_calls": [call, ...]}``: several calls whose deltas interleave;
* ``{"usage": {"input_tokens", "output_tokens"}}``;
* ``{"error": "message"}``: a ``StreamError``; the response ends there;
* ``{"sleep": seconds}``: waits (to script slow models, timeouts and cancellation).

Every response ends with ``Done`` (except after an error). A call after the last turn yields a
``StreamError`` saying the script is exhausted.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from ..config import PathOption
from ..errors import ConfigError, ScriptedProviderError
from ..hookspecs import hookimpl
from ..llm import (
    Done,
    StreamError,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolDefinition,
    Usage,
)
from ..messages import Message
from ..plugins import PluginContext

__all__ = [
    "ScriptedProvider",
    "ScriptedProviderError",
    "ScriptedProviderOptions",
    "load_script",
]

_CHUNK = 8
"""Characters per streamed text or argument delta."""

_STEP_KEYS = ("text", "tool_call", "parallel_tool_calls", "usage", "error", "sleep")


class _Call(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    arguments: Any = Field(default_factory=dict)

    def arguments_json(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments, separators=(",", ":"))


class _Usage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str | None = None
    tool_call: _Call | None = None
    parallel_tool_calls: list[_Call] | None = None
    usage: _Usage | None = None
    error: str | None = None
    sleep: float | None = Field(default=None, ge=0, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _one_key(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError(f"a step must be a mapping with one of {', '.join(_STEP_KEYS)}")
        keys = [k for k in data if k in _STEP_KEYS]
        if len(keys) != 1 or len(data) != 1:
            raise ValueError(
                f"a step must have exactly one key out of {', '.join(_STEP_KEYS)}; "
                f"got {sorted(data)}"
            )
        return data


def _validate_script(script: Any, source: str) -> list[list[_Step]]:
    if not isinstance(script, list | tuple):
        raise ScriptedProviderError(f"{source}: the script must be a list of turns")
    turns: list[list[_Step]] = []
    for t, turn in enumerate(script):
        if not isinstance(turn, list | tuple):
            raise ScriptedProviderError(f"{source}: turn {t} must be a list of steps")
        steps: list[_Step] = []
        for s, step in enumerate(turn):
            try:
                steps.append(_Step.model_validate(step))
            except ValidationError as exc:
                detail = "; ".join(e["msg"] for e in exc.errors())
                raise ScriptedProviderError(f"{source}: turn {t}, step {s}: {detail}") from None
        turns.append(steps)
    return turns


def load_script(path: str | Path) -> list[Any]:
    """Read a script from a JSON or TOML file (a list, or a table with a ``turns`` list)."""
    file = Path(path)
    try:
        raw = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScriptedProviderError(f"cannot read script file {file}: {exc}") from exc
    data: Any
    try:
        data = tomllib.loads(raw) if file.suffix.lower() == ".toml" else json.loads(raw)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ScriptedProviderError(f"script file {file}: {exc}") from exc
    if isinstance(data, dict):
        if "turns" not in data:
            raise ScriptedProviderError(f"script file {file}: expected a 'turns' list")
        data = data["turns"]
    if not isinstance(data, list):
        raise ScriptedProviderError(f"script file {file}: the script must be a list of turns")
    return data


def _chunks(text: str, size: int = _CHUNK) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class ScriptedProvider:
    """An ``LLMProvider`` that replays scripted turns (one per ``stream`` call)."""

    name = "scripted"

    def __init__(self, script: Sequence[Any], *, model: str = "scripted-1") -> None:
        self.model = model
        self._turns = _validate_script(script, "scripted provider")
        self._next = 0
        self.requests: list[tuple[list[Message], list[ToolDefinition], str]] = []
        """What each ``stream`` call was given (messages, tools, system prompt), in order."""
        self.prompts: list[str] = []
        """The prompts ``complete_simple`` was given."""

    @property
    def turns_used(self) -> int:
        """How many turns were consumed."""
        return self._next

    @property
    def turns_left(self) -> int:
        """How many turns remain."""
        return len(self._turns) - self._next

    def extend(self, script: Sequence[Any]) -> None:
        """Append more turns to the script."""
        self._turns.extend(_validate_script(script, "scripted provider"))

    def _take(self) -> list[_Step] | None:
        if self._next >= len(self._turns):
            return None
        turn = self._turns[self._next]
        self._next += 1
        return turn

    def _exhausted(self) -> str:
        return (
            f"scripted provider: the script is exhausted (all {len(self._turns)} turns used); "
            "add more turns"
        )

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
    ) -> AsyncIterator[StreamEvent]:
        """Replay the next turn as stream events."""
        self.requests.append((list(messages), list(tools), system_prompt))
        turn = self._take()
        if turn is None:
            yield StreamError(self._exhausted())
            return
        for step in turn:
            if step.sleep is not None:
                await asyncio.sleep(step.sleep)
            elif step.text is not None:
                for piece in _chunks(step.text):
                    yield TextDelta(piece)
            elif step.tool_call is not None:
                call = step.tool_call
                yield ToolCallStart(call.id, call.name)
                for piece in _chunks(call.arguments_json()):
                    yield ToolCallDelta(call.id, piece)
                yield ToolCallEnd(call.id)
            elif step.parallel_tool_calls is not None:
                calls = step.parallel_tool_calls
                for call in calls:
                    yield ToolCallStart(call.id, call.name)
                pieces = [_chunks(call.arguments_json()) for call in calls]
                for i in range(max((len(p) for p in pieces), default=0)):
                    for call, parts in zip(calls, pieces, strict=True):
                        if i < len(parts):
                            yield ToolCallDelta(call.id, parts[i])
                for call in calls:
                    yield ToolCallEnd(call.id)
            elif step.usage is not None:
                yield Usage(step.usage.input_tokens, step.usage.output_tokens)
            elif step.error is not None:
                yield StreamError(step.error)
                return
        yield Done()

    async def complete_simple(self, prompt: str) -> str:
        """Consume the next turn and return its text (raises on a scripted error)."""
        self.prompts.append(prompt)
        turn = self._take()
        if turn is None:
            raise ScriptedProviderError(self._exhausted())
        parts: list[str] = []
        for step in turn:
            if step.sleep is not None:
                await asyncio.sleep(step.sleep)
            elif step.error is not None:
                raise ScriptedProviderError(f"scripted provider error: {step.error}")
            elif step.text is not None:
                parts.append(step.text)
        return "".join(parts)

    def __repr__(self) -> str:
        return (
            f"ScriptedProvider(model={self.model!r}, turns={len(self._turns)}, "
            f"used={self._next})"
        )


class ScriptedProviderOptions(BaseModel):
    """Options of the ``scripted`` provider: an inline ``script`` or a ``script_file``."""

    model_config = ConfigDict(extra="forbid")

    script: list[Any] | None = None
    script_file: PathOption | None = None
    model: str = "scripted-1"

    @model_validator(mode="after")
    def _one_source(self) -> ScriptedProviderOptions:
        if self.script is not None and self.script_file is not None:
            raise ValueError("give either 'script' or 'script_file', not both")
        return self


def _factory(options: ScriptedProviderOptions, context: PluginContext) -> ScriptedProvider:
    script: list[Any]
    if options.script_file is not None:
        script = load_script(options.script_file)
    else:
        script = list(options.script or [])
    try:
        return ScriptedProvider(script, model=options.model)
    except ScriptedProviderError as exc:
        raise ConfigError(str(exc)) from exc


@hookimpl
def register_llm_providers(register: Any) -> None:
    """Register ``scripted``."""
    register(
        "scripted",
        _factory,
        ScriptedProviderOptions,
        "Replays a scripted conversation (text, tool calls, usage) offline and deterministically.",
    )
