"""ContextManager: the original's context tests, then each deliberate fix (design §5 item 3)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pluggy
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from astrid import (
    AgentSession,
    Message,
    MessageRole,
    OriginalEstimator,
    ToolCall,
    ToolCallResult,
    hookimpl,
)
from astrid import hookspecs as hookspecs_module
from astrid.context import (
    SUMMARY_MESSAGE_PREFIX,
    SUMMARY_PROMPT_PREFIX,
    ContextManager,
    ContextStats,
    ExtractiveSummarizer,
    LLMSummarizer,
    SummarizationError,
    SummarizationResult,
    Summarizer,
    choose_cut,
    cut_utf8,
    format_messages_for_summary,
    is_summary_message,
    summary_prompt,
)
from astrid.default_plugins import summarizers as summarizers_plugin
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.errors import StorageError
from astrid.llm import Done, StreamEvent, TextDelta, ToolDefinition
from astrid.messages import ImagePart, TextPart
from astrid.plugins import (
    Implementation,
    NoOptions,
    PluginContext,
    get_implementation,
    load_plugins,
    register_plugin,
    unregister_plugin,
)
from astrid.store import SessionStore, SessionWrite

try:
    from astrid.default_plugins.sqlite_storage import SqliteBackend
except ImportError:  # pragma: no cover - the SQLite backend is written in parallel
    SqliteBackend = None  # type: ignore[assignment,misc]


# -- helpers ---------------------------------------------------------------------------------


def run(coro: Any) -> Any:
    """Run a coroutine to completion (pytest-asyncio is not installed)."""
    return asyncio.run(coro)


def user(text: str) -> Message:
    return Message.user(text)


def assistant(text: str) -> Message:
    return Message.assistant(text)


def calls(*ids: str, name: str = "read_file") -> Message:
    return Message.assistant_with_tools(
        [ToolCall(id=i, name=name, arguments={"path": f"{i}.txt"}) for i in ids]
    )


def result(call_id: str, content: str = "ok", *, error: bool = False) -> Message:
    res = (
        ToolCallResult.error(call_id, content)
        if error
        else ToolCallResult.success(call_id, content)
    )
    return Message.tool_result(res)


def session_with(messages: Sequence[Message], **kwargs: Any) -> AgentSession:
    session = AgentSession("system prompt", **kwargs)
    for message in messages:
        session.add_message(message)
    return session


def orphaned_tool_results(window: Sequence[Message]) -> list[Message]:
    """Tool messages in ``window`` whose call is not made by an earlier assistant message there."""
    seen: set[str] = set()
    orphans: list[Message] = []
    for message in window:
        if message.role == MessageRole.ASSISTANT:
            seen.update(c.id for c in message.tool_calls() or [])
        if message.role == MessageRole.TOOL:
            res = message.tool_result_content()
            if res is None or res.call_id not in seen:
                orphans.append(message)
    return orphans


class CountingSummarizer:
    """Returns a fixed summary and records what it was given."""

    name = "counting"

    def __init__(self, text: str = "the summary") -> None:
        self.text = text
        self.calls: list[list[Message]] = []

    async def summarize(self, messages: Sequence[Message], *, provider: Any = None) -> str:
        self.calls.append(list(messages))
        return self.text


class FailingSummarizer:
    """Always fails, after yielding to the loop once."""

    name = "failing"

    async def summarize(self, messages: Sequence[Message], *, provider: Any = None) -> str:
        await asyncio.sleep(0)
        raise RuntimeError("model unavailable")


class RecordingProvider:
    """A small real provider: answers ``complete_simple`` with a fixed text, records prompts."""

    name = "recording"
    model = "recording-1"

    def __init__(self, answer: str = "They discussed files.", *, fail: bool = False) -> None:
        self.answer = answer
        self.fail = fail
        self.prompts: list[str] = []

    async def stream(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolDefinition],
        system_prompt: str,
    ) -> AsyncIterator[StreamEvent]:
        yield TextDelta(self.answer)
        yield Done()

    async def complete_simple(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if self.fail:
            raise ConnectionError("provider is down")
        return self.answer


class FailingMemoryBackend(MemoryBackend):
    """A memory backend whose writes raise ``StorageError`` when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_replace = False
        self.fail_all = False

    def write(self, change: SessionWrite) -> int:
        if self.fail_all or (self.fail_replace and change.replace):
            raise StorageError(f"memory: injected write failure for {change.session_id}")
        return super().write(change)


BackendFactory = Callable[[Path], Any]


def _memory(_: Path) -> Any:
    return MemoryBackend()


def _sqlite(tmp: Path) -> Any:
    assert SqliteBackend is not None
    return SqliteBackend(tmp / "astrid.db")


def _failing_sqlite(tmp: Path) -> Any:
    assert SqliteBackend is not None

    class FailingSqliteBackend(SqliteBackend):
        fail_replace = False
        fail_all = False

        def write(self, change: SessionWrite) -> int:
            if self.fail_all or (self.fail_replace and change.replace):
                raise StorageError(f"sqlite: injected write failure for {change.session_id}")
            return int(super().write(change))

    return FailingSqliteBackend(tmp / "astrid.db")


_needs_sqlite = pytest.mark.skipif(SqliteBackend is None, reason="no SQLite backend yet")


@pytest.fixture(
    params=[
        pytest.param(_memory, id="memory"),
        pytest.param(_sqlite, id="sqlite", marks=_needs_sqlite),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    factory: BackendFactory = request.param
    with SessionStore(factory(tmp_path)) as opened:
        yield opened


@pytest.fixture(
    params=[
        pytest.param(lambda _: FailingMemoryBackend(), id="memory"),
        pytest.param(_failing_sqlite, id="sqlite", marks=_needs_sqlite),
    ]
)
def failing_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SessionStore]:
    factory: BackendFactory = request.param
    with SessionStore(factory(tmp_path)) as opened:
        yield opened


def conversation(turns: int) -> list[Message]:
    out: list[Message] = []
    for i in range(turns):
        out.append(user(f"question {i}"))
        out.append(assistant(f"answer {i}"))
    return out


# -- the original's tests (spec §7, context.rs) ----------------------------------------------


def test_context_manager() -> None:
    manager = ContextManager(1000)
    session = AgentSession.new(bytes(8), "p")
    for i in range(50):
        session.add_message(Message.user(f"Message {i}"))
    session.token_count = 900
    assert manager.needs_summarization(session)


def test_context_stats() -> None:
    manager = ContextManager(1000)
    session = AgentSession.new(bytes(8), "p")
    session.token_count = 500
    stats = manager.stats(session)
    assert stats.utilization == 0.5
    assert stats.utilization_percent() == 50.0


# -- configuration and stats -----------------------------------------------------------------


def test_defaults_match_the_original() -> None:
    manager = ContextManager()
    assert manager.max_context_tokens == 100_000
    assert manager.summarization_threshold == 0.85
    assert manager.keep_recent_count == 10
    assert isinstance(manager.summarizer, ExtractiveSummarizer)
    assert isinstance(manager.summarizer, Summarizer)


@pytest.mark.parametrize(
    ("given_threshold", "expected"),
    [(0.1, 0.5), (0.5, 0.5), (0.7, 0.7), (0.95, 0.95), (0.99, 0.95), (7.0, 0.95), (-1.0, 0.5)],
)
def test_threshold_is_clamped(given_threshold: float, expected: float) -> None:
    assert ContextManager().with_threshold(given_threshold).summarization_threshold == expected
    assert ContextManager(threshold=given_threshold).summarization_threshold == expected


def test_threshold_nan_and_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError):
        ContextManager().with_threshold(float("nan"))
    with pytest.raises(ValueError):
        ContextManager(keep_recent=-1)
    with pytest.raises(ValueError):
        ContextManager().keep_recent(-1)
    with pytest.raises(ValueError):
        ContextManager(-5)


def test_builders_chain_and_keep_recent_zero_is_allowed() -> None:
    summarizer = CountingSummarizer()
    manager = ContextManager(2000).with_threshold(0.6).keep_recent(0).with_summarizer(summarizer)
    assert (manager.max_context_tokens, manager.summarization_threshold) == (2000, 0.6)
    assert manager.keep_recent_count == 0
    assert manager.summarizer is summarizer
    assert "keep_recent=0" in repr(manager)


def test_needs_summarization_is_strict() -> None:
    manager = ContextManager(1000)
    session = AgentSession()
    session.token_count = 850
    assert not manager.needs_summarization(session)
    session.token_count = 851
    assert manager.needs_summarization(session)


def test_stats_fields_and_zero_window_guard() -> None:
    session = session_with(conversation(3))
    session.token_count = 300
    stats = ContextManager(1000).stats(session)
    assert stats == ContextStats(
        current_tokens=300,
        max_tokens=1000,
        utilization=0.3,
        message_count=6,
        needs_summarization=False,
    )
    zero = ContextManager(0).stats(session)
    assert zero.utilization == 0.0
    assert zero.utilization_percent() == 0.0
    assert zero.needs_summarization  # 300 > 0 * 0.85


# -- summarize: the basic move ---------------------------------------------------------------


def test_no_op_when_there_are_not_more_messages_than_keep_recent() -> None:
    summarizer = CountingSummarizer()
    session = session_with(conversation(5))
    before, tokens = session.messages, session.token_count
    outcome = run(ContextManager(keep_recent=10, summarizer=summarizer).summarize(session))
    assert outcome == SummarizationResult(messages_evicted=0, tokens_freed=0, summary=None)
    assert session.messages is before
    assert session.token_count == tokens
    assert summarizer.calls == []


def test_summarize_replaces_the_oldest_messages_with_a_system_summary() -> None:
    summarizer = CountingSummarizer("they talked")
    originals = conversation(10)
    session = session_with(originals)
    before = session.messages
    estimator = session.token_estimator
    old_tokens = session.token_count

    outcome = run(ContextManager(keep_recent=6, summarizer=summarizer).summarize(session))

    assert outcome.messages_evicted == 14
    assert outcome.summary == "they talked"
    assert outcome.tokens_freed == sum(estimator.estimate(m) for m in originals[:14])
    assert summarizer.calls == [originals[:14]]
    assert session.messages is not before  # a new list: the store sees a replace
    assert before == originals  # the old list object is untouched
    head = session.messages[0]
    assert head.role == MessageRole.SYSTEM
    assert head.text() == SUMMARY_MESSAGE_PREFIX + "they talked"
    assert is_summary_message(head)
    assert session.messages[1:] == originals[14:]
    assert session.token_count == old_tokens - outcome.tokens_freed + estimator.estimate(head)
    assert session.token_count == sum(estimator.estimate(m) for m in session.messages)


def test_token_count_never_goes_below_the_summary_estimate() -> None:
    session = session_with(conversation(6), token_estimator=OriginalEstimator())
    session.token_count = 3  # stale, far below what the evicted messages count
    run(ContextManager(keep_recent=2, summarizer=CountingSummarizer("abcdefgh")).summarize(session))
    assert session.token_count == 0 + OriginalEstimator().estimate(session.messages[0])


def test_a_previous_summary_is_re_summarized_like_any_message() -> None:
    session = session_with(conversation(8))
    manager = ContextManager(keep_recent=4)
    run(manager.summarize(session))
    first_summary = session.messages[0]
    for i in range(8, 12):
        session.add_message(user(f"question {i}"))
        session.add_message(assistant(f"answer {i}"))
    outcome = run(manager.summarize(session))
    assert outcome.messages_evicted == 9  # the old summary, 4 kept, then 4 of the 8 new
    assert outcome.summary is not None
    assert "Earlier summary:" in outcome.summary
    assert "question 0" in outcome.summary  # carried over from the first summary
    assert session.messages[0] is not first_summary
    assert sum(1 for m in session.messages if is_summary_message(m)) == 1


def test_keep_recent_zero_keeps_the_newest_user_message() -> None:
    originals = [*conversation(3), user("the new question")]
    session = session_with(originals)
    outcome = run(ContextManager(keep_recent=0, summarizer=CountingSummarizer()).summarize(session))
    assert outcome.messages_evicted == 6
    assert session.messages[1:] == [originals[-1]]


def test_keep_recent_zero_evicts_everything_after_an_answer() -> None:
    originals = conversation(3)
    session = session_with(originals)
    outcome = run(ContextManager(keep_recent=0, summarizer=CountingSummarizer()).summarize(session))
    assert outcome.messages_evicted == 6
    assert len(session.messages) == 1 and is_summary_message(session.messages[0])


def test_a_single_trailing_user_message_with_keep_recent_zero_is_a_no_op() -> None:
    summarizer = CountingSummarizer()
    session = session_with([user("only")])
    outcome = run(ContextManager(keep_recent=0, summarizer=summarizer).summarize(session))
    assert outcome.messages_evicted == 0 and summarizer.calls == []


# -- summarize: tool calls stay with their results -------------------------------------------


def test_multi_call_message_with_results_straddling_the_cut_moves_the_cut_earlier() -> None:
    originals = [
        user("q1"),
        assistant("a1"),
        user("q2"),
        assistant("a2"),
        user("read three files"),
        calls("x", "y", "z"),
        result("x"),
        result("y"),
        result("z"),
        assistant("done"),
        user("thanks"),
    ]
    # keep_recent=3 would start the window at result("z"); its call message is at index 5.
    assert choose_cut(originals, 3) == 5
    session = session_with(originals)
    outcome = run(ContextManager(keep_recent=3, summarizer=CountingSummarizer()).summarize(session))
    assert outcome.messages_evicted == 5
    assert session.messages[1:] == originals[5:]
    assert orphaned_tool_results(session.messages) == []


@pytest.mark.parametrize("keep", [3, 4, 5])
def test_every_cut_inside_a_tool_group_moves_before_its_call(keep: int) -> None:
    originals = [user("go"), calls("a", "b", "c"), result("a"), result("b"), result("c")]
    originals = [user("warm up"), assistant("ok"), *originals, assistant("all read")]
    cut = choose_cut(originals, keep)
    assert cut == 3  # the assistant tool-call message starts the window
    assert orphaned_tool_results(originals[cut:]) == []


def test_results_in_another_order_and_consecutive_groups() -> None:
    originals = [
        user("go"),
        calls("a", "b"),
        result("b"),
        result("a"),
        calls("c"),
        result("c"),
        assistant("done"),
    ]
    for keep in range(len(originals) + 1):
        cut = choose_cut(originals, keep)
        assert orphaned_tool_results(originals[cut:]) == [], keep
        assert cut in (0, len(originals)) or originals[cut].role != MessageRole.TOOL
    assert choose_cut(originals, 4) == 1  # window would start at result("a")
    assert choose_cut(originals, 2) == 4  # window would start at result("c")


def test_the_cut_moves_later_when_moving_earlier_would_keep_everything() -> None:
    originals = [calls("a", "b"), result("a"), result("b"), assistant("done"), user("next")]
    # keep_recent=3 starts the window at result("b"); its call is at index 0.
    assert choose_cut(originals, 3) == 3
    session = session_with(originals)
    run(ContextManager(keep_recent=3, summarizer=CountingSummarizer()).summarize(session))
    assert session.messages[1:] == originals[3:]


def test_nothing_is_evicted_when_no_cut_keeps_calls_with_their_results() -> None:
    summarizer = CountingSummarizer()
    originals = [calls("a", "b", "c"), result("a"), result("b"), result("c")]
    assert choose_cut(originals, 2) == 0
    session = session_with(originals)
    before = session.messages
    outcome = run(ContextManager(keep_recent=2, summarizer=summarizer).summarize(session))
    assert outcome.messages_evicted == 0 and outcome.summary is None
    assert session.messages is before and summarizer.calls == []


def test_a_tool_message_is_never_first_in_the_window_even_without_a_known_call() -> None:
    originals = [user("q"), assistant("a"), result("unknown"), assistant("b"), user("c")]
    assert choose_cut(originals, 3) == 1
    assert choose_cut(originals, 2) == 3


def test_tool_call_message_left_open_at_the_end_is_kept() -> None:
    originals = [*conversation(4), user("list files"), calls("open")]
    cut = choose_cut(originals, 1)
    assert originals[cut:] == [calls("open")]


@st.composite
def transcripts(draw: st.DrawFn) -> list[Message]:
    """Random, well-formed transcripts of text turns and tool-call groups."""
    out: list[Message] = []
    counter = 0
    for kind in draw(st.lists(st.sampled_from(["user", "text", "tools"]), max_size=30)):
        if kind == "user":
            out.append(user(f"u{len(out)}"))
        elif kind == "text":
            out.append(assistant(f"a{len(out)}"))
        else:
            ids = [f"call{counter + i}" for i in range(draw(st.integers(1, 3)))]
            counter += len(ids)
            out.append(calls(*ids, name=draw(st.sampled_from(["read", "write", "ls"]))))
            answered = draw(st.integers(0, len(ids)))
            order = draw(st.permutations(ids))
            out.extend(result(i, error=draw(st.booleans())) for i in order[:answered])
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(originals=transcripts(), keep=st.integers(0, 12))
def test_property_no_kept_tool_result_loses_its_call(originals: list[Message], keep: int) -> None:
    session = session_with(originals)
    before = session.messages
    outcome = run(ContextManager(keep_recent=keep).summarize(session))
    evicted = outcome.messages_evicted
    if evicted == 0:
        assert session.messages is before
        assert outcome.summary is None
        return
    assert is_summary_message(session.messages[0])
    kept = session.messages[1:]
    assert kept == originals[evicted:]
    assert orphaned_tool_results(kept) == []
    if kept:
        assert kept[0].role != MessageRole.TOOL
    if originals[-1].role == MessageRole.USER:
        assert kept and kept[-1] is originals[-1]
    if keep > 0:
        assert kept
    estimator = session.token_estimator
    assert session.token_count == sum(estimator.estimate(m) for m in session.messages)
    assert outcome.tokens_freed == sum(estimator.estimate(m) for m in originals[:evicted])


# -- summarize: failures change nothing ------------------------------------------------------


def test_a_failing_summarizer_leaves_the_session_exactly_as_it_was() -> None:
    originals = conversation(10)
    session = session_with(originals)
    before, tokens = session.messages, session.token_count
    with pytest.raises(SummarizationError, match="failing") as info:
        run(ContextManager(keep_recent=4, summarizer=FailingSummarizer()).summarize(session))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert session.messages is before
    assert session.messages == originals
    assert session.token_count == tokens


def test_a_failing_summarizer_does_not_touch_the_store(store: SessionStore) -> None:
    session = session_with(conversation(10))
    store.save(session)
    revision = store.revision_of(session)
    with pytest.raises(SummarizationError):
        run(
            ContextManager(keep_recent=4, summarizer=FailingSummarizer()).summarize(
                session, store=store
            )
        )
    assert store.revision_of(session) == revision
    loaded = store.load(session.id)
    assert loaded is not None and loaded.messages == session.messages


def test_an_empty_summary_is_refused() -> None:
    session = session_with(conversation(10))
    before = session.messages
    with pytest.raises(SummarizationError, match="empty"):
        run(ContextManager(keep_recent=4, summarizer=CountingSummarizer("  \n")).summarize(session))
    assert session.messages is before


class _Interfering:
    """A summarizer that changes the session while it runs."""

    name = "interfering"

    def __init__(self, session: AgentSession, action: str) -> None:
        self.session = session
        self.action = action

    async def summarize(self, messages: Sequence[Message], *, provider: Any = None) -> str:
        if self.action == "append":
            self.session.add_message(user("arrived meanwhile"))
        else:
            self.session.clear_messages()
        return "summary"


def test_messages_appended_while_summarizing_are_kept() -> None:
    originals = conversation(5)
    session = session_with(originals)
    manager = ContextManager(keep_recent=2, summarizer=_Interfering(session, "append"))
    outcome = run(manager.summarize(session))
    assert outcome.messages_evicted == 8
    assert session.messages[1:] == [*originals[8:], user("arrived meanwhile")]
    estimator = session.token_estimator
    assert session.token_count == sum(estimator.estimate(m) for m in session.messages)


def test_a_session_rewritten_while_summarizing_is_not_clobbered() -> None:
    session = session_with(conversation(5))
    manager = ContextManager(keep_recent=2, summarizer=_Interfering(session, "clear"))
    with pytest.raises(SummarizationError, match="changed"):
        run(manager.summarize(session))
    assert session.messages == [] and session.token_count == 0


def test_a_failing_replace_save_restores_the_window(failing_store: SessionStore) -> None:
    backend = failing_store.backend
    originals = conversation(10)
    session = session_with(originals)
    failing_store.save(session)
    session.add_message(user("unsaved question"))  # not yet stored when summarizing starts
    before, tokens = session.messages, session.token_count
    backend.fail_replace = True  # type: ignore[attr-defined]
    manager = ContextManager(keep_recent=4, summarizer=CountingSummarizer())
    with pytest.raises(StorageError, match="injected"):
        run(manager.summarize(session, store=failing_store))
    assert session.messages is before
    assert session.messages == [*originals, user("unsaved question")]
    assert session.token_count == tokens
    loaded = failing_store.load(session.id)
    assert loaded is not None
    assert loaded.messages == session.messages  # nothing lost, the unsaved one included

    backend.fail_replace = False  # type: ignore[attr-defined]
    session.add_message(assistant("an answer"))
    failing_store.save(session)  # the store is still in step with the session
    outcome = run(manager.summarize(session, store=failing_store))
    assert outcome.messages_evicted == 18
    reloaded = failing_store.load(session.id)
    assert reloaded is not None and reloaded.messages == session.messages


def test_a_failing_first_save_leaves_everything_untouched(failing_store: SessionStore) -> None:
    session = session_with(conversation(10))
    before, tokens = session.messages, session.token_count
    failing_store.backend.fail_all = True  # type: ignore[attr-defined]
    with pytest.raises(StorageError):
        run(
            ContextManager(keep_recent=4, summarizer=CountingSummarizer()).summarize(
                session, store=failing_store
            )
        )
    assert session.messages is before and session.token_count == tokens
    assert failing_store.load(session.id) is None


# -- summarize: the originals stay retrievable -----------------------------------------------


def test_history_keeps_every_original_and_load_returns_summary_and_recent(
    store: SessionStore,
) -> None:
    originals = [
        *conversation(6),
        user("read the files"),
        calls("x", "y"),
        result("x", "contents of x"),
        result("y", "no such file", error=True),
        assistant("x is fine, y is missing"),
    ]
    session = store.new_session("prompt")
    for message in originals[:8]:
        session.add_message(message)
    store.save(session)
    for message in originals[8:]:
        session.add_message(message)  # unsaved when summarize starts

    outcome = run(ContextManager(keep_recent=3).summarize(session, store=store))

    assert outcome.messages_evicted == 13  # the cut moved before calls("x", "y")
    history = store.history(session.id)
    assert history[: len(originals)] == originals
    assert history[len(originals) :] == session.messages
    loaded = store.load(session.id)
    assert loaded is not None
    assert loaded.messages == session.messages
    assert is_summary_message(loaded.messages[0])
    assert loaded.messages[1:] == originals[13:]
    assert loaded.token_count == session.token_count

    # The window keeps moving; the history keeps growing, nothing is dropped.
    for i in range(6):
        session.add_message(user(f"later {i}"))
        session.add_message(assistant(f"reply {i}"))
    store.save(session)
    run(ContextManager(keep_recent=2).summarize(session, store=store))
    again = store.history(session.id)
    assert again[: len(originals)] == originals
    assert [m for m in again if m.text() == "later 5"]
    assert store.load(session.id).messages == session.messages  # type: ignore[union-attr]


# -- format_messages_for_summary and the LLM summarizer --------------------------------------


def test_cut_utf8_never_splits_a_character() -> None:
    assert cut_utf8("abc", 200) == "abc"
    assert cut_utf8("a" + "é" * 150, 200) == "a" + "é" * 99
    assert cut_utf8("€" * 100, 200) == "€" * 66  # 3 bytes each: 198 bytes
    assert cut_utf8("😀" * 60, 200) == "😀" * 50


def test_format_messages_for_summary_follows_the_original() -> None:
    long_ascii = "x" * 250
    multibyte = "a" + "é" * 150  # byte 200 falls inside an "é"
    messages = [
        Message.system("be brief"),
        user("Hello"),
        Message.assistant_with_tools(
            [
                ToolCall(id="1", name="read_file", arguments={"path": "a.py", "lines": [1, 2]}),
                ToolCall(id="2", name="search", arguments={"q": "café"}),
            ]
        ),
        result("1", "short"),
        result("2", long_ascii),
        result("3", multibyte, error=True),
        result("4", "x" * 200),  # exactly 200 bytes: not cut
        Message(
            role=MessageRole.USER,
            content=[TextPart(text="see"), ImagePart(data="AA", media_type="a/b")],
        ),
        assistant("Bye"),
    ]
    expected = "\n\n".join(
        [
            "System: be brief",
            "User: Hello",
            'Assistant: [Tool calls: read_file({"path":"a.py","lines":[1,2]}), '
            'search({"q":"café"})]',
            "Tool: [Tool result: short]",
            "Tool: [Tool result: " + "x" * 200 + "...]",
            "Tool: [Tool result: a" + "é" * 99 + "...]",
            "Tool: [Tool result: " + "x" * 200 + "]",
            "User: [Multi-part content]",
            "Assistant: Bye",
        ]
    )
    assert format_messages_for_summary(messages) == expected
    assert summary_prompt(messages) == (
        "Summarize the following conversation, preserving key facts, decisions, and context "
        "that would be important for continuing the conversation:\n\n" + expected
    )
    assert SUMMARY_PROMPT_PREFIX.endswith("conversation:\n\n")


def test_llm_summarizer_sends_exactly_the_original_prompt() -> None:
    provider = RecordingProvider("They read a.py and searched.")
    originals = [
        user("Hello"),
        calls("1"),
        result("1", "é" * 120),
        assistant("Done"),
        user("more"),
        assistant("ok"),
    ]
    session = session_with(originals)
    manager = ContextManager(keep_recent=2, summarizer=LLMSummarizer())
    outcome = run(manager.summarize(session, provider=provider))
    assert provider.prompts == [
        "Summarize the following conversation, preserving key facts, decisions, and context "
        "that would be important for continuing the conversation:\n\n"
        "User: Hello\n\n"
        'Assistant: [Tool calls: read_file({"path":"1.txt"})]\n\n'
        "Tool: [Tool result: " + "é" * 100 + "...]\n\n"
        "Assistant: Done"
    ]
    assert outcome.summary == "They read a.py and searched."
    assert session.messages[0].text() == (
        "[Previous conversation summary]\nThey read a.py and searched."
    )
    assert session.messages[1:] == originals[4:]


@pytest.mark.parametrize(
    ("provider", "message"),
    [
        (None, "needs an LLM provider"),
        (RecordingProvider(fail=True), "provider is down"),
        (RecordingProvider(""), "empty summary"),
        (RecordingProvider("   "), "empty summary"),
    ],
    ids=["no-provider", "provider-fails", "empty", "blank"],
)
def test_llm_summarizer_failures_leave_the_session_untouched(
    provider: RecordingProvider | None, message: str
) -> None:
    session = session_with(conversation(6))
    before, tokens = session.messages, session.token_count
    manager = ContextManager(keep_recent=2, summarizer=LLMSummarizer())
    with pytest.raises(SummarizationError, match=message):
        run(manager.summarize(session, provider=provider))
    assert session.messages is before and session.token_count == tokens


# -- the extractive summarizer ---------------------------------------------------------------


def test_extractive_summary_lists_requests_calls_errors_and_the_last_answer() -> None:
    long_request = "Please refactor the parser " + "and add tests " * 40
    messages = [
        user(long_request),
        Message.assistant_with_tools(
            [ToolCall(id="c1", name="read_file", arguments={"path": "src/parser.py"})]
        ),
        result("c1", "def parse(): ..."),
        Message.assistant_with_tools(
            [ToolCall(id="c2", name="run_tests", arguments={"k": "parser", "v": True})]
        ),
        result("c2", "FAILED test_parse_empty: IndexError", error=True),
        assistant("An early answer."),
        user("also fix the lexer"),
        assistant("The parser is refactored; test_parse_empty still fails on empty input."),
    ]
    text = run(ExtractiveSummarizer().summarize(messages))
    assert text.startswith("Summary of 8 earlier message(s)")
    assert "User requests:" in text
    assert "- Please refactor the parser and add tests" in text
    request_line = next(line for line in text.splitlines() if "refactor" in line)
    assert len(request_line) <= 2 + 200 + 3
    assert "- also fix the lexer" in text
    assert '- read_file({"path":"src/parser.py"})' in text
    assert '- run_tests({"k":"parser","v":true})' in text
    assert "Tool errors:\n- run_tests: FAILED test_parse_empty: IndexError" in text
    assert text.endswith(
        "Last assistant answer:\n"
        "The parser is refactored; test_parse_empty still fails on empty input."
    )
    assert "An early answer." not in text
    assert "def parse()" not in text  # successful results are not repeated
    assert text == ExtractiveSummarizer().summarize_sync(messages)  # deterministic


def test_extractive_summary_is_bounded_and_keeps_first_and_last_requests() -> None:
    messages: list[Message] = []
    for i in range(300):
        messages.append(user(f"request number {i} " + "detail " * 30))
        messages.append(calls(f"id{i}"))
        messages.append(result(f"id{i}", "boom " * 80, error=True))
        messages.append(assistant(f"answer {i}"))
    for limit in (200, 1000, 4000):
        text = ExtractiveSummarizer(max_chars=limit).summarize_sync(messages)
        assert 0 < len(text) <= limit
    text = ExtractiveSummarizer().summarize_sync(messages)
    assert "request number 0 " in text
    assert "request number 299 " in text
    assert "more omitted" in text
    assert text.endswith("Last assistant answer:\nanswer 299")


def test_extractive_summary_is_never_empty_for_non_empty_input() -> None:
    summarizer = ExtractiveSummarizer()
    for messages in (
        [result("x", "fine")],
        [Message(role="robot", content="beep")],
        [user("   ")],
        [Message.system("Follow the style guide.")],
    ):
        assert summarizer.summarize_sync(messages).strip()
    assert "Follow the style guide." in summarizer.summarize_sync(
        [Message.system("Follow the style guide.")]
    )
    assert summarizer.summarize_sync([]) == ""
    with pytest.raises(ValueError):
        ExtractiveSummarizer(max_chars=10)


def test_extractive_summary_of_a_huge_answer_is_cut() -> None:
    text = ExtractiveSummarizer(max_chars=500).summarize_sync([assistant("word " * 2000)])
    assert len(text) <= 500 and text.endswith("...")


# -- the plugin ------------------------------------------------------------------------------


def _registered() -> dict[str, Implementation]:
    pm = pluggy.PluginManager("astrid")
    pm.add_hookspecs(hookspecs_module)
    pm.register(summarizers_plugin, name="astrid.default_plugins.summarizers")
    found: dict[str, Implementation] = {}

    def register(name: str, factory: Any, options: Any = NoOptions, description: str = "") -> None:
        found[name] = Implementation("summarizer", name, factory, options, description, "builtin")

    pm.hook.register_summarizers(register=register)
    return found


def test_the_builtin_plugin_registers_extractive_and_llm(tmp_path: Path) -> None:
    impls = _registered()
    assert set(impls) == {"extractive", "llm"}
    context = PluginContext(home=tmp_path)
    extractive = impls["extractive"].create({"max_chars": 500}, context)
    assert isinstance(extractive, ExtractiveSummarizer) and extractive.max_chars == 500
    assert impls["extractive"].create(None, context).max_chars == 4000
    llm = impls["llm"].create({}, context)
    assert isinstance(llm, LLMSummarizer)
    for made in (extractive, llm):
        assert isinstance(made, Summarizer)
    with pytest.raises(ValidationError):
        impls["extractive"].create({"max_chars": 10}, context)
    with pytest.raises(ValidationError):
        impls["llm"].create({"model": "x"}, context)
    assert all(impl.description for impl in impls.values())


def test_summary_message_survives_a_json_round_trip() -> None:
    session = session_with(conversation(6))
    run(ContextManager(keep_recent=2).summarize(session))
    head = session.messages[0]
    assert Message.from_json(json.loads(json.dumps(head.to_json()))) == head


class _ShoutingPlugin:
    """A third-party plugin adding a summarizer through ``register_summarizers``."""

    @hookimpl
    def register_summarizers(self, register: Any) -> None:
        register(
            "shouting",
            lambda options, context: CountingSummarizer("LOUD SUMMARY"),
            NoOptions,
            "Upper-case fixed summary (tests).",
        )


def test_a_plugin_summarizer_is_found_next_to_the_builtins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    load_plugins()
    register_plugin(_ShoutingPlugin(), name="shouting-summarizer")
    try:
        context = PluginContext(home=tmp_path)
        builtin = get_implementation("summarizer", "extractive").create({"max_chars": 300}, context)
        assert isinstance(builtin, ExtractiveSummarizer) and builtin.max_chars == 300
        made = get_implementation("summarizer", "shouting").create(None, context)
        session = session_with(conversation(4))
        outcome = run(ContextManager(keep_recent=2, summarizer=made).summarize(session))
        assert outcome.summary == "LOUD SUMMARY"
    finally:
        unregister_plugin("shouting-summarizer")
        load_plugins()


# -- the saves run off the event loop (issue 15) ---------------------------------------------


@_needs_sqlite
def test_both_summarize_saves_run_in_a_worker_thread(tmp_path: Path) -> None:
    assert SqliteBackend is not None

    class ThreadRecordingSqlite(SqliteBackend):
        threads: list[int] = []

        def write(self, change: SessionWrite) -> int:
            self.threads.append(threading.get_ident())
            return int(super().write(change))

    backend = ThreadRecordingSqlite(tmp_path / "astrid.db")
    store = SessionStore(backend)
    session = session_with(conversation(10))
    manager = ContextManager(keep_recent=4, summarizer=CountingSummarizer())

    async def summarize() -> int:
        await manager.summarize(session, store=store)
        return threading.get_ident()

    loop_thread = run(summarize())
    assert len(backend.threads) == 2  # every original, then the new window as a replace
    assert loop_thread not in backend.threads
    loaded = store.load(session.id)
    assert loaded is not None and is_summary_message(loaded.messages[0])
    store.close()


@_needs_sqlite
def test_a_cancellation_during_the_replace_write_keeps_session_and_store_in_step(
    tmp_path: Path,
) -> None:
    assert SqliteBackend is not None

    class HeldReplaceSqlite(SqliteBackend):
        """The replace write waits in its worker thread until the test lets it go."""

        started = threading.Event()
        go = threading.Event()

        def write(self, change: SessionWrite) -> int:
            if change.replace:
                self.started.set()
                self.go.wait(10)
            return int(super().write(change))

    backend = HeldReplaceSqlite(tmp_path / "astrid.db")
    store = SessionStore(backend)
    session = session_with(conversation(10))
    store.save(session)
    manager = ContextManager(keep_recent=4, summarizer=CountingSummarizer("short summary"))

    async def cancel_while_writing() -> None:
        summarizing = asyncio.create_task(manager.summarize(session, store=store))
        assert await asyncio.to_thread(backend.started.wait, 10)
        summarizing.cancel()
        await asyncio.sleep(0.01)  # the cancellation reaches the task while the write runs
        backend.go.set()
        with pytest.raises(asyncio.CancelledError):
            await summarizing

    run(cancel_while_writing())
    # The write went through, so the session keeps the window the store now holds.
    assert is_summary_message(session.messages[0])
    loaded = store.load(session.id)
    assert loaded is not None and loaded.messages == session.messages
    store.close()


# -- the LLM summarizer with a version-2 provider, on the session's budgets ------------------


def _openai_provider(base_url: str, key: str) -> Any:
    """The real ``astrid-openai`` provider (protocol 2) against a fake server."""
    pytest.importorskip("astrid_openai")
    from astrid_openai import OpenAIOptions
    from astrid_openai.provider import OpenAIProvider
    from pydantic import SecretStr

    options = OpenAIOptions(model="summary-model", base_url=base_url, max_retries=0)
    return OpenAIProvider(options, api_key=SecretStr(key))


def test_llm_summarizer_works_with_a_v2_provider() -> None:
    # a v2 provider's complete_simple returns a Completion: the summarizer used to take it for
    # "an empty summary"; it goes through complete_request now
    from astrid.testing.fake_llm import FakeOpenAIServer, text_reply

    with FakeOpenAIServer(api_key="sk-test-summary", io_timeout_s=10.0) as server:
        server.script(text_reply("The user asked about milk."))
        provider = _openai_provider(server.base_url, "sk-test-summary")
        session = session_with(conversation(6))
        manager = ContextManager(keep_recent=2, summarizer=LLMSummarizer())
        result = run(manager.summarize(session, provider=provider))
        assert result.summary == "The user asked about milk."
        assert server.requests[0].json()["model"] == "summary-model"


def _summarizing_runtime(base_url: str, key: str, session_max: float) -> Any:
    from astrid.runtime import AgentRuntime, ModelPricing, RuntimeConfig
    from astrid.security.budget import BudgetConfig

    store = SessionStore(
        MemoryBackend(),
        budget=BudgetConfig(session_max_usd=session_max, per_action_max_usd=session_max),
    )
    config = RuntimeConfig(
        estimated_output_tokens=100,
        pricing={
            "summary-model": ModelPricing(input_per_million=1000.0, output_per_million=2000.0)
        },
    )
    manager = ContextManager(40, threshold=0.5, keep_recent=1, summarizer=LLMSummarizer())
    return AgentRuntime(
        _openai_provider(base_url, key), store=store, config=config, tools=[],
        context_manager=manager,
    )


def test_summarizer_calls_are_charged_to_the_session_and_workspace_budgets() -> None:
    from astrid.security.budget import WorkspaceBudgetTracker
    from astrid.testing.fake_llm import FakeOpenAIServer, Tokens, text_reply

    with FakeOpenAIServer(api_key="sk-test-summary", io_timeout_s=10.0) as server:
        server.script(
            text_reply("a long answer " * 20, usage=Tokens(10, 100)),  # turn 1: $0.21
            text_reply("Summary: a long answer.", usage=Tokens(300, 20)),  # summary: $0.34
            text_reply("short", usage=Tokens(30, 5)),  # turn 2: $0.04
        )
        runtime = _summarizing_runtime(server.base_url, "sk-test-summary", 10.0)
        workspace = WorkspaceBudgetTracker(10.0, 80)
        session = runtime.create_session("Be brief.").with_workspace_budget(workspace)
        first = run(runtime.run_turn(session, "tell me"))
        assert first.summarization is None
        second = run(runtime.run_turn(session, "and again"))
        assert second.summarization is not None
        assert second.summarization.summary == "Summary: a long answer."
        assert "Summarize the following conversation" in json.dumps(server.requests[1].json())
        assert second.cost_usd == pytest.approx(0.34 + 0.04)
        assert session.budget_tracker.spent() == pytest.approx(0.21 + 0.34 + 0.04)
        assert workspace.spent() == pytest.approx(0.21 + 0.34 + 0.04)


def test_a_summarization_over_the_budget_is_refused_like_a_turn() -> None:
    from astrid.errors import BudgetExceeded
    from astrid.testing.fake_llm import FakeOpenAIServer, Tokens, text_reply

    with FakeOpenAIServer(api_key="sk-test-summary", io_timeout_s=10.0) as server:
        server.script(text_reply("a long answer " * 20, usage=Tokens(10, 100)))  # $0.21
        runtime = _summarizing_runtime(server.base_url, "sk-test-summary", 0.5)
        session = runtime.create_session("Be brief.")
        run(runtime.run_turn(session, "tell me"))
        before = list(session.messages)
        with pytest.raises(BudgetExceeded, match="the summarization to 'summary-model'"):
            run(runtime.run_turn(session, "and again"))
        assert len(server.requests) == 1  # the summary request was never sent
        assert session.messages[: len(before)] == before  # nothing was summarized away
        assert session.budget_tracker.spent() == pytest.approx(0.21)
