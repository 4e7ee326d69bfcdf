"""What every command group of the ``astrid`` command shares: options, errors, output helpers."""

from __future__ import annotations

import contextlib
import errno
import json
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..config import LoadedConfig, load_config
from ..errors import (
    AstridError,
    BudgetExceeded,
    InvalidSessionId,
    SessionNotFound,
    StorageError,
)
from ..ids import validate_session_id
from ..money import money as money
from ..money import money_json as money_json
from ..store import SessionStore, open_store
from ..timeutil import to_utc
from ..transfer import all_summaries, message_of

if TYPE_CHECKING:
    from ..runtime import AgentRuntime, TurnResult
    from ..security.approvals import ApprovalDecision, ApprovalResponse
    from ..security.deferred import ApprovalRequest
    from ..session import AgentSession

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_BUDGET = 4

_F = TypeVar("_F", bound=Callable[..., Any])
_T = TypeVar("_T")


@dataclass(frozen=True)
class Options:
    """The root group's options, kept in the click context."""

    config: str | None
    debug: bool


def exit_code(exc: BaseException) -> int:
    """The exit status of an error: 3 not found, 2 an invalid session id, 4 over budget,
    else 1."""
    if isinstance(exc, BudgetExceeded):
        return EXIT_BUDGET
    if isinstance(exc, SessionNotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, InvalidSessionId):
        return EXIT_USAGE
    return EXIT_ERROR


def one_line(exc: BaseException) -> str:
    """An error as the one line the CLI prints (a bug points to ``--debug``)."""
    text = message_of(exc)
    if isinstance(exc, AstridError | OSError):
        return text
    return f"{text} (run with --debug for the traceback)"


def error(message: str) -> None:
    """Print ``astrid: error: <message>`` on stderr."""
    click.echo(f"astrid: error: {message}", err=True)


def opts(ctx: click.Context) -> Options:
    """The root group's options (defaults when a command is invoked on its own)."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, Options) else Options(None, False)


def load(ctx: click.Context) -> LoadedConfig:
    """The configuration ``--config`` (or discovery) names."""
    return load_config(opts(ctx).config)


@contextlib.contextmanager
def store_of(ctx: click.Context) -> Iterator[SessionStore]:
    """The configured store, closed afterwards."""
    with open_store(load(ctx)) as store:
        yield store


@contextlib.contextmanager
def reading_store_of(ctx: click.Context) -> Iterator[SessionStore]:
    """The configured store for a command that only reads: opened as usual or, when that
    fails (a home or a store it cannot write), read-only (``SessionStore.open_to_inspect``)."""
    loaded = load(ctx)
    try:
        store = open_store(loaded)
    except (StorageError, OSError) as first:
        if not _cannot_write(first):
            raise
        try:
            store = SessionStore.open_to_inspect(loaded)
        except (StorageError, OSError):
            raise first from None
    with store:
        yield store


def _cannot_write(exc: BaseException | None) -> bool:
    """True if ``exc`` or what caused it says a file or directory cannot be written."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return True
        text = str(exc)
        if any(
            sign in text
            for sign in ("read-only", "readonly", "Permission denied", "unable to open database")
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def json_option(func: _F) -> _F:
    """The ``--json`` flag (as ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(
        func
    )


def echo_json(data: Any) -> None:
    """Print indented JSON."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def time_text(moment: datetime | None) -> str:
    """A moment as ``YYYY-MM-DD HH:MM:SSZ`` (``-`` for None)."""
    return to_utc(moment).strftime("%Y-%m-%d %H:%M:%SZ") if moment is not None else "-"


def clip(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` with ``...``."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(0, width - 3)] + "..."


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A plain-text table; columns in ``right`` are right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = []
        for i, cell in enumerate(row):
            if i == len(row) - 1:
                cells.append(cell.rjust(widths[i]) if i in right else cell)
            else:
                cells.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


class Progress:
    """A progress bar on stderr over the items of long work (``migrate``, ``sessions import``,
    ``export --all``, ``prune``, ``doctor``), advanced as each item is taken; only when stderr
    is a terminal (elsewhere nothing is printed, so error output stays one line each)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def __call__(self, items: Sequence[_T]) -> Iterator[_T]:
        if not sys.stderr.isatty():
            yield from items
            return
        with click.progressbar(items, label=self.label, file=sys.stderr, show_pos=True) as bar:
            yield from bar


def compact(value: Any) -> str:
    """Compact JSON of ``value`` (anything else as ``str``)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


MIN_PREFIX = 6
"""The fewest hex digits a session id prefix needs (``Session 04c49a47`` titles show 8)."""

_PREFIX = re.compile(r"[0-9a-f-]+")


def resolve_session_id(store: SessionStore, text: str) -> str:
    """The bare id of the one stored session ``text`` names: a whole id or a unique prefix of
    at least ``MIN_PREFIX`` hex digits.

    An unknown prefix raises ``SessionNotFound``; a short, malformed or ambiguous one
    ``InvalidSessionId`` (a usage error), naming the prefix (and the matches).
    """
    raw = text.strip().lower().removeprefix("session:")
    if not raw:
        raise InvalidSessionId("empty session id")
    try:
        return validate_session_id(raw)
    except InvalidSessionId:
        pass
    if not _PREFIX.fullmatch(raw):
        raise InvalidSessionId(
            f"invalid session id {text!r}: not a UUID or a prefix of one (hex digits and '-')"
        )
    if len(raw.replace("-", "")) < MIN_PREFIX:
        raise InvalidSessionId(
            f"invalid session id {text!r}: a prefix needs at least {MIN_PREFIX} hex digits"
        )
    matches = sorted(row.id for row in all_summaries(store) if row.id.startswith(raw))
    if not matches:
        raise SessionNotFound(
            f"no session id starts with {text!r} in the {store.backend_name} store"
        )
    if len(matches) > 1:
        more = len(matches) - 10
        shown = ", ".join(matches[:10]) + (f" and {more} more" if more > 0 else "")
        raise InvalidSessionId(
            f"session id prefix {text!r} is ambiguous: {len(matches)} sessions match ({shown})"
        )
    return matches[0]


APPROVAL_KEYS = {
    "y": "approved once",
    "s": "approved for this session",
    "w": "approved for this workspace",
    "a": "approved always",
    "n": "denied",
}
"""The keys that answer an approval prompt at the terminal, and how the answer is reported."""


def decision_for_key(key: str) -> ApprovalDecision:
    """The decision an answer key stands for (``APPROVAL_KEYS``); any other key denies."""
    from ..security.approvals import Approve, ApproveAlways, ApproveSession, ApproveWorkspace, Deny

    decisions: dict[str, ApprovalDecision] = {
        "y": Approve(),
        "s": ApproveSession(),
        "w": ApproveWorkspace(),
        "a": ApproveAlways(),
    }
    return decisions.get(key.lower()) or Deny(reason="denied at the terminal")


def _ask_terminal(request: ApprovalRequest) -> str:
    """Ask on the terminal (stderr, so ``--json`` output stays one object); one of APPROVAL_KEYS."""
    answer: str = click.prompt(
        f"  approve {request.action.summary()}? "
        "[y] once, [s] session, [w] workspace, [a] always, [n] deny",
        type=click.Choice(list(APPROVAL_KEYS), case_sensitive=False),
        show_choices=False,
        err=True,
    )
    return answer.lower()


async def ask_at_terminal(request: ApprovalRequest) -> tuple[ApprovalDecision, str]:
    """The decision typed on the terminal for ``request`` and its label (read off the loop)."""
    import asyncio

    key = await asyncio.to_thread(_ask_terminal, request)
    return decision_for_key(key), APPROVAL_KEYS[key]


async def open_session(runtime: AgentRuntime, session_ref: str | None) -> AgentSession:
    """The stored session ``session_ref`` names (a unique prefix is enough), or a new one;
    attached to its workspace in the runtime's store."""
    store = runtime.store
    assert store is not None  # open_runtime always opens the configured store
    if session_ref is not None:
        sid = resolve_session_id(store, session_ref)
        session = await store.aload(sid)
        if session is None:
            raise SessionNotFound(f"session {sid} does not exist")
    else:
        session = runtime.create_session()
    await store.aattach_workspace(session, runtime.workspace_root(session))
    return session


class CliApprover:
    """The CLI's approval handler: ``decide`` answers each request; the answer is reported
    with ``say`` as ``[approval] <action> -> <label>``."""

    def __init__(
        self,
        decide: Callable[[ApprovalRequest], Awaitable[tuple[ApprovalDecision, str]]],
        say: Callable[[str], None],
    ) -> None:
        self.decide = decide
        self.say = say

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse:
        """The decision ``decide`` gives for ``request``."""
        from ..security.approvals import ApprovalResponse

        decision, label = await self.decide(request)
        self.say(f"  [approval] {request.action.summary()} -> {label}")
        return ApprovalResponse.new(request.id, decision)

    def is_available(self) -> bool:
        """Always reachable (``decide`` answers, or asks the terminal)."""
        return True


def echo_turn(result: TurnResult, say: Callable[[str], None], *, streamed: bool = False) -> None:
    """A turn as text: summary, tool calls, notices, warnings, then the answer and its cost.

    ``streamed``: the text and the calls were shown as they came (``astrid chat``), so only
    the summary, notices and warnings are left to show."""
    from ..messages import Message
    from .sessions import render_message

    if result.summarization is not None and result.summarization.messages_evicted:
        say(
            f"  [summary] {result.summarization.messages_evicted} older messages "
            "summarized (they stay in the session's history)"
        )
    for record in () if streamed else result.tool_calls:
        outcome = render_message(Message.tool_result(record.result), 70)
        say(f"  [tool] {record.call.name} {outcome}")
    for notice in result.notices:  # e.g. the model priced by [pricing.default], once
        say(f"  [note] {notice}")
    for warning in result.warnings:
        say(
            f"  [budget] {money(warning.current_spend)} of {money(warning.session_max)} spent "
            f"({warning.percent_used:.0f}%)"
        )
    if not streamed:
        say(f"  {result.text}  ({money(result.cost_usd)})")


def turn_data(result: TurnResult) -> dict[str, Any]:
    """A turn as JSON data: text, tool calls with their results, usage, cost, notices."""
    usage = result.usage
    return {
        "text": result.text,
        "tool_calls": [
            {
                "id": record.call.id,
                "name": record.call.name,
                "arguments": record.call.arguments,
                "result": record.result.content,
                "is_error": record.result.is_error,
            }
            for record in result.tool_calls
        ],
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
        },
        "cost_usd": money_json(result.cost_usd),
        "iterations": result.iterations,
        "notices": list(result.notices),
        "warnings": [
            {
                "current_spend": money_json(warning.current_spend),
                "session_max": money_json(warning.session_max),
                "percent_used": round(warning.percent_used, 2),
            }
            for warning in result.warnings
        ],
    }
