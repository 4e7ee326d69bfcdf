"""Messages: constructors, the untagged content encoding and its decoding order."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from astrid.messages import (
    ImagePart,
    Message,
    MessageRole,
    OpaqueContent,
    TextPart,
    ToolCall,
    ToolCallResult,
    decode_content,
    encode_content,
)


def test_constructors_and_roles() -> None:
    assert Message.user("hi").role is MessageRole.USER
    assert Message.assistant("a").role is MessageRole.ASSISTANT
    assert Message.system("s").role is MessageRole.SYSTEM
    call = ToolCall(id="c1", name="fs:read_file")
    msg = Message.assistant_with_tools([call])
    assert msg.role is MessageRole.ASSISTANT
    assert msg.tool_calls() == [call]
    assert msg.text() is None
    res = Message.tool_result(ToolCallResult.success("c1", "ok"))
    assert res.role is MessageRole.TOOL
    assert res.tool_result_content() == ToolCallResult(call_id="c1", content="ok")
    assert Message.user("x").text() == "x"


def test_tool_call_defaults_and_parse_name() -> None:
    call = ToolCall(id="1", name="filesystem:read_file")
    assert call.arguments == {}
    assert call.parse_name() == ("filesystem", "read_file")
    assert ToolCall(id="1", name="plain").parse_name() is None
    assert call.with_arguments({"a": 1}).arguments == {"a": 1}


def test_tool_call_result_success_and_error() -> None:
    assert ToolCallResult.success("c", "x").is_error is False
    err = ToolCallResult.error("c", "boom")
    assert err.is_error is True and err.content == "boom"


def test_encoding_shapes() -> None:
    assert encode_content("hello") == "hello"
    assert encode_content([ToolCall(id="a", name="n", arguments={"k": 1})]) == [
        {"id": "a", "name": "n", "arguments": {"k": 1}}
    ]
    assert encode_content(ToolCallResult(call_id="a", content="r")) == {
        "call_id": "a",
        "content": "r",
        "is_error": False,
    }
    assert encode_content([TextPart(text="t"), ImagePart(data="AA==", media_type="image/png")]) == [
        {"type": "text", "text": "t"},
        {"type": "image", "data": "AA==", "media_type": "image/png"},
    ]


def test_decoding_order() -> None:
    assert decode_content("x") == "x"
    # An empty array is ToolCalls([]), not MultiPart: the original's order.
    assert decode_content([]) == []
    assert Message.from_json({"role": "assistant", "content": []}).tool_calls() == []
    parts = decode_content([{"type": "text", "text": "t"}])
    assert parts == [TextPart(text="t")]
    # An object with id, name and arguments (plus a "type") is still a tool call.
    calls = decode_content([{"id": "1", "name": "n", "arguments": None, "type": "text"}])
    assert calls == [ToolCall(id="1", name="n", arguments=None)]
    result = decode_content({"call_id": "c", "content": "ok"})
    assert result == ToolCallResult(call_id="c", content="ok", is_error=False)


def test_tool_call_without_arguments_is_not_a_tool_call() -> None:
    content = decode_content([{"id": "1", "name": "n"}])
    assert isinstance(content, OpaqueContent)


def test_unknown_role_and_content_are_kept_verbatim() -> None:
    odd = [
        {"role": "developer", "content": "x"},
        {"role": "User", "content": "capitalised"},
        {"role": "user", "content": None},
        {"role": "user", "content": 42},
        {"role": "tool", "content": {"no_call_id": True}},
        {"role": "assistant", "content": [{"type": "audio", "data": "..."}]},
        {"role": "user", "content": "x", "name": "extra key"},
        {"content": "no role"},
        "not even an object",
    ]
    for raw in odd:
        msg = Message.from_json(raw)
        assert msg.to_json() == raw
        assert json.dumps(msg.to_json()) == json.dumps(raw)
    assert not Message.from_json(odd[0]).is_known
    assert Message.from_json(odd[0]).role == "developer"


def test_known_message_round_trips_exactly() -> None:
    raw = {"role": "tool", "content": {"call_id": "c", "content": "hello", "is_error": False}}
    msg = Message.from_json(raw)
    assert msg.is_known and msg.verbatim is None
    assert msg.to_json() == raw


# -- the unvalidated text constructor used by loading --------------------------------------


def test_text_message_is_indistinguishable_from_a_validated_one() -> None:
    import copy
    import pickle

    from astrid.messages import _FAST_TEXT

    assert _FAST_TEXT  # the layout check passed with the installed pydantic
    for role in MessageRole:
        fast = Message.text_message(role, "héllo")
        slow = Message(role=role, content="héllo")
        assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
        assert fast.model_dump() == slow.model_dump()
        assert fast.model_dump_json() == slow.model_dump_json()
        assert fast.to_json() == slow.to_json() == {"role": role.value, "content": "héllo"}
        assert fast.model_fields_set == slow.model_fields_set
        assert pickle.loads(pickle.dumps(fast)) == slow
        assert copy.deepcopy(fast) == slow and copy.copy(fast) == slow
        changed = fast.model_copy(update={"content": "other"})
        assert changed.text() == "other" and fast.text() == "héllo"
        assert fast.model_fields_set == {"role", "content"}  # the shared set was not touched
        with pytest.raises(ValidationError):
            fast.content = "frozen"  # type: ignore[misc]


def test_text_message_refuses_what_it_cannot_build_unchecked() -> None:
    with pytest.raises(TypeError):
        Message.text_message("user", "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Message.text_message(MessageRole.USER, b"x")  # type: ignore[arg-type]


def test_from_json_fast_paths_match_the_general_decoder() -> None:
    """Shapes astrid writes take the fast paths; near-misses keep their JSON verbatim."""
    exact = [
        {"role": "assistant", "content": [{"id": "c", "name": "fs:read", "arguments": {"a": 1}}]},
        {"role": "tool", "content": {"call_id": "c", "content": "out", "is_error": True}},
        {"role": "user", "content": "text"},
    ]
    for value in exact:
        message = Message.from_json(value)
        assert message.verbatim is None and message.is_known and message.to_json() == value
    near = [
        {"role": "assistant", "content": [{"name": "n", "id": "c", "arguments": {}}]},
        {"role": "tool", "content": {"call_id": "c", "content": "out"}},
        {"role": "tool", "content": {"call_id": "c", "content": "out", "is_error": 1}},
        {"role": "assistant", "content": [{"id": "c", "name": "n", "arguments": {}, "x": 1}]},
    ]
    for value in near:
        message = Message.from_json(value)
        assert message.to_json() == value
