"""The LLM provider conformance suite: subclass ``ProviderConformance`` to check a provider.

Every test starts a fake vendor server (``astrid.testing.fake_llm``) on 127.0.0.1, points a
fresh provider at it through ``make_provider`` and checks what the provider yields or raises
and what the server received. See ``docs/plugin-authors.md`` ("Testing a provider").
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, cast

try:
    import pytest
except ImportError as exc:  # pragma: no cover - only without pytest installed
    raise ImportError("astrid.testing needs pytest: pip install pytest") from exc

from ..errors import AuthenticationFailed, ContextTooLong, ProviderError, RateLimited
from ..llm import (
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
)
from ..messages import Message, ToolCall, ToolCallResult
from .fake_llm import (
    ErrorEvent,
    Exchange,
    FakeAnthropicServer,
    FakeLLMServer,
    Reply,
    Text,
    Thinking,
    Tokens,
    ToolCallSpec,
    context_too_long,
    fake_server,
    rate_limited,
    server_error,
    text_reply,
    tool_call_reply,
)

T = TypeVar("T")

API_KEY_ENV = "ASTRID_CONFORMANCE_API_KEY"
"""The environment variable that holds the key during a conformance test."""


@dataclass(frozen=True)
class ProviderTarget:
    """Where and how ``make_provider`` points the provider under test.

    The key is given three ways; use the one your options take: ``api_key`` itself, the name
    of an environment variable holding it (``api_key_env``, set for the test), or a 0600 file
    holding it (``api_key_file``).
    """

    base_url: str
    model: str
    api_key: str
    api_key_env: str
    api_key_file: Path
    max_retries: int
    timeout_s: float


READ_TOOL = ToolDefinition(
    name="fs:read_file",
    description="Read a file of the workspace.",
    input_schema={
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    },
)
"""A tool whose astrid name (``server:tool``) neither API accepts: the provider maps it."""

WRITE_TOOL = ToolDefinition(
    name="write",
    description="Write text to a file.",
    input_schema={
        "type": "object",
        "properties": {"path": {"type": "string"}, "text": {"type": "string"}},
    },
)

NON_ASCII = "naïve café — 中文, русский, emoji 🚀🧑\u200d💻, RTL \u202eabc\u202c, tab\tand\nnewline"

_OPENAI_STOPS = {
    StopReason.END_TURN: "stop",
    StopReason.TOOL_USE: "tool_calls",
    StopReason.MAX_TOKENS: "length",
    StopReason.CONTENT_FILTER: "content_filter",
}
_ANTHROPIC_STOPS = {
    StopReason.END_TURN: "end_turn",
    StopReason.TOOL_USE: "tool_use",
    StopReason.MAX_TOKENS: "max_tokens",
    StopReason.CONTENT_FILTER: "refusal",
}


def _text_of(content: Any) -> str:
    """The text of a wire message content: a string, or the text of its text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text", "")) if isinstance(part, dict) else "" for part in content
        )
    return ""


class ProviderConformance:
    """The provider contract as pytest tests; subclass it as ``Test<Name>`` in a test module.

    The contract, for a version-2 provider (``provider_api = 2``):

    * A stream that succeeds yields ``TextDelta`` pieces; for each tool call a
      ``ToolCallStart(id, name)`` (the vendor's call id, the *astrid* tool name even where
      the provider had to rename it for the API) before its ``ToolCallDelta`` pieces, whose
      concatenation is exactly the argument text the server sent (pieces of different calls
      may interleave), and a ``ToolCallEnd(id)`` after them; at most one ``Usage``, only if
      the server reported usage (none reported: no ``Usage`` at all, never ``Usage(0, 0)``,
      so that the runtime charges the reservation); exactly one ``Stop`` whose ``raw`` is the
      vendor's word; ``Done`` last. ``Usage.input_tokens`` counts cached input tokens too.
    * A request the server refuses with an HTTP error raises, from the stream's first
      ``__anext__`` (or from ``complete_simple``), the typed error of ``astrid.errors``:
      ``AuthenticationFailed`` for 401/403 (its message never holds the key),
      ``RateLimited`` for 429 with ``retry_after_s`` from ``retry-after``, ``ContextTooLong``
      for a prompt over the context window, ``ProviderError`` with ``status`` otherwise;
      ``retried`` is True exactly when more than one attempt was made.
    * A stream that breaks after the server answered 200 (connection dropped, body cut,
      error event mid-stream, silence beyond ``timeout_s``) yields ``StreamError`` as its last
      event and raises nothing: the caller sees what arrived before it and knows the response
      is incomplete.
    * A stream closed by its caller (``aclose()``, or its task cancelled) closes the HTTP
      connection at once and leaves no task running.
    """

    wire: ClassVar[Literal["openai", "anthropic"]]
    """The wire format the provider speaks: ``"openai"`` or ``"anthropic"``."""

    model: ClassVar[str] = "conformance-default-model"
    """The provider's configured default model (requests name another one in settings)."""

    api_key: ClassVar[str] = "sk-conformance-0123456789abcdef"
    """The key the fake server expects."""

    timeout_s: ClassVar[float] = 10.0
    """The request timeout the provider is given."""

    case_timeout_s: ClassVar[float] = 60.0
    """The bound on each test's whole conversation with the server."""

    close_bound_s: ClassVar[float] = 2.0
    """How soon the server must see the connection closed after the caller stops reading."""

    _tmp_path: Path
    _monkeypatch: pytest.MonkeyPatch
    _loop_tasks: set[asyncio.Task[Any]]

    # -- what a provider author provides ---------------------------------------------------------

    def make_provider(self, target: ProviderTarget) -> LLMProviderV2:
        """A fresh provider of the class under test, pointed at ``target``."""
        raise NotImplementedError(f"{type(self).__name__} must define make_provider(target)")

    # -- fixtures --------------------------------------------------------------------------------

    @pytest.fixture
    def server(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
        """The fake vendor server of ``wire``, stopped after the test."""
        self._tmp_path = tmp_path
        self._monkeypatch = monkeypatch
        monkeypatch.setenv(API_KEY_ENV, self.api_key)
        wire = getattr(self, "wire", None)
        if wire not in ("openai", "anthropic"):
            raise TypeError(f"{type(self).__name__}.wire must be 'openai' or 'anthropic'")
        with fake_server(wire, api_key=self.api_key, io_timeout_s=10) as fake:
            yield fake

    # -- helpers ---------------------------------------------------------------------------------

    def target(
        self,
        server: FakeLLMServer,
        *,
        max_retries: int = 0,
        api_key: str | None = None,
        timeout_s: float | None = None,
    ) -> ProviderTarget:
        """The target for a provider of this test (a key file written under tmp_path)."""
        key = self.api_key if api_key is None else api_key
        key_file = self._tmp_path / f"api-key-{len(key)}-{time.monotonic_ns()}"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(key + "\n")
        self._monkeypatch.setenv(API_KEY_ENV, key)
        return ProviderTarget(
            base_url=server.base_url,
            model=self.model,
            api_key=key,
            api_key_env=API_KEY_ENV,
            api_key_file=key_file,
            max_retries=max_retries,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
        )

    def settings(self, **overrides: Any) -> CallSettings:
        """The settings each request is made with (a model other than the default)."""
        values: dict[str, Any] = {"model": "conformance-model-b", "max_output_tokens": 321}
        values.update(overrides)
        return CallSettings(**values)

    def run(
        self,
        server: FakeLLMServer,
        body: Callable[[LLMProviderV2], Awaitable[T]],
        **target_options: Any,
    ) -> T:
        """Make a provider (``target_options`` go to ``target``) and run ``body`` with it in a
        fresh event loop, bounded in time; the provider is closed after (``aclose()`` or
        ``close()``, if it has one)."""
        provider = self.make_provider(self.target(server, **target_options))
        assert getattr(provider, "provider_api", 1) == 2, (
            "the provider must declare provider_api = 2"
        )

        async def main() -> T:
            self._loop_tasks = {t for t in [asyncio.current_task()] if t is not None}
            try:
                return await asyncio.wait_for(self._tracked(body(provider)), self.case_timeout_s)
            finally:
                await _close(provider)

        return asyncio.run(main())

    async def _tracked(self, body: Awaitable[T]) -> T:
        task = asyncio.current_task()
        if task is not None:
            self._loop_tasks.add(task)
        return await body

    def stray_tasks(self) -> list[asyncio.Task[Any]]:
        """Tasks of the test's loop other than the test itself (call from inside ``run``)."""
        return [t for t in asyncio.all_tasks() if t not in self._loop_tasks and not t.done()]

    def collect(
        self,
        server: FakeLLMServer,
        messages: Sequence[Message] | None = None,
        tools: Sequence[ToolDefinition] = (),
        system_prompt: str = "You are terse.",
        *,
        settings: CallSettings | None = None,
        **target_options: Any,
    ) -> list[StreamEvent]:
        """Every event of one streamed request."""
        conversation = list(messages) if messages is not None else [Message.user("Hello")]
        call_settings = settings or self.settings()

        async def body(provider: LLMProviderV2) -> list[StreamEvent]:
            stream = provider.stream(conversation, tools, system_prompt, settings=call_settings)
            return [event async for event in stream]

        return self.run(server, body, **target_options)

    def failure(self, server: FakeLLMServer, **options: Any) -> BaseException:
        """The exception a streamed request raises (an AssertionError if it raises none)."""
        try:
            events = self.collect(server, **options)
        except Exception as exc:
            return exc
        raise AssertionError(f"expected the request to raise, it yielded {events!r}")

    def expected_usage(self, tokens: Tokens) -> Usage:
        """The ``Usage`` a provider must yield for ``tokens`` (OpenAI reports no cache writes)."""
        return Usage(
            input_tokens=tokens.input,
            output_tokens=tokens.output,
            cache_read_tokens=tokens.cache_read,
            cache_write_tokens=tokens.cache_write if self.wire == "anthropic" else 0,
            reasoning_tokens=tokens.reasoning,
        )

    def raw_stop(self, reason: StopReason) -> str:
        """The vendor's word for ``reason``."""
        return (_OPENAI_STOPS if self.wire == "openai" else _ANTHROPIC_STOPS)[reason]

    def last_body(self, server: FakeLLMServer) -> dict[str, Any]:
        """The JSON body of the last generating request the server received."""
        path = "/v1/chat/completions" if self.wire == "openai" else "/v1/messages"
        requests = server.requests_to(path)
        assert requests, f"the provider sent no request to {path}"
        return requests[-1].json()

    def wire_tools(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The tool definitions of a request as (name, description, schema) dicts."""
        tools = body.get("tools") or []
        if self.wire == "openai":
            assert all(t.get("type") == "function" for t in tools), tools
            return [
                {
                    "name": t["function"]["name"],
                    "description": t["function"].get("description", ""),
                    "schema": t["function"].get("parameters"),
                }
                for t in tools
            ]
        return [
            {
                "name": t["name"],
                "description": t.get("description", ""),
                "schema": t.get("input_schema"),
            }
            for t in tools
        ]

    # -- success ---------------------------------------------------------------------------------

    def test_plain_text(self, server: FakeLLMServer) -> None:
        usage = Tokens(120, 17, cache_read=40, cache_write=8, reasoning=5)
        server.script(text_reply("Hello there, world.", pieces=4, usage=usage))
        events = self.collect(server)
        check_well_formed(events)
        assert text_of(events) == "Hello there, world."
        assert len([e for e in events if isinstance(e, TextDelta)]) >= 2, "text was not streamed"
        assert usage_of(events) == self.expected_usage(usage)
        assert stop_of(events) == Stop(StopReason.END_TURN, self.raw_stop(StopReason.END_TURN))
        assert server.pending == 0

    def test_request_body_in_the_wire_format(self, server: FakeLLMServer) -> None:
        server.script(text_reply("ok"))
        settings = self.settings(temperature=0.25)
        self.collect(
            server, tools=[READ_TOOL, WRITE_TOOL], system_prompt="Be brief.", settings=settings
        )
        body = self.last_body(server)
        assert body["model"] == "conformance-model-b", "the model of the settings was not sent"
        assert body.get("stream") is True
        assert body.get("temperature") == 0.25
        tools = self.wire_tools(body)
        assert [t["description"] for t in tools] == [READ_TOOL.description, WRITE_TOOL.description]
        assert [t["schema"] for t in tools] == [READ_TOOL.input_schema, WRITE_TOOL.input_schema]
        assert tools[1]["name"] == "write"
        if self.wire == "openai":
            first = body["messages"][0]
            assert first["role"] in ("system", "developer")
            assert _text_of(first["content"]) == "Be brief."
            assert _text_of(body["messages"][-1]["content"]) == "Hello"
            assert (body.get("stream_options") or {}).get("include_usage") is True, (
                "without stream_options.include_usage the server sends no usage"
            )
            sent = body.get("max_completion_tokens", body.get("max_tokens"))
            assert sent == 321
        else:
            assert _text_of(body.get("system")) == "Be brief."
            assert all(m["role"] in ("user", "assistant") for m in body["messages"])
            assert _text_of(body["messages"][-1]["content"]) == "Hello"
            assert body["max_tokens"] == 321

    def test_history_with_tool_calls_in_the_wire_format(self, server: FakeLLMServer) -> None:
        history = [
            Message.user("Read a.txt and write b.txt"),
            Message.assistant_with_tools(
                [
                    ToolCall(id="call_1", name="fs:read_file", arguments={"path": "a.txt"}),
                    ToolCall(id="call_2", name="write", arguments={"path": "b.txt", "text": "ü"}),
                ]
            ),
            Message.tool_result(ToolCallResult.success("call_1", "hello")),
            Message.tool_result(ToolCallResult.error("call_2", "permission denied")),
            Message.user("Thanks"),
        ]
        server.script(text_reply("done"))
        events = self.collect(server, history, tools=[READ_TOOL, WRITE_TOOL])
        check_well_formed(events)  # the server accepted the history (it refuses bad pairing)
        body = self.last_body(server)
        wire_read = self.wire_tools(body)[0]["name"]
        if self.wire == "openai":
            messages = [m for m in body["messages"] if m["role"] not in ("system", "developer")]
            assistant = next(m for m in messages if m["role"] == "assistant")
            calls = assistant["tool_calls"]
            assert [c["id"] for c in calls] == ["call_1", "call_2"]
            assert [c["function"]["name"] for c in calls] == [wire_read, "write"]
            assert json.loads(calls[0]["function"]["arguments"]) == {"path": "a.txt"}
            assert json.loads(calls[1]["function"]["arguments"]) == {"path": "b.txt", "text": "ü"}
            results = {
                m["tool_call_id"]: _text_of(m["content"]) for m in messages if m["role"] == "tool"
            }
            assert results["call_1"] == "hello"
            assert "permission denied" in results["call_2"]
        else:
            assistant = next(m for m in body["messages"] if m["role"] == "assistant")
            uses = [b for b in assistant["content"] if b.get("type") == "tool_use"]
            assert [(u["id"], u["name"], u["input"]) for u in uses] == [
                ("call_1", wire_read, {"path": "a.txt"}),
                ("call_2", "write", {"path": "b.txt", "text": "ü"}),
            ]
            after = body["messages"][body["messages"].index(assistant) + 1]
            blocks = {
                b["tool_use_id"]: b for b in after["content"] if b.get("type") == "tool_result"
            }
            assert set(blocks) == {"call_1", "call_2"}, "tool blocks belong in one user message"
            assert _text_of(blocks["call_1"].get("content")) == "hello"
            assert blocks["call_2"].get("is_error") is True
            assert not blocks["call_1"].get("is_error", False)
        assert "Thanks" in json.dumps(body["messages"][-1], ensure_ascii=False)

    def test_one_tool_call_with_a_renamed_tool(self, server: FakeLLMServer) -> None:
        server.script(tool_call_reply(ToolCallSpec("call_r1", '{"path": "a.txt"}'), pieces=4))
        events = self.collect(server, tools=[READ_TOOL, WRITE_TOOL])
        check_well_formed(events)
        assert tool_calls_of(events) == [("call_r1", "fs:read_file", '{"path": "a.txt"}')]
        assert stop_of(events) == Stop(StopReason.TOOL_USE, self.raw_stop(StopReason.TOOL_USE))

    def test_parallel_tool_calls_with_interleaved_deltas(self, server: FakeLLMServer) -> None:
        calls = (
            ToolCallSpec("call_p1", '{"path": "a.txt"}'),
            ToolCallSpec("call_p2", '{"path": "b.txt", "text": "zwei"}'),
            ToolCallSpec("call_p3", '{"path": "c.txt", "text": "drei"}'),
        )
        server.script(tool_call_reply(*calls, text="Working on it.", pieces=4))
        events = self.collect(server, tools=[READ_TOOL, WRITE_TOOL])
        check_well_formed(events)
        assert text_of(events) == "Working on it."
        got = tool_calls_of(events)
        assert [(i, a) for i, _n, a in got] == [(c.id, c.arguments) for c in calls]
        assert [n for _i, n, _a in got] == ["fs:read_file", "write", "write"]
        ids = [e.id for e in events if isinstance(e, ToolCallDelta)]
        assert ids[:3] == ["call_p1", "call_p2", "call_p3"], "the deltas were not interleaved"

    def test_reasoning_is_not_text(self, server: FakeLLMServer) -> None:
        server.script(Reply(chunks=(Thinking("secret plan", signature="c2ln"), Text("answer"))))
        events = self.collect(server)
        check_well_formed(events)
        assert text_of(events) == "answer"

    def test_missing_usage_yields_no_usage(self, server: FakeLLMServer) -> None:
        server.script(text_reply("no usage here", pieces=2, usage=None))
        events = self.collect(server)
        check_well_formed(events)
        assert text_of(events) == "no usage here"
        assert [e for e in events if isinstance(e, Usage)] == [], (
            "a response without usage must not be reported as Usage (it would be free)"
        )

    def test_max_tokens_with_truncated_tool_arguments(self, server: FakeLLMServer) -> None:
        truncated = '{"path": "a.txt", "text": "once upon a ti'
        server.script(
            tool_call_reply(
                ToolCallSpec("call_t1", truncated), stop="max_tokens", usage=Tokens(50, 321)
            )
        )
        events = self.collect(server, tools=[READ_TOOL, WRITE_TOOL])
        check_well_formed(events, ended_calls_required=False)
        assert [(i, a) for i, _n, a in tool_calls_of(events)] == [("call_t1", truncated)]
        assert stop_of(events) == Stop(StopReason.MAX_TOKENS, self.raw_stop(StopReason.MAX_TOKENS))
        assert usage_of(events) == self.expected_usage(Tokens(50, 321))

    def test_unknown_stop_reason_is_other(self, server: FakeLLMServer) -> None:
        word = "a_reason_from_a_newer_api"
        server.script(text_reply("hm", stop=word))
        events = self.collect(server)
        check_well_formed(events)
        assert stop_of(events) == Stop(StopReason.OTHER, word)

    def test_content_filter_stop(self, server: FakeLLMServer) -> None:
        server.script(text_reply("I can", stop="content_filter"))
        events = self.collect(server)
        check_well_formed(events)
        assert stop_of(events) == Stop(
            StopReason.CONTENT_FILTER, self.raw_stop(StopReason.CONTENT_FILTER)
        )

    def test_non_ascii_text(self, server: FakeLLMServer) -> None:
        server.script(text_reply(NON_ASCII, pieces=9))
        events = self.collect(server, [Message.user(NON_ASCII)], system_prompt=NON_ASCII)
        check_well_formed(events)
        assert text_of(events) == NON_ASCII
        body = self.last_body(server)
        assert _text_of(body["messages"][-1]["content"]) == NON_ASCII
        if self.wire == "openai":
            assert _text_of(body["messages"][0]["content"]) == NON_ASCII
        else:
            assert _text_of(body.get("system")) == NON_ASCII

    def test_one_megabyte_response(self, server: FakeLLMServer) -> None:
        text = ("lorem ipsum — 中文 🚀 " * 60000)[:1_000_000]
        server.script(text_reply(text, pieces=64))
        events = self.collect(server)
        check_well_formed(events)
        assert text_of(events) == text

    # -- HTTP errors -------------------------------------------------------------------------------

    def test_rate_limited_then_success(self, server: FakeLLMServer) -> None:
        server.script(rate_limited(0.4), text_reply("after the limit"))
        events = self.collect(server, max_retries=2)
        check_well_formed(events)
        assert text_of(events) == "after the limit"
        first, second = server.requests  # the 429 was retried, once
        waited = second.received_at - first.received_at
        assert waited >= 0.35, f"the retry came {waited:.3f}s after a retry-after of 0.4s"

    def test_rate_limited_raises_with_retry_after(self, server: FakeLLMServer) -> None:
        server.script(rate_limited(7))
        error = self.failure(server)
        assert isinstance(error, RateLimited), repr(error)
        assert error.status == 429
        assert error.retry_after_s == pytest.approx(7.0)
        assert error.retried is False
        assert len(server.requests) == 1

    @pytest.mark.parametrize("max_retries", [0, 1])
    def test_server_error(self, server: FakeLLMServer, max_retries: int) -> None:
        server.script(*[server_error(500)] * (max_retries + 1))
        error = self.failure(server, max_retries=max_retries)
        assert isinstance(error, ProviderError), repr(error)
        assert not isinstance(error, RateLimited | AuthenticationFailed | ContextTooLong)
        assert error.status == 500
        assert error.retried is (max_retries > 0)
        assert len(server.requests) == max_retries + 1
        assert server.pending == 0

    def test_authentication_failed(self, server: FakeLLMServer) -> None:
        wrong = "sk-wrong-conformance-key-9876543210"
        error = self.failure(server, api_key=wrong, max_retries=2)
        assert isinstance(error, AuthenticationFailed), repr(error)
        assert error.status == 401
        assert error.retried is False
        assert len(server.requests) == 1, "a refused key must not be retried"
        assert wrong not in str(error) and wrong not in repr(error.args), "the key leaked"

    def test_context_too_long(self, server: FakeLLMServer) -> None:
        server.script(context_too_long())
        error = self.failure(server, max_retries=2)
        assert isinstance(error, ContextTooLong), repr(error)
        assert error.status == 400

    # -- broken and cancelled streams --------------------------------------------------------------

    @pytest.mark.parametrize("after", [0, 4])
    def test_mid_stream_disconnect_is_a_stream_error(
        self, server: FakeLLMServer, after: int
    ) -> None:
        server.script(text_reply("abcdefghij", pieces=10, disconnect_after=after))
        events = self.collect(server, max_retries=2)
        check_broken(events)
        assert "abcdefghij".startswith(text_of(events))
        assert server.exchanges[0].outcome == "disconnected"

    def test_stalled_stream_times_out(self, server: FakeLLMServer) -> None:
        server.script(text_reply("abc", pieces=3, delay_s=5.0))
        started = time.monotonic()
        try:
            events = self.collect(server, timeout_s=0.5)
        except ProviderError as exc:  # the stall came before the first event was read
            assert exc.status is None, repr(exc)
        else:
            check_broken(events)
        took = time.monotonic() - started
        assert took < 4.5, f"a stream silent for 5 s with timeout_s=0.5 took {took:.1f}s to fail"

    def test_error_event_mid_stream_is_a_stream_error(self, server: FakeLLMServer) -> None:
        server.script(
            Reply(chunks=(Text("partial "), ErrorEvent("Overloaded", "overloaded_error")))
        )
        events = self.collect(server, max_retries=2)
        check_broken(events)
        assert text_of(events) == "partial "

    @pytest.mark.parametrize("how", ["aclose", "cancel"])
    def test_slow_stream_cancelled_by_the_caller(self, server: FakeLLMServer, how: str) -> None:
        server.script(text_reply("x" * 400, pieces=400, delay_s=0.05))
        bound = self.close_bound_s

        async def body(provider: LLMProviderV2) -> Exchange:
            stream = provider.stream([Message.user("Hello")], [], "", settings=self.settings())
            assert hasattr(stream, "aclose"), "stream() must return an async generator"
            first = asyncio.Event()

            async def consume() -> None:
                try:
                    async for event in stream:
                        if isinstance(event, TextDelta):
                            first.set()
                            if how == "aclose":
                                break
                finally:
                    await cast(Any, stream).aclose()

            task = asyncio.create_task(consume())
            waiter = asyncio.create_task(first.wait())
            await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            assert first.is_set(), f"no text arrived: {task}"
            if how == "cancel":
                task.cancel()
            with_cancel = await asyncio.gather(task, return_exceptions=True)
            if how == "cancel":
                assert isinstance(with_cancel[0], asyncio.CancelledError), (
                    f"the stream swallowed the cancellation of its task: {with_cancel[0]!r}"
                )
            exchange = server.exchanges[0]
            deadline = time.monotonic() + bound
            while time.monotonic() < deadline and not (
                exchange.done.is_set() and not self.stray_tasks()
            ):
                await asyncio.sleep(0.02)
            left = self.stray_tasks()
            assert left == [], f"tasks left running after the stream was closed: {left}"
            return exchange

        exchange = self.run(server, body)
        assert exchange.done.is_set(), f"the server still streams {bound}s after the close"
        assert exchange.outcome == "client_closed"
        assert exchange.events_sent < 100
        assert server.wait_idle(1)

    # -- the other calls ---------------------------------------------------------------------------

    def test_complete_simple(self, server: FakeLLMServer) -> None:
        server.script(text_reply("a short answer", pieces=3, usage=Tokens(30, 4, cache_read=10)))

        async def body(provider: LLMProviderV2) -> Completion:
            return await provider.complete_simple("Summarize: hello", settings=self.settings())

        completion = self.run(server, body)
        assert completion.text == "a short answer"
        assert completion.usage == self.expected_usage(Tokens(30, 4, cache_read=10))
        assert completion.stop is StopReason.END_TURN
        request = self.last_body(server)
        assert request["model"] == "conformance-model-b"
        assert not request.get("tools")
        assert _text_of(request["messages"][-1]["content"]) == "Summarize: hello"

    def test_complete_simple_error_is_typed(self, server: FakeLLMServer) -> None:
        server.script(server_error(503))

        async def body(provider: LLMProviderV2) -> Completion:
            return await provider.complete_simple("hello", settings=self.settings())

        with pytest.raises(ProviderError) as caught:
            self.run(server, body)
        assert caught.value.status == 503

    def test_count_tokens(self, server: FakeLLMServer) -> None:
        if isinstance(server, FakeAnthropicServer):
            server.token_count = 4321

        async def body(provider: LLMProviderV2) -> int | None:
            if not isinstance(provider, TokenCounter):
                return None
            return await provider.count_tokens(
                [Message.user("Hello")], [READ_TOOL], "Be brief.", settings=self.settings()
            )

        count = self.run(server, body)
        if count is None:
            pytest.skip("the provider has no count_tokens")
        assert isinstance(count, int) and not isinstance(count, bool), repr(count)
        if isinstance(server, FakeAnthropicServer):
            assert count == 4321
            request = server.requests_to("/v1/messages/count_tokens")[-1].json()
            assert request["model"] == "conformance-model-b"
            assert len(request.get("tools", [])) == 1
        else:
            assert count > 0


# -- checks on a list of events (usable on their own) ----------------------------------------------


def text_of(events: Sequence[StreamEvent]) -> str:
    """The text of the events' ``TextDelta`` pieces."""
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def usage_of(events: Sequence[StreamEvent]) -> Usage | None:
    """The one ``Usage`` of the events, or None."""
    usages = [e for e in events if isinstance(e, Usage)]
    assert len(usages) <= 1, f"more than one Usage: {usages}"
    return usages[0] if usages else None


def stop_of(events: Sequence[StreamEvent]) -> Stop:
    """The one ``Stop`` of the events."""
    stops = [e for e in events if isinstance(e, Stop)]
    assert len(stops) == 1, f"expected exactly one Stop, got {stops}"
    return stops[0]


def tool_calls_of(events: Sequence[StreamEvent]) -> list[tuple[str, str, str]]:
    """(id, name, argument text) of each tool call, in the order they started."""
    names: dict[str, str] = {}
    args: dict[str, list[str]] = {}
    for event in events:
        if isinstance(event, ToolCallStart):
            names[event.id] = event.name
            args.setdefault(event.id, [])
        elif isinstance(event, ToolCallDelta):
            assert event.id in names, f"ToolCallDelta for {event.id!r} before its ToolCallStart"
            args[event.id].append(event.args_delta)
    return [(call_id, names[call_id], "".join(args[call_id])) for call_id in names]


def check_well_formed(events: Sequence[StreamEvent], *, ended_calls_required: bool = True) -> None:
    """A complete response: no StreamError, one Stop, at most one Usage, Done last, every tool
    call started before its deltas and (``ended_calls_required``) ended after them."""
    errors = [e for e in events if isinstance(e, StreamError)]
    assert not errors, f"the stream failed: {errors}"
    assert events and isinstance(events[-1], Done), f"the stream must end with Done: {events[-3:]}"
    assert sum(isinstance(e, Done) for e in events) == 1, "more than one Done"
    stop_of(events)
    usage_of(events)
    started: set[str] = set()
    ended: set[str] = set()
    for event in events:
        if isinstance(event, ToolCallStart):
            assert event.id not in started, f"tool call {event.id!r} started twice"
            started.add(event.id)
        elif isinstance(event, ToolCallDelta):
            assert event.id in started, f"delta of {event.id!r} before its start"
            assert event.id not in ended, f"delta of {event.id!r} after its end"
        elif isinstance(event, ToolCallEnd):
            assert event.id in started, f"end of {event.id!r} before its start"
            ended.add(event.id)
    if ended_calls_required:
        assert ended == started, f"tool calls never ended: {sorted(started - ended)}"


def check_broken(events: Sequence[StreamEvent]) -> None:
    """A broken response: it ends with one ``StreamError`` (with a message), nothing after."""
    assert events and isinstance(events[-1], StreamError), (
        f"a dropped stream must end with StreamError, got {events[-3:]}"
    )
    assert events[-1].message, "the StreamError has no message"
    assert sum(isinstance(e, StreamError) for e in events) == 1
    assert not any(isinstance(e, Done) for e in events), "Done after a broken stream"


async def _close(provider: object) -> None:
    """Close the provider's client if it has a close method (async or not)."""
    for name in ("aclose", "close"):
        closer = getattr(provider, name, None)
        if callable(closer):
            result = closer()
            if asyncio.iscoroutine(result):
                await result
            return
