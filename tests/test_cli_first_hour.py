"""Issue 20, the first hour of a new user: money, short ids, prune, import, doctor, progress.

Real parts: the ``astrid`` console script in subprocesses (a pseudo-terminal where the
behaviour depends on a terminal), click's runner in-process, SQLite and file-backend stores
under a temporary ``ASTRID_HOME``, the scripted provider.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from astrid import (
    AgentRuntime,
    AgentSession,
    Message,
    ModelPricing,
    RuntimeConfig,
    open_runtime,
)
from astrid.cli import cli
from astrid.config import load_config
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.money import money, money_json
from astrid.plugins import load_plugins
from astrid.security.budget import BudgetConfig, BudgetTracker
from astrid.store import (
    BatchDeleter,
    HistoryCounter,
    SessionStore,
    StorageBackend,
    WholeLister,
    open_store,
)
from astrid.transfer import ImportResult, import_sessions, session_files
from tests import test_cli_chat
from tests.originals import RUST_DOCUMENT, RUST_ID

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


class Terminal(test_cli_chat.Terminal):
    """``astrid --config CONFIG ARGS`` on a pseudo-terminal (stdin and stdout are a tty)."""

    def __init__(self, env: Env, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(
            [str(ASTRID), "--config", str(env.config), *args],
            stdin=slave, stdout=slave, stderr=slave, env=env.child_env(), cwd=env.root,
            start_new_session=True, preexec_fn=test_cli_chat._controlling_terminal,
        )
        os.close(slave)
        self.output = ""
        self.seen = 0


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


def test_a_reservation_charged_for_missing_usage_is_named_as_it_is(tmp_path: Path) -> None:
    pricing = {"scripted-1": ModelPricing(input_per_million=0.01, output_per_million=0.01)}
    runtime = AgentRuntime(
        ScriptedProvider([[{"text": "no usage reported"}]]),
        config=RuntimeConfig(workspace=tmp_path, pricing=pricing, builtin_prices=False),
    )
    result = asyncio.run(runtime.run_turn(runtime.create_session(), "hi"))
    assert 0 < result.cost_usd < 0.0001  # the reservation: ~1 000 tokens at $0.01 a million
    assert f"charged the reservation ({money(result.cost_usd)})" in " ".join(result.notices)
    assert "($0.0000)" not in " ".join(result.notices)


# -- item 5: short ids -----------------------------------------------------------------------

TWINS = ("abcdef01-0000-4000-8000-000000000001", "abcdef02-0000-4000-8000-000000000002")
"""Two stored sessions whose ids share the 6-digit prefix ``abcdef``."""


def scripted(env: Env, *answers: str) -> None:
    """Configure the scripted provider replaying one text answer per turn."""
    script = env.root / "script.json"
    script.write_text(json.dumps([[{"text": text}] for text in answers]), encoding="utf-8")
    env.configure(f'[llm]\nprovider = "scripted"\n[llm.options]\nscript_file = "{script}"\n')


def save_twins(env: Env) -> None:
    with env.store() as store:
        for sid in TWINS:
            session = AgentSession(session_id=sid)
            session.add_message(Message.user(f"hello from {sid[:8]}"))
            store.save(session)


# Every command that takes a session id, with ``{}`` where the id goes.
ID_COMMANDS = [
    ("sessions", "show", "{}"),
    ("sessions", "export", "{}"),
    ("sessions", "delete", "--yes", "{}"),
    ("run", "--session", "{}", "hi"),
]


def _with(command: tuple[str, ...], ref: str) -> list[str]:
    return [ref if part == "{}" else part for part in command]


@pytest.mark.parametrize("command", ID_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_every_id_taking_command_accepts_a_unique_prefix(
    env: Env, command: tuple[str, ...]
) -> None:
    scripted(env, "Hello again.")
    save_twins(env)
    result = astrid(env, *_with(command, TWINS[1][:8]))
    assert result.exit_code == 0, result.output
    assert TWINS[1] in result.stdout
    with env.store() as store:
        remaining = {row.id for row in store.list_sessions()}
    if command[1] == "delete":
        assert remaining == {TWINS[0]}
    else:
        assert remaining == set(TWINS)


@pytest.mark.parametrize("command", ID_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_an_ambiguous_short_or_unknown_prefix_is_one_line_for_every_command(
    env: Env, command: tuple[str, ...]
) -> None:
    scripted(env, "unused")
    save_twins(env)
    ambiguous = astrid(env, *_with(command, "ABCDEF"))
    assert ambiguous.exit_code == 2
    assert ambiguous.stderr.splitlines() == [
        f"astrid: error: session id prefix 'ABCDEF' is ambiguous: 2 sessions match "
        f"({TWINS[0]}, {TWINS[1]})"
    ]
    short = astrid(env, *_with(command, "abcde"))
    assert short.exit_code == 2
    assert short.stderr.splitlines() == [
        "astrid: error: invalid session id 'abcde': a prefix needs at least 6 hex digits"
    ]
    unknown = astrid(env, *_with(command, "0123456"))
    assert unknown.exit_code == 3
    assert unknown.stderr.splitlines() == [
        "astrid: error: no session id starts with '0123456' in the sqlite store"
    ]
    wrong = astrid(env, *_with(command, "notahex"))
    assert wrong.exit_code == 2 and "invalid session id 'notahex': not a UUID" in wrong.stderr
    with env.store() as store:
        assert {row.id for row in store.list_sessions()} == set(TWINS)  # nothing deleted


def test_chat_continues_a_session_named_by_a_unique_prefix(env: Env) -> None:
    scripted(env, "Hello again.")
    save_twins(env)
    terminal = Terminal(env, "chat", "--session", TWINS[0][:8])
    try:
        terminal.expect(f"session {TWINS[0]} (1 messages)")
        terminal.expect("you> ")
        terminal.type(b"\x04")
        assert terminal.wait() == 0
    finally:
        terminal.close()
    ambiguous = Terminal(env, "chat", "--session", "abcdef")
    try:
        ambiguous.expect("session id prefix 'abcdef' is ambiguous: 2 sessions match")
        assert ambiguous.wait() == 2
    finally:
        ambiguous.close()


# -- item 7: the tail of a long session --------------------------------------------------------


def _replaced_history(store: SessionStore) -> str:
    """A session with 4 replaced and 30 active messages."""
    session = store.new_session("long")
    for i in range(4):
        session.add_message(Message.user(f"old {i}"))
    store.save(session)
    session.clear_messages()
    for i in range(30):
        session.add_message(Message.user(f"message {i + 1}"))
    store.save(session)
    return session.id.bare


def _backend(kind: str, tmp_path: Path) -> StorageBackend:
    if kind == "memory":
        return MemoryBackend()
    if kind == "sqlite":
        return SqliteBackend(tmp_path / "s.db")
    return FileBackend(tmp_path / "sessions")


@pytest.mark.parametrize("backend", ["memory", "sqlite", "file"])
def test_history_count_matches_the_history_on_every_backend(tmp_path: Path, backend: str) -> None:
    made = _backend(backend, tmp_path)
    with SessionStore(made) as store:
        sid = _replaced_history(store)
        assert store.history_count(sid) == len(store.history_entries(sid)) == 34
        assert store.history_count("00000000-0000-4000-8000-000000000000") == 0
    assert isinstance(made, HistoryCounter) == (backend == "sqlite")


def test_show_reads_only_the_last_n_messages(env: Env) -> None:
    with env.store() as store:
        sid = _replaced_history(store)
    shown = astrid(env, "sessions", "show", sid, "--messages", "3")
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "messages:        30 (" in out and "the history keeps 34, replaced ones included" in out
    assert "messages (last 3 of 30):" in out
    assert [line.split() for line in out.splitlines()[-3:]] == [
        ["28", "user", "message", "28"], ["29", "user", "message", "29"],
        ["30", "user", "message", "30"],
    ]
    view = json.loads(astrid(env, "sessions", "show", sid, "--json", "--messages", "2").stdout)
    assert [m["index"] for m in view["messages"]] == [29, 30]
    assert view["message_count"] == 30 and view["history_count"] == 34
    none = json.loads(astrid(env, "sessions", "show", sid, "--json", "--messages", "0").stdout)
    assert none["messages"] == [] and none["message_count"] == 30
    more = json.loads(astrid(env, "sessions", "show", sid, "--json", "--messages", "99").stdout)
    assert [m["index"] for m in more["messages"]] == list(range(1, 31))


# -- item 3: prune asks ----------------------------------------------------------------------


def _stored_ids(env: Env) -> set[str]:
    with env.store() as store:
        return {row.id for row in store.list_sessions(limit=100)}


def test_prune_without_a_terminal_needs_yes_and_prints_a_count(env: Env) -> None:
    save_twins(env)
    refused = astrid_process(env, "sessions", "prune", "--older-than", "0s")
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "astrid: error: sessions prune deletes without asking only with --yes (standard input "
        "is not a terminal); --dry-run counts what it would delete"
    ]
    assert _stored_ids(env) == set(TWINS)
    dry = astrid_process(env, "sessions", "prune", "--older-than", "0s", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would delete 2 session(s) inactive since before ")
    assert dry.stdout.rstrip().endswith("(--verbose lists them)") and TWINS[0] not in dry.stdout
    listed = astrid_process(env, "sessions", "prune", "--older-than", "0s", "--dry-run", "-v")
    assert [line.strip() for line in listed.stdout.splitlines()[1:]] == [TWINS[1], TWINS[0]]
    done = astrid_process(env, "sessions", "prune", "--older-than", "0s", "--yes")
    assert done.returncode == 0, done.stderr
    [line] = done.stdout.splitlines()
    assert line.startswith("deleted 2 session(s) inactive since before ")
    assert _stored_ids(env) == set()


def test_prune_asks_on_a_terminal(env: Env) -> None:
    save_twins(env)
    declined = Terminal(env, "sessions", "prune", "--older-than", "0s")
    try:
        declined.expect("Delete 2 session(s) inactive since before ")
        declined.expect("? [y/N]: ")
        declined.type(b"n\n")
        declined.expect("astrid: error: nothing deleted (--yes deletes without asking)")
        assert declined.wait() == 1
    finally:
        declined.close()
    assert _stored_ids(env) == set(TWINS)
    accepted = Terminal(env, "sessions", "prune", "--older-than", "0s", "--verbose")
    try:
        accepted.expect("? [y/N]: ")
        accepted.type(b"y\n")
        accepted.expect("deleting sessions")  # the progress bar, on the terminal's stderr
        accepted.expect("deleted 2 session(s) inactive since before ")
        accepted.expect(f"  {TWINS[1]}\n")  # newest activity first
        accepted.expect(f"  {TWINS[0]}\n")
        assert accepted.wait() == 0
    finally:
        accepted.close()
    assert _stored_ids(env) == set()


@pytest.mark.parametrize("backend", ["memory", "sqlite", "file"])
def test_all_sessions_is_every_listed_session_newest_first(tmp_path: Path, backend: str) -> None:
    made = _backend(backend, tmp_path)
    with SessionStore(made) as store:
        for i in range(5):
            store.save(store.new_session(f"s{i}"))
        paged = store.list_sessions(limit=50)
        assert len(paged) == 5
        assert store.all_sessions(page=2) == paged  # pages of 2 where it pages
        assert isinstance(made, WholeLister) == (backend == "file")


# -- item 9: import reads <uuid>.json only; doctor reports stray files -------------------------


def _document(sid: str) -> str:
    data = json.loads(RUST_DOCUMENT)
    data["id"] = sid
    return json.dumps(data)


def _sessions_directory(root: Path) -> Path:
    """A Rust-style sessions directory: two ``<uuid>.json``, a document under another name, a
    README, a sub-directory and a hidden file."""
    source = root / "rust-sessions"
    source.mkdir()
    for sid in TWINS:
        (source / f"{sid}.json").write_text(_document(sid), encoding="utf-8")
    (source / "backup.json").write_text(_document(RUST_ID), encoding="utf-8")
    (source / "README.txt").write_text("my sessions\n", encoding="utf-8")
    (source / "old").mkdir()
    (source / ".DS_Store").write_bytes(b"\0")
    return source


def test_import_of_a_directory_reads_only_uuid_named_files_and_names_the_others(
    env: Env,
) -> None:
    source = _sessions_directory(env.root)
    done = astrid_process(env, "sessions", "import", str(source))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"ignored {source / 'README.txt'}: not named <uuid>.json, not read",
        f"ignored {source / 'backup.json'}: not named <uuid>.json, not read",
        f"ignored {source / 'old'}: not named <uuid>.json, not read",
        "imported 2, replaced 0, skipped 0, failed 0, ignored 3 other file(s)",
    ]
    assert _stored_ids(env) == set(TWINS)  # backup.json's session was not imported
    result = import_sessions_of(env, source)
    assert result.ignored == [str(source / n) for n in ("README.txt", "backup.json", "old")]
    assert [p.name for p in session_files(source)[0]] == [f"{sid}.json" for sid in TWINS]


def import_sessions_of(env: Env, source: Path) -> ImportResult:
    with env.store() as store:
        return import_sessions(store, source)


def test_doctor_reports_a_stray_file_in_the_session_directory(env: Env) -> None:
    directory = env.root / "file-sessions"
    env.configure(f'[storage]\nbackend = "file"\n[storage.options]\ndirectory = "{directory}"\n')
    save_twins(env)
    clean = astrid_process(env, "doctor")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert clean.stdout.splitlines()[-1].startswith("ok: 2 sessions checked")
    (directory / "notes.txt").write_text("not a session\n", encoding="utf-8")
    (directory / "backup").mkdir()
    (directory / "lost+found").mkdir()  # a file system's own: not stray
    found = astrid_process(env, "doctor")
    assert found.returncode == 1
    lines = found.stdout.splitlines()
    assert f"{directory / 'backup'}: stray directory: not a session file (<uuid>.json); astrid " \
        "ignores it (move it out of the session directory)" in lines
    assert f"{directory / 'notes.txt'}: stray file: not a session file (<uuid>.json); astrid " \
        "ignores it (move it out of the session directory)" in lines
    assert lines[-1].startswith("2 problem(s); 2 sessions checked")
    report = json.loads(astrid_process(env, "doctor", "--json").stdout)
    assert [p["location"] for p in report["problems"]] == [
        str(directory / "backup"), str(directory / "notes.txt")
    ]


# -- item 7: progress bars on a terminal -----------------------------------------------------


def test_long_commands_show_a_progress_bar_on_a_terminal_and_a_final_count(env: Env) -> None:
    source = _sessions_directory(env.root)
    runs = [
        (("sessions", "import", str(source)), "importing sessions", "imported 2, replaced 0"),
        (("sessions", "export", "--all", "-o", str(env.root / "all.json")),
         "exporting sessions", "exported 2 session(s) to "),
        (("doctor",), "checking sessions", "ok: 2 sessions checked"),
    ]
    for args, label, count in runs:
        terminal = Terminal(env, *args)
        try:
            terminal.expect(label)
            terminal.expect("2/2")
            terminal.expect(count)
            assert terminal.wait() == 0
        finally:
            terminal.close()
    piped = astrid_process(env, "sessions", "export", "--all")
    assert piped.returncode == 0 and len(json.loads(piped.stdout)) == 2
    assert piped.stderr.splitlines() == ["exported 2 session(s)"]  # no bar off a terminal


def test_the_file_backend_prunes_in_batches(tmp_path: Path) -> None:
    backend = FileBackend(tmp_path / "sessions")
    assert isinstance(backend, BatchDeleter)
    with SessionStore(backend) as store:
        ids = [store.new_session(f"s{i}") for i in range(5)]
        for session in ids:
            store.save(session)
        keep = ids[0].id.bare
        gone = store.prune(older_than=timedelta(0))  # all five, in batches of PRUNE_BATCH
        assert sorted(gone) == sorted(s.id.bare for s in ids)
        assert store.count() == 0 and session_files(tmp_path / "sessions") == ([], [])
        assert backend.delete_many([keep, "00000000-0000-4000-8000-000000000000"]) == []
    with SessionStore(FileBackend(tmp_path / "sessions")) as reopened:
        assert reopened.count() == 0  # the index agrees after a reopen


# -- item 6: open_runtime says which configuration file it used ------------------------------


def test_open_runtime_names_the_configuration_it_found(
    env: Env, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = env.root / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    caplog.set_level(logging.INFO, logger="astrid.runtime")
    with open_runtime() as defaults:  # no ./astrid.toml, no <home>/config.toml
        assert defaults.config_path is None
    assert f"open_runtime: no configuration file; the defaults (home {env.home})" in caplog.text
    (folder / "astrid.toml").write_text('[runtime]\nsystem_prompt = "from the folder"\n')
    caplog.clear()
    with open_runtime() as found:  # discovered in the current directory
        assert found.config_path == folder / "astrid.toml"
        assert found.config.system_prompt == "from the folder"
    [record] = [r for r in caplog.records if r.message.startswith("open_runtime:")]
    assert record.levelno == logging.INFO
    path = folder / "astrid.toml"
    assert record.message == f"open_runtime: configuration {path} (home {env.home})"
    with open_runtime("astrid.toml") as relative:  # a relative path is reported absolute
        assert relative.config_path == folder / "astrid.toml"
