"""Change journals of the session's security state: "what changed since version V" in O(changes).

A saver holds the session export of the ``AllowanceStore`` (and the remembered paths of the
``EscapeHandler``) as of some version and asks only for what changed since. The invariant: the
answer is either None (take a full export) or a delta that, applied to the saver's copy, gives
exactly the current export, order included.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from astrid.errors import AllowanceNotFound
from astrid.security.actions import McpToolCall
from astrid.security.allowances import (
    Allowance,
    AllowanceDelta,
    AllowanceStore,
    ExactTool,
    ServerTools,
)
from astrid.security.escape import (
    EscapeDecision,
    EscapeHandler,
    EscapeOperation,
    EscapeRequest,
    EscapeState,
)
from astrid.timeutil import utcnow

Data = list[dict[str, Any]]

SERVERS = ("a", "b", "c")
OWNERS = (None, "me", "you")
EXPIRIES = (None, timedelta(hours=-1), timedelta(milliseconds=5), timedelta(seconds=2))


# ------------------------------------------------------------------------------------ helpers


class FakeClock:
    """A settable ``utcnow`` for the allowances module (expiry without sleeping or flakiness)."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


@contextlib.contextmanager
def fake_clock() -> Iterator[FakeClock]:
    clock = FakeClock()
    with mock.patch("astrid.security.allowances.utcnow", clock):
        yield clock


def make(
    server: str = "fs",
    *,
    uses: int | None = None,
    session_only: bool = True,
    expires_at: datetime | None = None,
    cls: type[Allowance] = Allowance,
) -> Allowance:
    return cls.create(
        ServerTools(server=server),
        session_only=session_only,
        expires_at=expires_at,
        max_uses=uses,
        uses_remaining=uses,
    )


def apply(old: Data, changes: dict[str, dict[str, Any] | None]) -> Data:
    """What a saver does with a delta: drop, replace in place, or append in the given order."""
    rows = {row["id"]: row for row in old}
    for key, data in changes.items():
        if data is None:
            rows.pop(key, None)
        else:
            rows[key] = data  # an existing key keeps its place, a new one goes last
    return list(rows.values())


def reference(store: AllowanceStore) -> Data:
    return [a.model_dump(mode="json") for a in store.export_session_allowances()]


def check_until(store: AllowanceStore, until: datetime | None) -> None:
    """``until`` is conservative: no exported entry expires before it."""
    expiries = [a.expires_at for a in store.export_session_allowances() if a.expires_at]
    if until is None:
        assert expiries == []
    else:
        assert all(until <= e for e in expiries)


@dataclass
class Reader:
    """A saver's copy of the export: the basis a delta is asked against."""

    version: int
    until: datetime | None
    data: Data
    chain: bool


def snapshot(store: AllowanceStore, chain: bool = True) -> Reader:
    version, until, data = store.export_session_allowances_snapshot()
    return Reader(version, until, data, chain)


def verify(store: AllowanceStore, reader: Reader) -> AllowanceDelta | None:
    """Ask for the delta since the reader's basis; if there is one, it must be exact."""
    delta = store.session_allowance_changes(reader.version, reader.until)
    if delta is not None:
        now = store.export_session_allowances_data()
        assert apply(reader.data, delta.changes) == now == reference(store)
        assert delta.version == store._version
        check_until(store, delta.until)
        if reader.chain:
            reader.version, reader.until, reader.data = delta.version, delta.until, now
    return delta


# ------------------------------------------------------------------------- allowances: properties


class AllowanceJournalMachine(RuleBasedStateMachine):
    """Random operations on a store, with savers holding bases taken at random points."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.patch = mock.patch("astrid.security.allowances.utcnow", self.clock)
        self.patch.start()
        self.store = AllowanceStore()
        self.known: list[Allowance] = []
        self.readers: list[Reader] = [snapshot(self.store), snapshot(self.store, chain=False)]

    def teardown(self) -> None:
        self.patch.stop()

    @initialize(uses=st.sampled_from([None, 1, 2]))
    def first(self, uses: int | None) -> None:
        """One entry up front, so rules that pick a known entry always have one."""
        a = make(uses=uses)
        self.store.add_allowance(a)
        self.known.append(a)

    def _pick(self, index: int) -> Allowance:
        return self.known[index % len(self.known)]

    @rule(
        session_only=st.booleans(),
        uses=st.sampled_from([None, 0, 1, 2, 3]),
        expiry=st.sampled_from(EXPIRIES),
        owner=st.sampled_from(OWNERS),
        server=st.sampled_from(SERVERS),
    )
    def add(
        self,
        session_only: bool,
        uses: int | None,
        expiry: timedelta | None,
        owner: str | None,
        server: str,
    ) -> None:
        expires_at = None if expiry is None else self.clock.now + expiry
        a = make(server, uses=uses, session_only=session_only, expires_at=expires_at)
        self.store.add_allowance(a, owner=owner)
        self.known.append(a)

    @rule(count=st.integers(10, 80), owner=st.sampled_from(OWNERS))
    def add_many(self, count: int, owner: str | None) -> None:
        for _ in range(count):
            self.store.add_allowance(make(uses=1), owner=owner)

    @rule(index=st.integers(0, 10_000))
    def consume(self, index: int) -> None:
        with contextlib.suppress(AllowanceNotFound):
            self.store.consume_use(self._pick(index).id)

    @rule(server=st.sampled_from(SERVERS))
    def find_and_consume(self, server: str) -> None:
        self.store.find_matching_and_consume(McpToolCall(server=server, tool="t"))

    @rule(owner=st.sampled_from(OWNERS))
    def clear(self, owner: str | None) -> None:
        self.store.clear_session_allowances(owner=owner)

    @rule(index=st.integers(0, 10_000), owner=st.sampled_from(OWNERS))
    def import_one(self, index: int, owner: str | None) -> None:
        self.store.import_allowances([self._pick(index)], owner=owner)

    @rule()
    def cleanup(self) -> None:
        self.store.cleanup_expired()

    @rule(index=st.integers(0, 10_000), uses=st.integers(1, 3))
    def revive(self, index: int, uses: int) -> None:
        """Same id with uses again: a used-up entry comes back in its old place."""
        a = self._pick(index)
        self.store.add_allowance(a.model_copy(update={"max_uses": uses, "uses_remaining": uses}))

    @rule(
        index=st.integers(0, 10_000),
        session_only=st.booleans(),
        expiry=st.sampled_from(EXPIRIES),
    )
    def replace(self, index: int, session_only: bool, expiry: timedelta | None) -> None:
        """Same id, other scope or expiry: replaced in place (or re-added if it was removed)."""
        a = self._pick(index)
        expires_at = None if expiry is None else self.clock.now + expiry
        self.store.add_allowance(
            a.model_copy(update={"session_only": session_only, "expires_at": expires_at})
        )

    @rule(index=st.integers(0, 10_000))
    def re_add(self, index: int) -> None:
        self.store.add_allowance(self._pick(index))

    @rule(
        step=st.sampled_from(
            [
                timedelta(milliseconds=1),
                timedelta(milliseconds=10),
                timedelta(seconds=1),
                timedelta(hours=2),
            ]
        )
    )
    def advance(self, step: timedelta) -> None:
        self.clock.advance(step)

    @rule(chain=st.booleans())
    def take_snapshot(self, chain: bool) -> None:
        reader = snapshot(self.store, chain)
        assert reader.data == reference(self.store)
        assert reader.version == self.store._version
        check_until(self.store, reader.until)
        self.readers = [*self.readers[-5:], reader]

    @invariant()
    def deltas_reproduce_the_export(self) -> None:
        for reader in self.readers:
            verify(self.store, reader)


AllowanceJournalMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAllowanceJournal = AllowanceJournalMachine.TestCase


def test_long_random_run_trims_the_journal_and_keeps_deltas_exact() -> None:
    """Thousands of seeded operations: deltas stay exact, mostly available, journal bounded."""
    rng = random.Random(11)
    with fake_clock() as clock:
        store = AllowanceStore()
        known: list[Allowance] = []
        readers = [snapshot(store), snapshot(store, chain=False)]
        answered = refused = 0
        for step in range(4000):
            op = rng.randrange(12)
            if op < 4 or not known:
                expiry = rng.choice(EXPIRIES)
                a = make(
                    rng.choice(SERVERS),
                    uses=rng.choice([None, 0, 1, 2, 3]),
                    session_only=rng.random() < 0.8,
                    expires_at=None if expiry is None else clock.now + expiry,
                )
                store.add_allowance(a, owner=rng.choice(OWNERS))
                known.append(a)
            elif op == 4:
                with contextlib.suppress(AllowanceNotFound):
                    store.consume_use(rng.choice(known).id)
            elif op == 5:
                store.find_matching_and_consume(McpToolCall(server=rng.choice(SERVERS), tool="t"))
            elif op == 6 and rng.random() < 0.2:
                store.clear_session_allowances(owner=rng.choice(OWNERS))
            elif op == 7:
                store.import_allowances([rng.choice(known)], owner=rng.choice(OWNERS))
            elif op == 8:
                store.cleanup_expired()
            elif op == 9:
                a = rng.choice(known)
                store.add_allowance(a.model_copy(update={"uses_remaining": rng.randint(1, 3)}))
            elif op == 10:
                clock.advance(rng.choice([timedelta(milliseconds=3), timedelta(seconds=3)]))
            else:
                store.add_allowance(rng.choice(known))
            if rng.random() < 0.05:
                readers = [*readers[-4:], snapshot(store, chain=rng.random() < 0.7)]
            for i, reader in enumerate(readers):
                if verify(store, reader) is not None:
                    answered += 1
                else:  # the saver takes a full export instead
                    refused += 1
                    readers[i] = snapshot(store, reader.chain)
            assert len(store._journal) <= 2 * len(store._entries) + 65, f"step {step}"
    assert store._journal.floor > 0  # the journal was trimmed
    assert answered > refused


# --------------------------------------------------------------------------- allowances: targeted


def test_snapshot_is_atomic_and_export_data_still_cached() -> None:
    store = AllowanceStore()
    soon = make(expires_at=utcnow() + timedelta(hours=1))
    later = make(expires_at=utcnow() + timedelta(hours=2))
    store.add_allowance(make(session_only=False))
    store.add_allowance(later)
    store.add_allowance(soon)
    version, until, data = store.export_session_allowances_snapshot()
    assert version == store._version
    assert until == soon.expires_at
    assert [d["id"] for d in data] == [str(later.id), str(soon.id)]
    data.append({"tampered": True})  # the list is the caller's
    again = store.export_session_allowances_data()
    assert again == reference(store)
    assert all(x is y for x, y in zip(again, store.export_session_allowances_data(), strict=True))
    empty = AllowanceStore()
    assert empty.export_session_allowances_snapshot() == (0, None, [])


def test_delta_since_the_current_version_is_empty() -> None:
    store = AllowanceStore()
    store.add_allowance(make())
    reader = snapshot(store)
    assert store.session_allowance_changes(reader.version, reader.until) == AllowanceDelta(
        reader.version, None, {}
    )


def test_versions_the_store_never_had_are_refused() -> None:
    store = AllowanceStore()
    store.add_allowance(make())
    assert store.session_allowance_changes(store._version + 1, None) is None
    assert store.session_allowance_changes(0, None) is not None  # the journal reaches back to 0


def test_changes_report_removed_used_up_and_hidden_entries_as_none() -> None:
    store = AllowanceStore()
    removed, used_up, hidden, kept = make(), make(uses=1), make(), make(uses=3)
    for a in (removed, used_up, hidden, kept):
        store.add_allowance(a, owner="me" if a is removed else None)
    reader = snapshot(store)
    store.clear_session_allowances(owner="me")
    store.consume_use(used_up.id)
    store.add_allowance(hidden.model_copy(update={"session_only": False}))
    store.consume_use(kept.id)
    delta = verify(store, reader)
    assert delta is not None
    assert delta.changes[str(removed.id)] is None
    assert delta.changes[str(used_up.id)] is None
    assert delta.changes[str(hidden.id)] is None
    assert delta.changes[str(kept.id)] == {**kept.model_dump(mode="json"), "uses_remaining": 2}
    assert next(iter(delta.changes)) == str(removed.id)  # no ticket any more: first


def test_changes_are_in_ticket_order_not_change_order() -> None:
    store = AllowanceStore()
    first, second, third = make(uses=5), make(), make()
    for a in (first, second, third):
        store.add_allowance(a)
    reader = snapshot(store)
    fourth = make()
    store.add_allowance(fourth)
    store.add_allowance(third.model_copy(update={"max_uses": 9}))
    store.consume_use(first.id)  # changed last, added first
    fifth = make()
    store.add_allowance(fifth)
    delta = verify(store, reader)
    assert delta is not None
    assert list(delta.changes) == [str(a.id) for a in (first, third, fourth, fifth)]


def test_chained_deltas_follow_the_store() -> None:
    store = AllowanceStore()
    reader = snapshot(store)
    entries = [make(uses=2) for _ in range(5)]
    for a in entries:
        store.add_allowance(a)
        assert verify(store, reader) is not None
    for a in entries[::2]:
        store.consume_use(a.id)
        assert verify(store, reader) is not None
    assert reader.version == store._version
    assert reader.data == store.export_session_allowances_data()


def test_trimmed_journal_refuses_an_old_basis() -> None:
    store = AllowanceStore()
    base = [make() for _ in range(10)]
    for a in base:
        store.add_allowance(a)
    old = snapshot(store, chain=False)
    recent: Reader | None = None
    for round_ in range(50):
        for _ in range(10):
            store.add_allowance(make(), owner="tmp")
        store.clear_session_allowances(owner="tmp")
        if round_ == 45:
            recent = snapshot(store, chain=False)
    assert store._journal.floor > old.version
    assert store.session_allowance_changes(old.version, old.until) is None
    assert len(store._journal) <= 2 * len(store._entries) + 64
    assert recent is not None and recent.version >= store._journal.floor
    assert verify(store, recent) is not None  # recent bases outlive a trim
    fresh = snapshot(store)
    store.add_allowance(make())
    assert verify(store, fresh) is not None


def test_reviving_a_used_up_entry_refuses_older_bases() -> None:
    store = AllowanceStore()
    revived, other = make(uses=1), make()
    store.add_allowance(revived)
    store.add_allowance(other)
    store.consume_use(revived.id)
    before = snapshot(store)
    assert [d["id"] for d in before.data] == [str(other.id)]
    store.add_allowance(revived.model_copy(update={"uses_remaining": 2}))
    assert store.session_allowance_changes(before.version, before.until) is None
    assert [d["id"] for d in store.export_session_allowances_data()] == [
        str(revived.id),
        str(other.id),
    ]
    after = snapshot(store)
    store.consume_use(revived.id)
    assert verify(store, after) is not None


def test_an_entry_joining_the_export_in_its_old_place_refuses_older_bases() -> None:
    """Not session-only, then session-only: it is exported before entries the saver holds."""
    store = AllowanceStore()
    joining, other = make(session_only=False), make()
    store.add_allowance(joining)
    store.add_allowance(other)
    before = snapshot(store)
    store.add_allowance(joining.model_copy(update={"session_only": True}))
    assert store.session_allowance_changes(before.version, before.until) is None
    assert [d["id"] for d in store.export_session_allowances_data()] == [
        str(joining.id),
        str(other.id),
    ]


def test_an_expired_entry_replaced_in_its_old_place_refuses_older_bases() -> None:
    with fake_clock() as clock:
        store = AllowanceStore()
        expired = make(expires_at=clock.now - timedelta(seconds=1))
        other = make()
        store.add_allowance(expired)
        store.add_allowance(other)
        before = snapshot(store)
        assert before.data == [other.model_dump(mode="json")]
        store.add_allowance(expired.model_copy(update={"expires_at": None}))
        assert store.session_allowance_changes(before.version, before.until) is None


def test_removed_and_added_again_moves_last_and_refuses_bases_that_held_it() -> None:
    store = AllowanceStore()
    moved, other = make(), make()
    store.add_allowance(moved, owner="me")
    store.add_allowance(other)
    held = snapshot(store, chain=False)
    store.clear_session_allowances(owner="me")
    gone = snapshot(store, chain=False)
    store.add_allowance(moved)
    assert [d["id"] for d in store.export_session_allowances_data()] == [
        str(other.id),
        str(moved.id),
    ]
    assert store.session_allowance_changes(held.version, held.until) is None
    delta = verify(store, gone)  # a basis without it just appends it
    assert delta is not None and list(delta.changes) == [str(moved.id)]


def test_until_passed_the_delta_removes_what_expired() -> None:
    store = AllowanceStore()
    soon = make(expires_at=utcnow() + timedelta(milliseconds=200))
    store.add_allowance(make())
    store.add_allowance(soon)
    reader = snapshot(store, chain=False)
    assert reader.until == soon.expires_at
    assert store.session_allowance_changes(reader.version, reader.until) is not None
    time.sleep(0.3)
    # Nothing changed, yet the saver's copy holds an expired entry: the delta removes it.
    delta = verify(store, reader)
    assert delta is not None and delta.changes == {str(soon.id): None}
    assert delta.until is None  # nothing else expires
    assert reference(store) == store.export_session_allowances_data() == reader.data[:1]


def test_until_at_exactly_now_is_still_valid() -> None:
    """The export keeps an entry whose ``expires_at`` equals now; so does the delta."""
    with fake_clock() as clock:
        store = AllowanceStore()
        entry = make(expires_at=clock.now + timedelta(seconds=1))
        store.add_allowance(entry)
        reader = snapshot(store)
        clock.advance(timedelta(seconds=1))
        delta = verify(store, reader)
        assert delta is not None and delta.changes == {}
        clock.advance(timedelta(microseconds=1))
        delta = verify(store, reader)
        assert delta is not None and delta.changes == {str(entry.id): None}


def test_delta_until_covers_changed_entries() -> None:
    with fake_clock() as clock:
        store = AllowanceStore()
        later = make(expires_at=clock.now + timedelta(hours=2))
        store.add_allowance(later)
        reader = snapshot(store)
        sooner = make(expires_at=clock.now + timedelta(hours=1))
        store.add_allowance(sooner)
        delta = verify(store, reader)
        assert delta is not None and delta.until == sooner.expires_at
        clock.advance(timedelta(hours=1, seconds=1))
        delta = verify(store, reader)
        assert delta is not None and delta.changes == {str(sooner.id): None}
        assert delta.until == later.expires_at


def test_expiries_cost_the_expired_entries_not_all_of_them() -> None:
    """10 000 entries expiring later, 3 expiring now: the delta names the 3 and nothing else."""
    with fake_clock() as clock:
        store = AllowanceStore()
        for _ in range(10_000):
            store.add_allowance(make(expires_at=clock.now + timedelta(days=1)))
        soon = [make(expires_at=clock.now + timedelta(seconds=s)) for s in (1, 2, 3)]
        for entry in soon:
            store.add_allowance(entry)
        reader = snapshot(store)
        assert reader.until == soon[0].expires_at
        clock.advance(timedelta(seconds=4))
        delta = verify(store, reader)
        assert delta is not None
        assert delta.changes == {str(entry.id): None for entry in soon}
        assert delta.until == clock.now - timedelta(seconds=4) + timedelta(days=1)


class CountingAllowance(Allowance):
    """An allowance that counts how often the store asks whether it expired."""

    checks: ClassVar[int] = 0

    def is_expired(self, now: datetime | None = None) -> bool:
        CountingAllowance.checks += 1
        return super().is_expired(now)


def test_delta_costs_the_changes_not_the_entries() -> None:
    store = AllowanceStore()
    entries = [make(uses=3, cls=CountingAllowance) for _ in range(10_000)]
    for a in entries:
        store.add_allowance(a)
    reader = snapshot(store)
    assert len(reader.data) == 10_000
    store.consume_use(entries[5000].id)
    CountingAllowance.checks = 0
    delta = store.session_allowance_changes(reader.version, reader.until)
    assert delta is not None
    assert list(delta.changes) == [str(entries[5000].id)]
    assert delta.changes[str(entries[5000].id)] == {
        **entries[5000].model_dump(mode="json"),
        "uses_remaining": 2,
    }
    assert CountingAllowance.checks <= 2
    assert apply(reader.data, delta.changes) == store.export_session_allowances_data()


def test_exact_tool_pattern_round_trips_through_a_delta() -> None:
    store = AllowanceStore()
    reader = snapshot(store)
    tool = Allowance.create(
        ExactTool(server="fs", tool="read"), session_only=True, max_uses=2, uses_remaining=2
    )
    store.add_allowance(tool)
    store.find_matching_and_consume(McpToolCall(server="fs", tool="read"))
    delta = verify(store, reader)
    assert delta is not None
    assert reader.data[0]["action_pattern"] == {
        "type": "exact_tool",
        "server": "fs",
        "tool": "read",
    }
    assert reader.data[0]["uses_remaining"] == 1


# ------------------------------------------------------------------------------------- escape


def _request(path: str | Path) -> EscapeRequest:
    return EscapeRequest.new(path, EscapeOperation.READ, "x")


def _apply_paths(old: set[str], changes: dict[str, bool]) -> set[str]:
    new = set(old)
    for path, remembered in changes.items():
        if remembered:
            new.add(path)
        else:
            new.discard(path)
    return new


def _escape_verify(
    handler: EscapeHandler, basis: tuple[int, set[str]]
) -> tuple[int, set[str]] | None:
    """The reader's new basis if a delta is available (checked exact), else None."""
    found = handler.remembered_path_changes(basis[0])
    if found is None:
        return None
    version, changes = found
    assert version == handler.version
    new = _apply_paths(basis[1], changes)
    assert new == set(handler.remembered_paths)
    assert new == set(handler.export_state_data()["remembered_paths"])
    return version, new


@pytest.fixture
def dirs(tmp_path: Path) -> list[Path]:
    made = []
    for i in range(12):
        d = tmp_path / f"d{i}"
        d.mkdir()
        made.append(d)
    return made


_ESCAPE_OPS = st.lists(
    st.tuples(
        st.sampled_from(
            ["always", "session", "clear", "clear_session", "restore", "copy", "snapshot", "many"]
        ),
        st.integers(0, 11),
        st.booleans(),
    ),
    max_size=60,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_ESCAPE_OPS)
def test_escape_deltas_reproduce_the_remembered_paths(
    dirs: list[Path], ops: list[tuple[str, int, bool]]
) -> None:
    handler = EscapeHandler()
    bases: list[tuple[tuple[int, set[str]], bool]] = [((0, set()), True), ((0, set()), False)]
    for op, index, flag in ops:
        target = dirs[index] if flag else f"/nowhere/p{index}"
        if op == "always":
            handler.process_decision(_request(target), EscapeDecision.ALLOW_ALWAYS)
        elif op == "session":
            handler.process_decision(_request(target), EscapeDecision.ALLOW_SESSION)
        elif op == "clear":
            handler.clear_all()
        elif op == "clear_session":
            handler.clear_session()
        elif op == "restore":
            picked = [str(d) for d in dirs[index : index + 3]] + ["relative/path", "/nowhere/x"]
            handler.restore_state(EscapeState(remembered_paths=picked))
        elif op == "many":
            for i in range(40):
                handler.process_decision(
                    _request(f"/nowhere/m{index}/{i}"), EscapeDecision.ALLOW_ALWAYS
                )
            handler.clear_all()
        elif op == "copy":
            old = handler.version
            handler = handler.copy()
            assert handler.version > old
            for (version, _), _chain in bases:
                assert handler.remembered_path_changes(version) is None
            bases = [((handler.version, set(handler.remembered_paths)), flag)]
        else:
            bases = [*bases[-4:], ((handler.version, set(handler.remembered_paths)), flag)]
        kept = []
        for basis, chain in bases:
            new = _escape_verify(handler, basis)
            kept.append(((new if chain and new is not None else basis), chain))
        bases = kept
        assert len(handler._journal) <= 2 * len(handler._remembered) + 64


def test_escape_long_random_run_keeps_deltas_exact(dirs: list[Path]) -> None:
    rng = random.Random(5)
    handler = EscapeHandler()
    bases = [(0, set[str]()) for _ in range(3)]
    answered = refused = 0
    for _ in range(3000):
        op = rng.randrange(10)
        target: str | Path = (
            rng.choice(dirs) if rng.random() < 0.3 else f"/nowhere/{rng.randrange(300)}"
        )
        if op < 7:
            handler.process_decision(_request(target), EscapeDecision.ALLOW_ALWAYS)
        elif op == 7 and rng.random() < 0.05:
            handler.clear_all()
        elif op == 8:
            handler.restore_state(
                EscapeState(remembered_paths=[str(d) for d in rng.sample(dirs, 3)])
            )
        else:
            handler.process_decision(_request(target), EscapeDecision.ALLOW_SESSION)
        for i, basis in enumerate(bases):
            new = _escape_verify(handler, basis)
            if new is None:
                refused += 1
                bases[i] = (handler.version, set(handler.remembered_paths))
            else:
                answered += 1
                if i:  # base 0 stays put (long ranges); the others chain
                    bases[i] = new
        assert len(handler._journal) <= 2 * len(handler._remembered) + 64
    assert handler._journal.floor > 0
    assert answered > 10 * refused


def test_escape_clear_all_reports_every_path_forgotten(dirs: list[Path]) -> None:
    handler = EscapeHandler()
    for d in dirs[:3]:
        handler.process_decision(_request(d), EscapeDecision.ALLOW_ALWAYS)
    version = handler.version
    handler.clear_all()
    found = handler.remembered_path_changes(version)
    assert found == (handler.version, {str(d.resolve()): False for d in dirs[:3]})


def test_escape_restore_state_journals_added_paths(dirs: list[Path]) -> None:
    handler = EscapeHandler()
    handler.process_decision(_request(dirs[0]), EscapeDecision.ALLOW_ALWAYS)
    version = handler.version
    handler.restore_state(
        EscapeState(remembered_paths=[str(dirs[0]), str(dirs[1]), "rel", "/nowhere/at/all"])
    )
    assert handler.remembered_path_changes(version) == (
        handler.version,
        {str(dirs[1].resolve()): True},
    )


def test_escape_repeated_allow_always_is_not_a_change(dirs: list[Path]) -> None:
    handler = EscapeHandler()
    handler.process_decision(_request(dirs[0]), EscapeDecision.ALLOW_ALWAYS)
    version = handler.version
    handler.process_decision(_request(dirs[0]), EscapeDecision.ALLOW_ALWAYS)
    handler.process_decision(_request(dirs[1]), EscapeDecision.ALLOW_SESSION)
    assert handler.version == version
    assert handler.remembered_path_changes(version) == (version, {})


def test_escape_copy_refuses_every_earlier_basis(dirs: list[Path]) -> None:
    handler = EscapeHandler()
    handler.process_decision(_request(dirs[0]), EscapeDecision.ALLOW_ALWAYS)
    copy = handler.copy()
    assert copy.remembered_paths == handler.remembered_paths
    for since in range(handler.version + 1):
        assert copy.remembered_path_changes(since) is None
    basis = (copy.version, set(copy.remembered_paths))
    copy.process_decision(_request(dirs[1]), EscapeDecision.ALLOW_ALWAYS)
    assert _escape_verify(copy, basis) == (
        copy.version,
        {str(dirs[0].resolve()), str(dirs[1].resolve())},
    )
    assert handler.remembered_path_changes(1) == (1, {})  # the original's journal is its own


def test_escape_trimmed_journal_refuses_an_old_basis() -> None:
    handler = EscapeHandler()
    handler.process_decision(_request("/nowhere/keep"), EscapeDecision.ALLOW_ALWAYS)
    basis = (handler.version, set(handler.remembered_paths))
    assert handler.remembered_path_changes(handler.version + 1) is None
    for i in range(200):
        handler.process_decision(_request(f"/nowhere/{i}"), EscapeDecision.ALLOW_ALWAYS)
    handler.clear_all()
    assert handler._journal.floor > basis[0]
    assert handler.remembered_path_changes(basis[0]) is None
    assert len(handler._journal) <= 64
    fresh = (handler.version, set(handler.remembered_paths))
    handler.process_decision(_request("/nowhere/again"), EscapeDecision.ALLOW_ALWAYS)
    assert _escape_verify(handler, fresh) == (handler.version, {"/nowhere/again"})


def test_escape_delta_costs_the_changes_not_the_paths() -> None:
    handler = EscapeHandler()
    for i in range(10_000):
        handler.process_decision(_request(f"/nowhere/{i}"), EscapeDecision.ALLOW_ALWAYS)
    version = handler.version
    handler.process_decision(_request("/nowhere/new"), EscapeDecision.ALLOW_ALWAYS)
    assert handler.remembered_path_changes(version) == (version + 1, {"/nowhere/new": True})


def test_escape_export_without_paths_keeps_unknown_keys() -> None:
    handler = EscapeHandler()
    handler.restore_state(EscapeState.model_validate({"remembered_paths": [], "future": 1}))
    handler.process_decision(_request("/nowhere/a"), EscapeDecision.ALLOW_ALWAYS)
    assert handler.export_state_data(paths=False) == {"future": 1}
    assert handler.export_state_data() == {"remembered_paths": ["/nowhere/a"], "future": 1}
    assert EscapeHandler().export_state_data(paths=False) == {}
