"""``OpenAIProvider``: astrid's provider protocol version 2 over the Chat Completions API.

The official SDK does the transport, retries, error classes and SSE parsing. The request body
is built here, from JSON pieces encoded once per message (``wire.WireCache``), and handed to the
SDK's ``post`` as bytes: ``chat.completions.create`` would run every message and tool through
the SDK's recursive type transform and encode them again on every call, a cost that grows with
the conversation (``benchmarks/bench_request.py``).

Each streamed chunk is taken as the JSON object the server sent (``AsyncStream[object]``): the
SDK's ``ChatCompletionChunk`` models would be built field by field for every chunk (~80 µs each,
more than the rest of a turn's own work; ``benchmarks/peers_turn.py``). The stream becomes astrid
events: ``TextDelta``; ``ToolCallStart`` / ``ToolCallDelta`` /
``ToolCallEnd`` for each call, keyed by the chunk's ``index`` so parallel calls may interleave;
then ``Usage`` (the last one the server sent), ``Stop`` from ``finish_reason`` and ``Done``.
A request that fails before streaming raises a ``ProviderError`` (``RateLimited``,
``AuthenticationFailed``, ``ContextTooLong``); a stream that breaks or ends before its
``finish_reason`` yields one ``StreamError`` and nothing after it.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import openai
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
    complete_from_stream,
)
from astrid.messages import Message
from openai.types.chat import ChatCompletion
from pydantic import SecretStr

from . import DEFAULT_BASE_URL, PROVIDER_NAME, OpenAIOptions
from .wire import WireCache

logger = logging.getLogger("astrid_openai")

STOP_REASONS: Mapping[str, StopReason] = {
    "stop": StopReason.END_TURN,
    "tool_calls": StopReason.TOOL_USE,
    "function_call": StopReason.TOOL_USE,
    "length": StopReason.MAX_TOKENS,
    "content_filter": StopReason.CONTENT_FILTER,
}
"""``finish_reason`` → astrid's stop reason (anything else is ``OTHER`` with the raw word)."""

CONNECT_TIMEOUT_S = 10.0
"""How long connecting may take (at most ``timeout_s``): a host that does not answer fails fast."""

_OWN_FIELDS = frozenset({"model", "messages", "tools", "stream"})

_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length"}
_CONTEXT_WORDS = ("maximum context length", "context length", "context window", "too many tokens")


class OpenAIProvider:
    """A Chat Completions model behind the official ``openai`` SDK (``AsyncOpenAI``)."""

    name: str = PROVIDER_NAME
    provider_api: Literal[2] = 2

    def __init__(
        self, options: OpenAIOptions, *, api_key: SecretStr, cache_wire: bool = True
    ) -> None:
        self.options = options
        self.model = options.model
        self.base_url = options.base_url or DEFAULT_BASE_URL
        self._api_key = api_key
        self._wire = WireCache(enabled=cache_wire)
        self._client: openai.AsyncOpenAI | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={_public_url(self.base_url)!r})"

    @property
    def wire(self) -> WireCache:
        """The cache of wire-form messages and tools (for tests and benchmarks)."""
        return self._wire

    def client(self) -> openai.AsyncOpenAI:
        """The SDK client of the running event loop (a new loop gets a new client)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = openai.AsyncOpenAI(
                api_key=self._api_key.get_secret_value(),
                base_url=self.base_url,
                timeout=openai.Timeout(
                    self.options.timeout_s, connect=min(CONNECT_TIMEOUT_S, self.options.timeout_s)
                ),
                max_retries=self.options.max_retries,
                default_headers=dict(self.options.extra_headers) or None,
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        """Close the SDK client's connections (a later request opens new ones)."""
        client, self._client, self._client_loop = self._client, None, None
        if client is not None:
            await client.close()

    def request_body(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        settings: CallSettings,
    ) -> bytes:
        """The JSON body of one streamed Chat Completions request.

        ``settings.extra`` adds fields (``seed``, ``reasoning_effort``...); it cannot replace
        the ones the provider owns (``model``, ``messages``, ``tools``, ``stream``).
        """
        head: dict[str, Any] = {
            "model": settings.model,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        max_tokens = settings.max_output_tokens or self.options.max_output_tokens
        if max_tokens is not None:
            head[self.options.max_tokens_field] = max_tokens
        temperature = (
            settings.temperature if settings.temperature is not None else self.options.temperature
        )
        if temperature is not None:
            head["temperature"] = temperature
        for key, value in settings.extra.items():
            if key in _OWN_FIELDS:
                raise ProviderError(
                    f"{PROVIDER_NAME}: settings.extra may not set {key!r} (the provider sets it)",
                    provider=PROVIDER_NAME,
                )
            head[key] = value
        try:
            return self._wire.body(head, messages, tools, system_prompt)
        except (TypeError, ValueError) as exc:
            raise ProviderError(
                f"{PROVIDER_NAME}: the request cannot be encoded as JSON: {exc}",
                provider=PROVIDER_NAME,
            ) from None

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
        *,
        settings: CallSettings | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Stream one response (``settings`` None: the configured model and defaults)."""
        settings = settings or CallSettings(model=self.model)
        body = self.request_body(messages, tools, system_prompt, settings)
        try:
            # The body goes as bytes (``content``), as the SDK documents for raw requests: it
            # neither walks it through its type transform nor encodes it again; retries resend
            # the same bytes.
            response = await self.client().post(
                "/chat/completions",
                cast_to=ChatCompletion,
                content=body,
                options={"security": {"bearer_auth": True}},
                stream=True,
                stream_cls=openai.AsyncStream[object],
            )
        except openai.APIError as exc:
            raise self.error(exc) from None
        state = _StreamState(self._wire.renamed(tools))
        try:
            async with response:
                async for chunk in response:
                    for event in state.feed(chunk):
                        yield event
        except openai.APIError as exc:
            yield StreamError(self._stream_broke(exc))
            return
        if state.finish_reason is None:
            yield StreamError(
                f"{PROVIDER_NAME}: the stream from {_public_url(self.base_url)} ended before "
                "the response was complete (no finish_reason)"
            )
            return
        for event in state.finish():
            yield event

    async def complete_simple(
        self, prompt: str, *, settings: CallSettings | None = None
    ) -> Completion:
        """One user message, no tools, no system prompt: the text, its usage and stop."""
        events = self.stream([Message.user(prompt)], [], "", settings=settings)
        return await complete_from_stream(events, PROVIDER_NAME)

    def error(self, exc: openai.APIError) -> ProviderError:
        """The astrid error for an SDK error raised before the stream started."""
        retried = _retried(exc)
        where = _public_url(self.base_url)
        detail = self._redact(_error_detail(exc))
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            text = f"{PROVIDER_NAME}: HTTP {status} from {where}: {detail}"
            if isinstance(exc, openai.RateLimitError):
                return RateLimited(
                    text,
                    provider=PROVIDER_NAME,
                    status=status,
                    retried=retried,
                    retry_after_s=_retry_after(exc.response.headers),
                )
            if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
                return AuthenticationFailed(
                    f"{text} (check the key in {self._key_source()})",
                    provider=PROVIDER_NAME,
                    status=status,
                    retried=retried,
                )
            if _context_too_long(exc):
                return ContextTooLong(text, provider=PROVIDER_NAME, status=status, retried=retried)
            return ProviderError(text, provider=PROVIDER_NAME, status=status, retried=retried)
        if isinstance(exc, openai.APITimeoutError):
            text = f"{PROVIDER_NAME}: the request to {where} timed out"
        elif isinstance(exc, openai.APIConnectionError):
            text = f"{PROVIDER_NAME}: cannot reach {where}: {detail}"
        else:
            text = f"{PROVIDER_NAME}: request to {where} failed: {detail}"
        if retried:
            text += " (after retrying)"
        return ProviderError(text, provider=PROVIDER_NAME, status=None, retried=retried)

    def _stream_broke(self, exc: openai.APIError) -> str:
        where = _public_url(self.base_url)
        if isinstance(exc, openai.APIConnectionError):
            return f"{PROVIDER_NAME}: the stream from {where} broke off: {_error_detail(exc)}"
        return f"{PROVIDER_NAME}: the stream from {where} sent an error: {self._redact(str(exc))}"

    def _key_source(self) -> str:
        if self.options.api_key_file is not None:
            return "llm.options.api_key_file"
        return f"${self.options.api_key_env}"

    def _redact(self, text: str) -> str:
        key = self._api_key.get_secret_value()
        return text.replace(key, "***") if len(key) >= 4 else text


@dataclass
class _Call:
    """One tool call being streamed: its id, name, and arguments held until it has a name."""

    id: str
    name: str = ""
    started: bool = False
    pending: list[str] = field(default_factory=list)


def _field(obj: Any, key: str) -> Any:
    """``obj[key]`` of a JSON object, None for anything else (a server may send odd shapes)."""
    return obj.get(key) if isinstance(obj, dict) else None


class _StreamState:
    """Chunks (JSON objects) in, astrid events out; keeps what the end of the stream needs."""

    def __init__(self, renamed: Mapping[str, str]) -> None:
        self.renamed = renamed
        self.calls: list[_Call] = []
        self.by_index: dict[int, _Call] = {}
        self.usage: Any = None
        self.finish_reason: str | None = None

    def feed(self, chunk: Any) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        usage = _field(chunk, "usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = _field(chunk, "choices")
        for choice in choices if isinstance(choices, list) else ():
            if _field(choice, "index") not in (0, None):
                continue
            delta = _field(choice, "delta")
            if isinstance(delta, dict):
                text = delta.get("content")
                if text and isinstance(text, str):
                    events.append(TextDelta(text))
                refusal = delta.get("refusal")
                if refusal and isinstance(refusal, str):
                    # the model's refusal is its answer; without it the turn is blank
                    events.append(TextDelta(refusal))
                pieces = delta.get("tool_calls")
                for piece in pieces if isinstance(pieces, list) else ():
                    self._tool_piece(piece, events)
            reason = _field(choice, "finish_reason")
            if reason and isinstance(reason, str):
                self.finish_reason = reason
        return events

    def _tool_piece(self, piece: Any, events: list[StreamEvent]) -> None:
        index = _field(piece, "index")
        index = index if isinstance(index, int) else len(self.calls)
        call_id = _field(piece, "id") or None
        call_id = call_id if isinstance(call_id, str) else None
        call = self.by_index.get(index)
        if call is None or (call_id is not None and call.started and call_id != call.id):
            # A new call; some servers put every call at index 0 and tell them apart by id.
            call = _Call(id=call_id or f"call_{uuid.uuid4().hex[:24]}")
            self.by_index[index] = call
            self.calls.append(call)
        elif call_id is not None and not call.started:
            call.id = call_id
        function = _field(piece, "function")
        name = _field(function, "name")
        arguments = _field(function, "arguments")
        name = name if isinstance(name, str) else None
        arguments = arguments if isinstance(arguments, str) else None
        if name and not call.name:
            call.name = self.renamed.get(name, name)
        if arguments:
            call.pending.append(arguments)
        if call.name and not call.started:
            call.started = True
            events.append(ToolCallStart(call.id, call.name))
        if call.started and call.pending:
            events.extend(ToolCallDelta(call.id, part) for part in call.pending)
            call.pending.clear()

    def finish(self) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        for call in self.calls:
            if not call.started:
                events.append(ToolCallStart(call.id, call.name))
                events.extend(ToolCallDelta(call.id, part) for part in call.pending)
            events.append(ToolCallEnd(call.id))
        if self.usage is not None:
            events.append(_usage(self.usage))
        raw = self.finish_reason
        reason = STOP_REASONS.get(raw or "", StopReason.OTHER)
        events.append(Stop(reason, raw))
        events.append(Done())
        return events


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage(usage: Any) -> Usage:
    prompt = _field(usage, "prompt_tokens_details")
    completion = _field(usage, "completion_tokens_details")
    return Usage(
        input_tokens=_count(_field(usage, "prompt_tokens")),
        output_tokens=_count(_field(usage, "completion_tokens")),
        cache_read_tokens=_count(_field(prompt, "cached_tokens")),
        cache_write_tokens=_count(_field(prompt, "cache_write_tokens")),
        reasoning_tokens=_count(_field(completion, "reasoning_tokens")),
    )


def _retried(exc: openai.APIError) -> bool:
    """Whether the SDK retried: its ``x-stainless-retry-count`` header on the last attempt."""
    request = None
    response = getattr(exc, "response", None)
    if response is not None:
        request = getattr(response, "request", None)
    if request is None:
        request = getattr(exc, "request", None)
    headers = getattr(request, "headers", None)
    raw = headers.get("x-stainless-retry-count") if headers is not None else None
    try:
        return int(raw) > 0 if raw is not None else False
    except ValueError:
        return False


def _retry_after(headers: Any) -> float | None:
    """Seconds the server asks to wait (``retry-after-ms``, ``retry-after`` seconds or date)."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / divisor
        except ValueError:
            if name == "retry-after-ms":
                continue
            try:
                when = email.utils.parsedate_to_datetime(raw)
            except (TypeError, ValueError):
                return None
            return max(0.0, when.timestamp() - time.time())
        return value if value >= 0 and value != float("inf") else None
    return None


def _error_detail(exc: openai.APIError) -> str:
    """The server's own error message when it sent one, else the SDK's."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else None
        if isinstance(message, str) and message:
            return message[:500]
    return (exc.message or type(exc).__name__)[:500]


def _context_too_long(exc: openai.APIStatusError) -> bool:
    if exc.status_code == 413:
        return True
    if exc.status_code != 400:
        return False
    if getattr(exc, "code", None) in _CONTEXT_CODES:
        return True
    text = _error_detail(exc).lower()
    return any(word in text for word in _CONTEXT_WORDS)


def _public_url(url: str) -> str:
    """``url`` without user info or query (which may hold credentials)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
