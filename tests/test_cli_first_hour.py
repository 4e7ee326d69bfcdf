"""Issue 20, the first hour of a new user: money, short ids, prune, import, doctor, progress.

Real parts: the ``astrid`` console script in subprocesses (a pseudo-terminal where the
behaviour depends on a terminal), click's runner in-process, SQLite and file-backend stores
under a temporary ``ASTRID_HOME``, the scripted provider.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from astrid import AgentSession
from astrid.cli import cli
from astrid.config import load_config
from astrid.money import money, money_json
from astrid.plugins import load_plugins
from astrid.security.budget import BudgetConfig, BudgetTracker
from astrid.store import SessionStore, open_store

ASTRID = Path(sys.executable).with_name("astrid")


@dataclass(frozen=True)
class Env:
    """The temporary home, the working directory and the config file of a test."""

    root: Path
    home: Path
    config: Path

    def store(self) -> SessionStore:
        """The configured store (close it, or use it in ``with``)."""
        return open_store(load_config(self.config))

    def configure(self, body: str) -> None:
        """Replace the config file's text."""
        self.config.write_text(body, encoding="utf-8")

    def child_env(self) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ASTRID_")}
        environ["ASTRID_HOME"] = str(self.home)
        return environ


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    home = tmp_path / "home"
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "astrid.toml"
    config.write_text("", encoding="utf-8")
    load_plugins()
    yield Env(tmp_path, home, config)
    load_plugins()


def astrid(env: Env, *args: str, input: str | None = None) -> Result:
    """``astrid --config CONFIG ARGS`` in-process (stdin is not a terminal)."""
    return CliRunner().invoke(cli, ["--config", str(env.config), *args], input=input)


def astrid_process(
    env: Env, *args: str, input: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The installed console script in a subprocess; stdin is a pipe, not a terminal."""
    return subprocess.run(
        [str(ASTRID), "--config", str(env.config), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env.child_env(),
        cwd=env.root,
    )


# -- item 8: money ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "text", "as_json"),
    [
        (0.0001, "$0.0001", 0.0001),
        (100 - 0.0047, "$99.9953", 99.9953),
        (0.005564999999999995, "$0.005565", 0.005565),
        (0.1 + 0.2, "$0.30", 0.3),
        (100.0, "$100.00", 100.0),
        (0, "$0.00", 0.0),
        (1234.5, "$1,234.50", 1234.5),
        (-5.0, "-$5.00", -5.0),
        (4e-7, "<$0.000001", 0.0),
        (Decimal("0.0047"), "$0.0047", 0.0047),
    ],
)
def test_an_amount_prints_with_the_digits_it_needs_and_json_rounds_to_the_micro_dollar(
    amount: float, text: str, as_json: float
) -> None:
    assert money(amount) == text
    assert money_json(amount) == as_json
    assert money(None) == "-" and money_json(None) is None


def test_sessions_show_prints_true_amounts_and_json_carries_rounded_decimals(env: Env) -> None:
    with env.store() as store:
        session = AgentSession(budget_tracker=BudgetTracker(BudgetConfig(session_max_usd=0.0001)))
        for cost in (0.0047, 0.000865):  # 0.005564999999999995 as floats add up
            session.budget_tracker.record_cost(cost)
        assert session.budget_tracker.spent() != 0.005565
        store.save(session)
        sid = session.id.bare
    shown = astrid(env, "sessions", "show", sid)
    assert shown.exit_code == 0, shown.output
    assert "$0.005565 spent of $0.0001 (per action max $10.00" in shown.stdout
    raw = astrid(env, "sessions", "show", sid, "--json").stdout
    assert '"spent_usd": 0.005565,' in raw and '"limit_usd": 0.0001,' in raw


def test_a_turn_over_a_tiny_limit_names_the_limit_as_it_is(env: Env) -> None:
    script = env.root / "script.json"
    script.write_text(json.dumps([[{"text": "Too dear."}]]), encoding="utf-8")
    env.configure(
        f'[llm]\nprovider = "scripted"\n[llm.options]\nscript_file = "{script}"\n'
        "[budget]\nsession_max_usd = 0.0001\n"
    )
    done = astrid_process(env, "run", "hi")
    assert done.returncode == 4, done.stderr
    [line] = done.stderr.splitlines()
    assert "session spend $0.00 of a $0.0001 limit" in line and "available $0.0001]" in line
