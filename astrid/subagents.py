"""Sub-agents: ids, statuses, handles, the concurrency pool and the executor (spec §5).

A port of the original ``subagent.rs`` / ``subagent_executor.rs`` with these deliberate fixes
(design §5 item 9):

* status transitions are guarded: once a handle is terminal, later changes are ignored, so a
  Cancelled handle is never turned into Completed by a late finish;
* ``stop``, ``cancel_subtree`` and ``cancel_all`` really cancel the asyncio task attached to each
  handle; there is no pool-wide token, so ``cancel_all`` leaves the pool usable;
* spawning under a parent that is no longer active is an error (never depth 1), and
  ``can_spawn_child`` agrees with ``spawn``; the depth check, the permit and the insert are atomic;
* permits are released in ``finally`` paths (releasing twice is harmless), so an aborted executor
  never leaks one; waiting for the pool to drain cannot miss a wake-up;
* the child session shares the parent's stores *and* workspace budget, and its transcript is saved
  with a link to its parent when the executor has a store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from .errors import SubAgentError
from .messages import Message, MessageRole
from .session import AgentSession
from .store import SessionStore
from .timeutil import utcnow

__all__ = [
    "NO_TEXT_OUTPUT",
    "SAFE_DESCRIPTION_MAX_BYTES",
    "RunChild",
    "SubAgentExecutor",
    "SubAgentHandle",
    "SubAgentId",
    "SubAgentPool",
    "SubAgentPoolStats",
    "SubAgentRequest",
    "SubAgentResult",
    "SubAgentStatus",
    "build_subagent_prompt",
    "extract_last_assistant_text",
    "safe_description",
]

logger = logging.getLogger(__name__)

NO_TEXT_OUTPUT = "(sub-agent produced no text output)"
"""What ``extract_last_assistant_text`` returns when there is no final assistant text."""

SAFE_DESCRIPTION_MAX_BYTES = 200
"""Longest description (in UTF-8 bytes) put into a sub-agent's system prompt unabridged."""

DEFAULT_MAX_HISTORY = 1000


# -- ids and statuses ----------------------------------------------------------------------


class SubAgentId(str):
    """A sub-agent id: the plain string form of a random UUID v4 (hashable, comparable)."""

    __slots__ = ()

    @classmethod
    def new(cls) -> SubAgentId:
        """A fresh random id."""
        return cls(uuid.uuid4())

    def __repr__(self) -> str:
        return f"SubAgentId({str.__repr__(self)})"


class SubAgentStatus(StrEnum):
    """Where a sub-agent is in its life; the last four are terminal."""

    INITIALIZING = "initializing"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        """True for Completed, Failed, Cancelled and TimedOut."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        SubAgentStatus.COMPLETED,
        SubAgentStatus.FAILED,
        SubAgentStatus.CANCELLED,
        SubAgentStatus.TIMED_OUT,
    }
)


# -- handle --------------------------------------------------------------------------------


class SubAgentHandle:
    """One sub-agent's identity and state; its status can only move forward (see ``set_status``)."""

    def __init__(self, task: str, depth: int, parent_id: SubAgentId | None = None) -> None:
        self.id: SubAgentId = SubAgentId.new()
        self.parent_id: SubAgentId | None = parent_id
        self.task: str = task
        self.depth: int = depth
        self.started_at: datetime = utcnow()
        self._lock = threading.Lock()
        self._status = SubAgentStatus.INITIALIZING
        self._final_status: SubAgentStatus | None = None
        self._completed_at: datetime | None = None
        self._result: str | None = None
        self._error: str | None = None
        self._permit = False
        self._runner: asyncio.Future[None] | None = None

    @property
    def status(self) -> SubAgentStatus:
        """The current status."""
        with self._lock:
            return self._status

    @property
    def final_status(self) -> SubAgentStatus | None:
        """The terminal status, or None while not terminal."""
        with self._lock:
            return self._final_status

    @property
    def completed_at(self) -> datetime | None:
        """When the handle became terminal (None until then)."""
        with self._lock:
            return self._completed_at

    @property
    def result(self) -> str | None:
        """The result given to ``complete``."""
        with self._lock:
            return self._result

    @property
    def error(self) -> str | None:
        """The error given to ``fail``."""
        with self._lock:
            return self._error

    def set_status(self, status: SubAgentStatus) -> bool:
        """Move to ``status``; ignored (False) once terminal or when it would go backwards.

        Allowed: Initializing → Running, and Initializing or Running → any terminal status.
        Unlike the original, a terminal status is never overwritten.
        """
        with self._lock:
            return self._set_locked(status)

    def _set_locked(self, status: SubAgentStatus) -> bool:
        current = self._status
        if current.is_terminal or status == current:
            return False
        if status == SubAgentStatus.INITIALIZING:
            return False
        self._status = status
        if status.is_terminal:
            self._final_status = status
            self._completed_at = utcnow()
        return True

    def mark_running(self) -> bool:
        """Initializing → Running."""
        return self.set_status(SubAgentStatus.RUNNING)

    def complete(self, result: str) -> bool:
        """Store the result and become Completed (ignored if already terminal)."""
        with self._lock:
            applied = self._set_locked(SubAgentStatus.COMPLETED)
            if applied:
                self._result = result
            return applied

    def fail(self, error: str) -> bool:
        """Store the error and become Failed (ignored if already terminal)."""
        with self._lock:
            applied = self._set_locked(SubAgentStatus.FAILED)
            if applied:
                self._error = error
            return applied

    def cancel(self) -> bool:
        """Become Cancelled (ignored if already terminal)."""
        return self.set_status(SubAgentStatus.CANCELLED)

    def timeout(self) -> bool:
        """Become TimedOut (ignored if already terminal)."""
        return self.set_status(SubAgentStatus.TIMED_OUT)

    def duration(self) -> timedelta | None:
        """``completed_at - started_at``, or None while not terminal."""
        completed = self.completed_at
        return None if completed is None else completed - self.started_at

    def is_done(self) -> bool:
        """True once the status is terminal."""
        return self.status.is_terminal

    def __repr__(self) -> str:
        return (
            f"SubAgentHandle(id={str(self.id)!r}, task={self.task!r}, depth={self.depth}, "
            f"status={self.status.value!r})"
        )


# -- pool ----------------------------------------------------------------------------------


class SubAgentPoolStats(BaseModel):
    """Counters of a pool: limits, active agents, free permits and finished agents by status."""

    model_config = ConfigDict(frozen=True)

    max_concurrent: int
    max_depth: int
    active: int
    available: int
    total_completed: int
    succeeded: int
    failed: int
    cancelled: int
    timed_out: int


def _resolve_waiter(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _in_loop_of(fut: asyncio.Future[None]) -> bool:
    try:
        return asyncio.get_running_loop() is fut.get_loop()
    except RuntimeError:
        return False


def _wake(fut: asyncio.Future[None]) -> None:
    if _in_loop_of(fut):
        _resolve_waiter(fut)
        return
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
        fut.get_loop().call_soon_threadsafe(_resolve_waiter, fut)


def _cancel_runner(runner: asyncio.Future[None]) -> None:
    if runner.done():
        return
    if _in_loop_of(runner):
        runner.cancel()
        return
    with contextlib.suppress(RuntimeError):
        runner.get_loop().call_soon_threadsafe(runner.cancel)


def _non_negative(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


class SubAgentPool:
    """Limits how many sub-agents run at once and how deep they nest; tracks and cancels them.

    Permits are taken without waiting: a spawn beyond ``max_concurrent`` fails at once. The
    methods are synchronous and thread-safe; waiting (``wait_for_completion*``) is async.
    """

    def __init__(
        self, max_concurrent: int, max_depth: int, max_history: int = DEFAULT_MAX_HISTORY
    ) -> None:
        self.max_concurrent = _non_negative("max_concurrent", max_concurrent)
        self.max_depth = _non_negative("max_depth", max_depth)
        self.max_history = _non_negative("max_history", max_history)
        self._lock = threading.Lock()
        self._available = self.max_concurrent
        self._active: dict[SubAgentId, SubAgentHandle] = {}
        self._history: deque[SubAgentHandle] = deque(maxlen=self.max_history)
        self._waiters: list[asyncio.Future[None]] = []

    @classmethod
    def with_max_history(
        cls, max_concurrent: int, max_depth: int, max_history: int
    ) -> SubAgentPool:
        """A pool keeping at most ``max_history`` finished handles."""
        return cls(max_concurrent, max_depth, max_history)

    # -- spawning and finishing ---------------------------------------------------------------

    def spawn(self, task: str, parent_id: SubAgentId | str | None = None) -> SubAgentHandle:
        """Register a new sub-agent and take a permit, or raise ``SubAgentError``.

        Depth is 0 without a parent and the parent's depth + 1 with an active parent. A parent
        that is not active (finished, stopped or unknown) is an error. The depth check runs
        before the permit check, and both happen atomically with the insert.
        """
        with self._lock:
            parent_key = SubAgentId(parent_id) if parent_id is not None else None
            if parent_key is None:
                depth = 0
            else:
                parent = self._active.get(parent_key)
                if parent is None:
                    raise SubAgentError(f"parent sub-agent {parent_key} is not active")
                depth = parent.depth + 1
            if depth >= self.max_depth:
                raise SubAgentError(f"maximum subagent depth ({self.max_depth}) exceeded")
            if self._available <= 0:
                raise SubAgentError("maximum concurrent subagents reached")
            handle = SubAgentHandle(task, depth, parent_key)
            self._available -= 1
            handle._permit = True
            self._active[handle.id] = handle
            return handle

    def attach(self, agent_id: SubAgentId | str, runner: asyncio.Future[None]) -> bool:
        """Attach the task running a sub-agent so ``stop`` can cancel it.

        Returns False (and cancels ``runner``) when the sub-agent is no longer active.
        """
        with self._lock:
            handle = self._active.get(SubAgentId(agent_id))
            if handle is not None:
                handle._runner = runner
                return True
        _cancel_runner(runner)
        return False

    def release(self, agent_id: SubAgentId | str) -> None:
        """Move an active sub-agent to history and free its permit; unknown ids are a no-op.

        The status is not changed: set the terminal status first.
        """
        with self._lock:
            handle = self._active.pop(SubAgentId(agent_id), None)
            if handle is None:
                return
            self._retire_locked(handle)
            waiters = self._drained_locked()
        for fut in waiters:
            _wake(fut)

    def stop(self, agent_id: SubAgentId | str) -> SubAgentHandle | None:
        """Cancel an active sub-agent: mark it Cancelled, free its permit and cancel its task.

        Returns the handle, or None if it was not active.
        """
        with self._lock:
            handle = self._stop_locked(SubAgentId(agent_id))
            if handle is None:
                return None
            runners = self._take_runners_locked([handle])
            waiters = self._drained_locked()
        self._finish_cancel(runners, waiters)
        return handle

    def cancel_subtree(self, parent_id: SubAgentId | str) -> int:
        """Cancel every active descendant of ``parent_id`` (not the parent); return how many."""
        root = SubAgentId(parent_id)
        with self._lock:
            found: list[SubAgentId] = []
            queue = deque([root])
            seen = {root}
            while queue:
                current = queue.popleft()
                for handle in self._active.values():
                    if handle.parent_id == current and handle.id not in seen:
                        seen.add(handle.id)
                        found.append(handle.id)
                        queue.append(handle.id)
            stopped = [h for h in (self._stop_locked(i) for i in found) if h is not None]
            runners = self._take_runners_locked(stopped)
            waiters = self._drained_locked()
        self._finish_cancel(runners, waiters)
        return len(stopped)

    def cancel_all(self) -> list[SubAgentHandle]:
        """Cancel every active sub-agent; the pool stays usable for later spawns."""
        with self._lock:
            stopped = [
                h for h in (self._stop_locked(i) for i in list(self._active)) if h is not None
            ]
            runners = self._take_runners_locked(stopped)
            waiters = self._drained_locked()
        self._finish_cancel(runners, waiters)
        return stopped

    # -- waiting ------------------------------------------------------------------------------

    async def wait_for_completion(self) -> None:
        """Return once no sub-agent is active (at once if none is)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._active:
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
        try:
            await fut
        finally:
            with self._lock:
                if fut in self._waiters:
                    self._waiters.remove(fut)

    async def wait_for_completion_timeout(self, seconds: float) -> bool:
        """True if the pool drained within ``seconds``; on expiry, whether it is empty now."""
        try:
            await asyncio.wait_for(self.wait_for_completion(), max(0.0, seconds))
        except TimeoutError:
            return self.active_count() == 0
        return True

    # -- queries ------------------------------------------------------------------------------

    def get(self, agent_id: SubAgentId | str) -> SubAgentHandle | None:
        """An active sub-agent by id (finished ones are only in ``history``)."""
        with self._lock:
            return self._active.get(SubAgentId(agent_id))

    def list_active(self) -> list[SubAgentHandle]:
        """The active sub-agents, oldest spawn first."""
        with self._lock:
            return list(self._active.values())

    def active_count(self) -> int:
        """How many sub-agents are active."""
        with self._lock:
            return len(self._active)

    def available_permits(self) -> int:
        """How many more sub-agents may be spawned now."""
        with self._lock:
            return self._available

    def can_spawn_child(self, parent_id: SubAgentId | str) -> bool:
        """Whether ``spawn(..., parent_id)`` would succeed now (same rules as ``spawn``)."""
        with self._lock:
            parent = self._active.get(SubAgentId(parent_id))
            if parent is None or parent.depth + 1 >= self.max_depth:
                return False
            return self._available > 0

    def get_children(self, parent_id: SubAgentId | str) -> list[SubAgentHandle]:
        """Direct children of ``parent_id``: active ones first, then finished ones."""
        key = SubAgentId(parent_id)
        with self._lock:
            return [h for h in self._all_locked() if h.parent_id == key]

    def get_subtree(self, parent_id: SubAgentId | str) -> list[SubAgentHandle]:
        """Every descendant of ``parent_id`` (active or finished, breadth first, root excluded)."""
        root = SubAgentId(parent_id)
        with self._lock:
            handles = self._all_locked()
        out: list[SubAgentHandle] = []
        seen = {root}
        queue = deque([root])
        while queue:
            current = queue.popleft()
            for handle in handles:
                if handle.parent_id == current and handle.id not in seen:
                    seen.add(handle.id)
                    out.append(handle)
                    queue.append(handle.id)
        return out

    def history(self) -> list[SubAgentHandle]:
        """A copy of the finished handles, oldest first."""
        with self._lock:
            return list(self._history)

    def clear_history(self) -> None:
        """Forget the finished handles."""
        with self._lock:
            self._history.clear()

    def stats(self) -> SubAgentPoolStats:
        """Limits, active count, free permits and finished counts by final status."""
        with self._lock:
            finals = [h.final_status for h in self._history]
            return SubAgentPoolStats(
                max_concurrent=self.max_concurrent,
                max_depth=self.max_depth,
                active=len(self._active),
                available=self._available,
                total_completed=len(finals),
                succeeded=finals.count(SubAgentStatus.COMPLETED),
                failed=finals.count(SubAgentStatus.FAILED),
                cancelled=finals.count(SubAgentStatus.CANCELLED),
                timed_out=finals.count(SubAgentStatus.TIMED_OUT),
            )

    def __repr__(self) -> str:
        return (
            f"SubAgentPool(max_concurrent={self.max_concurrent}, max_depth={self.max_depth}, "
            f"active={self.active_count()}, available={self.available_permits()})"
        )

    # -- internals (call with the lock held) --------------------------------------------------

    def _all_locked(self) -> list[SubAgentHandle]:
        return [*self._active.values(), *self._history]

    def _retire_locked(self, handle: SubAgentHandle) -> None:
        if handle._permit:
            handle._permit = False
            self._available += 1
        handle._runner = None
        if self.max_history:
            self._history.append(handle)

    def _stop_locked(self, agent_id: SubAgentId) -> SubAgentHandle | None:
        handle = self._active.pop(agent_id, None)
        if handle is None:
            return None
        handle.cancel()
        return handle

    def _take_runners_locked(self, handles: list[SubAgentHandle]) -> list[asyncio.Future[None]]:
        runners = [h._runner for h in handles if h._runner is not None]
        for handle in handles:
            self._retire_locked(handle)
        return runners

    def _drained_locked(self) -> list[asyncio.Future[None]]:
        if self._active or not self._waiters:
            return []
        waiters, self._waiters = self._waiters, []
        return waiters

    @staticmethod
    def _finish_cancel(
        runners: list[asyncio.Future[None]], waiters: list[asyncio.Future[None]]
    ) -> None:
        for runner in runners:
            _cancel_runner(runner)
        for fut in waiters:
            _wake(fut)


# -- executor helpers ----------------------------------------------------------------------


def extract_last_assistant_text(messages: list[Message]) -> str:
    """The text of the last assistant message, or the fallback if that message is not text."""
    for message in reversed(messages):
        if message.role == MessageRole.ASSISTANT:
            text = message.text()
            return text if text is not None else NO_TEXT_OUTPUT
    return NO_TEXT_OUTPUT


def safe_description(text: str) -> str:
    """``text`` if at most 200 UTF-8 bytes, else its longest whole-character prefix + ``...``."""
    if len(text.encode("utf-8", "surrogatepass")) <= SAFE_DESCRIPTION_MAX_BYTES:
        return text
    size = 0
    end = 0
    for index, char in enumerate(text):
        size += len(char.encode("utf-8", "surrogatepass"))
        if size > SAFE_DESCRIPTION_MAX_BYTES:
            end = index
            break
    return text[:end] + "..."


def build_subagent_prompt(description: str, callsign: str | None = None) -> str:
    """The sub-agent's system prompt: identity, the (shortened) task and the instructions."""
    identity = f"You are {callsign} (sub-agent)." if callsign else "You are a focused sub-agent."
    return (
        identity
        + " Your task:\n\n"
        + safe_description(description)
        + "\n\n"
        + "Complete this task and provide a clear, concise result. Do not ask for clarification "
        + "— work with what you have. When done, provide your final answer as a clear summary."
    )


# -- executor ------------------------------------------------------------------------------


class SubAgentRequest(BaseModel):
    """What to delegate: a short description, the prompt, and an optional timeout in seconds."""

    model_config = ConfigDict(frozen=True)

    description: str
    prompt: str
    timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class SubAgentResult(BaseModel):
    """How a sub-agent ended; on failure ``output`` holds its partial (last) text."""

    model_config = ConfigDict(frozen=True)

    success: bool
    output: str = ""
    duration_ms: int = 0
    tool_calls: int = 0
    error: str | None = None
    session_id: str | None = None


RunChild = Callable[[AgentSession, str, SubAgentId], Awaitable[None]]
"""Runs one sub-agent turn: (child session, prompt, the child's own sub-agent id)."""


def _seconds_text(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


def _positive_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


class SubAgentExecutor:
    """Spawns sub-agents of one parent session through a pool (one executor per turn).

    ``run_child`` runs the child's turn (the runtime passes its ``run_subagent_turn``). The
    child session shares the parent's allowance, capability, budget and workspace-budget
    trackers; with a ``store`` its transcript is saved, linked to the parent, however it ends.
    """

    def __init__(
        self,
        pool: SubAgentPool,
        parent_session: AgentSession,
        run_child: RunChild,
        *,
        parent_subagent_id: SubAgentId | None = None,
        default_timeout: float = 300.0,
        store: SessionStore | None = None,
        callsign: str | None = None,
        cancel_grace: float = 5.0,
    ) -> None:
        self.pool = pool
        self.parent_session = parent_session
        self.run_child = run_child
        self.parent_subagent_id = parent_subagent_id
        self.default_timeout = _positive_seconds("default_timeout", default_timeout)
        self.store = store
        self.callsign = callsign or None
        self.cancel_grace = _positive_seconds("cancel_grace", cancel_grace)

    async def spawn(self, request: SubAgentRequest) -> SubAgentResult:
        """Run one sub-agent to its end and report how it went (failures are results).

        Limits give ``success=False`` with ``"Sub-agent error: ..."``. Timeout, cancellation
        (by the pool) and exceptions give ``success=False`` with the partial output. If the
        calling task itself is cancelled, the child is cancelled, cleaned up, and
        ``CancelledError`` propagates. The permit is always released.
        """
        started = time.monotonic()
        timeout = request.timeout if request.timeout is not None else self.default_timeout
        try:
            handle = self.pool.spawn(request.description, self.parent_subagent_id)
        except SubAgentError as exc:
            return SubAgentResult(
                success=False,
                duration_ms=_elapsed_ms(started),
                error=f"Sub-agent error: {exc}",
            )
        child: AgentSession | None = None
        try:
            handle.mark_running()
            child = self.parent_session.child(
                build_subagent_prompt(request.description, self.callsign)
            )
            child.plugin_context = self.parent_session.plugin_context
            # The task copies the current context: the child's trace spans nest under the
            # spawning tool call's span (see astrid.tracing).
            runner = asyncio.ensure_future(self._run(child, request.prompt, handle.id))
            self.pool.attach(handle.id, runner)
            try:
                done, _ = await asyncio.wait({runner}, timeout=timeout)
            except asyncio.CancelledError:
                handle.cancel()
                await self._stop_runner(runner)
                raise
            if not done:
                handle.timeout()
                await self._stop_runner(runner)
            elif runner.cancelled():
                handle.cancel()
            elif (failure := runner.exception()) is not None:
                handle.fail(str(failure) or type(failure).__name__)
            else:
                handle.complete(extract_last_assistant_text(child.messages))
            return self._result(handle, child, started, timeout)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                handle.cancel()
            else:
                handle.fail(str(exc) or type(exc).__name__)
            raise
        finally:
            self.pool.release(handle.id)
            if child is not None:
                await self._finish_child(child)

    async def _run(self, child: AgentSession, prompt: str, agent_id: SubAgentId) -> None:
        await self.run_child(child, prompt, agent_id)

    async def _stop_runner(self, runner: asyncio.Future[None]) -> None:
        runner.cancel()
        done, _ = await asyncio.wait({runner}, timeout=self.cancel_grace)
        if done:
            if not runner.cancelled():
                runner.exception()  # retrieved: the handle's status already says how it ended
            return
        logger.warning(
            "sub-agent task ignored cancellation for %ss; its permit is released anyway",
            _seconds_text(self.cancel_grace),
        )
        runner.add_done_callback(_discard_outcome)

    def _result(
        self, handle: SubAgentHandle, child: AgentSession, started: float, timeout: float
    ) -> SubAgentResult:
        status = handle.status
        output = extract_last_assistant_text(child.messages)
        error: str | None
        if status == SubAgentStatus.COMPLETED:
            output = handle.result if handle.result is not None else output
            error = None
        elif status == SubAgentStatus.TIMED_OUT:
            error = f"Sub-agent timed out after {_seconds_text(timeout)} seconds"
        elif status == SubAgentStatus.CANCELLED:
            error = "Sub-agent cancelled"
        else:
            error = handle.error or "failed"
        return SubAgentResult(
            success=status == SubAgentStatus.COMPLETED,
            output=output,
            duration_ms=_elapsed_ms(started),
            tool_calls=child.metadata.tool_call_count,
            error=error,
            session_id=child.id.bare,
        )

    async def _finish_child(self, child: AgentSession) -> None:
        """Save the child off the event loop (``store.asave``), then end its session.

        If the save fails, the child's unsaved spend-ledger rows move to the parent's change
        set: the parent's saved budget total includes the child's spend (one shared tracker),
        so its rows are written with the parent's save instead of being lost.
        """
        if self.store is not None:
            try:
                await self.store.asave(child)
            except Exception:
                logger.warning(
                    "could not save sub-agent session %s (parent %s)",
                    child.id.bare,
                    self.parent_session.id.bare,
                    exc_info=True,
                )
                self.parent_session.changes.ledger.extend(child.changes.ledger)
                child.changes.ledger = []
        try:
            child.end_session()
        except Exception:
            logger.warning("could not end sub-agent session %s", child.id.bare, exc_info=True)


def _elapsed_ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _discard_outcome(runner: asyncio.Future[None]) -> None:
    if not runner.cancelled():
        runner.exception()
