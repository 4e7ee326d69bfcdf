"""Unknown keys inside allowances, the budget snapshot and the escape state survive load+save."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.document import SessionDocument
from astrid.errors import BudgetExceeded
from astrid.security.actions import McpToolCall
from astrid.security.allowances import (
    UNSIGNED_SIGNATURE,
    Allowance,
    ExactTool,
    load_allowances,
)
from astrid.security.budget import (
    BudgetSnapshot,
    BudgetTracker,
    WorkspaceBudgetSnapshot,
    WorkspaceBudgetTracker,
)
from astrid.security.escape import EscapeHandler, EscapeState
from astrid.session import AgentSession
from astrid.store import SessionStore, StorageBackend, workspace_key

FUTURE: dict[str, Any] = {"a": [1, "b"], "n": None, "deep": {"x": [{"y": 2.5}]}}

BackendFactory = Callable[[Path], StorageBackend]
BACKENDS: dict[str, tuple[BackendFactory, bool]] = {
    "memory": (lambda d: MemoryBackend(), False),
    "file": (lambda d: FileBackend(d / "sessions"), True),
    "sqlite": (lambda d: SqliteBackend(d / "astrid.db"), True),
}


def _allowance(*, session_only: bool = True, root: str | None = None) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "action_pattern": {
            "type": "exact_tool",
            "server": "srv",
            "tool": "read",
            "x_future": copy.deepcopy(FUTURE),
            "Tool": "write",  # another spelling of a known key: carried, never honoured
        },
        "created_at": "2025-01-01T00:00:00Z",
        "expires_at": None,
        "max_uses": None,
        "uses_remaining": None,
        "session_only": session_only,
        "workspace_root": root,
        "signature": UNSIGNED_SIGNATURE,
        "x_future": copy.deepcopy(FUTURE),
        "Session_Only": False,
    }


def _document(escape_dir: Path) -> dict[str, Any]:
    doc = SessionDocument.new_empty(str(uuid.uuid4()), system_prompt="p").to_data()
    doc["allowances"] = [_allowance()]
    doc["budget_snapshot"] = {
        "session_spent_usd": 1.5,
        "config": {
            "session_max_usd": 10.0,
            "per_action_max_usd": 2.0,
            "warn_at_percent": 80,
            "x_future": copy.deepcopy(FUTURE),
            "Per_Action_Max_USD": 1000.0,
        },
        "last_updated": "2025-01-01T00:00:00Z",
        "x_future": copy.deepcopy(FUTURE),
    }
    doc["escape_state"] = {
        "remembered_paths": [str(escape_dir)],
        "x_future": copy.deepcopy(FUTURE),
    }
    return doc


def _assert_extras(data: dict[str, Any], *, escape: bool = True) -> None:
    (allowance,) = data["allowances"]
    assert allowance["x_future"] == FUTURE
    assert allowance["Session_Only"] is False
    assert allowance["session_only"] is True
    assert allowance["action_pattern"]["x_future"] == FUTURE
    assert allowance["action_pattern"]["Tool"] == "write"
    assert allowance["action_pattern"]["tool"] == "read"
    budget = data["budget_snapshot"]
    assert budget["x_future"] == FUTURE
    assert budget["config"]["x_future"] == FUTURE
    assert budget["config"]["Per_Action_Max_USD"] == 1000.0
    assert budget["config"]["per_action_max_usd"] == 2.0
    if escape:
        assert data["escape_state"]["x_future"] == FUTURE


@pytest.fixture
def escape_dir(tmp_path: Path) -> Path:
    path = (tmp_path / "outside").resolve()
    path.mkdir()
    return path


@pytest.fixture(params=sorted(BACKENDS))
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], SessionStore]]:
    """Opens a store over the backend's files (the same backend when it cannot persist)."""
    factory, persists = BACKENDS[request.param]
    opened: list[SessionStore] = []
    shared = SessionStore(factory(tmp_path))

    def open_store() -> SessionStore:
        if not persists:
            return shared
        store = SessionStore(factory(tmp_path))
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()
    shared.close()


def test_from_document_to_document_keeps_nested_unknown_keys(escape_dir: Path) -> None:
    doc = SessionDocument.from_data(_document(escape_dir))
    _assert_extras(doc.to_data())
    again = AgentSession.from_document(doc).to_document().to_data()
    _assert_extras(again)
    assert again["escape_state"]["remembered_paths"] == [str(escape_dir)]


def test_each_backend_round_trips_nested_unknown_keys(
    stores: Callable[[], SessionStore], escape_dir: Path
) -> None:
    session = AgentSession.from_document(SessionDocument.from_data(_document(escape_dir)))
    first = stores()
    first.save(session)
    second = stores()
    stored = second.load_document(session.id.bare)
    assert stored is not None
    _assert_extras(stored.to_data())
    loaded = second.load(session.id.bare)
    assert loaded is not None
    loaded.system_prompt = "changed"  # a second save through the loaded session
    second.save(loaded)
    third = stores()
    stored = third.load_document(session.id.bare)
    assert stored is not None
    assert stored.system_prompt == "changed"
    _assert_extras(stored.to_data())
    raw = json.loads(stored.to_json_text())
    _assert_extras(raw)


def test_a_child_sharing_the_parents_stores_writes_the_extras_back(
    stores: Callable[[], SessionStore], escape_dir: Path
) -> None:
    parent = AgentSession.from_document(SessionDocument.from_data(_document(escape_dir)))
    child = parent.child("child")
    store = stores()
    store.save(parent)
    store.save(child)
    reader = stores()
    for sid in (parent.id.bare, child.id.bare):
        stored = reader.load_document(sid)
        assert stored is not None
        _assert_extras(stored.to_data(), escape=sid == parent.id.bare)


def test_unknown_keys_do_not_change_how_state_is_honoured(escape_dir: Path) -> None:
    session = AgentSession.from_document(SessionDocument.from_data(_document(escape_dir)))
    store = session.allowance_store
    (allowance,) = store.all()
    assert allowance.session_only is True
    assert store.find_matching(McpToolCall(server="srv", tool="read")) is not None
    assert store.find_matching(McpToolCall(server="srv", tool="write")) is None
    assert session.budget_tracker.config().per_action_max_usd == 2.0
    with pytest.raises(BudgetExceeded):
        session.budget_tracker.reserve(5.0)
    assert session.escape_handler.remembered_paths == frozenset({str(escape_dir)})


def test_known_keys_win_over_unknown_ones(escape_dir: Path) -> None:
    snapshot = BudgetSnapshot.model_validate(_document(escape_dir)["budget_snapshot"])
    object.__setattr__(
        snapshot, "__pydantic_extra__", {"session_spent_usd": 99.0, "config": {}, "k": 1}
    )
    tracker = BudgetTracker.restore(snapshot)
    data = tracker.snapshot_data()
    assert data["session_spent_usd"] == 1.5
    assert data["config"]["per_action_max_usd"] == 2.0
    assert data["k"] == 1
    assert tracker.snapshot().model_dump(mode="json")["session_spent_usd"] == 1.5

    state = EscapeState.model_validate({"remembered_paths": [str(escape_dir)]})
    object.__setattr__(state, "__pydantic_extra__", {"remembered_paths": ["/etc"], "k": 2})
    handler = EscapeHandler()
    handler.restore_state(state)
    assert handler.export_state_data() == {"remembered_paths": [str(escape_dir)], "k": 2}
    assert handler.export_state().remembered_paths == [str(escape_dir)]
    assert handler.copy().export_state_data()["k"] == 2


def test_restored_extras_are_not_shared_with_the_document(escape_dir: Path) -> None:
    doc = SessionDocument.from_data(_document(escape_dir))
    session = AgentSession.from_document(doc)
    assert doc.budget_snapshot is not None and doc.budget_snapshot.__pydantic_extra__ is not None
    doc.budget_snapshot.__pydantic_extra__["x_future"]["a"].append("changed")
    assert session.state_data()["budget_snapshot"]["x_future"] == FUTURE


def test_workspace_state_in_the_kv_keeps_nested_unknown_keys(
    stores: Callable[[], SessionStore], tmp_path: Path, escape_dir: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    ns = f"ws:{workspace_key(workspace)}"
    writer = stores()
    allowance = _allowance(session_only=False, root=workspace_key(workspace))
    writer.kv(f"{ns}:allowances").set("all", json.dumps([allowance]).encode())
    writer.kv(f"{ns}:budget").set_json(
        "all",
        {"total_spent_usd": 3.0, "last_updated": "2025-01-01T00:00:00Z", "x_future": FUTURE},
    )
    writer.kv(f"{ns}:escape").set_json(
        "all", {"remembered_paths": [str(escape_dir)], "x_future": FUTURE}
    )

    def check(store: SessionStore) -> None:
        state = store.load_workspace_state(workspace)
        (loaded,) = state.allowances
        dumped = loaded.model_dump(mode="json")
        assert dumped["x_future"] == FUTURE and dumped["Session_Only"] is False
        assert dumped["action_pattern"]["x_future"] == FUTURE
        assert state.budget is not None and state.budget.model_dump()["x_future"] == FUTURE
        assert state.escape is not None and state.escape.model_dump()["x_future"] == FUTURE

    # Directly: load, save, load again.
    middle = stores()
    middle.save_workspace_state(workspace, middle.load_workspace_state(workspace))
    check(stores())

    # Through a session: attach, save the workspace it carries, load again.
    through = stores()
    session = through.new_session("p")
    tracker = through.attach_workspace(session, workspace, max_usd=10.0)
    assert tracker.spent() == 3.0
    through.save_workspace_of(session)
    check(stores())


def test_workspace_models_carry_unknown_keys() -> None:
    snapshot = WorkspaceBudgetSnapshot.model_validate(
        {"total_spent_usd": 1.0, "last_updated": "2025-01-01T00:00:00Z", "x_future": FUTURE}
    )
    tracker = WorkspaceBudgetTracker.restore(snapshot, None)
    assert tracker.snapshot().model_dump(mode="json")["x_future"] == FUTURE
    (allowance,) = load_allowances(json.dumps([_allowance()]))
    used = allowance.model_copy(update={"uses_remaining": 3})
    assert isinstance(used, Allowance)
    assert used.model_dump(mode="json")["x_future"] == FUTURE


def test_unknown_keys_never_make_two_patterns_differ() -> None:
    (allowance,) = load_allowances(json.dumps([_allowance()]))
    plain = ExactTool(server="srv", tool="read")
    assert allowance.action_pattern == plain
    assert hash(allowance.action_pattern) == hash(plain)
    assert allowance.action_pattern != ExactTool(server="srv", tool="write")
