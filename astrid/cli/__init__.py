"""The ``astrid`` command: sessions, configuration, plugins, migration and store checks.

Thin: every command parses its arguments, calls astrid's public API (config, store, plugins,
``astrid.transfer``) and prints. Any ``AstridError`` or ``OSError`` prints one line,
``astrid: error: <message>``, unless ``--debug`` is given.
Exit codes: 0 ok, 1 error (or problems found), 2 usage error, 3 not found, 4 over budget.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from .. import __version__
from ._common import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, AstridGroup, Options
from .chat import chat
from .config import config_group
from .demo import demo
from .doctor import doctor
from .migrate import migrate
from .plugins import plugins_command
from .run import run
from .sessions import parse_duration, render_message, sessions

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


@click.group(cls=AstridGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="The config file (default: $ASTRID_CONFIG, ./astrid.toml, <home>/config.toml).",
)
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.version_option(__version__, prog_name="astrid")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """astrid: manage agent sessions, their stores, configuration and plugins."""
    ctx.obj = Options(config_path, debug)


for _command in (sessions, config_group, plugins_command, migrate, doctor, demo, run, chat):
    cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``astrid`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="astrid")
