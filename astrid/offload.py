"""Run blocking storage calls off the event loop (the async store API's one mechanism).

Backends are synchronous and thread-safe (the conformance suite drives them from threads), so
their calls run in the loop's default executor. ``read_in_thread`` is for calls without effects:
cancelling the awaiting task abandons the result. ``write_in_thread`` is for writes: once started
the write runs to its end, and the awaiting task sees its outcome before a cancellation is
delivered, so a caller never records half of a write (see ``docs/runtime.md``).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Any, TypeVar

_T = TypeVar("_T")

__all__ = ["read_in_thread", "write_in_thread"]


def _start(fn: Callable[..., _T], args: tuple[Any, ...]) -> asyncio.Future[_T]:
    loop = asyncio.get_running_loop()
    call = functools.partial(contextvars.copy_context().run, fn, *args)
    return loop.run_in_executor(None, call)


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
