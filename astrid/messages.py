"""Conversation messages in the original's JSON shape (``astrid_llm::types``).

``MessageContent`` is untagged: a bare string (text), an array of tool calls, a tool-result object
or an array of text/image parts, decoded in that order. Anything that fits none of them (or an
unknown role) is kept verbatim and written back unchanged, so loading never drops data.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class MessageRole(StrEnum):
    """Who wrote a message (lowercase in JSON)."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


_ROLES: dict[str, MessageRole] = {role.value: role for role in MessageRole}


class ToolCall(BaseModel):
    """A tool call requested by the assistant."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    arguments: Any = Field(default_factory=dict)

    def with_arguments(self, arguments: Any) -> ToolCall:
        """A copy with ``arguments`` replaced."""
        return self.model_copy(update={"arguments": arguments})

    def parse_name(self) -> tuple[str, str] | None:
        """Split ``server:tool`` at the first colon; None when there is no colon."""
        server, sep, tool = self.name.partition(":")
        return (server, tool) if sep else None

    def to_json(self) -> dict[str, Any]:
        """The original's JSON object for this call."""
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


class ToolCallResult(BaseModel):
    """The result of one tool call, sent back to the model."""

    model_config = ConfigDict(frozen=True)

    call_id: str
    content: str
    is_error: bool = False

    @classmethod
    def success(cls, call_id: str, content: str) -> ToolCallResult:
        """A successful result."""
        return cls(call_id=call_id, content=content, is_error=False)

    @classmethod
    def error(cls, call_id: str, message: str) -> ToolCallResult:
        """An error result (the call failed; the model sees the message)."""
        return cls(call_id=call_id, content=message, is_error=True)

    def to_json(self) -> dict[str, Any]:
        """The original's JSON object for this result."""
        return {"call_id": self.call_id, "content": self.content, "is_error": self.is_error}


class TextPart(BaseModel):
    """A text part of multi-part content."""

    model_config = ConfigDict(frozen=True)

    type: Literal["text"] = "text"
    text: str


class ImagePart(BaseModel):
    """An image part of multi-part content (base64 data)."""

    model_config = ConfigDict(frozen=True)

    type: Literal["image"] = "image"
    data: str
    media_type: str


ContentPart = TextPart | ImagePart


class OpaqueContent(BaseModel):
    """Content of a shape astrid does not know, kept verbatim."""

    model_config = ConfigDict(frozen=True)

    value: Any


MessageContent = str | ToolCallResult | list[ToolCall] | list[ContentPart] | OpaqueContent
"""Text, tool calls, a tool result, multi-part content, or unknown content kept verbatim."""


def _decode_tool_calls(value: list[Any]) -> list[ToolCall] | None:
    calls: list[ToolCall] = []
    for item in value:
        if not isinstance(item, dict) or "arguments" not in item:
            return None
        call_id, name = item.get("id"), item.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            return None
        calls.append(ToolCall(id=call_id, name=name, arguments=item["arguments"]))
    return calls


def _decode_tool_result(value: dict[str, Any]) -> ToolCallResult | None:
    call_id, content = value.get("call_id"), value.get("content")
    is_error = value.get("is_error", False)
    if not isinstance(call_id, str) or not isinstance(content, str):
        return None
    if not isinstance(is_error, bool):
        return None
    return ToolCallResult(call_id=call_id, content=content, is_error=is_error)


def _decode_parts(value: list[Any]) -> list[ContentPart] | None:
    parts: list[ContentPart] = []
    for item in value:
        if not isinstance(item, dict):
            return None
        kind = item.get("type")
        if kind == "text" and isinstance(item.get("text"), str):
            parts.append(TextPart(text=item["text"]))
        elif (
            kind == "image"
            and isinstance(item.get("data"), str)
            and isinstance(item.get("media_type"), str)
        ):
            parts.append(ImagePart(data=item["data"], media_type=item["media_type"]))
        else:
            return None
    return parts


_CALL_KEYS = ("id", "name", "arguments")
_RESULT_KEYS = ("call_id", "content", "is_error")


def _exact_content(value: Any) -> list[ToolCall] | ToolCallResult | None:
    """Tool calls or a tool result whose JSON is exactly what ``encode_content`` writes, else None.

    Such content needs no round-trip check before dropping the JSON it came from.
    """
    if type(value) is list and value:
        calls: list[ToolCall] = []
        for item in value:
            if type(item) is not dict or tuple(item) != _CALL_KEYS:
                return None
            call_id, name = item["id"], item["name"]
            if type(call_id) is not str or type(name) is not str:
                return None
            calls.append(ToolCall(id=call_id, name=name, arguments=item["arguments"]))
        return calls
    if type(value) is dict and tuple(value) == _RESULT_KEYS:
        call_id, content, is_error = value["call_id"], value["content"], value["is_error"]
        if type(call_id) is str and type(content) is str and type(is_error) is bool:
            return ToolCallResult(call_id=call_id, content=content, is_error=is_error)
    return None


def decode_content(value: Any) -> MessageContent:
    """Decode content JSON in the original's order: text, tool calls, tool result, parts."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        calls = _decode_tool_calls(value)
        if calls is not None:
            return calls
        parts = _decode_parts(value)
        if parts is not None:
            return parts
    if isinstance(value, dict):
        result = _decode_tool_result(value)
        if result is not None:
            return result
    return OpaqueContent(value=value)


def encode_content(content: MessageContent) -> Any:
    """Encode content to the original's untagged JSON."""
    if isinstance(content, str):
        return content
    if isinstance(content, ToolCallResult):
        return content.to_json()
    if isinstance(content, OpaqueContent):
        return content.value
    out: list[Any] = []
    for item in content:
        if isinstance(item, ToolCall):
            out.append(item.to_json())
        else:
            out.append(item.model_dump())
    return out


class Message(BaseModel):
    """One conversation message: a role and its content.

    ``role`` is a ``MessageRole`` or, for a message loaded from a newer or foreign writer, the
    unknown role string as it was read. Such messages are kept and written back verbatim.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    role: MessageRole | str
    content: Annotated[MessageContent, Field(union_mode="left_to_right")]
    verbatim: tuple[Any] | None = Field(default=None, exclude=True, repr=False)
    """The JSON this message was read from, when writing it back must reproduce it exactly."""

    @classmethod
    def user(cls, text: str) -> Message:
        """A user text message."""
        return cls(role=MessageRole.USER, content=text)

    @classmethod
    def assistant(cls, text: str) -> Message:
        """An assistant text message."""
        return cls(role=MessageRole.ASSISTANT, content=text)

    @classmethod
    def system(cls, text: str) -> Message:
        """A system text message."""
        return cls(role=MessageRole.SYSTEM, content=text)

    @classmethod
    def assistant_with_tools(cls, calls: list[ToolCall]) -> Message:
        """An assistant message requesting tool calls."""
        return cls(role=MessageRole.ASSISTANT, content=list(calls))

    @classmethod
    def tool_result(cls, result: ToolCallResult) -> Message:
        """A tool-role message carrying one tool result."""
        return cls(role=MessageRole.TOOL, content=result)

    @property
    def is_known(self) -> bool:
        """True when role and content are of kinds astrid understands."""
        return isinstance(self.role, MessageRole) and not isinstance(self.content, OpaqueContent)

    def text(self) -> str | None:
        """The text, for text content only."""
        return self.content if isinstance(self.content, str) else None

    def tool_calls(self) -> list[ToolCall] | None:
        """The tool calls, for tool-call content only (an empty list counts)."""
        if isinstance(self.content, list) and all(isinstance(c, ToolCall) for c in self.content):
            return [c for c in self.content if isinstance(c, ToolCall)]
        return None

    def tool_result_content(self) -> ToolCallResult | None:
        """The tool result, for tool-result content only."""
        return self.content if isinstance(self.content, ToolCallResult) else None

    def to_json(self) -> Any:
        """The original's ``{"role", "content"}`` object (or the verbatim JSON it was read from)."""
        if self.verbatim is not None:
            return self.verbatim[0]
        role = self.role.value if isinstance(self.role, MessageRole) else self.role
        return {"role": role, "content": encode_content(self.content)}

    @classmethod
    def text_message(cls, role: MessageRole, text: str) -> Message:
        """A text message of a known role, built without validation (loading's hot path).

        Equal in every way to ``Message(role=role, content=text)``; it allocates two objects
        fewer for the garbage collector to walk, which is what a whole load of a long session
        spends much of its time on in a large process.
        """
        if type(text) is not str or type(role) is not MessageRole:
            raise TypeError("text_message takes a MessageRole and a str")
        if not _FAST_TEXT:
            return cls(role=role, content=text)
        message = _new_object(cls)
        _set_attribute(message, "__dict__", {"role": role, "content": text, "verbatim": None})
        _set_attribute(message, "__pydantic_fields_set__", _TEXT_FIELDS)
        _set_attribute(message, "__pydantic_extra__", None)
        _set_attribute(message, "__pydantic_private__", None)
        return message

    @classmethod
    def from_json(cls, value: Any) -> Message:
        """Decode one stored message; shapes astrid does not know are kept verbatim."""
        if type(value) is dict and len(value) == 2:
            # Fast paths for the shapes astrid writes, which round-trip exactly by construction.
            role_text, content = value.get("role"), value.get("content")
            known = _ROLES.get(role_text) if type(role_text) is str else None
            if known is not None:
                if type(content) is str:
                    return cls.text_message(known, content)
                exact = _exact_content(content)
                if exact is not None:
                    return cls(role=known, content=exact)
        if not isinstance(value, dict) or not isinstance(value.get("role"), str):
            return cls(role="", content=OpaqueContent(value=value), verbatim=(value,))
        raw_role: str = value["role"]
        role: MessageRole | str
        try:
            role = MessageRole(raw_role)
        except ValueError:
            role = raw_role
        message = cls(role=role, content=decode_content(value.get("content")))
        if message.to_json() != value or "content" not in value:
            return message.model_copy(update={"verbatim": (value,)})
        return message



_new_object = object.__new__
_set_attribute = object.__setattr__
_TEXT_FIELDS: set[str] = {"role", "content"}
"""Shared by every message ``text_message`` builds: the model is frozen, so pydantic never adds
to it in place (``model_copy`` copies it first)."""


def _fast_text_works() -> bool:
    """True when a message built like ``text_message`` is indistinguishable from a validated one.

    A check of pydantic's instance layout at import: if a pydantic release changes it, loading
    falls back to validated construction instead of building broken messages.
    """
    global _FAST_TEXT
    _FAST_TEXT = True
    try:
        fast = Message.text_message(MessageRole.USER, "x")
        slow = Message(role=MessageRole.USER, content="x")
        copied = fast.model_copy(update={"content": "y"})
        return (
            fast == slow
            and hash(fast) == hash(slow)
            and fast.model_dump() == slow.model_dump()
            and fast.model_dump(exclude_unset=True) == slow.model_dump(exclude_unset=True)
            and fast.model_fields_set == slow.model_fields_set
            and repr(fast) == repr(slow)
            and copied.content == "y"
            and fast.content == "x"
            and {"role", "content"} == _TEXT_FIELDS
        )
    except Exception:
        return False
    finally:
        _FAST_TEXT = False


_FAST_TEXT = False
_FAST_TEXT = _fast_text_works()
