"""Sub-agents: the original's pool and executor tests (spec §7), then each deliberate fix."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from astrid import AgentSession, Message, ToolCall
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import StorageError, SubAgentError
from astrid.messages import ToolCallResult
from astrid.security.allowances import Allowance, ExactTool
from astrid.security.budget import WorkspaceBudgetTracker
from astrid.store import SessionStore, SessionWrite
from astrid.subagents import (
    NO_TEXT_OUTPUT,
    SubAgentExecutor,
    SubAgentHandle,
    SubAgentId,
    SubAgentPool,
    SubAgentRequest,
    SubAgentResult,
    SubAgentStatus,
    build_subagent_prompt,
    extract_last_assistant_text,
    safe_description,
)

S = SubAgentStatus


def run(coro: Awaitable[Any]) -> Any:
    """Run a coroutine to completion (no pytest-asyncio here)."""

    async def main() -> Any:
        return await coro

    return asyncio.run(main())


def status_of(handle: SubAgentHandle) -> SubAgentStatus:
    """The handle's status (a call, so the type checker does not narrow it between steps)."""
    return handle.status


# -- the original's subagent.rs tests (spec §7, 14-35) ---------------------------------------


def test_subagent_lifecycle() -> None:
    handle = SubAgentHandle("Test task", 0)
    assert status_of(handle) == S.INITIALIZING
    assert not handle.is_done()
    handle.mark_running()
    assert status_of(handle) == S.RUNNING
    handle.complete("success")
    assert status_of(handle) == S.COMPLETED
    assert handle.is_done()
    assert handle.result == "success"


def test_subagent_failure() -> None:
    handle = SubAgentHandle("Test task", 0)
    handle.fail("something went wrong")
    assert handle.status == S.FAILED
    assert handle.is_done()
    assert handle.error == "something went wrong"


def test_final_status() -> None:
    handle = SubAgentHandle("t", 0)
    assert handle.final_status is None
    handle.mark_running()
    assert handle.final_status is None
    handle.complete("ok")
    assert handle.final_status == S.COMPLETED


def test_pool_spawn() -> None:
    pool = SubAgentPool(5, 3)
    handle = pool.spawn("Test task")
    assert pool.active_count() == 1
    pool.release(handle.id)
    assert pool.active_count() == 0
    assert len(pool.history()) == 1


def test_pool_max_depth() -> None:
    pool = SubAgentPool(5, 2)
    root = pool.spawn("Root")
    assert root.depth == 0
    child = pool.spawn("Child", root.id)
    assert child.depth == 1
    with pytest.raises(SubAgentError, match=r"maximum subagent depth \(2\) exceeded"):
        pool.spawn("Grandchild", child.id)


def test_pool_cancel_all() -> None:
    pool = SubAgentPool(5, 3)
    a = pool.spawn("Task 1")
    b = pool.spawn("Task 2")
    pool.cancel_all()
    assert a.status == S.CANCELLED
    assert b.status == S.CANCELLED
    assert pool.active_count() == 0
    assert len(pool.history()) == 2


def test_semaphore_limits_concurrency() -> None:
    pool = SubAgentPool(2, 5)
    pool.spawn("a")
    pool.spawn("b")
    with pytest.raises(SubAgentError, match="maximum concurrent subagents reached"):
        pool.spawn("c")
    assert pool.available_permits() == 0


def test_permit_released_on_complete() -> None:
    pool = SubAgentPool(1, 5)
    handle = pool.spawn("a")
    assert pool.available_permits() == 0
    handle.complete("done")
    pool.release(handle.id)
    assert pool.available_permits() == 1
    pool.spawn("b")
    assert pool.available_permits() == 0


def test_stop_cancels_and_moves_to_history() -> None:
    pool = SubAgentPool(5, 3)
    handle = pool.spawn("a")
    stopped = pool.stop(handle.id)
    assert stopped is handle
    assert handle.status == S.CANCELLED
    assert pool.active_count() == 0
    assert len(pool.history()) == 1


def test_stop_nonexistent_returns_none() -> None:
    pool = SubAgentPool(5, 3)
    assert pool.stop(SubAgentId.new()) is None


def test_can_spawn_child_checks_depth_and_concurrency() -> None:
    pool = SubAgentPool(3, 2)
    root = pool.spawn("root")
    assert pool.can_spawn_child(root.id)
    child = pool.spawn("child", root.id)
    assert not pool.can_spawn_child(child.id)
    assert not pool.can_spawn_child(SubAgentId.new())


def test_can_spawn_child_checks_concurrency() -> None:
    pool = SubAgentPool(2, 5)
    a = pool.spawn("a")
    pool.spawn("b")
    assert not pool.can_spawn_child(a.id)


def test_wait_for_completion_returns_when_empty() -> None:
    async def main() -> None:
        pool = SubAgentPool(5, 3)
        await asyncio.wait_for(pool.wait_for_completion(), 1.0)
        handle = pool.spawn("a")
        waiter = asyncio.create_task(pool.wait_for_completion())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        handle.complete("ok")
        pool.release(handle.id)
        await asyncio.wait_for(waiter, 1.0)

    asyncio.run(main())


def test_wait_for_completion_timeout_returns_false_on_expiry() -> None:
    async def main() -> None:
        pool = SubAgentPool(5, 3)
        pool.spawn("a")
        assert await pool.wait_for_completion_timeout(0.05) is False

    asyncio.run(main())


def test_wait_for_completion_timeout_returns_true_on_drain() -> None:
    async def main() -> None:
        pool = SubAgentPool(5, 3)
        handle = pool.spawn("a")

        async def later() -> None:
            await asyncio.sleep(0.02)
            pool.release(handle.id)

        releaser = asyncio.create_task(later())
        assert await pool.wait_for_completion_timeout(2.0) is True
        await releaser

    asyncio.run(main())


def test_get_children_returns_direct_children_only() -> None:
    pool = SubAgentPool(10, 5)
    root = pool.spawn("root")
    c1 = pool.spawn("c1", root.id)
    pool.spawn("c2", root.id)
    pool.spawn("gc", c1.id)
    assert len(pool.get_children(root.id)) == 2


def test_get_children_includes_completed() -> None:
    pool = SubAgentPool(10, 5)
    root = pool.spawn("root")
    child = pool.spawn("child", root.id)
    child.complete("done")
    pool.release(child.id)
    children = pool.get_children(root.id)
    assert [c.id for c in children] == [child.id]


def test_get_subtree_returns_all_descendants() -> None:
    pool = SubAgentPool(10, 5)
    root = pool.spawn("root")
    c1 = pool.spawn("c1", root.id)
    c2 = pool.spawn("c2", root.id)
    g1 = pool.spawn("g1", c1.id)
    g2 = pool.spawn("g2", c2.id)
    g1.complete("x")
    pool.release(g1.id)
    subtree = pool.get_subtree(root.id)
    assert len(subtree) == 4
    assert {h.id for h in subtree} == {c1.id, c2.id, g1.id, g2.id}
    assert root.id not in {h.id for h in subtree}


def test_cancel_subtree_cancels_only_descendants() -> None:
    pool = SubAgentPool(10, 5)
    root = pool.spawn("root")
    child = pool.spawn("child", root.id)
    grandchild = pool.spawn("grandchild", child.id)
    sibling = pool.spawn("unrelated")
    assert pool.cancel_subtree(root.id) == 2
    assert pool.get(root.id) is root
    assert pool.get(sibling.id) is sibling
    assert pool.get(child.id) is None
    assert pool.get(grandchild.id) is None
    assert child.status == S.CANCELLED and grandchild.status == S.CANCELLED


def test_stats_counts_are_accurate() -> None:
    pool = SubAgentPool(10, 5)
    ok = pool.spawn("ok")
    ok.complete("done")
    pool.release(ok.id)
    bad = pool.spawn("bad")
    bad.fail("err")
    pool.release(bad.id)
    stopped = pool.spawn("stopped")
    pool.stop(stopped.id)
    slow = pool.spawn("slow")
    slow.timeout()
    pool.release(slow.id)
    stats = pool.stats()
    assert stats.active == 0
    assert stats.total_completed == 4
    assert (stats.succeeded, stats.failed, stats.cancelled, stats.timed_out) == (1, 1, 1, 1)
    assert stats.max_concurrent == 10
    assert stats.max_depth == 5


def test_stats_with_active() -> None:
    pool = SubAgentPool(5, 3)
    pool.spawn("active")
    done = pool.spawn("done")
    done.complete("ok")
    pool.release(done.id)
    stats = pool.stats()
    assert stats.active == 1
    assert stats.total_completed == 1
    assert stats.succeeded == 1
    assert stats.available == 4


def test_history_eviction_at_capacity() -> None:
    pool = SubAgentPool.with_max_history(10, 5, 3)
    for i in range(5):
        handle = pool.spawn(f"task-{i}")
        handle.complete("ok")
        pool.release(handle.id)
    assert [h.task for h in pool.history()] == ["task-2", "task-3", "task-4"]


# -- the original's subagent_executor.rs tests (spec §7, 36-43) ------------------------------


def test_extract_last_assistant_text() -> None:
    messages = [
        Message.user("Do something"),
        Message.assistant("Working on it"),
        Message.user("Continue"),
        Message.assistant("Final answer"),
    ]
    assert extract_last_assistant_text(messages) == "Final answer"


def test_extract_last_assistant_text_no_assistant() -> None:
    assert extract_last_assistant_text([Message.user("Hello")]) == NO_TEXT_OUTPUT
    assert NO_TEXT_OUTPUT == "(sub-agent produced no text output)"


def test_extract_last_assistant_text_empty() -> None:
    assert extract_last_assistant_text([]) == NO_TEXT_OUTPUT


def test_safe_description_four_byte_emoji_at_boundary() -> None:
    text = "x" * 198 + "\U0001f600"
    assert len(text.encode()) == 202
    assert safe_description(text) == "x" * 198 + "..."


def test_safe_description_three_byte_char_at_boundary() -> None:
    text = "x" * 199 + "€"
    assert safe_description(text) == "x" * 199 + "..."


def test_safe_description_two_byte_char_at_boundary() -> None:
    text = "x" * 199 + "ñ"
    assert len(text.encode()) == 201
    assert safe_description(text) == "x" * 199 + "..."


def test_safe_description_short_passes_through() -> None:
    assert safe_description("Short task") == "Short task"


def test_safe_description_exactly_200_bytes() -> None:
    text = "y" * 200
    assert safe_description(text) == text


# -- helpers, statuses and handles: our additions --------------------------------------------


@given(st.text(max_size=400))
def test_safe_description_is_a_whole_character_prefix(text: str) -> None:
    out = safe_description(text)
    if len(text.encode("utf-8", "surrogatepass")) <= 200:
        assert out == text
    else:
        assert out.endswith("...")
        head = out[:-3]
        assert text.startswith(head)
        size = len(head.encode("utf-8", "surrogatepass"))
        assert size <= 200
        next_char = text[len(head)]
        assert size + len(next_char.encode("utf-8", "surrogatepass")) > 200


def test_extract_does_not_search_past_a_trailing_tool_call() -> None:
    messages = [
        Message.assistant("earlier text"),
        Message.assistant_with_tools([ToolCall(id="1", name="x")]),
        Message.tool_result(ToolCallResult.success("1", "r")),
    ]
    assert extract_last_assistant_text(messages) == NO_TEXT_OUTPUT


def test_build_subagent_prompt_is_exact() -> None:
    tail = (
        "\n\nComplete this task and provide a clear, concise result. Do not ask for "
        "clarification — work with what you have. When done, provide your final answer as a "
        "clear summary."
    )
    assert build_subagent_prompt("find bugs") == (
        "You are a focused sub-agent. Your task:\n\nfind bugs" + tail
    )
    assert build_subagent_prompt("find bugs", "Stellar") == (
        "You are Stellar (sub-agent). Your task:\n\nfind bugs" + tail
    )
    assert build_subagent_prompt("find bugs", "") == build_subagent_prompt("find bugs")
    long = build_subagent_prompt("z" * 300)
    assert "z" * 200 + "..." in long and "z" * 201 not in long


def test_status_strings_and_terminality() -> None:
    assert [s.value for s in S] == [
        "initializing",
        "running",
        "completed",
        "failed",
        "cancelled",
        "timed_out",
    ]
    assert str(S.TIMED_OUT) == "timed_out"
    assert [s for s in S if s.is_terminal] == [S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMED_OUT]


def test_subagent_id_is_a_plain_uuid_string() -> None:
    agent_id = SubAgentId.new()
    assert isinstance(agent_id, str)
    assert uuid.UUID(agent_id).version == 4
    assert str(agent_id) == f"{agent_id}"
    assert {agent_id: 1}[SubAgentId(str(agent_id))] == 1
    assert SubAgentId.new() != agent_id


def test_terminal_status_is_never_overwritten() -> None:
    handle = SubAgentHandle("t", 0)
    handle.mark_running()
    assert handle.cancel() is True
    stamped = handle.completed_at
    assert handle.complete("late") is False
    assert handle.fail("late") is False
    assert handle.timeout() is False
    assert handle.mark_running() is False
    assert handle.set_status(S.INITIALIZING) is False
    assert handle.status == S.CANCELLED
    assert handle.final_status == S.CANCELLED
    assert handle.result is None and handle.error is None
    assert handle.completed_at == stamped


def test_handle_duration_only_when_terminal() -> None:
    handle = SubAgentHandle("t", 0)
    assert handle.duration() is None
    handle.mark_running()
    assert handle.duration() is None
    handle.timeout()
    duration = handle.duration()
    assert duration is not None and duration.total_seconds() >= 0


def test_status_cannot_go_backwards() -> None:
    handle = SubAgentHandle("t", 0)
    assert handle.mark_running() is True
    assert handle.mark_running() is False
    assert handle.set_status(S.INITIALIZING) is False
    assert handle.status == S.RUNNING


# -- pool: our fixes --------------------------------------------------------------------------


def test_inactive_parent_is_an_error_not_depth_one() -> None:
    pool = SubAgentPool(5, 2)
    root = pool.spawn("root")
    child = pool.spawn("child", root.id)
    child.complete("done")
    pool.release(child.id)
    # the original would give depth 1 here and let a grandchild of root slip under max_depth
    with pytest.raises(SubAgentError, match=f"parent sub-agent {child.id} is not active"):
        pool.spawn("grandchild", child.id)
    assert not pool.can_spawn_child(child.id)
    unknown = SubAgentId.new()
    with pytest.raises(SubAgentError, match="is not active"):
        pool.spawn("orphan", unknown)
    assert pool.active_count() == 1
    assert pool.available_permits() == 4


def test_stopped_parent_cannot_spawn() -> None:
    pool = SubAgentPool(5, 5)
    root = pool.spawn("root")
    pool.stop(root.id)
    with pytest.raises(SubAgentError, match="is not active"):
        pool.spawn("child", root.id)


def test_depth_error_comes_before_permit_error() -> None:
    pool = SubAgentPool(1, 1)
    root = pool.spawn("root")
    with pytest.raises(SubAgentError, match="depth"):
        pool.spawn("child", root.id)


def test_zero_depth_forbids_every_spawn() -> None:
    pool = SubAgentPool(5, 0)
    with pytest.raises(SubAgentError, match=r"maximum subagent depth \(0\) exceeded"):
        pool.spawn("a")


def test_can_spawn_child_agrees_with_spawn() -> None:
    pool = SubAgentPool(3, 3)
    handles = [pool.spawn("root")]
    for i in range(4):
        parent = handles[-1]
        expected = pool.can_spawn_child(parent.id)
        try:
            handles.append(pool.spawn(f"c{i}", parent.id))
            assert expected
        except SubAgentError:
            assert not expected


def test_release_and_stop_twice_are_harmless() -> None:
    pool = SubAgentPool(2, 3)
    handle = pool.spawn("a")
    handle.complete("ok")
    pool.release(handle.id)
    pool.release(handle.id)
    assert pool.stop(handle.id) is None
    assert pool.available_permits() == 2
    assert handle.status == S.COMPLETED
    assert len(pool.history()) == 1


def test_cancel_all_does_not_poison_the_pool() -> None:
    pool = SubAgentPool(2, 3)
    pool.spawn("a")
    pool.spawn("b")
    assert len(pool.cancel_all()) == 2
    assert pool.available_permits() == 2
    again = pool.spawn("c")
    assert again.status == S.INITIALIZING
    again.mark_running()
    again.complete("fine")
    pool.release(again.id)
    assert pool.stats().succeeded == 1
    assert pool.stats().cancelled == 2


def test_pool_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_concurrent"):
        SubAgentPool(-1, 3)
    with pytest.raises(ValueError, match="max_depth"):
        SubAgentPool(1, -3)
    with pytest.raises(ValueError, match="max_history"):
        SubAgentPool(1, 3, -1)


def test_history_can_be_cleared_and_is_a_copy() -> None:
    pool = SubAgentPool(2, 3)
    handle = pool.spawn("a")
    pool.release(handle.id)
    snapshot = pool.history()
    snapshot.clear()
    assert len(pool.history()) == 1
    pool.clear_history()
    assert pool.history() == []
    assert pool.stats().total_completed == 0


def test_released_without_terminal_status_counts_in_no_category() -> None:
    pool = SubAgentPool(2, 3)
    handle = pool.spawn("a")
    pool.release(handle.id)
    stats = pool.stats()
    assert stats.total_completed == 1
    assert stats.succeeded + stats.failed + stats.cancelled + stats.timed_out == 0


def test_stop_cancels_an_attached_task() -> None:
    async def main() -> None:
        pool = SubAgentPool(1, 3)
        handle = pool.spawn("a")
        seen: list[str] = []

        async def body() -> None:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen.append("cancelled")
                raise

        runner = asyncio.ensure_future(body())
        assert pool.attach(handle.id, runner)
        await asyncio.sleep(0)
        pool.stop(handle.id)
        await asyncio.wait({runner}, timeout=1.0)
        assert runner.cancelled()
        assert seen == ["cancelled"]
        assert pool.available_permits() == 1

    asyncio.run(main())


def test_attach_to_an_inactive_handle_cancels_the_task() -> None:
    async def main() -> None:
        pool = SubAgentPool(1, 3)
        handle = pool.spawn("a")
        pool.stop(handle.id)
        runner = asyncio.ensure_future(asyncio.sleep(30))
        assert pool.attach(handle.id, runner) is False
        await asyncio.wait({runner}, timeout=1.0)
        assert runner.cancelled()

    asyncio.run(main())


def test_waiters_all_wake_with_no_lost_wakeup_under_churn() -> None:
    async def main() -> None:
        pool = SubAgentPool(4, 3)

        async def worker(rounds: int) -> None:
            for _ in range(rounds):
                try:
                    handle = pool.spawn("w")
                except SubAgentError:
                    await asyncio.sleep(0)
                    continue
                await asyncio.sleep(0)
                handle.complete("ok")
                pool.release(handle.id)
                await asyncio.sleep(0)

        async def waiter(delay_steps: int) -> bool:
            for _ in range(delay_steps):
                await asyncio.sleep(0)
            return await pool.wait_for_completion_timeout(5.0)

        workers = [asyncio.create_task(worker(200)) for _ in range(6)]
        waiters = [asyncio.create_task(waiter(i % 50)) for i in range(200)]
        results = await asyncio.gather(*waiters)
        await asyncio.gather(*workers)
        assert all(results)
        assert pool.active_count() == 0
        assert pool.available_permits() == 4
        assert pool._waiters == []

    asyncio.run(main())


def test_release_from_other_threads_wakes_async_waiters() -> None:
    async def main() -> None:
        pool = SubAgentPool(64, 3)
        handles = [pool.spawn(f"t{i}") for i in range(64)]
        waiters = [asyncio.create_task(pool.wait_for_completion_timeout(5.0)) for _ in range(20)]
        await asyncio.sleep(0)

        def release_some(chunk: list[SubAgentHandle]) -> None:
            for handle in chunk:
                handle.complete("ok")
                pool.release(handle.id)

        threads = [threading.Thread(target=release_some, args=(handles[i::8],)) for i in range(8)]
        for thread in threads:
            thread.start()
        results = await asyncio.gather(*waiters)
        for thread in threads:
            thread.join()
        assert all(results)
        assert pool.available_permits() == 64
        assert pool.stats().succeeded == 64

    asyncio.run(main())


# -- executor ---------------------------------------------------------------------------------

RunChildFn = Callable[[AgentSession, str, SubAgentId], Awaitable[None]]


def parent_session() -> AgentSession:
    session = AgentSession("parent prompt")
    session.with_workspace_budget(WorkspaceBudgetTracker(None))
    return session


def answering(text: str, *, tool_calls: int = 0) -> RunChildFn:
    """A child turn that (optionally) calls tools and then answers ``text``."""

    async def run_child(child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
        child.add_message(Message.user(prompt))
        for i in range(tool_calls):
            call = ToolCall(id=f"c{i}", name="read_file", arguments={"path": "/tmp/x"})
            child.add_message(Message.assistant_with_tools([call]))
            child.add_message(Message.tool_result(ToolCallResult.success(f"c{i}", "data")))
            await asyncio.sleep(0)
        child.add_message(Message.assistant(text))

    return run_child


class Blocking:
    """A child turn that writes partial output, signals, then waits until cancelled."""

    def __init__(self, partial: str = "partial work") -> None:
        self.partial = partial
        self.started = asyncio.Event()
        self.cancelled = 0
        self.ids: list[SubAgentId] = []
        self.sessions: list[AgentSession] = []

    async def __call__(self, child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
        self.ids.append(agent_id)
        self.sessions.append(child)
        child.add_message(Message.user(prompt))
        child.add_message(Message.assistant(self.partial))
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


def request(description: str = "do it", prompt: str = "please", **kw: Any) -> SubAgentRequest:
    return SubAgentRequest(description=description, prompt=prompt, **kw)


def test_executor_success_path() -> None:
    async def main() -> None:
        pool = SubAgentPool(4, 3)
        parent = parent_session()
        parent.plugin_context = "plugin ctx"
        captured: dict[str, Any] = {}

        async def run_child(child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
            captured.update(child=child, prompt=prompt, agent_id=agent_id)
            captured["handle"] = pool.get(agent_id)
            captured["status"] = pool.get(agent_id).status  # type: ignore[union-attr]
            await answering("the answer", tool_calls=2)(child, prompt, agent_id)

        executor = SubAgentExecutor(pool, parent, run_child, callsign="Stellar")
        result = await executor.spawn(request("summarise the repo", "go"))
        assert result.success and result.error is None
        assert result.output == "the answer"
        assert result.tool_calls == 2
        assert result.duration_ms >= 0
        child: AgentSession = captured["child"]
        assert result.session_id == child.id.bare
        assert captured["prompt"] == "go"
        assert captured["status"] == S.RUNNING
        assert child.system_prompt == build_subagent_prompt("summarise the repo", "Stellar")
        assert child.is_subagent and child.parent_id == parent.id
        assert child.plugin_context == "plugin ctx"
        assert child.allowance_store is parent.allowance_store
        assert child.capabilities is parent.capabilities
        assert child.approval_manager is not parent.approval_manager
        handle: SubAgentHandle = captured["handle"]
        assert handle.depth == 0 and handle.parent_id is None
        assert handle.status == S.COMPLETED and handle.result == "the answer"
        assert pool.active_count() == 0 and pool.available_permits() == 4
        assert pool.history() == [handle]

    asyncio.run(main())


def test_executor_reports_spawn_limits_as_results() -> None:
    async def main() -> None:
        pool = SubAgentPool(0, 3)
        executor = SubAgentExecutor(pool, parent_session(), answering("x"))
        result = await executor.spawn(request())
        assert result == SubAgentResult(
            success=False,
            duration_ms=result.duration_ms,
            error="Sub-agent error: maximum concurrent subagents reached",
        )
        assert result.session_id is None
        assert pool.history() == []

    asyncio.run(main())


def test_executor_with_inactive_parent_subagent_reports_an_error() -> None:
    async def main() -> None:
        pool = SubAgentPool(4, 3)
        gone = pool.spawn("gone")
        pool.release(gone.id)
        executor = SubAgentExecutor(
            pool, parent_session(), answering("x"), parent_subagent_id=gone.id
        )
        result = await executor.spawn(request())
        assert not result.success
        assert result.error == f"Sub-agent error: parent sub-agent {gone.id} is not active"
        assert pool.available_permits() == 4

    asyncio.run(main())


def test_executor_failure_keeps_partial_output() -> None:
    async def main() -> None:
        pool = SubAgentPool(2, 3)

        async def run_child(child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
            child.add_message(Message.user(prompt))
            child.add_message(Message.assistant_with_tools([ToolCall(id="1", name="x")]))
            child.add_message(Message.tool_result(ToolCallResult.success("1", "r")))
            child.add_message(Message.assistant("half done"))
            await asyncio.sleep(0)
            raise RuntimeError("LLM stream broke")

        result = await SubAgentExecutor(pool, parent_session(), run_child).spawn(request())
        assert not result.success
        assert result.error == "LLM stream broke"
        assert result.output == "half done"
        assert result.tool_calls == 1
        [handle] = pool.history()
        assert handle.status == S.FAILED and handle.error == "LLM stream broke"
        assert pool.available_permits() == 2

    asyncio.run(main())


def test_executor_timeout_cancels_the_child_and_keeps_partial_output() -> None:
    async def main() -> None:
        pool = SubAgentPool(2, 3)
        child = Blocking("so far so good")
        executor = SubAgentExecutor(pool, parent_session(), child)
        result = await executor.spawn(request(timeout=0.05))
        assert not result.success
        assert result.error == "Sub-agent timed out after 0.05 seconds"
        assert result.output == "so far so good"
        assert child.cancelled == 1
        [handle] = pool.history()
        assert handle.status == S.TIMED_OUT
        assert pool.active_count() == 0 and pool.available_permits() == 2

    asyncio.run(main())


def test_executor_default_timeout_applies() -> None:
    async def main() -> None:
        pool = SubAgentPool(2, 3)
        executor = SubAgentExecutor(pool, parent_session(), Blocking(), default_timeout=0.05)
        result = await executor.spawn(request())
        assert result.error == "Sub-agent timed out after 0.05 seconds"

    asyncio.run(main())


def test_pool_stop_really_cancels_a_running_child() -> None:
    async def main() -> None:
        pool = SubAgentPool(1, 3)
        child = Blocking("before the stop")
        executor = SubAgentExecutor(pool, parent_session(), child)
        spawn = asyncio.create_task(executor.spawn(request()))
        await asyncio.wait_for(child.started.wait(), 1.0)
        [agent_id] = child.ids
        assert pool.available_permits() == 0
        handle = pool.stop(agent_id)
        assert handle is not None
        result = await asyncio.wait_for(spawn, 1.0)
        assert child.cancelled == 1
        assert not result.success
        assert result.error == "Sub-agent cancelled"
        assert result.output == "before the stop"
        assert handle.status == S.CANCELLED and handle.final_status == S.CANCELLED
        assert pool.available_permits() == 1
        assert await pool.wait_for_completion_timeout(1.0)
        assert pool.history() == [handle]

    asyncio.run(main())


def test_cancelled_status_survives_a_child_that_finishes_anyway() -> None:
    async def main() -> None:
        pool = SubAgentPool(1, 3)
        started = asyncio.Event()

        async def stubborn(child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                child.add_message(Message.assistant("finished anyway"))
            # swallows the cancellation and returns normally

        spawn = asyncio.create_task(
            SubAgentExecutor(pool, parent_session(), stubborn).spawn(request())
        )
        await started.wait()
        [handle] = pool.list_active()
        pool.stop(handle.id)
        result = await asyncio.wait_for(spawn, 1.0)
        assert handle.status == S.CANCELLED
        assert handle.result is None
        assert not result.success and result.error == "Sub-agent cancelled"
        assert result.output == "finished anyway"

    asyncio.run(main())


def test_child_ignoring_cancellation_does_not_hold_the_permit_forever() -> None:
    async def main() -> None:
        pool = SubAgentPool(1, 3)
        started = asyncio.Event()
        release = asyncio.Event()

        async def deaf(child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
            started.set()
            while not release.is_set():
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    continue

        executor = SubAgentExecutor(pool, parent_session(), deaf, cancel_grace=0.05)
        result = await executor.spawn(request(timeout=0.05))
        assert result.error == "Sub-agent timed out after 0.05 seconds"
        assert pool.available_permits() == 1 and pool.active_count() == 0
        release.set()
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    asyncio.run(main())


def test_cancel_subtree_cancels_grandchild_tasks() -> None:
    async def main() -> None:
        pool = SubAgentPool(5, 4)
        root = pool.spawn("root (held by the test)")
        parent = parent_session()
        grandchild = Blocking("grandchild partial")
        child_cancelled: list[bool] = []
        nested: list[SubAgentResult] = []

        async def child_turn(child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
            inner = SubAgentExecutor(pool, child, grandchild, parent_subagent_id=agent_id)
            try:
                nested.append(await inner.spawn(request("nested")))
            except asyncio.CancelledError:
                child_cancelled.append(True)
                raise

        outer = SubAgentExecutor(pool, parent, child_turn, parent_subagent_id=root.id)
        spawn = asyncio.create_task(outer.spawn(request("child")))
        await asyncio.wait_for(grandchild.started.wait(), 1.0)
        assert pool.active_count() == 3
        [gc_session] = grandchild.sessions
        [gc_id] = grandchild.ids
        assert pool.get(gc_id).depth == 2  # type: ignore[union-attr]
        assert pool.cancel_subtree(root.id) == 2
        result = await asyncio.wait_for(spawn, 1.0)
        assert grandchild.cancelled == 1
        assert child_cancelled == [True]
        assert nested == []
        assert result.error == "Sub-agent cancelled"
        assert pool.get(root.id) is root and pool.active_count() == 1
        assert {h.status for h in pool.get_subtree(root.id)} == {S.CANCELLED}
        assert gc_session.parent_id is not None
        assert pool.available_permits() == 4
        root.complete("done")
        pool.release(root.id)
        assert await pool.wait_for_completion_timeout(1.0)

    asyncio.run(main())


def test_cancel_all_cancels_running_children_and_the_pool_still_works() -> None:
    async def main() -> None:
        pool = SubAgentPool(3, 3)
        parent = parent_session()
        blockers = [Blocking(f"p{i}") for i in range(2)]
        spawns = [
            asyncio.create_task(SubAgentExecutor(pool, parent, b).spawn(request(f"t{i}")))
            for i, b in enumerate(blockers)
        ]
        for b in blockers:
            await asyncio.wait_for(b.started.wait(), 1.0)
        assert len(pool.cancel_all()) == 2
        results = await asyncio.wait_for(asyncio.gather(*spawns), 1.0)
        assert [r.error for r in results] == ["Sub-agent cancelled"] * 2
        assert [b.cancelled for b in blockers] == [1, 1]
        # no pool-wide token was burnt: the next sub-agent runs normally
        later = await SubAgentExecutor(pool, parent, answering("fresh")).spawn(request())
        assert later.success and later.output == "fresh"
        assert pool.stats().cancelled == 2 and pool.stats().succeeded == 1
        assert pool.available_permits() == 3

    asyncio.run(main())


def test_outer_cancellation_releases_the_permit_and_propagates() -> None:
    async def main() -> None:
        pool = SubAgentPool(1, 3)
        store = SessionStore(MemoryBackend())
        parent = parent_session()
        child = Blocking("interrupted")
        executor = SubAgentExecutor(pool, parent, child, store=store)
        spawn = asyncio.create_task(executor.spawn(request()))
        await asyncio.wait_for(child.started.wait(), 1.0)
        spawn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await spawn
        assert child.cancelled == 1
        assert pool.active_count() == 0
        assert pool.available_permits() == 1
        [handle] = pool.history()
        assert handle.status == S.CANCELLED
        assert await pool.wait_for_completion_timeout(0.5)
        # the interrupted child's transcript was still saved
        saved = store.load(child.sessions[0].id)
        assert saved is not None
        assert saved.messages[-1].text() == "interrupted"
        # and the pool is free for the next one
        result = await SubAgentExecutor(pool, parent, answering("ok")).spawn(request())
        assert result.success

    asyncio.run(main())


def test_executor_saves_the_child_transcript_linked_to_its_parent() -> None:
    async def main() -> None:
        pool = SubAgentPool(2, 3)
        store = SessionStore(MemoryBackend())
        parent = parent_session()
        parent.add_message(Message.user("delegate something"))
        store.save(parent)
        executor = SubAgentExecutor(
            pool, parent, answering("child answer", tool_calls=1), store=store
        )
        result = await executor.spawn(request("look around", "list the files"))
        assert result.success and result.session_id is not None
        summaries = {s.id: s for s in store.list_sessions()}
        assert set(summaries) == {parent.id.bare, result.session_id}
        assert summaries[result.session_id].parent_id == parent.id.bare
        assert summaries[parent.id.bare].parent_id is None
        loaded = store.load(result.session_id)
        assert loaded is not None
        assert loaded.parent_id == parent.id
        assert loaded.system_prompt == build_subagent_prompt("look around")
        assert loaded.messages[0].text() == "list the files"
        assert loaded.messages[-1].text() == "child answer"
        assert loaded.metadata.tool_call_count == 1
        assert len(loaded.messages) == 4

    asyncio.run(main())


def test_failed_and_timed_out_children_are_saved_too() -> None:
    async def main() -> None:
        pool = SubAgentPool(2, 3)
        store = SessionStore(MemoryBackend())
        parent = parent_session()

        async def broken(child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
            child.add_message(Message.user(prompt))
            raise ValueError("bad tool arguments")

        failed = await SubAgentExecutor(pool, parent, broken, store=store).spawn(request())
        timed = await SubAgentExecutor(pool, parent, Blocking(), store=store).spawn(
            request(timeout=0.02)
        )
        for result in (failed, timed):
            assert result.session_id is not None
            loaded = store.load(result.session_id)
            assert loaded is not None and loaded.parent_id == parent.id
        assert pool.stats().failed == 1 and pool.stats().timed_out == 1

    asyncio.run(main())


class FailingBackend(MemoryBackend):
    """A memory backend whose writes fail."""

    def write(self, change: SessionWrite) -> int:
        raise StorageError(f"memory session {change.session_id}: disk on fire")


def test_save_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    pool = SubAgentPool(2, 3)
    executor = SubAgentExecutor(
        pool, parent_session(), answering("fine"), store=SessionStore(FailingBackend())
    )
    with caplog.at_level(logging.WARNING, logger="astrid.subagents"):
        result = run(executor.spawn(request()))
    assert result.success and result.output == "fine"
    assert "could not save sub-agent session" in caplog.text
    assert pool.available_permits() == 2


def test_child_spend_lands_on_the_parents_budget_and_workspace_trackers() -> None:
    async def main() -> None:
        pool = SubAgentPool(2, 3)
        parent = parent_session()
        workspace = parent.workspace_budget_tracker
        assert workspace is not None
        parent.budget_tracker.record_cost(0.5)
        workspace.record_cost(0.5)

        async def spender(child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
            assert child.budget_tracker is parent.budget_tracker
            assert child.workspace_budget_tracker is workspace
            child.budget_tracker.record_cost(1.25)
            assert child.workspace_budget_tracker is not None
            child.workspace_budget_tracker.record_cost(1.25)
            child.add_message(Message.assistant("spent"))

        result = await SubAgentExecutor(pool, parent, spender).spawn(request())
        assert result.success
        assert parent.budget_tracker.spent() == pytest.approx(1.75)
        assert workspace.spent() == pytest.approx(1.75)

    asyncio.run(main())


def test_child_session_allowances_end_with_the_child() -> None:
    async def main() -> None:
        pool = SubAgentPool(2, 3)
        parent = parent_session()
        read = Allowance.create(ExactTool(server="fs", tool="read"), session_only=True)
        parent.add_session_allowance(read)

        async def grants(child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
            write = Allowance.create(ExactTool(server="fs", tool="write"), session_only=True)
            child.add_session_allowance(write)
            assert len(parent.allowance_store.export_session_allowances()) == 2

        await SubAgentExecutor(pool, parent, grants).spawn(request())
        # the child's own session allowance is gone; the parent's survives
        assert [a.id for a in parent.allowance_store.export_session_allowances()] == [read.id]

    asyncio.run(main())


def test_request_and_executor_validate_timeouts() -> None:
    with pytest.raises(ValidationError):
        SubAgentRequest(description="d", prompt="p", timeout=0)
    with pytest.raises(ValidationError):
        SubAgentRequest(description="d", prompt="p", timeout=float("nan"))
    assert SubAgentRequest(description="d", prompt="p").timeout is None
    pool = SubAgentPool(1, 1)
    with pytest.raises(ValueError, match="default_timeout"):
        SubAgentExecutor(pool, parent_session(), answering("x"), default_timeout=0)
    with pytest.raises(ValueError, match="cancel_grace"):
        SubAgentExecutor(pool, parent_session(), answering("x"), cancel_grace=float("inf"))


def test_nested_executor_depth_follows_the_handle_chain() -> None:
    async def main() -> None:
        pool = SubAgentPool(5, 2)
        parent = parent_session()
        depths: list[int] = []
        nested: list[SubAgentResult] = []

        async def level(child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
            handle = pool.get(agent_id)
            assert handle is not None
            depths.append(handle.depth)
            inner = SubAgentExecutor(pool, child, level, parent_subagent_id=agent_id)
            nested.append(await inner.spawn(request("deeper")))
            child.add_message(Message.assistant(f"level {handle.depth}"))

        result = await SubAgentExecutor(pool, parent, level).spawn(request())
        assert result.success and result.output == "level 0"
        assert depths == [0, 1]
        # depth 2 is refused (max_depth 2), reported as a result inside the depth-1 child
        assert nested[0].error == "Sub-agent error: maximum subagent depth (2) exceeded"
        assert nested[1].success
        assert pool.available_permits() == 5

    asyncio.run(main())


# -- the child's save runs off the event loop (issue 15) -------------------------------------


def test_the_child_is_saved_in_a_worker_thread(tmp_path: Path) -> None:
    class ThreadRecordingSqlite(SqliteBackend):
        threads: list[int] = []

        def write(self, change: SessionWrite) -> int:
            self.threads.append(threading.get_ident())
            return int(super().write(change))

    backend = ThreadRecordingSqlite(tmp_path / "astrid.db")
    store = SessionStore(backend)

    async def main() -> tuple[SubAgentResult, int]:
        pool = SubAgentPool(2, 3)
        executor = SubAgentExecutor(pool, parent_session(), answering("done"), store=store)
        return await executor.spawn(request()), threading.get_ident()

    result, loop_thread = run(main())
    assert result.success and result.session_id is not None
    assert len(backend.threads) == 1 and loop_thread not in backend.threads
    loaded = store.load(result.session_id)
    assert loaded is not None and loaded.messages[-1].text() == "done"
    store.close()
