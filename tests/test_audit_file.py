"""The ``file`` backend keeps the audit log in one append-only file per workspace chain: entries
of the runtime's decisions verify, an edited, removed, reordered or re-signed line is named, a
torn append is cut off, a failed save never appends twice, and two processes share one chain."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from astrid.default_plugins.encrypted_storage import EncryptedBackend
from astrid.default_plugins.file_storage import AUDIT_DIR, FileBackend
from astrid.errors import StorageError
from astrid.messages import Message
from astrid.security.approvals import ApproveSession
from astrid.security.audit import verify
from astrid.security.crypto import KeyPair, load_or_create_keypair
from astrid.store import SessionStore, workspace_key
from astrid.testing import run_together
from astrid.testing.audit_conformance import _KEY, decide
from tests.test_audit_log import re_signed_after_the_first, run_turn

TRUSTED = [_KEY.public_key_base64]


def chain_file(sessions: Path) -> Path:
    [path] = sorted((sessions / AUDIT_DIR).glob("*.jsonl"))
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def three_entries(sessions: Path, workspace: Path) -> SessionStore:
    store = SessionStore(FileBackend(sessions))
    session = store.new_session("p").with_workspace(workspace)
    for action in ("one", "two", "three"):
        decide(session, action)
        session.add_message(Message.user(action))
        store.save(session)
    return store


def problem_after(sessions: Path, edit: list[bytes]) -> str:
    chain_file(sessions).write_bytes(b"".join(edit))
    problems = verify(SessionStore(FileBackend(sessions)).list_audit(), TRUSTED)
    assert len(problems) == 1, problems
    return problems[0].describe()


def test_the_runtimes_decisions_land_in_the_workspace_chain_file_and_verify(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    key = KeyPair.generate()
    sessions = tmp_path / "sessions"
    store = SessionStore(FileBackend(sessions))
    sid = run_turn(store, ws, ApproveSession(), key)
    entries = store.list_audit(session_id=sid)
    assert entries and {e.chain for e in entries} == {str(ws)}
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert ("file_read", "allowed", "user") in [
        (e.data["action_type"], e.data["decision"], e.data["actor"]) for e in entries
    ]
    path = chain_file(sessions)
    assert len(lines_of(path)) == len(entries)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (sessions / AUDIT_DIR).stat().st_mode & 0o777 == 0o700
    assert verify(SessionStore(FileBackend(sessions)).list_audit(), [key.public_key_base64]) == []


def test_verify_names_an_edited_a_removed_and_a_reordered_line(tmp_path: Path) -> None:
    sessions, ws = tmp_path / "sessions", tmp_path / "ws"
    three_entries(sessions, ws).close()
    original = lines_of(chain_file(sessions))

    item = json.loads(original[1])
    item["body"] = item["body"].replace('"allowed"', '"denied"')
    edited = [original[0], json.dumps(item).encode() + b"\n", original[2]]
    line = problem_after(sessions, edited)
    assert "#2" in line and "edited" in line

    line = problem_after(sessions, [original[0], original[2]])
    assert "#2" in line and "removed" in line

    line = problem_after(sessions, [original[0], original[2], original[1]])
    assert "#2" in line and "removed or reordered" in line

    line = problem_after(sessions, [original[0], b"{not json\n", original[2]])
    assert "#2" in line and "line 2" in line and "edited" in line

    chain_file(sessions).write_bytes(b"".join(original))
    assert verify(SessionStore(FileBackend(sessions)).list_audit(), TRUSTED) == []


def test_verify_names_lines_re_signed_with_another_key(tmp_path: Path) -> None:
    sessions, ws = tmp_path / "sessions", tmp_path / "ws"
    store = three_entries(sessions, ws)
    forged = re_signed_after_the_first(store.list_audit())
    first = lines_of(chain_file(sessions))[0]
    chain_file(sessions).write_bytes(
        first + b"".join(
            json.dumps({"body": r.body, "hash": r.hash, "signature": r.signature}).encode() + b"\n"
            for r in forged
        )
    )
    records = SessionStore(FileBackend(sessions)).list_audit()
    assert verify(records) == []  # a valid chain on its own...
    [problem] = verify(records, TRUSTED)
    assert problem.seq == 2 and "re-signed" in problem.problem  # ...by a foreign key


def test_a_torn_append_is_cut_off_by_the_next_save_and_the_chain_goes_on(
    tmp_path: Path,
) -> None:
    sessions, ws = tmp_path / "sessions", tmp_path / "ws"
    store = three_entries(sessions, ws)
    path = chain_file(sessions)
    whole = path.read_bytes()
    with path.open("ab") as f:  # a writer killed half-way through its line
        f.write(b'{"body": "{\\"chain\\": \\"x\\", \\"se')
    assert [r.seq for r in store.list_audit()] == [1, 2, 3]  # the torn line is not an entry
    session = store.new_session("q").with_workspace(ws)
    decide(session, "after the tear")
    store.save(session)
    assert path.read_bytes().startswith(whole)
    records = store.list_audit()
    assert [r.seq for r in records] == [1, 2, 3, 4]
    assert records[-1].data["action"] == "after the tear"
    assert verify(records, TRUSTED) == []


def test_an_unreadable_last_entry_refuses_the_save_and_loses_nothing(tmp_path: Path) -> None:
    sessions, ws = tmp_path / "sessions", tmp_path / "ws"
    store = three_entries(sessions, ws)
    path = chain_file(sessions)
    path.write_bytes(b"".join(lines_of(path)[:2]) + b"garbage\n")
    session = store.new_session("q").with_workspace(ws)
    session.add_message(Message.user("keep me"))
    decide(session, "pending")
    with pytest.raises(StorageError) as info:
        store.save(session)
    assert str(path) in str(info.value) and "astrid audit verify" in str(info.value)
    assert store.load(session.id) is None  # the document was not published
    assert len(session.changes.audit) == 1  # kept for the next save
    path.write_bytes(b"".join(lines_of(path)[:2]))  # the operator repairs the chain
    store.save(session)
    assert [r.data["action"] for r in store.list_audit()] == ["one", "two", "pending"]


def test_entries_appended_by_a_save_whose_rename_failed_are_not_appended_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, ws = tmp_path / "sessions", tmp_path / "ws"
    store = SessionStore(FileBackend(sessions))
    session = store.new_session("p").with_workspace(ws)
    decide(session, "once")
    real_replace = os.replace
    calls = []

    def failing_replace(src: str, dst: str) -> None:
        calls.append(dst)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageError):
        store.save(session)
    monkeypatch.setattr(os, "replace", real_replace)
    assert calls and store.load(session.id) is None
    assert len(session.changes.audit) == 1  # the save failed: still pending
    store.save(session)
    records = store.list_audit()
    assert [r.data["action"] for r in records] == ["once"]
    assert session.changes.audit == [] and verify(records, TRUSTED) == []


def test_the_encrypted_wrapper_over_files_keeps_the_audit_log_in_the_clear(
    tmp_path: Path,
) -> None:
    sessions, ws = tmp_path / "sessions", tmp_path / "ws"
    store = SessionStore(EncryptedBackend(FileBackend(sessions), bytes(range(32))))
    session = store.new_session("p").with_workspace(ws)
    decide(session, "sealed session, clear audit")
    session.add_message(Message.user("secret text"))
    store.save(session)
    assert b"secret text" not in (sessions / f"{session.id.bare}.json").read_bytes()
    [entry] = store.list_audit()
    assert entry.data["action"] == "sealed session, clear audit"
    assert entry.chain == workspace_key(ws) and verify([entry], TRUSTED) == []


WORKER = """
import sys, time
from pathlib import Path
from astrid.default_plugins.file_storage import FileBackend
from astrid.messages import Message
from astrid.store import SessionStore
from astrid.security.audit import record
from astrid.security.crypto import KeyPair
sessions, ws, name, go, key = sys.argv[1:]
key = KeyPair.from_private_bytes(bytes.fromhex(key))
store = SessionStore(FileBackend(Path(sessions)))
session = store.new_session("p").with_workspace(Path(ws))
store.save(session)
Path(go).with_name("ready-" + name).touch()
while not Path(go).exists():
    time.sleep(0.005)
for n in range(20):
    record(session, key, actor="runtime", action_type="file_read", action=f"{name}-{n}",
           decision="allowed")
    session.add_message(Message.user(str(n)))
    store.save(session)
"""


def test_two_processes_deciding_in_one_workspace_keep_one_valid_chain(tmp_path: Path) -> None:
    sessions, ws = tmp_path / "sessions", tmp_path / "ws"
    SessionStore(FileBackend(sessions)).close()
    go = tmp_path / "go"
    key = KeyPair.generate()
    run_together(
        {
            name: [sys.executable, "-c", WORKER, str(sessions), str(ws), name, str(go),
                   key.private_bytes().hex()]
            for name in ("a", "b")
        },
        go,
    )
    records = SessionStore(FileBackend(sessions)).list_audit()
    assert len(records) == 40 and len({r.session_id for r in records}) == 2
    assert [r.seq for r in records] == list(range(1, 41))
    for name in ("a", "b"):  # each process's decisions in the order it made them
        mine = [r.data["action"] for r in records if r.data["action"].startswith(name)]
        assert mine == [f"{name}-{n}" for n in range(20)]
    assert verify(records, [key.public_key_base64]) == []


@pytest.fixture
def file_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, str]:
    """An astrid home whose config picks the file backend, after one runtime turn in a
    workspace: (its sessions directory, the workspace, the session id)."""
    home = tmp_path / "home"
    monkeypatch.setenv("ASTRID_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    home.mkdir()
    (home / "config.toml").write_text('[storage]\nbackend = "file"\n')
    ws = tmp_path / "ws"
    ws.mkdir()
    key = load_or_create_keypair(home / "keys" / "runtime.key")
    sessions = home / "sessions"
    return sessions, ws, run_turn(SessionStore(FileBackend(sessions)), ws, ApproveSession(), key)


def test_audit_cli_verifies_a_file_store_and_names_the_first_bad_line(
    file_home: tuple[Path, Path, str],
) -> None:
    from astrid.cli import cli

    sessions, ws, sid = file_home

    listed = CliRunner().invoke(cli, ["audit", "list", "--session", sid[:8], "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert data and {d["session_id"] for d in data} == {sid}
    ok = CliRunner().invoke(cli, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert f"{len(data)} audit entries in 1 chain(s) verify" in ok.output

    path = chain_file(sessions)
    lines = lines_of(path)
    path.write_bytes(b"".join(lines[:2] + lines[3:]))
    bad = CliRunner().invoke(cli, ["audit", "verify"])
    assert bad.exit_code == 1
    assert f"audit entry {data[3]['id']} (chain {ws}, #3)" in bad.output


def test_doctor_verifies_the_audit_log_and_names_a_broken_chain(
    file_home: tuple[Path, Path, str],
) -> None:
    from astrid.cli import cli

    sessions, ws, _sid = file_home
    count = len(lines_of(chain_file(sessions)))

    ok = CliRunner().invoke(cli, ["doctor", "--json"])
    assert ok.exit_code == 0, ok.output
    report = json.loads(ok.output)
    assert report["ok"] and report["audit_entries"] == count

    lines = lines_of(chain_file(sessions))
    item = json.loads(lines[0])
    item["body"] = item["body"].replace('"runtime"', '"user"', 1)
    chain_file(sessions).write_bytes(json.dumps(item).encode() + b"\n" + b"".join(lines[1:]))
    bad = CliRunner().invoke(cli, ["doctor"])
    assert bad.exit_code == 1
    assert f"audit log: audit entry {json.loads(item['body'])['id']} (chain {ws}, #1)" in bad.output
    assert f"{count} audit entries verified" in bad.output


@pytest.mark.parametrize("direction", ["sqlite-to-file", "file-to-sqlite"])
def test_migrate_copies_the_audit_log_verbatim_and_resumes_without_copying_twice(
    tmp_path: Path, direction: str
) -> None:
    from astrid.default_plugins.sqlite_storage import SqliteBackend
    from astrid.transfer import migrate

    def sqlite() -> SqliteBackend:
        return SqliteBackend(tmp_path / "astrid.db")

    def files() -> FileBackend:
        return FileBackend(tmp_path / "sessions")

    make_source, make_target = (sqlite, files) if direction == "sqlite-to-file" else (files, sqlite)
    ws = tmp_path / "ws"
    ws.mkdir()
    key = KeyPair.generate()
    source = SessionStore(make_source())
    run_turn(source, ws, ApproveSession(), key)
    run_turn(source, ws, ApproveSession(), key)
    original = source.list_audit()
    target = SessionStore(make_target())
    result = migrate(source, target)
    assert result.ok, (result.failed, result.mismatches)
    assert result.audit_entries == len(original) and result.audit_chains == 1
    copied = target.list_audit()
    assert [(r.seq, r.body, r.hash, r.signature) for r in copied] == [
        (r.seq, r.body, r.hash, r.signature) for r in original
    ]
    assert verify(copied, [key.public_key_base64]) == []
    again = migrate(source, target)
    assert again.ok and again.audit_entries == 0  # resumed: nothing twice
    # the target's chain goes on from the copied head
    run_turn(target, ws, ApproveSession(), key)
    assert verify(target.list_audit(), [key.public_key_base64]) == []
    assert len(target.list_audit()) > len(original)


def test_migrate_into_a_store_whose_chain_differs_reports_that_chain(tmp_path: Path) -> None:
    from astrid.default_plugins.sqlite_storage import SqliteBackend
    from astrid.transfer import migrate

    ws = tmp_path / "ws"
    source = SessionStore(SqliteBackend(tmp_path / "astrid.db"))
    session = source.new_session("p").with_workspace(ws)
    decide(session, "in the source")
    source.save(session)
    target = SessionStore(FileBackend(tmp_path / "sessions"))
    theirs = target.new_session("q").with_workspace(ws)
    decide(theirs, "already in the target")
    target.save(theirs)
    result = migrate(source, target)
    assert not result.ok
    [failure] = result.failed
    assert failure.subject == f"audit chain {workspace_key(ws)}"
    assert "already holds a different entry" in failure.message and "#1" in failure.message
    assert [r.data["action"] for r in target.list_audit()] == ["already in the target"]
