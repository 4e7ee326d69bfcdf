"""Token estimators: how much of the context window a message is taken to use.

The session asks its estimator for every message it adds. ``ContentEstimator`` (the default)
counts every content kind by its real size; ``OriginalEstimator`` keeps the Rust rule (text bytes
// 4, anything else a flat 100) for sessions that must count exactly as the original did.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .messages import ImagePart, Message, OpaqueContent, TextPart, ToolCall, ToolCallResult
from .offload import yielding

IMAGE_TOKENS = 1000
"""What one image part counts as (providers bill images per tile, not by base64 size)."""

MESSAGE_OVERHEAD_TOKENS = 4
"""Per-message framing (role markers) that every chat API adds."""


@runtime_checkable
class TokenEstimator(Protocol):
    """Estimates the tokens of one message; implementations must be cheap and deterministic."""

    name: str

    def estimate(self, message: Message) -> int:
        """Tokens the message is taken to use (never negative)."""
        ...


def _utf8_size(text: str) -> int:
    """UTF-8 bytes of ``text`` (lone surrogates count 3); ASCII text is not re-encoded."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _bytes_to_tokens(text: str) -> int:
    return (_utf8_size(text) + 3) // 4


def _compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class OriginalEstimator:
    """The original's rule: text is UTF-8 bytes // 4; any other content counts 100."""

    name = "original"

    def estimate(self, message: Message) -> int:
        """Text bytes // 4, or a flat 100 for tool calls, tool results and multi-part content."""
        if isinstance(message.content, str):
            return _utf8_size(message.content) // 4
        return 100


class ContentEstimator:
    """Counts every content kind by its real text: about one token per four UTF-8 bytes."""

    name = "content"

    def estimate(self, message: Message) -> int:
        """Text, tool names and arguments, tool results and text parts by size, plus overhead."""
        content = message.content
        total = MESSAGE_OVERHEAD_TOKENS
        if isinstance(content, str):
            return total + _bytes_to_tokens(content)
        if isinstance(content, ToolCallResult):
            return total + _bytes_to_tokens(content.call_id) + _bytes_to_tokens(content.content)
        if isinstance(content, OpaqueContent):
            return total + _bytes_to_tokens(_compact(content.value))
        for item in content:
            if isinstance(item, ToolCall):
                total += _bytes_to_tokens(item.id) + _bytes_to_tokens(item.name)
                total += _bytes_to_tokens(_compact(item.arguments))
            elif isinstance(item, TextPart):
                total += _bytes_to_tokens(item.text)
            elif isinstance(item, ImagePart):
                total += IMAGE_TOKENS
        return total


DEFAULT_ESTIMATOR: TokenEstimator = ContentEstimator()


class RunningEstimate:
    """The estimate of a message list that grows at its end, such as a session's conversation:
    each call estimates only the messages added since the previous one.

    What was counted before is checked to be still the list's head (``messages[:k] == seen``:
    identical objects compare in C, a few ns each; any other change, a summarized head, a
    replaced message, another estimator, means a full recount), so the total is always the
    one a full count gives. The runtime keeps one per session for the request estimate.
    """

    def __init__(self) -> None:
        self._estimator: TokenEstimator | None = None
        self._seen: list[Message] = []
        self._total = 0

    def total(self, estimator: TokenEstimator, messages: Sequence[Message]) -> int:
        """Sum of ``max(0, estimator.estimate(m))`` over ``messages``."""
        items = messages if isinstance(messages, list) else list(messages)
        known = len(self._seen)
        if estimator is not self._estimator or len(items) < known or items[:known] != self._seen:
            self._estimator, self._seen, self._total, known = estimator, [], 0, 0
        new = items[known:]
        self._total += sum(max(0, estimator.estimate(m)) for m in yielding(new))
        self._seen.extend(new)
        return self._total

    def backlog(self, estimator: TokenEstimator, messages: Sequence[Message]) -> int:
        """About how many messages ``total`` would estimate now: those past the counted ones,
        or all after a change of estimator or a shorter list (the head is not compared)."""
        known = len(self._seen)
        if estimator is not self._estimator or len(messages) < known:
            return len(messages)
        return len(messages) - known
