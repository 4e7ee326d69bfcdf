"""What every command group of the ``astrid`` command shares: options, errors, output helpers."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import click

from ..config import LoadedConfig, load_config
from ..errors import AstridError, InvalidSessionId, SessionNotFound
from ..store import SessionStore, open_store
from ..timeutil import to_utc
from ..transfer import message_of

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Options:
    """The root group's options, kept in the click context."""

    config: str | None
    debug: bool


def exit_code(exc: BaseException) -> int:
    """The exit status of an error: 3 not found, 2 an invalid session id, else 1."""
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


def compact(value: Any) -> str:
    """Compact JSON of ``value`` (anything else as ``str``)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class AstridGroup(click.Group):
    """The top-level group: turns errors into one line and an exit code (unless --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise  # click reports these itself (usage errors exit 2)
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            error(one_line(exc))
            ctx.exit(exit_code(exc))
