"""``ProviderConformance`` on a small reference provider (asyncio sockets, no SDK) for each wire
format, and the suite catching deliberate defects in it: a check that cannot fail is no check."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import pytest

from astrid.errors import AuthenticationFailed, ContextTooLong, ProviderError, RateLimited
from astrid.llm import (
    CallSettings,
    Completion,
    Done,
    Stop,
    StopReason,
    StreamError,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolDefinition,
    Usage,
)
from astrid.messages import Message, MessageRole
from astrid.testing import ProviderConformance, ProviderTarget
from astrid.testing.fake_llm import fake_server

Wire = Literal["openai", "anthropic"]


class _Dropped(Exception):
    """The response body ended early."""


class _Response:
    """A response read from an asyncio stream: status, headers, the body as chunks."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float
    ) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.status = 0
        self.headers: dict[str, str] = {}

    async def start(self) -> None:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
        async with asyncio.timeout(self.timeout):
            line = await self.reader.readline()
            self.status = int(line.split()[1])
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                self.headers[name.strip().lower()] = value.strip()

    async def _read(self, size: int | None = None) -> bytes:
        async with asyncio.timeout(self.timeout):
            if size is None:
                return await self.reader.readline()
            return await self.reader.readexactly(size)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            if self.headers.get("transfer-encoding") == "chunked":
                while True:
                    size = int(await self._read(), 16)
                    if size == 0:
                        return
                    yield await self._read(size)
                    await self._read(2)
            else:
                length = int(self.headers.get("content-length", "0"))
                yield await self._read(length)
        except (asyncio.IncompleteReadError, ValueError, ConnectionError, TimeoutError) as exc:
            raise _Dropped(str(exc) or type(exc).__name__) from exc

    async def body(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def _wire_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "__", name)[:64]


def _text_parts(message: Message) -> str:
    return message.text() or ""


class ReferenceProvider:
    """A version-2 provider for either wire format, written against the contract only."""

    provider_api: Literal[2] = 2

    def __init__(self, wire: Wire, target: ProviderTarget) -> None:
        self.wire = wire
        self.name = f"reference-{wire}"
        self.model = target.model
        url = urlsplit(target.base_url)
        self.host, self.port, self.prefix = url.hostname or "", url.port or 80, url.path
        self._key = os.environ[target.api_key_env]
        self.max_retries = target.max_retries
        self.timeout = target.timeout_s
        self._names: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"ReferenceProvider({self.wire!r}, model={self.model!r})"

    # -- requests -----------------------------------------------------------------------------

    def _path(self, name: str) -> str:
        if self.wire == "openai":
            return f"{self.prefix}/chat/completions"
        return "/v1/messages" + ("/count_tokens" if name == "count" else "")

    async def _send(self, path: str, body: dict[str, Any]) -> _Response:
        attempts = 0
        while True:
            attempts += 1
            async with asyncio.timeout(self.timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port)
            response = _Response(reader, writer, self.timeout)
            data = json.dumps(body).encode()
            auth = f"Authorization: Bearer {self._key}\r\n"
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nConnection: close\r\n{auth}"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                + data
            )
            await writer.drain()
            try:
                await response.start()
            except TimeoutError:
                await response.close()
                raise ProviderError(
                    f"{self.name}: no answer within {self.timeout}s",
                    provider=self.name,
                    retried=attempts > 1,
                ) from None
            except BaseException:
                await response.close()
                raise
            if response.status == 200:
                return response
            text = (await response.body()).decode("utf-8", "replace")
            await response.close()
            retryable = response.status in (408, 409, 429) or response.status >= 500
            if retryable and attempts <= self.max_retries:
                await asyncio.sleep(self.retry_delay(response.headers))
                continue
            raise self._error(response.status, response.headers, text, retried=attempts > 1)

    def retry_delay(self, headers: dict[str, str]) -> float:
        return min(float(headers.get("retry-after", "0.05")), 5.0)

    def _error(
        self, status: int, headers: dict[str, str], text: str, *, retried: bool
    ) -> ProviderError:
        message = f"{self.name}: HTTP {status}: {text[:200]}"
        if status in (401, 403):
            return AuthenticationFailed(message, provider=self.name, status=status)
        if status == 429:
            after = headers.get("retry-after")
            return RateLimited(
                message,
                provider=self.name,
                retried=retried,
                retry_after_s=float(after) if after else None,
            )
        if status == 400 and ("context_length_exceeded" in text or "prompt is too long" in text):
            return ContextTooLong(message, provider=self.name, status=status)
        return ProviderError(message, provider=self.name, status=status, retried=retried)

    # -- request bodies -----------------------------------------------------------------------

    def _tools(self, tools: Sequence[ToolDefinition]) -> list[dict[str, Any]]:
        out = []
        for tool in tools:
            wire = _wire_name(tool.name)
            self._names[wire] = tool.name
            if self.wire == "openai":
                function = {
                    "name": wire,
                    "description": tool.description,
                    "parameters": tool.input_schema,
                }
                out.append({"type": "function", "function": function})
            else:
                out.append(
                    {
                        "name": wire,
                        "description": tool.description,
                        "input_schema": tool.input_schema,
                    }
                )
        return out

    def _openai_messages(self, messages: Sequence[Message], system: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        for message in messages:
            if (calls := message.tool_calls()) is not None:
                out.append(
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {
                                "id": c.id,
                                "type": "function",
                                "function": {
                                    "name": _wire_name(c.name),
                                    "arguments": json.dumps(c.arguments),
                                },
                            }
                            for c in calls
                        ],
                    }
                )
            elif (result := message.tool_result_content()) is not None:
                out.append(
                    {"role": "tool", "tool_call_id": result.call_id, "content": result.content}
                )
            elif message.role in (MessageRole.USER, MessageRole.ASSISTANT, MessageRole.SYSTEM):
                out.append({"role": str(message.role), "content": _text_parts(message)})
        return out

    def _anthropic_messages(self, messages: Sequence[Message]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def add(role: str, block: dict[str, Any]) -> None:
            if out and out[-1]["role"] == role:
                out[-1]["content"].append(block)
            else:
                out.append({"role": role, "content": [block]})

        for message in messages:
            if (calls := message.tool_calls()) is not None:
                for c in calls:
                    block = {
                        "type": "tool_use",
                        "id": c.id,
                        "name": _wire_name(c.name),
                        "input": c.arguments,
                    }
                    add("assistant", block)
            elif (result := message.tool_result_content()) is not None:
                add(
                    "user",
                    {
                        "type": "tool_result",
                        "tool_use_id": result.call_id,
                        "content": result.content,
                        "is_error": result.is_error,
                    },
                )
            elif message.role in (MessageRole.USER, MessageRole.ASSISTANT) and message.text():
                add(str(message.role), {"type": "text", "text": _text_parts(message)})
        return out

    def body(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system: str,
        settings: CallSettings,
        *,
        stream: bool,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": settings.model, "stream": stream}
        if self.wire == "openai":
            body["messages"] = self._openai_messages(messages, system)
            if stream:
                body["stream_options"] = {"include_usage": True}
            if settings.max_output_tokens is not None:
                body["max_completion_tokens"] = settings.max_output_tokens
        else:
            body["messages"] = self._anthropic_messages(messages)
            if system:
                body["system"] = system
            body["max_tokens"] = settings.max_output_tokens or 1024
        if tools:
            body["tools"] = self._tools(tools)
        if settings.temperature is not None:
            body["temperature"] = settings.temperature
        return body

    # -- responses ----------------------------------------------------------------------------

    def usage(self, raw: dict[str, Any]) -> Usage:
        if self.wire == "openai":
            return Usage(
                input_tokens=raw["prompt_tokens"],
                output_tokens=raw["completion_tokens"],
                cache_read_tokens=(raw.get("prompt_tokens_details") or {}).get("cached_tokens", 0),
                reasoning_tokens=(raw.get("completion_tokens_details") or {}).get(
                    "reasoning_tokens", 0
                ),
            )
        read = raw.get("cache_read_input_tokens") or 0
        write = raw.get("cache_creation_input_tokens") or 0
        return Usage(
            input_tokens=raw.get("input_tokens", 0) + read + write,
            output_tokens=raw.get("output_tokens", 0),
            cache_read_tokens=read,
            cache_write_tokens=write,
            reasoning_tokens=(raw.get("output_tokens_details") or {}).get("thinking_tokens", 0),
        )

    def stop(self, raw: str | None) -> Stop:
        table = {
            "stop": StopReason.END_TURN,
            "end_turn": StopReason.END_TURN,
            "stop_sequence": StopReason.END_TURN,
            "tool_calls": StopReason.TOOL_USE,
            "tool_use": StopReason.TOOL_USE,
            "length": StopReason.MAX_TOKENS,
            "max_tokens": StopReason.MAX_TOKENS,
            "content_filter": StopReason.CONTENT_FILTER,
            "refusal": StopReason.CONTENT_FILTER,
        }
        return Stop(table.get(raw or "", StopReason.OTHER), raw)

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        *,
        settings: CallSettings,
    ) -> AsyncIterator[StreamEvent]:
        body = self.body(messages, tools, system_prompt, settings, stream=True)
        response = await self._send(self._path("stream"), body)
        try:
            parse = self._openai_events if self.wire == "openai" else self._anthropic_events
            try:
                async for event in parse(_sse(response.chunks())):
                    yield event
            except _Dropped as exc:
                yield StreamError(f"{self.name}: the connection dropped mid-stream ({exc})")
        finally:
            await response.close()

    async def _openai_events(
        self, events: AsyncIterator[tuple[str | None, str]]
    ) -> AsyncIterator[StreamEvent]:
        ids: dict[int, str] = {}
        usage: Usage | None = None
        stop: Stop | None = None
        async for _name, data in events:
            if data == "[DONE]":
                for call_id in ids.values():
                    yield ToolCallEnd(call_id)
                if usage is not None:
                    yield usage
                yield stop or Stop(StopReason.OTHER)
                yield Done()
                return
            chunk = json.loads(data)
            if "error" in chunk:
                yield StreamError(f"{self.name}: {chunk['error'].get('message')}")
                return
            if chunk.get("usage"):
                usage = self.usage(chunk["usage"])
            for choice in chunk.get("choices", []):
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    yield TextDelta(delta["content"])
                for call in delta.get("tool_calls") or []:
                    if call.get("id"):
                        ids[call["index"]] = call["id"]
                        name = call["function"]["name"]
                        yield ToolCallStart(call["id"], self._names.get(name, name))
                    if call.get("function", {}).get("arguments"):
                        yield ToolCallDelta(ids[call["index"]], call["function"]["arguments"])
                if choice.get("finish_reason"):
                    stop = self.stop(choice["finish_reason"])
        yield StreamError(f"{self.name}: the stream ended without [DONE]")

    async def _anthropic_events(
        self, events: AsyncIterator[tuple[str | None, str]]
    ) -> AsyncIterator[StreamEvent]:
        raw_usage: dict[str, Any] = {}
        tools: dict[int, str] = {}
        stop: Stop | None = None
        async for name, data in events:
            event = json.loads(data)
            if name == "error":
                yield StreamError(f"{self.name}: {event['error'].get('message')}")
                return
            if name == "message_start":
                raw_usage.update(event["message"].get("usage") or {})
            elif name == "content_block_start":
                block = event["content_block"]
                if block["type"] == "tool_use":
                    tools[event["index"]] = block["id"]
                    yield ToolCallStart(block["id"], self._names.get(block["name"], block["name"]))
            elif name == "content_block_delta":
                delta = event["delta"]
                if delta["type"] == "text_delta":
                    yield TextDelta(delta["text"])
                elif delta["type"] == "input_json_delta" and delta["partial_json"]:
                    yield ToolCallDelta(tools[event["index"]], delta["partial_json"])
            elif name == "content_block_stop" and event["index"] in tools:
                yield ToolCallEnd(tools[event["index"]])
            elif name == "message_delta":
                raw_usage.update(event.get("usage") or {})
                stop = self.stop(event["delta"].get("stop_reason"))
            elif name == "message_stop":
                if raw_usage:
                    yield self.usage(raw_usage)
                yield stop or Stop(StopReason.OTHER)
                yield Done()
                return
        yield StreamError(f"{self.name}: the stream ended without message_stop")

    async def complete_simple(self, prompt: str, *, settings: CallSettings) -> Completion:
        body = self.body([Message.user(prompt)], [], "", settings, stream=False)
        response = await self._send(self._path("complete"), body)
        try:
            answer = json.loads(await response.body())
        finally:
            await response.close()
        if self.wire == "openai":
            choice = answer["choices"][0]
            text, raw_stop = choice["message"].get("content") or "", choice["finish_reason"]
        else:
            text = "".join(b["text"] for b in answer["content"] if b["type"] == "text")
            raw_stop = answer["stop_reason"]
        usage = self.usage(answer["usage"]) if answer.get("usage") else None
        return Completion(text, usage, self.stop(raw_stop).reason)

    async def count_tokens(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        *,
        settings: CallSettings,
    ) -> int:
        if self.wire == "openai":
            return max(1, len(json.dumps(self._openai_messages(messages, system_prompt))) // 4)
        body = self.body(messages, tools, system_prompt, settings, stream=False)
        del body["stream"], body["max_tokens"]
        response = await self._send(self._path("count"), body)
        try:
            return int(json.loads(await response.body())["input_tokens"])
        finally:
            await response.close()


async def _sse(chunks: AsyncIterator[bytes]) -> AsyncIterator[tuple[str | None, str]]:
    """(event, data) pairs from an SSE body, however its bytes are split."""
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        while b"\n\n" in buffer:
            block, buffer = buffer.split(b"\n\n", 1)
            name: str | None = None
            data: list[str] = []
            for line in block.decode("utf-8").split("\n"):
                field, _, value = line.partition(": ")
                if field == "event":
                    name = value
                elif field == "data":
                    data.append(value)
            yield name, "\n".join(data)


# -- the suite on the reference provider -----------------------------------------------------------


class TestReferenceOpenAI(ProviderConformance):
    wire = "openai"

    def make_provider(self, target: ProviderTarget) -> ReferenceProvider:
        return ReferenceProvider("openai", target)


class TestReferenceAnthropic(ProviderConformance):
    wire = "anthropic"

    def make_provider(self, target: ProviderTarget) -> ReferenceProvider:
        return ReferenceProvider("anthropic", target)


# -- the suite catches defects ---------------------------------------------------------------------


class FreeWhenSilent(ReferenceProvider):
    """Reports a response without usage as Usage(0, 0): free."""

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        seen = False
        async for event in super().stream(*args, **kwargs):
            if isinstance(event, Usage):
                seen = True
            if isinstance(event, Done) and not seen:
                yield Usage(0, 0)
            yield event


class UncachedInput(ReferenceProvider):
    """Forgets that Anthropic's input_tokens leaves out the cached tokens."""

    def usage(self, raw: dict[str, Any]) -> Usage:
        usage = super().usage(raw)
        return Usage(
            raw.get("input_tokens", raw.get("prompt_tokens", 0)),
            usage.output_tokens,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
            usage.reasoning_tokens,
        )


class RaisesOnDrop(ReferenceProvider):
    """Lets a dropped connection escape as an exception instead of a StreamError."""

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        async for event in super().stream(*args, **kwargs):
            if isinstance(event, StreamError):
                raise RuntimeError(event.message)
            yield event


class UntypedErrors(ReferenceProvider):
    """Every HTTP error is a bare ProviderError, and never says it retried."""

    def _error(
        self, status: int, headers: dict[str, str], text: str, *, retried: bool
    ) -> ProviderError:
        return ProviderError(f"HTTP {status}", provider=self.name, status=status)


class RawToolNames(ReferenceProvider):
    """Sends astrid's tool names as they are (the API refuses ``fs:read_file``)."""

    def _tools(self, tools: Sequence[ToolDefinition]) -> list[dict[str, Any]]:
        body = super()._tools(tools)
        for tool in body:
            named = tool.get("function", tool)
            named["name"] = self._names[named["name"]]
        return body


class LeavesTheConnectionOpen(ReferenceProvider):
    """Reads the response in a task of its own that goes on after the caller stops."""

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        queue: asyncio.Queue[StreamEvent | None] = asyncio.Queue()

        async def pump() -> None:
            async for event in super(LeavesTheConnectionOpen, self).stream(*args, **kwargs):
                await queue.put(event)
            await queue.put(None)

        self._pump = asyncio.create_task(pump())
        while (event := await queue.get()) is not None:
            yield event

    async def aclose(self) -> None:
        self._pump.cancel()  # only when the test is over, so the server saw no close in time


class IgnoresRetryAfter(ReferenceProvider):
    """Retries a 429 at once, whatever the server asked."""

    def retry_delay(self, headers: dict[str, str]) -> float:
        return 0.01


class SwallowsCancellation(ReferenceProvider):
    """Ends quietly when its task is cancelled, so the caller's task never learns of it."""

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[StreamEvent]:
        try:
            async for event in super().stream(*args, **kwargs):
                yield event
        except asyncio.CancelledError:
            return


class _Defective(ProviderConformance):
    provider_class: type[ReferenceProvider] = ReferenceProvider
    close_bound_s = 1.0

    def make_provider(self, target: ProviderTarget) -> ReferenceProvider:
        return self.provider_class(self.wire, target)


DEFECTS: list[tuple[type[ReferenceProvider], Wire, str, dict[str, Any]]] = [
    (FreeWhenSilent, "openai", "test_missing_usage_yields_no_usage", {}),
    (FreeWhenSilent, "anthropic", "test_missing_usage_yields_no_usage", {}),
    (UncachedInput, "anthropic", "test_plain_text", {}),
    (RaisesOnDrop, "openai", "test_mid_stream_disconnect_is_a_stream_error", {"after": 4}),
    (RaisesOnDrop, "anthropic", "test_error_event_mid_stream_is_a_stream_error", {}),
    (UntypedErrors, "openai", "test_authentication_failed", {}),
    (UntypedErrors, "anthropic", "test_rate_limited_raises_with_retry_after", {}),
    (UntypedErrors, "openai", "test_server_error", {"max_retries": 1}),
    (UntypedErrors, "anthropic", "test_context_too_long", {}),
    (RawToolNames, "openai", "test_one_tool_call_with_a_renamed_tool", {}),
    (RawToolNames, "anthropic", "test_history_with_tool_calls_in_the_wire_format", {}),
    (
        LeavesTheConnectionOpen,
        "openai",
        "test_slow_stream_cancelled_by_the_caller",
        {"how": "aclose"},
    ),
    (
        SwallowsCancellation,
        "anthropic",
        "test_slow_stream_cancelled_by_the_caller",
        {"how": "cancel"},
    ),
    (IgnoresRetryAfter, "openai", "test_rate_limited_then_success", {}),
]


@pytest.mark.parametrize(
    ("provider_class", "wire", "test_name", "params"),
    DEFECTS,
    ids=[f"{d[0].__name__}-{d[1]}-{d[2]}" for d in DEFECTS],
)
def test_the_suite_catches_the_defect(
    provider_class: type[ReferenceProvider],
    wire: Wire,
    test_name: str,
    params: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    suite = type("Suite", (_Defective,), {"wire": wire, "provider_class": provider_class})()
    suite._tmp_path = tmp_path
    suite._monkeypatch = monkeypatch
    monkeypatch.setenv("ASTRID_CONFORMANCE_API_KEY", suite.api_key)
    with (
        fake_server(wire, api_key=suite.api_key, io_timeout_s=5) as server,
        pytest.raises((AssertionError, ProviderError, RuntimeError)),
    ):
        getattr(suite, test_name)(server, **params)
    # the same case passes on the reference provider, so the defect is what failed it
    good = type("Suite", (_Defective,), {"wire": wire})()
    good._tmp_path, good._monkeypatch = tmp_path, monkeypatch
    with fake_server(wire, api_key=good.api_key, io_timeout_s=5) as server:
        getattr(good, test_name)(server, **params)
