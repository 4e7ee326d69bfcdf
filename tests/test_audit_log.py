"""The persisted audit log: decisions made by the real runtime are chained, signed, stored in
the save's transaction, and ``verify`` catches an edited, removed, reordered or re-signed entry."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.plugins import load_plugins
from astrid.runtime import AgentRuntime, RuntimeConfig
from astrid.security.approvals import ApprovalDecision, ApprovalResponse, ApproveSession, Deny
from astrid.security.audit import AuditRecord, seal, verify
from astrid.security.crypto import KeyPair
from astrid.security.deferred import ApprovalRequest
from astrid.store import SessionStore, StorageBackend


@pytest.fixture(autouse=True)
def _plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    load_plugins()


class Handler:
    def __init__(self, decision: ApprovalDecision) -> None:
        self.decision = decision

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        return ApprovalResponse.new(request.id, self.decision)

    def is_available(self) -> bool:
        return True


def read(call_id: str, path: str) -> list[Any]:
    return [
        {"tool_call": {"id": call_id, "name": "read_file", "arguments": {"path": path}}},
        {"usage": {"input_tokens": 100, "output_tokens": 5}},
    ]


def run_turn(
    store: SessionStore, workspace: Path, decision: ApprovalDecision, keypair: KeyPair
) -> str:
    (workspace / "notes.txt").write_text("milk\n")
    script = [read("c1", "notes.txt"), read("c2", "notes.txt"), [{"text": "milk"}]]
    runtime = AgentRuntime(
        ScriptedProvider(script),
        store=store,
        config=RuntimeConfig(workspace=workspace),
        approval_handler=Handler(decision),
        keypair=keypair,
    )
    session = runtime.create_session()
    store.attach_workspace(session, workspace)
    asyncio.run(runtime.run_turn(session, "what do my notes say?"))
    assert session.changes.audit == []  # written by the turn's save
    return session.id.bare


@pytest.fixture(params=["sqlite", "memory"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StorageBackend:
    if request.param == "sqlite":
        return SqliteBackend(tmp_path / "astrid.db")
    return MemoryBackend()


def test_the_runtimes_decisions_are_stored_chained_and_signed(
    backend: StorageBackend, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    key = KeyPair.generate()
    store = SessionStore(backend)
    sid = run_turn(store, ws, ApproveSession(), key)
    entries = store.list_audit(session_id=sid)
    kinds = [(e.data["action_type"], e.data["decision"], e.data["actor"]) for e in entries]
    proofs = [(e.data["proof"] or {}).get("kind") for e in entries]
    # approval granted for the session, then the allowance it created used, then settlements
    assert ("file_read", "allowed", "user") in kinds and "SessionApproval" in proofs
    assert "AllowanceProof" in proofs
    assert [k for k in kinds if k[0] == "budget_settlement"] == [
        ("budget_settlement", "settled", "runtime")
    ] * 3
    assert {e.chain for e in entries} == {str(ws)}
    assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
    assert all(e.data["workspace"] == str(ws) and e.data["session_id"] == sid for e in entries)
    assert verify(store.list_audit(), [key.public_key_base64]) == []
    # another session in the same workspace continues the same chain
    sid2 = run_turn(store, ws, Deny(reason="no"), key)
    second = store.list_audit(session_id=sid2)
    assert second[0].seq == len(entries) + 1
    assert ("file_read", "denied", "runtime") in [
        (e.data["action_type"], e.data["decision"], e.data["actor"]) for e in second
    ]
    assert verify(store.list_audit(), [key.public_key_base64]) == []
    # a key other than the runtime's is named
    [problem] = verify(store.list_audit(), [KeyPair.generate().public_key_base64])
    assert problem.seq == 1 and "re-signed" in problem.problem


def _tampered(tmp_path: Path, sql: str) -> str:
    ws = tmp_path / "ws"
    ws.mkdir()
    key = KeyPair.generate()
    db = tmp_path / "astrid.db"
    run_turn(SessionStore(SqliteBackend(db)), ws, ApproveSession(), key)
    conn = sqlite3.connect(db)
    conn.executescript(f"BEGIN; {sql}; COMMIT;")
    conn.close()
    problems = verify(SessionStore(SqliteBackend(db)).list_audit(), [key.public_key_base64])
    assert len(problems) == 1
    return problems[0].describe()


def test_verify_names_an_edited_entry(tmp_path: Path) -> None:
    line = _tampered(
        tmp_path, "UPDATE audit SET body = replace(body, '\"allowed\"', '\"denied\"') WHERE seq = 4"
    )
    assert "#4" in line and "edited" in line


def test_verify_names_a_removed_entry(tmp_path: Path) -> None:
    line = _tampered(tmp_path, "DELETE FROM audit WHERE seq = 2")
    assert "#2" in line and "removed" in line


def test_verify_names_reordered_entries(tmp_path: Path) -> None:
    line = _tampered(
        tmp_path,
        "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 3; "
        "UPDATE audit SET seq = 3 WHERE seq = -1",
    )
    assert "#2" in line and "reordered" in line


def re_signed_after_the_first(stored: list[AuditRecord]) -> list[AuditRecord]:
    """What an attacker with their own key makes of entries 2 onwards: a chain that is valid on
    its own, after the genuine first entry, signed by a foreign key."""
    from astrid.security.audit import PendingAudit

    other = KeyPair.generate()
    fields = []
    for rec in stored[1:]:
        data = rec.data
        for k in ("chain", "seq", "prev_hash", "public_key"):
            data.pop(k)
        fields.append(PendingAudit(data, other))
    return seal(fields, (stored[0].seq, stored[0].hash))


def test_verify_names_an_entry_re_signed_with_another_key(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    key = KeyPair.generate()
    db = tmp_path / "astrid.db"
    run_turn(SessionStore(SqliteBackend(db)), ws, ApproveSession(), key)
    forged = re_signed_after_the_first(SessionStore(SqliteBackend(db)).list_audit())
    conn = sqlite3.connect(db)
    with conn:
        for r in forged:
            conn.execute(
                "UPDATE audit SET body = ?, hash = ?, signature = ? WHERE chain = ? AND seq = ?",
                (r.body, r.hash, r.signature, r.chain, r.seq),
            )
    conn.close()
    records: list[AuditRecord] = SessionStore(SqliteBackend(db)).list_audit()
    assert verify(records) == []  # every signature verifies on its own...
    [problem] = verify(records, [key.public_key_base64])
    assert problem.seq == 2 and "re-signed" in problem.problem  # ...but not by the runtime key


WRITER = """
import asyncio, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from astrid.plugins import load_plugins
from astrid.security.crypto import KeyPair
from astrid.security.approvals import ApproveSession
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.store import SessionStore
sys.path.insert(0, {tests!r})
from test_audit_log import run_turn
load_plugins()
key = KeyPair.from_private_bytes(bytes.fromhex({key!r}))
store = SessionStore(SqliteBackend(Path({db!r})))
for _ in range(5):
    run_turn(store, Path({ws!r}), ApproveSession(), key)
"""


def test_two_processes_writing_to_one_workspace_keep_one_valid_chain(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    key = KeyPair.generate()
    db = tmp_path / "astrid.db"
    SessionStore(SqliteBackend(db)).close()
    code = WRITER.format(
        root=str(Path(__file__).parent.parent),
        tests=str(Path(__file__).parent),
        key=key.private_bytes().hex(),
        db=str(db),
        ws=str(ws),
    )
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    records = SessionStore(SqliteBackend(db)).list_audit()
    assert len({r.session_id for r in records}) == 10
    assert {r.chain for r in records} == {str(ws)}
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert verify(records, [key.public_key_base64]) == []


def test_audit_cli_lists_verifies_and_names_the_first_bad_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from astrid.cli import cli
    from astrid.security.crypto import load_or_create_keypair

    home = tmp_path / "home"
    monkeypatch.setenv("ASTRID_HOME", str(home))
    ws = tmp_path / "ws"
    ws.mkdir()
    key = load_or_create_keypair(home / "keys" / "runtime.key")
    db = home / "astrid.db"
    sid = run_turn(SessionStore(SqliteBackend(db)), ws, ApproveSession(), key)

    listed = CliRunner().invoke(cli, ["audit", "list", "--session", sid[:8], "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert len(data) == 9 and {d["session_id"] for d in data} == {sid}
    assert {"hash", "signature", "prev_hash", "actor", "decision", "proof"} <= set(data[0])
    text = CliRunner().invoke(cli, ["audit", "list"])
    assert text.exit_code == 0 and "file_read" in text.output

    ok = CliRunner().invoke(cli, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert "9 audit entries in 1 chain(s) verify, signed by the runtime key" in ok.output

    conn = sqlite3.connect(db)
    conn.executescript("BEGIN; DELETE FROM audit WHERE seq = 3; COMMIT;")
    conn.close()
    bad = CliRunner().invoke(cli, ["audit", "verify"])
    assert bad.exit_code == 1
    assert f"audit entry {data[3]['id']} (chain {ws}, #3)" in bad.output
    assert "removed or reordered" in bad.output


def test_an_exported_session_carries_its_audit_entries_and_an_import_does_not_restore_them(
    tmp_path: Path,
) -> None:
    from astrid.transfer import AUDIT_KEY, export_sessions, import_sessions

    ws = tmp_path / "ws"
    ws.mkdir()
    key = KeyPair.generate()
    store = SessionStore(SqliteBackend(tmp_path / "astrid.db"))
    sid = run_turn(store, ws, ApproveSession(), key)
    other = run_turn(store, ws, ApproveSession(), key)
    chunks: list[str] = []
    export_sessions(store, chunks.append, [sid])
    exported = json.loads("".join(chunks))
    entries = exported[AUDIT_KEY]
    stored = store.list_audit(session_id=sid)
    assert [e["id"] for e in entries] == [r.id for r in stored] and len(entries) == 9
    assert all(e["session_id"] == sid and e["hash"] and e["signature"] for e in entries)
    assert other not in {e["session_id"] for e in entries}
    source = tmp_path / "export.json"
    source.write_text("".join(chunks))
    target = SessionStore(SqliteBackend(tmp_path / "target.db"))
    assert import_sessions(target, source).imported == [sid]
    assert target.list_audit() == []  # the target's chains are its own
    record_ = target.load_record(sid, tail=0)
    assert record_ is not None and AUDIT_KEY not in record_.state


class Unavailable:
    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        raise AssertionError("never asked")

    def is_available(self) -> bool:
        return False


def test_deferral_resolution_protected_escape_and_budget_refusal_are_entries(
    tmp_path: Path,
) -> None:
    from astrid.errors import BudgetExceeded
    from astrid.security.budget import BudgetConfig

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("milk\n")
    key = KeyPair.generate()
    store = SessionStore(SqliteBackend(tmp_path / "astrid.db"))
    script = [read("c1", "/etc/passwd"), read("c2", "notes.txt"), [{"text": "later"}]]
    runtime = AgentRuntime(
        ScriptedProvider(script),
        store=store,
        config=RuntimeConfig(workspace=ws),
        approval_handler=Unavailable(),
        keypair=key,
    )
    session = runtime.create_session()
    store.attach_workspace(session, ws)
    asyncio.run(runtime.run_turn(session, "read both"))
    [pending] = session.approval_manager.deferred_queue.get_pending()
    runtime.resolve_deferred(session, pending.id, ApproveSession())
    store.save(session)  # the resolution travels with the next save
    decisions = [
        (r.data["action_type"], r.data["decision"]) for r in store.list_audit(session_id=session.id)
    ]
    assert ("escape", "denied") in decisions
    assert ("file_read", "approval_asked") in decisions
    assert ("file_read", "deferred") in decisions
    assert decisions[-1] == ("file_read", "resolved_allowed")

    poor = SessionStore(
        SqliteBackend(tmp_path / "poor.db"),
        budget=BudgetConfig(session_max_usd=0.000001, per_action_max_usd=0.000001),
    )
    broke = AgentRuntime(
        ScriptedProvider([[{"text": "never"}]]),
        store=poor,
        config=RuntimeConfig(workspace=ws),
        keypair=key,
    )
    refused = broke.create_session()
    with pytest.raises(BudgetExceeded):
        asyncio.run(broke.run_turn(refused, "hi"))
    poor.save(refused)
    [entry] = poor.list_audit(session_id=refused.id)
    assert (entry.data["action_type"], entry.data["decision"]) == ("budget_reservation", "refused")
    assert "budget exceeded" in entry.data["reason"]
    assert verify(store.list_audit() + poor.list_audit(), [key.public_key_base64]) == []
