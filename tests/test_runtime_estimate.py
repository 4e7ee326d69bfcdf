"""A long session's first request is estimated off the event loop, with the same total."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from astrid.messages import Message
from astrid.runtime import ESTIMATE_OFF_LOOP, AgentRuntime
from astrid.tokens import ContentEstimator, RunningEstimate
from tests.test_runtime import make_runtime, text


class ThreadRecordingEstimator(ContentEstimator):
    """The default estimator, noting which thread each estimate ran on."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def estimate(self, message: Message) -> int:
        self.threads.append(threading.get_ident())
        return super().estimate(message)


def _request_estimate(
    runtime: AgentRuntime, estimator: ThreadRecordingEstimator, n: int
) -> tuple[int, list[int], int]:
    """Run one turn on a session of ``n`` messages: the loop's thread, the estimates' threads
    and the total the runtime's running estimate holds after it."""
    session = runtime.create_session("system")
    session.with_token_estimator(estimator)
    for i in range(n):
        session.add_message(Message.user(f"message {i} " * 8))

    async def main() -> tuple[int, int]:
        loop_thread = threading.get_ident()
        await runtime.run_turn(session, "next")
        return loop_thread, runtime._estimates[session]._total

    loop_thread, counted = asyncio.run(main())
    return loop_thread, estimator.threads, counted


def test_a_long_sessions_first_request_is_estimated_in_a_worker_thread(tmp_path: Path) -> None:
    runtime, _ = make_runtime([text("ok")], None, tmp_path)
    estimator = ThreadRecordingEstimator()
    n = ESTIMATE_OFF_LOOP * 4
    loop_thread, threads, counted = _request_estimate(runtime, estimator, n)
    assert len(threads) > n
    off_loop = [t for t in threads if t != loop_thread]
    assert len(off_loop) >= n  # the request's messages, counted off the loop
    # the same total a plain count on the loop thread gives
    session_messages = [Message.user(f"message {i} " * 8) for i in range(n)]
    session_messages.append(Message.user("next"))
    reference = ContentEstimator()
    assert counted == sum(max(0, reference.estimate(m)) for m in session_messages)


def test_a_short_sessions_request_is_estimated_on_the_loop(tmp_path: Path) -> None:
    runtime, _ = make_runtime([text("ok")], None, tmp_path)
    estimator = ThreadRecordingEstimator()
    loop_thread, threads, _ = _request_estimate(runtime, estimator, 10)
    assert threads and all(t == loop_thread for t in threads)


def test_backlog_counts_what_total_would_estimate() -> None:
    estimator = ContentEstimator()
    running = RunningEstimate()
    messages = [Message.user(f"m {i}") for i in range(40)]
    assert running.backlog(estimator, messages) == 40
    running.total(estimator, messages)
    assert running.backlog(estimator, messages) == 0
    assert running.backlog(estimator, [*messages, Message.user("x")]) == 1
    assert running.backlog(estimator, messages[:10]) == 10  # shorter: a full recount
    assert running.backlog(ContentEstimator(), messages) == 40  # another estimator: the same
