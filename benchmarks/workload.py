"""The message mix of the benchmarks (issue 6), independent of any library.

A conversation is a repeating cycle of six messages, i.e. five turns where every fifth turn is a
tool turn::

    user text 256 B, assistant text 8 KiB, user text 256 B, assistant text 8 KiB,
    assistant tool call (one call, small JSON arguments), tool result 2 KiB

so user and assistant alternate, texts are 256 B and 8 KiB, and every fifth turn is a tool call
followed by a 2 KiB result. Every message is unique (its index leads the text). Sizes are UTF-8
bytes of the text itself (ASCII here), not of the JSON around it.

``spec(i)`` describes message ``i`` as plain data; each library turns it into its own message
type (``astrid_message`` here, the peers' own in ``peers.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

USER_BYTES = 256
ASSISTANT_BYTES = 8 * 1024
TOOL_RESULT_BYTES = 2 * 1024
CYCLE = 6

Kind = Literal["user", "assistant", "tool_call", "tool_result"]

_WORDS = [
    "agent",
    "session",
    "tool",
    "call",
    "result",
    "context",
    "budget",
    "allowance",
    "escape",
    "workspace",
    "git",
    "commit",
    "branch",
    "message",
    "summary",
    "token",
    "model",
    "provider",
    "request",
    "response",
    "stream",
    "window",
    "cut",
    "keep",
    "recent",
    "history",
    "store",
    "backend",
    "sqlite",
    "file",
    "memory",
    "index",
    "list",
    "page",
    "load",
    "tail",
    "append",
    "save",
    "revision",
    "state",
    "capability",
    "approval",
    "policy",
    "deferred",
    "queue",
    "runtime",
    "plugin",
    "hook",
    "lorem",
    "ipsum",
    "dolor",
    "sit",
    "amet",
    "consectetur",
    "adipiscing",
    "elit",
    "sed",
    "do",
    "eiusmod",
    "tempor",
    "incididunt",
    "ut",
    "labore",
]


def _pool(size: int, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words: list[str] = []
        length = 0
        while length < size:
            word = rng.choice(_WORDS)
            words.append(word)
            length += len(word) + 1
        out.append(" ".join(words)[:size])
    return out


_BODIES = {
    USER_BYTES: _pool(USER_BYTES, 32, 1),
    ASSISTANT_BYTES: _pool(ASSISTANT_BYTES, 32, 2),
    TOOL_RESULT_BYTES: _pool(TOOL_RESULT_BYTES, 32, 3),
}


def text(i: int, size: int) -> str:
    """A unique ASCII text of exactly ``size`` bytes for message ``i``."""
    head = f"[{i}] "
    return head + _BODIES[size][i % 32][: size - len(head)]


@dataclass(frozen=True)
class Spec:
    """One message of the mix, library-neutral."""

    index: int
    kind: Kind
    text: str = ""
    call_id: str = ""
    tool_name: str = ""
    arguments: dict[str, Any] | None = None


def spec(i: int) -> Spec:
    """Message ``i`` of the mix."""
    slot = i % CYCLE
    call_id = f"call_{i // CYCLE}"
    if slot in (0, 2):
        return Spec(i, "user", text(i, USER_BYTES))
    if slot in (1, 3):
        return Spec(i, "assistant", text(i, ASSISTANT_BYTES))
    if slot == 4:
        args = {"path": f"/work/src/module_{i % 97}.py", "max_bytes": 2048}
        return Spec(i, "tool_call", call_id=call_id, tool_name="read_file", arguments=args)
    return Spec(
        i, "tool_result", text(i, TOOL_RESULT_BYTES), call_id=call_id, tool_name="read_file"
    )


def astrid_message(i: int) -> Any:
    """Message ``i`` as an ``astrid.messages.Message``."""
    return astrid_from_spec(spec(i))


def mean_text_bytes() -> float:
    """Average text payload of one message over a cycle."""
    return sum(len(spec(i).text) for i in range(CYCLE)) / CYCLE


def marked_spec(proc: int, k: int) -> Spec:
    """Message ``k`` of writer ``proc`` in the concurrency runs: the mix, tagged ``<pXkY>``.

    Text messages start with the tag; a tool call carries it in its call id.
    """
    base = spec(k)
    tag = f"<p{proc}k{k}>"
    if base.kind == "tool_call":
        return Spec(
            k,
            "tool_call",
            call_id=f"p{proc}k{k}",
            tool_name=base.tool_name,
            arguments=base.arguments,
        )
    size = len(base.text)
    body = tag + base.text[len(tag) : size]
    call_id = f"p{proc}k{k}" if base.kind == "tool_result" else ""
    return Spec(k, base.kind, body, call_id=call_id, tool_name=base.tool_name)


MARK_RE = r"p(\d+)k(\d+)"
"""Finds the writer and sequence number in a tagged message's JSON text."""


def astrid_from_spec(s: Spec) -> Any:
    """A spec as an ``astrid.messages.Message``."""
    from astrid.messages import Message, ToolCall, ToolCallResult

    if s.kind == "user":
        return Message.user(s.text)
    if s.kind == "assistant":
        return Message.assistant(s.text)
    if s.kind == "tool_call":
        return Message.assistant_with_tools(
            [ToolCall(id=s.call_id, name=s.tool_name, arguments=s.arguments or {})]
        )
    return Message.tool_result(ToolCallResult.success(s.call_id, s.text))
