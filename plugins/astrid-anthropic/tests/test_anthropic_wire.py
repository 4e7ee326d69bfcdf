"""The message mapping: astrid messages to the Messages API's rules (no server needed)."""

from __future__ import annotations

import gc
import json
from typing import Any

from astrid.llm import CallSettings, ToolDefinition
from astrid.messages import (
    ImagePart,
    Message,
    MessageRole,
    OpaqueContent,
    TextPart,
    ToolCall,
    ToolCallResult,
)
from astrid.testing.fake_llm import _anthropic_problem
from pydantic import SecretStr

from astrid_anthropic.provider import AnthropicProvider
from astrid_anthropic.wire import (
    CONTINUATION_TEXT,
    MISSING_RESULT_TEXT,
    WireCache,
    assemble_messages,
    build_body,
    encode_message,
    wire_tool_name,
)


def _no_thinking(call_id: str) -> tuple[dict[str, Any], ...]:
    return ()


def messages_json(messages: list[Message]) -> tuple[list[Any], list[str]]:
    array, system = assemble_messages([encode_message(m, _no_thinking) for m in messages])
    return json.loads(array), system


def call(call_id: str, name: str = "read_file", **arguments: Any) -> ToolCall:
    return ToolCall(id=call_id, name=name, arguments=arguments)


def test_roles_merge_results_group_before_text_and_system_folds() -> None:
    conversation = [
        Message.system("[Previous conversation summary]\nearlier"),
        Message.user("first"),
        Message.user("second"),
        Message.assistant("let me look"),
        Message.assistant_with_tools([call("c1", path="a"), call("c2", path="b")]),
        Message.tool_result(ToolCallResult.success("c2", "B")),
        Message.user("also this"),
        Message.tool_result(ToolCallResult.error("c1", "no such file")),
        Message.assistant("done"),
    ]
    wire, system = messages_json(conversation)
    assert system == ["[Previous conversation summary]\nearlier"]
    assert wire == [
        {"role": "user", "content": [
            {"type": "text", "text": "first"}, {"type": "text", "text": "second"},
        ]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "let me look"},
            {"type": "tool_use", "id": "c1", "name": "read_file", "input": {"path": "a"}},
            {"type": "tool_use", "id": "c2", "name": "read_file", "input": {"path": "b"}},
        ]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c2", "content": "B"},
            {"type": "tool_result", "tool_use_id": "c1", "content": "no such file",
             "is_error": True},
            {"type": "text", "text": "also this"},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "done"}]},
    ]
    body = {"model": "m", "max_tokens": 10, "messages": wire}
    assert _anthropic_problem(body) is None


def test_conversation_starting_with_the_assistant_gets_a_user_message_first() -> None:
    wire, _ = messages_json([Message.assistant("hello"), Message.user("hi")])
    assert wire[0] == {"role": "user", "content": [{"type": "text", "text": CONTINUATION_TEXT}]}
    assert [m["role"] for m in wire] == ["user", "assistant", "user"]


def test_result_whose_call_was_evicted_is_text_and_unanswered_call_gets_an_error_result() -> None:
    wire, _ = messages_json([
        Message.tool_result(ToolCallResult.success("gone", "old output")),
        Message.user("next"),
        Message.assistant_with_tools([call("c1"), call("c2")]),
        Message.tool_result(ToolCallResult.success("c1", "one")),
        Message.assistant_with_tools([call("c3")]),
    ])
    assert wire[0]["content"][0] == {
        "type": "text", "text": "[tool result for call gone]\nold output",
    }
    assert wire[2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "one"},
        {"type": "tool_result", "tool_use_id": "c2", "content": MISSING_RESULT_TEXT,
         "is_error": True},
    ]
    assert wire[-1] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "c3", "content": MISSING_RESULT_TEXT,
         "is_error": True},
    ]}
    assert _anthropic_problem({"model": "m", "max_tokens": 1, "messages": wire}) is None


def test_empty_text_is_left_out_and_parts_map_to_blocks() -> None:
    wire, _ = messages_json([
        Message.user(""),
        Message(role=MessageRole.USER, content=[
            TextPart(text="look"), TextPart(text=""),
            ImagePart(data="aGk=", media_type="image/png"),
        ]),
        Message.assistant(""),
        Message(role="developer", content="an unknown role is not sent"),
    ])
    assert wire == [{"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}},
    ]}]


def test_kept_thinking_blocks_lead_the_merged_assistant_message() -> None:
    thinking = {"type": "thinking", "thinking": "plan", "signature": "sig=="}
    wire, _ = messages_json([
        Message.user("q"),
        Message.assistant("text first"),
        Message(role=MessageRole.ASSISTANT, content=OpaqueContent(value=[thinking])),
        Message.assistant_with_tools([call("c1")]),
        Message.tool_result(ToolCallResult.success("c1", "r")),
    ])
    assert wire[1]["content"][0] == thinking
    assert [b["type"] for b in wire[1]["content"]] == ["thinking", "text", "tool_use"]


def test_thinking_remembered_by_call_id_is_sent_back_with_the_call() -> None:
    block = {"type": "redacted_thinking", "data": "opaque"}
    wire = encode_message(
        Message.assistant_with_tools([call("c7")]),
        lambda call_id: (block,) if call_id == "c7" else (),
    )
    assert [json.loads(b) for b in wire.lead] == [block]


def test_opaque_content_that_is_not_blocks_is_sent_as_its_json_text() -> None:
    wire, _ = messages_json([Message(role=MessageRole.USER, content=OpaqueContent(value={"x": 1}))])
    assert wire == [{"role": "user", "content": [{"type": "text", "text": '{"x": 1}'}]}]


def test_tool_names_the_api_refuses_get_a_stable_distinct_wire_name() -> None:
    assert wire_tool_name("read_file") == "read_file"
    mapped = wire_tool_name("fs:read_file")
    assert mapped == wire_tool_name("fs:read_file")
    assert mapped != wire_tool_name("fs_read_file") and mapped != wire_tool_name("fs.read_file")
    long = wire_tool_name("x" * 80)
    assert len(long) <= 64
    for name in (mapped, long, wire_tool_name("ünïcode tool")):
        body = {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
                "tools": [{"name": name, "input_schema": {"type": "object"}}]}
        assert _anthropic_problem(body) is None, name


def test_cache_reuses_a_message_encoding_while_the_message_lives() -> None:
    encoded: list[str] = []

    def counting(call_id: str) -> tuple[dict[str, Any], ...]:
        encoded.append(call_id)
        return ()

    cache = WireCache(counting)
    message = Message.assistant_with_tools([call("c1")])
    first = cache.get(message)
    assert cache.get(message) is first and encoded == ["c1"]
    equal_but_new = Message.assistant_with_tools([call("c1")])
    assert cache.get(equal_but_new) is not first and encoded == ["c1", "c1"]
    del message, equal_but_new
    gc.collect()
    assert len(cache) == 0


def test_body_parts_and_extra_settings() -> None:
    body = json.loads(build_body(
        model="m", max_tokens=5, messages=b"[]", system=None, tools=None, stream=True,
        extra={"temperature": 0.2, "max_tokens": 7, "stop_sequences": ["END"]},
    ))
    assert body == {"model": "m", "max_tokens": 7, "stream": True, "messages": [],
                    "temperature": 0.2, "stop_sequences": ["END"]}


def test_request_body_with_and_without_the_cache_is_identical() -> None:
    conversation = [
        Message.system("summary"), Message.user("héllo"),
        Message.assistant_with_tools([call("c1", "fs:read", path="ü")]),
        Message.tool_result(ToolCallResult.success("c1", "x")), Message.user("more"),
    ]
    tools = [ToolDefinition("fs:read", "reads", {"type": "object"})]
    settings = CallSettings(model="claude-x", max_output_tokens=99, temperature=0.5)
    bodies = []
    for cached in (True, False):
        provider = AnthropicProvider(
            model="default", api_key=SecretStr("k"), wire_cache=cached, temperature=0.9
        )
        bodies.append(provider.request_body(conversation, tools, "prompt", settings))
        bodies.append(provider.request_body(conversation, tools, "prompt", settings))
    assert len(set(bodies)) == 1
    body = json.loads(bodies[0])
    assert body["model"] == "claude-x" and body["max_tokens"] == 99
    assert body["temperature"] == 0.5
    assert body["system"] == [{"type": "text", "text": "prompt"},
                              {"type": "text", "text": "summary"}]
    assert body["tools"][0]["name"] == body["messages"][1]["content"][0]["name"]
    assert _anthropic_problem(body) is None
