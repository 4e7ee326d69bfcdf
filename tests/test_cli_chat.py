"""``astrid chat``: the installed console script on a real pseudo-terminal (the pty is its
controlling terminal, so Ctrl-C and Ctrl-D are the terminal's own), the scripted provider, the
SQLite store under a temporary ``ASTRID_HOME`` (fixtures and helpers from test_cli_run)."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import subprocess
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from astrid.config import load_config
from astrid.store import open_store
from astrid.testing.fake_llm import FakeOpenAIServer, Tokens, text_reply
from tests.test_cli_run import (
    ASTRID,
    KEY_ENV,
    NOTES,
    Env,
    answer,
    api_key,
    astrid,
    astrid_process,
    env,
    server,
    tool_turn,
)

__all__ = ["api_key", "env", "server"]  # the fixtures, imported for pytest

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _controlling_terminal() -> None:
    """In the child, after setsid: make the pty on fd 0 the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``astrid --config CONFIG chat ARGS`` on a pseudo-terminal; every read is bounded."""

    def __init__(self, config: Path, *args: str, environ: dict[str, str] | None = None) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [str(ASTRID), "--config", str(config), "chat", *args],
            stdin=slave, stdout=slave, stderr=slave, env=environ,
            start_new_session=True, preexec_fn=_controlling_terminal,
        )
        os.close(slave)
        self.output = ""  # everything shown so far (\r\n as \n)
        self.seen = 0  # where the next expect starts looking

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.master, 4096)
        except OSError:  # the child closed the terminal
            return False
        self.output += ANSI.sub("", data.decode("utf-8", "replace")).replace("\r\n", "\n")
        return bool(data)

    def expect(self, text: str, timeout: float = 30.0) -> str:
        """Wait until ``text`` is shown (after what earlier expects matched); what came
        before it."""
        deadline = time.monotonic() + timeout
        while (at := self.output.find(text, self.seen)) < 0:
            left = deadline - time.monotonic()
            if left <= 0 or (not self._read(min(left, 0.2)) and self.process.poll() is not None):
                raise AssertionError(f"{text!r} not shown; the terminal shows:\n{self.output}")
        before = self.output[self.seen:at]
        self.seen = at + len(text)
        return before

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            self._read(0.1)
        return self.process.wait(timeout=1.0)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        os.close(self.master)


@pytest.fixture
def terminals() -> Any:
    opened: list[Terminal] = []

    def start(config: Path, *args: str, environ: dict[str, str] | None = None) -> Terminal:
        terminal = Terminal(config, *args, environ=environ)
        opened.append(terminal)
        return terminal

    yield start
    for terminal in opened:
        terminal.close()


def session_id_of(terminal: Terminal) -> str:
    terminal.expect("session ")
    return terminal.expect(" (")


def stored(config: Path, session_id: str) -> Any:
    with open_store(load_config(config)) as store:
        session = store.load(session_id)
        assert session is not None
        return session


def test_a_plain_exchange_streams_the_text_as_it_arrives(env: Env, terminals: Any) -> None:
    slow = [{"text": "Hello"}, {"sleep": 3}, {"text": " world."},
            {"usage": {"input_tokens": 20, "output_tokens": 5}}]
    config = env.scripted(slow)
    terminal = terminals(config)
    session_id = session_id_of(terminal)
    terminal.expect("you> ")
    terminal.type(b"greet me\n")
    terminal.expect("Hello")
    assert "world" not in terminal.output  # the first piece is shown before the rest exists
    terminal.expect(" world.\n")
    spend = terminal.expect(" this session\n")
    assert re.search(r"\[spend\] \$\d+\.\d{2,6} this turn, \$\d+\.\d{2,6} of \$100\.00", spend)
    terminal.expect("you> ")
    terminal.type(b"\x04")  # Ctrl-D
    assert terminal.wait() == 0
    texts = [(m.role, m.text()) for m in stored(config, session_id).messages]
    assert texts == [("user", "greet me"), ("assistant", "Hello world.")]


def test_a_session_continues_on_the_openai_provider_against_the_fake_server(
    env: Env, terminals: Any, server: FakeOpenAIServer, api_key: str
) -> None:
    server.script(text_reply("One."), text_reply("Four.", pieces=2, usage=Tokens(1000, 100)))
    config = env.openai(server)
    environ = {**os.environ, KEY_ENV: api_key}
    first = astrid_process(config, "run", "--json", "first", env=environ)
    assert first.returncode == 0, first.stderr
    session_id = json.loads(first.stdout)["session_id"]
    terminal = terminals(config, "--session", session_id[:8], environ=environ)
    assert session_id_of(terminal) == session_id
    terminal.expect("you> ")
    terminal.type(b"What is 2+2?\n")
    terminal.expect("Four.\n")
    terminal.expect("[spend] $1.20 this turn")  # 1000 in at $1000/M + 100 out at $2000/M
    terminal.expect("you> ")
    terminal.type(b"\x04")
    assert terminal.wait() == 0
    sent = server.requests[1].json()["messages"]
    assert [m["content"] for m in sent if m["role"] == "user"] == ["first", "What is 2+2?"]


def test_a_tool_call_shows_its_arguments_and_s_approves_it_for_the_session(
    env: Env, terminals: Any
) -> None:
    read = tool_turn("read_file", path="notes.txt")
    config = env.scripted(read, answer("Milk."), read, answer("Milk again."))
    terminal = terminals(config)
    terminal.expect("you> ")
    terminal.type(b"read my notes\n")
    terminal.expect('[call] read_file {"path":"notes.txt"}\n')
    terminal.expect("approve Read: ")
    terminal.expect("[n] deny")
    terminal.type(b"s\n")
    terminal.expect("-> approved for this session\n")
    terminal.expect("Milk.\n")
    terminal.expect("you> ")
    terminal.type(b"read them again\n")  # the session allowance covers it: nobody is asked
    terminal.expect('[call] read_file {"path":"notes.txt"}\n')
    assert "approve" not in terminal.expect("Milk again.\n")
    terminal.expect("you> ")
    terminal.type(b"\x04")
    assert terminal.wait() == 0
    assert NOTES.strip() not in terminal.output  # results go to the model, calls are shown


def test_cost_and_session_commands(env: Env, terminals: Any) -> None:
    config = env.scripted(
        answer("One."), extra="[budget]\nsession_max_usd = 2.0\nworkspace_max_usd = 5.0\n"
    )
    terminal = terminals(config)
    session_id = session_id_of(terminal)
    terminal.expect("you> ")
    terminal.type(b"hi\n")
    terminal.expect("One.\n")
    turn_cost = terminal.expect(" this turn").split("$")[-1]
    terminal.expect("you> ")
    terminal.type(b"/session\n")
    terminal.expect(f"session    {session_id}\n")
    terminal.expect("messages   2\n")
    terminal.expect("model      scripted-1 (scripted)\n")
    terminal.expect("you> ")
    terminal.type(b"/cost\n")
    terminal.expect(f"session    ${turn_cost} of $2.00 (at most $10.00 a call)\n")
    terminal.expect(f"workspace  ${turn_cost} of $5.00\n")
    terminal.expect("you> ")
    terminal.type(b"/compact\n")
    terminal.expect("nothing to compact")  # 2 messages, the 10 most recent are kept
    terminal.expect("you> ")
    terminal.type(b"/help\n")
    terminal.expect("Ctrl-C cancels the running turn; Ctrl-D leaves.")
    terminal.expect("you> ")
    terminal.type(b"\x04")
    assert terminal.wait() == 0


def test_compact_summarizes_the_older_messages_now_and_keeps_them_in_history(
    env: Env, terminals: Any
) -> None:
    config = env.scripted(answer("One."), answer("Two."))
    with config.open("a", encoding="utf-8") as toml:  # the file ends in its [runtime] table
        toml.write("keep_recent_count = 1\n")
    terminal = terminals(config)
    session_id = session_id_of(terminal)
    for prompt, reply in ((b"first\n", "One.\n"), (b"second\n", "Two.\n")):
        terminal.expect("you> ")
        terminal.type(prompt)
        terminal.expect(reply)
    terminal.expect("you> ")
    terminal.type(b"/compact\n")
    terminal.expect("[compact] 3 older messages summarized")
    terminal.expect("you> ")
    terminal.type(b"\x04")
    assert terminal.wait() == 0
    with open_store(config) as store:
        session = store.load(session_id)
        assert session is not None
        assert [m.role.value for m in session.messages] == ["system", "assistant"]
        assert session.messages[-1].text() == "Two."
        history = [m.text() for m in store.history(session_id)]
        assert {"first", "One.", "second"} <= set(history)


def test_ctrl_c_cancels_a_slow_turn_and_the_chat_goes_on(env: Env, terminals: Any) -> None:
    slow = [{"sleep": 60}, {"text": "never shown"}]
    config = env.scripted(answer("First."), slow, answer("After."))
    terminal = terminals(config)
    session_id = session_id_of(terminal)
    terminal.expect("you> ")
    terminal.type(b"one\n")
    terminal.expect("First.\n")
    first_cost = float(terminal.expect(" this turn").split("$")[-1])
    terminal.expect("you> ")
    terminal.type(b"take your time\n")
    time.sleep(1.0)  # the turn is waiting on the model, its estimate reserved
    started = time.monotonic()
    terminal.type(b"\x03")  # Ctrl-C
    terminal.expect("[cancelled]")
    assert time.monotonic() - started < 30  # not the 60 s the model would take
    terminal.expect("you> ")
    # saved at the cancellation: loadable, the question kept, no answer, the reservation released
    cancelled = stored(config, session_id)
    assert [(m.role, m.text()) for m in cancelled.messages] == [
        ("user", "one"), ("assistant", "First."), ("user", "take your time")
    ]
    assert cancelled.budget_tracker.spent() == pytest.approx(first_cost, abs=1e-6)
    terminal.type(b"and now?\n")
    terminal.expect("After.\n")
    terminal.expect("you> ")
    terminal.type(b"\x04")
    assert terminal.wait() == 0
    assert "never shown" not in terminal.output
    final = stored(config, session_id)
    assert [m.text() for m in final.messages][-2:] == ["and now?", "After."]
    assert final.budget_tracker.spent() == pytest.approx(2 * first_cost, abs=1e-6)


def test_ctrl_d_at_the_prompt_leaves_with_exit_0(env: Env, terminals: Any) -> None:
    terminal = terminals(env.scripted(answer("unused")))
    terminal.expect("you> ")
    terminal.type(b"\x04")
    assert terminal.wait() == 0


def test_without_a_terminal_chat_refuses_in_one_line(env: Env) -> None:
    result = astrid(env.scripted(answer("unused")), "chat")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "astrid: error: astrid chat needs a terminal; without one use astrid run PROMPT "
        "(or astrid run - to read it from standard input)"
    ]
    assert result.stdout == ""


def test_ctrl_c_while_an_approval_is_asked_waits_for_the_answer(
    env: Env, terminals: Any
) -> None:
    config = env.scripted(tool_turn("write_file", path="out.txt", content="x"), answer("OK."))
    terminal = terminals(config)
    terminal.expect("you> ")
    terminal.type(b"write out.txt\n")
    terminal.expect("[n] deny")
    time.sleep(0.3)
    terminal.type(b"\x03")
    terminal.expect("(answer the approval first; n denies)")
    terminal.type(b"n\n")
    terminal.expect("-> denied\n")
    terminal.expect("OK.\n")
    terminal.expect("you> ")
    terminal.type(b"\x04")
    assert terminal.wait() == 0
    assert not (env.workspace / "out.txt").exists()


def test_a_turn_over_budget_is_one_line_and_the_chat_goes_on(env: Env, terminals: Any) -> None:
    config = env.scripted(answer("Too dear."), extra="[budget]\nsession_max_usd = 0.0\n")
    terminal = terminals(config)
    terminal.expect("you> ")
    terminal.type(b"hi\n")
    terminal.expect("hi\n")  # the terminal's echo of the input
    line = terminal.expect("\n")
    assert line.startswith("astrid: error: ") and "budget" in line.lower()
    terminal.expect("you> ")
    terminal.type(b"\x04")
    assert terminal.wait() == 0
    assert "Traceback" not in terminal.output and "Too dear." not in terminal.output
