"""Each security decision the issue names is an audit entry: a capability token revoked, a budget
reservation that fits, an escape let through or refused (remembered, by the workspace settings,
by policy ``deny``, approved through the interceptor), an approval granted with its scope. Every
test drives a real ``AgentRuntime`` over a real SQLite store and reads the stored, verified
chain back."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.runtime import AgentRuntime, RuntimeConfig
from astrid.security.actions import FileRead
from astrid.security.approvals import (
    ApprovalDecision,
    Approve,
    ApproveAlways,
    ApproveSession,
    ApproveWorkspace,
    Deny,
)
from astrid.security.audit import AuditRecord, verify
from astrid.security.crypto import KeyPair
from astrid.security.escape import EscapePolicy, WorkspaceConfig
from astrid.security.interceptor import SecurityInterceptor
from astrid.security.policy import SecurityPolicy
from astrid.session import AgentSession
from astrid.store import SessionStore
from astrid.tools import ToolContext
from tests.test_audit_log import Handler
from tests.test_audit_log import _plugins as _plugins  # autouse: the built-in plugins loaded


class StatTool:
    """A host tool with a ``path`` argument: its escape is approved apart from its own action."""

    name = "stat_path"
    description = "The size of a file in bytes."
    input_schema: dict[str, Any] = {
        "type": "object",
        "properties": {"path": {"type": "string"}},
        "required": ["path"],
    }

    async def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        return str(ctx.resolve_path(arguments["path"]).stat().st_size)


def call(call_id: str, tool: str, path: str) -> list[Any]:
    return [
        {"tool_call": {"id": call_id, "name": tool, "arguments": {"path": path}}},
        {"usage": {"input_tokens": 100, "output_tokens": 5}},
    ]


class World:
    """A workspace with notes.txt, a directory outside it with secret.txt, a SQLite store."""

    def __init__(self, tmp_path: Path) -> None:
        self.ws = tmp_path / "ws"
        self.ws.mkdir()
        (self.ws / "notes.txt").write_text("milk\n")
        self.outside = tmp_path / "outside"
        self.outside.mkdir()
        self.secret = self.outside / "secret.txt"
        self.secret.write_text("42\n")
        self.key = KeyPair.generate()
        self.store = SessionStore(SqliteBackend(tmp_path / "astrid.db"))

    def runtime(
        self,
        script: list[Any],
        decision: ApprovalDecision | None = None,
        workspace: WorkspaceConfig | None = None,
    ) -> AgentRuntime:
        runtime = AgentRuntime(
            ScriptedProvider(script),
            store=self.store,
            config=RuntimeConfig(workspace=workspace or WorkspaceConfig.new(self.ws)),
            approval_handler=Handler(decision) if decision is not None else None,
            keypair=self.key,
        )
        runtime.add_tool(StatTool())
        return runtime

    def session(self, runtime: AgentRuntime) -> AgentSession:
        session = runtime.create_session()
        self.store.attach_workspace(session, self.ws)
        return session

    def turn(self, runtime: AgentRuntime, session: AgentSession) -> None:
        asyncio.run(runtime.run_turn(session, "go"))

    def entries(self, session: AgentSession) -> list[AuditRecord]:
        """The session's stored entries, after checking the whole stored chain verifies."""
        assert verify(self.store.list_audit(), [self.key.public_key_base64]) == []
        records = self.store.list_audit(session_id=session.id)
        assert records and {r.session_id for r in records} == {session.id.bare}
        return records


def kinds(records: list[AuditRecord]) -> list[tuple[str, str]]:
    return [(r.data["action_type"], r.data["decision"]) for r in records]


def of(records: list[AuditRecord], action_type: str, decision: str) -> list[dict[str, Any]]:
    return [
        r.data
        for r in records
        if (r.data["action_type"], r.data["decision"]) == (action_type, decision)
    ]


# -- capability token revoked --------------------------------------------------------------


def test_revoking_a_capability_token_is_an_entry_stored_at_once(tmp_path: Path) -> None:
    w = World(tmp_path)
    runtime = w.runtime([call("c1", "read_file", "notes.txt"), [{"text": "milk"}]],
                        ApproveAlways())
    session = w.session(runtime)
    w.turn(runtime, session)
    [minted] = [
        d["proof"] for d in of(w.entries(session), "file_read", "allowed")
        if d["proof"]["kind"] == "CapabilityCreated"
    ]
    token_id = uuid.UUID(minted["token_id"])
    assert session.capabilities.get(token_id) is not None

    revocation = asyncio.run(runtime.arevoke_capability(session, token_id, reason="key leaked"))
    assert revocation.token is not None and not revocation.already_revoked
    assert session.changes.audit == []  # stored by the revocation's own save
    [entry] = of(w.entries(session), "capability_token", "revoked")
    assert entry["actor"] == "user" and entry["reason"] == "key leaked"
    assert f"token:{token_id}" in entry["action"]
    assert f"file://{w.ws / 'notes.txt'}" in entry["action"]
    assert session.capabilities.is_revoked(token_id)
    assert token_id not in {t.id for t in session.capabilities.list_tokens()}

    # Again, and an id the store never saw (the sync twin): revoked all the same, recorded.
    again = asyncio.run(runtime.arevoke_capability(session, token_id))
    stranger = uuid.uuid4()
    unknown = runtime.revoke_capability(session, stranger)
    assert again.already_revoked and again.token is None
    assert unknown.token is None and not unknown.already_revoked
    assert session.capabilities.is_revoked(stranger)
    actions = [d["action"] for d in of(w.entries(session), "capability_token", "revoked")]
    assert len(actions) == 3
    assert f"token:{token_id}" in actions[1] and "already revoked" in actions[1]
    assert f"token:{stranger}" in actions[2] and "unknown" in actions[2]


# -- budget reservations ---------------------------------------------------------------------


def test_an_llm_calls_budget_reservation_is_an_entry(tmp_path: Path) -> None:
    w = World(tmp_path)
    runtime = w.runtime([[{"text": "hi"}, {"usage": {"input_tokens": 10, "output_tokens": 2}}]])
    session = w.session(runtime)
    w.turn(runtime, session)
    records = w.entries(session)
    assert kinds(records) == [
        ("budget_reservation", "reserved"), ("budget_settlement", "settled")
    ]
    reserved = records[0].data
    assert reserved["actor"] == "runtime" and reserved["action"].startswith("model call ")
    assert reserved["reason"].startswith("reserved $") and "the next LLM call" in reserved["reason"]
    assert "session spend $" in reserved["reason"] and "workspace spend $" in reserved["reason"]


def test_a_tool_actions_budget_reservation_is_an_entry(tmp_path: Path) -> None:
    w = World(tmp_path)
    runtime = w.runtime([], Approve())
    session = w.session(runtime)
    runtime._prepare(session)  # registers the approval handler, as a turn does
    interceptor = SecurityInterceptor(
        session, SecurityPolicy.default(), w.key, workspace_root=w.ws
    )
    action = FileRead(path=str(w.ws / "notes.txt"))
    result = asyncio.run(interceptor.intercept(action, "a costly read", estimated_cost=0.25))
    assert result.reservation is not None
    w.store.save(session)
    [reserved] = of(w.entries(session), "budget_reservation", "reserved")
    assert reserved["action"] == action.summary()
    assert reserved["reason"].startswith("reserved $0.25")
    assert "session spend $0.25" in reserved["reason"]


# -- escape decisions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "proofs", "remembered"),
    [
        (ApproveSession(), ["SessionApproval"], "allow_session"),
        (ApproveAlways(), ["UserApproval", "CapabilityCreated"], "allow_always"),
    ],
)
def test_an_escape_approved_then_remembered_is_an_entry_each_time(
    tmp_path: Path, decision: ApprovalDecision, proofs: list[str], remembered: str
) -> None:
    w = World(tmp_path)
    script = [
        call("c1", "stat_path", str(w.secret)),
        call("c2", "stat_path", str(w.secret)),
        call("c3", "stat_path", str(w.ws / "notes.txt")),  # inside: not a decision
        [{"text": "3 bytes"}],
    ]
    runtime = w.runtime(script, decision)
    session = w.session(runtime)
    w.turn(runtime, session)
    records = w.entries(session)
    escapes = [r.data for r in records if r.data["action_type"] == "escape"]
    # the first call asks through the interceptor, as an escape, and the grant says its scope
    asked, *granted, later = escapes
    assert asked["decision"] == "approval_asked"
    assert asked["reason"].startswith("Workspace escape: tool stat_path wants to read")
    assert [(g["decision"], g["actor"], g["proof"]["kind"]) for g in granted] == [
        ("allowed", "user", kind) for kind in proofs
    ]
    # the second is let through by the remembered decision; the third, inside, is no decision
    assert (later["decision"], later["actor"]) == ("allowed", "runtime")
    assert later["proof"] == {"kind": "EscapeDecision", "value": remembered}
    assert {e["action"] for e in escapes} == {FileRead(path=str(w.secret)).summary()}


def test_an_escape_denied_by_policy_deny_or_a_protected_path_is_an_entry(
    tmp_path: Path,
) -> None:
    w = World(tmp_path)
    script = [
        call("c1", "read_file", str(w.secret)),
        call("c2", "read_file", "/etc/shadow"),
        [{"text": "refused"}],
    ]
    config = WorkspaceConfig.new(w.ws).with_escape_policy(EscapePolicy.DENY)
    runtime = w.runtime(script, Approve(), config)
    session = w.session(runtime)
    w.turn(runtime, session)
    denied = of(w.entries(session), "escape", "denied")
    assert [(d["action"], d["reason"]) for d in denied] == [
        (FileRead(path=str(w.secret)).summary(), "outside the workspace (escape policy: deny)"),
        (FileRead(path="/etc/shadow").summary(), "never allowed"),
    ]


def test_an_escape_let_through_by_the_workspace_settings_is_an_entry(tmp_path: Path) -> None:
    w = World(tmp_path)
    script = [call("c1", "stat_path", str(w.secret)), [{"text": "3 bytes"}]]
    runtime = w.runtime(script, ApproveSession(), WorkspaceConfig.new(w.ws).allow_read(w.outside))
    session = w.session(runtime)
    w.turn(runtime, session)
    [allowed] = of(w.entries(session), "escape", "allowed")
    assert allowed["action"] == FileRead(path=str(w.secret)).summary()
    assert allowed["proof"] == {"kind": "PathCheck", "value": "auto_allowed"}
    assert "auto_allow" in allowed["reason"]


@pytest.mark.parametrize(("decision", "outcome"), [(ApproveSession(), "allowed"),
                                                   (Deny(reason="no"), "denied")])
def test_an_escape_decided_by_the_calls_own_approval_is_an_entry(
    tmp_path: Path, decision: ApprovalDecision, outcome: str
) -> None:
    w = World(tmp_path)
    script = [call("c1", "read_file", str(w.secret)), [{"text": "ok"}]]
    runtime = w.runtime(script, decision)
    session = w.session(runtime)
    w.turn(runtime, session)
    records = w.entries(session)
    [escape] = [r.data for r in records if r.data["action_type"] == "escape"]
    assert escape["decision"] == outcome
    assert escape["action"] == FileRead(path=str(w.secret)).summary()
    assert "the call's own file_read action" in escape["reason"]
    if outcome == "allowed":
        assert escape["proof"]["kind"] == "SessionApproval"


# -- approval granted with its scope -------------------------------------------------------


@pytest.mark.parametrize(
    ("decision", "grants"),
    [
        (Approve(), [{"kind": "UserApproval", "scope": "once"}]),
        (ApproveSession(), [{"kind": "SessionApproval"}]),
        (ApproveWorkspace(), [{"kind": "WorkspaceApproval"}]),
        (ApproveAlways(), [{"kind": "UserApproval", "scope": "always"},
                           {"kind": "CapabilityCreated"}]),
    ],
)
def test_an_approval_granted_names_its_scope(
    tmp_path: Path, decision: ApprovalDecision, grants: list[dict[str, str]]
) -> None:
    w = World(tmp_path)
    runtime = w.runtime([call("c1", "read_file", "notes.txt"), [{"text": "milk"}]], decision)
    session = w.session(runtime)
    w.turn(runtime, session)
    granted = [d["proof"] for d in of(w.entries(session), "file_read", "allowed")]
    assert [{k: p[k] for k in g} for p, g in zip(granted, grants, strict=True)] == grants


def test_a_sub_agents_escape_decision_is_an_entry_of_the_child_session(tmp_path: Path) -> None:
    w = World(tmp_path)
    task = {"description": "peek", "prompt": f"read {w.secret}"}
    script = [
        [{"tool_call": {"id": "t1", "name": "task", "arguments": task}}],
        call("c1", "read_file", str(w.secret)),  # the child's call
        [{"text": "refused"}],  # the child's answer
        [{"text": "the sub-agent was refused"}],
    ]
    config = WorkspaceConfig.new(w.ws).with_escape_policy(EscapePolicy.DENY)
    runtime = w.runtime(script, Approve(), config)
    session = w.session(runtime)
    w.turn(runtime, session)
    assert verify(w.store.list_audit(), [w.key.public_key_base64]) == []
    [denied] = [
        r for r in w.store.list_audit()
        if (r.data["action_type"], r.data["decision"]) == ("escape", "denied")
    ]
    assert denied.session_id != session.id.bare
    child = w.store.load(denied.session_id)
    assert child is not None and child.parent_id == session.id
    assert denied.data["workspace"] == str(w.ws)


def test_a_deferred_escape_resolved_later_is_recorded_as_an_escape(tmp_path: Path) -> None:
    from tests.test_audit_log import Unavailable

    w = World(tmp_path)
    runtime = AgentRuntime(
        ScriptedProvider([call("c1", "stat_path", str(w.secret)), [{"text": "later"}]]),
        store=w.store,
        config=RuntimeConfig(workspace=WorkspaceConfig.new(w.ws)),
        approval_handler=Unavailable(),
        keypair=w.key,
    )
    runtime.add_tool(StatTool())
    session = w.session(runtime)
    w.turn(runtime, session)
    [pending] = session.approval_manager.deferred_queue.get_pending()
    runtime.resolve_deferred(session, pending.id, ApproveSession())
    w.store.save(session)
    entries = kinds(w.entries(session))
    assert ("escape", "deferred") in entries
    assert entries[-1] == ("escape", "resolved_allowed")
