"""astrid messages and tools in Chat Completions form, and the cache that builds each once."""

from __future__ import annotations

import gc
import json
import logging
import re

import pytest
from astrid.context import summary_message
from astrid.llm import ToolDefinition
from astrid.messages import (
    ImagePart,
    Message,
    MessageRole,
    OpaqueContent,
    TextPart,
    ToolCall,
    ToolCallResult,
)

from astrid_openai.wire import (
    WireCache,
    encode_json,
    message_to_wire,
    tool_to_wire,
    wire_tool_name,
)


def sent(cache: WireCache, messages: list[Message], system_prompt: str) -> list[object]:
    """The messages as the request carries them (decoded from the cached pieces)."""
    return [json.loads(piece) for piece in cache.message_pieces(messages, system_prompt)]


def test_text_messages_keep_their_role() -> None:
    assert message_to_wire(Message.user("hi")) == {"role": "user", "content": "hi"}
    assert message_to_wire(Message.assistant("yo")) == {"role": "assistant", "content": "yo"}
    assert message_to_wire(Message.system("be brief")) == {"role": "system", "content": "be brief"}


def test_a_summary_is_a_system_message() -> None:
    wire = message_to_wire(summary_message("they talked"))
    assert wire is not None and wire["role"] == "system"
    assert wire["content"].endswith("they talked")


def test_tool_calls_carry_json_string_arguments() -> None:
    calls = [
        ToolCall(id="c1", name="read_file", arguments={"path": "ä.txt"}),
        ToolCall(id="c2", name="list_directory", arguments={}),
    ]
    assert message_to_wire(Message.assistant_with_tools(calls)) == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path":"ä.txt"}'},
            },
            {
                "id": "c2",
                "type": "function",
                "function": {"name": "list_directory", "arguments": "{}"},
            },
        ],
    }


def test_an_empty_tool_call_list_is_an_empty_assistant_message() -> None:
    assert message_to_wire(Message.assistant_with_tools([])) == {"role": "assistant", "content": ""}


def test_tool_results_name_their_call() -> None:
    ok = Message.tool_result(ToolCallResult.success("c1", "42"))
    failed = Message.tool_result(ToolCallResult.error("c2", "no such file"))
    assert message_to_wire(ok) == {"role": "tool", "tool_call_id": "c1", "content": "42"}
    assert message_to_wire(failed) == {
        "role": "tool",
        "tool_call_id": "c2",
        "content": "no such file",
    }


def test_user_parts_become_text_and_data_url_images() -> None:
    message = Message(
        role=MessageRole.USER,
        content=[TextPart(text="look"), ImagePart(data="AAAA", media_type="image/png")],
    )
    assert message_to_wire(message) == {
        "role": "user",
        "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ],
    }


def test_assistant_parts_keep_only_their_text() -> None:
    message = Message(
        role=MessageRole.ASSISTANT,
        content=[
            TextPart(text="a"),
            ImagePart(data="AAAA", media_type="image/png"),
            TextPart(text="b"),
        ],
    )
    assert message_to_wire(message) == {"role": "assistant", "content": "ab"}


@pytest.mark.parametrize(
    "message",
    [
        Message(role="critic", content="a role from a newer writer"),
        Message(role=MessageRole.USER, content=OpaqueContent(value={"kind": "audio"})),
        Message(role=MessageRole.TOOL, content="a tool message without a call id"),
    ],
)
def test_messages_the_api_cannot_carry_are_left_out_and_logged_once(
    message: Message, caplog: pytest.LogCaptureFixture
) -> None:
    cache = WireCache()
    caplog.set_level(logging.WARNING, logger="astrid_openai")
    first = sent(cache, [Message.user("hi"), message], "")
    second = sent(cache, [Message.user("hi"), message], "")
    assert first == second == [{"role": "user", "content": "hi"}]
    assert sum("left out of the request" in r.getMessage() for r in caplog.records) == 1


def test_tools_are_function_tools() -> None:
    tool = ToolDefinition("read_file", "Read a file", {"type": "object", "properties": {}})
    assert tool_to_wire(tool) == {
        "type": "function",
        "function": {
            "name": "read_file",
            "parameters": {"type": "object", "properties": {}},
            "description": "Read a file",
        },
    }
    assert "description" not in tool_to_wire(ToolDefinition("x"))["function"]


def test_the_system_prompt_comes_first_and_an_empty_one_is_left_out() -> None:
    cache = WireCache()
    assert sent(cache, [Message.user("q")], "rules")[0] == {"role": "system", "content": "rules"}
    assert sent(cache, [Message.user("q")], "") == [{"role": "user", "content": "q"}]


def test_each_message_is_built_once_and_reused_as_the_same_object() -> None:
    cache = WireCache()
    history = [Message.user(f"m{i}") for i in range(50)]
    first = cache.message_pieces(history, "s")
    assert cache.built_messages == 50
    history.append(Message.assistant("new"))
    second = cache.message_pieces(history, "s")
    assert cache.built_messages == 51  # only the new message was built
    assert all(a is b for a, b in zip(first[1:], second[1:51], strict=True))


def test_a_growing_conversation_joins_only_its_new_messages_into_the_same_body() -> None:
    cache, plain = WireCache(), WireCache(enabled=False)
    head = {"model": "m", "stream": True}
    history = [Message.user("first"), Message.assistant("hello")]

    def check(messages: list[Message], system: str) -> None:
        assert cache.body(head, messages, [], system) == plain.body(head, messages, [], system)

    check(history, "sys")
    for i in range(20):
        history += [Message.user(f"q{i}"), Message.assistant(f"a{i}")]
        check(history, "sys")
    assert cache.built_messages == len(history)
    other = [Message.user("another conversation")]  # its own entry; the first one stays
    check(other, "sys")
    history.append(Message.user("more"))
    check(history, "sys")
    assert cache.built_messages == len(history) + 1
    # whatever changed, the body is the full one: another system prompt, a replaced message
    # in the middle, a summarized head, a shorter list, an unchanged repeat
    check(history, "new rules")
    history[5] = Message.assistant("rewritten")
    check(history, "new rules")
    summarized = [Message.system("summary"), *history[-4:]]
    check(summarized, "new rules")
    check(history[:7], "new rules")
    check(history[:7], "new rules")
    check(history, "")


def test_without_the_cache_every_request_builds_every_message() -> None:
    cache = WireCache(enabled=False)
    history = [Message.user(f"m{i}") for i in range(5)]
    first = cache.message_pieces(history, "")
    second = cache.message_pieces(history, "")
    assert first == second and first[0] is not second[0]
    assert cache.cached_messages == 0


def test_an_entry_goes_with_its_message() -> None:
    cache = WireCache()
    kept = Message.user("kept")
    cache.message_pieces([kept, Message.user("dropped")], "")
    gc.collect()
    assert cache.cached_messages == 1
    # an equal but distinct message is a distinct entry (identity, not equality)
    cache.message_pieces([Message.user("kept")], "")
    assert cache.built_messages == 3


def test_tool_names_the_api_refuses_are_sent_in_a_form_it_accepts_and_mapped_back() -> None:
    pattern = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
    names = ["fs:read_file", "fs.read_file", "x" * 80, "ünïcode"]
    wire = [wire_tool_name(name) for name in names]
    assert all(pattern.match(name) for name in wire)
    assert len(set(wire)) == len(names)
    assert wire_tool_name("read_file") == "read_file"
    tools = [ToolDefinition(name) for name in [*names, "read_file"]]
    assert WireCache.renamed(tools) == dict(zip(wire, names, strict=True))
    # an earlier call of the conversation names the tool the same way the tools list does
    call = Message.assistant_with_tools([ToolCall(id="c", name="fs:read_file", arguments={})])
    sent = message_to_wire(call)
    assert sent is not None
    assert sent["tool_calls"][0]["function"]["name"] == wire[0]


def test_the_body_joins_the_pieces_into_one_json_document() -> None:
    cache = WireCache()
    tools = [ToolDefinition("read_file", "Read.")]
    history = [Message.user("naïve ✓"), Message.assistant("ok")]
    body = cache.body({"model": "m", "stream": True}, history, tools, "sys")
    assert json.loads(body) == {
        "model": "m",
        "stream": True,
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "naïve ✓"},
            {"role": "assistant", "content": "ok"},
        ],
        "tools": [tool_to_wire(tools[0])],
    }
    assert "naïve ✓".encode() in body  # UTF-8, not \\u escapes
    assert "tools" not in json.loads(cache.body({"model": "m"}, history, [], ""))


def test_json_is_compact_refuses_nan_and_survives_a_lone_surrogate() -> None:
    assert encode_json({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    with pytest.raises(ValueError):
        encode_json({"x": float("nan")})
    assert json.loads(encode_json({"t": "bad \ud800 text"})) == {"t": "bad \ud800 text"}
