"""``astrid --version`` and ``astrid --help`` stay light (issue 20, item 10).

The command modules load when their command runs; the version and the help import neither the
store, the runtime, the configuration, the plugins nor a command module. Checked on what a real
``python -X importtime`` subprocess imported; the time itself is measured, not asserted
(docs/performance.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from astrid.cli import COMMANDS, cli, load_command

HEAVY = (
    "astrid.store",
    "astrid.runtime",
    "astrid.config",
    "astrid.transfer",
    "astrid.llm",
    "astrid.default_plugins",
    "astrid.cli._common",
    *(f"astrid.cli.{entry.partition(':')[0]}" for entry, _help in COMMANDS.values()),
    "sqlite3",
    "cryptography",
)
"""Modules (and their submodules) that ``--version`` and ``--help`` must not import."""


def imported_modules(tmp_path: Path, *args: str) -> tuple[str, set[str]]:
    """The output of ``python -X importtime -m astrid ARGS`` and every module it imported."""
    env = {**os.environ, "ASTRID_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "astrid", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=True,
    )
    names = {
        line.rpartition("|")[2].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "imported package" not in line
    }
    return proc.stdout, names


def heavy_among(names: set[str], extra: tuple[str, ...] = ()) -> list[str]:
    return sorted(
        name for name in names for heavy in (*HEAVY, *extra)
        if name == heavy or name.startswith(heavy + ".")
    )


def test_the_version_imports_nothing_heavy(tmp_path: Path) -> None:
    out, names = imported_modules(tmp_path, "--version")
    assert out.startswith("astrid, version ")
    assert "astrid.cli" in names  # the check saw the command's own imports
    assert heavy_among(names) == []
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_the_help_imports_nothing_heavy_and_lists_every_command(tmp_path: Path, flag: str) -> None:
    out, names = imported_modules(tmp_path, flag)
    assert "astrid.cli" in names
    assert heavy_among(names, ("astrid.plugins",)) == []
    listed = out.partition("Commands:")[2].split()
    assert all(name in listed for name in COMMANDS)


def test_a_command_is_imported_when_it_runs(tmp_path: Path) -> None:
    """The negative control of the checks above: running a command does import it."""
    _out, names = imported_modules(tmp_path, "config", "path")
    assert {"astrid.cli._common", "astrid.config", "astrid.store"} <= set(heavy_among(names))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_listed_help_is_the_start_of_the_commands_own_help(name: str) -> None:
    command = load_command(name)
    assert isinstance(command, click.Command)
    assert command.name == name
    listed = COMMANDS[name][1].removesuffix("...")
    assert " ".join((command.help or "").split()).startswith(listed)
    assert cli.get_command(click.Context(cli), name) is command


def test_an_unknown_command_is_a_usage_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "astrid", "no-such-command"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "ASTRID_HOME": str(tmp_path / "home")},
        timeout=60,
    )
    assert proc.returncode == 2
    assert "No such command 'no-such-command'" in proc.stderr
