"""``AgentSession.state_data``: the cached pieces always equal a fresh dump of the live state.

The allowance store, the budget tracker and the escape handler keep their last dump while they
do not change; stores shared by a parent and its children are the same objects, so each save of
either must see every change made through the other.
"""

from __future__ import annotations

import random
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from astrid import AgentSession
from astrid.document import GitState
from astrid.gitstate import capture_fs
from astrid.security.actions import McpToolCall
from astrid.security.allowances import Allowance, ExactTool, ServerTools
from astrid.security.budget import BudgetConfig, BudgetSnapshot, BudgetTracker
from astrid.security.escape import (
    EscapeDecision,
    EscapeHandler,
    EscapeOperation,
    EscapeRequest,
    EscapeState,
)
from astrid.timeutil import parse_rfc3339, utcnow


def reference(session: AgentSession) -> dict[str, Any]:
    """The security state the way state_data used to build it (model_dump every time)."""
    budget = session.budget_tracker.snapshot().model_dump(mode="json")
    del budget["last_updated"]
    return {
        "allowances": [
            a.model_dump(mode="json") for a in session.allowance_store.export_session_allowances()
        ],
        "budget_snapshot": budget,
        "escape_state": session.escape_handler.export_state().model_dump(mode="json"),
        "metadata": session.metadata.model_dump(mode="json"),
        "git_state": session.git_state.model_dump(mode="json") if session.git_state else None,
    }


def current(session: AgentSession) -> dict[str, Any]:
    """The same keys from state_data (the budget's time checked, then set aside)."""
    before = utcnow()
    data = session.state_data()
    budget = dict(data["budget_snapshot"])
    stamp = parse_rfc3339(budget.pop("last_updated"))
    assert before - timedelta(seconds=1) <= stamp <= utcnow()
    return {
        "allowances": data["allowances"],
        "budget_snapshot": budget,
        "escape_state": data["escape_state"],
        "metadata": data["metadata"],
        "git_state": data["git_state"],
    }


def test_random_changes_through_parent_and_child(tmp_path: Path) -> None:
    rng = random.Random(11)
    dirs = []
    for i in range(6):
        d = tmp_path / f"outside{i}"
        d.mkdir()
        dirs.append(d)
    parent = AgentSession.new(bytes(8), "parent").with_workspace(tmp_path)
    children = [parent.child("child one"), parent.child("child two")]
    sessions = [parent, *children]
    granted: list[Allowance] = []
    for step in range(1500):
        who = rng.choice(sessions)
        op = rng.randrange(12)
        if op < 3:
            a = Allowance.create(
                rng.choice(
                    [ExactTool(server="fs", tool=f"t{rng.randrange(4)}"), ServerTools(server="fs")]
                ),
                session_only=rng.random() < 0.85,
                workspace_root=rng.choice([None, tmp_path]),
                uses_remaining=rng.choice([None, 1, 2]),
                expires_at=rng.choice(
                    [None, utcnow() - timedelta(hours=1), utcnow() + timedelta(hours=1)]
                ),
            )
            who.add_session_allowance(a)
            granted.append(a)
        elif op == 3:
            who.allowance_store.find_matching_and_consume(
                McpToolCall(server="fs", tool=f"t{rng.randrange(4)}")
            )
        elif op == 4 and granted:
            target = rng.choice(granted)
            if any(a.id == target.id for a in who.allowance_store.all()):
                who.allowance_store.consume_use(target.id)
        elif op == 5:
            who.end_session()
        elif op == 6:
            who.allowance_store.cleanup_expired()
        elif op == 7:
            decision = rng.choice(list(EscapeDecision))
            request = EscapeRequest.new(rng.choice(dirs), EscapeOperation.READ, "test")
            who.escape_handler.process_decision(request, decision)
        elif op == 8:
            rng.choice([who.escape_handler.clear_all, who.escape_handler.clear_session])()
        elif op == 9:
            state = EscapeState(remembered_paths=[str(rng.choice(dirs))])
            who.escape_handler.restore_state(state)
        elif op == 10:
            who.budget_tracker.record_cost(rng.random())
        else:
            reservation = who.budget_tracker.reserve(0.01)
            who.budget_tracker.settle(reservation, rng.random() / 10)
        for s in sessions:
            assert current(s) == reference(s), f"step {step}, op {op}"


def test_mutating_what_state_data_returned_changes_nothing(tmp_path: Path) -> None:
    session = AgentSession.new(bytes(8), "p")
    session.add_session_allowance(Allowance.create(ServerTools(server="fs"), session_only=True))
    session.escape_handler.process_decision(
        EscapeRequest.new(tmp_path, EscapeOperation.READ, "r"), EscapeDecision.ALLOW_ALWAYS
    )
    expected = reference(session)
    data = session.state_data()
    data["allowances"].clear()
    data["budget_snapshot"]["config"]["session_max_usd"] = 0
    data["budget_snapshot"]["session_spent_usd"] = 99
    data["escape_state"]["remembered_paths"].append("/elsewhere")
    data["metadata"]["tags"].append("x")
    del data["allowances"]
    assert current(session) == expected


def test_budget_snapshot_data_matches_the_model() -> None:
    tracker = BudgetTracker(BudgetConfig.new(5.0, 1.0).with_warn_at_percent(50))
    tracker.record_cost(0.25)
    data = tracker.snapshot_data()
    model = tracker.snapshot().model_dump(mode="json")
    assert list(data) == list(model)
    assert {**data, "last_updated": None} == {**model, "last_updated": None}
    assert BudgetSnapshot.model_validate(data).session_spent_usd == 0.25
    restored = BudgetTracker.restore(BudgetSnapshot.model_validate(data))
    assert restored.snapshot_data()["config"] == data["config"]


def test_budget_subclass_with_its_own_snapshot_is_honoured() -> None:
    class Fixed(BudgetTracker):
        def snapshot(self) -> BudgetSnapshot:
            return BudgetSnapshot(
                session_spent_usd=1.5, config=self.config(), last_updated=utcnow()
            )

    assert Fixed().snapshot_data()["session_spent_usd"] == 1.5


def test_escape_state_data_follows_every_change(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    handler = EscapeHandler()

    def check(h: EscapeHandler) -> None:
        assert h.export_state_data() == h.export_state().model_dump(mode="json")

    check(handler)
    handler.process_decision(
        EscapeRequest.new(b, EscapeOperation.READ, "r"), EscapeDecision.ALLOW_ALWAYS
    )
    check(handler)
    handler.process_decision(
        EscapeRequest.new(a, EscapeOperation.READ, "r"), EscapeDecision.ALLOW_ALWAYS
    )
    check(handler)
    copy = handler.copy()
    handler.clear_all()
    check(handler)
    check(copy)
    assert copy.export_state_data()["remembered_paths"] == sorted([str(a), str(b)])
    handler.restore_state(EscapeState(remembered_paths=[str(b)]))
    check(handler)
    handler.clear_session()
    check(handler)


def test_allowance_expiring_between_two_saves_leaves_the_state() -> None:
    session = AgentSession.new(bytes(8), "p")
    session.add_session_allowance(
        Allowance.create(
            ServerTools(server="fs"),
            session_only=True,
            expires_at=utcnow() + timedelta(milliseconds=150),
        )
    )
    assert len(session.state_data()["allowances"]) == 1
    time.sleep(0.3)
    assert session.state_data()["allowances"] == []


def test_git_state_with_extra_keys_is_dumped_whole(tmp_path: Path) -> None:
    session = AgentSession.new(bytes(8), "p")
    session.git_state = GitState.model_validate({"branch": "b", "commit": "c", "dirty": True})
    assert session.state_data()["git_state"] == {"branch": "b", "commit": "c", "dirty": True}
    session.git_state = GitState(branch="b", commit=None)
    assert session.state_data()["git_state"] == {"branch": "b", "commit": None}
    session.git_state = None
    session.with_workspace(tmp_path)
    assert session.state_data(git_capture=capture_fs)["git_state"] is None
