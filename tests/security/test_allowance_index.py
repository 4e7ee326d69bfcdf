"""AllowanceStore keeps used-up entries (as the original does) but never scans them.

Finds, exports and purges cost O(entries with uses left): a session that granted ten thousand
single-use allowances saves as fast as one that granted one.
"""

from __future__ import annotations

import contextlib
import random
import time
from datetime import datetime, timedelta
from typing import ClassVar

from astrid.errors import AllowanceNotFound
from astrid.security.actions import McpToolCall, SensitiveAction
from astrid.security.allowances import (
    Allowance,
    AllowancePattern,
    AllowanceStore,
    ExactTool,
    ServerTools,
    WorkspaceRoot,
)
from astrid.timeutil import utcnow


class CountingAllowance(Allowance):
    """An allowance that counts how often the store asks whether it expired."""

    checks: ClassVar[int] = 0

    def is_expired(self, now: datetime | None = None) -> bool:
        CountingAllowance.checks += 1
        return super().is_expired(now)


class CountingTool(ExactTool):
    """An exact-tool pattern that counts how often the store tries it against an action."""

    tries: ClassVar[int] = 0

    def matches(self, action: SensitiveAction, workspace_root: WorkspaceRoot = None) -> bool:
        CountingTool.tries += 1
        return super().matches(action, workspace_root)


def make(
    pattern: AllowancePattern,
    *,
    uses: int | None = None,
    session_only: bool = True,
    workspace_root: str | None = None,
    expires_in: timedelta | None = None,
    cls: type[Allowance] = Allowance,
) -> Allowance:
    return cls.create(
        pattern,
        session_only=session_only,
        workspace_root=workspace_root,
        expires_at=None if expires_in is None else utcnow() + expires_in,
        max_uses=uses,
        uses_remaining=uses,
    )


def call(tool: str, server: str = "fs") -> McpToolCall:
    return McpToolCall(server=server, tool=tool)


def test_used_up_entry_is_kept_counted_and_consumable_but_never_found_or_exported() -> None:
    store = AllowanceStore()
    once = make(ExactTool(server="fs", tool="t"), uses=1)
    store.add_allowance(once, owner="s1")
    assert store.find_matching_and_consume(call("t")) == once
    assert store.find_matching(call("t")) is None
    assert store.find_matching_and_consume(call("t")) is None
    assert store.export_session_allowances() == []
    assert store.export_session_allowances_data() == []
    assert store.count() == 1
    assert [a.uses_remaining for a in store.all()] == [0]
    assert store.owner_of(once.id) == "s1"
    assert store.consume_use(once.id) is False  # still Ok on a used-up entry
    assert store.cleanup_expired() == 0
    assert store.count() == 1
    store.clear_session_allowances(owner="s1")
    assert store.count() == 0


def test_consume_use_to_zero_takes_it_out_of_finds() -> None:
    store = AllowanceStore()
    twice = make(ServerTools(server="fs"), uses=2)
    store.add_allowance(twice)
    assert store.consume_use(twice.id) is True
    assert store.find_matching(call("x")) is not None
    assert store.consume_use(twice.id) is False
    assert store.find_matching(call("x")) is None
    assert store.export_session_allowances() == []
    assert store.count() == 1


def test_an_entry_revived_by_id_keeps_its_place_in_the_order() -> None:
    store = AllowanceStore()
    first = make(ServerTools(server="fs"), uses=1)
    second = make(ServerTools(server="fs"), uses=1)
    third = make(ServerTools(server="fs"))
    for a in (first, second, third):
        store.add_allowance(a)
    assert store.find_matching_and_consume(call("x")) == first
    assert store.find_matching_and_consume(call("x")) == second
    assert store.find_matching(call("x")) == third
    # Re-adding the used-up first entry with a use restores it where it was: first again.
    store.add_allowance(first)
    assert [a.id for a in store.all()] == [first.id, second.id, third.id]
    assert store.find_matching(call("x")) == first
    assert [a.id for a in store.export_session_allowances()] == [first.id, third.id]
    # Replacing a live entry by a used-up copy takes it out again.
    store.add_allowance(first.model_copy(update={"uses_remaining": 0}))
    assert store.find_matching(call("x")) == third
    assert store.count() == 3


def test_expired_entries_are_purged_used_up_or_not() -> None:
    store = AllowanceStore()
    gone = make(ServerTools(server="a"), uses=1, expires_in=timedelta(hours=-1))
    used_up_gone = make(ServerTools(server="b"), uses=0, expires_in=timedelta(hours=-2))
    used_up_kept = make(ServerTools(server="c"), uses=0)
    later = make(ServerTools(server="d"), expires_in=timedelta(hours=1))
    for a in (gone, used_up_gone, used_up_kept, later):
        store.add_allowance(a)
    assert store.cleanup_expired() == 2
    assert [a.id for a in store.all()] == [used_up_kept.id, later.id]
    assert store.cleanup_expired() == 0


def test_a_replaced_expiry_is_the_one_that_counts() -> None:
    store = AllowanceStore()
    a = make(ServerTools(server="fs"), expires_in=timedelta(hours=-1))
    store.add_allowance(a)
    store.add_allowance(a.model_copy(update={"expires_at": utcnow() + timedelta(hours=1)}))
    assert store.cleanup_expired() == 0
    assert store.find_matching(call("x")) is not None
    b = make(ServerTools(server="other"), expires_in=timedelta(hours=-1))
    store.add_allowance(b)
    store.add_allowance(b.model_copy(update={"expires_at": None}))
    assert store.find_matching_and_consume(call("x", server="other")) is not None
    assert store.count() == 2


def test_finds_exports_and_purges_never_touch_used_up_entries() -> None:
    store = AllowanceStore()
    for i in range(5000):
        store.add_allowance(
            make(CountingTool(server="fs", tool=f"t{i}"), uses=0, cls=CountingAllowance)
        )
    live = make(CountingTool(server="fs", tool="live"), uses=1, cls=CountingAllowance)
    store.add_allowance(live)
    CountingAllowance.checks = CountingTool.tries = 0
    assert store.find_matching(call("t17")) is None
    assert store.export_session_allowances() == [live]
    assert store.export_workspace_allowances() == []
    assert store.cleanup_expired() == 0
    assert store.find_matching_and_consume(call("live")) == live
    assert store.find_matching_and_consume(call("live")) is None
    assert store.export_session_allowances_data() == []
    assert CountingAllowance.checks <= 5
    assert CountingTool.tries <= 3
    assert store.count() == 5001


def test_single_use_grants_leave_the_store_linear_in_live_entries() -> None:
    """The benchmark's single_use turn: grant one, use the previous; exports stay O(1)."""
    store = AllowanceStore()
    previous: Allowance | None = None
    for i in range(2000):
        granted = make(CountingTool(server="fs", tool=f"t{i}"), uses=1, cls=CountingAllowance)
        store.add_allowance(granted)
        if previous is not None:
            assert store.find_matching_and_consume(call(f"t{i - 1}")) == previous
        previous = granted
        CountingAllowance.checks = 0
        assert store.export_session_allowances_data() == [granted.model_dump(mode="json")]
        assert CountingAllowance.checks <= 2
    assert store.count() == 2000


def test_the_expiry_heap_does_not_grow_with_cleared_entries() -> None:
    store = AllowanceStore()
    for i in range(3000):
        store.add_allowance(make(ServerTools(server=f"s{i}"), expires_in=timedelta(hours=1)))
        store.clear_session_allowances()
    assert store.count() == 0
    assert len(store._expiry) <= 64 + 2


def _reference(store: AllowanceStore) -> list[dict[str, object]]:
    return [a.model_dump(mode="json") for a in store.export_session_allowances()]


def test_session_data_always_equals_a_fresh_dump() -> None:
    rng = random.Random(7)
    store = AllowanceStore()
    ids: list[Allowance] = []
    for step in range(3000):
        op = rng.randrange(9)
        if op < 3 or not ids:
            a = make(
                ServerTools(server=f"s{rng.randrange(5)}"),
                uses=rng.choice([None, 0, 1, 2, 3]),
                session_only=rng.random() < 0.8,
                workspace_root=rng.choice([None, "/p"]),
                expires_in=rng.choice([None, timedelta(hours=-1), timedelta(hours=1)]),
            )
            store.add_allowance(a, owner=rng.choice([None, "me", "you"]))
            ids.append(a)
        elif op == 3:
            store.find_matching_and_consume(call("x", server=f"s{rng.randrange(5)}"))
        elif op == 4:
            with contextlib.suppress(AllowanceNotFound):  # it may have been removed
                store.consume_use(rng.choice(ids).id)
        elif op == 5:
            store.cleanup_expired()
        elif op == 6:
            store.clear_session_allowances(owner=rng.choice([None, "me", "you"]))
        elif op == 7:
            store.import_allowances([rng.choice(ids)], owner=rng.choice([None, "me"]))
        else:
            store.add_allowance(rng.choice(ids))
        data = store.export_session_allowances_data()
        assert data == _reference(store), f"step {step}"
        data.append({"tampered": True})  # the list is the caller's
        assert store.export_session_allowances_data() == _reference(store)


def test_session_data_drops_an_entry_once_it_expires() -> None:
    store = AllowanceStore()
    soon = make(ServerTools(server="fs"), expires_in=timedelta(milliseconds=150))
    store.add_allowance(soon)
    assert [d["id"] for d in store.export_session_allowances_data()] == [str(soon.id)]
    time.sleep(0.3)
    assert store.export_session_allowances_data() == []
    assert store.count() == 1
