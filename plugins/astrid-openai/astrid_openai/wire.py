"""astrid messages and tools as Chat Completions JSON, each encoded once and reused.

``WireCache`` turns a ``Message`` into its wire form and encodes it to JSON bytes the first time
the provider sends it, and hands back the same bytes afterwards: messages are immutable, so a
cached form cannot go stale. Entries are keyed by the object's identity and vanish with the
object (a weak reference), so a cache shared by every session of a provider holds only messages
somebody still has. The same goes for ``ToolDefinition`` objects. ``WireCache.body`` joins the
cached pieces into the request body, and keeps, per conversation (keyed by its first message, the
same way), the joined messages of its last request: when a request's messages start with those
(a list compare, in C), only the messages after them are looked up and joined, so a growing
conversation costs per request what it added, and the SDK neither walks nor re-encodes the history.

Mapping (content kind first, then role):

* text: ``{"role": <system|user|assistant>, "content": text}``; a summary is a system message.
* tool calls: ``{"role": "assistant", "content": null, "tool_calls": [...]}``, arguments as a
  JSON string; an empty list is an empty assistant message.
* a tool result: ``{"role": "tool", "tool_call_id": ..., "content": ...}`` (Chat Completions
  has no error flag: the runtime's error text says what failed).
* tool names outside ``[a-zA-Z0-9_-]{1,64}`` (``fs:read_file``) are sent as
  ``wire_tool_name(name)`` and mapped back when the model calls them.
* parts: user content parts (``text``, ``image_url`` with a ``data:`` URL); for other roles the
  text parts joined (the API takes images from users only).
* anything astrid does not know (an unknown role, opaque content, text in a tool message) is
  left out of the request and logged once; it stays in the session unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import weakref
from collections.abc import Callable, Sequence
from typing import Any

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

logger = logging.getLogger("astrid_openai")

WireMessage = dict[str, Any]

_NAME_OK = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NAME_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_-]")

_TEXT_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
}


def wire_tool_name(name: str) -> str:
    """A tool name the API accepts (``[a-zA-Z0-9_-]{1,64}``): as is when it fits, else made to
    fit with a hash of the original, so ``fs:read`` and ``fs.read`` stay distinct and the same
    name always maps the same way (in the tools and in earlier calls of the conversation)."""
    if _NAME_OK.match(name):
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{_NAME_BAD_CHARS.sub('_', name)[:55]}_{digest}"


def arguments_json(arguments: Any) -> str:
    """A tool call's arguments as the JSON string the API carries (a string is sent as is)."""
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))


def message_to_wire(message: Message) -> WireMessage | None:
    """The Chat Completions form of one message; None for one the API cannot carry."""
    content = message.content
    role = message.role
    if isinstance(content, OpaqueContent) or not isinstance(role, MessageRole):
        return None
    if isinstance(content, ToolCallResult):
        return {"role": "tool", "tool_call_id": content.call_id, "content": content.content}
    if isinstance(content, str):
        wire_role = _TEXT_ROLES.get(role)
        return None if wire_role is None else {"role": wire_role, "content": content}
    calls = message.tool_calls()
    if calls is not None:
        if not calls:
            return {"role": "assistant", "content": ""}
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [_call_to_wire(call) for call in calls],
        }
    return _parts_to_wire(role, content)


def _call_to_wire(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.id,
        "type": "function",
        "function": {
            "name": wire_tool_name(call.name),
            "arguments": arguments_json(call.arguments),
        },
    }


def _parts_to_wire(role: MessageRole, content: Any) -> WireMessage | None:
    wire_role = _TEXT_ROLES.get(role)
    if wire_role is None:
        return None
    if role is not MessageRole.USER:
        text = "".join(part.text for part in content if isinstance(part, TextPart))
        return {"role": wire_role, "content": text}
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            url = f"data:{part.media_type};base64,{part.data}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": "user", "content": parts}


def tool_to_wire(tool: ToolDefinition) -> dict[str, Any]:
    """A tool definition as a Chat Completions function tool."""
    function: dict[str, Any] = {"name": wire_tool_name(tool.name), "parameters": tool.input_schema}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_ENCODE_ASCII = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode


def encode_json(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the SDK itself encodes bodies (no NaN or Infinity).

    Text holding a lone surrogate (which UTF-8 cannot carry) is sent escaped instead of failing.
    """
    try:
        return _ENCODE(value).encode("utf-8")
    except UnicodeEncodeError:
        return _ENCODE_ASCII(value).encode("ascii")


class _IdentityCache:
    """Values computed once per live object, keyed by identity, dropped with the object."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref[Any], Any]] = {}
        self.misses = 0

    def get(self, obj: Any, build: Callable[[Any], Any]) -> Any:
        key = id(obj)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is obj:
            return entry[1]
        self.misses += 1
        value = build(obj)
        self._entries[key] = (weakref.ref(obj, self._forget(key)), value)
        return value

    def _forget(self, key: int) -> Callable[[weakref.ref[Any]], None]:
        entries = self._entries

        def forget(ref: weakref.ref[Any]) -> None:
            entry = entries.get(key)
            if entry is not None and entry[0] is ref:
                del entries[key]

        return forget

    def __len__(self) -> int:
        return len(self._entries)


class _Joined:
    """The messages of a conversation's last request: the system prompt, the messages after the
    first (not the first: it is the cache key, held weakly), how many, and their JSON joined."""

    def __init__(self) -> None:
        self.system = ""
        self.rest: list[Message] = []
        self.count = 0
        self.json = b""


class WireCache:
    """Messages and tools as encoded JSON, each encoded once (``enabled`` False: every time)."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self._messages = _IdentityCache()
        self._tools = _IdentityCache()
        self._joined = _IdentityCache()
        self._system: tuple[str, bytes] = ("", b"")

    def message_pieces(self, messages: Sequence[Message], system_prompt: str) -> list[bytes]:
        """Each message of the request as JSON: the system prompt (when not empty) first."""
        out: list[bytes] = []
        if system_prompt:
            if self._system[0] != system_prompt or not self.enabled:
                wire = {"role": "system", "content": system_prompt}
                self._system = (system_prompt, encode_json(wire))
            out.append(self._system[1])
        get = self._messages.get if self.enabled else _build_now
        for message in messages:
            piece = get(message, _encoded_message)
            if piece is not None:
                out.append(piece)
        return out

    def messages_json(self, messages: Sequence[Message], system_prompt: str) -> bytes:
        """The request's messages as comma-separated JSON objects (the system prompt first),
        joining only the messages added since the conversation's previous request."""
        if not self.enabled or not messages:
            return b",".join(self.message_pieces(messages, system_prompt))
        items = messages if isinstance(messages, list) else list(messages)
        joined: _Joined = self._joined.get(items[0], _new_joined)
        known = joined.count
        if joined.system != system_prompt or len(items) < known or (
            known > 1 and items[1:known] != joined.rest
        ):
            joined.system, joined.rest, joined.count, joined.json = system_prompt, [], 0, b""
            known = 0
        new = items[known:]
        pieces = self.message_pieces(new, "" if known else system_prompt)
        if pieces:
            tail = b",".join(pieces)
            joined.json = joined.json + b"," + tail if joined.json else tail
        joined.rest.extend(new if known else new[1:])
        joined.count = len(items)
        return joined.json

    def tool_pieces(self, tools: Sequence[ToolDefinition]) -> list[bytes]:
        """Each tool of the request as JSON."""
        get = self._tools.get if self.enabled else _build_now
        return [get(tool, _encoded_tool) for tool in tools]

    def body(
        self,
        head: dict[str, Any],
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
    ) -> bytes:
        """The request body: the fields of ``head``, then ``messages`` and ``tools``.

        ``head`` must not hold ``messages`` or ``tools`` and must not be empty.
        """
        parts = [encode_json(head)[:-1], b',"messages":[']
        parts.append(self.messages_json(messages, system_prompt))
        parts.append(b"]")
        if tools:
            parts += [b',"tools":[', b",".join(self.tool_pieces(tools)), b"]"]
        parts.append(b"}")
        return b"".join(parts)

    @staticmethod
    def renamed(tools: Sequence[ToolDefinition]) -> dict[str, str]:
        """Wire name → astrid name, for the tools whose name had to be changed."""
        out: dict[str, str] = {}
        for tool in tools:
            wire = wire_tool_name(tool.name)
            if wire != tool.name:
                out[wire] = tool.name
        return out

    @property
    def cached_messages(self) -> int:
        """How many messages have a cached wire form now."""
        return len(self._messages)

    @property
    def built_messages(self) -> int:
        """How many times a message's wire form was built (cache misses)."""
        return self._messages.misses


def _new_joined(_first: Message) -> _Joined:
    return _Joined()


def _build_now(obj: Any, build: Callable[[Any], Any]) -> Any:
    return build(obj)


def _encoded_tool(tool: ToolDefinition) -> bytes:
    return encode_json(tool_to_wire(tool))


def _encoded_message(message: Message) -> bytes | None:
    wire = message_to_wire(message)
    if wire is None:
        role = message.role.value if isinstance(message.role, MessageRole) else message.role
        logger.warning(
            "openai: a %r message with %s content has no Chat Completions form; "
            "it is left out of the request (and kept in the session)",
            role,
            type(message.content).__name__,
        )
        return None
    return encode_json(wire)
