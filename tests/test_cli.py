"""The ``astrid`` command: every command and its error paths, against a real temporary home.

Most tests use click's ``CliRunner``; some run ``python -m astrid.cli`` in a subprocess to check
what a user really sees (exit codes, one-line errors, no traceback without ``--debug``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from astrid import Message, SessionDocument
from astrid.cli import cli, main, parse_duration
from astrid.config import load_config
from astrid.default_plugins.sqlite_storage import SqliteBackend, SqliteOptions, resolve_path
from astrid.errors import SerializationError
from astrid.hookspecs import hookimpl
from astrid.plugins import load_plugins, register_plugin, unregister_plugin
from astrid.security.allowances import Allowance, ExactTool
from astrid.security.escape import EscapeDecision, EscapeOperation, EscapeRequest
from astrid.security.kv import KvStore, namespaces_of
from astrid.store import SessionStore, open_store
from astrid.timeutil import format_rfc3339, utcnow
from tests.originals import RUST_DOCUMENT, RUST_ID

ROOT = Path(__file__).resolve().parent.parent


# spec/original-runtime.md §2.7, verbatim: a document as the Rust astrid writes it.
@dataclass(frozen=True)
class Env:
    """The temporary home, working directory and the environment of a subprocess."""

    root: Path
    home: Path
    work: Path

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASTRID_")}
        env["ASTRID_HOME"] = str(self.home)
        env["PYTHONPATH"] = str(ROOT)
        return env


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    home = tmp_path / "home"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.delenv("ASTRID_CONFIG", raising=False)
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    monkeypatch.chdir(work)
    load_plugins()
    yield Env(tmp_path, home, work)
    load_plugins()


def astrid(*args: str, input: str | None = None) -> Result:
    """Run the command in-process (CliRunner); stdout and stderr are kept apart."""
    return CliRunner().invoke(cli, list(args), input=input)


def astrid_process(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m astrid.cli`` in a subprocess with the test's home and cwd."""
    return subprocess.run(
        [sys.executable, "-m", "astrid.cli", *args],
        capture_output=True,
        text=True,
        env=env.child_env(),
        cwd=env.work,
        timeout=120,
    )


def one_error_line(stderr: str) -> str:
    """The single ``astrid: error:`` line of stderr (asserting there is exactly one line)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("astrid: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def file_config(env: Env, name: str = "file") -> Path:
    base = env.root / name
    return write_config(
        env.root / f"{name}.toml",
        f'[storage]\nbackend = "file"\n[storage.options]\ndirectory = "{base}/sessions"\n'
        f'[capabilities]\nstore = "file"\n[capabilities.options]\ndirectory = "{base}/caps"\n',
    )


def sqlite_config(env: Env, name: str = "sql") -> Path:
    base = env.root / name
    return write_config(
        env.root / f"{name}.toml",
        f'[storage]\nbackend = "sqlite"\n[storage.options]\npath = "{base}/astrid.db"\n'
        f'[capabilities]\nstore = "sqlite"\n[capabilities.options]\npath = "{base}/caps.db"\n',
    )


def store_for(config: Path | None = None) -> SessionStore:
    return open_store(load_config(config))


def make_session(store: SessionStore, n: int, *, workspace: Path | None = None) -> str:
    session = store.new_session(f"prompt {n}")
    if workspace is not None:
        session.with_workspace(workspace)
    for i in range(n):
        session.add_message(Message.user(f"question {i}"))
        session.add_message(Message.assistant(f"answer {i}"))
    store.save(session)
    return session.id.bare


def rust_doc(session_id: str = RUST_ID, last_updated: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(RUST_DOCUMENT)
    data["id"] = session_id
    if last_updated is not None:
        data["budget_snapshot"]["last_updated"] = last_updated
    return data


# -- help, version, entry point -------------------------------------------------------------

COMMANDS = [
    [],
    ["sessions"],
    ["sessions", "list"],
    ["sessions", "show"],
    ["sessions", "export"],
    ["sessions", "import"],
    ["sessions", "delete"],
    ["sessions", "prune"],
    ["config"],
    ["config", "init"],
    ["config", "show"],
    ["config", "validate"],
    ["config", "path"],
    ["plugins"],
    ["migrate"],
    ["doctor"],
    ["demo"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "astrid")
def test_every_command_has_help_saying_what_it_does(command: list[str]) -> None:
    result = astrid(*command, "--help")
    assert result.exit_code == 0, result.output
    usage, _, rest = result.stdout.partition("\n\n")
    assert usage.startswith("Usage: ")
    assert rest.split("\n")[0].strip(), "the first help line says what the command does"


def test_version_and_main_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert "astrid" in capsys.readouterr().out


def test_usage_error_exits_2() -> None:
    assert astrid("sessions", "frobnicate").exit_code == 2
    assert astrid("sessions", "list", "--limit", "-1").exit_code == 2
    assert astrid("sessions", "prune").exit_code == 2  # --older-than is required


# -- sessions list ----------------------------------------------------------------------------


def test_list_pages_newest_first_and_filters_by_workspace(env: Env) -> None:
    assert astrid("sessions", "list").stdout.strip() == "no sessions"
    ws = env.root / "ws"
    with store_for() as store:
        ids = [make_session(store, n, workspace=ws if n == 2 else None) for n in (1, 2, 3)]
    newest_first = list(reversed(ids))

    result = astrid("sessions", "list", "--limit", "2")
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["id", "updated", "messages", "tokens", "title", "workspace"]
    assert [line.split()[0] for line in lines[1:3]] == newest_first[:2]
    assert "1-2 of 3; next page: --offset 2" in result.stdout

    page = json.loads(astrid("sessions", "list", "--offset", "2", "--json").stdout)
    assert page["total"] == 3 and [s["id"] for s in page["sessions"]] == newest_first[2:]
    assert page["sessions"][0]["message_count"] == 2

    only = json.loads(astrid("sessions", "list", "--workspace", str(ws), "--json").stdout)
    assert [s["id"] for s in only["sessions"]] == [ids[1]]
    assert only["sessions"][0]["workspace_path"] == str(ws)


# -- show, delete: missing and invalid ids --------------------------------------------------


def test_show_missing_session_exits_3_and_invalid_id_is_one_line() -> None:
    missing = str(uuid.uuid4())
    result = astrid("sessions", "show", missing)
    assert result.exit_code == 3
    assert missing in one_error_line(result.stderr)
    assert "not found" in result.stderr

    bad = astrid("sessions", "show", "not-a-uuid")
    assert bad.exit_code == 2
    assert "invalid session id 'not-a-uuid'" in one_error_line(bad.stderr)
    assert astrid("sessions", "delete", "--yes", missing).exit_code == 3
    assert astrid("sessions", "export", missing).exit_code == 3


def test_show_prints_messages_metadata_budget_allowances_git_and_parent(env: Env) -> None:
    with store_for() as store:
        parent = store.new_session("You are the parent.")
        parent.add_message(Message.user("hello"))
        store.save(parent)
        child = parent.child("You are the child.")
        child.add_message(Message.user("a sub task"))
        child.budget_tracker.record_cost(0.25)
        store.save(child)
        child_id = child.id.bare
    result = astrid("sessions", "show", child_id)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"session {child_id}" in out
    assert f"parent:          {parent.id.bare}" in out
    assert "$0.25 spent of $100.00" in out
    assert "allowances:      0" in out and "git:             -" in out
    assert out.splitlines()[-1].split() == ["1", "user", "a", "sub", "task"]

    view = json.loads(astrid("sessions", "show", child_id, "--json", "--messages", "0").stdout)
    assert view["parent_id"] == parent.id.bare and view["messages"] == []
    assert view["message_count"] == 1 and view["budget"]["spent_usd"] == 0.25


# -- import / show / export of the original's documents -------------------------------------


def test_import_rust_document_then_show_and_export_round_trip(env: Env) -> None:
    source = env.work / "rust.json"
    source.write_text(RUST_DOCUMENT, encoding="utf-8")
    result = astrid("sessions", "import", str(source))
    assert result.exit_code == 0, result.output
    assert "imported 1, replaced 0, skipped 0, failed 0" in result.stdout

    shown = astrid("sessions", "show", RUST_ID)
    assert shown.exit_code == 0
    for expected in (
        "git:             main @ 0123abcd...",
        "model:           claude-sonnet-4-20250514",
        "budget:          $0.0123 spent of $100.00",
        "messages:        4 (205 tokens)",
        '-> read_file {"file_path":"/ws/a.txt"}',
        "<- call_1: hello",
        "It says hello",
        "updated:         2026-02-22 03:50:00Z",  # the document's last save, not the import
    ):
        assert expected in shown.stdout, expected

    exported = astrid("sessions", "export", RUST_ID)
    assert exported.exit_code == 0
    expected_doc = SessionDocument.from_json_text(RUST_DOCUMENT).to_data()
    assert json.loads(exported.stdout) == expected_doc
    assert exported.stdout.startswith('{\n  "id": ')  # the original's pretty format

    again = astrid("sessions", "import", str(source))
    assert again.exit_code == 0 and "skipped 1" in again.stdout and "--overwrite" in again.stdout
    replaced = astrid("sessions", "import", "--overwrite", str(source))
    assert replaced.exit_code == 0 and "replaced 1" in replaced.stdout

    # JSON Lines out of the default SQLite store, into a file store: the same documents.
    out = env.work / "all.jsonl"
    assert astrid("sessions", "export", "--all", "--format", "jsonl", "-o", str(out)).exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(out.read_text().splitlines()) == 1
    files = file_config(env)
    into_files = astrid("--config", str(files), "sessions", "import", str(out))
    assert into_files.exit_code == 0 and "imported 1" in into_files.stdout
    stored = env.root / "file" / "sessions" / f"{RUST_ID}.json"
    on_disk = SessionDocument.from_json_text(stored.read_bytes()).to_data()
    assert on_disk.pop("astrid_revision") == 1  # the file backend's own keys ride along
    # The document's last activity (its budget's last_updated), with the digits it was written with.
    assert on_disk.pop("astrid_updated_at") == "2026-02-22T03:50:00.000000001Z"
    assert on_disk == expected_doc


def test_import_directory_written_by_the_rust_astrid(env: Env) -> None:
    sessions = env.root / "rust-home" / "sessions"
    sessions.mkdir(parents=True)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for sid in ids:
        (sessions / f"{sid}.json").write_text(json.dumps(rust_doc(sid), indent=2))
    (sessions / f"{ids[0]}.json.tmp").write_text("{half")  # the original's temp file: ignored
    result = astrid("sessions", "import", str(sessions))
    assert result.exit_code == 0, result.output
    assert "imported 3" in result.stdout
    listed = json.loads(astrid("sessions", "list", "--json").stdout)
    assert sorted(s["id"] for s in listed["sessions"]) == sorted(ids)


def test_import_reports_each_bad_document_and_continues(env: Env) -> None:
    good, bad_user = str(uuid.uuid4()), str(uuid.uuid4())
    broken = rust_doc(bad_user)
    broken["user_id"] = "xyz"
    lines = [json.dumps(rust_doc(good)), "{not json", json.dumps(broken), ""]
    source = env.work / "mixed.jsonl"
    source.write_text("\n".join(lines), encoding="utf-8")
    result = astrid("sessions", "import", str(source))
    assert result.exit_code == 1
    errors = result.stderr.splitlines()
    assert len(errors) == 2 and "Traceback" not in result.stderr
    assert errors[0].startswith(f"astrid: error: {source}:2: invalid JSON")
    assert errors[1].startswith(f"astrid: error: {source}:3: ") and "user_id" in errors[1]
    assert "imported 1, replaced 0, skipped 0, failed 2" in result.stdout
    assert astrid("sessions", "show", good).exit_code == 0

    array = env.work / "array.json"
    array.write_text(json.dumps([rust_doc(str(uuid.uuid4())), {"id": "nope"}]))
    result = astrid("sessions", "import", "--format", "json", str(array))
    assert result.exit_code == 1
    assert f"astrid: error: {array}[1]: " in result.stderr
    assert "imported 1" in result.stdout

    assert astrid("sessions", "import", str(env.work / "absent.json")).exit_code == 2


def test_export_needs_ids_or_all(env: Env) -> None:
    assert astrid("sessions", "export").exit_code == 2
    assert astrid("sessions", "export", "--all", RUST_ID).exit_code == 2
    empty = astrid("sessions", "export", "--all")
    assert empty.exit_code == 0 and json.loads(empty.stdout) == []
    with store_for() as store:
        ids = [make_session(store, 1), make_session(store, 2)]
    both = json.loads(astrid("sessions", "export", *ids).stdout)
    assert [d["id"] for d in both] == ids and len(both[1]["messages"]) == 4


# -- delete and prune -------------------------------------------------------------------------


def test_delete_asks_unless_yes(env: Env) -> None:
    with store_for() as store:
        sid = make_session(store, 1)
    refused = astrid("sessions", "delete", sid, input="n\n")
    assert refused.exit_code == 1 and "Delete session" in refused.stderr
    assert astrid("sessions", "show", sid).exit_code == 0
    accepted = astrid("sessions", "delete", sid, input="y\n")
    assert accepted.exit_code == 0 and f"deleted {sid}" in accepted.stdout
    assert astrid("sessions", "show", sid).exit_code == 3
    with store_for() as store:
        other = make_session(store, 1)
    assert astrid("sessions", "delete", "--yes", other).exit_code == 0


def test_a_delete_nobody_answers_says_so_in_one_line_and_keeps_the_session(env: Env) -> None:
    with store_for() as store:
        sid = make_session(store, 1)
    for answer in ("", "n\n"):  # end of input (a pipe, no terminal), then a plain "no"
        result = astrid("sessions", "delete", sid, input=answer)
        assert result.exit_code == 1
        assert "Aborted" not in result.stderr
        [line] = [x for x in result.stderr.splitlines() if x.startswith("astrid:")]
        assert line == f"astrid: error: session {sid} not deleted (--yes deletes without asking)"
        assert astrid("sessions", "show", sid).exit_code == 0


def test_prune_by_last_activity_with_dry_run(env: Env) -> None:
    old, recent = str(uuid.uuid4()), str(uuid.uuid4())
    docs = [
        rust_doc(old, last_updated="2020-01-01T00:00:00Z"),
        rust_doc(recent, last_updated=format_rfc3339(utcnow() - timedelta(days=1))),
    ]
    source = env.work / "docs.json"
    source.write_text(json.dumps(docs))
    assert astrid("sessions", "import", str(source)).exit_code == 0

    dry = astrid("sessions", "prune", "--older-than", "30d", "--dry-run", "--verbose")
    assert dry.exit_code == 0
    assert "would delete 1 session(s)" in dry.stdout and old in dry.stdout
    assert recent not in dry.stdout
    assert astrid("sessions", "show", old).exit_code == 0

    report = json.loads(
        astrid("sessions", "prune", "--older-than", "2w", "--yes", "--json").stdout
    )
    assert report["sessions"] == [old] and report["dry_run"] is False
    assert astrid("sessions", "show", old).exit_code == 3
    assert astrid("sessions", "show", recent).exit_code == 0

    bad = astrid("sessions", "prune", "--older-than", "soon")
    assert bad.exit_code == 2 and "invalid duration" in bad.stderr


def test_parse_duration() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("1d12h") == timedelta(hours=36)
    for bad in ("", "30", "d", "3x", "-1d", "1d garbage"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- config -----------------------------------------------------------------------------------


def test_config_init_show_validate_and_path(env: Env) -> None:
    path = astrid("config", "path")
    assert path.stdout.splitlines() == ["(none: defaults)", f"home: {env.home}"]
    assert astrid("config", "validate").stdout.strip() == "ok: (none: defaults)"

    init = astrid("config", "init")
    target = env.home / "config.toml"
    assert init.exit_code == 0 and target.is_file() and f"wrote {target}" in init.stdout
    again = astrid("config", "init")
    assert again.exit_code == 1 and "--force" in one_error_line(again.stderr)
    assert astrid("config", "init", "--force").exit_code == 0
    assert astrid("config", "path").stdout.splitlines()[0] == str(target)
    assert astrid("config", "validate").stdout.strip() == f"ok: {target}"

    custom = write_config(env.work / "astrid.toml", "[budget]\nsession_max_usd = 5.0\n")
    shown = json.loads(astrid("config", "show", "--json").stdout)
    assert shown["file"] == str(custom)
    assert shown["config"]["budget"]["session_max_usd"] == 5.0
    assert shown["sources"]["budget.session_max_usd"] == str(custom)
    assert shown["sources"]["storage.backend"] == "default"
    assert shown["config"]["storage"]["options"]["busy_timeout_ms"] == 5000  # plugin default
    text = astrid("config", "show").stdout
    assert any(
        line.split() == ["budget.session_max_usd", "5.0", str(custom)] for line in text.splitlines()
    )
    assert any(
        line.split() == ["storage.backend", '"sqlite"', "default"] for line in text.splitlines()
    )


def test_bad_config_is_one_line_naming_file_and_key(env: Env) -> None:
    bad = write_config(env.work / "astrid.toml", '[storage]\nbakend = "sqlite"\n')
    for command in (["sessions", "list"], ["config", "validate"], ["doctor"], ["config", "show"]):
        result = astrid(*command)
        assert result.exit_code == 1, command
        line = one_error_line(result.stderr)
        assert str(bad) in line and "storage.bakend" in line
    # `config path` still finds the broken file.
    assert astrid("config", "path").stdout.splitlines()[0] == str(bad)
    unknown = write_config(env.work / "astrid.toml", '[storage]\nbackend = "cloud"\n')
    line = one_error_line(astrid("sessions", "list").stderr)
    assert str(unknown) in line and "'cloud'" in line and "sqlite" in line
    missing = astrid("--config", str(env.work / "nope.toml"), "sessions", "list")
    assert missing.exit_code == 1 and "config file not found" in one_error_line(missing.stderr)


# -- plugins ----------------------------------------------------------------------------------


def test_plugins_lists_versions_hooks_and_implementations() -> None:
    text = astrid("plugins").stdout
    assert "astrid.default_plugins.sqlite_storage" in text
    assert "register_storage_backends" in text
    data = json.loads(astrid("plugins", "--json").stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    file_plugin = by_name["astrid.default_plugins.file_storage"]
    assert file_plugin["version"] and file_plugin["hooks"] == ["register_storage_backends"]
    storage = {i["name"] for i in data["implementations"]["storage"]}
    assert {"file", "memory", "sqlite"} <= storage
    assert set(data["implementations"]) >= {"storage", "token_estimator", "git_capture"}


# -- doctor -----------------------------------------------------------------------------------


def test_doctor_ok_on_an_empty_and_a_healthy_store() -> None:
    result = astrid("doctor")
    assert result.exit_code == 0 and "ok: 0 sessions checked" in result.stdout
    with store_for() as store:
        make_session(store, 2)
    result = astrid("doctor")
    assert result.exit_code == 0, result.output
    assert "schema version" in result.stdout and "ok: 1 sessions checked" in result.stdout


def test_corrupt_file_store_doctor_reports_the_path_and_list_still_works(env: Env) -> None:
    config = file_config(env)
    with store_for(config) as store:
        ids = [make_session(store, 1), make_session(store, 2)]
    broken = env.root / "file" / "sessions" / f"{uuid.uuid4()}.json"
    broken.write_text('{"id": ', encoding="utf-8")

    listed = astrid("--config", str(config), "sessions", "list", "--json")
    assert listed.exit_code == 0
    assert sorted(s["id"] for s in json.loads(listed.stdout)["sessions"]) == sorted(ids)
    assert "astrid doctor" in listed.stderr

    result = astrid("--config", str(config), "doctor")
    assert result.exit_code == 1
    assert f"{broken}: invalid JSON" in result.stdout
    assert "1 problem(s)" in result.stdout
    report = json.loads(astrid("--config", str(config), "doctor", "--json").stdout)
    assert report["ok"] is False and report["sessions_checked"] == 2
    assert [p["location"] for p in report["problems"]] == [str(broken)]
    # A corrupt session can still be deleted.
    sid = broken.name.removesuffix(".json")
    assert astrid("--config", str(config), "sessions", "delete", "--yes", sid).exit_code == 0
    assert astrid("--config", str(config), "doctor").exit_code == 0


def test_doctor_says_once_that_the_configured_model_is_priced_by_default(env: Env) -> None:
    config = env.root / "priced.toml"
    base = '[llm]\nprovider = "scripted"\n[llm.options]\nmodel = "house-model-7"\n'
    config.write_text(base + "[pricing.default]\ninput_per_million = 9.0\n", encoding="utf-8")
    result = astrid("--config", str(config), "doctor")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: model 'house-model-7' (key 'llm.options.model') has no [pricing] entry and no "
        "built-in price; it is priced by [pricing.default] ($9 input, $15 output per million "
        "tokens)"
    ]
    config.write_text(base + '[pricing."house-model-7"]\ninput_per_million = 1.0\n')
    assert "note: " not in astrid("--config", str(config), "doctor").stdout


def test_doctor_removes_a_killed_writers_temp_file_and_says_so(env: Env) -> None:
    config = file_config(env)
    with store_for(config) as store:
        sid = make_session(store, 1)
    orphan = env.root / "file" / "sessions" / f"{sid}.json.tmp.{'ab' * 8}"
    orphan.write_text("half a document", encoding="utf-8")  # nobody holds the session's lock
    report = json.loads(astrid("--config", str(config), "doctor", "--json").stdout)
    assert report["ok"] is True and report["temp_files_removed"] == 1
    assert not orphan.exists()
    again = astrid("--config", str(config), "doctor")
    assert again.exit_code == 0 and "orphaned" not in again.stdout


def test_doctor_reports_a_corrupt_sqlite_row_and_a_newer_schema(env: Env) -> None:
    with store_for() as store:
        good, bad = make_session(store, 1), make_session(store, 1)
    db = env.home / "astrid.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE sessions SET state = '{broken' WHERE id = ?", (bad,))
    result = astrid("doctor")
    assert result.exit_code == 1
    assert f"{db}: session {bad}: stored state is not valid JSON" in result.stdout
    assert good not in result.stdout

    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 99")
    newer = astrid("doctor", "--json")
    assert newer.exit_code == 1
    [problem] = json.loads(newer.stdout)["problems"]
    assert "newer astrid" in problem["problem"]


# -- migrate ----------------------------------------------------------------------------------


def populate(store: SessionStore, workspace: Path) -> list[str]:
    """Sessions with summarized history, a child, workspace state, a deferred key, a revocation."""
    first = store.new_session("You are first.")
    store.attach_workspace(first, workspace)
    for i in range(3):
        first.add_message(Message.user(f"question {i}"))
        first.add_message(Message.assistant(f"answer {i}"))
    first.budget_tracker.record_cost(0.5)
    store.save(first)
    first.messages = [Message.system("summary of the first four"), *first.messages[-2:]]
    store.save(first)  # a rewrite: the replaced messages stay in the history
    first.add_message(Message.user("after the summary"))
    store.save(first)
    store.save_workspace_of(first)
    store.deferred_queue_kv(first.id).set("pending", b'{"x": 1}')
    child = first.child("You are a child.")
    child.add_message(Message.user("sub task"))
    store.save(child)
    ids = [first.id.bare, child.id.bare]
    for n in range(4):
        ids.append(make_session(store, n))
    # More allowances and escape paths than KEYED_STATE_MIN: keyed rows in SQLite.
    many = store.new_session("You have many allowances.")
    for i in range(70):
        many.add_session_allowance(
            Allowance.create(ExactTool(server="fs", tool=f"t{i}"), session_only=True)
        )
    for i in range(10):
        path = workspace.parent / "escapes" / f"p{i}"
        path.mkdir(parents=True, exist_ok=True)
        many.escape_handler.process_decision(
            EscapeRequest.new(path, EscapeOperation.READ, "test"), EscapeDecision.ALLOW_ALWAYS
        )
    many.add_message(Message.user("many"))
    store.save(many)
    ids.append(many.id.bare)
    assert store.capabilities is not None and store.capabilities.backend is not None
    store.capabilities.backend.add_revoked(str(uuid.uuid4()))
    return ids


def assert_same_stores(a: SessionStore, b: SessionStore, ids: list[str], workspace: Path) -> None:
    assert [s.id for s in a.list_sessions(limit=100)] == [s.id for s in b.list_sessions(limit=100)]
    for sid in ids:
        doc_a, doc_b = a.load_document(sid), b.load_document(sid)
        assert doc_a is not None and doc_b is not None
        assert doc_a.to_data() == doc_b.to_data()
        hist_a = [(h.active, h.message) for h in a.backend.history(sid)]
        hist_b = [(h.active, h.message) for h in b.backend.history(sid)]
        assert hist_a == hist_b
        assert a.deferred_queue_kv(sid).list_keys() == b.deferred_queue_kv(sid).list_keys()
    assert a.load_workspace_state(workspace) == b.load_workspace_state(workspace)
    assert a.capabilities is not None and b.capabilities is not None
    assert a.capabilities.backend is not None and b.capabilities.backend is not None
    assert a.capabilities.backend.revoked_ids() == b.capabilities.backend.revoked_ids()


def test_migrate_file_to_sqlite_to_file_keeps_every_message_and_resumes(env: Env) -> None:
    files, sql, files2 = file_config(env), sqlite_config(env), file_config(env, "file2")
    workspace = env.root / "ws"
    with store_for(files) as source:
        ids = populate(source, workspace)
        first_doc = source.load_document(ids[0])
        assert first_doc is not None and len(source.history(ids[0])) > len(first_doc.messages)

    first = astrid("migrate", "--from", str(files), "--to", str(sql))
    assert first.exit_code == 0, first.output
    assert f"copied {len(ids)}, skipped 0" in first.stdout
    assert f"verified: {len(ids)} sessions" in first.stdout
    assert "migrating sessions" not in first.output  # the progress bar: a terminal's only

    with store_for(sql) as target:  # the session with many allowances went in keyed
        assert isinstance(target.backend, SqliteBackend)
        raw = sqlite3.connect(target.backend.path)
        try:
            assert raw.execute("SELECT count(*) FROM sessions WHERE keyed = 1").fetchone() == (1,)
        finally:
            raw.close()

    second = astrid("migrate", "--from", str(files), "--to", str(sql), "--batch", "2")
    assert second.exit_code == 0 and f"copied 0, skipped {len(ids)}" in second.stdout

    # Resume after a partial copy: one session missing, one with a different message count.
    with store_for(sql) as target:
        target.delete(ids[2])
        target.append_messages(ids[3], [Message.user("only in the target")])
    third = astrid("migrate", "--from", str(files), "--to", str(sql))
    assert third.exit_code == 0 and f"copied 2, skipped {len(ids) - 2}" in third.stdout

    back = astrid("migrate", "--from", str(sql), "--to", str(files2))
    assert back.exit_code == 0, back.output
    with store_for(files) as a, store_for(sql) as b, store_for(files2) as c:
        assert_same_stores(a, b, ids, workspace)
        assert_same_stores(a, c, ids, workspace)


def test_migrate_refuses_the_same_store_and_reports_what_it_cannot_copy(env: Env) -> None:
    files = file_config(env)
    twin = write_config(env.root / "twin.toml", files.read_text())
    same = astrid("migrate", "--from", str(files), "--to", str(twin))
    assert same.exit_code == 1 and "same store" in one_error_line(same.stderr)
    assert astrid("migrate", "--from", str(files), "--to", str(files)).exit_code == 2

    with store_for(files) as store:
        make_session(store, 1)
    broken = env.root / "file" / "sessions" / f"{uuid.uuid4()}.json"
    broken.write_text("[]")
    result = astrid("migrate", "--from", str(files), "--to", str(sqlite_config(env)))
    assert result.exit_code == 1
    assert str(broken) in result.stderr and "migration incomplete" in result.stderr
    assert "copied 1" in result.stdout


def test_migrate_copies_namespaces_hosts_and_plugins_stored(env: Env) -> None:
    sql, files, sql2 = sqlite_config(env), file_config(env), sqlite_config(env, "sql2")
    long_ns = "plugin:" + "/deep" * 80  # longer than a file name in the file store
    with store_for(sql) as source:
        sid = make_session(source, 1)
        notes = source.kv("host:notes")
        notes.set("first", b"one")
        notes.set_json("second", {"n": 2})
        source.kv(long_ns).set("k", b"\x00\xff")
        source.kv("host:emptied").set("gone", b"x")
        source.kv("host:emptied").delete("gone")

    there = astrid("migrate", "--from", str(sql), "--to", str(files))
    assert there.exit_code == 0, there.output
    assert "kv: 3 keys in 2 namespaces (every namespace the source lists)" in there.stdout
    assert "note:" not in there.stdout
    back = astrid("migrate", "--from", str(files), "--to", str(sql2))
    assert back.exit_code == 0, back.output
    assert "kv: 3 keys in 2 namespaces (every namespace the source lists)" in back.stdout

    for config in (files, sql2):
        with store_for(config) as store:
            assert store.load(sid) is not None
            kv = store.backend.kv()
            assert namespaces_of(kv) == sorted(["host:notes", long_ns])
            assert store.kv("host:notes").get("first") == b"one"
            assert store.kv("host:notes").get_json("second") == {"n": 2}
            assert store.kv(long_ns).get("k") == b"\x00\xff"


class LegacyKv:
    """A third party's ``KvStore`` written before ``list_namespaces``: the six methods only."""

    def __init__(self, inner: KvStore) -> None:
        self._inner = inner

    def get(self, namespace: str, key: str) -> bytes | None:
        return self._inner.get(namespace, key)

    def set(self, namespace: str, key: str, value: bytes) -> None:
        self._inner.set(namespace, key, value)

    def delete(self, namespace: str, key: str) -> bool:
        return self._inner.delete(namespace, key)

    def exists(self, namespace: str, key: str) -> bool:
        return self._inner.exists(namespace, key)

    def list_keys(self, namespace: str) -> list[str]:
        return self._inner.list_keys(namespace)

    def clear_namespace(self, namespace: str) -> int:
        return self._inner.clear_namespace(namespace)

    def __repr__(self) -> str:
        return f"LegacyKv({self._inner!r})"


class LegacySqliteBackend(SqliteBackend):
    """The sqlite backend behind a key-value store that cannot list its namespaces."""

    name = "legacy-sqlite"

    def kv(self) -> KvStore:  # type: ignore[override]
        return LegacyKv(super().kv())


class LegacyPlugin:
    @hookimpl
    def register_storage_backends(self, register: Any) -> None:
        register(
            "legacy-sqlite",
            lambda options, context: LegacySqliteBackend(resolve_path(options.path, context.home)),
            SqliteOptions,
        )


def test_migrate_from_a_kv_store_without_list_namespaces_copies_the_derived_ones(
    env: Env,
) -> None:
    register_plugin(LegacyPlugin(), name="legacy-plugin")
    try:
        base = env.root / "legacy"
        legacy = write_config(
            env.root / "legacy.toml",
            f'[storage]\nbackend = "legacy-sqlite"\n[storage.options]\n'
            f'path = "{base}/astrid.db"\n'
            f'[capabilities]\nstore = "sqlite"\n[capabilities.options]\npath = "{base}/caps.db"\n',
        )
        workspace = env.root / "ws"
        with store_for(legacy) as source:
            assert namespaces_of(source.backend.kv()) is None
            ids = populate(source, workspace)
            source.kv("host:notes").set("left", b"behind")
        files = file_config(env)
        result = astrid("migrate", "--from", str(legacy), "--to", str(files))
        assert result.exit_code == 0, result.output
        assert "(derived namespaces only)" in result.stdout
        assert "note: the source's key-value store (LegacyKv(" in result.stdout
        assert "cannot list its namespaces (no list_namespaces)" in result.stdout
        with store_for(legacy) as a, store_for(files) as b:
            assert_same_stores(a, b, ids, workspace)
            assert b.deferred_queue_kv(ids[0]).get("pending") == b'{"x": 1}'
            assert b.kv("host:notes").get("left") is None  # what the fallback cannot see
    finally:
        unregister_plugin("legacy-plugin")


# -- bad documents in import, migrate and export --------------------------------------------

HUGE = 2**63  # one past the largest integer SQLite's INTEGER and PostgreSQL's bigint hold


def test_migrate_a_token_count_too_big_to_store_is_one_failure_line_and_the_rest_copied(
    env: Env,
) -> None:
    files, sql = file_config(env), sqlite_config(env)
    with store_for(files) as source:
        ids = [make_session(source, n) for n in (1, 2, 3)]
    bad = ids[1]
    path = env.root / "file" / "sessions" / f"{bad}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["token_count"] = HUGE
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")

    result = astrid("migrate", "--from", str(files), "--to", str(sql))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr and "OverflowError" not in result.stderr
    [failure] = [line for line in result.stderr.splitlines() if bad in line]
    assert failure.startswith(f"astrid: error: {path}: ") and "'token_count'" in failure
    assert "copied 2, skipped 0 (already present), failed 1" in result.stdout
    with store_for(sql) as target:
        assert sorted(r.id for r in target.list_sessions()) == sorted([ids[0], ids[2]])


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_import_a_token_count_too_big_to_store_is_one_failure_line_and_the_rest_imported(
    env: Env, backend: str
) -> None:
    config = sqlite_config(env) if backend == "sqlite" else file_config(env)
    sessions = env.root / "rust-home" / "sessions"
    sessions.mkdir(parents=True)
    ids = sorted(str(uuid.uuid4()) for _ in range(3))  # read in name order: ids[1] is the middle
    counts = {ids[0]: HUGE - 1, ids[1]: HUGE, ids[2]: 7}  # HUGE - 1 is the largest that fits
    for sid in ids:
        doc = rust_doc(sid)
        doc["token_count"] = counts[sid]
        (sessions / f"{sid}.json").write_text(json.dumps(doc, indent=2), encoding="utf-8")

    result = astrid("--config", str(config), "sessions", "import", str(sessions))
    assert result.exit_code == 1, result.output
    line = one_error_line(result.stderr)
    assert line.startswith(f"astrid: error: {sessions / f'{ids[1]}.json'}: ")
    assert "token_count" in line and "OverflowError" not in line
    assert "imported 2, replaced 0, skipped 0, failed 1" in result.stdout
    with store_for(config) as store:
        assert {r.id: r.token_count for r in store.list_sessions()} == {
            ids[0]: HUGE - 1,
            ids[2]: 7,
        }
    with pytest.raises(SerializationError, match="'token_count'"):
        SessionDocument.from_data(rust_doc(ids[1]) | {"token_count": HUGE}, source="doc")


def test_export_all_names_each_unreadable_session_exports_the_rest_and_exits_1(
    env: Env,
) -> None:
    files = file_config(env)
    with store_for(files) as store:
        ids = [make_session(store, n) for n in (1, 2, 3)]
    bad = ids[1]
    path = env.root / "file" / "sessions" / f"{bad}.json"
    path.write_text('{"id": "garbage', encoding="utf-8")

    backup = env.work / "backup.json"
    result = astrid("--config", str(files), "sessions", "export", "--all", "-o", str(backup))
    assert result.exit_code == 1, result.output
    [skipped] = [line for line in result.stderr.splitlines() if bad in line]
    assert skipped.startswith(f"astrid: error: session {bad} not exported: {path}: ")
    assert "invalid JSON" in skipped
    assert "1 session(s) could not be exported" in result.stderr
    exported = json.loads(backup.read_text(encoding="utf-8"))
    assert sorted(d["id"] for d in exported) == sorted([ids[0], ids[2]])
    assert {len(d["messages"]) for d in exported} == {2, 6}

    lines = astrid("--config", str(files), "sessions", "export", "--all", "--format", "jsonl")
    assert lines.exit_code == 1 and bad in lines.stderr
    assert sorted(json.loads(line)["id"] for line in lines.stdout.splitlines()) == sorted(
        [ids[0], ids[2]]
    )


class ScratchSqliteBackend(SqliteBackend):
    """A third party's backend that declares it keeps nothing (say, a database it drops)."""

    name = "scratch-sqlite"
    persistent = False


class ScratchPlugin:
    @hookimpl
    def register_storage_backends(self, register: Any) -> None:
        register(
            "scratch-sqlite",
            lambda options, context: ScratchSqliteBackend(resolve_path(options.path, context.home)),
            SqliteOptions,
        )


def test_migrate_refuses_a_target_backend_that_is_not_persistent(env: Env) -> None:
    files = file_config(env)
    with store_for(files) as store:
        ids = [make_session(store, n) for n in (1, 2)]
    memory = write_config(env.root / "memory.toml", '[storage]\nbackend = "memory"\n')
    result = astrid("migrate", "--from", str(files), "--to", str(memory))
    assert result.exit_code == 1
    line = one_error_line(result.stderr)
    assert line.startswith(f"astrid: error: {memory}: key 'storage.backend': ")
    assert "'memory'" in line and "not persistent" in line
    assert "verified" not in result.stdout and "copied" not in result.stdout

    # The backend's declared attribute decides, not its name.
    register_plugin(ScratchPlugin(), name="scratch-plugin")
    try:
        scratch = write_config(
            env.root / "scratch.toml",
            f'[storage]\nbackend = "scratch-sqlite"\n[storage.options]\n'
            f'path = "{env.root}/scratch/astrid.db"\n',
        )
        refused = astrid("migrate", "--from", str(files), "--to", str(scratch))
        assert refused.exit_code == 1
        assert "'scratch-sqlite' backend is not persistent" in one_error_line(refused.stderr)
        with store_for(scratch) as target:
            assert target.list_sessions() == []  # refused before anything was copied
    finally:
        unregister_plugin("scratch-plugin")
    with store_for(files) as store:
        assert sorted(r.id for r in store.list_sessions()) == sorted(ids)


# -- demo -------------------------------------------------------------------------------------


def test_demo_runs_a_scripted_session_into_the_default_store(env: Env) -> None:
    result = astrid("demo")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "[approval] Read: " in out and "[approval] MCP tool call: builtin/task" in out
    assert "[summary]" in out and "[sub-agent] session " in out
    assert "You're welcome!" in out and "messages (last" in out
    assert (env.home / "astrid.db").is_file()
    assert stat.S_IMODE(env.home.stat().st_mode) == 0o700  # the home it created is private
    listed = json.loads(astrid("sessions", "list", "--json").stdout)["sessions"]
    parents = [s for s in listed if s["parent_id"] is None]
    children = [s for s in listed if s["parent_id"] is not None]
    assert len(parents) == 1 and len(children) == 1
    assert children[0]["parent_id"] == parents[0]["id"]
    view = json.loads(astrid("sessions", "show", parents[0]["id"], "--json").stdout)
    assert view["history_count"] > view["message_count"]  # summarized, nothing lost
    assert view["metadata"]["approval_count"] == 2
    assert astrid("doctor").exit_code == 0


def test_demo_reads_its_notes_when_its_workspace_lies_under_a_never_allowed_directory(
    env: Env,
) -> None:
    """Run as root the home is /root/.astrid, under the default never-allowed /root: the demo
    lifts only the entries that contain its own workspace, and says so."""
    from astrid.cli.demo import _demo_workspace
    from astrid.security.escape import DEFAULT_NEVER_ALLOW

    config, lifted = _demo_workspace(Path("/root/.astrid/demo-workspace"))
    assert lifted == ["/root"]
    assert sorted(config.never_allowed) == sorted(set(DEFAULT_NEVER_ALLOW) - {"/root"})
    elsewhere, none = _demo_workspace(env.home / "demo-workspace")
    assert none == [] and sorted(elsewhere.never_allowed) == sorted(DEFAULT_NEVER_ALLOW)
    out = astrid("demo", "--workspace", str(env.home / "ws")).stdout
    assert "[tool] read_file <- call_1: buy milk" in out and "never-allowed" not in out


# -- real processes ---------------------------------------------------------------------------


def test_process_fresh_home_lists_nothing_and_doctor_is_ok(env: Env) -> None:
    listed = astrid_process(env, "sessions", "list")
    assert listed.returncode == 0 and listed.stdout.strip() == "no sessions"
    doctor = astrid_process(env, "doctor")
    assert doctor.returncode == 0 and "ok: 0 sessions checked" in doctor.stdout


def test_process_errors_are_one_line_and_debug_shows_the_traceback(env: Env) -> None:
    bad = write_config(env.work / "astrid.toml", "[storage]\nfoo = 1\n")
    result = astrid_process(env, "sessions", "list")
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert str(bad) in line and "storage.foo" in line
    debug = astrid_process(env, "--debug", "sessions", "list")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "ConfigError" in debug.stderr
    bad.unlink()

    missing = astrid_process(env, "sessions", "show", str(uuid.uuid4()))
    assert missing.returncode == 3 and "not found" in one_error_line(missing.stderr)
    invalid = astrid_process(env, "sessions", "show", "12345")
    assert invalid.returncode == 2 and "invalid session id" in one_error_line(invalid.stderr)


def test_process_import_show_export_and_migrate(env: Env) -> None:
    source = env.work / "rust.json"
    source.write_text(RUST_DOCUMENT, encoding="utf-8")
    assert astrid_process(env, "sessions", "import", str(source)).returncode == 0
    shown = astrid_process(env, "sessions", "show", RUST_ID)
    assert shown.returncode == 0 and "It says hello" in shown.stdout
    exported = astrid_process(env, "sessions", "export", RUST_ID)
    assert json.loads(exported.stdout) == SessionDocument.from_json_text(RUST_DOCUMENT).to_data()

    defaults = write_config(env.root / "defaults.toml", "")  # the default SQLite store
    files = file_config(env)
    migrated = astrid_process(env, "migrate", "--from", str(defaults), "--to", str(files))
    assert migrated.returncode == 0, migrated.stderr
    assert "verified: 1 sessions, 4 messages" in migrated.stdout
    assert "migrating sessions" not in migrated.stdout + migrated.stderr  # not a terminal
    assert (env.root / "file" / "sessions" / f"{RUST_ID}.json").is_file()
    rerun = astrid_process(env, "migrate", "--from", str(defaults), "--to", str(files))
    assert rerun.returncode == 0 and "copied 0, skipped 1" in rerun.stdout


def test_config_validate_reports_an_empty_or_nul_path_and_nothing_is_created(env: Env) -> None:
    for text, key in (
        ('[storage.options]\npath = ""\n', "storage.options.path"),
        ('[storage]\nbackend = "file"\n[storage.options]\ndirectory = "s\\u0000"\n',
         "storage.options.directory"),
        ('[capabilities.options]\npath = "c\\u0000.db"\n', "capabilities.options.path"),
    ):
        bad = write_config(env.work / "astrid.toml", text)
        for command in (["config", "validate"], ["sessions", "list"], ["doctor"]):
            result = astrid(*command)
            assert result.exit_code == 1, (command, result.output)
            line = one_error_line(result.stderr)
            assert f"{bad}: key '{key}': a path must" in line, line
            assert "unexpected" not in line
    assert not env.home.exists()  # the database was not created at the home path


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def test_a_file_backend_directory_that_is_a_file_or_foreign_is_an_error_not_empty(
    env: Env,
) -> None:
    regular = env.root / "sessions-file"
    regular.write_text("a regular file\n")
    foreign = env.root / "etc"
    foreign.mkdir()
    (foreign / "hosts").write_text("127.0.0.1 localhost\n")
    for directory, why in ((regular, "is not a directory"), (foreign, "is not empty")):
        config = write_config(
            env.root / "bad.toml",
            f'[storage]\nbackend = "file"\n[storage.options]\ndirectory = "{directory}"\n',
        )
        doctor = astrid("--config", str(config), "doctor")
        assert doctor.exit_code == 1 and "ok:" not in doctor.stdout, doctor.output
        assert f"{directory} {why}" in doctor.stdout
        listed = astrid("--config", str(config), "sessions", "list")
        assert listed.exit_code == 1 and "no sessions" not in listed.stdout
        assert f"{directory} {why}" in one_error_line(listed.stderr)
    assert regular.read_text() == "a regular file\n"
    assert _tree(foreign) == ["hosts"]  # doctor wrote no .locks there


def test_doctor_creates_nothing(env: Env) -> None:
    config = file_config(env)
    base = env.root / "file"
    fresh = astrid("--config", str(config), "doctor")
    assert fresh.exit_code == 0 and "ok: 0 sessions checked" in fresh.stdout
    assert not base.exists()  # no sessions, kv or capabilities directory
    with store_for(config) as store:
        make_session(store, 2)
    sessions = base / "sessions"
    for name in (".astrid-index.json", ".astrid-index.log"):
        (sessions / name).unlink(missing_ok=True)
    for lock in (sessions / ".locks").iterdir():
        lock.unlink()
    (sessions / ".locks").rmdir()
    before = _tree(env.root)
    result = astrid("--config", str(config), "doctor")
    assert result.exit_code == 0 and "ok: 1 sessions checked" in result.stdout
    assert _tree(env.root) == before  # no .locks, no index


def _damage_listing(db: Path) -> None:
    """Overwrite the pages of the sessions table and its indexes with garbage bytes."""
    with sqlite3.connect(db) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = [
            row[0]
            for row in conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE tbl_name = 'sessions' AND rootpage > 0"
            )
        ]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert pages
    with open(db, "r+b") as fh:
        for page in pages:
            fh.seek((page - 1) * page_size)
            fh.write(bytes(range(256)) * (page_size // 256))


def test_doctor_json_is_one_object_on_a_sqlite_file_with_garbage_bytes(env: Env) -> None:
    with store_for() as store:
        for n in range(3):
            make_session(store, n)
    db = env.home / "astrid.db"
    _damage_listing(db)
    result = astrid("doctor", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)  # one JSON object, nothing else on stdout
    assert report["ok"] is False and report["backend"] == "sqlite"
    assert report["problems"] and all(str(db) in p["problem"] for p in report["problems"])
    assert [p["location"] for p in report["problems"]] == [str(db)]
    text = astrid("doctor")
    assert text.exit_code == 1 and f"{db}: " in text.stdout and "1 problem(s)" in text.stdout

    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)  # garbage after the header
    garbage = astrid("doctor", "--json")
    assert garbage.exit_code == 1
    [problem] = json.loads(garbage.stdout)["problems"]
    assert str(db) in problem["problem"]


def test_doctor_json_reports_a_directory_named_like_a_session_by_its_path(env: Env) -> None:
    config = file_config(env)
    with store_for(config) as store:
        make_session(store, 1)
    sid = str(uuid.uuid4())
    planted = env.root / "file" / "sessions" / f"{sid}.json"
    planted.mkdir()
    result = astrid("--config", str(config), "doctor", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["sessions_checked"] == 1
    assert report["problems"] == [{"location": str(planted), "problem": "not a regular file"}]
    shown = astrid("--config", str(config), "sessions", "show", sid)
    line = one_error_line(shown.stderr)
    assert f"{planted} is a directory" in line and "Errno" not in line, line


def test_doctor_json_is_one_object_on_a_bad_config(env: Env) -> None:
    bad = write_config(env.work / "astrid.toml", '[storage.options]\npath = ""\n')
    result = astrid("doctor", "--json")
    assert result.exit_code == 1
    [problem] = json.loads(result.stdout)["problems"]
    assert str(bad) in problem["problem"] and "storage.options.path" in problem["problem"]


@pytest.mark.parametrize("backend", ["file", "sqlite"])
def test_list_flags_a_session_whose_field_has_the_wrong_type_and_doctor_reports_it(
    env: Env, backend: str
) -> None:
    config = file_config(env) if backend == "file" else sqlite_config(env)
    with store_for(config) as store:
        good, bad = make_session(store, 1), make_session(store, 2)
    if backend == "file":
        path = env.root / "file" / "sessions" / f"{bad}.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        data["token_count"] = "many"
        path.write_text(json.dumps(data), encoding="utf-8")
        where = str(path)
    else:
        db = env.root / "sql" / "astrid.db"
        with sqlite3.connect(db) as conn:
            conn.execute(
                "UPDATE sessions SET state = json_set(state, '$.token_count', 'many') "
                "WHERE id = ?",
                (bad,),
            )
        where = f"{db}: session {bad}"
    assert astrid("--config", str(config), "sessions", "show", bad).exit_code == 1

    listed = astrid("--config", str(config), "sessions", "list", "--json")
    assert listed.exit_code == 0
    rows = {s["id"]: s for s in json.loads(listed.stdout)["sessions"]}
    assert rows[good]["load_error"] is None
    assert rows[bad]["load_error"].startswith(f"{where}: key 'token_count': ")
    assert f"warning: cannot be loaded: {where}: key 'token_count'" in listed.stderr
    table = astrid("--config", str(config), "sessions", "list")
    [bad_line] = [line for line in table.stdout.splitlines() if line.startswith(bad)]
    [good_line] = [line for line in table.stdout.splitlines() if line.startswith(good)]
    assert "cannot be loaded" in bad_line and "cannot be loaded" not in good_line

    report = json.loads(astrid("--config", str(config), "doctor", "--json").stdout)
    assert report["ok"] is False and report["sessions_checked"] == 2
    [problem] = report["problems"]
    assert problem["location"] == where and "token_count" in problem["problem"]


def test_an_export_to_a_file_that_stops_early_leaves_the_previous_file_as_it_was(
    tmp_path: Path,
) -> None:
    from astrid.cli.sessions import _output

    out = tmp_path / "exports"
    out.mkdir()
    backup = out / "backup.json"
    backup.write_text("yesterday's export\n")
    with pytest.raises(KeyboardInterrupt), _output(str(backup)) as write:
        write('[{"id": "half of today')
        raise KeyboardInterrupt  # the user pressed Ctrl-C half-way
    assert backup.read_text() == "yesterday's export\n"
    assert sorted(p.name for p in out.iterdir()) == ["backup.json"]  # no temp file left
    with _output(str(backup)) as write:
        write("[]\n")
    assert backup.read_text() == "[]\n" and stat.S_IMODE(backup.stat().st_mode) == 0o600
    with _output(str(out / "never.json")):
        pass  # refused before the first write: no file at all
    assert not (out / "never.json").exists()
