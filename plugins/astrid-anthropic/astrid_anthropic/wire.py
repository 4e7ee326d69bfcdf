"""astrid messages to the Anthropic Messages wire format, built once per message.

The body of a request is assembled from JSON fragments: each ``Message`` is encoded once (its
blocks are cached by identity; messages are immutable) and every request only joins the cached
bytes, so the cost of a request does not grow with the work of encoding the conversation again.
The rules of the API are applied at assembly:

* ``system`` messages (the context manager's summary included) are folded into ``system``,
  after the system prompt, as text blocks;
* tool results become ``tool_result`` blocks of a user message;
* consecutive messages of one role are merged into one message (user and assistant alternate);
  in a merged user message the tool results come first, in a merged assistant message the
  thinking blocks do;
* a tool result that answers no ``tool_use`` of the assistant message just before it (its call
  was evicted by a summary) is sent as text, which the API accepts;
* empty text is left out (the API refuses empty text blocks).
"""

from __future__ import annotations

import hashlib
import json
import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from astrid.llm import ToolDefinition
from astrid.messages import (
    ImagePart,
    Message,
    MessageRole,
    OpaqueContent,
    TextPart,
    ToolCallResult,
)

THINKING_TYPES = frozenset({"thinking", "redacted_thinking"})
"""Block types that must lead an assistant message when the API asks for them back."""

PASSTHROUGH_TYPES = frozenset({
    "text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking",
    "server_tool_use", "web_search_tool_result",
})
"""Anthropic block types that opaque content may hold; such content is sent as it was kept."""


_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_NOT_NAME = re.compile(r"[^a-zA-Z0-9_-]")

CONTINUATION_TEXT = "[The conversation continues; earlier messages are summarized above.]"
"""The user message put first when the conversation starts with the assistant (the API wants a
user message first; after a summary the kept window may start with an assistant message)."""

MISSING_RESULT_TEXT = "No result was recorded for this tool call; it may not have run."
"""The error result sent for a ``tool_use`` that no tool message answers (the API refuses a
conversation where one is left unanswered)."""


def wire_tool_name(name: str) -> str:
    """The name the API accepts for an astrid tool (``^[a-zA-Z0-9_-]{1,64}$``).

    A valid name is kept. Another (``fs:read_file``) has each other character replaced by
    ``_`` and a hash of the original appended, so distinct names stay distinct; the mapping is
    a function of the name alone, so a tool call in the history gets the same name every time.
    """
    if _TOOL_NAME.match(name):
        return name
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return _NOT_NAME.sub("_", name)[:55] + "_" + digest


def dumps(value: Any) -> bytes:
    """Compact JSON as UTF-8 (text with a lone surrogate is escaped instead of failing)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":")).encode("ascii")


@dataclass(frozen=True, slots=True)
class WireMessage:
    """One astrid message as wire fragments: its role and its blocks, already JSON."""

    role: str
    """``user``, ``assistant``, ``system`` (folded into ``system``) or ``""`` (not sent)."""
    blocks: tuple[bytes, ...] = ()
    lead: tuple[bytes, ...] = ()
    """Thinking blocks, which go first in an assistant message."""
    results: tuple[bytes, ...] = ()
    result_ids: tuple[str, ...] = ()
    tool_use_ids: tuple[str, ...] = ()
    system_text: str = ""
    source: ToolCallResult | None = None
    """The tool result, to send as text when it answers no call."""
    solo: bytes = field(default=b"", compare=False)
    """The whole wire message when this message is one on its own (the common case)."""

    def __post_init__(self) -> None:
        if self.role == "assistant":
            solo = _joined_message(_ASSISTANT, self.lead + self.blocks)
        elif self.role == "user":
            solo = _joined_message(_USER, self.results + self.blocks)
        else:
            return
        object.__setattr__(self, "solo", solo)


def dumps_text(text: str) -> bytes:
    """A text block (JSON)."""
    return dumps({"type": "text", "text": text})


_text_block = dumps_text


def _image_block(part: ImagePart) -> bytes:
    return dumps({
        "type": "image",
        "source": {"type": "base64", "media_type": part.media_type, "data": part.data},
    })


def _result_block(result: ToolCallResult) -> bytes:
    block: dict[str, Any] = {
        "type": "tool_result", "tool_use_id": result.call_id, "content": result.content,
    }
    if result.is_error:
        block["is_error"] = True
    return dumps(block)


def orphan_result_text(result: ToolCallResult) -> bytes:
    """A tool result whose call is no longer in the conversation, as a text block."""
    state = "error" if result.is_error else "result"
    return _text_block(f"[tool {state} for call {result.call_id}]\n{result.content}")


def _opaque_blocks(value: Any) -> list[dict[str, Any]] | None:
    """Opaque content that is a list of Anthropic blocks (kept from this provider), else None."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        return None
    for item in value:
        if not isinstance(item, dict) or item.get("type") not in PASSTHROUGH_TYPES:
            return None
    return value


def encode_message(
    message: Message, thinking_for: Callable[[str], Sequence[Mapping[str, Any]]]
) -> WireMessage:
    """The wire fragments of one message (``thinking_for(first_call_id)`` gives its thinking)."""
    role, content = message.role, message.content
    if role == MessageRole.SYSTEM:
        if isinstance(content, str):
            return WireMessage("system", system_text=content)
        if isinstance(content, list):
            texts = [p.text for p in content if isinstance(p, TextPart)]
            return WireMessage("system", system_text="\n".join(t for t in texts if t))
        return WireMessage("")
    if role == MessageRole.TOOL:
        if isinstance(content, ToolCallResult):
            return WireMessage(
                "user", results=(_result_block(content),), result_ids=(content.call_id,),
                source=content,
            )
        role = MessageRole.USER
    if role not in (MessageRole.USER, MessageRole.ASSISTANT):
        return WireMessage("")
    wire_role = "user" if role == MessageRole.USER else "assistant"
    if isinstance(content, str):
        return WireMessage(wire_role, blocks=(_text_block(content),) if content else ())
    if isinstance(content, ToolCallResult):
        return WireMessage(
            "user", results=(_result_block(content),), result_ids=(content.call_id,),
            source=content,
        )
    if isinstance(content, OpaqueContent):
        kept = _opaque_blocks(content.value)
        if kept is None:
            text = json.dumps(content.value, ensure_ascii=False)
            return WireMessage(wire_role, blocks=(_text_block(text),))
        lead = tuple(dumps(b) for b in kept if b["type"] in THINKING_TYPES)
        rest = tuple(dumps(b) for b in kept if b["type"] not in THINKING_TYPES)
        ids = tuple(str(b.get("id")) for b in kept if b["type"] == "tool_use")
        return WireMessage(wire_role, blocks=rest, lead=lead, tool_use_ids=ids)
    calls = message.tool_calls()
    if calls is not None:
        if wire_role != "assistant":
            return WireMessage("")
        blocks = tuple(
            dumps({
                "type": "tool_use", "id": call.id, "name": wire_tool_name(call.name),
                "input": call.arguments if isinstance(call.arguments, dict)
                else {"arguments": call.arguments},
            })
            for call in calls
        )
        lead = tuple(dumps(dict(b)) for b in thinking_for(calls[0].id)) if calls else ()
        return WireMessage(
            "assistant", blocks=blocks, lead=lead, tool_use_ids=tuple(c.id for c in calls)
        )
    parts: list[bytes] = []
    for part in content:
        if isinstance(part, ImagePart):
            parts.append(_image_block(part))
        elif isinstance(part, TextPart) and part.text:
            parts.append(_text_block(part.text))
    return WireMessage(wire_role, blocks=tuple(parts))


class WireCache:
    """Each message's ``WireMessage``, by identity, for as long as the message lives."""

    def __init__(self, thinking_for: Callable[[str], Sequence[Mapping[str, Any]]]) -> None:
        self._thinking_for = thinking_for
        self._entries: dict[int, tuple[weakref.ref[Message], WireMessage]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, message: Message) -> WireMessage:
        """The message's fragments, encoded on first sight."""
        key = id(message)
        entry = self._entries.get(key)
        if entry is not None and entry[0]() is message:
            return entry[1]
        wire = encode_message(message, self._thinking_for)
        entries = self._entries

        def forget(ref: weakref.ref[Message], key: int = key) -> None:
            current = entries.get(key)
            if current is not None and current[0] is ref:
                del entries[key]

        entries[key] = (weakref.ref(message, forget), wire)
        return wire


def _joined_message(role: bytes, blocks: Iterable[bytes]) -> bytes:
    return b'{"role":' + role + b',"content":[' + b",".join(blocks) + b"]}"


_USER, _ASSISTANT = b'"user"', b'"assistant"'


def _missing_results(ids: Iterable[str]) -> list[bytes]:
    return [
        dumps({
            "type": "tool_result", "tool_use_id": call_id, "content": MISSING_RESULT_TEXT,
            "is_error": True,
        })
        for call_id in ids
    ]


def assemble_messages(wires: Sequence[WireMessage]) -> tuple[bytes, list[str]]:
    """The ``messages`` array (JSON) and the system texts of the conversation, in order."""
    system: list[str] = []
    out: list[bytes] = []
    run: list[WireMessage] = []
    run_role = ""
    pending: list[str] = []
    """The tool_use ids of the last assistant message, which the next user message answers."""

    def flush() -> None:
        nonlocal pending
        if len(run) == 1:
            only = run[0]
            if run_role == "assistant" and not pending and out:
                out.append(only.solo)
                pending = list(only.tool_use_ids)
                run.clear()
                return
            if run_role == "user" and len(only.result_ids) == len(pending) and set(
                only.result_ids
            ) == set(pending):
                out.append(only.solo)
                pending = []
                run.clear()
                return
        if run_role == "assistant":
            if pending:
                out.append(_joined_message(_USER, _missing_results(pending)))
            elif not out:
                out.append(_joined_message(_USER, [dumps_text(CONTINUATION_TEXT)]))
            blocks = [b for w in run for b in w.lead] + [b for w in run for b in w.blocks]
            pending = [i for w in run for i in w.tool_use_ids]
            out.append(_joined_message(_ASSISTANT, blocks))
        elif run_role == "user":
            answered = set(pending)
            results: list[bytes] = []
            orphans: list[bytes] = []
            for w in run:
                for block, call_id in zip(w.results, w.result_ids, strict=True):
                    if call_id in answered:
                        results.append(block)
                        answered.discard(call_id)
                    elif w.source is not None:
                        orphans.append(orphan_result_text(w.source))
            results.extend(_missing_results(i for i in pending if i in answered))
            others = [b for w in run for b in w.blocks]
            pending = []
            out.append(_joined_message(_USER, results + orphans + others))
        run.clear()

    for wire in wires:
        if wire.role == "system":
            if wire.system_text:
                system.append(wire.system_text)
            continue
        if not wire.role or not (wire.blocks or wire.lead or wire.results):
            continue
        if wire.role != run_role:
            flush()
            run_role = wire.role
        run.append(wire)
    flush()
    if pending:
        out.append(_joined_message(_USER, _missing_results(pending)))
    return b"[" + b",".join(out) + b"]", system


def encode_tools(tools: Sequence[ToolDefinition]) -> bytes:
    """The ``tools`` array (JSON)."""
    items: list[dict[str, Any]] = []
    for tool in tools:
        item: dict[str, Any] = {"name": wire_tool_name(tool.name)}
        if tool.description:
            item["description"] = tool.description
        item["input_schema"] = tool.input_schema
        items.append(item)
    return dumps(items)


def encode_system(system_prompt: str, folded: Sequence[str]) -> bytes | None:
    """The ``system`` blocks (JSON): the prompt, then the folded system messages; None if empty."""
    texts = [t for t in (system_prompt, *folded) if t]
    if not texts:
        return None
    return dumps([{"type": "text", "text": t} for t in texts])


def build_body(
    *,
    model: str,
    max_tokens: int | None,
    messages: bytes,
    system: bytes | None,
    tools: bytes | None,
    stream: bool,
    extra: Mapping[str, Any],
) -> bytes:
    """The whole request body from its parts (``extra`` keys are added or replace a part)."""
    head: dict[str, Any] = {"model": model}
    if max_tokens is not None:
        head["max_tokens"] = max_tokens
    if stream:
        head["stream"] = True
    fixed = {"messages": messages, "system": system, "tools": tools}
    tail: dict[str, Any] = {}
    for key, value in extra.items():
        if key in fixed:
            fixed[key] = None if value is None else dumps(value)
        elif key in head:
            head[key] = value
        else:
            tail[key] = value
    parts = [dumps(head)[:-1]]
    for key, fragment in fixed.items():
        if fragment is not None:
            parts.append(b',"' + key.encode() + b'":' + fragment)
    if tail:
        parts.append(b"," + dumps(tail)[1:-1])
    return b"".join(parts) + b"}"
