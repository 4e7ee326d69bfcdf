"""Loopback fake LLM servers speaking the OpenAI Chat Completions and Anthropic Messages formats.

Real sockets, real HTTP/1.1 with chunked server-sent events, standard library only: a provider
under test talks to them through its own SDK and transport exactly as it would to the vendor.
Each request takes the next scripted reply (``server.script(...)``), written in one neutral
vocabulary (``Reply`` made of ``Text`` / ``Thinking`` / ``ToolArgs`` / ``ErrorEvent`` chunks, or
``ErrorReply``) that each server renders in its own wire format; every request received is kept
in ``server.requests``. Every read, write and pause is bounded, and ``stop()`` returns within
its timeout. See ``docs/plugin-authors.md`` ("Testing a provider").
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import select
import socket
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Literal, Self

__all__ = [
    "ErrorEvent",
    "ErrorReply",
    "Exchange",
    "FakeAnthropicServer",
    "FakeLLMServer",
    "FakeOpenAIServer",
    "ReceivedRequest",
    "Reply",
    "ScriptItem",
    "Text",
    "Thinking",
    "Tokens",
    "ToolArgs",
    "ToolCallSpec",
    "auth_failed",
    "context_too_long",
    "error_reply",
    "fake_server",
    "rate_limited",
    "server_error",
    "split",
    "text_reply",
    "tool_call_reply",
]

MAX_REQUEST_BYTES = 64 * 1024 * 1024
"""A request body larger than this gets 413 (the servers never buffer without bound)."""

TOOL_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""Tool names both APIs accept (``fs:read_file`` is refused, as the real APIs refuse it)."""

# -- the neutral script vocabulary ---------------------------------------------------------------


@dataclass(frozen=True)
class Tokens:
    """Usage in astrid's terms: ``input`` counts every input token, cached ones included.

    Each server renders it in its own terms (Anthropic's ``input_tokens`` excludes the cache
    reads and writes, OpenAI's ``prompt_tokens`` includes the cached tokens and has no cache
    writes); a provider that maps it back correctly yields ``astrid.llm.Usage`` with these
    numbers (``cache_write`` 0 for OpenAI).
    """

    input: int
    output: int
    cache_read: int = 0
    cache_write: int = 0
    reasoning: int = 0


@dataclass(frozen=True)
class Text:
    """A piece of the assistant's text."""

    text: str


@dataclass(frozen=True)
class Thinking:
    """A piece of reasoning: Anthropic ``thinking_delta`` (plus ``signature_delta`` when the
    block ends, if ``signature``), OpenAI-compatible ``delta.reasoning_content``."""

    text: str
    signature: str = ""


@dataclass(frozen=True)
class ToolArgs:
    """A piece of the JSON arguments of tool call number ``call`` (0-based, in reply order).

    The first piece of a call opens it (OpenAI: the delta carrying ``id`` and
    ``function.name``; Anthropic: ``content_block_start`` of a ``tool_use`` block). ``name``
    None means: the request's tool of the same position, as the provider named it on the wire.
    """

    call: int
    id: str
    name: str | None
    args: str


@dataclass(frozen=True)
class ErrorEvent:
    """An error reported inside a stream that already started (Anthropic ``event: error``,
    OpenAI ``data: {"error": ...}``); the stream ends there."""

    message: str = "Overloaded"
    kind: str = "overloaded_error"


Chunk = Text | Thinking | ToolArgs | ErrorEvent


@dataclass(frozen=True)
class Reply:
    """A successful response: its chunks in order, why it stopped, its usage.

    ``stop`` is ``end_turn``, ``tool_use``, ``max_tokens`` or ``content_filter`` (mapped to
    each format's word) or any other string, sent verbatim. ``usage`` None sends no usage at all.
    ``delay_s`` is waited before each streamed event (the wait ends at once if the client goes
    away); ``disconnect_after`` closes the socket after that many events, without ending the
    HTTP body (a non-streamed reply is cut in the middle of its body). The reply is streamed
    when the request asks for ``"stream": true``.
    """

    chunks: tuple[Chunk, ...] = ()
    stop: str = "end_turn"
    usage: Tokens | None = Tokens(10, 5)
    model: str | None = None
    delay_s: float = 0.0
    disconnect_after: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ErrorReply:
    """An HTTP error in the vendor's error shape; ``kind`` defaults to the vendor's type for
    the status. ``x-should-retry`` is never sent unless given in ``headers``."""

    status: int
    message: str = ""
    kind: str | None = None
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ReceivedRequest:
    """A request as the server received it (header names in lower case; ``received_at`` on
    the ``time.monotonic()`` clock, when its body had been read)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    raw_body: bytes
    received_at: float = 0.0

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (an AssertionError if it is not one)."""
        assert isinstance(self.body, dict), f"{self.method} {self.path}: body is not a JSON object"
        return self.body


ScriptItem = Reply | ErrorReply | Callable[[ReceivedRequest], "Reply | ErrorReply"]
"""What ``script`` takes: a reply, or a function of the request that returns one."""


@dataclass
class Exchange:
    """One request and what became of its response.

    ``outcome``: ``pending`` while it runs, then ``complete``, ``client_closed`` (the client
    went away before the end), ``disconnected`` (a scripted disconnect), ``expired`` (the
    stream outlasted the server's ``max_response_s``), ``stopped`` (the server was stopped)
    or ``error`` (the script raised ``error``; the client got a 500 saying so, or a dropped
    connection if the response had begun). ``server_s``: the server's own wall time on it,
    from the request line read to the last byte written (set when ``done``); ``server_cpu_s``
    the CPU time of the handler thread over the same span: what a client in the same process
    (sharing the GIL) could not run while the server worked, for a benchmark to subtract.
    """

    request: ReceivedRequest
    outcome: str = "pending"
    events_sent: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: Exception | None = None
    responded: bool = False
    server_s: float = 0.0
    server_cpu_s: float = 0.0


# -- builders ------------------------------------------------------------------------------------


def split(text: str, pieces: int) -> list[str]:
    """``text`` cut into ``pieces`` parts of near-equal length (none empty unless text is)."""
    pieces = max(1, min(pieces, len(text))) if text else 1
    size, extra = divmod(len(text), pieces)
    parts: list[str] = []
    start = 0
    for i in range(pieces):
        end = start + size + (1 if i < extra else 0)
        parts.append(text[start:end])
        start = end
    return parts


def text_reply(
    text: str,
    *,
    pieces: int = 1,
    usage: Tokens | None = Tokens(10, 5),
    stop: str = "end_turn",
    delay_s: float = 0.0,
    disconnect_after: int | None = None,
) -> Reply:
    """A text answer streamed in ``pieces`` deltas."""
    return Reply(
        chunks=tuple(Text(part) for part in split(text, pieces)),
        stop=stop,
        usage=usage,
        delay_s=delay_s,
        disconnect_after=disconnect_after,
    )


@dataclass(frozen=True)
class ToolCallSpec:
    """A whole tool call for ``tool_call_reply``: arguments as JSON text (may be truncated)."""

    id: str
    arguments: str
    name: str | None = None


def tool_call_reply(
    *calls: ToolCallSpec,
    text: str = "",
    pieces: int = 3,
    interleave: bool = True,
    usage: Tokens | None = Tokens(10, 5),
    stop: str = "tool_use",
    delay_s: float = 0.0,
) -> Reply:
    """Optional text, then tool calls with arguments in ``pieces`` deltas each, interleaved
    round-robin across calls when ``interleave`` (call 0 piece 0, call 1 piece 0, ...)."""
    chunks: list[Chunk] = [Text(text)] if text else []
    split_args = [split(call.arguments, pieces) for call in calls]
    if interleave:
        for round_ in itertools.zip_longest(*split_args):
            for n, piece in enumerate(round_):
                if piece is not None:
                    chunks.append(ToolArgs(n, calls[n].id, calls[n].name, piece))
    else:
        for n, parts in enumerate(split_args):
            chunks.extend(ToolArgs(n, calls[n].id, calls[n].name, piece) for piece in parts)
    return Reply(chunks=tuple(chunks), stop=stop, usage=usage, delay_s=delay_s)


def error_reply(
    status: int, message: str = "", *, headers: Mapping[str, str] | None = None
) -> ErrorReply:
    """An HTTP error with the vendor's default error type for ``status``."""
    return ErrorReply(status, message or f"fake error {status}", headers=dict(headers or {}))


def rate_limited(
    retry_after_s: float | None = 0.01, message: str = "Rate limit reached"
) -> ErrorReply:
    """429 with ``retry-after`` (seconds, possibly fractional; both SDKs accept that)."""
    headers = {} if retry_after_s is None else {"retry-after": f"{retry_after_s:g}"}
    return ErrorReply(429, message, headers=headers)


def server_error(status: int = 500, message: str = "The server had an error") -> ErrorReply:
    """A 5xx error, which both SDKs retry."""
    return ErrorReply(status, message)


def auth_failed(message: str = "Invalid API key") -> ErrorReply:
    """401 as the vendor sends it for a wrong key."""
    return ErrorReply(401, message)


def context_too_long(message: str = "") -> ErrorReply:
    """400 saying the prompt exceeds the context window, in the vendor's words."""
    return ErrorReply(400, message, kind="context_too_long")


# -- the server ----------------------------------------------------------------------------------


class _ClientClosed(Exception):
    """The client closed the connection while a response was being sent."""


class _Stopping(Exception):
    """The server is stopping: the response is abandoned."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    started = 0.0  # perf_counter() when the current request's line had been read
    started_cpu = 0.0  # thread_time() then

    def parse_request(self) -> bool:
        self.started, self.started_cpu = time.perf_counter(), time.thread_time()
        return super().parse_request()

    def setup(self) -> None:
        super().setup()
        # Each SSE event is its own small write: without TCP_NODELAY, Nagle's algorithm and the
        # client's delayed ACK hold events back (~40 ms a request on loopback).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads ``server.requests`` instead of a log."""

    def do_GET(self) -> None:
        self.server.fake._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.fake._handle(self, "POST")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeLLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up between requests is no error; anything else is reported."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class FakeLLMServer(ABC):
    """The common machinery of the fake servers: lifecycle, script queue, request log."""

    wire: ClassVar[str] = ""
    key_header: ClassVar[str] = ""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: Sequence[str] = ("fake-model",),
        validate: bool = True,
        io_timeout_s: float = 10.0,
        max_response_s: float = 120.0,
        write_size: int = 16 * 1024,
    ) -> None:
        """``api_key``: if set, a request without it gets 401 (unscripted). ``validate``: a
        request the real API would refuse gets its 400 (unscripted). ``io_timeout_s`` bounds
        every socket read and write, ``max_response_s`` a whole streamed response (past it the
        connection is dropped: outcome ``expired``)."""
        self.api_key = api_key
        self.models = tuple(models)
        self.validate = validate
        self.io_timeout_s = io_timeout_s
        self.max_response_s = max_response_s
        self.write_size = write_size
        self._lock = threading.Lock()
        self._script: deque[ScriptItem] = deque()
        self._exchanges: list[Exchange] = []
        self._connections: set[socket.socket] = set()
        self._active = 0
        self._idle = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Self:
        """Listen on 127.0.0.1 (a free port) and serve in a daemon thread."""
        if self._httpd is not None:
            return self
        handler = type("Handler", (_Handler,), {"timeout": self.io_timeout_s})
        httpd = _HTTPServer(("127.0.0.1", 0), handler)
        httpd.fake = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving, drop open connections and wait (at most ``timeout_s``) for handlers."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.wait_idle(timeout_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port listened on (the server must be started)."""
        if self._httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(self._httpd.server_address[1])

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:<port>``, without any path."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """What the vendor's SDK takes as ``base_url``."""
        return self.origin

    # -- scripting and inspection ----------------------------------------------------------------

    def script(self, *replies: ScriptItem) -> Self:
        """Queue replies: each generating request takes the next one, in order."""
        with self._lock:
            self._script.extend(replies)
        return self

    @property
    def pending(self) -> int:
        """Scripted replies not yet taken."""
        with self._lock:
            return len(self._script)

    @property
    def exchanges(self) -> list[Exchange]:
        """Every request received, with its outcome, oldest first."""
        with self._lock:
            return list(self._exchanges)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every request received, oldest first."""
        return [exchange.request for exchange in self.exchanges]

    def requests_to(self, path: str) -> list[ReceivedRequest]:
        """The requests received for ``path`` (e.g. ``/v1/messages``)."""
        return [r for r in self.requests if r.path == path]

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Wait until no response is being sent; False if one still is after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._active:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    # -- what each format defines ------------------------------------------------------------------

    @abstractmethod
    def _routes(self) -> dict[tuple[str, str], str]:
        ...

    @abstractmethod
    def _key_ok(self, headers: Mapping[str, str]) -> bool:
        ...

    @abstractmethod
    def _problem(self, path: str, body: Any) -> ErrorReply | None:
        """The 400 the real API gives this request, or None if it accepts it."""
        ...

    @abstractmethod
    def _error_body(self, error: ErrorReply) -> dict[str, Any]:
        ...

    @abstractmethod
    def _request_id_header(self) -> str:
        ...

    @abstractmethod
    def _render_json(self, reply: Reply, request: ReceivedRequest) -> dict[str, Any]:
        ...

    @abstractmethod
    def _render_events(self, reply: Reply, request: ReceivedRequest) -> Iterator[bytes]:
        ...

    @abstractmethod
    def _models_body(self) -> dict[str, Any]:
        ...

    @abstractmethod
    def _count_tokens(self, request: ReceivedRequest) -> dict[str, Any]:
        ...

    # -- request handling --------------------------------------------------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _handle(self, handler: _Handler, method: str) -> None:
        path = handler.path.split("?", 1)[0]
        headers = {name.lower(): value for name, value in handler.headers.items()}
        raw = self._read_body(handler, headers)
        if raw is None:
            return
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        request = ReceivedRequest(method, path, headers, body, raw, time.monotonic())
        exchange = Exchange(request)
        with self._lock:
            self._exchanges.append(exchange)
            self._active += 1
        try:
            self._respond(handler, exchange)
            if exchange.outcome == "pending":
                exchange.outcome = "complete"
        except (_ClientClosed, _Stopping, OSError):
            exchange.outcome = "stopped" if self._stopping.is_set() else "client_closed"
            handler.close_connection = True
        except Exception as exc:
            exchange.outcome, exchange.error = "error", exc
            handler.close_connection = True
            if not exchange.responded:
                problem = f"fake server: the scripted reply failed: {type(exc).__name__}: {exc}"
                with contextlib.suppress(OSError, _ClientClosed, _Stopping):
                    self._send_json(
                        handler,
                        500,
                        self._error_body(ErrorReply(500, problem)),
                        {"x-should-retry": "false"},
                    )
        finally:
            exchange.server_s = time.perf_counter() - handler.started
            exchange.server_cpu_s = time.thread_time() - handler.started_cpu
            exchange.done.set()
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _read_body(self, handler: _Handler, headers: Mapping[str, str]) -> bytes | None:
        if "transfer-encoding" in headers:
            self._send_json(handler, 411, {"error": "fake server: send a Content-Length"}, {})
            return None
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_REQUEST_BYTES:
            self._send_json(handler, 413, {"error": "fake server: body too large"}, {})
            handler.close_connection = True
            return None
        return handler.rfile.read(length) if length else b""

    def _respond(self, handler: _Handler, exchange: Exchange) -> None:
        request = exchange.request
        route = self._routes().get((request.method, request.path))
        if route is None:
            self._send_error(
                handler,
                ErrorReply(404, f"fake server: no route {request.method} {request.path}"),
            )
            return
        if self.api_key is not None and not self._key_ok(request.headers):
            self._send_error(handler, ErrorReply(401, "Invalid API key (fake server)"))
            return
        if route == "models":
            self._send_json(handler, 200, self._models_body(), {})
            return
        if self.validate:
            problem = self._problem(request.path, request.body)
            if problem is not None:
                self._send_error(handler, problem)
                return
        if route == "count_tokens":
            self._send_json(handler, 200, self._count_tokens(request), {})
            return
        with self._lock:
            item = self._script.popleft() if self._script else None
        if item is None:
            self._send_error(
                handler,
                ErrorReply(
                    400,
                    f"fake server: no reply scripted for request {len(self.exchanges)} "
                    f"({request.method} {request.path})",
                    headers={"x-should-retry": "false"},
                ),
            )
            return
        reply = item(request) if callable(item) else item
        if isinstance(reply, ErrorReply):
            self._send_error(handler, reply)
        elif isinstance(request.body, dict) and request.body.get("stream") is True:
            self._send_stream(handler, exchange, reply)
        else:
            self._send_reply_json(handler, exchange, reply)

    def _common_headers(self) -> dict[str, str]:
        return {self._request_id_header(): f"req_fake{next(self._ids)}"}

    def _send_error(self, handler: _Handler, error: ErrorReply) -> None:
        self._send_json(handler, error.status, self._error_body(error), error.headers)

    def _send_json(
        self, handler: _Handler, status: int, body: Any, headers: Mapping[str, str]
    ) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        handler.send_response(status)
        for name, value in {**self._common_headers(), **headers}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        self._write(handler, data)

    def _send_reply_json(self, handler: _Handler, exchange: Exchange, reply: Reply) -> None:
        data = json.dumps(self._render_json(reply, exchange.request), ensure_ascii=False).encode()
        exchange.responded = True
        handler.send_response(200)
        for name, value in {**self._common_headers(), **reply.headers}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if reply.disconnect_after is not None:
            self._write(handler, data[: len(data) // 2])
            self._drop(handler, exchange)
            return
        self._write(handler, data)

    def _send_stream(self, handler: _Handler, exchange: Exchange, reply: Reply) -> None:
        exchange.responded = True
        handler.send_response(200)
        for name, value in {**self._common_headers(), **reply.headers}.items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.send_header("Cache-Control", "no-cache")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.flush()
        deadline = time.monotonic() + self.max_response_s
        for event in self._render_events(reply, exchange.request):
            if (
                reply.disconnect_after is not None
                and exchange.events_sent >= reply.disconnect_after
            ):
                self._drop(handler, exchange)
                return
            if reply.delay_s > 0:
                self._pause(handler, min(reply.delay_s, max(0.0, deadline - time.monotonic())))
            if time.monotonic() >= deadline:
                self._drop(handler, exchange, "expired")
                return
            self._write(handler, b"%x\r\n%b\r\n" % (len(event), event))
            exchange.events_sent += 1
        if reply.disconnect_after is not None and exchange.events_sent >= reply.disconnect_after:
            self._drop(handler, exchange)
            return
        self._write(handler, b"0\r\n\r\n")

    def _drop(self, handler: _Handler, exchange: Exchange, outcome: str = "disconnected") -> None:
        exchange.outcome = outcome
        handler.close_connection = True
        try:
            handler.wfile.flush()
            handler.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _write(self, handler: _Handler, data: bytes) -> None:
        if self._stopping.is_set():
            raise _Stopping
        view = memoryview(data)
        try:
            for start in range(0, len(view), self.write_size):
                handler.wfile.write(view[start : start + self.write_size])
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _ClientClosed from exc

    def _pause(self, handler: _Handler, seconds: float) -> None:
        """Wait ``seconds``, ending early (with ``_ClientClosed``) if the client hangs up."""
        deadline = time.monotonic() + seconds
        conn = handler.connection
        while (remaining := deadline - time.monotonic()) > 0:
            if self._stopping.is_set():
                raise _Stopping
            readable, _, _ = select.select([conn], [], [], min(remaining, 0.05))
            if readable:
                try:
                    peeked = conn.recv(1, socket.MSG_PEEK)
                except OSError as exc:
                    raise _ClientClosed from exc
                if not peeked:
                    raise _ClientClosed
                time.sleep(min(remaining, 0.05))  # pipelined bytes: not a hang-up

    @abstractmethod
    def _stop_word(self, stop: str) -> str:
        ...

    def _model(self, reply: Reply, request: ReceivedRequest) -> str:
        if reply.model is not None:
            return reply.model
        body = request.body if isinstance(request.body, dict) else {}
        model = body.get("model")
        return model if isinstance(model, str) else self.models[0]

    @staticmethod
    def _wire_tool_name(request: ReceivedRequest, call: ToolArgs) -> str:
        """The name of tool call ``call``: its own, else the request's tool at that position."""
        if call.name is not None:
            return call.name
        body = request.body if isinstance(request.body, dict) else {}
        tools = body.get("tools") or []
        if not tools:
            return "unnamed_tool"
        tool = tools[min(call.call, len(tools) - 1)]
        name = tool.get("name") or (tool.get("function") or {}).get("name")
        return str(name or "unnamed_tool")


def _sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


def _check_tools(tools: Any, name_of: Callable[[Any], Any]) -> str | None:
    if tools is None:
        return None
    if not isinstance(tools, list):
        return "tools: expected an array"
    for n, tool in enumerate(tools):
        name = name_of(tool) if isinstance(tool, dict) else None
        if not isinstance(name, str) or not TOOL_NAME_RE.match(name):
            return (
                f"tools.{n}.name: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$' "
                f"(got {name!r})"
            )
    return None


# -- OpenAI Chat Completions ---------------------------------------------------------------------


_OPENAI_STOPS = {
    "end_turn": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "content_filter": "content_filter",
}
_OPENAI_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


class FakeOpenAIServer(FakeLLMServer):
    """OpenAI Chat Completions: ``POST /v1/chat/completions`` (streamed or not), ``GET
    /v1/models``. ``base_url`` ends in ``/v1``, as the openai SDK expects. Usage is streamed
    only when the request asks for it (``stream_options.include_usage``), as OpenAI does."""

    wire = "openai"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``."""
        return f"{self.origin}/v1"

    def _routes(self) -> dict[tuple[str, str], str]:
        return {
            ("POST", "/v1/chat/completions"): "generate",
            ("GET", "/v1/models"): "models",
        }

    def _key_ok(self, headers: Mapping[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.api_key}"

    def _request_id_header(self) -> str:
        return "x-request-id"

    def _error_body(self, error: ErrorReply) -> dict[str, Any]:
        kind, code = _OPENAI_ERROR_TYPES.get(error.status, ("server_error", None))
        message = error.message
        if error.kind == "context_too_long":
            kind, code = "invalid_request_error", "context_length_exceeded"
            message = message or (
                "This model's maximum context length is 128000 tokens. However, your messages "
                "resulted in 250000 tokens. Please reduce the length of the messages."
            )
        elif error.kind is not None:
            kind = error.kind
        return {
            "error": {
                "message": message,
                "type": kind,
                "param": None,
                "code": error.code if error.code is not None else code,
            }
        }

    def _models_body(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"}
                for m in self.models
            ],
        }

    def _count_tokens(self, request: ReceivedRequest) -> dict[str, Any]:
        raise NotImplementedError("OpenAI Chat Completions has no token counting endpoint")

    def _problem(self, path: str, body: Any) -> ErrorReply | None:
        problem = _openai_problem(body)
        return None if problem is None else ErrorReply(400, problem, code="invalid_value")

    def _stop_word(self, stop: str) -> str:
        return _OPENAI_STOPS.get(stop, stop)

    def _usage(self, tokens: Tokens) -> dict[str, Any]:
        return {
            "prompt_tokens": tokens.input,
            "completion_tokens": tokens.output,
            "total_tokens": tokens.input + tokens.output,
            "prompt_tokens_details": {"cached_tokens": tokens.cache_read, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": tokens.reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _render_json(self, reply: Reply, request: ReceivedRequest) -> dict[str, Any]:
        text = "".join(c.text for c in reply.chunks if isinstance(c, Text))
        reasoning = "".join(c.text for c in reply.chunks if isinstance(c, Thinking))
        calls: dict[int, dict[str, Any]] = {}
        for chunk in reply.chunks:
            if isinstance(chunk, ToolArgs):
                call = calls.setdefault(
                    chunk.call,
                    {
                        "id": chunk.id,
                        "type": "function",
                        "function": {"name": self._wire_tool_name(request, chunk), "arguments": ""},
                    },
                )
                call["function"]["arguments"] += chunk.args
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text or None,
            "refusal": None,
            "annotations": [],
        }
        if reasoning:
            message["reasoning_content"] = reasoning
        if calls:
            message["tool_calls"] = [calls[n] for n in sorted(calls)]
        body: dict[str, Any] = {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._model(reply, request),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self._stop_word(reply.stop),
                }
            ],
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        if reply.usage is not None:
            body["usage"] = self._usage(reply.usage)
        return body

    def _render_events(self, reply: Reply, request: ReceivedRequest) -> Iterator[bytes]:
        body = request.json()
        options = body.get("stream_options") or {}
        with_usage = isinstance(options, dict) and options.get("include_usage") is True
        base = {
            "id": f"chatcmpl-fake{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self._model(reply, request),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data: dict[str, Any] = {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            if with_usage:
                data["usage"] = None
            return _sse(data)

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        opened: set[int] = set()
        for piece in reply.chunks:
            if isinstance(piece, Text):
                yield chunk({"content": piece.text})
            elif isinstance(piece, Thinking):
                yield chunk({"reasoning_content": piece.text})
            elif isinstance(piece, ToolArgs):
                if piece.call not in opened:
                    opened.add(piece.call)
                    name = self._wire_tool_name(request, piece)
                    header = {
                        "index": piece.call,
                        "id": piece.id,
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                    yield chunk({"tool_calls": [header]})
                if piece.args:
                    yield chunk(
                        {
                            "tool_calls": [
                                {"index": piece.call, "function": {"arguments": piece.args}}
                            ]
                        }
                    )
            else:
                yield _sse(
                    {
                        "error": {
                            "message": piece.message,
                            "type": piece.kind,
                            "param": None,
                            "code": None,
                        }
                    }
                )
                return
        yield chunk({}, self._stop_word(reply.stop))
        if with_usage and reply.usage is not None:
            yield _sse({**base, "choices": [], "usage": self._usage(reply.usage)})
        yield _sse("[DONE]")


_OPENAI_ROLES = {"system", "developer", "user", "assistant", "tool"}


def _openai_problem(body: Any) -> str | None:
    """What the Chat Completions API says about a malformed request (None: it is accepted)."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "[] is too short - 'messages'"
    if "stream_options" in body and body.get("stream") is not True:
        return "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    if "tool_choice" in body and not body.get("tools"):
        return (
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified."
        )
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 2
    ):
        return f"Invalid 'temperature': expected a number from 0 to 2, got {temperature!r}."
    tools_problem = _check_tools(body.get("tools"), lambda t: (t.get("function") or {}).get("name"))
    if tools_problem is not None:
        return tools_problem
    unanswered: list[str] = []
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _OPENAI_ROLES:
            return f"messages.{n}.role: expected one of {sorted(_OPENAI_ROLES)}"
        role = message["role"]
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in unanswered:
                return (
                    f"messages.[{n}].role: messages with role 'tool' must be a response to a "
                    f"preceeding message with 'tool_calls' (tool_call_id {call_id!r})"
                )
            unanswered.remove(call_id)
            continue
        if unanswered:
            return (
                "An assistant message with 'tool_calls' must be followed by tool messages "
                f"responding to each 'tool_call_id'. The following tool_call_ids did not have "
                f"response messages: {', '.join(unanswered)}"
            )
        if role == "assistant":
            for call in message.get("tool_calls") or []:
                if not isinstance(call, dict) or not isinstance(call.get("id"), str):
                    return f"messages.{n}.tool_calls: each call needs an id"
                arguments = (call.get("function") or {}).get("arguments")
                if not isinstance(arguments, str):
                    return f"messages.{n}.tool_calls: function.arguments must be a string"
                unanswered.append(call["id"])
    if unanswered:
        return (
            "An assistant message with 'tool_calls' must be followed by tool messages "
            f"responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(unanswered)}"
        )
    return None


# -- Anthropic Messages --------------------------------------------------------------------------


_ANTHROPIC_STOPS = {
    "end_turn": "end_turn",
    "tool_use": "tool_use",
    "max_tokens": "max_tokens",
    "content_filter": "refusal",
}
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class FakeAnthropicServer(FakeLLMServer):
    """Anthropic Messages: ``POST /v1/messages`` (streamed or not), ``POST
    /v1/messages/count_tokens``, ``GET /v1/models``. ``base_url`` is the bare origin, as the
    anthropic SDK expects. ``token_count`` answers count_tokens (default: a size estimate)."""

    wire = "anthropic"

    def __init__(self, *, token_count: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.token_count = token_count

    def _routes(self) -> dict[tuple[str, str], str]:
        return {
            ("POST", "/v1/messages"): "generate",
            ("POST", "/v1/messages/count_tokens"): "count_tokens",
            ("GET", "/v1/models"): "models",
        }

    def _key_ok(self, headers: Mapping[str, str]) -> bool:
        # The API takes ``x-api-key``; newer SDKs send ``Authorization: Bearer`` instead.
        return self.api_key in (
            headers.get("x-api-key"),
            headers.get("authorization", "").removeprefix("Bearer "),
        )

    def _request_id_header(self) -> str:
        return "request-id"

    def _error_body(self, error: ErrorReply) -> dict[str, Any]:
        kind = _ANTHROPIC_ERROR_TYPES.get(error.status, "api_error")
        message = error.message
        if error.kind == "context_too_long":
            kind = "invalid_request_error"
            message = message or "prompt is too long: 250000 tokens > 200000 maximum"
        elif error.kind is not None:
            kind = error.kind
        return {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_fake{next(self._ids)}",
        }

    def _models_body(self) -> dict[str, Any]:
        data = [
            {
                "type": "model",
                "id": m,
                "display_name": m,
                "created_at": "2025-01-01T00:00:00Z",
            }
            for m in self.models
        ]
        return {
            "data": data,
            "has_more": False,
            "first_id": self.models[0] if self.models else None,
            "last_id": self.models[-1] if self.models else None,
        }

    def _count_tokens(self, request: ReceivedRequest) -> dict[str, Any]:
        if self.token_count is not None:
            return {"input_tokens": self.token_count}
        return {"input_tokens": max(1, len(request.raw_body) // 4)}

    def _problem(self, path: str, body: Any) -> ErrorReply | None:
        problem = _anthropic_problem(body, count_tokens=path.endswith("/count_tokens"))
        return None if problem is None else ErrorReply(400, problem)

    def _stop_word(self, stop: str) -> str:
        return _ANTHROPIC_STOPS.get(stop, stop)

    @staticmethod
    def _uncached_input(tokens: Tokens) -> int:
        return max(0, tokens.input - tokens.cache_read - tokens.cache_write)

    def _start_usage(self, tokens: Tokens | None) -> dict[str, Any] | None:
        if tokens is None:
            return None
        return {
            "input_tokens": self._uncached_input(tokens),
            "cache_creation_input_tokens": tokens.cache_write,
            "cache_read_input_tokens": tokens.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": tokens.cache_write,
                "ephemeral_1h_input_tokens": 0,
            },
            "output_tokens": min(1, tokens.output),
            "service_tier": "standard",
        }

    def _final_usage(self, tokens: Tokens) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": self._uncached_input(tokens),
            "cache_creation_input_tokens": tokens.cache_write,
            "cache_read_input_tokens": tokens.cache_read,
            "output_tokens": tokens.output,
        }
        if tokens.reasoning:
            usage["output_tokens_details"] = {"thinking_tokens": tokens.reasoning}
        return usage

    @staticmethod
    def _layout(reply: Reply) -> tuple[list[str], list[int]]:
        """The reply's content blocks: their kinds, and the block of each chunk (-1: an error
        event). A run of text (or thinking) is one block; a tool call is one block however
        its pieces interleave with other calls'."""
        kinds: list[str] = []
        block_of: list[int] = []
        tools: dict[int, int] = {}
        for chunk in reply.chunks:
            if isinstance(chunk, ToolArgs):
                if chunk.call not in tools:
                    tools[chunk.call] = len(kinds)
                    kinds.append("tool_use")
                block_of.append(tools[chunk.call])
            elif isinstance(chunk, ErrorEvent):
                block_of.append(-1)
            else:
                kind = "text" if isinstance(chunk, Text) else "thinking"
                if block_of and block_of[-1] == len(kinds) - 1 and kinds[-1] == kind:
                    block_of.append(block_of[-1])
                else:
                    block_of.append(len(kinds))
                    kinds.append(kind)
        return kinds, block_of

    def _render_json(self, reply: Reply, request: ReceivedRequest) -> dict[str, Any]:
        kinds, block_of = self._layout(reply)
        grouped: list[list[Chunk]] = [[] for _ in kinds]
        for chunk, block in zip(reply.chunks, block_of, strict=True):
            if block >= 0:
                grouped[block].append(chunk)
        content: list[dict[str, Any]] = []
        for kind, chunks in zip(kinds, grouped, strict=True):
            if kind == "text":
                content.append({"type": "text", "text": "".join(_text(c) for c in chunks)})
            elif kind == "thinking":
                signature = "".join(c.signature for c in chunks if isinstance(c, Thinking))
                content.append(
                    {
                        "type": "thinking",
                        "thinking": "".join(_text(c) for c in chunks),
                        "signature": signature,
                    }
                )
            else:
                first = chunks[0]
                assert isinstance(first, ToolArgs)
                args = "".join(c.args for c in chunks if isinstance(c, ToolArgs))
                try:
                    arguments = json.loads(args) if args else {}
                except ValueError:
                    arguments = {}  # truncated arguments: the API gives what it could parse
                content.append(
                    {
                        "type": "tool_use",
                        "id": first.id,
                        "name": self._wire_tool_name(request, first),
                        "input": arguments,
                    }
                )
        body: dict[str, Any] = {
            "id": f"msg_fake{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": self._model(reply, request),
            "content": content,
            "stop_reason": self._stop_word(reply.stop),
            "stop_sequence": None,
        }
        if reply.usage is not None:
            body["usage"] = {
                **(self._start_usage(reply.usage) or {}),
                **self._final_usage(reply.usage),
            }
        return body

    def _render_events(self, reply: Reply, request: ReceivedRequest) -> Iterator[bytes]:
        message: dict[str, Any] = {
            "id": f"msg_fake{next(self._ids)}",
            "type": "message",
            "role": "assistant",
            "model": self._model(reply, request),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        start_usage = self._start_usage(reply.usage)
        if start_usage is not None:
            message["usage"] = start_usage
        yield _sse({"type": "message_start", "message": message}, "message_start")
        yield _sse({"type": "ping"}, "ping")
        kinds, block_of = self._layout(reply)
        last = {block: position for position, block in enumerate(block_of)}
        signatures = [""] * len(kinds)
        for chunk, block in zip(reply.chunks, block_of, strict=True):
            if isinstance(chunk, Thinking):
                signatures[block] += chunk.signature
        started: set[int] = set()
        for position, (chunk, index) in enumerate(zip(reply.chunks, block_of, strict=True)):
            if isinstance(chunk, ErrorEvent):
                error = {"type": chunk.kind, "message": chunk.message}
                yield _sse({"type": "error", "error": error}, "error")
                return
            if index not in started:
                started.add(index)
                yield _sse(
                    {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": self._block_head(kinds[index], chunk, request),
                    },
                    "content_block_start",
                )
            delta = self._delta(chunk)
            if delta is not None:
                yield _sse(
                    {"type": "content_block_delta", "index": index, "delta": delta},
                    "content_block_delta",
                )
            if last[index] == position:
                if signatures[index]:
                    yield _sse(
                        {
                            "type": "content_block_delta",
                            "index": index,
                            "delta": {"type": "signature_delta", "signature": signatures[index]},
                        },
                        "content_block_delta",
                    )
                yield _sse({"type": "content_block_stop", "index": index}, "content_block_stop")
        message_delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": self._stop_word(reply.stop), "stop_sequence": None},
        }
        if reply.usage is not None:
            message_delta["usage"] = self._final_usage(reply.usage)
        yield _sse(message_delta, "message_delta")
        yield _sse({"type": "message_stop"}, "message_stop")

    def _block_head(self, kind: str, chunk: Chunk, request: ReceivedRequest) -> dict[str, Any]:
        if kind == "text":
            return {"type": "text", "text": ""}
        if kind == "thinking":
            return {"type": "thinking", "thinking": "", "signature": ""}
        assert isinstance(chunk, ToolArgs)
        return {
            "type": "tool_use",
            "id": chunk.id,
            "name": self._wire_tool_name(request, chunk),
            "input": {},
        }

    @staticmethod
    def _delta(chunk: Chunk) -> dict[str, Any] | None:
        if isinstance(chunk, Text):
            return {"type": "text_delta", "text": chunk.text}
        if isinstance(chunk, Thinking):
            return {"type": "thinking_delta", "thinking": chunk.text}
        if isinstance(chunk, ToolArgs):
            return {"type": "input_json_delta", "partial_json": chunk.args}
        return None


def _text(chunk: Chunk) -> str:
    return chunk.text if isinstance(chunk, Text | Thinking) else ""


_ANTHROPIC_BLOCKS = {
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
    "search_result",
}


def _anthropic_problem(body: Any, *, count_tokens: bool = False) -> str | None:
    """What the Messages API says about a malformed request (None: it is accepted)."""
    if not isinstance(body, dict):
        return "There was an issue with the JSON body of your request."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not count_tokens and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        return "max_tokens: Field required (an integer of at least 1)"
    temperature = body.get("temperature")
    if temperature is not None and not (
        isinstance(temperature, int | float) and 0 <= temperature <= 1
    ):
        return f"temperature: Input should be less than or equal to 1 (got {temperature!r})"
    thinking = body.get("thinking")
    thinking_on = isinstance(thinking, dict) and thinking.get("type") == "enabled"
    if thinking_on:
        assert isinstance(thinking, dict)
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024:
            return "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
        if not count_tokens and isinstance(max_tokens, int) and budget >= max_tokens:
            return "`max_tokens` must be greater than `thinking.budget_tokens`."
        if temperature is not None and temperature != 1:
            return "`temperature` may only be set to 1 when thinking is enabled."
    tools_problem = _check_tools(body.get("tools"), lambda t: t.get("name"))
    if tools_problem is not None:
        return tools_problem
    for n, tool in enumerate(body.get("tools") or []):
        if "type" not in tool and not isinstance(tool.get("input_schema"), dict):
            return f"tools.{n}.custom.input_schema: Field required"
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        return "system: Input should be a valid string or a list of text blocks"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    previous_tool_uses: list[str] = []
    for n, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{n}: Input should be a valid dictionary"
        role = message.get("role")
        if role not in ("user", "assistant"):
            return f"messages.{n}.role: Input should be 'user' or 'assistant'" + (
                "; use the top-level 'system' parameter" if role == "system" else ""
            )
        if n == 0 and role != "user":
            return 'messages: the first message must use the "user" role'
        content = message.get("content")
        blocks: list[Any]
        if isinstance(content, str):
            blocks = []
        elif isinstance(content, list):
            blocks = content
        else:
            return f"messages.{n}.content: Input should be a valid string or list of blocks"
        for m, block in enumerate(blocks):
            if not isinstance(block, dict) or block.get("type") not in _ANTHROPIC_BLOCKS:
                return f"messages.{n}.content.{m}: unknown content block type"
            if block["type"] == "text" and not block.get("text"):
                return f"messages.{n}.content.{m}.text: text content blocks must be non-empty"
            if block["type"] == "thinking" and not isinstance(block.get("signature"), str):
                return f"messages.{n}.content.{m}.thinking.signature: Field required"
        results = [b.get("tool_use_id") for b in blocks if b.get("type") == "tool_result"]
        if role == "user":
            missing = [i for i in previous_tool_uses if i not in results]
            if missing:
                return (
                    f"messages.{n}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(missing)}. Each `tool_use` block must have "
                    "a corresponding `tool_result` block in the next message."
                )
            stray = [r for r in results if r not in previous_tool_uses]
            if stray:
                return (
                    f"messages.{n}.content: unexpected `tool_use_id` found in `tool_result` "
                    f"blocks: {', '.join(map(str, stray))}. Each `tool_result` block must have "
                    "a corresponding `tool_use` block in the previous message."
                )
            previous_tool_uses = []
        else:
            if previous_tool_uses:
                return (
                    f"messages.{n}: `tool_use` ids were found without `tool_result` blocks "
                    f"immediately after: {', '.join(previous_tool_uses)}"
                )
            if results:
                return f"messages.{n}: tool_result blocks belong in a user message"
            previous_tool_uses = [str(b.get("id")) for b in blocks if b.get("type") == "tool_use"]
    if thinking_on:
        return _thinking_problem(messages)
    return None


def _thinking_problem(messages: list[Any]) -> str | None:
    """With thinking enabled, the assistant turn answered by the final tool results must start
    with its thinking block, carried back as it came."""
    last = messages[-1]
    content = last.get("content")
    if len(messages) < 2 or last.get("role") != "user" or not isinstance(content, list):
        return None
    if not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
        return None
    n = len(messages) - 2
    blocks = messages[n].get("content")
    first = blocks[0].get("type") if isinstance(blocks, list) and blocks else "text"
    if first in ("thinking", "redacted_thinking"):
        return None
    return (
        f"messages.{n}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
        f"`{first}`. When `thinking` is enabled, a final `assistant` message must start with a "
        "thinking block (preceeding the lastmost set of `tool_use` and `tool_result` blocks). "
        "We recommend you include thinking blocks from previous turns."
    )


Wire = Literal["openai", "anthropic"]


def fake_server(wire: Wire, **kwargs: Any) -> FakeLLMServer:
    """A (not yet started) fake server for ``wire``."""
    if wire == "openai":
        return FakeOpenAIServer(**kwargs)
    if wire == "anthropic":
        return FakeAnthropicServer(**kwargs)
    raise ValueError(f"unknown wire format {wire!r}: expected 'openai' or 'anthropic'")
