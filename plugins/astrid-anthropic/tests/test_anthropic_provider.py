"""The provider against the loopback fake Anthropic server: the exact body sent, the stream
mapping, the typed errors, thinking carried back, count_tokens, and one client per loop."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from astrid.errors import AuthenticationFailed, ContextTooLong, ProviderError, RateLimited
from astrid.llm import (
    CallSettings,
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
from astrid.messages import Message, ToolCall, ToolCallResult
from astrid.testing.fake_llm import (
    ErrorEvent,
    ErrorReply,
    FakeAnthropicServer,
    Reply,
    Text,
    Thinking,
    Tokens,
    ToolArgs,
    ToolCallSpec,
    auth_failed,
    context_too_long,
    rate_limited,
    server_error,
    text_reply,
    tool_call_reply,
)

from astrid_anthropic.provider import AnthropicProvider

Make = Callable[..., AnthropicProvider]
SETTINGS = CallSettings(model="claude-test")
TOOLS = [
    ToolDefinition("read_file", "Read a file", {
        "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"],
    }),
    ToolDefinition("fs:stat", "", {"type": "object"}),
]


async def collect(
    provider: AnthropicProvider,
    messages: Sequence[Message],
    tools: Sequence[ToolDefinition] = (),
    system: str = "",
    settings: CallSettings = SETTINGS,
) -> list[StreamEvent]:
    return [e async for e in provider.stream(messages, tools, system, settings=settings)]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_the_body_received_is_exactly_the_expected_wire_format(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(text_reply("ok"))
    conversation = [
        Message.system("[Previous conversation summary]\nthe user asked for a listing"),
        Message.user("read a and b"),
        Message.user("please"),
        Message.assistant("reading"),
        Message.assistant_with_tools([
            ToolCall(id="toolu_1", name="read_file", arguments={"path": "a"}),
            ToolCall(id="toolu_2", name="fs:stat", arguments={"path": "b"}),
        ]),
        Message.tool_result(ToolCallResult.success("toolu_2", "b: 3 bytes")),
        Message.tool_result(ToolCallResult.error("toolu_1", "a: not found")),
        Message.user("thanks"),
    ]
    provider = make_provider(temperature=0.3, max_output_tokens=1000)
    run(collect(provider, conversation, TOOLS, "You are terse."))
    (request,) = server.requests_to("/v1/messages")
    stat = request.json()["tools"][1]["name"]
    assert stat != "fs:stat"
    assert request.json() == {
        "model": "claude-test",
        "max_tokens": 1000,
        "stream": True,
        "temperature": 0.3,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text",
             "text": "[Previous conversation summary]\nthe user asked for a listing"},
        ],
        "tools": [
            {"name": "read_file", "description": "Read a file", "input_schema": {
                "type": "object", "properties": {"path": {"type": "string"}},
                "required": ["path"],
            }},
            {"name": stat, "input_schema": {"type": "object"}},
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "read a and b"}, {"type": "text", "text": "please"},
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "reading"},
                {"type": "tool_use", "id": "toolu_1", "name": "read_file",
                 "input": {"path": "a"}},
                {"type": "tool_use", "id": "toolu_2", "name": stat, "input": {"path": "b"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "b: 3 bytes"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "a: not found",
                 "is_error": True},
                {"type": "text", "text": "thanks"},
            ]},
        ],
    }
    assert request.headers["content-type"] == "application/json"
    assert request.headers["anthropic-version"]


def test_text_usage_with_cache_tokens_and_stop(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(text_reply("héllo wörld ✓", pieces=4,
                             usage=Tokens(1000, 20, cache_read=600, cache_write=100, reasoning=8)))
    events = run(collect(make_provider(), [Message.user("hi")]))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "héllo wörld ✓"
    assert events[-3:] == [
        Usage(1000, 20, cache_read_tokens=600, cache_write_tokens=100, reasoning_tokens=8),
        Stop(StopReason.END_TURN, "end_turn"),
        Done(),
    ]


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("end_turn", StopReason.END_TURN),
        ("stop_sequence", StopReason.END_TURN),
        ("max_tokens", StopReason.MAX_TOKENS),
        ("refusal", StopReason.CONTENT_FILTER),
        ("pause_turn", StopReason.OTHER),
    ],
)
def test_stop_reasons_map(
    server: FakeAnthropicServer, make_provider: Make, raw: str, reason: StopReason
) -> None:
    server.script(text_reply("x", stop=raw))
    events = run(collect(make_provider(), [Message.user("hi")]))
    assert Stop(reason, raw) in events


def test_parallel_tool_calls_with_interleaved_deltas_keep_astrid_names(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(tool_call_reply(
        ToolCallSpec("toolu_a", '{"path": "one"}'), ToolCallSpec("toolu_b", '{"path": "two"}'),
        text="Reading both.",
    ))
    events = run(collect(make_provider(), [Message.user("go")], TOOLS))
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert starts == [ToolCallStart("toolu_a", "read_file"), ToolCallStart("toolu_b", "fs:stat")]
    for call_id, expected in (("toolu_a", {"path": "one"}), ("toolu_b", {"path": "two"})):
        args = "".join(e.args_delta for e in events
                       if isinstance(e, ToolCallDelta) and e.id == call_id)
        assert json.loads(args) == expected
    assert [e for e in events if isinstance(e, ToolCallEnd)] == [
        ToolCallEnd("toolu_a"), ToolCallEnd("toolu_b"),
    ]
    assert Stop(StopReason.TOOL_USE, "tool_use") in events


def test_thinking_is_sent_back_with_its_signature_on_the_tool_loop(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(
        Reply(chunks=(Thinking("I should read "), Thinking("the file.", signature="c2lnbmF0dXJl"),
                      ToolArgs(0, "toolu_t", None, '{"path": "x"}')), stop="tool_use"),
        text_reply("done"),
    )
    provider = make_provider(thinking_budget_tokens=2048)
    first = [Message.user("read x")]
    run(collect(provider, first, TOOLS))
    call = ToolCall(id="toolu_t", name="read_file", arguments={"path": "x"})
    second = [*first, Message.assistant_with_tools([call]),
              Message.tool_result(ToolCallResult.success("toolu_t", "contents"))]
    run(collect(provider, second, TOOLS))
    body = server.requests_to("/v1/messages")[1].json()
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "I should read the file.", "signature": "c2lnbmF0dXJl"},
        {"type": "tool_use", "id": "toolu_t", "name": "read_file", "input": {"path": "x"}},
    ]


def test_missing_usage_yields_no_usage_event(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(text_reply("free?", usage=None))
    events = run(collect(make_provider(), [Message.user("hi")]))
    assert not [e for e in events if isinstance(e, Usage)]
    assert events[-1] == Done()


def test_rate_limit_is_rate_limited_with_retry_after(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(rate_limited(2.5))
    with pytest.raises(RateLimited) as info:
        run(collect(make_provider(), [Message.user("hi")]))
    assert info.value.status == 429 and info.value.retry_after_s == 2.5
    assert info.value.provider == "anthropic" and info.value.retried is False


def test_429_then_success_is_retried_by_the_sdk(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(rate_limited(0.01), text_reply("second time"))
    events = run(collect(make_provider(max_retries=2), [Message.user("hi")]))
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "second time"
    assert len(server.requests_to("/v1/messages")) == 2


@pytest.mark.parametrize(
    ("reply", "error", "status"),
    [
        (auth_failed(), AuthenticationFailed, 401),
        (ErrorReply(403, "no access"), AuthenticationFailed, 403),
        (context_too_long(), ContextTooLong, 400),
        (ErrorReply(400, "messages: bad"), ProviderError, 400),
        (ErrorReply(529, "Overloaded", kind="overloaded_error",
                    headers={"x-should-retry": "false"}), ProviderError, 529),
    ],
)
def test_http_errors_are_typed(
    server: FakeAnthropicServer, make_provider: Make, reply: ErrorReply,
    error: type[ProviderError], status: int,
) -> None:
    server.script(reply)
    with pytest.raises(error) as info:
        run(collect(make_provider(max_retries=3), [Message.user("hi")]))
    assert type(info.value) is error
    assert info.value.status == status and info.value.provider == "anthropic"
    assert "\n" not in str(info.value) and str(status) in str(info.value)


def test_server_errors_are_retried_then_reported_as_retried(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(server_error(500), server_error(503))
    with pytest.raises(ProviderError) as info:
        run(collect(make_provider(max_retries=1), [Message.user("hi")]))
    assert info.value.status == 503 and info.value.retried is True
    assert len(server.requests_to("/v1/messages")) == 2


def test_wrong_key_is_authentication_failed(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    from pydantic import SecretStr

    with pytest.raises(AuthenticationFailed, match="401"):
        run(collect(make_provider(api_key=SecretStr("wrong")), [Message.user("hi")]))


def test_error_event_mid_stream_is_a_stream_error_after_the_usage(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(Reply(chunks=(Text("partial "), ErrorEvent("Overloaded", "overloaded_error"))))
    events = run(collect(make_provider(), [Message.user("hi")]))
    assert isinstance(events[-1], StreamError)
    assert "529" in events[-1].message and "overloaded_error" in events[-1].message
    assert isinstance(events[-2], Usage)
    assert not [e for e in events if isinstance(e, Stop | Done)]


def test_dropped_connection_is_a_stream_error(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(text_reply("a long answer " * 20, pieces=10, disconnect_after=4))
    events = run(collect(make_provider(), [Message.user("hi")]))
    assert isinstance(events[-1], StreamError) and "broke off" in events[-1].message
    assert not [e for e in events if isinstance(e, Done)]


def test_count_tokens_uses_the_endpoint(make_provider: Make) -> None:
    with FakeAnthropicServer(api_key=None, token_count=4242) as fake:
        provider = make_provider(base_url=fake.base_url)
        tokens = run(provider.count_tokens(
            [Message.user("hi")], TOOLS, "system", settings=SETTINGS
        ))
        (request,) = fake.requests_to("/v1/messages/count_tokens")
    assert tokens == 4242
    assert "max_tokens" not in request.json() and "stream" not in request.json()
    assert request.json()["system"] == [{"type": "text", "text": "system"}]


def test_complete_simple_returns_text_usage_and_stop(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(text_reply("a summary", usage=Tokens(50, 7)))
    completion = run(make_provider().complete_simple("summarize", settings=SETTINGS))
    assert completion.text == "a summary"
    assert completion.usage == Usage(50, 7)
    assert completion.stop is StopReason.END_TURN
    body = server.requests[-1].json()
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "summarize"},
    ]}]
    assert "system" not in body and "tools" not in body


def test_one_provider_serves_several_event_loops(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    provider = make_provider()
    server.script(text_reply("one"), text_reply("two"))
    for expected in ("one", "two"):
        events = run(collect(provider, [Message.user("hi")]))
        assert TextDelta(expected) in events


def test_settings_none_uses_the_configured_model(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(text_reply("v1 call"))

    async def call() -> list[StreamEvent]:
        provider = make_provider(model="claude-configured")
        return [e async for e in provider.stream([Message.user("hi")], [], "")]

    events = run(call())
    assert TextDelta("v1 call") in events
    assert server.requests[-1].json()["model"] == "claude-configured"


def test_closing_the_stream_mid_response_closes_the_connection(
    server: FakeAnthropicServer, make_provider: Make
) -> None:
    server.script(text_reply("slow " * 50, pieces=50, delay_s=0.2))

    async def read_two_then_close() -> list[StreamEvent]:
        stream = make_provider().stream([Message.user("hi")], [], "", settings=SETTINGS)
        seen = [await stream.__anext__(), await stream.__anext__()]
        await stream.aclose()  # type: ignore[attr-defined]
        return seen

    seen = run(read_two_then_close())
    assert all(isinstance(e, TextDelta) for e in seen)
    (exchange,) = server.exchanges
    assert exchange.done.wait(2.0)
    assert exchange.outcome == "client_closed"
