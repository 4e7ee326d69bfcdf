"""The ``astrid`` command: sessions, configuration, plugins, migration and store checks.

Thin: every command parses its arguments, calls astrid's public API (config, store, plugins,
``astrid.transfer``) and prints. Any ``AstridError`` or ``OSError`` prints one line,
``astrid: error: <message>``, unless ``--debug`` is given.
Exit codes: 0 ok, 1 error (or problems found), 2 usage error, 3 not found, 4 over budget.

A command's module is imported only when that command runs, so ``astrid --version`` and
``astrid --help`` load neither the store, the runtime nor the configuration.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from .._exports import module_attributes

if TYPE_CHECKING:
    from ._common import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
    from .sessions import parse_duration, render_message

__all__ = [
    "EXIT_ERROR",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "cli",
    "main",
    "parse_duration",
    "render_message",
]

COMMANDS: dict[str, tuple[str, str]] = {  # one line per command
    "sessions": ("sessions:sessions", "List, show, export, import, delete and prune stored..."),
    "config": ("config:config_group", "Create, show, validate and locate the configuration file."),
    "plugins": ("plugins:plugins_command", "List installed plugins, their versions and hooks..."),
    "migrate": ("migrate:migrate", "Copy every session and its state from one store to another..."),
    "doctor": ("doctor:doctor", "Check the store: schema version, every session loads, corrupt..."),
    "demo": ("demo:demo", "Run a scripted agent session (tool call, approval, sub-agent..."),
    "run": ("run:run", "Run one turn of PROMPT ('-' reads it from standard input)..."),
    "chat": ("chat:chat", "Talk with the configured model in the terminal (Ctrl-C..."),
    "usage": ("usage:usage", "Show the calls, tokens and cost recorded in the spend ledger."),
    "audit": ("audit:audit", "List and verify the audit log of security decisions."),
}
"""The subcommands: name -> ("module:attribute" under astrid.cli, the start of its help).
``astrid --help`` lists them from here without importing them; a test checks each help text
against the start of the command's own docstring."""

_LAZY = {
    "EXIT_ERROR": f"{__name__}._common",
    "EXIT_NOT_FOUND": f"{__name__}._common",
    "EXIT_OK": f"{__name__}._common",
    "EXIT_USAGE": f"{__name__}._common",
    "parse_duration": f"{__name__}.sessions",
    "render_message": f"{__name__}.sessions",
}

if not TYPE_CHECKING:  # type checkers see the imports above instead
    __getattr__, __dir__ = module_attributes(__name__, lazy=_LAZY)


def load_command(name: str) -> click.Command | None:
    """The command registered as ``name`` in ``COMMANDS`` (its module imported now), or None."""
    entry = COMMANDS.get(name)
    if entry is None:
        return None
    module, _, attribute = entry[0].partition(":")
    command = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    assert isinstance(command, click.Command), entry[0]
    return command


class AstridGroup(click.Group):
    """The top-level group: loads a command on first use, lists them all without loading any,
    and turns errors into one line and an exit code (unless --debug)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self.commands.get(cmd_name) or load_command(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = []
        for name in names:
            command = self.commands.get(name) or click.Command(name, help=COMMANDS[name][1])
            rows.append((name, command.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise  # click reports these itself (usage errors exit 2)
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            from ._common import error, exit_code, one_line

            error(one_line(exc))
            ctx.exit(exit_code(exc))


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from .._version import __version__

    click.echo(f"astrid, version {__version__}")
    ctx.exit()


@click.group(cls=AstridGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="The config file (default: $ASTRID_CONFIG, ./astrid.toml, <home>/config.toml).",
)
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version and exit.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """astrid: manage agent sessions, their stores, configuration and plugins."""
    from ._common import Options

    ctx.obj = Options(config_path, debug)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``astrid`` console script."""
    _plugin_warnings_as_lines()
    cli.main(args=list(argv) if argv is not None else None, prog_name="astrid")


def _plugin_warnings_as_lines() -> None:
    """Show a ``PluginWarning`` as one ``warning:`` line on stderr, not Python's two lines."""
    import warnings

    shown = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        from ..errors import PluginWarning  # here: --version and --help load no plugins

        if issubclass(category, PluginWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
