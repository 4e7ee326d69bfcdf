"""Security properties end to end: through real stores, files on disk and the interceptor.

The unit tests of each security module check the rules one by one; these check that the rules
hold where an attacker would push: across a restart, in a tampered store file, in an approval
of a hostile path, in a token edited on disk, under any umask, and in SQL.

Threat model for stored state: an attacker who can edit the store could also just delete it,
so astrid does not detect that a snapshot was edited to a *plausible* value (say a spend of 0).
What it guarantees is that no edit makes it misbehave: no NaN, infinite or negative spend ever
reaches a tracker, a non-finite limit is refused, a widened token no longer verifies, and a
restored escape path never opens a never-allowed one.
"""

from __future__ import annotations

import ast
import asyncio
import json
import math
import os
import sqlite3
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from astrid.default_plugins.capability_stores import (
    FileCapabilityBackend,
    SqliteCapabilityBackend,
)
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import (
    BudgetExceeded,
    InvalidCost,
    InvalidPattern,
    InvalidSignature,
    SerializationError,
)
from astrid.messages import Message
from astrid.security.actions import (
    ExecuteCommand,
    FileDelete,
    FileRead,
    FileWriteOutsideSandbox,
    Permission,
    SensitiveAction,
)
from astrid.security.allowances import (
    Allowance,
    AllowanceStore,
    CommandPattern,
    FilePattern,
    WorkspaceRelative,
)
from astrid.security.approvals import (
    ApprovalDecision,
    ApprovalRequest,
    ApprovalResponse,
    ApproveAlways,
    ApproveSession,
    ApproveWorkspace,
    Deny,
)
from astrid.security.budget import (
    BudgetConfig,
    BudgetSnapshot,
    BudgetTracker,
    BudgetValidator,
    WorkspaceBudgetSnapshot,
    WorkspaceBudgetTracker,
)
from astrid.security.capabilities import (
    AuditEntryId,
    CapabilityStore,
    CapabilityToken,
    CapabilityValidator,
    NotAuthorized,
    ResourcePattern,
    TokenScope,
)
from astrid.security.crypto import KeyPair
from astrid.security.escape import (
    DEFAULT_NEVER_ALLOW,
    EscapeHandler,
    EscapeState,
    PathCheck,
    WorkspaceBoundary,
    WorkspaceConfig,
)
from astrid.security.interceptor import (
    AllowanceProof,
    ApprovalDenied,
    Capability,
    PolicyBlocked,
    SecurityInterceptor,
    literal_resource_pattern,
)
from astrid.security.policy import SecurityPolicy
from astrid.session import AgentSession
from astrid.store import SessionStore, WorkspaceState, open_store
from astrid.timeutil import utcnow

REPO = Path(__file__).resolve().parents[2]


def _file_store(root: Path) -> SessionStore:
    return SessionStore(FileBackend(root / "sessions"), budget=BudgetConfig.new(20.0, 5.0))


def _sqlite_store(root: Path) -> SessionStore:
    return SessionStore(SqliteBackend(root / "astrid.db"), budget=BudgetConfig.new(20.0, 5.0))


STORES = {"file": _file_store, "sqlite": _sqlite_store}


# -- budgets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(STORES))
def test_budget_spend_survives_a_restart(kind: str, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    store = STORES[kind](tmp_path)
    session = store.new_session("p")
    ws_tracker = store.attach_workspace(session, workspace, max_usd=10.0)
    validator = BudgetValidator(session.budget_tracker, ws_tracker)
    reservation = validator.reserve(4.0)
    validator.settle(reservation, 3.25)
    session.add_message(Message.user("spent"))
    store.save(session)
    store.save_workspace_of(session)
    store.close()

    store = STORES[kind](tmp_path)  # a new process would see exactly this
    restored = store.load(session.id)
    assert restored is not None
    assert restored.budget_tracker.spent() == 3.25
    assert restored.budget_tracker.config().session_max_usd == 20.0
    other = store.new_session("another session of the same workspace")
    tracker = store.attach_workspace(other, workspace, max_usd=10.0)
    assert tracker.spent() == 3.25
    with pytest.raises(BudgetExceeded):  # 3.25 + 7 > 10: the limit still counts the old spend
        BudgetValidator(other.budget_tracker, tracker).reserve(7.0)
    store.close()


TAMPERED_SPENDS = ["NaN", "Infinity", "-Infinity", "-5.0", "-0.0", "1e999", "null"]


def _edit_state(kind: str, root: Path, sid: str, edit: Any) -> None:
    """Edit a stored session's state as text, the way an attacker with the file would."""
    if kind == "file":
        path = root / "sessions" / f"{sid}.json"
        path.write_text(edit(path.read_text()))
        return
    conn = sqlite3.connect(root / "astrid.db")
    (state,) = conn.execute("SELECT state FROM sessions WHERE id = ?", (sid,)).fetchone()
    conn.execute("UPDATE sessions SET state = ? WHERE id = ?", (edit(state), sid))
    conn.commit()
    conn.close()


def _replace_spend(text: str, literal: str) -> str:
    data = json.loads(text)
    spent = data["budget_snapshot"]["session_spent_usd"]
    marker = "__SPEND__"
    data["budget_snapshot"]["session_spent_usd"] = marker
    assert spent == 7.5
    return json.dumps(data).replace(f'"{marker}"', literal)


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize("literal", TAMPERED_SPENDS)
def test_a_snapshot_edited_to_a_non_finite_or_negative_spend_is_refused_never_reset(
    kind: str, literal: str, tmp_path: Path
) -> None:
    """A tampered spend fails closed: the load names the file and key (it used to read 0)."""
    store = STORES[kind](tmp_path)
    session = store.new_session("p")
    session.budget_tracker.record_cost(7.5)
    store.save(session)
    store.close()
    _edit_state(kind, tmp_path, session.id.bare, lambda text: _replace_spend(text, literal))

    store = STORES[kind](tmp_path)
    if literal == "-0.0":  # a real zero, not a bad spend
        restored = store.load(session.id)
        assert restored is not None and restored.budget_tracker.spent() == 0.0
        assert str(restored.budget_tracker.spent()) == "0.0"
    else:
        with pytest.raises(SerializationError, match=r"budget_snapshot\.session_spent_usd") as info:
            store.load(session.id)
        assert session.id.bare in str(info.value)
    store.close()


def test_a_restored_tracker_refuses_bad_costs_and_keeps_its_limits() -> None:
    snapshot = BudgetSnapshot(
        session_spent_usd=0.0, config=BudgetConfig.new(5.0, 5.0), last_updated=utcnow()
    )
    tracker = BudgetTracker.restore(snapshot)
    for bad in (math.nan, math.inf, -math.inf, -1.0):
        with pytest.raises(InvalidCost):
            tracker.reserve(bad)
        with pytest.raises(InvalidCost):
            tracker.check_budget(bad)
        with pytest.raises(InvalidCost):
            tracker.record_cost(bad)
    with pytest.raises(BudgetExceeded):  # the limits are intact
        tracker.reserve(5.01)
    assert tracker.spent() == 0.0


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize(
    ("key", "literal"),
    [
        ("session_max_usd", "NaN"),
        ("session_max_usd", "Infinity"),
        ("per_action_max_usd", "NaN"),
        ("per_action_max_usd", "1e999"),
    ],
)
def test_a_snapshot_edited_to_a_non_finite_limit_is_refused(
    kind: str, key: str, literal: str, tmp_path: Path
) -> None:
    store = STORES[kind](tmp_path)
    session = store.new_session("p")
    store.save(session)
    store.close()

    def edit(text: str) -> str:
        data = json.loads(text)
        data["budget_snapshot"]["config"][key] = "__LIMIT__"
        return json.dumps(data).replace('"__LIMIT__"', literal)

    _edit_state(kind, tmp_path, session.id.bare, edit)
    store = STORES[kind](tmp_path)
    with pytest.raises(SerializationError, match=key):
        store.load(session.id)
    store.close()


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize("literal", TAMPERED_SPENDS)
def test_a_workspace_budget_edited_to_nan_or_negative_is_refused_never_reset(
    kind: str, literal: str, tmp_path: Path
) -> None:
    """A tampered workspace spend fails closed on attach and on save (it used to read 0)."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    store = STORES[kind](tmp_path)
    # The budget entry as the three-key layout (read when no one-document state exists) holds it.
    kv = store.kv(f"ws:{workspace}:budget")
    snapshot = WorkspaceBudgetSnapshot(total_spent_usd=6.0, last_updated=utcnow())
    data = snapshot.model_dump(mode="json")
    data["total_spent_usd"] = "__SPEND__"
    tampered = json.dumps(data).replace('"__SPEND__"', literal)
    kv.set("all", tampered.encode())
    if literal == "-0.0":
        tracker = store.attach_workspace(store.new_session("p"), workspace, max_usd=8.0)
        assert tracker.spent() == 0.0
    else:
        with pytest.raises(SerializationError, match="total_spent_usd") as info:
            store.attach_workspace(store.new_session("p"), workspace, max_usd=8.0)
        assert str(workspace) in str(info.value)
        session = store.new_session("p").with_workspace(workspace)
        session.with_workspace_budget(WorkspaceBudgetTracker(8.0))
        with pytest.raises(SerializationError, match="total_spent_usd"):
            store.save_workspace_of(session)  # an increment never lands on a bad total
        assert kv.get("all") == tampered.encode()
    store.close()


def test_a_nan_estimate_is_refused_by_the_interceptor_and_reserves_nothing() -> None:
    harness = _Harness([ApproveSession()])
    for bad in (math.nan, math.inf, -1.0):
        with pytest.raises(InvalidCost):
            harness.intercept(FileDelete(path="/tmp/x"), cost=bad)
    assert harness.session.budget_tracker.spent() == 0.0
    assert harness.handler.requests == []


# -- approvals of paths with glob metacharacters ----------------------------------------------


class ScriptedHandler:
    """Answers with the given decisions in order, then denies; remembers every request."""

    def __init__(self, decisions: list[ApprovalDecision]) -> None:
        self.decisions = list(decisions)
        self.requests: list[ApprovalRequest] = []

    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        self.requests.append(request)
        decision = self.decisions.pop(0) if self.decisions else Deny(reason="not again")
        return ApprovalResponse.new(request.id, decision)

    def is_available(self) -> bool:
        return True


class _Harness:
    def __init__(
        self,
        decisions: list[ApprovalDecision],
        *,
        capabilities: CapabilityStore | None = None,
        keypair: KeyPair | None = None,
    ) -> None:
        self.keypair = keypair or KeyPair.generate()
        self.session = AgentSession("p", capabilities=capabilities)
        self.handler = ScriptedHandler(decisions)
        self.session.approval_manager.register_handler(self.handler)
        self.interceptor = SecurityInterceptor(
            self.session,
            SecurityPolicy.default(),
            self.keypair,
            workspace_root=Path("/tmp/ws"),
        )

    def intercept(self, action: SensitiveAction, cost: float | None = None) -> Any:
        return asyncio.run(self.interceptor.intercept(action, "test", cost))


WIDENING = [
    ("/tmp/ws/*.txt", ["/tmp/ws/a.txt", "/tmp/ws/sub/b.txt", "/tmp/ws/.txt"]),
    ("/tmp/ws/?", ["/tmp/ws/a", "/tmp/ws//"]),
    ("/tmp/ws/[ab].txt", ["/tmp/ws/a.txt", "/tmp/ws/b.txt"]),
    ("/tmp/ws/[!a]", ["/tmp/ws/b"]),
    ("/tmp/ws/{a,b}.txt", ["/tmp/ws/a.txt", "/tmp/ws/b.txt"]),
    ("/tmp/ws/**", ["/tmp/ws/x", "/tmp/ws/deep/er/file"]),
    ("/tmp/ws/**/*", ["/tmp/ws/a/b"]),
    ("/tmp/ws/\\*", ["/tmp/ws/*", "/tmp/ws/x"]),
    ("/tmp/ws/a,b", ["/tmp/ws/a"]),
    ("*", ["/etc/shadow", "/tmp/ws/x"]),
]
"""An approved path with glob metacharacters, and paths it would cover if it were a glob."""

FILE_ACTIONS = [FileDelete, FileWriteOutsideSandbox, FileRead]
DECISIONS = {
    "session": ApproveSession,
    "workspace": ApproveWorkspace,
    "always": ApproveAlways,
}


@pytest.mark.parametrize("decision", sorted(DECISIONS))
@pytest.mark.parametrize("action_type", FILE_ACTIONS, ids=lambda t: t.__name__)
@pytest.mark.parametrize(("approved", "others"), WIDENING, ids=[w[0] for w in WIDENING])
def test_approving_a_path_with_glob_metacharacters_grants_exactly_that_path(
    decision: str, action_type: type[Any], approved: str, others: list[str]
) -> None:
    harness = _Harness([DECISIONS[decision]()])
    harness.intercept(action_type(path=approved))
    assert len(harness.handler.requests) == 1
    again = harness.intercept(action_type(path=approved))  # the grant covers the path itself
    assert isinstance(again.proof, AllowanceProof | Capability)
    assert len(harness.handler.requests) == 1
    for other in others:
        with pytest.raises((ApprovalDenied, PolicyBlocked)):
            harness.intercept(action_type(path=other))
    policy = SecurityPolicy.default()
    asked = [o for o in others if not policy.check(action_type(path=o)).is_blocked()]
    assert len(harness.handler.requests) == 1 + len(asked)


@pytest.mark.parametrize("decision", sorted(DECISIONS))
@pytest.mark.parametrize(
    ("approved", "other"),
    [("git*", "git-evil"), ("ls?", "lsx"), ("[rm]", "r"), ("{cat,rm}", "rm"), ("*", "rm")],
)
def test_approving_a_command_with_glob_metacharacters_grants_exactly_that_command(
    decision: str, approved: str, other: str
) -> None:
    harness = _Harness([DECISIONS[decision]()])
    harness.intercept(ExecuteCommand(command=approved, args=[]))
    harness.intercept(ExecuteCommand(command=approved, args=[]))
    with pytest.raises(ApprovalDenied):  # other arguments ask again (issue 14 item 6)
        harness.intercept(ExecuteCommand(command=approved, args=["-x"]))
    with pytest.raises(ApprovalDenied):
        harness.intercept(ExecuteCommand(command=other, args=[]))
    assert len(harness.handler.requests) == 3


# -- `..` traversal ----------------------------------------------------------------------------

TRAVERSALS = [
    "/tmp/ws/../../etc/passwd",
    "/tmp/ws/..",
    "/tmp/ws/sub/../../../root/.ssh/id_rsa",
    "/tmp/ws/./../x",
    "../etc/passwd",
    "..",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_dotdot_never_matches_an_allowance(path: str) -> None:
    store = AllowanceStore()
    for permission in (Permission.READ, Permission.WRITE, Permission.DELETE):
        for pattern in ("/tmp/ws/**", "**", "*", "/tmp/ws/*/../*"):
            store.add_allowance(
                Allowance.create(
                    FilePattern(pattern=pattern, permission=permission), session_only=True
                )
            )
            store.add_allowance(
                Allowance.create(
                    WorkspaceRelative(pattern=pattern, permission=permission),
                    session_only=True,
                    workspace_root="/tmp/ws",
                )
            )
    store.add_allowance(Allowance.create(CommandPattern(command="*"), session_only=True))
    for action in (FileRead(path=path), FileDelete(path=path), FileWriteOutsideSandbox(path=path)):
        assert store.find_matching(action, "/tmp/ws") is None
        assert store.find_matching(action, None) is None
    assert store.find_matching(ExecuteCommand(command=path, args=[]), None) is None
    # and the interceptor's policy blocks the action before any allowance is consulted
    harness = _Harness([])
    with pytest.raises(PolicyBlocked, match=r"traversal"):
        harness.intercept(FileDelete(path=path))


@pytest.mark.parametrize("path", TRAVERSALS)
def test_dotdot_is_refused_in_capability_patterns_and_never_matches(path: str) -> None:
    with pytest.raises(InvalidPattern):
        ResourcePattern.new(f"file://{path}")
    with pytest.raises(InvalidPattern):
        ResourcePattern.exact(f"file://{path}")
    with pytest.raises(InvalidPattern):
        literal_resource_pattern(f"file://{path}/*")
    for pattern in ("file:///tmp/ws/**", "file://**", "*", "file:///tmp/ws/*"):
        assert not ResourcePattern.new(pattern).matches(f"file://{path}")
    # a token whose resource was edited to contain `..` does not even decode
    key = KeyPair.generate()
    token = _token(key, "file:///tmp/ws/**")
    data = json.loads(token.model_dump_json())
    data["resource"] = f"file://{path}"
    with pytest.raises(ValueError):
        CapabilityToken.model_validate_json(json.dumps(data))


def test_dotdot_is_refused_by_the_workspace_boundary_and_escape_checks(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    depth = len(root.parts)
    boundary = WorkspaceBoundary(WorkspaceConfig.new(root))
    up = "/".join([".."] * depth)
    assert boundary.check(f"{root}/{up}/etc/shadow") is PathCheck.NEVER_ALLOWED
    assert boundary.check(f"{up}/etc/shadow") is PathCheck.NEVER_ALLOWED
    outside = f"{root}/../not-yet-created/file"
    assert not boundary.is_in_workspace(outside)
    assert boundary.check(outside) is PathCheck.REQUIRES_APPROVAL
    assert not boundary.is_in_workspace(f"{root}/sub/../../proj-sibling")
    handler = EscapeHandler()
    handler.restore_state(EscapeState(remembered_paths=["/etc", str(tmp_path)]))
    for path in (f"{root}/{up}/etc/passwd", "/etc/../etc/passwd", f"{up}/etc"):
        assert not handler.is_allowed(path, DEFAULT_NEVER_ALLOW)


# -- capability tokens -------------------------------------------------------------------------


def _token(key: KeyPair, resource: str, *, scope: TokenScope = TokenScope.PERSISTENT) -> Any:
    return CapabilityToken.create(
        ResourcePattern.new(resource),
        [Permission.READ],
        scope,
        bytes(8),
        AuditEntryId.new(),
        key,
        timedelta(hours=1),
    )


TAMPERINGS: dict[str, dict[str, Any]] = {
    "widened-resource": {"resource": ResourcePattern.new("file:///**")},
    "added-permission": {"permissions": [Permission.READ, Permission.DELETE]},
    "no-expiry": {"expires_at": None},
    "longer-expiry": {"expires_at": utcnow() + timedelta(days=3650)},
    "single-use-flag": {"single_use": True},
    "other-scope": {"scope": TokenScope.SESSION},
    "other-user": {"user_id": bytes(range(8))},
}


@pytest.mark.parametrize("kind", sorted(TAMPERINGS))
def test_a_tampered_token_is_refused_by_add_and_the_validator(kind: str) -> None:
    key = KeyPair.generate()
    token = _token(key, "file:///tmp/ws/a.txt")
    tampered = token.model_copy(update=TAMPERINGS[kind])
    store = CapabilityStore()
    with pytest.raises(InvalidSignature):
        store.add(tampered)
    validator = CapabilityValidator(store).trust_issuer(key.public_key_bytes)
    with pytest.raises(InvalidSignature):
        validator.validate_token(tampered)


def test_a_token_claiming_our_issuer_but_signed_by_another_key_is_refused() -> None:
    ours, attacker = KeyPair.generate(), KeyPair.generate()
    forged = _token(attacker, "file:///**").model_copy(update={"issuer": ours.public_key_bytes})
    store = CapabilityStore()
    with pytest.raises(InvalidSignature):
        store.add(forged)
    with pytest.raises(InvalidSignature):
        CapabilityValidator(store).trust_issuer(ours.public_key_bytes).validate_token(forged)


@pytest.mark.parametrize("backend", ["file", "sqlite"])
def test_a_token_edited_on_disk_grants_nothing(backend: str, tmp_path: Path) -> None:
    key = KeyPair.generate()
    token = _token(key, "file:///tmp/ws/a.txt")
    caps: Any = (
        FileCapabilityBackend(tmp_path / "caps")
        if backend == "file"
        else SqliteCapabilityBackend(tmp_path / "caps.db")
    )
    CapabilityStore(caps).add(token)
    data = json.loads(token.model_dump_json())
    data["resource"] = "file:///**"
    data["permissions"] = ["read", "write", "delete"]
    caps.put_token(str(token.id), json.dumps(data))  # what an attacker with the file can do

    store = CapabilityStore(caps)
    for resource in ("file:///etc/shadow", "file:///tmp/ws/a.txt"):
        for permission in (Permission.READ, Permission.DELETE):
            assert store.find_capability(resource, permission) is None
    assert isinstance(
        CapabilityValidator(store).check("file:///etc/shadow", Permission.READ), NotAuthorized
    )
    with pytest.raises(InvalidSignature):
        store.use_token(token.id)
    harness = _Harness([], capabilities=store, keypair=key)
    with pytest.raises(ApprovalDenied):  # not authorized by the token: the human is asked
        harness.intercept(FileDelete(path="/tmp/ws/a.txt"))
    if hasattr(caps, "close"):
        caps.close()


def test_a_foreign_issuer_token_is_refused_by_a_validator_that_trusts_only_us() -> None:
    ours, foreign = KeyPair.generate(), KeyPair.generate()
    store = CapabilityStore()
    store.add(_token(foreign, "file:///tmp/ws/**"))  # validly signed, by somebody else
    validator = CapabilityValidator(store).trust_issuer(ours.public_key_bytes)
    assert isinstance(validator.check("file:///tmp/ws/a.txt", Permission.READ), NotAuthorized)


@pytest.mark.parametrize("backend", ["file", "sqlite"])
def test_a_foreign_issuer_token_planted_in_the_store_does_not_pass_the_interceptor(
    backend: str, tmp_path: Path
) -> None:
    """A token validly signed by a key that is not the runtime's must not authorize actions."""
    ours, attacker = KeyPair.generate(), KeyPair.generate()
    caps: Any = (
        FileCapabilityBackend(tmp_path / "caps")
        if backend == "file"
        else SqliteCapabilityBackend(tmp_path / "caps.db")
    )
    planted = _token(attacker, "file:///**")
    caps.put_token(str(planted.id), planted.model_dump_json())
    harness = _Harness([], capabilities=CapabilityStore(caps), keypair=ours)
    with pytest.raises(ApprovalDenied):
        harness.intercept(FileRead(path="/home/user/.ssh/id_rsa"))


# -- restored escape paths ---------------------------------------------------------------------


def _tampered_escape_paths(tmp_path: Path) -> tuple[list[str], str]:
    fine = tmp_path / "fine"
    fine.mkdir()
    link = tmp_path / "innocent-looking"
    link.symlink_to("/etc")
    paths = [
        "/etc",
        "/etc/passwd",
        "/etc/../etc/shadow",
        "/usr/bin",
        "/root",
        "/var/log",
        str(link),
        str(link / "passwd"),
        str(fine),
    ]
    return paths, os.path.realpath(fine)


@pytest.mark.parametrize("kind", sorted(STORES))
def test_restored_escape_paths_from_a_session_never_open_never_allowed_paths(
    kind: str, tmp_path: Path
) -> None:
    paths, fine = _tampered_escape_paths(tmp_path)
    store = STORES[kind](tmp_path)
    session = store.new_session("p")
    store.save(session)

    def edit(text: str) -> str:
        data = json.loads(text)
        data["escape_state"] = {"remembered_paths": paths}
        return json.dumps(data)

    _edit_state(kind, tmp_path, session.id.bare, edit)
    restored = store.load(session.id)
    assert restored is not None
    assert restored.escape_handler.remembered_paths == frozenset({fine})
    for path in ("/etc/passwd", "/etc/shadow", "/usr/bin/env", "/root/.ssh"):
        assert not restored.escape_handler.is_allowed(path, DEFAULT_NEVER_ALLOW)
        assert not restored.escape_handler.is_allowed(path)
    store.close()


@pytest.mark.parametrize("kind", sorted(STORES))
@pytest.mark.parametrize("layout", ["document", "three keys"])
def test_restored_workspace_escape_paths_never_open_never_allowed_paths(
    kind: str, layout: str, tmp_path: Path
) -> None:
    paths, fine = _tampered_escape_paths(tmp_path)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    store = STORES[kind](tmp_path)
    if layout == "document":
        store.save_workspace_state(
            workspace, WorkspaceState(escape=EscapeState(remembered_paths=[]))
        )
        doc = store.kv(f"ws:{workspace}").get_json("state")
        doc["escape"] = {"remembered_paths": paths}
        store.kv(f"ws:{workspace}").set_json("state", doc)
    else:  # the older layout, read when there is no document
        store.kv(f"ws:{workspace}:escape").set_json("all", {"remembered_paths": paths})
    session = store.new_session("p")
    store.attach_workspace(session, workspace)
    for path in ("/etc/passwd", "/etc/shadow", "/usr/bin/env", "/root/.ssh"):
        assert not session.escape_handler.is_allowed(path, DEFAULT_NEVER_ALLOW)
    # the restored state itself is clean, so no later check can forget the never-allow list
    assert session.escape_handler.remembered_paths == frozenset({fine})
    store.close()


# -- private files whatever the umask ----------------------------------------------------------


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, str]:
    """Mode of every path astrid created under ``root`` (as octal strings)."""
    return {
        str(p.relative_to(root)): oct(stat.S_IMODE(p.lstat().st_mode))
        for p in sorted([root, *root.rglob("*")])
    }


def _assert_private(root: Path) -> None:
    modes = _modes(root)
    wrong = {
        name: mode
        for name, mode in modes.items()
        if mode != ("0o700" if (root / name).is_dir() else "0o600")
    }
    assert wrong == {}, f"not private: {wrong}"


def _exercise(store: SessionStore, workspace: Path) -> None:
    session = store.new_session("p")
    store.attach_workspace(session, workspace)
    session.add_message(Message.user("x"))
    store.save(session)
    store.append_messages(session.id, [Message.user("y")])
    store.save_workspace_of(session)
    store.deferred_queue_kv(session.id).set("k", b"v")
    store.list_sessions()
    key = KeyPair.generate()
    assert store.capabilities is not None
    token = _token(key, "mcp://s:*")
    store.capabilities.add(token)
    store.capabilities.revoke(_token(key, "mcp://t:*").id)
    single = CapabilityToken.create_with_options(
        ResourcePattern.new("mcp://u:*"),
        [Permission.INVOKE],
        TokenScope.PERSISTENT,
        bytes(8),
        AuditEntryId.new(),
        key,
        single_use=True,
    )
    store.capabilities.add(single)
    store.capabilities.use_token(single.id)


@pytest.mark.parametrize("mask", [0o000, 0o022], ids=["umask-000", "umask-022"])
@pytest.mark.parametrize(("storage", "capabilities"), [("sqlite", "sqlite"), ("file", "file")])
def test_store_files_and_directories_are_private_whatever_the_umask(
    mask: int, storage: str, capabilities: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    home = tmp_path / "not" / "yet" / "home"  # every directory on the way is created by astrid
    monkeypatch.setenv("ASTRID_HOME", str(home))
    config = tmp_path / "c.toml"
    config.write_text(
        f'[storage]\nbackend = "{storage}"\n[capabilities]\nstore = "{capabilities}"\n'
        '[git]\ncapture = "none"\n'
    )
    with _umask(mask):
        store = open_store(config)
        try:
            _exercise(store, workspace)
            _assert_private(tmp_path / "not")  # while open: -wal and -shm included
        finally:
            store.close()
        _assert_private(tmp_path / "not")


@pytest.mark.parametrize("mask", [0o000, 0o022], ids=["umask-000", "umask-022"])
def test_each_backend_creates_its_missing_parents_private(mask: int, tmp_path: Path) -> None:
    """Each backend on its own, so no other one has created the parent directories first.

    A directory astrid creates on the way to its store (``<home>`` for ``<home>/sessions``) is
    0700 too: under umask 000 a 0777 parent would let any local user rename the private
    ``sessions`` directory away and plant another one. Existing directories are left alone.
    """
    key = KeyPair.generate()
    with _umask(mask):
        files = SessionStore(FileBackend(tmp_path / "f" / "a" / "sessions"))
        files.save(AgentSession("p"))
        files.kv("ns").set("k", b"v")
        kv = FileBackend(tmp_path / "k" / "s", kv_directory=tmp_path / "k" / "a" / "kv").kv()
        kv.set("ns", "k", b"v")
        sqlite = SqliteBackend(tmp_path / "s" / "a" / "astrid.db")
        SessionStore(sqlite).save(AgentSession("p"))
        caps_file = CapabilityStore(FileCapabilityBackend(tmp_path / "c" / "a" / "caps"))
        caps_file.add(_token(key, "mcp://s:*"))
        caps_sqlite_backend = SqliteCapabilityBackend(tmp_path / "d" / "a" / "caps.db")
        CapabilityStore(caps_sqlite_backend).add(_token(key, "mcp://s:*"))
        for root in ("f", "k", "s", "c", "d"):
            _assert_private(tmp_path / root)
        sqlite.close()
        caps_sqlite_backend.close()


# -- SQL is built from parameters only ---------------------------------------------------------

HOSTILE = [
    "'; DROP TABLE sessions; --",
    '"); DELETE FROM messages; --',
    "x' OR '1'='1",
    "Robert'); DROP TABLE kv;--",
    "\0NUL",
    "%_*?[]\\",
    "ATTACH DATABASE '/tmp/pwn.db' AS pwn; --",
    "\u202e\U0001f680 unicode",
]


def _schema(path: Path) -> list[tuple[str, ...]]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")
        return [tuple(str(v) for v in row) for row in rows]
    finally:
        conn.close()


def test_hostile_text_round_trips_verbatim_and_the_schema_never_changes(tmp_path: Path) -> None:
    db = tmp_path / "astrid.db"
    store = SessionStore(SqliteBackend(db))
    store.backend.close()
    pristine = _schema(db)
    store = SessionStore(SqliteBackend(db))
    ids = []
    for text in HOSTILE:
        name = text.replace("\0", "<NUL>")  # key-value names may not hold NUL (InvalidKey)
        workspace = f"/tmp/{name}"
        session = store.new_session(text).with_workspace(workspace).with_model(text)
        session.metadata.title = text
        session.metadata.tags = [text]
        session.metadata.custom = {text: text}
        session.add_message(Message.user(text))
        store.save(session)
        store.append_messages(session.id, [Message.assistant(text)])
        store.kv(name).set(name, text.encode())
        store.kv(f"deferred:{name}").set_json(name, {text: [text]})
        ids.append((session.id.bare, text, name, workspace))
    for sid, text, name, workspace in ids:
        loaded = store.load(sid)
        assert loaded is not None
        assert loaded.system_prompt == text and loaded.model == text
        assert loaded.metadata.title == text and loaded.metadata.custom == {text: text}
        assert [m.text() for m in loaded.messages] == [text, text]
        assert store.kv(name).get(name) == text.encode()
        assert store.kv(f"deferred:{name}").get_json(name) == {text: [text]}
        [row] = store.list_sessions(workspace=workspace)
        assert row.id == sid and row.title == text and row.model == text
        assert store.count(workspace=workspace) == 1
    assert store.count() == len(HOSTILE)
    assert store.list_sessions(workspace="' OR '1'='1") == []
    store.close()
    assert _schema(db) == pristine
    assert not Path("/tmp/pwn.db").exists()


def test_hostile_capability_tokens_round_trip_and_the_schema_never_changes(tmp_path: Path) -> None:
    path = tmp_path / "caps.db"
    SqliteCapabilityBackend(path).close()
    pristine = _schema(path)
    caps = SqliteCapabilityBackend(path)
    store = CapabilityStore(caps)
    key = KeyPair.generate()
    tokens = [
        CapabilityToken.create(
            literal_resource_pattern(f"mcp://{text}:tool"),
            [Permission.INVOKE],
            TokenScope.PERSISTENT,
            bytes(8),
            AuditEntryId.new(),
            key,
        )
        for text in HOSTILE
    ]
    for token in tokens:
        store.add(token)
    for token, text in zip(tokens, HOSTILE, strict=True):
        got = store.get(token.id)
        assert got is not None and got.resource.as_str() == token.resource.as_str()
        assert store.find_capability(f"mcp://{text}:tool", Permission.INVOKE) == token
    store.revoke(tokens[0].id)
    assert CapabilityStore(caps).is_revoked(tokens[0].id)
    caps.close()
    assert _schema(path) == pristine


@pytest.mark.parametrize("backend", ["file", "sqlite"])
def test_an_exact_pattern_with_glob_characters_stays_exact_after_a_reload(
    backend: str, tmp_path: Path
) -> None:
    """``ResourcePattern.exact("mcp://srv:tool*")`` grants that one resource, before a reload
    and after it (the JSON form goes back through ``ResourcePattern.new``)."""
    key = KeyPair.generate()
    caps: Any = (
        FileCapabilityBackend(tmp_path / "caps")
        if backend == "file"
        else SqliteCapabilityBackend(tmp_path / "caps.db")
    )
    token = CapabilityToken.create(
        ResourcePattern.exact("mcp://srv:tool*"),
        [Permission.INVOKE],
        TokenScope.PERSISTENT,
        bytes(8),
        AuditEntryId.new(),
        key,
    )
    CapabilityStore(caps).add(token)
    assert not token.grants("mcp://srv:tool-evil", Permission.INVOKE)
    reloaded = CapabilityStore(caps)
    assert reloaded.find_capability("mcp://srv:tool*", Permission.INVOKE) is not None
    assert reloaded.find_capability("mcp://srv:tool-evil", Permission.INVOKE) is None


SQL_MODULES = [
    REPO / "astrid" / "default_plugins" / "sqlite_storage.py",
    REPO / "astrid" / "default_plugins" / "capability_stores.py",
]


@pytest.mark.parametrize("module", SQL_MODULES, ids=lambda p: p.name)
def test_sql_text_is_never_built_from_values(module: Path) -> None:
    """Every ``execute``/``executemany`` gets constant SQL; only PRAGMAs format a checked value.

    A constant is a string literal, a concatenation of literals, or a local name bound to one.
    An f-string is allowed only for a PRAGMA, and only with values formatted as ``:d`` or
    ``self.synchronous`` (validated against a literal set in the constructor).
    """
    tree = ast.parse(module.read_text())
    constants: dict[str, bool] = {}

    def constant(node: ast.expr) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return constant(node.left) and constant(node.right)
        if isinstance(node, ast.Name):
            return constants.get(node.id, False)
        if isinstance(node, ast.IfExp):
            return constant(node.body) and constant(node.orelse)
        return False

    def checked_pragma(node: ast.JoinedStr) -> bool:
        first = node.values[0]
        if not (isinstance(first, ast.Constant) and str(first.value).startswith("PRAGMA ")):
            return False
        for value in node.values:
            if not isinstance(value, ast.FormattedValue):
                continue
            spec = value.format_spec
            is_int = (
                spec is not None
                and isinstance(spec, ast.JoinedStr)
                and [getattr(v, "value", None) for v in spec.values] == ["d"]
            )
            is_sync = ast.unparse(value.value) == "self.synchronous"
            if not (is_int or is_sync):
                return False
        return True

    def literal(node: ast.expr) -> bool:
        try:
            ast.literal_eval(node)
        except ValueError:
            return isinstance(node, ast.Name) and constants.get(node.id, False)
        return True

    def bind(target: ast.expr, ok: bool) -> None:
        if isinstance(target, ast.Name):
            constants[target.id] = constants.get(target.id, True) and ok
        elif isinstance(target, ast.Tuple):
            for element in target.elts:
                bind(element, ok)

    # Names bound to constant SQL; loop variables over literal tables (migration statements)
    # count as constants too.
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            bind(node.targets[0], constant(node.value) or literal(node.value))
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            bind(node.target, constant(node.value) or literal(node.value))
        elif isinstance(node, ast.For):
            bind(node.target, literal(node.iter))
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("execute", "executemany", "executescript")
    ]
    assert calls, "no SQL calls found: has the module moved?"
    bad = []
    for call in calls:
        sql = call.args[0] if call.args else None
        ok = sql is not None and (
            constant(sql) or (isinstance(sql, ast.JoinedStr) and checked_pragma(sql))
        )
        if not ok:
            bad.append(f"line {call.lineno}: {ast.unparse(call)[:100]}")
    assert bad == []
