"""The spend ledger: one row per LLM call, saved in the session's own write (``astrid.ledger``).

Real parts: SQLite files and file-backend directories under ``tmp_path``, the scripted provider
driving the real runtime (turns, sub-agents, the summarizer), the doctor's library check.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from astrid.context import ContextManager, LLMSummarizer
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import ConcurrencyError, SerializationError, StorageError
from astrid.ledger import (
    KIND_SUBAGENT_TURN,
    KIND_SUMMARIZER,
    KIND_TURN,
    TOLERANCE_USD,
    LedgerRow,
    aggregate,
    compare_totals,
    new_row_id,
    usd,
    usd_text,
)
from astrid.messages import Message
from astrid.plugins import load_plugins
from astrid.runtime import AgentRuntime, RuntimeConfig, tokens_to_usd
from astrid.security.approvals import ApprovalResponse, ApproveSession
from astrid.security.deferred import ApprovalRequest
from astrid.session import AgentSession
from astrid.store import SessionStore, StorageBackend
from astrid.timeutil import utcnow


@pytest.fixture(autouse=True)
def _plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ASTRID_LOAD_PLUGINS", raising=False)
    load_plugins()


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture(params=["sqlite", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> SessionStore:
    backend: StorageBackend
    if request.param == "sqlite":
        backend = SqliteBackend(tmp_path / "astrid.db")
    else:
        backend = FileBackend(tmp_path / "sessions")
    return SessionStore(backend)


class Approve:
    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        return ApprovalResponse.new(request.id, ApproveSession())

    def is_available(self) -> bool:
        return True


def text(t: str, tokens: tuple[int, int] | None = None) -> list[dict[str, Any]]:
    turn: list[dict[str, Any]] = [{"text": t}]
    if tokens is not None:
        turn.append({"usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]}})
    return turn


def call(call_id: str, name: str, arguments: Any, tokens: tuple[int, int]) -> list[Any]:
    return [
        {"tool_call": {"id": call_id, "name": name, "arguments": arguments}},
        {"usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]}},
    ]


def runtime_for(
    script: list[Any], store: SessionStore, workspace: Path, **kwargs: Any
) -> AgentRuntime:
    return AgentRuntime(
        ScriptedProvider(script),
        store=store,
        config=RuntimeConfig(workspace=workspace),
        approval_handler=Approve(),
        **kwargs,
    )


def totals_of(store: SessionStore) -> tuple[dict[str, tuple[str | None, float]], dict[str, float]]:
    """What ``astrid doctor`` compares: each stored session's budget total and parent."""
    sessions: dict[str, tuple[str | None, float]] = {}
    workspaces: dict[str, float] = {}
    for summary in store.list_sessions(limit=1000):
        loaded = store.load(summary.id)
        assert loaded is not None
        parent = loaded.parent_id.bare if loaded.parent_id else None
        sessions[summary.id] = (parent, loaded.budget_tracker.spent())
        if summary.workspace_path:
            budget = store.load_workspace_state(summary.workspace_path).budget
            if budget is not None:
                workspaces[summary.workspace_path] = budget.total_spent_usd
    return sessions, workspaces


# -- one row per call -------------------------------------------------------------------------


def test_a_turn_with_a_tool_call_writes_one_row_per_call(
    store: SessionStore, workspace: Path
) -> None:
    (workspace / "notes.txt").write_text("milk\n")
    script = [
        call("c1", "read_file", {"path": "notes.txt"}, (1000, 20)),
        text("It says milk.", (1200, 10)),
    ]
    runtime = runtime_for(script, store, workspace)
    session = runtime.create_session()
    store.attach_workspace(session, workspace)
    result = asyncio.run(runtime.run_turn(session, "what do my notes say?"))
    store.save_workspace_of(session)

    rows = store.list_ledger(session_id=session.id)
    assert [(r.kind, r.input_tokens, r.output_tokens) for r in rows] == [
        (KIND_TURN, 1000, 20),
        (KIND_TURN, 1200, 10),
    ]
    assert all(r.usage_reported and r.workspace_charged for r in rows)
    assert {r.workspace for r in rows} == {str(workspace)}
    assert {r.model for r in rows} == {"scripted-1"} and {r.provider for r in rows} == {"scripted"}
    assert rows[0].cost_usd == usd(tokens_to_usd(1000, 20))
    assert sum(r.cost_usd for r in rows) == usd(tokens_to_usd(1000, 20)) + usd(
        tokens_to_usd(1200, 10)
    )
    assert all(r.reserved_usd > 0 for r in rows)
    assert all(r.at.tzinfo is not None for r in rows)
    assert abs(usd(result.cost_usd) - sum(r.cost_usd for r in rows)) <= TOLERANCE_USD
    assert session.changes.ledger == []  # written by the turn's save
    checks = compare_totals(*totals_of(store), store.list_ledger())
    assert [(c.what, c.status, c.rows) for c in checks] == [
        ("session", "ok", 2),
        ("workspace", "ok", 2),
    ]


def test_a_sub_agents_calls_carry_its_parent_and_are_checked_with_it(
    store: SessionStore, workspace: Path
) -> None:
    script = [
        call("t1", "task", {"description": "count", "prompt": "count to 3"}, (100, 10)),
        text("1, 2, 3", (50, 5)),
        text("The sub-agent counted to 3.", (200, 8)),
    ]
    runtime = runtime_for(script, store, workspace)
    session = runtime.create_session()
    asyncio.run(runtime.run_turn(session, "delegate"))
    rows = store.list_ledger()
    assert [r.kind for r in rows] == [KIND_TURN, KIND_SUBAGENT_TURN, KIND_TURN]
    child = rows[1]
    assert child.session_id != session.id.bare
    assert child.parent_session_id == session.id.bare
    assert rows[0].parent_session_id is None and rows[2].session_id == session.id.bare
    assert [r.id for r in store.list_ledger(session_id=child.session_id)] == [child.id]
    # The child shares its parent's budget tracker: the parent's total covers all three.
    checks = compare_totals(*totals_of(store), rows)
    assert [(c.key, c.status, c.rows) for c in checks] == [(session.id.bare, "ok", 3)]


def test_summarizer_calls_are_rows_of_their_own_kind(
    store: SessionStore, workspace: Path
) -> None:
    script = [text("short answer one", (30, 4)), text("THE SUMMARY", (60, 3)), text("two", (9, 1))]
    runtime = runtime_for(
        script,
        store,
        workspace,
        tools=[],
        context_manager=ContextManager(
            20, threshold=0.5, keep_recent=1, summarizer=LLMSummarizer()
        ),
    )
    session = runtime.create_session()
    asyncio.run(runtime.run_turn(session, "first question with enough words to count"))
    asyncio.run(runtime.run_turn(session, "second question"))
    rows = store.list_ledger(session_id=session.id)
    # The scripted provider's complete_simple returns text only: no usage, the reservation.
    assert [(r.kind, r.input_tokens, r.usage_reported) for r in rows] == [
        (KIND_TURN, 30, True),
        (KIND_SUMMARIZER, 0, False),
        (KIND_TURN, 9, True),
    ]
    assert rows[1].cost_usd == rows[1].reserved_usd > 0
    [check] = compare_totals(*totals_of(store), rows)
    assert check.status == "ok" and check.rows == 3


def test_a_call_without_reported_usage_is_charged_its_reservation(
    store: SessionStore, workspace: Path
) -> None:
    runtime = runtime_for([[{"text": "no usage here"}]], store, workspace, tools=[])
    session = runtime.create_session()
    asyncio.run(runtime.run_turn(session, "hi"))
    [row] = store.list_ledger()
    assert not row.usage_reported and row.input_tokens == 0
    assert row.cost_usd == row.reserved_usd > 0
    assert aggregate([row], None)[0].unreported == 1


# -- the save's own write ---------------------------------------------------------------------


def _row(session: AgentSession, cost: str = "0.25", **fields: Any) -> LedgerRow:
    values: dict[str, Any] = dict(
        id=new_row_id(),
        session_id=session.id.bare,
        parent_session_id=None,
        workspace=None,
        workspace_charged=False,
        model="m",
        provider="p",
        kind=KIND_TURN,
        input_tokens=1,
        output_tokens=2,
        cache_read_tokens=0,
        cache_write_tokens=0,
        reasoning_tokens=0,
        usage_reported=True,
        reserved_usd=Decimal("0.5"),
        cost_usd=Decimal(cost),
    )
    values.update(fields)
    return LedgerRow(**values)


def test_a_stale_save_writes_no_row_and_keeps_them_for_the_next(
    store: SessionStore,
) -> None:
    session = store.new_session("p")
    store.save(session)
    other = store.load(session.id)
    assert other is not None
    store.save(other)  # another writer moves the revision
    row = _row(session)
    session.changes.ledger.append(row)
    session.budget_tracker.record_cost(0.25)
    with pytest.raises(ConcurrencyError):
        store.save(session)
    assert store.list_ledger() == []
    assert session.changes.ledger == [row]  # still pending


def test_a_save_that_cannot_store_a_message_writes_no_row(store: SessionStore) -> None:
    session = store.new_session("p")
    store.save(session)
    session.changes.ledger.append(_row(session))
    session.extra_fields["bad"] = float("nan")
    with pytest.raises(SerializationError):
        store.save(session)
    assert store.list_ledger() == [] and len(session.changes.ledger) == 1
    del session.extra_fields["bad"]
    store.save(session)
    assert len(store.list_ledger()) == 1 and session.changes.ledger == []


def test_rows_outlive_their_sessions_deletion(store: SessionStore) -> None:
    session = store.new_session("p")
    session.changes.ledger.append(_row(session))
    store.save(session)
    assert store.delete(session.id)
    assert [r.session_id for r in store.list_ledger()] == [session.id.bare]


def test_a_backend_without_a_ledger_still_saves_and_says_it_keeps_none() -> None:
    class Plain:
        """The memory backend minus ``list_ledger`` (a third-party backend of before)."""

        def __init__(self) -> None:
            self._inner = MemoryBackend()
            self.name = "plain"

        def __getattr__(self, name: str) -> Any:
            if name == "list_ledger":
                raise AttributeError(name)
            return getattr(self._inner, name)

    store = SessionStore(Plain())
    assert not store.keeps_ledger
    session = store.new_session("p")
    session.changes.ledger.append(_row(session))
    store.save(session)
    assert session.changes.ledger == []  # dropped, not piling up
    with pytest.raises(StorageError, match="keeps no spend ledger"):
        store.list_ledger()


# -- money and checks -------------------------------------------------------------------------


def test_amounts_are_exact_decimal_text() -> None:
    assert usd(0.1) == Decimal("0.1") and usd_text(usd(1.2e-7)) == "0.00000012"
    assert usd("0.000123") == Decimal("0.000123")
    for bad in (float("nan"), float("inf"), -1.0, "x"):
        with pytest.raises(ValueError):
            usd(bad)
    session = AgentSession("p")
    row = _row(session, cost="0.00000012")
    assert LedgerRow.from_data(row.to_data(), "here") == row
    with pytest.raises(SerializationError, match="here: ledger row key 'cost_usd'"):
        LedgerRow.from_data({**row.to_data(), "cost_usd": "-1"}, "here")


def test_compare_totals_reports_differences_and_unledgered_spend() -> None:
    parent, other, untouched = AgentSession("a"), AgentSession("b"), AgentSession("c")
    child = parent.child("c")
    rows = [_row(parent, "0.25"), _row(child, "0.5", parent_session_id=parent.id.bare)]
    sessions = {
        parent.id.bare: (None, 0.75),
        child.id.bare: (parent.id.bare, 0.75),
        other.id.bare: (None, 2.0),  # spent before the ledger existed
        untouched.id.bare: (None, 0.0),
    }
    checks = {c.key: c for c in compare_totals(sessions, {}, rows)}
    assert child.id.bare not in checks  # checked with its parent
    assert checks[parent.id.bare].status == "ok"
    assert checks[other.id.bare].status == "unledgered"
    assert "before the ledger existed" in checks[other.id.bare].describe()
    assert checks[untouched.id.bare].status == "ok"
    tampered = {**sessions, parent.id.bare: (None, 1.75)}
    bad = {c.key: c for c in compare_totals(tampered, {}, rows)}[parent.id.bare]
    assert bad.status == "differs" and "+1" in bad.describe()
    assert "sum to $0.75" in bad.describe()


def test_listing_filters_by_time(store: SessionStore) -> None:
    session = store.new_session("p")
    now = utcnow()
    from datetime import timedelta

    old = _row(session, at=now - timedelta(days=3))
    new = _row(session, at=now)
    session.changes.ledger.extend([new, old])
    store.save(session)
    assert [r.id for r in store.list_ledger()] == [old.id, new.id]
    assert [r.id for r in store.list_ledger(since=now - timedelta(days=1))] == [new.id]
    assert [r.id for r in store.list_ledger(until=now - timedelta(days=1))] == [old.id]


# -- atomicity in each persistent backend -----------------------------------------------------


def test_sqlite_rolls_the_session_back_when_its_rows_fail(tmp_path: Path) -> None:
    path = tmp_path / "astrid.db"
    store = SessionStore(SqliteBackend(path))
    session = store.new_session("p")
    store.save(session)
    with sqlite3.connect(path) as raw:  # the ledger insert fails inside the save's transaction
        raw.execute(
            "CREATE TRIGGER no_rows BEFORE INSERT ON ledger BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    session.add_message(Message.user("one"))
    session.changes.ledger.append(_row(session))
    with pytest.raises(StorageError, match="no"):
        store.save(session)
    stored = store.load(session.id)
    assert stored is not None and stored.messages == []  # nothing of the save was kept
    with sqlite3.connect(path) as raw:
        raw.execute("DROP TRIGGER no_rows")
    store.save(session)  # the pending rows and message go with the next save
    assert len(store.list_ledger()) == 1 and len(store.load(session.id).messages) == 1  # type: ignore[union-attr]


def test_file_rows_ride_in_the_document_and_a_deleted_sessions_count_once(
    tmp_path: Path,
) -> None:
    backend = FileBackend(tmp_path / "sessions")
    store = SessionStore(backend)
    first, second = store.new_session("1"), store.new_session("2")
    one, two = _row(first), _row(second)
    first.changes.ledger.append(one)
    second.changes.ledger.append(two)
    store.save(first)
    store.save(second)
    doc = json.loads(backend.path_of(second.id.bare).read_text())
    assert doc["astrid_ledger"] == [two.to_data()]  # the same atomic replace as the session
    loaded = store.load(second.id)
    assert loaded is not None and "astrid_ledger" not in loaded.extra_fields
    assert store.delete(first.id)
    deleted = tmp_path / "sessions" / ".astrid-ledger-deleted.jsonl"
    assert deleted.stat().st_mode & 0o777 == 0o600
    # A writer killed after keeping the second's row, before removing its file; another killed
    # mid-append: both rows still count once, and the next append starts a line of its own.
    with deleted.open("a") as out:
        out.write(json.dumps(two.to_data()) + "\n" + '{"torn": ')
    assert {r.id for r in store.list_ledger()} == {one.id, two.id}
    assert len(store.list_ledger()) == 2
    assert store.delete(second.id)
    assert sorted(r.id for r in store.list_ledger()) == sorted([one.id, two.id])
    assert deleted.read_text().endswith(json.dumps(two.to_data(), separators=(",", ":")) + "\n")


def test_a_sub_agents_rows_move_to_its_parent_when_its_save_fails(
    tmp_path: Path, workspace: Path
) -> None:
    class ChildSaveFails(SqliteBackend):
        def write(self, change: Any) -> int:
            if change.summary.parent_id is not None:
                raise StorageError("the child's save failed")
            return super().write(change)

    store = SessionStore(ChildSaveFails(tmp_path / "astrid.db"))
    script = [
        call("t1", "task", {"description": "count", "prompt": "count to 3"}, (100, 10)),
        text("1, 2, 3", (50, 5)),
        text("Done.", (200, 8)),
    ]
    runtime = runtime_for(script, store, workspace)
    session = runtime.create_session()
    asyncio.run(runtime.run_turn(session, "delegate"))
    rows = store.list_ledger()
    assert [r.kind for r in rows] == [KIND_TURN, KIND_SUBAGENT_TURN, KIND_TURN]
    assert rows[1].session_id != session.id.bare  # still the child's row, saved by the parent
    [check] = compare_totals(*totals_of(store), rows)
    assert check.status == "ok"


# -- moving stores and the async API ----------------------------------------------------------


def test_migrate_and_import_carry_the_rows_along(tmp_path: Path) -> None:
    from astrid.transfer import import_sessions, migrate

    source = SessionStore(SqliteBackend(tmp_path / "source.db"))
    session = source.new_session("p")
    rows = [_row(session, "0.1"), _row(session, "0.2")]
    session.changes.ledger.extend(rows)
    source.save(session)
    target = SessionStore(FileBackend(tmp_path / "sessions"))
    result = migrate(source, target)
    assert result.ok, result
    assert target.list_ledger() == rows
    # The file backend's documents bring their rows into an import (here into a third store).
    third = SessionStore(SqliteBackend(tmp_path / "third.db"))
    imported = import_sessions(third, tmp_path / "sessions")
    assert not imported.failed and imported.imported == [session.id.bare]
    assert third.list_ledger() == rows
    assert "astrid_ledger" not in (third.load_record(session.id.bare, tail=0) or _no()).state


def _no() -> Any:
    raise AssertionError("not stored")


def test_the_async_read_side_runs_off_the_loop(store: SessionStore) -> None:
    session = store.new_session("p")
    session.changes.ledger.extend([_row(session, "0.1"), _row(session, "0.2", model="other")])
    store.save(session)

    async def read() -> tuple[list[LedgerRow], list[Any]]:
        return await store.alist_ledger(session_id=session.id), await store.ausage(by="model")

    rows, totals = asyncio.run(read())
    assert len(rows) == 2
    assert [(t.key, t.calls, t.cost_usd) for t in totals] == [
        ("m", 1, Decimal("0.1")),
        ("other", 1, Decimal("0.2")),
    ]
