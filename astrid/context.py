"""``ContextManager``: when and how old turns are summarized (the original's ``context.rs``).

The original's behaviour, with the fixes of design §5 item 3:

* the summarizer runs first, on an untouched session; if it fails, nothing changes;
* the cut never separates an assistant tool-call message from its tool results;
* the new window is a new list (summary + recent messages), so a ``SessionStore`` saves it as a
  replace and keeps the evicted originals in the session's history (``store.history(id)``);
* with a store, the session is saved before and right after the window moves; a failing save
  restores the old window;
* a trailing user message is always kept, even with ``keep_recent=0``.

Summaries come from a ``Summarizer`` (the ``register_summarizers`` hook): the offline
``ExtractiveSummarizer`` (default) or the ``LLMSummarizer``, which sends the original's prompt.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from .errors import BudgetExceeded, SummarizationError
from .messages import ImagePart, Message, MessageRole, OpaqueContent, TextPart, ToolCallResult
from .session import AgentSession

if TYPE_CHECKING:
    from .llm import LLMProvider
    from .store import SessionStore

DEFAULT_MAX_CONTEXT_TOKENS = 100_000
"""The original's ``Default`` context window."""

DEFAULT_THRESHOLD = 0.85
"""Summarize when ``token_count > max * threshold`` (strict)."""

MIN_THRESHOLD = 0.5
MAX_THRESHOLD = 0.95

DEFAULT_KEEP_RECENT = 10
"""Messages kept verbatim after the summary."""

SUMMARY_PROMPT_PREFIX = (
    "Summarize the following conversation, preserving key facts, decisions, and context that "
    "would be important for continuing the conversation:\n\n"
)
"""What precedes the transcript in the original's prompt (the sentence plus a blank line)."""

SUMMARY_MESSAGE_PREFIX = "[Previous conversation summary]\n"
"""The text that starts the summary message inserted at index 0."""

TOOL_RESULT_CUT_BYTES = 200
"""Tool results longer than this (UTF-8 bytes) are cut in the summary transcript."""

_ROLE_NAMES = {
    MessageRole.USER: "User",
    MessageRole.ASSISTANT: "Assistant",
    MessageRole.SYSTEM: "System",
    MessageRole.TOOL: "Tool",
}


# -- the summarizer protocol and the original's transcript ----------------------------------


@runtime_checkable
class Summarizer(Protocol):
    """Turns the evicted messages into summary text (``register_summarizers`` factories)."""

    name: str

    async def summarize(
        self, messages: Sequence[Message], *, provider: LLMProvider | None = None
    ) -> str:
        """A non-empty summary of ``messages``; raise on failure."""
        ...


def _compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits ``max_bytes`` (whole characters)."""
    if _utf8_len(text) <= max_bytes:
        return text
    used = 0
    for index, char in enumerate(text):
        used += _utf8_len(char)
        if used > max_bytes:
            return text[:index]
    return text


def _role_name(role: MessageRole | str) -> str:
    if isinstance(role, MessageRole):
        return _ROLE_NAMES[role]
    return role[:1].upper() + role[1:] if role else "Unknown"


def _render_content(message: Message) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    if isinstance(content, ToolCallResult):
        text = content.content
        if _utf8_len(text) > TOOL_RESULT_CUT_BYTES:
            text = cut_utf8(text, TOOL_RESULT_CUT_BYTES) + "..."
        return f"[Tool result: {text}]"
    if isinstance(content, OpaqueContent):
        return "[Unknown content]"
    calls = message.tool_calls()
    if calls is not None:
        rendered = ", ".join(f"{c.name}({_compact_json(c.arguments)})" for c in calls)
        return f"[Tool calls: {rendered}]"
    return "[Multi-part content]"


def format_messages_for_summary(messages: Sequence[Message]) -> str:
    """The original's transcript: ``"<Role>: <content>"`` per message, joined by a blank line."""
    return "\n\n".join(f"{_role_name(m.role)}: {_render_content(m)}" for m in messages)


def summary_prompt(messages: Sequence[Message]) -> str:
    """The original's summarization prompt for ``messages``."""
    return SUMMARY_PROMPT_PREFIX + format_messages_for_summary(messages)


def is_summary_message(message: Message) -> bool:
    """True for a summary message this module inserted (system role, the summary prefix)."""
    text = message.text()
    return (
        message.role == MessageRole.SYSTEM
        and text is not None
        and text.startswith(SUMMARY_MESSAGE_PREFIX)
    )


def summary_message(summary: str) -> Message:
    """The message that replaces the evicted ones.

    Role **system**, as in the original; a provider adapter that rejects or treats mid-
    conversation system messages specially may map it (e.g. to a user message).
    """
    return Message.system(SUMMARY_MESSAGE_PREFIX + summary)


# -- built-in summarizers -------------------------------------------------------------------


class LLMSummarizer:
    """Asks the provider for a summary with the original's prompt (``complete_simple`` through
    ``astrid.llm.complete_request``, so providers of both protocol versions work).

    Under ``AgentRuntime`` the provider given is metered: the call is charged to the session
    and workspace budgets, and ``BudgetExceeded`` (the call does not fit) propagates as is.
    """

    name = "llm"

    async def summarize(
        self, messages: Sequence[Message], *, provider: LLMProvider | None = None
    ) -> str:
        """The provider's answer to the original's prompt; ``SummarizationError`` on failure."""
        from .llm import CallSettings, complete_request

        if provider is None:
            raise SummarizationError("the 'llm' summarizer needs an LLM provider; none was given")
        label = getattr(provider, "name", type(provider).__name__)
        settings = CallSettings(model=getattr(provider, "model", ""))
        try:
            text = (await complete_request(provider, summary_prompt(messages), settings)).text
        except BudgetExceeded:
            raise
        except Exception as exc:
            raise SummarizationError(f"LLM provider {label!r} failed to summarize: {exc}") from exc
        if not isinstance(text, str) or not text.strip():
            raise SummarizationError(f"LLM provider {label!r} returned an empty summary")
        return text


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit].rstrip() + "..."


def _parts_text(message: Message) -> str | None:
    content = message.content
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and message.tool_calls() is None:
        pieces: list[str] = []
        for part in content:
            if isinstance(part, TextPart):
                pieces.append(part.text)
            elif isinstance(part, ImagePart):
                pieces.append("[image]")
        return " ".join(pieces)
    return None


class _Section:
    """A titled list of lines that can give up middle lines to fit a budget."""

    def __init__(self, title: str, lines: list[str]) -> None:
        self.title = title
        self.lines = lines
        self.omitted = 0

    def render(self) -> str:
        lines = list(self.lines)
        if self.omitted:
            middle = len(lines) // 2 if len(lines) > 1 else len(lines)
            lines.insert(middle, f"- ... ({self.omitted} more omitted)")
        return "\n".join([self.title, *lines])

    def shrink(self) -> bool:
        if len(self.lines) <= 1:
            return False
        del self.lines[len(self.lines) // 2]
        self.omitted += 1
        return True


class ExtractiveSummarizer:
    """An offline, deterministic summary: requests, tool calls, tool errors, last answer."""

    name = "extractive"

    def __init__(
        self, *, max_chars: int = 4000, item_chars: int = 200, answer_chars: int = 1000
    ) -> None:
        if max_chars < 200:
            raise ValueError("max_chars must be >= 200")
        if item_chars < 20 or answer_chars < 20:
            raise ValueError("item_chars and answer_chars must be >= 20")
        self.max_chars = max_chars
        self.item_chars = item_chars
        self.answer_chars = answer_chars

    async def summarize(
        self, messages: Sequence[Message], *, provider: LLMProvider | None = None
    ) -> str:
        """The summary text (``provider`` is ignored); empty only for no messages."""
        return self.summarize_sync(messages)

    def summarize_sync(self, messages: Sequence[Message]) -> str:
        """The same summary, synchronously."""
        if not messages:
            return ""
        limit = self.item_chars
        earlier: list[str] = []
        notes: list[str] = []
        requests: list[str] = []
        calls: list[str] = []
        errors: list[str] = []
        names: dict[str, str] = {}
        last_answer: str | None = None
        for message in messages:
            role = message.role
            tool_calls = message.tool_calls() if role == MessageRole.ASSISTANT else None
            result = message.tool_result_content()
            text = _parts_text(message)
            if tool_calls is not None:
                for call in tool_calls:
                    names[call.id] = call.name
                    calls.append(
                        "- " + _one_line(f"{call.name}({_compact_json(call.arguments)})", limit)
                    )
            elif result is not None:
                if result.is_error:
                    tool = names.get(result.call_id, result.call_id)
                    errors.append(f"- {tool}: {_one_line(result.content, limit)}")
            elif text is None:
                continue
            elif is_summary_message(message):
                body = text[len(SUMMARY_MESSAGE_PREFIX) :]
                earlier.append(_one_line(body, max(limit, self.max_chars // 3)))
            elif role == MessageRole.USER and text.strip():
                requests.append("- " + _one_line(text, limit))
            elif role == MessageRole.ASSISTANT and text.strip():
                last_answer = text
            elif role == MessageRole.SYSTEM and text.strip():
                notes.append("- " + _one_line(text, limit))
        header = f"Summary of {len(messages)} earlier message(s) (extractive, no model)."
        sections = [
            _Section(title, lines)
            for title, lines in (
                ("Earlier summary:", earlier),
                ("System notes:", notes),
                ("User requests:", requests),
                ("Tool calls:", calls),
                ("Tool errors:", errors),
            )
            if lines
        ]
        tail: list[str] = []
        if last_answer is not None:
            tail.append("Last assistant answer:\n" + _one_line(last_answer, self.answer_chars))
        return self._fit(header, sections, tail)

    def _fit(self, header: str, sections: list[_Section], tail: list[str]) -> str:
        def render() -> str:
            return "\n\n".join([header, *(s.render() for s in sections), *tail])

        text = render()
        while len(text) > self.max_chars:
            shrinkable = [s for s in sections if len(s.lines) > 1]
            if not shrinkable:
                break
            max(shrinkable, key=lambda s: sum(len(line) for line in s.lines)).shrink()
            text = render()
        if len(text) > self.max_chars:
            text = text[: self.max_chars - 3].rstrip() + "..."
        return text


# -- results and stats ----------------------------------------------------------------------


class ContextStats(BaseModel):
    """How full the context window is."""

    model_config = ConfigDict(frozen=True)

    current_tokens: int
    max_tokens: int
    utilization: float
    message_count: int
    needs_summarization: bool

    def utilization_percent(self) -> float:
        """``utilization * 100``."""
        return self.utilization * 100.0


class SummarizationResult(BaseModel):
    """What one ``summarize`` call did (all zero and no summary for a no-op)."""

    model_config = ConfigDict(frozen=True)

    messages_evicted: int
    tokens_freed: int
    summary: str | None = None


# -- the manager ----------------------------------------------------------------------------


def _clamp_threshold(threshold: float) -> float:
    value = float(threshold)
    if math.isnan(value):
        raise ValueError("threshold must be a number, not NaN")
    return min(MAX_THRESHOLD, max(MIN_THRESHOLD, value))


def choose_cut(messages: Sequence[Message], keep_recent: int) -> int:
    """How many of the oldest messages to evict (0: none) so no tool call loses its results.

    Starts at ``len - keep_recent``; a trailing user message is always kept, and with
    ``keep_recent > 0`` at least one message is. A cut is valid when the kept window neither
    starts with a tool-role message nor holds a tool result whose call was made by an evicted
    assistant message. An invalid cut moves earlier to the nearest valid one that still evicts
    something, otherwise later (evicting the tool results too), otherwise nothing is evicted.
    """
    if keep_recent < 0:
        raise ValueError("keep_recent must be >= 0")
    n = len(messages)
    last_is_user = n > 0 and messages[-1].role == MessageRole.USER
    min_keep = 1 if keep_recent > 0 or last_is_user else 0
    keep = max(keep_recent, min_keep)
    if n <= keep:
        return 0
    max_cut = n - min_keep
    # owner[j]: the index of the assistant message that made tool result j's call (or n).
    issued: dict[str, int] = {}
    owner = [n] * n
    for index, message in enumerate(messages):
        if message.role == MessageRole.ASSISTANT:
            for call in message.tool_calls() or []:
                issued[call.id] = index
        result = message.tool_result_content()
        if message.role == MessageRole.TOOL and result is not None:
            owner[index] = issued.get(result.call_id, n)
    # suffix_min[c]: the smallest owner among messages[c:].
    suffix_min = [n] * (n + 1)
    for index in range(n - 1, -1, -1):
        suffix_min[index] = min(owner[index], suffix_min[index + 1])

    def valid(cut: int) -> bool:
        if cut == n:
            return True
        return messages[cut].role != MessageRole.TOOL and suffix_min[cut] >= cut

    start = n - keep
    if valid(start):
        return start
    for cut in range(start - 1, 0, -1):
        if valid(cut):
            return cut
    for cut in range(start + 1, max_cut + 1):
        if valid(cut):
            return cut
    return 0


class ContextManager:
    """Decides when a session needs summarizing and compacts its oldest messages."""

    def __init__(
        self,
        max_context_tokens: int = DEFAULT_MAX_CONTEXT_TOKENS,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        keep_recent: int = DEFAULT_KEEP_RECENT,
        summarizer: Summarizer | None = None,
    ) -> None:
        if max_context_tokens < 0:
            raise ValueError("max_context_tokens must be >= 0")
        if keep_recent < 0:
            raise ValueError("keep_recent must be >= 0")
        self.max_context_tokens = int(max_context_tokens)
        self.summarization_threshold = _clamp_threshold(threshold)
        self.keep_recent_count = int(keep_recent)
        self.summarizer: Summarizer = (
            summarizer if summarizer is not None else ExtractiveSummarizer()
        )

    def with_threshold(self, threshold: float) -> ContextManager:
        """Set the threshold, clamped to [0.5, 0.95]; returns self."""
        self.summarization_threshold = _clamp_threshold(threshold)
        return self

    def keep_recent(self, count: int) -> ContextManager:
        """Set how many recent messages stay verbatim (0 allowed); returns self."""
        if count < 0:
            raise ValueError("keep_recent must be >= 0")
        self.keep_recent_count = int(count)
        return self

    def with_summarizer(self, summarizer: Summarizer) -> ContextManager:
        """Use another summarizer; returns self."""
        self.summarizer = summarizer
        return self

    def needs_summarization(self, session: AgentSession) -> bool:
        """True when ``token_count > max * threshold`` (strict)."""
        return session.is_near_limit(self.max_context_tokens, self.summarization_threshold)

    def stats(self, session: AgentSession) -> ContextStats:
        """Token use against the window (utilization 0.0 when the window is 0)."""
        maximum = self.max_context_tokens
        return ContextStats(
            current_tokens=session.token_count,
            max_tokens=maximum,
            utilization=session.token_count / maximum if maximum > 0 else 0.0,
            message_count=len(session.messages),
            needs_summarization=self.needs_summarization(session),
        )

    async def summarize(
        self,
        session: AgentSession,
        *,
        provider: LLMProvider | None = None,
        store: SessionStore | None = None,
    ) -> SummarizationResult:
        """Replace the oldest messages by a summary message; never loses a message.

        The summarizer runs first on the untouched session; its failure raises
        ``SummarizationError`` and changes nothing. With ``store``, the session is saved (so
        every original is stored), then the window moves and is saved again as a replace, which
        keeps the originals in ``store.history(session.id)``; if that save raises, the old
        window and token count are restored and the error propagates. Both saves are
        ``store.asave``: the backend's I/O runs off the event loop.
        """
        original = session.messages
        cut = choose_cut(original, self.keep_recent_count)
        if cut == 0:
            return SummarizationResult(messages_evicted=0, tokens_freed=0, summary=None)
        evicted = list(original[:cut])
        label = getattr(self.summarizer, "name", type(self.summarizer).__name__)
        try:
            summary = await self.summarizer.summarize(evicted, provider=provider)
        except (SummarizationError, BudgetExceeded):
            raise
        except Exception as exc:
            raise SummarizationError(f"summarizer {label!r} failed: {exc}") from exc
        if not isinstance(summary, str) or not summary.strip():
            raise SummarizationError(f"summarizer {label!r} returned an empty summary")
        current = session.messages
        if (
            current is not original
            or len(current) < cut
            or any(a is not b for a, b in zip(current[:cut], evicted, strict=True))
        ):
            raise SummarizationError(
                f"session {session.id.bare}: its messages changed while summarizing; retry"
            )
        if store is not None:
            await store.asave(session)
        estimator = session.token_estimator
        tokens_freed = sum(max(0, estimator.estimate(m)) for m in evicted)
        message = summary_message(summary)
        old_count = session.token_count
        session.messages = [message, *current[cut:]]
        session.token_count = max(0, old_count - tokens_freed) + max(0, estimator.estimate(message))
        if store is not None:
            saved = store.revision_of(session)
            try:
                await store.asave(session)
            except BaseException:
                # A cancellation arriving while the write ran is raised after it is recorded:
                # the stored window is then the new one, and the session keeps it too.
                if store.revision_of(session) == saved:
                    session.messages = current
                    session.token_count = old_count
                raise
        return SummarizationResult(messages_evicted=cut, tokens_freed=tokens_freed, summary=summary)

    def __repr__(self) -> str:
        return (
            f"ContextManager(max_context_tokens={self.max_context_tokens}, "
            f"threshold={self.summarization_threshold}, keep_recent={self.keep_recent_count}, "
            f"summarizer={getattr(self.summarizer, 'name', '?')!r})"
        )


__all__ = [
    "DEFAULT_KEEP_RECENT",
    "DEFAULT_MAX_CONTEXT_TOKENS",
    "DEFAULT_THRESHOLD",
    "SUMMARY_MESSAGE_PREFIX",
    "SUMMARY_PROMPT_PREFIX",
    "ContextManager",
    "ContextStats",
    "ExtractiveSummarizer",
    "LLMSummarizer",
    "SummarizationError",
    "SummarizationResult",
    "Summarizer",
    "choose_cut",
    "cut_utf8",
    "format_messages_for_summary",
    "is_summary_message",
    "summary_message",
    "summary_prompt",
]
