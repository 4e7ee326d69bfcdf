"""The spend-ledger part of the storage contract (``astrid.ledger``), mixed into
``StorageConformance``: skipped for a backend that does not keep a ledger (``LedgerKeeper``)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..errors import ConcurrencyError, SerializationError
from ..ledger import KIND_SUBAGENT_TURN, KIND_SUMMARIZER, KIND_TURN, LedgerRow, new_row_id
from ..messages import Message
from ..session import AgentSession
from ..store import LedgerKeeper, SessionStore, StorageBackend, workspace_key
from ..timeutil import utcnow

if TYPE_CHECKING:
    _Reopen = Callable[..., StorageBackend]


def ledger_row(session: AgentSession, **fields: Any) -> LedgerRow:
    """A row of ``session`` with every field set to something a backend must keep exactly."""
    values: dict[str, Any] = dict(
        id=new_row_id(),
        session_id=session.id.bare,
        parent_session_id=session.parent_id.bare if session.parent_id else None,
        workspace=workspace_key(session.workspace_path) if session.workspace_path else None,
        workspace_charged=session.workspace_path is not None,
        model="model-é/1",
        provider="provider",
        kind=KIND_TURN,
        input_tokens=1234,
        output_tokens=56,
        cache_read_tokens=7,
        cache_write_tokens=8,
        reasoning_tokens=9,
        usage_reported=True,
        reserved_usd=Decimal("0.0123456789012345"),
        cost_usd=Decimal("0.00000012"),
        at=utcnow().replace(microsecond=123456),
    )
    values.update(fields)
    return LedgerRow(**values)


class LedgerConformance:
    """Ledger rows round-trip, are written in the save's own atomic write (a failed save writes
    none, a retried one no duplicate), outlive their session, and list by session, workspace
    and time range."""

    if TYPE_CHECKING:
        _reopen: _Reopen

    @staticmethod
    def _keeper(store: SessionStore) -> None:
        if not isinstance(store.backend, LedgerKeeper):
            pytest.skip(f"{store.backend_name}: keeps no spend ledger (no list_ledger)")

    def test_ledger_rows_round_trip_exactly_through_every_kind_of_save(
        self, store: SessionStore, workspace: Path
    ) -> None:
        self._keeper(store)
        session = store.new_session("p").with_workspace(workspace)
        child = session.child("c")
        first = ledger_row(session)
        session.changes.ledger.append(first)
        store.save(session)  # a create
        session.add_message(Message.user("hi"))
        second = ledger_row(session, kind=KIND_SUMMARIZER, usage_reported=False)
        session.changes.ledger.append(second)
        store.save(session)  # an append
        session.messages[0] = Message.user("edited")
        third = ledger_row(session, cost_usd=Decimal("12345.678901234567"))
        session.changes.ledger.append(third)
        store.save(session)  # a replace
        fourth = ledger_row(session, workspace=None, workspace_charged=False)
        session.changes.ledger.append(fourth)
        store.save_state(session)  # the state alone
        sub = ledger_row(child, kind=KIND_SUBAGENT_TURN)
        child.changes.ledger.append(sub)
        store.save(child)
        assert session.changes.ledger == [] and child.changes.ledger == []
        rows = store.list_ledger()
        assert {r.id: r for r in rows} == {r.id: r for r in (first, second, third, fourth, sub)}
        assert rows == sorted(rows, key=lambda r: (r.at, r.id))
        assert all(r.at.utcoffset() == timedelta(0) for r in rows)

    def test_ledger_rows_survive_a_reopen(
        self, backend: StorageBackend, store: SessionStore, data_dir: Path
    ) -> None:
        self._keeper(store)
        session = store.new_session("p")
        row = ledger_row(session)
        session.changes.ledger.append(row)
        store.save(session)
        again = SessionStore(self._reopen(backend, data_dir))
        assert again.list_ledger() == [row]

    def test_a_stale_or_refused_save_writes_no_ledger_row(self, store: SessionStore) -> None:
        self._keeper(store)
        session = store.new_session("p")
        store.save(session)
        other = store.load(session.id)
        assert other is not None
        store.save(other)
        row = ledger_row(session)
        session.changes.ledger.append(row)
        with pytest.raises(ConcurrencyError):
            store.save(session)
        with pytest.raises(ConcurrencyError):
            store.save_state(session)
        fresh = store.load(session.id)
        assert fresh is not None
        fresh.changes.ledger.append(row)
        fresh.add_message(Message.user("bad \ud800"))
        with pytest.raises(SerializationError):
            store.save(fresh)
        assert store.list_ledger() == []
        assert fresh.changes.ledger == [row]  # kept for the next save
        fresh.messages.pop()
        store.save(fresh)
        assert store.list_ledger() == [row]

    def test_a_retried_save_never_stores_a_ledger_row_twice(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        self._keeper(store)
        session = store.new_session("p")
        row = ledger_row(session)
        session.changes.ledger.append(row)
        store.save(session)
        # A save whose write landed but whose caller saw an error (and so sends it again):
        session.changes.ledger.append(row)
        session.add_message(Message.user("again"))
        store.save(session)
        session.changes.ledger.append(row)
        session.messages[0] = Message.user("rewritten")
        store.save(session)
        assert store.list_ledger() == [row]

    def test_ledger_rows_outlive_their_session(self, store: SessionStore) -> None:
        self._keeper(store)
        session = store.new_session("p")
        row = ledger_row(session)
        session.changes.ledger.append(row)
        store.save(session)
        assert store.delete(session.id)
        assert store.list_ledger() == [row]
        assert store.list_ledger(session_id=session.id) == [row]

    def test_ledger_lists_by_session_workspace_and_time_range(
        self, store: SessionStore, workspace: Path, tmp_path: Path
    ) -> None:
        self._keeper(store)
        other_ws = tmp_path / "other"
        one = store.new_session("1").with_workspace(workspace)
        two = store.new_session("2").with_workspace(other_ws)
        now = utcnow()
        old = ledger_row(one, at=now - timedelta(days=3))
        mid = ledger_row(one, at=now - timedelta(hours=2))
        new = ledger_row(two, at=now)
        one.changes.ledger.extend([mid, old])
        two.changes.ledger.append(new)
        store.save(one)
        store.save(two)
        assert store.list_ledger() == [old, mid, new]
        assert store.list_ledger(session_id=one.id) == [old, mid]
        assert store.list_ledger(workspace=other_ws) == [new]
        assert store.list_ledger(since=now - timedelta(days=1)) == [mid, new]
        assert store.list_ledger(until=now - timedelta(hours=1)) == [old, mid]
        assert store.list_ledger(since=mid.at, until=new.at) == [mid]
        assert store.list_ledger(session_id=two.id, since=now + timedelta(seconds=1)) == []
        [total] = store.usage()
        assert total.calls == 3 and total.cost_usd == old.cost_usd * 3
        assert [t.key for t in store.usage(by="session")] == sorted([one.id.bare, two.id.bare])


__all__ = ["LedgerConformance", "ledger_row"]
