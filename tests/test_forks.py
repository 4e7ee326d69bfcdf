"""Session forks: the prefix, the security state as of the fork point, the link, the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from astrid import AgentSession, SessionStore
from astrid.default_plugins.encrypted_storage import EncryptedBackend
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import InvalidForkPoint, SessionNotFound
from astrid.forks import fork_of
from astrid.ids import SessionId
from astrid.ledger import KIND_TURN, LedgerRow, new_row_id
from astrid.messages import Message
from astrid.security.allowances import Allowance, ExactTool
from astrid.store import StorageBackend
from astrid.timeutil import utcnow
from astrid.transfer import import_sessions

BACKENDS: dict[str, Callable[[Path], StorageBackend]] = {
    "sqlite": lambda d: SqliteBackend(d / "astrid.db"),
    "file": lambda d: FileBackend(d / "sessions"),
    "encrypted": lambda d: EncryptedBackend(SqliteBackend(d / "e.db"), bytes(32)),
}


def _row(session: AgentSession, at_offset: float, cost: str, start: object) -> LedgerRow:
    assert isinstance(start, type(utcnow()))
    return LedgerRow(
        id=new_row_id(), session_id=session.id.bare, parent_session_id=None, workspace=None,
        workspace_charged=False, model="m", provider="scripted", kind=KIND_TURN,
        input_tokens=1, output_tokens=1, cache_read_tokens=0, cache_write_tokens=0,
        reasoning_tokens=0, usage_reported=True, reserved_usd=Decimal(cost),
        cost_usd=Decimal(cost), at=start + timedelta(seconds=at_offset),
    )


def _grant(tool: str, start: object, offset: float) -> Allowance:
    assert isinstance(start, type(utcnow()))
    made = Allowance.create(ExactTool(server="fs", tool=tool), session_only=True)
    return made.model_copy(update={"created_at": start + timedelta(seconds=offset)})


def _conversation(store: SessionStore) -> AgentSession:
    """user, assistant (call A at +10 s, 0.10), user, assistant (call B at +20 s, 0.25); grant
    a before call A, grant b between the calls; 0.35 spent."""
    start = utcnow() - timedelta(minutes=5)
    session = store.new_session("be brief")
    session.metadata.title = "source"
    session.add_session_allowance(_grant("a", start, 5))
    session.add_message(Message.user("first question"))
    session.add_message(Message.assistant("first answer"))
    session.changes.ledger.append(_row(session, 10, "0.10", start))
    session.add_session_allowance(_grant("b", start, 15))
    session.add_message(Message.user("second question"))
    session.add_message(Message.assistant("second answer"))
    session.changes.ledger.append(_row(session, 20, "0.25", start))
    session.budget_tracker.record_cost(0.35)
    store.save(session)
    return session


def _tools(session: AgentSession) -> list[str]:
    return sorted(
        a["action_pattern"]["tool"]
        for a in session.allowance_store.export_session_allowances_data()
    )


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_a_fork_has_the_prefix_the_state_as_of_then_and_a_link(tmp_path: Path, name: str) -> None:
    store = SessionStore(BACKENDS[name](tmp_path))
    source = _conversation(store)
    whole, half, start = store.fork(source.id), store.fork(source.id, at=2), store.fork(
        source.id, at=1
    )
    assert [m.text() for m in half.messages] == ["first question", "first answer"]
    assert len(whole.messages) == 4 and start.messages[0].text() == "first question"
    assert _tools(whole) == ["a", "b"] and whole.budget_tracker.spent() == pytest.approx(0.35)
    assert _tools(half) == ["a", "b"] and half.budget_tracker.spent() == pytest.approx(0.10)
    assert _tools(start) == ["a"] and start.budget_tracker.spent() == pytest.approx(0.0)
    assert half.metadata.turn_count == 1 and half.metadata.title == "source"
    store.close()
    reopened = SessionStore(BACKENDS[name](tmp_path))
    for fork, point, how in ((whole, 4, "exact"), (half, 2, "ledger"), (start, 1, "ledger")):
        loaded = reopened.load(fork.id)
        assert loaded is not None
        assert fork_of(loaded.metadata) == (source.id.bare, point)
        assert (loaded.metadata.model_extra or {})["fork_state"] == how
    kept = reopened.load(source.id)
    assert kept is not None and len(kept.messages) == 4 and fork_of(kept.metadata) is None
    assert kept.budget_tracker.spent() == pytest.approx(0.35)
    reopened.close()


def test_without_matching_ledger_rows_the_fork_fails_closed() -> None:
    store = SessionStore(MemoryBackend())
    session = store.new_session("x")
    session.add_session_allowance(Allowance.create(ExactTool(server="fs", tool="a"),
                                                   session_only=True))
    for text in ("q1", "a1", "q2", "a2"):
        session.add_message(Message.user(text) if text[0] == "q" else Message.assistant(text))
    session.budget_tracker.record_cost(0.5)
    store.save(session)  # no ledger rows: the spend at message 2 is not known
    fork = store.fork(session.id, at=2)
    assert (fork.metadata.model_extra or {})["fork_state"] == "conservative"
    assert _tools(fork) == [] and fork.budget_tracker.spent() == pytest.approx(0.5)


def test_bad_fork_points_and_unknown_sessions_are_named_errors() -> None:
    store = SessionStore(MemoryBackend())
    session = store.new_session("x")
    session.add_message(Message.user("q"))
    store.save(session)
    for at in (-1, 2):
        with pytest.raises(InvalidForkPoint, match=session.id.bare):
            store.fork(session.id, at=at)
    missing = SessionId.new()
    with pytest.raises(SessionNotFound, match=missing.bare):
        store.fork(missing)
    fork = asyncio.run(store.afork(session.id, at=0))
    assert fork.messages == [] and fork_of(fork.metadata) == (session.id.bare, 0)


def test_the_cli_forks_shows_the_tree_and_exports_the_link(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "ASTRID_HOME": str(home)}
    store = SessionStore(SqliteBackend(home / "astrid.db"))
    source = _conversation(store)
    store.close()

    def astrid(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "astrid", *args], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    made = json.loads(astrid("sessions", "fork", source.id.bare[:8], "--at", "2", "--json")
                      .stdout)
    assert made["forked_from"] == source.id.bare and made["fork_point"] == 2
    again = json.loads(astrid("sessions", "fork", made["id"], "--json").stdout)
    tree = astrid("sessions", "list", "--tree").stdout.splitlines()
    assert tree[0].startswith(source.id.bare)
    assert tree[1].startswith("  └─ " + made["id"]) and "at 2" in tree[1]
    assert tree[2].startswith("    └─ " + again["id"])
    rows = json.loads(astrid("sessions", "list", "--tree", "--json").stdout)["sessions"]
    assert {r["id"]: r["forked_from"] for r in rows}[made["id"]] == source.id.bare
    out = tmp_path / "fork.json"
    astrid("sessions", "export", made["id"], "-o", str(out))
    exported = json.loads(out.read_text())
    doc = exported[0] if isinstance(exported, list) else exported
    assert doc["metadata"]["forked_from"] == source.id.bare
    assert doc["metadata"]["fork_point"] == 2
    with SessionStore(FileBackend(tmp_path / "imported")) as other:
        import_sessions(other, out)
        back = other.load(made["id"])
        assert back is not None and fork_of(back.metadata) == (source.id.bare, 2)
    bad = subprocess.run([sys.executable, "-m", "astrid", "sessions", "fork", source.id.bare,
                          "--at", "9"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1
    assert "has 4 messages" in bad.stderr


def test_the_workspace_budget_counts_the_source_and_the_fork_once_each(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    one = SessionStore(SqliteBackend(tmp_path / "astrid.db"), workspace_max_usd=10.0)
    source = one.new_session("s")
    one.attach_workspace(source, workspace)
    source.add_message(Message.user("q"))
    for tracker in (source.budget_tracker, source.workspace_budget_tracker):
        assert tracker is not None
        tracker.record_cost(0.3)
    one.save(source)
    one.save_workspace_of(source)
    # the fork is used from another store over the same file (another process, in effect)
    two = SessionStore(SqliteBackend(tmp_path / "astrid.db"), workspace_max_usd=10.0)
    fork = two.fork(source.id)
    assert fork.workspace_path is not None
    two.attach_workspace(fork, fork.workspace_path)
    assert fork.budget_tracker.spent() == pytest.approx(0.3)
    for spender, store, cost in ((fork, two, 0.2), (source, one, 0.1)):
        for tracker in (spender.budget_tracker, spender.workspace_budget_tracker):
            assert tracker is not None
            tracker.record_cost(cost)
        store.save(spender)
        store.save_workspace_of(spender)
    assert fork.budget_tracker.spent() == pytest.approx(0.5)
    assert source.budget_tracker.spent() == pytest.approx(0.4)
    budget = one.load_workspace_state(workspace).budget
    assert budget is not None and budget.total_spent_usd == pytest.approx(0.6)
    one.close()
    two.close()
