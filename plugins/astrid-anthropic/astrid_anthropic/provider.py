"""The ``anthropic`` provider: the Messages API, streamed, on the official SDK's transport.

The SDK sends the request (retries, timeouts, headers), parses the server-sent events and raises
its typed errors; the body is built here from cached per-message fragments and handed to the SDK
as finished bytes (``content=``), which it sends untouched. Its request preparation
(``prepare_request_data``, which walks and copies every message and tool of a ``json_data``
body and of ``extra_body`` merged into it) is thus skipped, and so is ``json.dumps`` of the
whole conversation: what a request costs no longer grows with the work of encoding it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from astrid.errors import AuthenticationFailed, ContextTooLong, ProviderError, RateLimited
from astrid.llm import (
    CallSettings,
    Completion,
    Done,
    LLMProviderV2,
    Stop,
    StopReason,
    StreamError,
    StreamEvent,
    TextDelta,
    TokenCounter,
    ToolCallDelta,
    ToolCallEnd,
    ToolCallStart,
    ToolDefinition,
    Usage,
    complete_from_stream,
)
from astrid.messages import Message
from pydantic import SecretStr

from .wire import (
    WireCache,
    assemble_messages,
    build_body,
    encode_system,
    encode_tools,
    wire_tool_name,
)

if TYPE_CHECKING:
    from anthropic import AsyncAnthropic

logger = logging.getLogger(__name__)

NAME = "anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com"
THINKING_MEMORY = 1024
"""How many responses' thinking blocks are remembered for sending back (newest kept)."""

_STOP_REASONS: dict[str, StopReason] = {
    "end_turn": StopReason.END_TURN,
    "stop_sequence": StopReason.END_TURN,
    "tool_use": StopReason.TOOL_USE,
    "max_tokens": StopReason.MAX_TOKENS,
    "model_context_window_exceeded": StopReason.MAX_TOKENS,
    "refusal": StopReason.CONTENT_FILTER,
}

_ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}
"""The HTTP status an ``event: error`` in a 200 stream stands for, by its error type."""

_CONTEXT_PHRASES = ("prompt is too long", "too many tokens", "context window", "context length")


def stop_reason(raw: str | None) -> StopReason:
    """The astrid stop reason for an Anthropic ``stop_reason``."""
    return _STOP_REASONS.get(raw or "", StopReason.OTHER)


def _headers_of(exc: Exception) -> Mapping[str, str]:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return headers if headers is not None else {}


def _retried(exc: Exception) -> bool:
    """Whether the SDK retried before this error: the retry count its last attempt sent."""
    request: Any = getattr(exc, "request", None)
    if request is None:
        request = getattr(getattr(exc, "response", None), "request", None)
    try:
        return int(request.headers.get("x-stainless-retry-count", "0")) > 0
    except (AttributeError, RuntimeError, ValueError):
        return False


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                seconds = float(value) / scale
            except ValueError:
                continue
            if seconds >= 0:
                return seconds
    return None


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def map_error(exc: Exception) -> ProviderError:
    """The typed astrid error for an SDK exception (a one-line message, never the key)."""
    import anthropic

    retried = _retried(exc)
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body
        error = body.get("error") if isinstance(body, dict) else None
        kind = error.get("type") if isinstance(error, dict) else None
        detail = error.get("message") if isinstance(error, dict) else None
        status = exc.status_code
        if status < 400 and isinstance(kind, str):
            status = _ERROR_STATUS.get(kind, 500)
        text = f"{NAME}: HTTP {status}"
        if kind:
            text += f" {kind}"
        text += f": {_one_line(detail or exc.message)}"
        if retried:
            text += " (after retries)"
        if status == 429 or kind == "rate_limit_error":
            return RateLimited(
                text, provider=NAME, status=status, retried=retried,
                retry_after_s=_retry_after(_headers_of(exc)),
            )
        if status in (401, 403) or kind in ("authentication_error", "permission_error"):
            return AuthenticationFailed(text, provider=NAME, status=status, retried=retried)
        lowered = (detail or "").lower()
        if status == 413 or (
            status == 400 and any(phrase in lowered for phrase in _CONTEXT_PHRASES)
        ):
            return ContextTooLong(text, provider=NAME, status=status, retried=retried)
        return ProviderError(text, provider=NAME, status=status, retried=retried)
    if isinstance(exc, anthropic.APITimeoutError):
        return ProviderError(f"{NAME}: the request timed out", provider=NAME, retried=retried)
    if isinstance(exc, anthropic.APIConnectionError):
        cause = exc.__cause__ or exc.__context__
        reason = f" ({_one_line(str(cause) or type(cause).__name__)})" if cause else ""
        return ProviderError(
            f"{NAME}: cannot reach the server{reason}", provider=NAME, retried=retried
        )
    return ProviderError(f"{NAME}: {type(exc).__name__}: {_one_line(str(exc))}", provider=NAME)


class _Block:
    """One content block of the response being streamed."""

    __slots__ = ("data", "kind", "parts", "tool_id")

    def __init__(self, kind: str, tool_id: str = "", data: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.tool_id = tool_id
        self.data = data or {}
        self.parts: list[str] = []


class AnthropicProvider:
    """An Anthropic Messages API model (protocol version 2).

    The key is held as a ``SecretStr`` and handed only to the SDK client (one per event loop,
    made on first use). ``wire_cache`` False encodes every message on every request (for the
    benchmark that measures what the cache saves).
    """

    name = NAME
    provider_api: Literal[2] = 2

    def __init__(
        self,
        *,
        model: str,
        api_key: SecretStr,
        base_url: str | None = None,
        timeout_s: float = 600.0,
        max_retries: int = 2,
        max_output_tokens: int = 4096,
        temperature: float | None = None,
        extra_headers: Mapping[str, str] | None = None,
        thinking_budget_tokens: int | None = None,
        wire_cache: bool = True,
    ) -> None:
        self.model = model
        self._api_key = api_key
        self.base_url = base_url or DEFAULT_BASE_URL
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_output_tokens = max_output_tokens
        self.temperature = temperature
        self.thinking_budget_tokens = thinking_budget_tokens
        self._extra_headers = dict(extra_headers or {})
        self._thinking: OrderedDict[str, tuple[dict[str, Any], ...]] = OrderedDict()
        self._cache = WireCache(self._thinking_for) if wire_cache else None
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncAnthropic] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        return f"AnthropicProvider(model={self.model!r}, base_url={self.base_url!r})"

    # -- the client --------------------------------------------------------------------------

    def _client(self) -> AsyncAnthropic:
        """This event loop's SDK client (an httpx pool cannot be shared between loops)."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            from anthropic import AsyncAnthropic

            client = AsyncAnthropic(
                api_key=self._api_key.get_secret_value(),
                base_url=self.base_url,
                timeout=self.timeout_s,
                max_retries=self.max_retries,
                default_headers=self._extra_headers or None,
            )
            self._clients[loop] = client
        return client

    async def aclose(self) -> None:
        """Close this event loop's client (its connections)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.close()

    # -- the request body --------------------------------------------------------------------

    def _thinking_for(self, call_id: str) -> tuple[dict[str, Any], ...]:
        return self._thinking.get(call_id, ())

    def _remember_thinking(self, call_id: str, blocks: tuple[dict[str, Any], ...]) -> None:
        self._thinking[call_id] = blocks
        while len(self._thinking) > THINKING_MEMORY:
            self._thinking.popitem(last=False)

    def _conversation(
        self, messages: Sequence[Message], tools: Sequence[ToolDefinition], system_prompt: str
    ) -> tuple[bytes, bytes | None, bytes | None]:
        from .wire import encode_message

        if self._cache is not None:
            get = self._cache.get
            wires = [get(m) for m in messages]
        else:
            wires = [encode_message(m, self._thinking_for) for m in messages]
        array, folded = assemble_messages(wires)
        return array, encode_system(system_prompt, folded), encode_tools(tools) if tools else None

    def _extra(self, settings: CallSettings) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        temperature = settings.temperature if settings.temperature is not None else (
            self.temperature
        )
        if temperature is not None:
            extra["temperature"] = temperature
        if self.thinking_budget_tokens is not None:
            extra["thinking"] = {"type": "enabled", "budget_tokens": self.thinking_budget_tokens}
        extra.update(settings.extra)
        return extra

    def request_body(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        settings: CallSettings,
        *,
        stream: bool = True,
    ) -> bytes:
        """The JSON body of one Messages request, exactly as it is sent."""
        array, system, tool_bytes = self._conversation(messages, tools, system_prompt)
        return build_body(
            model=settings.model or self.model,
            max_tokens=settings.max_output_tokens or self.max_output_tokens,
            messages=array,
            system=system,
            tools=tool_bytes,
            stream=stream,
            extra=self._extra(settings),
        )

    # -- the protocol ------------------------------------------------------------------------

    def _settings(self, settings: CallSettings | None) -> CallSettings:
        return settings if settings is not None else CallSettings(model=self.model)

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        *,
        settings: CallSettings | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Stream one response (``settings`` None: the configured model and defaults).

        An HTTP error before the stream starts raises the typed ``ProviderError``; a stream
        that breaks off (a dropped connection, an ``event: error``, no ``message_stop``)
        yields the usage seen so far and a ``StreamError``.
        """
        import anthropic
        import httpx2
        from anthropic import AsyncStream

        body = self.request_body(messages, tools, system_prompt, self._settings(settings))
        try:
            response: AsyncStream[object] = await self._client().post(
                "/v1/messages",
                cast_to=object,
                content=body,
                stream=True,
                stream_cls=AsyncStream[object],
            )
        except anthropic.AnthropicError as exc:
            raise map_error(exc) from exc
        state = _StreamState({wire_tool_name(t.name): t.name for t in tools})
        try:
            try:
                async for event in response:
                    for item in state.feed(event):
                        yield item
                    if state.stopped:
                        break
            except anthropic.APIStatusError as exc:
                failure: str | None = str(map_error(exc))
            except (anthropic.APIError, httpx2.TransportError, json.JSONDecodeError) as exc:
                reason = _one_line(str(exc) or type(exc).__name__)
                failure = f"{NAME}: the stream broke off: {reason}"
            else:
                failure = None if state.stopped else (
                    f"{NAME}: the stream ended before message_stop"
                )
        finally:
            await response.close()
        for item in state.finish(failure):
            yield item
        if state.thinking and state.tool_ids:
            self._remember_thinking(state.tool_ids[0], tuple(state.thinking))

    async def complete_simple(
        self, prompt: str, *, settings: CallSettings | None = None
    ) -> Completion:
        """One user message, no tools, empty system prompt: the text with its usage."""
        events = self.stream([Message.user(prompt)], [], "", settings=settings)
        return await complete_from_stream(events, NAME)

    async def count_tokens(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        *,
        settings: CallSettings | None = None,
    ) -> int:
        """The input tokens of the request, from the Messages ``count_tokens`` endpoint."""
        import anthropic

        resolved = self._settings(settings)
        array, system, tool_bytes = self._conversation(messages, tools, system_prompt)
        extra = {k: v for k, v in self._extra(resolved).items() if k == "thinking"}
        body = build_body(
            model=resolved.model or self.model, max_tokens=None, messages=array,
            system=system, tools=tool_bytes, stream=False, extra=extra,
        )
        try:
            answer = await self._client().post(
                "/v1/messages/count_tokens", cast_to=object, content=body
            )
        except anthropic.AnthropicError as exc:
            raise map_error(exc) from exc
        tokens = answer.get("input_tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise ProviderError(
                f"{NAME}: count_tokens answered without a valid input_tokens", provider=NAME
            )
        return tokens


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class _StreamState:
    """Turns the Messages stream events into astrid stream events."""

    def __init__(self, tool_names: Mapping[str, str]) -> None:
        self.tool_names = tool_names
        """The astrid name of each tool by the name it has on the wire."""
        self.blocks: dict[int, _Block] = {}
        self.tool_ids: list[str] = []
        self.thinking: list[dict[str, Any]] = []
        self.usage: dict[str, int] = {}
        self.raw_stop: str | None = None
        self.stopped = False

    def _update_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        for key in (
            "input_tokens", "output_tokens", "cache_read_input_tokens",
            "cache_creation_input_tokens",
        ):
            if key in usage and usage[key] is not None:
                self.usage[key] = _int(usage[key])
        details = usage.get("output_tokens_details")
        if isinstance(details, dict) and details.get("thinking_tokens") is not None:
            self.usage["thinking_tokens"] = _int(details["thinking_tokens"])

    def feed(self, event: Any) -> list[StreamEvent]:
        """The astrid events for one Messages stream event."""
        if not isinstance(event, dict):
            return []
        kind = event.get("type")
        out: list[StreamEvent] = []
        if kind == "content_block_delta":
            block = self.blocks.get(event.get("index", -1))
            delta = event.get("delta") or {}
            dtype = delta.get("type")
            if dtype == "text_delta":
                text = delta.get("text")
                if isinstance(text, str) and text:
                    out.append(TextDelta(text))
            elif dtype == "input_json_delta" and block is not None and block.kind == "tool_use":
                partial = delta.get("partial_json")
                if isinstance(partial, str) and partial:
                    out.append(ToolCallDelta(block.tool_id, partial))
            elif dtype == "thinking_delta" and block is not None:
                block.parts.append(str(delta.get("thinking", "")))
            elif dtype == "signature_delta" and block is not None:
                block.data["signature"] = str(block.data.get("signature") or "") + str(
                    delta.get("signature", "")
                )
        elif kind == "content_block_start":
            index = event.get("index", -1)
            content = event.get("content_block") or {}
            ctype = content.get("type")
            if ctype == "tool_use":
                tool_id, name = str(content.get("id", "")), str(content.get("name", ""))
                name = self.tool_names.get(name, name)
                self.blocks[index] = _Block("tool_use", tool_id)
                self.tool_ids.append(tool_id)
                out.append(ToolCallStart(tool_id, name))
                initial = content.get("input")
                if isinstance(initial, dict) and initial:
                    out.append(ToolCallDelta(tool_id, json.dumps(initial, ensure_ascii=False)))
            elif ctype == "text":
                self.blocks[index] = _Block("text")
                text = content.get("text")
                if isinstance(text, str) and text:
                    out.append(TextDelta(text))
            elif ctype in ("thinking", "redacted_thinking"):
                data = dict(content)
                block = _Block(ctype, data=data)
                if ctype == "thinking":
                    block.parts.append(str(data.get("thinking") or ""))
                self.blocks[index] = block
            elif isinstance(ctype, str):
                self.blocks[index] = _Block(ctype)
        elif kind == "content_block_stop":
            block = self.blocks.get(event.get("index", -1))
            if block is not None and block.kind == "tool_use":
                out.append(ToolCallEnd(block.tool_id))
            elif block is not None and block.kind in ("thinking", "redacted_thinking"):
                data = block.data
                if block.kind == "thinking":
                    data["thinking"] = "".join(block.parts)
                self.thinking.append(data)
        elif kind == "message_start":
            message = event.get("message") or {}
            self._update_usage(message.get("usage"))
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            reason = delta.get("stop_reason")
            if isinstance(reason, str):
                self.raw_stop = reason
            self._update_usage(event.get("usage"))
        elif kind == "message_stop":
            self.stopped = True
        return out

    def finish(self, failure: str | None) -> list[StreamEvent]:
        """The closing events: usage (if any was reported), then the stop and done, or the error."""
        out: list[StreamEvent] = []
        if self.usage:
            cache_read = self.usage.get("cache_read_input_tokens", 0)
            cache_write = self.usage.get("cache_creation_input_tokens", 0)
            out.append(Usage(
                input_tokens=self.usage.get("input_tokens", 0) + cache_read + cache_write,
                output_tokens=self.usage.get("output_tokens", 0),
                cache_read_tokens=cache_read,
                cache_write_tokens=cache_write,
                reasoning_tokens=self.usage.get("thinking_tokens", 0),
            ))
        if failure is not None:
            out.append(StreamError(failure))
            return out
        out.append(Stop(stop_reason(self.raw_stop), self.raw_stop))
        out.append(Done())
        return out


if TYPE_CHECKING:

    def _implements(provider: AnthropicProvider) -> tuple[LLMProviderV2, TokenCounter]:
        """mypy checks here that the provider implements protocol 2 and ``count_tokens``."""
        return provider, provider
