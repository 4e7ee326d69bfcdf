"""The deferred-resolution queue and its item types (spec §3.4, §3.5, §10)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import ApprovalError, ResolutionNotFound, SecurityError, StorageError
from astrid.security.actions import FileDelete, NetworkRequest, Permission, RiskLevel
from astrid.security.allowances import AllowanceStore
from astrid.security.approvals import (
    AllowanceProof,
    Allowed,
    ApprovalDecision,
    ApprovalManager,
    ApprovalResponse,
    ApproveAlways,
    ApproveSession,
    ApproveWorkspace,
    Deferred,
)
from astrid.security.crypto import KeyPair
from astrid.security.deferred import (
    MAX_LOAD_AGE,
    PENDING_ACTION_ADAPTER,
    ActionContext,
    ApprovalNeeded,
    ApprovalRequest,
    BudgetExceededAction,
    CapabilityMissing,
    DeferredResolution,
    DeferredResolutionStore,
    ErrorResolution,
    FallbackBehavior,
    Priority,
    RiskAssessment,
    format_request_id,
    format_resolution_id,
)
from astrid.security.interceptor import (
    ApprovalDeferred,
    ApprovalDenied,
    Capability,
    CapabilityCreated,
    SecurityInterceptor,
    SessionApproval,
    WorkspaceApproval,
)
from astrid.security.kv import MemoryKvStore, ScopedKvStore
from astrid.security.policy import SecurityPolicy
from astrid.session import AgentSession
from astrid.store import SessionStore
from astrid.timeutil import utcnow

NAMESPACE = "test:deferred"


def make_request() -> ApprovalRequest:
    return ApprovalRequest.new(FileDelete(path="/important.txt"), "Cleaning up files")


def make_resolution(priority: Priority = Priority.NORMAL) -> DeferredResolution:
    return DeferredResolution.new(
        ApprovalNeeded(request=make_request()),
        "user unavailable",
        priority,
        ActionContext.new("cleaning up workspace"),
    )


def aged(resolution: DeferredResolution, age: timedelta) -> DeferredResolution:
    return resolution.model_copy(update={"queued_at": utcnow() - age})


class FlakyKv:
    """A KvStore whose operations can be made to fail."""

    def __init__(self) -> None:
        self.inner = MemoryKvStore()
        self.fail_list = False
        self.fail_set = False
        self.fail_delete = False
        self.fail_get_for: set[str] = set()

    def get(self, namespace: str, key: str) -> bytes | None:
        if key in self.fail_get_for:
            raise OSError(f"disk error reading {key}")
        return self.inner.get(namespace, key)

    def set(self, namespace: str, key: str, value: bytes) -> None:
        if self.fail_set:
            raise OSError("disk full")
        self.inner.set(namespace, key, value)

    def delete(self, namespace: str, key: str) -> bool:
        if self.fail_delete:
            raise StorageError("delete refused")
        return self.inner.delete(namespace, key)

    def exists(self, namespace: str, key: str) -> bool:
        return self.inner.exists(namespace, key)

    def list_keys(self, namespace: str) -> list[str]:
        if self.fail_list:
            raise OSError("cannot scan")
        return self.inner.list_keys(namespace)

    def clear_namespace(self, namespace: str) -> int:
        return self.inner.clear_namespace(namespace)


# ---------------------------------------------------------------------------
# Ids and request types
# ---------------------------------------------------------------------------


def test_resolution_id_display() -> None:
    a, b = make_resolution(), make_resolution()
    assert a.id != b.id
    assert format_resolution_id(a.id) == f"resolution:{a.id}"
    assert format_resolution_id(a.id).startswith("resolution:")


def test_request_id_display() -> None:
    request = make_request()
    assert format_request_id(request.id) == f"req:{request.id}"


def test_risk_assessment() -> None:
    assessment = (
        RiskAssessment.new(RiskLevel.HIGH, "File deletion is irreversible")
        .with_mitigation("Check file is not in use")
        .with_mitigations(["Verify backup exists", "Dry run first"])
    )
    assert assessment.mitigations == [
        "Check file is not in use",
        "Verify backup exists",
        "Dry run first",
    ]
    assert str(assessment) == "[high] File deletion is irreversible"
    assert assessment.requires_approval()
    assert not RiskAssessment.new(RiskLevel.MEDIUM, "x").requires_approval()


def test_risk_assessment_builders_do_not_mutate() -> None:
    base = RiskAssessment.new(RiskLevel.LOW, "r")
    base.with_mitigation("m")
    assert base.mitigations == []


def test_approval_request_new() -> None:
    request = ApprovalRequest.new(FileDelete(path="/home/user/important.txt"), "Cleaning up")
    assert request.context == "Cleaning up"
    assert request.timestamp <= utcnow()
    assert request.assessment.level is RiskLevel.HIGH
    assert request.assessment.reason == "file_delete operation"
    assert request.assessment.mitigations == []
    assert str(request) == "[high] Delete file: /home/user/important.txt - Cleaning up"


def test_approval_request_default_level_follows_action() -> None:
    request = ApprovalRequest.new(NetworkRequest(host="api.example.com", port=443), "fetch")
    assert request.assessment.level is RiskLevel.MEDIUM
    assert request.assessment.reason == "network_request operation"


def test_approval_request_custom_assessment() -> None:
    assessment = RiskAssessment.new(RiskLevel.LOW, "Reading a known safe file")
    request = make_request().with_assessment(assessment)
    assert request.assessment.reason == "Reading a known safe file"
    assert str(request).startswith("[low] ")


def test_approval_request_json_round_trip() -> None:
    request = ApprovalRequest.new(NetworkRequest(host="api.example.com", port=443), "Fetching")
    data = json.loads(request.model_dump_json())
    assert data["id"] == str(request.id)
    assert data["action"] == {"type": "network_request", "host": "api.example.com", "port": 443}
    assert data["assessment"] == {
        "level": "medium",
        "reason": "network_request operation",
        "mitigations": [],
    }
    assert data["timestamp"].endswith("Z")
    back = ApprovalRequest.model_validate_json(request.model_dump_json())
    assert back == request


def test_approval_request_requires_an_id() -> None:
    data = json.loads(make_request().model_dump_json())
    del data["id"]
    with pytest.raises(ValueError, match="id"):
        ApprovalRequest.model_validate(data)


# ---------------------------------------------------------------------------
# Item types
# ---------------------------------------------------------------------------


def test_pending_action_summaries() -> None:
    assert (
        ApprovalNeeded(request=make_request()).summary()
        == "Approval needed: Delete file: /important.txt"
    )
    budget = BudgetExceededAction(requested="50.00", available="10.00")
    assert budget.summary() == "Budget exceeded: requested $50.00, available $10.00"
    missing = CapabilityMissing(resource="file:///etc/passwd", permission=Permission.READ)
    assert missing.summary() == "Missing capability: read on file:///etc/passwd"
    error = ErrorResolution(error="connection refused", attempted_action="API call")
    assert error.summary() == "Error during API call: connection refused"
    assert str(error) == error.summary()


@pytest.mark.parametrize(
    ("action", "tag"),
    [
        (ApprovalNeeded(request=make_request()), "approval_needed"),
        (BudgetExceededAction(requested="1", available="0"), "budget_exceeded"),
        (CapabilityMissing(resource="r", permission=Permission.WRITE), "capability_missing"),
        (ErrorResolution(error="e", attempted_action="a"), "error_resolution"),
    ],
)
def test_pending_action_json_round_trip(
    action: ApprovalNeeded | BudgetExceededAction | CapabilityMissing | ErrorResolution, tag: str
) -> None:
    raw = PENDING_ACTION_ADAPTER.dump_json(action)
    assert json.loads(raw)["type"] == tag
    back = PENDING_ACTION_ADAPTER.validate_json(raw)
    assert back == action
    assert back.summary() == action.summary()


def test_pending_action_exact_json() -> None:
    action = CapabilityMissing(resource="file:///x", permission=Permission.DELETE)
    assert json.loads(PENDING_ACTION_ADAPTER.dump_json(action)) == {
        "type": "capability_missing",
        "resource": "file:///x",
        "permission": "delete",
    }


def test_fallback_behavior_display() -> None:
    assert str(FallbackBehavior.BLOCK) == "block"
    assert str(FallbackBehavior.SKIP) == "skip"
    assert str(FallbackBehavior.SAFE_DEFAULT) == "safe_default"
    assert str(FallbackBehavior.QUEUE) == "queue"
    assert f"fallback: {FallbackBehavior.SAFE_DEFAULT}" == "fallback: safe_default"


def test_priority_ordering_and_display() -> None:
    assert Priority.LOW < Priority.NORMAL < Priority.HIGH < Priority.CRITICAL
    assert Priority.CRITICAL > Priority.LOW
    assert Priority.NORMAL >= Priority.NORMAL
    assert sorted([Priority.HIGH, Priority.LOW, Priority.CRITICAL, Priority.NORMAL]) == [
        Priority.LOW,
        Priority.NORMAL,
        Priority.HIGH,
        Priority.CRITICAL,
    ]
    assert str(Priority.CRITICAL) == "critical"


def test_action_context() -> None:
    context = ActionContext.new("ship it")
    assert context.task is None
    with_task = context.with_task("write tests")
    assert with_task.task == "write tests"
    assert context.task is None
    assert ActionContext.model_validate({"goal": "g"}).task is None


def test_deferred_resolution_creation() -> None:
    resolution = make_resolution(Priority.HIGH)
    assert resolution.priority is Priority.HIGH
    assert resolution.fallback_taken is None
    assert resolution.reason == "user unavailable"


def test_deferred_resolution_with_fallback() -> None:
    resolution = make_resolution().with_fallback("skipped action, continued with task")
    assert resolution.fallback_taken == "skipped action, continued with task"


def test_deferred_resolution_age() -> None:
    resolution = make_resolution()
    assert not resolution.is_older_than(timedelta(hours=1))
    old = aged(resolution, timedelta(hours=2))
    assert old.is_older_than(timedelta(hours=1))
    assert not old.is_older_than(timedelta(hours=3))


def test_deferred_resolution_display() -> None:
    resolution = make_resolution(Priority.CRITICAL).model_copy(
        update={"queued_at": datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)}
    )
    text = str(resolution)
    assert "critical" in text
    assert "Approval needed" in text
    assert text == (
        f"[critical] resolution:{resolution.id} - Approval needed: Delete file: /important.txt"
        " (queued 2024-01-02T03:04:05Z)"
    )


def test_deferred_resolution_json_round_trip() -> None:
    resolution = make_resolution(Priority.HIGH).with_fallback("skipped")
    back = DeferredResolution.model_validate_json(resolution.model_dump_json())
    assert back == resolution
    assert back.priority is Priority.HIGH
    assert back.fallback_taken == "skipped"


def test_deferred_resolution_exact_json_shape() -> None:
    resolution = DeferredResolution(
        id=UUID("12345678-1234-5678-1234-567812345678"),
        action=BudgetExceededAction(requested="5", available="1"),
        reason="r",
        queued_at=datetime(2024, 1, 1, tzinfo=UTC),
        priority=Priority.LOW,
        context=ActionContext.new("g"),
    )
    assert json.loads(resolution.model_dump_json()) == {
        "id": "12345678-1234-5678-1234-567812345678",
        "action": {"type": "budget_exceeded", "requested": "5", "available": "1"},
        "reason": "r",
        "queued_at": "2024-01-01T00:00:00Z",
        "priority": "low",
        "context": {"goal": "g", "task": None},
        "fallback_taken": None,
    }


def test_deferred_resolution_reads_original_json() -> None:
    raw = (
        '{"id":"12345678-1234-5678-1234-567812345678",'
        '"action":{"type":"error_resolution","error":"e","attempted_action":"a"},'
        '"reason":"r","queued_at":"2024-01-01T01:00:00.123456789+01:00",'
        '"priority":"critical","context":{"goal":"g","task":"t"},"extra":1}'
    )
    resolution = DeferredResolution.model_validate_json(raw)
    assert resolution.queued_at == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert resolution.fallback_taken is None
    assert resolution.context.task == "t"


# ---------------------------------------------------------------------------
# Store (memory)
# ---------------------------------------------------------------------------


def test_store_queue_and_count() -> None:
    store = DeferredResolutionStore()
    assert store.count() == 0
    resolution = make_resolution()
    assert store.queue(resolution) == resolution.id
    assert store.count() == 1
    assert store.get(resolution.id) == resolution


def test_store_get_pending_sorted() -> None:
    store = DeferredResolutionStore()
    store.queue(make_resolution(Priority.LOW))
    store.queue(make_resolution(Priority.CRITICAL))
    store.queue(make_resolution(Priority.NORMAL))
    assert [r.priority for r in store.get_pending()] == [
        Priority.CRITICAL,
        Priority.NORMAL,
        Priority.LOW,
    ]


def test_store_get_pending_oldest_first_within_priority() -> None:
    store = DeferredResolutionStore()
    newer = aged(make_resolution(Priority.HIGH), timedelta(minutes=1))
    older = aged(make_resolution(Priority.HIGH), timedelta(minutes=5))
    store.queue(newer)
    store.queue(older)
    store.queue(make_resolution(Priority.LOW))
    pending = store.get_pending()
    assert [r.id for r in pending[:2]] == [older.id, newer.id]


def test_store_resolve() -> None:
    store = DeferredResolutionStore()
    resolution = make_resolution(Priority.HIGH)
    store.queue(resolution)
    assert store.resolve(resolution.id).id == resolution.id
    assert store.count() == 0


def test_store_resolve_not_found() -> None:
    store = DeferredResolutionStore()
    missing = uuid4()
    with pytest.raises(ResolutionNotFound) as info:
        store.resolve(missing)
    assert str(info.value) == f"resolution not found: resolution:{missing}"
    assert isinstance(info.value, SecurityError)


def test_store_cleanup_old() -> None:
    store = DeferredResolutionStore()
    store.queue(make_resolution())
    assert store.cleanup_old(timedelta(hours=1)) == 0
    assert store.count() == 1
    store.queue(aged(make_resolution(), timedelta(hours=2)))
    assert store.cleanup_old(timedelta(hours=1)) == 1
    assert store.count() == 1


def test_store_default_and_repr() -> None:
    store = DeferredResolutionStore()
    assert store.count() == 0
    assert not store.has_persistence
    text = repr(store)
    assert "DeferredResolutionStore" in text
    assert "count=0" in text
    assert "has_persistence=False" in text
    assert bool(store) is True


def test_store_queue_auto_without_persistence_is_memory_only() -> None:
    store = DeferredResolutionStore()
    resolution = make_resolution()
    assert store.queue_auto(resolution) == resolution.id
    assert store.count() == 1


def test_store_thread_safe() -> None:
    store = DeferredResolutionStore()

    def worker() -> None:
        for _ in range(100):
            rid = store.queue(make_resolution())
            store.get_pending()
            store.resolve(rid)
            store.queue(make_resolution())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.count() == 600


# ---------------------------------------------------------------------------
# Store (persistence)
# ---------------------------------------------------------------------------


def test_persistent_queue_and_resolve() -> None:
    backend = MemoryKvStore()
    store = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    assert store.has_persistence
    assert "has_persistence=True" in repr(store)
    resolution = make_resolution(Priority.HIGH)
    store.queue_persistent(resolution)
    assert store.count() == 1
    assert backend.list_keys(NAMESPACE) == [str(resolution.id)]
    raw = backend.get(NAMESPACE, str(resolution.id))
    assert raw == resolution.model_dump_json().encode()
    assert store.resolve_persistent(resolution.id).id == resolution.id
    assert store.count() == 0
    assert backend.list_keys(NAMESPACE) == []


def test_persistent_survives_reload() -> None:
    backend = MemoryKvStore()
    first = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    original = make_resolution(Priority.CRITICAL).with_fallback("fallback: skip")
    first.queue_persistent(original)

    second = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    assert second.count() == 1
    pending = second.get_pending()
    assert pending[0].priority is Priority.CRITICAL
    assert pending[0] == original


def test_persistent_resolved_item_gone_after_reload() -> None:
    backend = MemoryKvStore()
    first = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    resolution = make_resolution()
    first.queue_persistent(resolution)
    first.resolve_persistent(resolution.id)

    second = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    assert second.count() == 0


def test_plain_queue_is_not_persisted() -> None:
    backend = MemoryKvStore()
    store = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    store.queue(make_resolution())
    assert backend.list_keys(NAMESPACE) == []
    reloaded = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    assert reloaded.count() == 0


def test_queue_auto_persists_when_a_store_exists() -> None:
    backend = MemoryKvStore()
    store = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    resolution = make_resolution()
    store.queue_auto(resolution)
    assert backend.exists(NAMESPACE, str(resolution.id))


def test_queue_persistent_without_store_is_memory_only() -> None:
    store = DeferredResolutionStore()
    resolution = make_resolution()
    assert store.queue_persistent(resolution) == resolution.id
    assert store.resolve_persistent(resolution.id) == resolution


def test_load_purges_items_older_than_24h() -> None:
    backend = MemoryKvStore()
    scoped = ScopedKvStore(backend, NAMESPACE)
    stale = aged(make_resolution(), MAX_LOAD_AGE + timedelta(minutes=1))
    fresh = aged(make_resolution(), MAX_LOAD_AGE - timedelta(minutes=1))
    scoped.set_json(str(stale.id), stale)
    scoped.set_json(str(fresh.id), fresh)

    store = DeferredResolutionStore.with_persistence(scoped)

    assert store.count() == 1
    assert store.get(fresh.id) is not None
    assert store.get(stale.id) is None
    assert backend.list_keys(NAMESPACE) == [str(fresh.id)]


def test_load_purge_ignores_delete_errors() -> None:
    backend = FlakyKv()
    scoped = ScopedKvStore(backend, NAMESPACE)
    stale = aged(make_resolution(), timedelta(days=3))
    scoped.set_json(str(stale.id), stale)
    backend.fail_delete = True
    store = DeferredResolutionStore.with_persistence(scoped)
    assert store.count() == 0


def test_load_skips_undecodable_items() -> None:
    backend = FlakyKv()
    scoped = ScopedKvStore(backend, NAMESPACE)
    good = make_resolution()
    scoped.set_json(str(good.id), good)
    scoped.set("not-json", b"{oops")
    scoped.set_json("wrong-shape", {"id": "nope"})
    scoped.set("unreadable", b"{}")
    backend.fail_get_for.add("unreadable")

    store = DeferredResolutionStore.with_persistence(scoped)

    assert [r.id for r in store.get_pending()] == [good.id]
    # Undecodable items are left where they are (only stale ones are purged).
    assert backend.inner.exists(NAMESPACE, "not-json")


def test_load_list_failure_is_a_storage_error() -> None:
    backend = FlakyKv()
    backend.fail_list = True
    with pytest.raises(StorageError, match=NAMESPACE):
        DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))


def test_queue_persistent_fails_fast() -> None:
    backend = FlakyKv()
    store = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    backend.fail_set = True
    resolution = make_resolution()
    with pytest.raises(StorageError, match="disk full"):
        store.queue_persistent(resolution)
    assert store.count() == 0
    with pytest.raises(StorageError):
        store.queue_auto(resolution)
    assert store.count() == 0


def test_resolve_persistent_ignores_delete_errors() -> None:
    backend = FlakyKv()
    store = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    resolution = make_resolution()
    store.queue_persistent(resolution)
    backend.fail_delete = True
    assert store.resolve_persistent(resolution.id) == resolution
    assert store.count() == 0


def test_resolve_persistent_missing_is_an_error() -> None:
    store = DeferredResolutionStore.with_persistence(ScopedKvStore(MemoryKvStore(), NAMESPACE))
    with pytest.raises(ResolutionNotFound, match="resolution:"):
        store.resolve_persistent(uuid4())


def test_cleanup_old_also_removes_from_the_store() -> None:
    backend = MemoryKvStore()
    store = DeferredResolutionStore.with_persistence(ScopedKvStore(backend, NAMESPACE))
    old = aged(make_resolution(), timedelta(hours=2))
    fresh = make_resolution()
    store.queue_persistent(old)
    store.queue_persistent(fresh)
    assert store.cleanup_old(timedelta(hours=1)) == 1
    assert backend.list_keys(NAMESPACE) == [str(fresh.id)]


# ---------------------------------------------------------------------------
# Resolving a deferred approval grants what the decision names (issue 14 item 5)
# ---------------------------------------------------------------------------


def _deferred_session(
    tmp_path: Path,
) -> tuple[SessionStore, AgentSession, SecurityInterceptor, UUID]:
    """A session on a real SQLite store whose first delete of the file was deferred."""
    store = SessionStore(SqliteBackend(tmp_path / "astrid.db"))
    session = store.new_session("deferred")
    store.attach_workspace(session, tmp_path / "ws")
    assert session.workspace_path is not None
    interceptor = SecurityInterceptor(
        session,
        SecurityPolicy.default(),
        KeyPair.generate(),
        workspace_root=Path(session.workspace_path),
    )
    with pytest.raises(ApprovalDeferred) as deferred:
        asyncio.run(interceptor.intercept(DELETE_OUTSIDE, "cleanup"))
    return store, session, interceptor, deferred.value.resolution_id


DELETE_OUTSIDE = FileDelete(path="/home/user/old.txt")


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (ApproveSession(), SessionApproval),
        (ApproveWorkspace(), WorkspaceApproval),
        (ApproveAlways(), CapabilityCreated),
    ],
)
def test_resolving_a_deferral_grants_and_the_action_is_not_deferred_again(
    tmp_path: Path, decision: ApprovalDecision, expected: type
) -> None:
    store, session, interceptor, resolution_id = _deferred_session(tmp_path)
    item = session.approval_manager.deferred_queue.get(resolution_id)
    assert item is not None and isinstance(item.action, ApprovalNeeded)
    response = ApprovalResponse.new(item.action.request.id, decision)

    proof = interceptor.resolve_deferred(resolution_id, response)

    assert isinstance(proof, expected)
    assert session.approval_manager.deferred_queue.count() == 0
    if isinstance(proof, SessionApproval | WorkspaceApproval):
        granted = {a.id: a for a in session.allowance_store.all()}
        assert proof.allowance_id in granted
        assert granted[proof.allowance_id].session_only is isinstance(proof, SessionApproval)
    else:
        assert isinstance(proof, CapabilityCreated)
        assert session.capabilities.get(proof.token_id) is not None
    again = asyncio.run(interceptor.intercept(DELETE_OUTSIDE, "cleanup"))  # no handler: would defer
    assert isinstance(again.proof, AllowanceProof | Capability)
    assert session.approval_manager.deferred_queue.count() == 0
    store.close()


def test_a_workspace_resolution_is_saved_with_the_workspace(tmp_path: Path) -> None:
    store, session, interceptor, resolution_id = _deferred_session(tmp_path)
    proof = interceptor.resolve_deferred(resolution_id, ApproveWorkspace())  # a bare decision
    assert isinstance(proof, WorkspaceApproval)
    store.save_workspace_of(session)
    store.close()

    reopened = SessionStore(SqliteBackend(tmp_path / "astrid.db"))
    saved = reopened.load_workspace_state(tmp_path / "ws").allowances
    assert [a.id for a in saved] == [proof.allowance_id]
    later = reopened.new_session("later")
    reopened.attach_workspace(later, tmp_path / "ws")
    assert later.workspace_path is not None
    fresh = SecurityInterceptor(
        later, SecurityPolicy.default(), KeyPair.generate(), workspace_root=later.workspace_path
    )
    passed = asyncio.run(fresh.intercept(DELETE_OUTSIDE, "cleanup"))
    assert passed.proof == AllowanceProof(proof.allowance_id)
    reopened.close()


def test_manager_resolution_stores_the_allowance_its_proof_names() -> None:
    manager = ApprovalManager(AllowanceStore(), DeferredResolutionStore(), allowance_owner="s1")
    first = asyncio.run(manager.check_approval(DELETE_OUTSIDE, "cleanup"))
    assert isinstance(first, Deferred)
    outcome = manager.resolve_deferred(first.resolution_id, ApproveSession())
    assert isinstance(outcome, Allowed) and isinstance(outcome.proof, SessionApproval)
    [allowance] = manager.allowance_store.all()
    assert allowance.id == outcome.proof.allowance_id
    assert manager.allowance_store.owner_of(allowance.id) == "s1"
    again = asyncio.run(manager.check_approval(DELETE_OUTSIDE, "cleanup"))
    assert again == Allowed(AllowanceProof(allowance.id))


def test_manager_resolution_with_approve_always_needs_a_minter() -> None:
    manager = ApprovalManager(AllowanceStore(), DeferredResolutionStore())
    first = asyncio.run(manager.check_approval(DELETE_OUTSIDE, "cleanup"))
    assert isinstance(first, Deferred)
    with pytest.raises(ApprovalError, match="ApproveAlways"):
        manager.resolve_deferred(first.resolution_id, ApproveAlways())
    assert manager.deferred_queue.get(first.resolution_id) is not None  # nothing lost


def test_a_resolution_answering_another_request_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, session, interceptor, resolution_id = _deferred_session(tmp_path)
    stray = ApprovalResponse.new(uuid4(), ApproveSession())
    with (
        caplog.at_level(logging.WARNING, logger="astrid.security.approvals"),
        pytest.raises(ApprovalDenied, match="not req:"),
    ):
        interceptor.resolve_deferred(resolution_id, stray)
    assert "refusing a response" in caplog.text
    assert session.approval_manager.deferred_queue.get(resolution_id) is not None
    assert session.allowance_store.count() == 0
    store.close()
