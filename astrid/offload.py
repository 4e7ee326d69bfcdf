"""Run blocking storage calls off the event loop (the async store API's one mechanism).

Backends are synchronous and thread-safe (the conformance suite drives them from threads), so
their calls run in the loop's default executor. ``read_in_thread`` is for calls without effects:
cancelling the awaiting task abandons the result. ``write_in_thread`` is for writes: once started
the write runs to its end, and the awaiting task sees its outcome before a cancellation is
delivered, so a caller never records half of a write (see ``docs/runtime.md``).

A long pure-Python loop in a worker thread (encoding 20 000 messages) holds the GIL, and the
loop thread waiting for it gets it only after ``sys.getswitchinterval()`` (5 ms): ``yielding``
makes such a loop step aside about every millisecond when it runs in one of these threads.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

_T = TypeVar("_T")

__all__ = ["read_in_thread", "write_in_thread", "yielding"]

_OFFLOADED: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "astrid_offloaded", default=False
)
"""True inside a call ``read_in_thread`` / ``write_in_thread`` runs in a worker thread."""

YIELD_EVERY_S = 0.001
"""How long ``yielding`` lets a worker thread run Python before it steps aside."""
YIELD_PAUSE_S = 0.0001
"""How long it sleeps then (without the GIL): long enough for a waiting thread to take it."""
_CHECK_EVERY = 32


def _offloaded(fn: Callable[..., _T], *args: Any) -> _T:
    _OFFLOADED.set(True)  # in the call's own copy of the context
    return fn(*args)


def _start(fn: Callable[..., _T], args: tuple[Any, ...]) -> asyncio.Future[_T]:
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, _offloaded, fn, *args)
    return loop.run_in_executor(None, call)


def yielding(items: Iterable[_T]) -> Iterator[_T]:
    """The items of ``items``; in a worker thread of this module, a pause of ``YIELD_PAUSE_S``
    (the GIL released) after every ``YIELD_EVERY_S`` spent consuming them, so the event loop
    never waits the 5 ms switch interval for the GIL. Elsewhere (a script, the CLI, a caller's
    own thread) the items, unchanged."""
    if not _OFFLOADED.get():
        yield from items
        return
    clock, sleep = time.perf_counter, time.sleep
    due = clock() + YIELD_EVERY_S
    for index, item in enumerate(items, start=1):
        yield item
        if index % _CHECK_EVERY == 0 and clock() >= due:
            sleep(YIELD_PAUSE_S)
            due = clock() + YIELD_EVERY_S


async def read_in_thread(fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)`` in a worker thread; a cancellation is delivered at once."""
    return await _start(fn, args)


async def write_in_thread(
    fn: Callable[..., _T], *args: Any, done: Callable[[_T], None] | None = None
) -> _T:
    """``fn(*args)`` in a worker thread, then ``done(result)`` on the loop thread.

    A cancellation of the awaiting task while ``fn`` runs waits for ``fn`` to finish, runs
    ``done`` if it succeeded, and is then raised: the write happened and is recorded, or it
    raised and nothing is recorded.
    """
    future = _start(fn, args)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.cancelled():  # the executor dropped it before it ran: nothing happened
                raise
            cancelled = True
            continue
        except BaseException:
            if cancelled:
                raise asyncio.CancelledError() from future.exception()
            raise
        break
    if done is not None:
        done(result)
    if cancelled:
        raise asyncio.CancelledError()
    return result
