"""``astrid run PROMPT``: one turn with the configured provider, approvals, sessions, JSON.

Real parts: the ``astrid`` console script in subprocesses (a pseudo-terminal for ``--approve
ask``), click's runner in-process, the SQLite store under a temporary ``ASTRID_HOME``, TOML
configs naming the ``scripted`` provider or the ``astrid-openai`` plugin on the loopback
``FakeOpenAIServer``.
"""

from __future__ import annotations

import json
import os
import pty
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from astrid.cli import cli
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
KEY_ENV = "ASTRID_TEST_RUN_KEY"
NOTES = "buy milk\n"


@dataclass
class Env:
    root: Path
    home: Path
    workspace: Path

    def scripted(self, *turns: list[dict[str, Any]], extra: str = "") -> Path:
        """A config on the scripted provider replaying ``turns`` (one process, one script)."""
        script = self.root / f"script-{secrets.token_hex(4)}.json"
        script.write_text(json.dumps(list(turns)), encoding="utf-8")
        return self._config(
            f'[llm]\nprovider = "scripted"\n[llm.options]\nscript_file = "{script}"\n{extra}'
        )

    def openai(self, server: FakeOpenAIServer) -> Path:
        """A config on the astrid-openai plugin talking to ``server``."""
        return self._config(
            '[llm]\nprovider = "openai"\n[llm.options]\nmodel = "fake-model"\n'
            f'base_url = "{server.base_url}"\napi_key_env = "{KEY_ENV}"\nmax_retries = 0\n'
            '[pricing."fake-model"]\ninput_per_million = 1000.0\noutput_per_million = 2000.0\n'
        )

    def _config(self, body: str) -> Path:
        config = self.root / f"astrid-{secrets.token_hex(4)}.toml"
        config.write_text(
            f'{body}\n[runtime]\nworkspace_root = "{self.workspace}"\n', encoding="utf-8"
        )
        return config


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    home = tmp_path / "home"
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / "notes.txt").write_text(NOTES, encoding="utf-8")
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    load_plugins()
    yield Env(tmp_path, home, workspace)
    load_plugins()


@pytest.fixture
def api_key() -> str:
    return f"sk-test-{secrets.token_hex(16)}"


@pytest.fixture
def server(api_key: str) -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=api_key, io_timeout_s=10.0) as fake:
        yield fake


def astrid(config: Path, *args: str, input: str | None = None) -> Result:
    """``astrid --config CONFIG ARGS`` in-process (stdin is not a terminal)."""
    return CliRunner().invoke(cli, ["--config", str(config), *args], input=input)


def astrid_process(
    config: Path, *args: str, input: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed console script in a subprocess (the test's environment by default)."""
    return subprocess.run(
        [str(ASTRID), "--config", str(config), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else dict(os.environ),
    )


def tool_turn(name: str, **arguments: Any) -> list[dict[str, Any]]:
    call = {"id": "call_1", "name": name, "arguments": arguments}
    return [{"tool_call": call}, {"usage": {"input_tokens": 10, "output_tokens": 5}}]


def answer(text: str) -> list[dict[str, Any]]:
    return [{"text": text}, {"usage": {"input_tokens": 20, "output_tokens": 5}}]


def stored_user_texts(config: Path, session_id: str) -> list[str]:
    with open_store(load_config(config)) as store:
        session = store.load(session_id)
        assert session is not None
        return [m.text() or "" for m in session.messages if m.role == "user"]


# -- against the OpenAI-compatible fake server (real subprocesses) ----------------------------


def test_a_plain_answer_from_the_configured_openai_provider(
    env: Env, server: FakeOpenAIServer, api_key: str
) -> None:
    server.script(text_reply("Four.", pieces=2, usage=Tokens(1000, 100)))
    config = env.openai(server)
    done = astrid_process(config, "run", "What is 2+2?", env={**os.environ, KEY_ENV: api_key})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("session ")
    assert lines[-1] == "  Four.  ($1.20)"  # 1000 in at $1000/M + 100 out at $2000/M
    body = server.requests[0].json()
    assert body["model"] == "fake-model"
    assert body["messages"][-1] == {"role": "user", "content": "What is 2+2?"}
    session_id = lines[0].removeprefix("session ")
    assert stored_user_texts(config, session_id) == ["What is 2+2?"]


def test_json_output_carries_the_session_text_tool_calls_usage_and_cost(
    env: Env, server: FakeOpenAIServer, api_key: str
) -> None:
    server.script(
        tool_call_reply(
            ToolCallSpec("call_1", json.dumps({"path": "notes.txt"}), "read_file"),
            usage=Tokens(1000, 100),
        ),
        text_reply("The notes say: buy milk.", usage=Tokens(2000, 50)),
    )
    config = env.openai(server)
    done = astrid_process(
        config, "run", "--json", "--approve", "deny", "Read my notes.",
        env={**os.environ, KEY_ENV: api_key},
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)  # one JSON object, nothing else on stdout
    assert data["text"] == "The notes say: buy milk."
    assert data["approve"] == "deny"
    assert data["usage"]["input_tokens"] == 3000 and data["usage"]["output_tokens"] == 150
    assert data["cost_usd"] == pytest.approx(3.0 + 0.3)
    [call] = data["tool_calls"]
    assert call["name"] == "read_file" and call["arguments"] == {"path": "notes.txt"}
    assert call["is_error"] and "was not run" in call["result"]
    assert stored_user_texts(config, data["session_id"]) == ["Read my notes."]
    # the model got the refusal, not the file
    assert NOTES.strip() not in json.dumps(server.requests[1].json())


def test_the_prompt_can_come_from_standard_input(
    env: Env, server: FakeOpenAIServer, api_key: str
) -> None:
    server.script(text_reply("Hello!"))
    config = env.openai(server)
    done = astrid_process(
        config, "run", "-", input="say hello\n", env={**os.environ, KEY_ENV: api_key}
    )
    assert done.returncode == 0, done.stderr
    assert server.requests[0].json()["messages"][-1]["content"] == "say hello"
    assert done.stdout.splitlines()[-1].startswith("  Hello!")


def test_a_missing_api_key_is_one_line_naming_the_variable(
    env: Env, server: FakeOpenAIServer, api_key: str
) -> None:
    config = env.openai(server)
    environ = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    done = astrid_process(config, "run", "hi", env=environ)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("astrid: error: ") and KEY_ENV in line
    assert server.requests == []


def test_a_wrong_api_key_is_one_line_and_never_printed(
    env: Env, server: FakeOpenAIServer, api_key: str
) -> None:
    wrong = f"sk-wrong-{secrets.token_hex(16)}"
    config = env.openai(server)
    done = astrid_process(config, "run", "hi", env={**os.environ, KEY_ENV: wrong})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert wrong not in done.stdout + done.stderr


# -- approvals ------------------------------------------------------------------------------


def test_a_tool_call_under_approve_deny_is_not_run(env: Env) -> None:
    target = env.workspace / "out.txt"
    config = env.scripted(tool_turn("write_file", path="out.txt", content="x"), answer("Sorry."))
    result = astrid(config, "run", "--approve", "deny", "write out.txt")
    assert result.exit_code == 0, result.stderr
    assert not target.exists()
    assert "-> denied (--approve deny)" in result.stdout
    assert "Tool write_file was not run" in result.stdout


def test_deny_is_the_default_without_a_terminal_and_ask_is_refused(env: Env) -> None:
    config = env.scripted(tool_turn("write_file", path="out.txt", content="x"), answer("No."))
    result = astrid(config, "run", "write out.txt")  # CliRunner's stdin is not a terminal
    assert result.exit_code == 0, result.stderr
    assert "-> denied (--approve deny)" in result.stdout
    assert not (env.workspace / "out.txt").exists()
    refused = astrid(config, "run", "--approve", "ask", "write out.txt")
    assert refused.exit_code == 2
    assert refused.stderr.splitlines() == [
        "astrid: error: --approve ask needs a terminal on standard input; use --approve deny "
        "or policy"
    ]


def run_on_a_terminal(config: Path, prompt: str, keys: bytes) -> tuple[int, str]:
    """``astrid run --approve ask`` with a pseudo-terminal on stdin; ``keys`` are typed."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        [str(ASTRID), "--config", str(config), "run", "--approve", "ask", prompt],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    os.write(master, keys)
    deadline = time.monotonic() + 60
    try:
        while process.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    os.read(master, 4096)  # the terminal's echo
                except OSError:
                    break
        out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return process.returncode, out + err


def test_ask_on_a_terminal_then_policy_honours_the_stored_workspace_allowance(env: Env) -> None:
    read = tool_turn("read_file", path="notes.txt")
    # 1. asked on the terminal, answered "w": approved for this workspace
    config = env.scripted(read, answer("Milk."))
    code, output = run_on_a_terminal(config, "read my notes", b"w\n")
    assert code == 0, output
    assert "approve Read: " in output and "-> approved for this workspace" in output
    assert "[tool] read_file" in output and "(error)" not in output
    # 2. a new session under --approve policy: the stored workspace allowance lets it run
    config = env.scripted(read, answer("Milk again."))
    allowed = astrid(config, "run", "--approve", "policy", "--json", "read my notes again")
    assert allowed.exit_code == 0, allowed.stderr
    [call] = json.loads(allowed.stdout)["tool_calls"]
    assert not call["is_error"] and NOTES.strip() in call["result"]
    # 3. what no allowance covers needs a human: denied, not run
    config = env.scripted(tool_turn("write_file", path="new.txt", content="x"), answer("No."))
    denied = astrid(config, "run", "--approve", "policy", "--json", "write new.txt")
    assert denied.exit_code == 0, denied.stderr
    [call] = json.loads(denied.stdout)["tool_calls"]
    assert call["is_error"] and "--approve policy" in call["result"]
    assert not (env.workspace / "new.txt").exists()


def test_answering_n_on_the_terminal_denies(env: Env) -> None:
    config = env.scripted(tool_turn("write_file", path="out.txt", content="x"), answer("OK."))
    code, output = run_on_a_terminal(config, "write out.txt", b"n\n")
    assert code == 0, output
    assert "-> denied" in output
    assert not (env.workspace / "out.txt").exists()


# -- sessions and budgets -------------------------------------------------------------------


def test_a_unique_prefix_continues_a_stored_session(env: Env) -> None:
    first = astrid(env.scripted(answer("One.")), "run", "--json", "first")
    assert first.exit_code == 0, first.stderr
    session_id = json.loads(first.stdout)["session_id"]
    config = env.scripted(answer("Two."))
    again = astrid(config, "run", "--json", "--session", session_id[:8], "second")
    assert again.exit_code == 0, again.stderr
    assert json.loads(again.stdout)["session_id"] == session_id
    assert stored_user_texts(config, session_id) == ["first", "second"]


def test_an_ambiguous_or_unknown_prefix_is_a_one_line_error_naming_it(env: Env) -> None:
    config = env.scripted(answer("unused"))
    with open_store(load_config(config)) as store:
        for last in "12":  # two sessions whose ids share the prefix c0ffee
            sid = f"c0ffee0{last}-0000-4000-8000-{last * 12}"
            store.save(store.new_session("s", session_id=sid))
    prefix = "c0ffee"
    ambiguous = astrid(config, "run", "--session", prefix, "hi")
    assert ambiguous.exit_code == 2
    [line] = ambiguous.stderr.splitlines()
    assert f"session id prefix {prefix!r} is ambiguous" in line
    unknown = astrid(config, "run", "--session", "fffffff", "hi")
    assert unknown.exit_code == 3
    assert unknown.stderr.splitlines() == [
        "astrid: error: no session id starts with 'fffffff' in the sqlite store"
    ]


def test_a_turn_over_budget_exits_4_with_one_line(env: Env) -> None:
    config = env.scripted(answer("Too dear."), extra="[budget]\nsession_max_usd = 0.0\n")
    result = astrid(config, "run", "hi")
    assert result.exit_code == 4
    [line] = result.stderr.splitlines()
    assert line.startswith("astrid: error: ") and "budget" in line.lower()


def test_an_empty_prompt_from_stdin_is_a_usage_error(env: Env) -> None:
    config = env.scripted(answer("unused"))
    result = astrid(config, "run", "-", input="  \n")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["astrid: error: the prompt is empty"]
    with open_store(load_config(config)) as store:
        assert store.count() == 0  # nothing was started
