"""The provider against the loopback fake server: the exact body sent, events, typed errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
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
    FakeOpenAIServer,
    Reply,
    Text,
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
from pydantic import SecretStr

from astrid_openai import OpenAIOptions
from astrid_openai.provider import OpenAIProvider, _StreamState
from astrid_openai.wire import wire_tool_name

MakeProvider = Callable[..., OpenAIProvider]

HISTORY = [
    Message.system("[Previous conversation summary]\nThey met."),
    Message.user("What is in notes.txt? ✓"),
    Message.assistant_with_tools(
        [
            ToolCall(id="call_1", name="read_file", arguments={"path": "notes.txt"}),
            ToolCall(id="call_2", name="fs:stat", arguments={"path": "notes.txt", "deep": True}),
        ]
    ),
    Message.tool_result(ToolCallResult.success("call_1", "buy milk")),
    Message.tool_result(ToolCallResult.error("call_2", "no such tool")),
    Message.assistant("It says: buy milk."),
    Message.user("Thanks"),
]
TOOLS = [
    ToolDefinition(
        "read_file",
        "Read a file.",
        {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
    ),
    ToolDefinition("fs:stat"),
]


def collect(provider: OpenAIProvider, *args: Any, **kwargs: Any) -> list[StreamEvent]:
    async def run() -> list[StreamEvent]:
        return [event async for event in provider.stream(*args, **kwargs)]

    return asyncio.run(run())


def test_the_body_sent_is_exactly_the_chat_completions_wire_format(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(text_reply("ok"))
    provider = make_provider(max_output_tokens=500, temperature=0.2)
    settings = CallSettings(
        model="fake-model-2", max_output_tokens=64, extra={"seed": 7, "user": "u1"}
    )
    events = collect(provider, HISTORY, TOOLS, "You are terse.", settings=settings)
    assert isinstance(events[-1], Done)
    stat = wire_tool_name("fs:stat")
    assert stat.startswith("fs_stat_")
    expected = {
        "model": "fake-model-2",
        "stream": True,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "system", "content": "[Previous conversation summary]\nThey met."},
            {"role": "user", "content": "What is in notes.txt? ✓"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "read_file", "arguments": '{"path":"notes.txt"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {
                            "name": stat,
                            "arguments": '{"path":"notes.txt","deep":true}',
                        },
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "buy milk"},
            {"role": "tool", "tool_call_id": "call_2", "content": "no such tool"},
            {"role": "assistant", "content": "It says: buy milk."},
            {"role": "user", "content": "Thanks"},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "read_file",
                    "parameters": {
                        "type": "object",
                        "properties": {"path": {"type": "string"}},
                        "required": ["path"],
                    },
                    "description": "Read a file.",
                },
            },
            {"type": "function", "function": {"name": stat, "parameters": {"type": "object"}}},
        ],
        "stream_options": {"include_usage": True},
        "max_completion_tokens": 64,
        "temperature": 0.2,
        "seed": 7,
        "user": "u1",
    }
    (request,) = server.requests
    assert request.json() == expected
    assert json.loads(request.raw_body) == expected  # one JSON document, nothing else
    assert request.headers["authorization"].startswith("Bearer sk-test-")


def test_the_older_max_tokens_field_when_configured(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(text_reply("ok"))
    provider = make_provider(max_output_tokens=99, max_tokens_field="max_tokens")
    collect(provider, HISTORY[1:2], [], "")
    body = server.requests[0].json()
    assert body["max_tokens"] == 99 and "max_completion_tokens" not in body


def test_each_message_is_built_once_over_a_conversation(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    provider = make_provider()
    history: list[Message] = []
    for turn in range(5):
        history.append(Message.user(f"question {turn}"))
        server.script(text_reply(f"answer {turn}"))
        answer = "".join(
            e.text for e in collect(provider, history, TOOLS, "sys") if isinstance(e, TextDelta)
        )
        history.append(Message.assistant(answer))
    assert provider.wire.built_messages == len(history) - 1  # the last answer was never sent
    last = server.requests[-1].json()["messages"]
    assert [m["content"] for m in last[1:]] == [m.text() for m in history[:-1]]


def test_text_tool_calls_usage_and_stop_become_astrid_events(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(
        tool_call_reply(
            ToolCallSpec("call_a", '{"path": "a.txt"}', name="read_file"),
            ToolCallSpec("call_b", '{"path": "b.txt"}', name="fs_stat"),
            text="Reading both.",
            usage=Tokens(120, 30, cache_read=100, reasoning=12),
        )
    )
    events = collect(make_provider(), HISTORY[1:2], TOOLS, "")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Reading both."
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(s.id, s.name) for s in starts] == [("call_a", "read_file"), ("call_b", "fs_stat")]
    for call_id, args in (("call_a", '{"path": "a.txt"}'), ("call_b", '{"path": "b.txt"}')):
        pieces = [e.args_delta for e in events if isinstance(e, ToolCallDelta) and e.id == call_id]
        assert "".join(pieces) == args and len(pieces) > 1
    deltas = [e.id for e in events if isinstance(e, ToolCallDelta)]
    assert deltas[:2] == ["call_a", "call_b"]  # interleaved, told apart by index
    assert [e.id for e in events if isinstance(e, ToolCallEnd)] == ["call_a", "call_b"]
    assert Usage(120, 30, cache_read_tokens=100, reasoning_tokens=12) in events
    assert events[-2:] == [Stop(StopReason.TOOL_USE, "tool_calls"), Done()]


def test_a_renamed_tool_is_called_back_by_its_astrid_name(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    # name None: the fake server calls the request's second tool by its name on the wire
    server.script(Reply(chunks=(ToolArgs(1, "c1", None, "{}"),), stop="tool_use"))
    events = collect(make_provider(), HISTORY[1:2], TOOLS, "")
    assert ToolCallStart("c1", "fs:stat") in events


@pytest.mark.parametrize(
    ("stop", "reason", "raw"),
    [
        ("end_turn", StopReason.END_TURN, "stop"),
        ("max_tokens", StopReason.MAX_TOKENS, "length"),
        ("content_filter", StopReason.CONTENT_FILTER, "content_filter"),
        ("weird", StopReason.OTHER, "weird"),
    ],
)
def test_finish_reasons_map_to_stop_reasons(
    server: FakeOpenAIServer,
    make_provider: MakeProvider,
    stop: str,
    reason: StopReason,
    raw: str,
) -> None:
    server.script(text_reply("x", stop=stop))
    assert Stop(reason, raw) in collect(make_provider(), HISTORY[1:2], [], "")


def test_no_usage_from_the_server_means_no_usage_event(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(text_reply("x", usage=None))
    events = collect(make_provider(), HISTORY[1:2], [], "")
    assert not [e for e in events if isinstance(e, Usage)] and isinstance(events[-1], Done)


def _raises(provider: OpenAIProvider) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        collect(provider, HISTORY[1:2], [], "")
    return info.value


def test_http_errors_become_typed_errors_with_status(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(
        rate_limited(retry_after_s=7),
        auth_failed(),
        ErrorReply(403, "not allowed"),
        context_too_long(),
        ErrorReply(404, "no such model"),
    )
    provider = make_provider()
    limited = _raises(provider)
    assert isinstance(limited, RateLimited) and limited.retry_after_s == 7 and limited.status == 429
    refused = _raises(provider)
    assert isinstance(refused, AuthenticationFailed) and refused.status == 401
    assert "OPENAI_API_KEY" in str(refused)
    forbidden = _raises(provider)
    assert isinstance(forbidden, AuthenticationFailed) and forbidden.status == 403
    too_long = _raises(provider)
    assert isinstance(too_long, ContextTooLong) and too_long.status == 400
    missing = _raises(provider)
    assert type(missing) is ProviderError and missing.status == 404
    assert "no such model" in str(missing) and missing.provider == "openai"
    assert not missing.retried


def test_retried_says_whether_the_sdk_spent_its_retries(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(server_error(), server_error(), server_error())
    error = _raises(make_provider(max_retries=2))
    assert error.status == 500 and error.retried
    assert len(server.requests) == 3
    server.script(server_error(), text_reply("recovered"))
    events = collect(make_provider(max_retries=1), HISTORY[1:2], [], "")
    assert TextDelta("recovered") in events


def test_an_unreachable_server_is_a_provider_error_without_status(api_key: str) -> None:
    with FakeOpenAIServer() as gone:
        url = gone.base_url
    provider = OpenAIProvider(
        OpenAIOptions(model="m", base_url=url, max_retries=0), api_key=SecretStr(api_key)
    )
    error = _raises(provider)
    assert error.status is None and not error.retried
    assert "cannot reach" in str(error) and url in str(error)


def test_a_dropped_stream_is_one_stream_error_and_nothing_after_it(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(text_reply("a long answer cut short", pieces=6, disconnect_after=3))
    events = collect(make_provider(), HISTORY[1:2], [], "")
    assert isinstance(events[-1], StreamError)
    assert not [e for e in events if isinstance(e, Done | Stop | Usage)]


def test_an_error_event_inside_the_stream_is_a_stream_error(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(Reply(chunks=(Text("partial"), ErrorEvent("Overloaded"))))
    events = collect(make_provider(), HISTORY[1:2], [], "")
    assert isinstance(events[-1], StreamError) and "Overloaded" in events[-1].message


def test_complete_simple_returns_text_usage_and_stop(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    server.script(text_reply("a summary", pieces=3, usage=Tokens(40, 9)))

    async def run() -> Any:
        return await make_provider().complete_simple(
            "summarize", settings=CallSettings(model="fake-model")
        )

    completion = asyncio.run(run())
    assert completion.text == "a summary"
    assert completion.usage == Usage(40, 9) and completion.stop is StopReason.END_TURN
    body = server.requests[0].json()
    assert body["messages"] == [{"role": "user", "content": "summarize"}] and "tools" not in body


def _chunks(*deltas: dict[str, Any]) -> list[dict[str, Any]]:
    """Chunks as the provider takes them from the stream: the server's JSON objects."""
    return [
        {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m", **d}
        for d in deltas
    ]


def _events(chunks: list[dict[str, Any]], renamed: dict[str, str] | None = None) -> list[Any]:
    state = _StreamState(renamed or {})
    events = [event for chunk in chunks for event in state.feed(chunk)]
    return events + state.finish()


def test_servers_that_put_every_call_at_index_0_or_send_no_ids_or_usage_on_each_chunk() -> None:
    def call(index: int, call_id: str | None, name: str | None, args: str) -> dict[str, Any]:
        piece: dict[str, Any] = {"index": index, "function": {"arguments": args}}
        if call_id is not None:
            piece["id"] = call_id
        if name is not None:
            piece["function"]["name"] = name
        return {"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]}

    usage = {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    final = {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}
    events = _events(
        _chunks(
            {**call(0, "a", "read_file", '{"p":1}'), "usage": usage},
            call(0, "b", "write", '{"q":'),  # a second call, also at index 0
            call(0, None, None, "2}"),
            call(1, None, "list_directory", "{}"),  # no id at all
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
            {"choices": [], "usage": final},
        )
    )
    starts = [e for e in events if isinstance(e, ToolCallStart)]
    assert [(s.id, s.name) for s in starts[:2]] == [("a", "read_file"), ("b", "write")]
    assert starts[2].name == "list_directory" and starts[2].id.startswith("call_")
    args = {
        s.id: "".join(e.args_delta for e in events if isinstance(e, ToolCallDelta) and e.id == s.id)
        for s in starts
    }
    assert args == {"a": '{"p":1}', "b": '{"q":2}', starts[2].id: "{}"}
    assert [e for e in events if isinstance(e, Usage)] == [Usage(5, 9)]  # the last one only
    assert events[-2:] == [Stop(StopReason.TOOL_USE, "tool_calls"), Done()]


def test_a_call_whose_name_comes_later_starts_when_it_does() -> None:
    events = _events(
        _chunks(
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {"index": 0, "id": "c", "function": {"arguments": '{"a"'}}
                            ]
                        },
                    }
                ]
            },
            {
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {"index": 0, "function": {"name": "fs_x_1", "arguments": ":1}"}}
                            ]
                        },
                    }
                ]
            },
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ),
        renamed={"fs_x_1": "fs:x"},
    )
    assert events[:3] == [
        ToolCallStart("c", "fs:x"),
        ToolCallDelta("c", '{"a"'),
        ToolCallDelta("c", ":1}"),
    ]


def test_a_refusal_is_shown_as_the_answer() -> None:
    events = _events(
        _chunks(
            {"choices": [{"index": 0, "delta": {"content": None, "refusal": "I can't help."}}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        )
    )
    assert events == [TextDelta("I can't help."), Stop(StopReason.END_TURN, "stop"), Done()]


def test_extra_settings_cannot_replace_what_the_provider_owns(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    settings = CallSettings(model="fake-model", extra={"messages": []})
    with pytest.raises(ProviderError, match="may not set 'messages'"):
        collect(make_provider(), HISTORY[1:2], [], "", settings=settings)
    assert server.requests == []


def test_a_body_json_cannot_carry_is_a_provider_error_before_sending(
    server: FakeOpenAIServer, make_provider: MakeProvider
) -> None:
    bad = ToolDefinition("f", "", {"type": "object", "minimum": float("nan")})
    with pytest.raises(ProviderError, match="cannot be encoded as JSON"):
        collect(make_provider(), [Message.user("q")], [bad], "")
    assert server.requests == []
