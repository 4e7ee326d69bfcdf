"""``astrid usage`` and ``astrid doctor``'s check of the budget totals against the spend ledger.

Real parts: the ``astrid-openai`` plugin talking to the loopback ``FakeOpenAIServer`` (usage
reported by the provider, cache and reasoning tokens included), the SQLite store under a
temporary ``ASTRID_HOME``, click's runner and the installed console script in a subprocess.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from astrid.cli import cli
from astrid.cli.usage import parse_since
from astrid.config import load_config
from astrid.plugins import load_plugins
from astrid.store import open_store
from astrid.testing.fake_llm import (
    FakeOpenAIServer,
    Tokens,
    ToolCallSpec,
    text_reply,
    tool_call_reply,
)

ASTRID = Path(sys.executable).with_name("astrid")
KEY_ENV = "ASTRID_TEST_LEDGER_KEY"


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = f"sk-test-{secrets.token_hex(16)}"
    monkeypatch.setenv(KEY_ENV, key)
    return key


@pytest.fixture
def server(api_key: str) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=api_key, io_timeout_s=10.0) as fake:
        yield fake


@pytest.fixture
def config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeOpenAIServer
) -> Iterator[Path]:
    home = tmp_path / "home"
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "notes.txt").write_text("buy milk\n", encoding="utf-8")
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    monkeypatch.chdir(tmp_path)
    load_plugins()
    path = tmp_path / "astrid.toml"
    path.write_text(
        '[llm]\nprovider = "openai"\n[llm.options]\nmodel = "fake-model"\n'
        f'base_url = "{server.base_url}"\napi_key_env = "{KEY_ENV}"\nmax_retries = 0\n'
        '[pricing."fake-model"]\ninput_per_million = 1000.0\noutput_per_million = 2000.0\n'
        f'[runtime]\nworkspace_root = "{workspace}"\n',
        encoding="utf-8",
    )
    yield path
    load_plugins()


def astrid(config: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--config", str(config), *args])


def two_sessions(config: Path, server: FakeOpenAIServer) -> tuple[str, str]:
    """Three priced calls in two sessions: a tool call and its answer, then one answer."""
    server.script(
        tool_call_reply(
            ToolCallSpec("call_1", json.dumps({"path": "notes.txt"}), "read_file"),
            usage=Tokens(1000, 100, cache_read=400),
        ),
        text_reply("The notes say: buy milk.", usage=Tokens(2000, 50, reasoning=20)),
        text_reply("Hello.", usage=Tokens(10, 5)),
    )
    first = astrid(config, "run", "--json", "--approve", "deny", "Read my notes.")
    assert first.exit_code == 0, first.output
    second = astrid(config, "run", "--json", "Hi.")
    assert second.exit_code == 0, second.output
    return json.loads(first.stdout)["session_id"], json.loads(second.stdout)["session_id"]


def test_usage_json_carries_exact_costs_per_session_and_in_total(
    config: Path, server: FakeOpenAIServer
) -> None:
    one, two = two_sessions(config, server)
    result = astrid(config, "usage", "--by", "session", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    groups = {g["key"]: g for g in data["groups"]}
    assert set(groups) == {one, two}
    # 1000 in (400 cached, priced as input: no cache rate) + 100 out, then 2000 in + 50 out.
    assert groups[one]["calls"] == 2
    assert groups[one]["input_tokens"] == 3000 and groups[one]["output_tokens"] == 150
    assert groups[one]["cache_read_tokens"] == 400 and groups[one]["reasoning_tokens"] == 20
    assert groups[one]["cost_usd"] == "3.3"
    assert groups[two]["cost_usd"] == "0.02"  # 10 * 1000/1e6 + 5 * 2000/1e6
    assert data["total"]["calls"] == 3 and data["total"]["cost_usd"] == "3.32"
    assert data["by"] == "session" and data["since"] is None


def test_usage_table_by_model_and_the_since_filter(
    config: Path, server: FakeOpenAIServer
) -> None:
    two_sessions(config, server)
    table = astrid(config, "usage", "--by", "model")
    assert table.exit_code == 0, table.output
    header, row = table.stdout.splitlines()
    assert header.split() == ["model", "calls", "input", "output", "cache", "reasoning", "cost"]
    assert row.split() == ["fake-model", "3", "3010", "155", "400", "20", "$3.32"]
    recent = json.loads(astrid(config, "usage", "--since", "1h", "--json").stdout)
    assert recent["total"]["calls"] == 3
    future = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    later = json.loads(astrid(config, "usage", "--since", future, "--json").stdout)
    assert later["total"]["calls"] == 0 and later["total"]["cost_usd"] == "0"
    bad = astrid(config, "usage", "--since", "last tuesday")
    assert bad.exit_code == 2 and "invalid --since 'last tuesday'" in bad.output


def test_usage_of_one_session_by_prefix_in_a_subprocess(
    config: Path, server: FakeOpenAIServer
) -> None:
    one, _two = two_sessions(config, server)
    done = subprocess.run(
        [str(ASTRID), "--config", str(config), "usage", "--session", one[:8], "--by", "day"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )
    assert done.returncode == 0, done.stderr
    [_header, row] = done.stdout.splitlines()
    assert row.split()[0] == datetime.now(UTC).date().isoformat()
    assert row.split()[1:3] == ["2", "3000"] and row.split()[-1] == "$3.30"


def test_doctor_checks_the_totals_and_reports_a_tampered_one(
    config: Path, server: FakeOpenAIServer
) -> None:
    one, _two = two_sessions(config, server)
    ok = astrid(config, "doctor")
    assert ok.exit_code == 0, ok.output
    # two sessions and their one workspace
    assert "ok: 2 sessions checked, 3 budget totals against 3 spend-ledger rows" in ok.stdout
    with open_store(load_config(config)) as store:
        db = store.location()
    assert db is not None
    with sqlite3.connect(db) as raw:
        raw.execute(
            "UPDATE sessions SET state = "
            "json_set(state, '$.budget_snapshot.session_spent_usd', 4.3) WHERE id = ?",
            (one,),
        )
    bad = astrid(config, "doctor", "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    [problem] = report["problems"]
    assert one in problem["location"]
    assert "budget total $4.3 but its 2 spend-ledger row(s) sum to $3.3" in problem["problem"]
    assert "(+1.0 USD: " in problem["problem"]
    assert report["ledger_rows"] == 3 and report["totals_checked"] == 3


def test_doctor_notes_spend_from_before_the_ledger(
    config: Path, server: FakeOpenAIServer
) -> None:
    one, two = two_sessions(config, server)
    with open_store(load_config(config)) as store:
        db = store.location()
    assert db is not None
    with sqlite3.connect(db) as raw:  # as a store migrated from before the ledger holds them
        raw.execute("DELETE FROM ledger")
    result = astrid(config, "doctor")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    assert len(notes) == 3  # both sessions and the workspace
    assert any(one in n and "$3.3 has no spend-ledger rows" in n for n in notes)
    assert any(two in n for n in notes)
    assert all("before the ledger existed" in n and "not checked" in n for n in notes)


def test_parse_since_takes_relative_and_iso_times() -> None:
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert parse_since("7d", now) == now - timedelta(days=7)
    assert parse_since("24h", now) == now - timedelta(hours=24)
    assert parse_since("2026-12-01", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_since("2026-12-01T09:30+01:00", now) == datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
    assert parse_since("2026-12-01T09:30Z", now) == datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="invalid --since"):
        parse_since("soon", now)
