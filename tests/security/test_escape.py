"""Workspace boundaries and escape handling: the original's tests (spec §6) plus our fixes."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePath
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astrid.security.escape import (
    DEFAULT_NEVER_ALLOW,
    AutoAllow,
    EscapeDecision,
    EscapeFlow,
    EscapeFlowKind,
    EscapeHandler,
    EscapeOperation,
    EscapePolicy,
    EscapeRequest,
    EscapeState,
    PathCheck,
    WorkspaceBoundary,
    WorkspaceConfig,
    WorkspaceMode,
    canonicalize,
    is_never_allowed_path,
    path_parts,
    path_starts_with,
    resolve_path,
)


def _request(path: str | Path, op: EscapeOperation = EscapeOperation.READ) -> EscapeRequest:
    return EscapeRequest.new(path, op, "test")


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.rs").write_text("fn main() {}\n")
    (tmp_path / "outside").mkdir()
    return root


# ------------------------------------------------------------------------------------ types


def test_escape_operation_values_and_display() -> None:
    assert [op.value for op in EscapeOperation] == [
        "read", "write", "create", "delete", "execute", "list"
    ]
    assert str(EscapeOperation.DELETE) == "delete"


def test_escape_decision_predicates() -> None:
    assert [d.value for d in EscapeDecision] == [
        "allow_once", "allow_session", "allow_always", "deny"
    ]
    assert EscapeDecision.ALLOW_ONCE.is_allowed()
    assert EscapeDecision.ALLOW_SESSION.is_allowed()
    assert EscapeDecision.ALLOW_ALWAYS.is_allowed()
    assert not EscapeDecision.DENY.is_allowed()
    assert EscapeDecision.ALLOW_ALWAYS.should_remember()
    for decision in (EscapeDecision.ALLOW_ONCE, EscapeDecision.ALLOW_SESSION,
                     EscapeDecision.DENY):
        assert not decision.should_remember()


def test_escape_request_json_and_builders() -> None:
    request = EscapeRequest.new(Path("/tmp/x"), EscapeOperation.WRITE, "needs it")
    assert request.tool_name is None
    assert request.server_name is None
    with_both = request.with_tool("write_file").with_server("fs")
    assert (with_both.tool_name, with_both.server_name) == ("write_file", "fs")
    assert request.tool_name is None  # builders copy
    data = json.loads(with_both.model_dump_json())
    assert set(data) == {"request_id", "path", "operation", "reason", "created_at",
                         "tool_name", "server_name"}
    assert str(UUID(data["request_id"])) == data["request_id"]
    assert data["path"] == "/tmp/x"
    assert data["operation"] == "write"
    assert data["created_at"].endswith("Z")
    assert EscapeRequest.model_validate_json(with_both.model_dump_json()) == with_both
    assert json.loads(request.model_dump_json())["tool_name"] is None


def test_escape_request_missing_optional_fields() -> None:
    text = json.dumps({
        "request_id": "6f1c2a7e-9d2b-4c1e-8a3f-1b2c3d4e5f60",
        "path": "/srv/data",
        "operation": "list",
        "reason": "r",
        "created_at": "2024-01-01T00:00:00+01:00",
    })
    request = EscapeRequest.model_validate_json(text)
    assert request.tool_name is None
    assert request.server_name is None
    assert request.created_at.isoformat() == "2023-12-31T23:00:00+00:00"


def test_unique_request_ids() -> None:
    assert _request("/a").request_id != _request("/a").request_id


def test_escape_state_default_and_json() -> None:
    assert EscapeState().remembered_paths == []
    assert json.loads(EscapeState().model_dump_json()) == {"remembered_paths": []}
    assert EscapeState.model_validate_json('{"remembered_paths": ["/a"]}').remembered_paths == [
        "/a"
    ]


def test_path_check_predicates() -> None:
    assert [c.value for c in PathCheck] == [
        "allowed", "auto_allowed", "never_allowed", "requires_approval"
    ]
    assert PathCheck.ALLOWED.is_allowed()
    assert PathCheck.AUTO_ALLOWED.is_allowed()
    assert not PathCheck.NEVER_ALLOWED.is_allowed()
    assert not PathCheck.REQUIRES_APPROVAL.is_allowed()
    assert PathCheck.REQUIRES_APPROVAL.needs_approval()
    assert not PathCheck.ALLOWED.needs_approval()
    assert PathCheck.NEVER_ALLOWED.is_blocked()
    assert not PathCheck.AUTO_ALLOWED.is_blocked()


def test_escape_flow_from_check() -> None:
    for check in (PathCheck.ALLOWED, PathCheck.AUTO_ALLOWED):
        flow = EscapeFlow.from_check(check, "/x", EscapeOperation.READ, "r")
        assert flow.kind is EscapeFlowKind.ALLOWED
        assert flow.is_allowed()
        assert flow.request is None
    denied = EscapeFlow.from_check(PathCheck.NEVER_ALLOWED, "/x", EscapeOperation.READ, "r")
    assert denied.is_denied()
    assert denied.request is None
    asking = EscapeFlow.from_check(
        PathCheck.REQUIRES_APPROVAL, Path("/x/y"), EscapeOperation.DELETE, "cleanup"
    )
    assert asking.needs_approval()
    assert asking.request is not None
    assert asking.request.path == "/x/y"
    assert asking.request.operation is EscapeOperation.DELETE
    assert asking.request.reason == "cleanup"


# ------------------------------------------------------------------------------------ config


def test_config_new_defaults(tmp_path: Path) -> None:
    config = WorkspaceConfig.new(tmp_path)
    assert config.root == str(tmp_path)
    assert config.mode is WorkspaceMode.SAFE
    assert config.escape_policy is EscapePolicy.ASK
    assert config.auto_allow == AutoAllow()
    assert config.never_allowed == ["/etc", "/var", "/usr", "/bin", "/sbin", "/boot", "/root"]
    assert tuple(config.never_allowed) == DEFAULT_NEVER_ALLOW
    assert not config.allow_create_outside
    assert not config.allow_delete_outside
    assert WorkspaceConfig.default().root == "."
    assert WorkspaceConfig() == WorkspaceConfig.default()


def test_config_builders_return_new_configs(tmp_path: Path) -> None:
    base = WorkspaceConfig.new(tmp_path)
    built = (
        base.with_mode(WorkspaceMode.GUIDED)
        .with_escape_policy(EscapePolicy.DENY)
        .allow_read("/opt/docs")
        .allow_write(Path("/opt/out"))
        .never_allow("/secrets")
    )
    assert built.mode is WorkspaceMode.GUIDED
    assert built.escape_policy is EscapePolicy.DENY
    assert built.auto_allow.read == ["/opt/docs"]
    assert built.auto_allow.write == ["/opt/out"]
    assert built.never_allowed[-1] == "/secrets"
    assert len(built.never_allowed) == len(DEFAULT_NEVER_ALLOW) + 1
    assert base.mode is WorkspaceMode.SAFE
    assert base.auto_allow.read == []
    assert "/secrets" not in base.never_allowed


def test_config_json_uses_original_field_names(tmp_path: Path) -> None:
    config = WorkspaceConfig.new(tmp_path).never_allow("/secrets").allow_read("/opt")
    data = json.loads(config.model_dump_json())
    assert set(data) == {"root", "mode", "escape_policy", "auto_allow", "never_allow",
                         "allow_create_outside", "allow_delete_outside"}
    assert data["never_allow"][-1] == "/secrets"
    assert data["auto_allow"] == {"read": ["/opt"], "write": [], "patterns": []}
    assert data["mode"] == "safe"
    assert WorkspaceConfig.model_validate_json(config.model_dump_json()) == config
    assert WorkspaceConfig(never_allow=["/x"]).never_allowed == ["/x"]
    assert WorkspaceConfig.model_validate({"root": "/w"}).never_allowed == list(
        DEFAULT_NEVER_ALLOW
    )


def test_config_mode_serde() -> None:
    config = WorkspaceConfig.model_validate({"root": "/w", "mode": "autonomous",
                                            "escape_policy": "allow"})
    assert config.mode is WorkspaceMode.AUTONOMOUS
    assert config.escape_policy is EscapePolicy.ALLOW


def test_config_is_in_workspace_is_raw() -> None:
    config = WorkspaceConfig.new("/home/u/proj")
    assert config.is_in_workspace("/home/u/proj/src/main.rs")
    assert config.is_in_workspace("/home/u/proj")
    assert not config.is_in_workspace("/home/u/project")
    assert not config.is_in_workspace("/tmp/other")


def test_path_starts_with_is_component_wise() -> None:
    assert path_starts_with("/a/b/c", "/a/b")
    assert path_starts_with("/a/b", "/a/b")
    assert not path_starts_with("/a/bc", "/a/b")
    assert not path_starts_with("/a", "/a/b")
    assert path_starts_with("/anything", "/")


# ------------------------------------------------------------------------------------ boundary


def test_inside_workspace(workspace: Path) -> None:
    boundary = WorkspaceBoundary(WorkspaceConfig.new(workspace))
    assert boundary.is_in_workspace(workspace / "src" / "main.rs")
    assert boundary.check(workspace / "src" / "main.rs") is PathCheck.ALLOWED
    assert boundary.is_in_workspace(workspace / "src" / "new_file.rs")  # need not exist
    assert not boundary.is_in_workspace("/tmp/other")
    assert boundary.check("/tmp/other") is PathCheck.REQUIRES_APPROVAL


def test_never_allow_etc(workspace: Path) -> None:
    config = WorkspaceConfig.new(workspace).never_allow("/etc")
    boundary = WorkspaceBoundary(config)
    assert boundary.is_never_allowed("/etc/passwd")
    assert boundary.check("/etc/passwd") is PathCheck.NEVER_ALLOWED
    assert boundary.check("/etc") is PathCheck.NEVER_ALLOWED
    assert boundary.check("/etcetera/file") is PathCheck.REQUIRES_APPROVAL


def test_never_allowed_wins_over_autonomous(workspace: Path) -> None:
    boundary = WorkspaceBoundary(
        WorkspaceConfig.new(workspace).with_mode(WorkspaceMode.AUTONOMOUS)
    )
    assert boundary.check("/etc/shadow") is PathCheck.NEVER_ALLOWED
    assert boundary.check("/usr/bin/env") is PathCheck.NEVER_ALLOWED


def test_never_allowed_inside_workspace(workspace: Path) -> None:
    config = WorkspaceConfig.new(workspace).never_allow(workspace / "src")
    boundary = WorkspaceBoundary(config)
    assert boundary.check(workspace / "src" / "main.rs") is PathCheck.NEVER_ALLOWED
    relative = WorkspaceBoundary(WorkspaceConfig.new(workspace).never_allow("src"))
    assert relative.check("src/main.rs") is PathCheck.NEVER_ALLOWED


def test_allow_read_auto_allows() -> None:
    config = WorkspaceConfig.new("/home/u/proj").allow_read("/usr/share/doc")
    boundary = WorkspaceBoundary(config)
    assert boundary.is_auto_allowed("/usr/share/doc/readme.txt")
    assert not boundary.is_auto_allowed("/usr/share/docs/readme.txt")
    # never_allow is checked first: /usr is blocked by default
    assert boundary.check("/usr/share/doc/readme.txt") is PathCheck.NEVER_ALLOWED


def test_auto_allowed_check(workspace: Path) -> None:
    outside = workspace.parent / "outside"
    boundary = WorkspaceBoundary(WorkspaceConfig.new(workspace).allow_write(outside))
    assert boundary.check(outside / "out.txt") is PathCheck.AUTO_ALLOWED
    reader = WorkspaceBoundary(WorkspaceConfig.new(workspace).allow_read(outside))
    # the operation is not considered: a read entry allows any access
    assert reader.check(outside / "out.txt") is PathCheck.AUTO_ALLOWED


def test_auto_allow_patterns(workspace: Path) -> None:
    outside = workspace.parent / "outside"
    config = WorkspaceConfig.new(workspace).model_copy(
        update={"auto_allow": AutoAllow(patterns=[f"{outside}/*.log", "[unclosed"])}
    )
    boundary = WorkspaceBoundary(config)  # the invalid glob is dropped
    assert boundary.check(outside / "run.log") is PathCheck.AUTO_ALLOWED
    assert boundary.check(outside / "deep" / "run.log") is PathCheck.AUTO_ALLOWED  # * crosses /
    assert boundary.check(outside / "run.txt") is PathCheck.REQUIRES_APPROVAL


def test_autonomous_mode() -> None:
    config = WorkspaceConfig.new("/home/u/proj").with_mode(WorkspaceMode.AUTONOMOUS)
    assert WorkspaceBoundary(config).check("/tmp/random/file") is PathCheck.ALLOWED


@pytest.mark.parametrize("mode", [WorkspaceMode.SAFE, WorkspaceMode.GUIDED])
@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (EscapePolicy.ASK, PathCheck.REQUIRES_APPROVAL),
        (EscapePolicy.DENY, PathCheck.NEVER_ALLOWED),
        (EscapePolicy.ALLOW, PathCheck.AUTO_ALLOWED),
    ],
)
def test_escape_policy(
    workspace: Path, mode: WorkspaceMode, policy: EscapePolicy, expected: PathCheck
) -> None:
    config = WorkspaceConfig.new(workspace).with_mode(mode).with_escape_policy(policy)
    boundary = WorkspaceBoundary(config)
    assert boundary.check("/tmp/random/file") is expected
    assert boundary.check(workspace / "src") is PathCheck.ALLOWED


def test_check_all_most_restrictive(workspace: Path) -> None:
    outside = workspace.parent / "outside"
    boundary = WorkspaceBoundary(WorkspaceConfig.new(workspace).allow_read(outside))
    inside = workspace / "src" / "main.rs"
    assert boundary.check_all([]) is PathCheck.ALLOWED
    assert boundary.check_all([inside]) is PathCheck.ALLOWED
    assert boundary.check_all([inside, outside / "a"]) is PathCheck.AUTO_ALLOWED
    assert boundary.check_all([outside / "a", "/tmp/zzz", inside]) is (
        PathCheck.REQUIRES_APPROVAL
    )
    assert boundary.check_all(["/tmp/zzz", "/etc/passwd", inside]) is PathCheck.NEVER_ALLOWED


def test_relative_paths_resolve_against_root(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workspace.parent / "outside")
    boundary = WorkspaceBoundary(WorkspaceConfig.new(workspace))
    assert boundary.expand_path("src/main.rs") == str((workspace / "src" / "main.rs").resolve())
    assert boundary.check("src/main.rs") is PathCheck.ALLOWED
    assert boundary.check("not/yet/there.txt") is PathCheck.ALLOWED
    assert boundary.check("../outside/x") is PathCheck.REQUIRES_APPROVAL


# ---------------------------------------------------------------- our fix: `..` normalisation


def test_nonexistent_dotdot_path_is_not_inside(workspace: Path) -> None:
    boundary = WorkspaceBoundary(WorkspaceConfig.new(workspace))
    sneaky = f"{workspace}/../../etc/x"
    assert not os.path.exists(sneaky)
    assert not boundary.is_in_workspace(sneaky)
    assert boundary.expand_path(sneaky) == os.path.normpath(
        os.path.join(os.path.realpath(workspace), "../../etc/x")
    )
    assert boundary.check(sneaky) is PathCheck.REQUIRES_APPROVAL
    sibling = f"{workspace}/missing/../../outside/new.txt"
    assert not boundary.is_in_workspace(sibling)


def test_dotdot_into_etc_is_never_allowed(workspace: Path) -> None:
    boundary = WorkspaceBoundary(WorkspaceConfig.new(workspace))
    depth = len(Path(workspace).resolve().parts) - 1
    sneaky = str(workspace) + "/.." * depth + "/etc/not-there"
    assert boundary.check(sneaky) is PathCheck.NEVER_ALLOWED
    assert boundary.check("../" * depth + "etc/not-there") is PathCheck.NEVER_ALLOWED


def test_dotdot_staying_inside_is_inside(workspace: Path) -> None:
    boundary = WorkspaceBoundary(WorkspaceConfig.new(workspace))
    assert boundary.is_in_workspace(f"{workspace}/missing/../src/new.rs")
    assert boundary.check(f"{workspace}/missing/../src/new.rs") is PathCheck.ALLOWED


def test_symlink_out_of_workspace_is_not_inside(workspace: Path) -> None:
    outside = workspace.parent / "outside"
    (workspace / "link").symlink_to(outside, target_is_directory=True)
    boundary = WorkspaceBoundary(WorkspaceConfig.new(workspace))
    assert not boundary.is_in_workspace(workspace / "link" / "new_file")  # does not exist
    assert boundary.check(workspace / "link" / "new_file") is PathCheck.REQUIRES_APPROVAL


def test_root_is_canonicalised(workspace: Path) -> None:
    alias = workspace.parent / "alias"
    alias.symlink_to(workspace, target_is_directory=True)
    boundary = WorkspaceBoundary(WorkspaceConfig.new(alias))
    assert boundary.root == str(workspace.resolve())
    assert boundary.check(workspace / "src" / "main.rs") is PathCheck.ALLOWED
    assert boundary.check(alias / "src" / "main.rs") is PathCheck.ALLOWED
    assert boundary.check(f"{alias}/../outside/x") is PathCheck.REQUIRES_APPROVAL


def test_resolve_path_helpers(workspace: Path) -> None:
    assert canonicalize(workspace / "nope") is None
    assert canonicalize(workspace) == str(workspace.resolve())
    assert resolve_path(f"{workspace}/a/../b") == str(workspace.resolve() / "b")
    assert canonicalize("/bad\0path") is None
    assert resolve_path("/bad\0path/../x") == "/x"


# ------------------------------------------------------------------------------------ handler


def test_allow_always_then_clear_all(tmp_path: Path) -> None:
    handler = EscapeHandler()
    handler.process_decision(_request(tmp_path), EscapeDecision.ALLOW_ALWAYS)
    assert handler.is_allowed(tmp_path)
    assert str(tmp_path.resolve()) in handler.remembered_paths
    handler.clear_all()
    assert not handler.is_allowed(tmp_path)


def test_allow_session_then_clear_session(tmp_path: Path) -> None:
    handler = EscapeHandler()
    handler.process_decision(_request(tmp_path), EscapeDecision.ALLOW_SESSION)
    assert handler.is_allowed(tmp_path)
    assert handler.session_paths == frozenset({str(tmp_path.resolve())})
    handler.clear_session()
    assert not handler.is_allowed(tmp_path)


def test_clear_session_keeps_remembered(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    handler = EscapeHandler()
    handler.process_decision(_request(a), EscapeDecision.ALLOW_ALWAYS)
    handler.process_decision(_request(b), EscapeDecision.ALLOW_SESSION)
    handler.clear_session()
    assert handler.is_allowed(a)
    assert not handler.is_allowed(b)


@pytest.mark.parametrize("decision", [EscapeDecision.ALLOW_ONCE, EscapeDecision.DENY])
def test_once_and_deny_store_nothing(tmp_path: Path, decision: EscapeDecision) -> None:
    handler = EscapeHandler()
    handler.process_decision(_request(tmp_path), decision)
    assert not handler.is_allowed(tmp_path)
    assert handler.remembered_paths == frozenset()
    assert handler.session_paths == frozenset()


def test_exact_path_not_prefix(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    handler = EscapeHandler()
    handler.process_decision(_request(tmp_path), EscapeDecision.ALLOW_ALWAYS)
    assert not handler.is_allowed(tmp_path / "file.txt")


def test_canonical_matching(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    handler = EscapeHandler()
    handler.process_decision(_request(tmp_path / "link"), EscapeDecision.ALLOW_ALWAYS)
    assert handler.is_allowed(real)
    assert handler.is_allowed(f"{real}/../real")


def test_nonexistent_path_kept_raw(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing")
    handler = EscapeHandler()
    handler.process_decision(_request(missing), EscapeDecision.ALLOW_SESSION)
    assert handler.session_paths == frozenset({missing})
    assert handler.is_allowed(missing)


def test_export_restore_round_trip(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    handler = EscapeHandler()
    handler.process_decision(_request(b), EscapeDecision.ALLOW_ALWAYS)
    handler.process_decision(_request(a), EscapeDecision.ALLOW_ALWAYS)
    handler.process_decision(_request(tmp_path), EscapeDecision.ALLOW_SESSION)
    state = handler.export_state()
    assert state.remembered_paths == sorted([str(a.resolve()), str(b.resolve())])
    text = state.model_dump_json()
    restored = EscapeHandler()
    restored.restore_state(EscapeState.model_validate_json(text))
    assert restored.is_allowed(a)
    assert restored.is_allowed(b)
    assert not restored.is_allowed(tmp_path)  # session paths are not exported


def test_restore_merges(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    handler = EscapeHandler()
    handler.process_decision(_request(a), EscapeDecision.ALLOW_ALWAYS)
    handler.restore_state(EscapeState(remembered_paths=[str(b)]))
    assert handler.is_allowed(a)
    assert handler.is_allowed(b)


def test_restore_rejects_relative_and_missing(tmp_path: Path) -> None:
    handler = EscapeHandler()
    handler.restore_state(EscapeState(remembered_paths=[
        "relative/path", "../escape/attempt", str(tmp_path / "does-not-exist"),
    ]))
    assert handler.remembered_paths == frozenset()


def test_restore_stores_canonical(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    handler = EscapeHandler()
    handler.restore_state(EscapeState(remembered_paths=[f"{real}/../real"]))
    assert handler.remembered_paths == frozenset({str(real.resolve())})


def test_copy_is_independent(tmp_path: Path) -> None:
    handler = EscapeHandler()
    handler.process_decision(_request(tmp_path), EscapeDecision.ALLOW_SESSION)
    copy = handler.copy()
    assert copy.is_allowed(tmp_path)
    copy.clear_all()
    assert handler.is_allowed(tmp_path)
    assert "EscapeHandler" in repr(handler)


# ---------------------------------------------------------------- our fix: never-allowed wins


def test_tampered_state_dropped_with_boundary(workspace: Path) -> None:
    assert os.path.exists("/etc")
    boundary = WorkspaceBoundary(WorkspaceConfig.new(workspace))
    outside = workspace.parent / "outside"
    tampered = EscapeState(remembered_paths=["/etc", str(outside)])
    handler = EscapeHandler()
    handler.restore_state(tampered, boundary)
    assert handler.remembered_paths == frozenset({str(outside.resolve())})
    assert not handler.is_allowed("/etc")


def test_tampered_state_without_boundary_still_blocked_by_never_allow(workspace: Path) -> None:
    handler = EscapeHandler()
    handler.restore_state(EscapeState(remembered_paths=["/etc"]))
    assert handler.is_allowed("/etc")  # the original's behaviour without a never-allow list
    config = WorkspaceConfig.new(workspace)
    assert not handler.is_allowed("/etc", config.never_allowed)
    assert not handler.is_allowed("/etc", DEFAULT_NEVER_ALLOW)


def test_never_allowed_beats_session_and_always(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    handler = EscapeHandler()
    handler.process_decision(_request(blocked), EscapeDecision.ALLOW_ALWAYS)
    handler.process_decision(_request(blocked / "x"), EscapeDecision.ALLOW_SESSION)
    assert handler.is_allowed(blocked)
    assert not handler.is_allowed(blocked, [str(blocked)])
    assert not handler.is_allowed(blocked / "x", [str(blocked)])
    assert handler.is_allowed(blocked, ["/etc"])


def test_is_never_allowed_path(tmp_path: Path) -> None:
    assert is_never_allowed_path("/etc/passwd", DEFAULT_NEVER_ALLOW)
    assert is_never_allowed_path("/etc", ["/etc"])
    assert not is_never_allowed_path("/etcetera", ["/etc"])
    assert not is_never_allowed_path(tmp_path, DEFAULT_NEVER_ALLOW)
    assert not is_never_allowed_path("/etc/passwd", [])
    # lexical `..` and symlinks cannot hide a blocked path
    assert is_never_allowed_path(f"{tmp_path}/missing/" + "../" * 20 + "etc/x", ["/etc"])
    (tmp_path / "to-etc").symlink_to("/etc", target_is_directory=True)
    assert is_never_allowed_path(tmp_path / "to-etc" / "passwd", ["/etc"])
    assert is_never_allowed_path(tmp_path / "to-etc" / "not-there", ["/etc"])


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="/.aé", max_size=12))
def test_path_parts_equals_purepath_parts(path: str) -> None:
    assert path_parts(path) == PurePath(path).parts


def test_restoring_many_paths_checks_each_against_the_boundary(tmp_path: Path) -> None:
    """The batch check of ``restore_state`` drops exactly what ``is_never_allowed`` refuses."""
    blocked = tmp_path / "secret"
    blocked.mkdir()
    link = tmp_path / "link"
    link.symlink_to(blocked)
    keep = []
    for i in range(20):
        ok = tmp_path / f"ok{i}"
        ok.mkdir()
        keep.append(str(ok))
    inside = blocked / "inner"
    inside.mkdir()
    config = WorkspaceConfig(root=tmp_path / "ws", never_allowed=[str(blocked)])
    boundary = WorkspaceBoundary(config)
    candidates = [*keep, str(inside), str(link / "inner"), str(blocked)]
    handler = EscapeHandler()
    handler.restore_state(EscapeState(remembered_paths=candidates), boundary)
    expected = {os.path.realpath(c) for c in candidates if not boundary.is_never_allowed(c)}
    assert handler.remembered_paths == frozenset(expected) == frozenset(keep)
