"""The fake OpenAI / Anthropic servers of ``astrid.testing.fake_llm``: wire format, scripting,
bounds. Read with a plain stdlib HTTP client, and through the official SDKs where installed."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from astrid.testing.fake_llm import (
    ErrorEvent,
    ErrorReply,
    FakeAnthropicServer,
    FakeLLMServer,
    FakeOpenAIServer,
    ReceivedRequest,
    Reply,
    Text,
    Thinking,
    Tokens,
    ToolArgs,
    ToolCallSpec,
    context_too_long,
    rate_limited,
    split,
    text_reply,
    tool_call_reply,
)

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"
TOOLS_OPENAI = [
    {"type": "function", "function": {"name": "read", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "write", "parameters": {"type": "object"}}},
]
TOOLS_ANTHROPIC = [
    {"name": "read", "input_schema": {"type": "object"}},
    {"name": "write", "input_schema": {"type": "object"}},
]


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(io_timeout_s=5) as server:
        yield server


@pytest.fixture
def anthropic_server() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer(io_timeout_s=5) as server:
        yield server


def _openai_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}], **extra}


def _anthropic_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


def _post(
    server: FakeLLMServer, path: str, body: Any, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request(
        "POST",
        path,
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return conn.getresponse()


def _sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """(event, data) pairs of an SSE body, per the SSE spec's line rules."""
    events: list[tuple[str | None, str]] = []
    for block in raw.decode("utf-8").split("\n\n"):
        if not block.strip():
            continue
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


def _openai_stream(server: FakeOpenAIServer, **extra: Any) -> list[Any]:
    response = _post(server, OPENAI_PATH, _openai_body(stream=True, **extra))
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Type", "").startswith("text/event-stream")
    events = _sse_events(response.read())
    assert events[-1] == (None, "[DONE]")
    return [json.loads(data) for _, data in events[:-1]]


def _anthropic_stream(server: FakeAnthropicServer, **extra: Any) -> list[dict[str, Any]]:
    response = _post(server, ANTHROPIC_PATH, _anthropic_body(stream=True, **extra))
    assert response.status == 200
    assert response.getheader("Transfer-Encoding") == "chunked"
    parsed = []
    for name, data in _sse_events(response.read()):
        event = json.loads(data)
        assert event["type"] == name  # the SSE event name repeats the JSON type
        parsed.append(event)
    return parsed


# -- OpenAI wire format --------------------------------------------------------------------------


def test_openai_stream_text_and_usage_chunk(openai_server: FakeOpenAIServer) -> None:
    usage = Tokens(12, 5, cache_read=4, reasoning=2)
    openai_server.script(text_reply("héllo wörld", pieces=3, usage=usage))
    chunks = _openai_stream(openai_server, stream_options={"include_usage": True})
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert "".join(d for d in deltas if d) == "héllo wörld"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 12,
        "completion_tokens": 5,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 2,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[0]["model"] == "gpt-x"  # echoes the model asked for


def test_openai_streams_usage_only_when_asked(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(text_reply("x"))
    chunks = _openai_stream(openai_server)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_openai_parallel_tool_calls_interleave(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(
        tool_call_reply(
            ToolCallSpec("call_a", '{"path": "a.txt"}'),
            ToolCallSpec("call_b", '{"path": "b.txt", "text": "x"}'),
            pieces=3,
        )
    )
    chunks = _openai_stream(openai_server, tools=TOOLS_OPENAI)
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    order = [call["index"] for call in calls if call["function"].get("arguments")]
    assert order == [0, 1, 0, 1, 0, 1]  # argument deltas of the two calls interleave
    heads = [call for call in calls if "id" in call]
    assert [(h["index"], h["id"], h["function"]["name"]) for h in heads] == [
        (0, "call_a", "read"),  # name None: the request's tool at the same position
        (1, "call_b", "write"),
    ]
    args = {0: "", 1: ""}
    for call in calls:
        args[call["index"]] += call["function"]["arguments"]
    assert json.loads(args[0]) == {"path": "a.txt"}
    assert json.loads(args[1]) == {"path": "b.txt", "text": "x"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_non_stream_body(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(
        Reply(
            chunks=(Text("ab"), ToolArgs(0, "c1", "read", '{"p":'), ToolArgs(0, "c1", "read", "1")),
            stop="max_tokens",
            usage=None,
        )
    )
    response = _post(openai_server, OPENAI_PATH, _openai_body(tools=TOOLS_OPENAI))
    body = json.loads(response.read())
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["content"] == "ab"
    assert choice["message"]["tool_calls"] == [
        {"id": "c1", "type": "function", "function": {"name": "read", "arguments": '{"p":1'}}
    ]
    assert "usage" not in body


def test_openai_error_shapes(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(rate_limited(0.25), context_too_long())
    limited = _post(openai_server, OPENAI_PATH, _openai_body())
    assert limited.status == 429
    assert limited.getheader("retry-after") == "0.25"
    assert json.loads(limited.read())["error"]["code"] == "rate_limit_exceeded"
    too_long = _post(openai_server, OPENAI_PATH, _openai_body())
    assert too_long.status == 400
    assert json.loads(too_long.read())["error"]["code"] == "context_length_exceeded"


def test_openai_refuses_what_the_api_refuses(openai_server: FakeOpenAIServer) -> None:
    bad_name = [{"type": "function", "function": {"name": "fs:read", "parameters": {}}}]
    orphan = [
        {"role": "user", "content": "x"},
        {"role": "tool", "tool_call_id": "c9", "content": ""},
    ]
    unanswered = [
        {"role": "user", "content": "x"},
        {
            "role": "assistant",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}
            ],
        },
        {"role": "user", "content": "y"},
    ]
    cases = [
        (_openai_body(tools=bad_name), "should match pattern"),
        ({"model": "gpt-x", "messages": orphan}, "must be a response to a preceeding"),
        ({"model": "gpt-x", "messages": unanswered}, "did not have response messages: c1"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model parameter"),
        (_openai_body(stream_options={"include_usage": True}), "only allowed when 'stream'"),
        (_openai_body(tool_choice="auto"), "only allowed when 'tools'"),
        (_openai_body(temperature=2.5), "'temperature'"),
    ]
    for body, words in cases:
        response = _post(openai_server, OPENAI_PATH, body)
        assert response.status == 400, body
        error = json.loads(response.read())["error"]
        assert error["type"] == "invalid_request_error"
        assert words in error["message"], (words, error)
    assert openai_server.pending == 0
    assert len(openai_server.requests) == len(cases)


# -- Anthropic wire format -----------------------------------------------------------------------


def test_anthropic_stream_event_sequence(anthropic_server: FakeAnthropicServer) -> None:
    usage = Tokens(100, 20, cache_read=30, cache_write=10, reasoning=5)
    anthropic_server.script(
        Reply(
            chunks=(Thinking("hm", signature="sig"), Text("hé"), Text("llo")),
            usage=usage,
        )
    )
    events = _anthropic_stream(anthropic_server)
    assert [e["type"] for e in events] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start_usage = events[0]["message"]["usage"]
    # Anthropic's input_tokens leaves out the cache reads and writes
    assert (start_usage["input_tokens"], start_usage["cache_read_input_tokens"]) == (60, 30)
    assert start_usage["cache_creation_input_tokens"] == 10
    assert events[3]["delta"] == {"type": "thinking_delta", "thinking": "hm"}
    assert events[4]["delta"] == {"type": "signature_delta", "signature": "sig"}
    assert [e["index"] for e in events[6:10]] == [1, 1, 1, 1]
    assert events[10]["delta"]["stop_reason"] == "end_turn"
    assert events[10]["usage"]["output_tokens"] == 20
    assert events[10]["usage"]["output_tokens_details"] == {"thinking_tokens": 5}


def test_anthropic_interleaved_tool_blocks(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script(
        tool_call_reply(
            ToolCallSpec("tu_a", '{"path": "a"}'), ToolCallSpec("tu_b", '{"path": "b"}'), text="ok"
        )
    )
    events = _anthropic_stream(anthropic_server, tools=TOOLS_ANTHROPIC)
    blocks = [e for e in events if e["type"].startswith("content_block")]
    starts = {e["index"]: e["content_block"] for e in blocks if e["type"] == "content_block_start"}
    assert starts[0] == {"type": "text", "text": ""}
    assert starts[1] == {"type": "tool_use", "id": "tu_a", "name": "read", "input": {}}
    assert starts[2] == {"type": "tool_use", "id": "tu_b", "name": "write", "input": {}}
    deltas = [e["index"] for e in blocks if e["type"] == "content_block_delta"]
    assert deltas[1:] == [1, 2, 1, 2, 1, 2]
    args = {1: "", 2: ""}
    for e in blocks:
        if e["type"] == "content_block_delta" and e["index"] in args:
            args[e["index"]] += e["delta"]["partial_json"]
    assert json.loads(args[1]) == {"path": "a"} and json.loads(args[2]) == {"path": "b"}
    # every block that starts stops, after its last delta
    for index in (0, 1, 2):
        kinds = [e["type"] for e in blocks if e["index"] == index]
        assert kinds[0] == "content_block_start" and kinds[-1] == "content_block_stop"
    assert events[-2]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_missing_usage_sends_none(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script(text_reply("x", usage=None))
    events = _anthropic_stream(anthropic_server)
    assert "usage" not in events[0]["message"]
    assert "usage" not in events[-2]


def test_anthropic_non_stream_and_count_tokens(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.token_count = 321
    anthropic_server.script(
        tool_call_reply(ToolCallSpec("tu_1", '{"a": [1, 2]}'), text="calling", usage=Tokens(9, 3))
    )
    body = json.loads(
        _post(anthropic_server, ANTHROPIC_PATH, _anthropic_body(tools=TOOLS_ANTHROPIC)).read()
    )
    assert body["content"] == [
        {"type": "text", "text": "calling"},
        {"type": "tool_use", "id": "tu_1", "name": "read", "input": {"a": [1, 2]}},
    ]
    assert body["stop_reason"] == "tool_use"
    assert (body["usage"]["input_tokens"], body["usage"]["output_tokens"]) == (9, 3)
    counted = _post(
        anthropic_server,
        "/v1/messages/count_tokens",
        {"model": "claude-x", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert json.loads(counted.read()) == {"input_tokens": 321}
    assert anthropic_server.pending == 0  # counting takes no scripted reply


def test_anthropic_error_event_mid_stream(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script(Reply(chunks=(Text("a"), ErrorEvent("Overloaded"))))
    events = _anthropic_stream(anthropic_server)
    assert events[-1] == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


def test_anthropic_refuses_what_the_api_refuses(anthropic_server: FakeAnthropicServer) -> None:
    tool_use = {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": "tu_1", "name": "read", "input": {}}],
    }
    tool_loop = [
        {"role": "user", "content": "x"},
        tool_use,
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1"}]},
    ]
    thinking = {"type": "enabled", "budget_tokens": 4000}
    cases = [
        ({"model": "claude-x", "messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        (_anthropic_body(messages=[{"role": "system", "content": "s"}]), "top-level 'system'"),
        (_anthropic_body(messages=[{"role": "assistant", "content": "x"}]), "first message"),
        (
            _anthropic_body(messages=[*tool_loop[:2], {"role": "user", "content": "no result"}]),
            "without `tool_result` blocks",
        ),
        (
            _anthropic_body(tools=[{"name": "fs:read", "input_schema": {"type": "object"}}]),
            "should match pattern",
        ),
        (
            _anthropic_body(messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}]),
            "must be non-empty",
        ),
        (_anthropic_body(temperature=1.5), "temperature"),
        (_anthropic_body(thinking={"type": "enabled", "budget_tokens": 512}), "1024"),
        (_anthropic_body(max_tokens=2000, thinking=thinking), "greater than `thinking.budget"),
        (_anthropic_body(max_tokens=8000, thinking=thinking, temperature=0.5), "only be set to 1"),
        (  # the thinking block of the tool-use turn was not carried back
            _anthropic_body(max_tokens=8000, thinking=thinking, messages=tool_loop),
            "must start with a thinking block",
        ),
    ]
    for body, words in cases:
        response = _post(anthropic_server, ANTHROPIC_PATH, body)
        assert response.status == 400, body
        error = json.loads(response.read())["error"]
        assert error["type"] == "invalid_request_error"
        assert words in error["message"], (words, error)
    good = _anthropic_body(
        messages=[
            {"role": "user", "content": "x"},
            tool_use,
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1"}]},
        ]
    )
    thought = {"type": "thinking", "thinking": "hm", "signature": "c2ln"}
    with_thinking = _anthropic_body(
        max_tokens=8000,
        thinking={"type": "enabled", "budget_tokens": 4000},
        messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": [thought, *tool_use["content"]]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1"}]},
        ],
    )
    anthropic_server.script(text_reply("fine"), text_reply("fine too"))
    assert _post(anthropic_server, ANTHROPIC_PATH, good).status == 200
    assert _post(anthropic_server, ANTHROPIC_PATH, with_thinking).status == 200


# -- both servers: keys, script, bounds ----------------------------------------------------------


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_api_key_is_checked(wire: str) -> None:
    cls = FakeOpenAIServer if wire == "openai" else FakeAnthropicServer
    path = OPENAI_PATH if wire == "openai" else ANTHROPIC_PATH
    body = _openai_body() if wire == "openai" else _anthropic_body()
    with cls(api_key="sk-right") as server:
        server.script(text_reply("ok"))
        wrong = _post(server, path, body, {"Authorization": "Bearer sk-wrong"})
        assert wrong.status == 401
        wrong.read()
        assert server.pending == 1  # a refused key takes no scripted reply
        right = _post(server, path, body, {"Authorization": "Bearer sk-right"})
        assert right.status == 200
        assert server.requests[0].headers["authorization"] == "Bearer sk-wrong"


def test_unscripted_request_is_a_non_retryable_400(openai_server: FakeOpenAIServer) -> None:
    response = _post(openai_server, OPENAI_PATH, _openai_body())
    assert response.status == 400
    assert response.getheader("x-should-retry") == "false"
    assert "no reply scripted" in json.loads(response.read())["error"]["message"]


def test_callable_reply_sees_the_request(openai_server: FakeOpenAIServer) -> None:
    def echo(request: ReceivedRequest) -> Reply:
        return text_reply(request.json()["messages"][-1]["content"].upper())

    openai_server.script(echo)
    body = json.loads(_post(openai_server, OPENAI_PATH, _openai_body()).read())
    assert body["choices"][0]["message"]["content"] == "HI"
    assert openai_server.requests[0].json()["messages"] == [{"role": "user", "content": "hi"}]
    assert openai_server.requests_to(OPENAI_PATH) == openai_server.requests


def test_server_time_covers_the_response_and_not_the_idle_connection(
    openai_server: FakeOpenAIServer,
) -> None:
    # 6 events (role, 3 pieces, finish, [DONE]), each after 20 ms: at least 120 ms of server time
    openai_server.script(text_reply("abc", pieces=3, delay_s=0.02), text_reply("quick"))
    conn = http.client.HTTPConnection("127.0.0.1", openai_server.port, timeout=10)
    body = json.dumps(_openai_body(stream=True)).encode()
    started = time.perf_counter()
    conn.request("POST", OPENAI_PATH, body=body, headers={"Content-Type": "application/json"})
    conn.getresponse().read()
    client_s = time.perf_counter() - started
    time.sleep(0.3)  # the keep-alive connection idles: not the server's time
    conn.request("POST", OPENAI_PATH, body=body, headers={"Content-Type": "application/json"})
    conn.getresponse().read()
    conn.close()
    assert openai_server.wait_idle()
    slow, quick = openai_server.exchanges
    # the server stamps its end after its last write, which the client may read first: a few
    # ms of slack, far below the 0.3 s idle gap that must not count
    assert 0.12 <= slow.server_s < client_s + 0.05
    assert 0 < quick.server_s < 0.1
    # the pauses are not CPU time; the handler thread's own work is
    assert 0 < slow.server_cpu_s < slow.server_s - 0.1
    assert 0 < quick.server_cpu_s <= quick.server_s


def test_scripted_disconnect_cuts_the_chunked_body(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(text_reply("abcdef", pieces=6, disconnect_after=3))
    response = _post(openai_server, OPENAI_PATH, _openai_body(stream=True))
    with pytest.raises(http.client.IncompleteRead) as caught:
        response.read()
    assert b"data: " in caught.value.partial
    assert b"[DONE]" not in caught.value.partial
    assert openai_server.exchanges[0].outcome == "disconnected"
    assert openai_server.exchanges[0].events_sent == 3


def test_scripted_disconnect_cuts_a_json_body(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script(Reply(chunks=(Text("x" * 1000),), disconnect_after=0))
    response = _post(anthropic_server, ANTHROPIC_PATH, _anthropic_body())
    with pytest.raises(http.client.IncompleteRead):
        response.read()


def _raw_stream_request(server: FakeLLMServer, path: str, body: dict[str, Any]) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_client_hang_up_is_seen_during_a_slow_stream(wire: str) -> None:
    cls = FakeOpenAIServer if wire == "openai" else FakeAnthropicServer
    path = OPENAI_PATH if wire == "openai" else ANTHROPIC_PATH
    body = _openai_body(stream=True) if wire == "openai" else _anthropic_body(stream=True)
    with cls() as server:
        server.script(text_reply("x" * 200, pieces=200, delay_s=0.5))
        sock = _raw_stream_request(server, path, body)
        assert b"200" in sock.recv(4096)
        started = time.monotonic()
        sock.close()
        exchange = server.exchanges[0]
        assert exchange.done.wait(3), "the server went on streaming to a closed connection"
        assert exchange.outcome == "client_closed"
        assert time.monotonic() - started < 3
        assert server.wait_idle(1)


def test_stop_ends_a_slow_stream_within_its_bound() -> None:
    server = FakeAnthropicServer().start()
    server.script(text_reply("x" * 100, pieces=100, delay_s=5))
    sock = _raw_stream_request(server, ANTHROPIC_PATH, _anthropic_body(stream=True))
    try:
        assert b"200" in sock.recv(4096)
        started = time.monotonic()
        server.stop(timeout_s=3)
        assert time.monotonic() - started < 3
        assert server.exchanges[0].outcome == "stopped"
        assert server.wait_idle(0)
    finally:
        sock.close()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_non_ascii_megabyte_stream_arrives_whole(wire: str) -> None:
    text = ("naïve café 中文 🚀 " * 70000)[:1_000_000]
    with (FakeOpenAIServer if wire == "openai" else FakeAnthropicServer)() as server:
        server.script(text_reply(text, pieces=7))
        if isinstance(server, FakeOpenAIServer):
            chunks = _openai_stream(server)
            got = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
        else:
            assert isinstance(server, FakeAnthropicServer)
            events = _anthropic_stream(server)
            got = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert got == text


def test_models_listing() -> None:
    with FakeOpenAIServer(models=("a", "b")) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        conn.request("GET", "/v1/models")
        body = json.loads(conn.getresponse().read())
        assert [m["id"] for m in body["data"]] == ["a", "b"]
        conn.request("GET", "/v1/nothing")
        assert conn.getresponse().status == 404


def test_split_keeps_every_character() -> None:
    assert split("abcdefg", 3) == ["abc", "de", "fg"]
    assert split("ab", 5) == ["a", "b"]
    assert split("", 3) == [""]


def test_error_reply_headers_are_sent(openai_server: FakeOpenAIServer) -> None:
    openai_server.script(ErrorReply(503, "busy", headers={"x-should-retry": "false"}))
    response = _post(openai_server, OPENAI_PATH, _openai_body())
    assert (response.status, response.getheader("x-should-retry")) == (503, "false")
    assert json.loads(response.read())["error"]["type"] == "server_error"


# -- through the official SDKs (installed by the provider plugins' dev extras) -------------------


def test_openai_sdk_parses_the_stream(openai_server: FakeOpenAIServer) -> None:
    openai = pytest.importorskip("openai")
    openai_server.script(
        rate_limited(0.01),
        tool_call_reply(
            ToolCallSpec("c1", '{"a": 1}'),
            ToolCallSpec("c2", '{"b": "ü"}'),
            text="thinking…",
            usage=Tokens(50, 7, cache_read=20, reasoning=3),
        ),
    )

    async def run() -> tuple[str, dict[int, list[str]], list[str | None], Any]:
        client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="k", max_retries=1)
        try:
            stream = await client.chat.completions.create(
                model="gpt-x",
                messages=[{"role": "user", "content": "hi"}],
                tools=TOOLS_OPENAI,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, finish, usage = "", [], None
            args: dict[int, list[str]] = {0: [], 1: []}
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    for call in choice.delta.tool_calls or []:
                        args[call.index].append(call.function.arguments or "")
                    finish.append(choice.finish_reason)
            return text, args, finish, usage
        finally:
            await client.close()

    text, args, finish, usage = asyncio.run(asyncio.wait_for(run(), 20))
    assert text == "thinking…"
    assert json.loads("".join(args[0])) == {"a": 1} and json.loads("".join(args[1])) == {"b": "ü"}
    assert finish[-1] == "tool_calls"
    assert (usage.prompt_tokens, usage.completion_tokens) == (50, 7)
    assert usage.prompt_tokens_details.cached_tokens == 20
    assert usage.completion_tokens_details.reasoning_tokens == 3
    assert len(openai_server.requests) == 2  # the 429 was retried by the SDK


def test_openai_sdk_sees_a_dropped_stream(openai_server: FakeOpenAIServer) -> None:
    openai = pytest.importorskip("openai")
    openai_server.script(text_reply("abcdef", pieces=6, disconnect_after=3))

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=openai_server.base_url, api_key="k", max_retries=0)
        got: list[str] = []
        try:
            stream = await client.chat.completions.create(
                model="gpt-x", messages=[{"role": "user", "content": "hi"}], stream=True
            )
            with pytest.raises(openai.APIConnectionError):
                async for chunk in stream:
                    got.append(chunk.choices[0].delta.content or "")
        finally:
            await client.close()
        return got

    assert "".join(asyncio.run(asyncio.wait_for(run(), 20))) == "ab"


def test_anthropic_sdk_parses_the_stream(anthropic_server: FakeAnthropicServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    anthropic_server.script(
        Reply(
            chunks=(
                Thinking("let me see", signature="c2ln"),
                Text("héllo"),
                ToolArgs(0, "tu_1", None, '{"a":'),
                ToolArgs(1, "tu_2", None, '{"b":'),
                ToolArgs(0, "tu_1", None, "1}"),
                ToolArgs(1, "tu_2", None, "2}"),
            ),
            stop="tool_use",
            usage=Tokens(100, 20, cache_read=30, cache_write=10, reasoning=5),
        )
    )

    async def run() -> Any:
        client = anthropic.AsyncAnthropic(base_url=anthropic_server.base_url, api_key="k")
        try:
            async with client.messages.stream(
                model="claude-x",
                max_tokens=100,
                messages=[{"role": "user", "content": "hi"}],
                tools=TOOLS_ANTHROPIC,
            ) as stream:
                return await stream.get_final_message()
        finally:
            await client.close()

    message = asyncio.run(asyncio.wait_for(run(), 20))
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[0].signature == "c2ln"
    assert message.content[1].text == "héllo"
    assert (message.content[2].name, message.content[2].input) == ("read", {"a": 1})
    assert (message.content[3].name, message.content[3].input) == ("write", {"b": 2})
    assert message.stop_reason == "tool_use"
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens) == (60, 30)
    assert (usage.cache_creation_input_tokens, usage.output_tokens) == (10, 20)
    assert usage.output_tokens_details.thinking_tokens == 5


def test_anthropic_sdk_errors_and_count_tokens(anthropic_server: FakeAnthropicServer) -> None:
    anthropic = pytest.importorskip("anthropic")
    anthropic_server.token_count = 77
    anthropic_server.script(rate_limited(0.5), Reply(chunks=(Text("a"), ErrorEvent())))

    async def run() -> None:
        client = anthropic.AsyncAnthropic(
            base_url=anthropic_server.base_url, api_key="k", max_retries=0
        )
        try:
            with pytest.raises(anthropic.RateLimitError) as limited:
                await client.messages.create(
                    model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                )
            assert limited.value.response.headers["retry-after"] == "0.5"
            with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
                async with client.messages.stream(
                    model="claude-x", max_tokens=10, messages=[{"role": "user", "content": "x"}]
                ) as stream:
                    async for _ in stream:
                        pass
            counted = await client.messages.count_tokens(
                model="claude-x", messages=[{"role": "user", "content": "x"}]
            )
            assert counted.input_tokens == 77
        finally:
            await client.close()

    asyncio.run(asyncio.wait_for(run(), 20))


def test_a_failing_script_is_a_500_naming_the_error(openai_server: FakeOpenAIServer) -> None:
    def broken(request: ReceivedRequest) -> Reply:
        raise KeyError("no such field")

    openai_server.script(broken, text_reply("next"))
    response = _post(openai_server, OPENAI_PATH, _openai_body())
    assert (response.status, response.getheader("x-should-retry")) == (500, "false")
    assert "KeyError" in json.loads(response.read())["error"]["message"]
    exchange = openai_server.exchanges[0]
    assert exchange.outcome == "error" and isinstance(exchange.error, KeyError)
    again = json.loads(_post(openai_server, OPENAI_PATH, _openai_body()).read())
    assert again["choices"][0]["message"]["content"] == "next"  # the server still serves


def test_the_kit_needs_neither_pytest_nor_a_vendor_sdk() -> None:
    """The servers import without pytest; no name of astrid.testing pulls in a vendor SDK."""
    code = (
        "import sys\n"
        "import astrid.testing.fake_llm\n"
        "assert 'pytest' not in sys.modules, 'fake_llm imported pytest'\n"
        "import astrid.testing as t\n"
        "for name in t.__all__:\n"
        "    getattr(t, name)\n"
        "bad = sorted(m for m in ('openai', 'anthropic', 'httpx', 'httpx2') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "print(len(t.__all__))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 15


def test_a_stream_is_cut_at_max_response_s() -> None:
    with FakeOpenAIServer(max_response_s=0.5) as server:
        server.script(text_reply("x" * 100, pieces=100, delay_s=0.05))
        started = time.monotonic()
        response = _post(server, OPENAI_PATH, _openai_body(stream=True))
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        assert time.monotonic() - started < 2
        assert server.exchanges[0].outcome == "expired"
        assert 3 <= server.exchanges[0].events_sent < 100
