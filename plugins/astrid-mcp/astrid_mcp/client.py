"""One MCP server connection: a long-lived task owning the SDK contexts, talked to by a queue.

The SDK's transports and ``ClientSession`` are anyio contexts whose task groups must be entered
and exited in the same task, so each connection runs in its own task (``_serve``) that enters
them, initializes, lists the tools and then serves call requests from a queue until it is told
to stop. A call waits on a future the serving task completes; each call runs in the serving
task's task group under its own cancel scope, so a timeout or a cancelled caller cancels only
that request (the SDK tells the server with ``notifications/cancelled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import anyio
from astrid.offload import read_in_thread

if TYPE_CHECKING:
    import mcp.types as mcp_types

    from .options import McpServerOptions

logger = logging.getLogger(__name__)

__all__ = ["CallTimedOut", "ServerConnection", "ServerGone"]

STOP_TIMEOUT_S = 10.0
"""How long ``stop`` waits for the serving task to wind the server down before cancelling it
(the SDK's stdio shutdown is itself bounded: stdin closed, 2 s grace, SIGTERM, SIGKILL)."""

STDERR_TAIL_BYTES = 2000
"""How much of a crashed stdio server's stderr is quoted in the error."""


class ServerGone(Exception):
    """The server's connection ended (the process exited, the HTTP server went away)."""


class CallTimedOut(Exception):
    """A call did not answer within ``timeout_s`` and was cancelled."""


@dataclass(eq=False)
class _Call:
    tool: str
    arguments: dict[str, Any]
    timeout_s: float
    future: asyncio.Future[mcp_types.CallToolResult]
    scope: anyio.CancelScope | None = None
    abandoned: bool = False


@dataclass
class _Stop:
    done: asyncio.Event = field(default_factory=asyncio.Event)


def _is_closed(exc: BaseException) -> bool:
    """True when ``exc`` ended the connection (the SDK's "connection closed", an HTTP
    transport error, a broken stream or pipe), so the next call restarts the server; False for
    the server's own error answers and result problems, after which it stays up."""
    import httpx2
    from mcp.shared.exceptions import MCPError
    from mcp.types import CONNECTION_CLOSED

    if isinstance(exc, MCPError):
        return exc.code == CONNECTION_CLOSED
    return isinstance(
        exc,
        httpx2.TransportError
        | OSError
        | anyio.ClosedResourceError
        | anyio.BrokenResourceError
        | anyio.EndOfStream,
    )


class ServerConnection:
    """A connection to one configured MCP server: start, list, call, stop.

    ``start`` spawns the serving task and waits (at most ``timeout_s``) for the tool listing;
    ``call`` runs one ``tools/call``; ``stop`` shuts the server down (stdio: the process is
    stopped by the SDK, its whole process group killed if it lingers). ``alive`` is False once
    the connection ended; a new ``ServerConnection`` is a restart.
    """

    def __init__(self, name: str, options: McpServerOptions, headers: Mapping[str, str]) -> None:
        self.name = name
        self.options = options
        self._headers = dict(headers)
        self._queue: asyncio.Queue[_Call | _Stop] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._errlog: TextIO | None = None
        self.alive = False
        self.server_info: mcp_types.Implementation | None = None
        self.instructions: str | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> list[mcp_types.Tool]:
        """Connect, initialize and list the server's tools (all pages), within
        ``startup_timeout_s``."""
        if self.options.command is not None:
            # The server's stderr goes to a private temp file: quoted when it crashes.
            self._errlog = await read_in_thread(_stderr_file)
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[list[mcp_types.Tool]] = loop.create_future()
        self._task = asyncio.create_task(self._serve(ready), name=f"astrid-mcp server {self.name}")
        try:
            async with asyncio.timeout(self.options.startup_timeout_s):
                tools = await asyncio.shield(ready)
        except TimeoutError:
            await self.stop()
            raise CallTimedOut(
                f"did not start and list its tools within {self.options.startup_timeout_s:g} s "
                "(startup_timeout_s)"
            ) from None
        except BaseException:
            await self.stop()
            raise
        self.alive = True
        return tools

    async def stop(self) -> None:
        """Stop the server and the serving task (bounded by ``STOP_TIMEOUT_S``)."""
        task, self._task = self._task, None
        self.alive = False
        if task is not None and not task.done():
            stop = _Stop()
            self._queue.put_nowait(stop)
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await asyncio.shield(task)
            except TimeoutError:
                logger.warning("MCP server %s did not stop in %s s; cancelling", self.name,
                               STOP_TIMEOUT_S)
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            except BaseException:
                # The caller is cancelled: still make sure the server goes away.
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise
        elif task is not None:
            with contextlib.suppress(BaseException):
                task.result()
        self._fail_pending(ServerGone("the connection was closed"))
        errlog, self._errlog = self._errlog, None
        if errlog is not None:
            await read_in_thread(errlog.close)

    async def stderr_tail(self) -> str:
        """The end of a stdio server's stderr (empty for HTTP), read off the event loop."""
        errlog = self._errlog
        if errlog is None:
            return ""

        def tail() -> str:
            try:
                errlog.flush()
                size = errlog.seek(0, os.SEEK_END)
                errlog.seek(max(0, size - STDERR_TAIL_BYTES))
                return errlog.read().strip()
            except (OSError, ValueError):
                return ""

        return await read_in_thread(tail)

    # -- calls ------------------------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """One ``tools/call``; ``CallTimedOut`` after ``timeout_s``, ``ServerGone`` if the
        connection ended. A cancelled caller cancels the request."""
        if not self.alive or self._task is None or self._task.done():
            self.alive = False
            raise ServerGone("the connection had already ended")
        future: asyncio.Future[mcp_types.CallToolResult] = (
            asyncio.get_running_loop().create_future()
        )
        request = _Call(tool, arguments, self.options.timeout_s, future)
        self._queue.put_nowait(request)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            request.abandoned = True
            if request.scope is not None:
                request.scope.cancel()
            raise

    def _fail_pending(self, error: Exception) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Call) and not item.future.done():
                item.future.set_exception(error)
            elif isinstance(item, _Stop):
                item.done.set()

    # -- the serving task -------------------------------------------------------------------

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        options = self.options
        if options.command is not None:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            params = StdioServerParameters(
                command=options.command,
                args=list(options.args),
                env=dict(options.resolved_env()),
                cwd=options.cwd,
            )
            assert self._errlog is not None
            return stdio_client(params, errlog=self._errlog)
        from mcp.client.streamable_http import streamable_http_client
        from mcp.shared._httpx_utils import create_mcp_http_client

        url = options.url
        assert url is not None

        @contextlib.asynccontextmanager
        async def http() -> Any:
            async with create_mcp_http_client(headers=self._headers or None) as client, \
                    streamable_http_client(url, http_client=client) as streams:
                yield streams

        return http()

    async def _serve(self, ready: asyncio.Future[list[mcp_types.Tool]]) -> None:
        from mcp import ClientSession
        from mcp.types import Implementation, PaginatedRequestParams

        pending: set[_Call] = set()
        ended: BaseException | None = None
        try:
            async with self._transport() as streams, ClientSession(
                streams[0], streams[1],
                client_info=Implementation(name="astrid-mcp", version="0.1"),
            ) as session:
                init = await session.initialize()
                self.server_info = init.server_info
                self.instructions = init.instructions
                tools: list[mcp_types.Tool] = []
                cursor: str | None = None
                while True:
                    params = None if cursor is None else PaginatedRequestParams(cursor=cursor)
                    page = await session.list_tools(params=params)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        break
                if not ready.done():
                    ready.set_result(tools)
                async with anyio.create_task_group() as group:
                    while True:
                        item = await self._queue.get()
                        if isinstance(item, _Stop):
                            group.cancel_scope.cancel()
                            break
                        if item.abandoned or item.future.done():
                            continue
                        pending.add(item)
                        group.start_soon(self._run_call, session, item, pending)
        except BaseException as exc:  # the connection ended: every waiter learns why
            ended = exc
            if not isinstance(exc, Exception):
                raise
            logger.info("MCP server %s: connection ended: %r", self.name, exc)
        finally:
            self.alive = False
            error = ServerGone(_ended_text(ended))
            if not ready.done():
                if ended is not None and isinstance(ended, Exception):
                    ready.set_exception(ServerGone(_ended_text(ended)))
                else:
                    ready.set_exception(error)
            for call in list(pending):
                if not call.future.done():
                    call.future.set_exception(error)
            self._fail_pending(error)

    async def _run_call(
        self, session: Any, call: _Call, pending: set[_Call]
    ) -> None:
        try:
            with anyio.CancelScope() as scope:
                call.scope = scope
                if call.abandoned:
                    scope.cancel()
                with anyio.move_on_after(call.timeout_s) as deadline:
                    try:
                        result = await session.call_tool(call.tool, call.arguments)
                    except Exception as exc:
                        if not call.future.done():
                            call.future.set_exception(
                                ServerGone(_ended_text(exc)) if _is_closed(exc) else exc
                            )
                        if _is_closed(exc):
                            self.alive = False
                        return
                    if not call.future.done():
                        call.future.set_result(result)
                if deadline.cancelled_caught and not call.future.done():
                    call.future.set_exception(
                        CallTimedOut(
                            f"no answer within {call.timeout_s:g} s (timeout_s); the call was "
                            "cancelled"
                        )
                    )
        finally:
            pending.discard(call)
            if not call.future.done():  # cancelled by the transport, not by its caller
                self.alive = False
                call.future.set_exception(ServerGone("the connection was closed"))


def _stderr_file() -> TextIO:
    """A private (0600, already unlinked) temporary file for a server's stderr."""
    return tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")


def _ended_text(exc: BaseException | None) -> str:
    if exc is None:
        return "the connection was closed"
    if isinstance(exc, BaseExceptionGroup):
        leaves = [e for e in _leaves(exc)]
        exc = leaves[0] if leaves else exc
    text = str(exc) or type(exc).__name__
    return f"the connection ended ({type(exc).__name__}: {text})"


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
