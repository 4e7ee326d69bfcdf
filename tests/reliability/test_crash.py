"""Crash safety: writers killed with SIGKILL at random moments lose no acknowledged save.

A writer subprocess (``writer.py crash``) appends a message and saves in a loop, printing
``saved <n>`` after each ``save`` returned. The test kills it with SIGKILL at random moments
(during start-up, between saves, inside a save, inside a summarization) and after every kill
checks the store:

* it opens cleanly (SQLite: ``PRAGMA integrity_check`` is ``ok``; file: no problem files);
* the active messages are exactly ``m0 .. mk`` in order (after a summary: a contiguous run
  ending in ``mk``), every body byte-identical to what was written (no torn message), with
  ``k`` the last acknowledged save or the one in flight (``k in {durable, durable + 1}``);
* every message ever stored is still in ``history`` (summaries never lose one);
* the next writer loads the session and continues from ``k + 1``.

The same is done while ``astrid migrate`` copies a store to the other backend (sqlite -> file and
file -> sqlite): the source is never changed, the target always opens, every session in it is
a complete copy (same active messages, same history), and a migrate run to completion afterwards
leaves the target equal to the source.

The ``memory`` backend is not crash-tested: it persists nothing, so a killed process leaves
nothing behind to check (its behaviour within a process is covered by the conformance suite).
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from astrid.config import load_config
from astrid.context import ContextManager, is_summary_message
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.sqlite_storage import MIGRATIONS, SqliteBackend
from astrid.document import SessionDocument
from astrid.messages import Message
from astrid.security.actions import Permission
from astrid.security.allowances import Allowance, FilePattern
from astrid.security.budget import WorkspaceBudgetSnapshot
from astrid.security.capabilities import AuditEntryId, CapabilityToken, ResourcePattern, TokenScope
from astrid.security.crypto import KeyPair
from astrid.security.escape import EscapeState
from astrid.store import SessionStore, WorkspaceState, open_store
from astrid.timeutil import utcnow

from .harness import Child, sqlite_integrity
from .writer import body_of, number_of, open_backend

KILLS = 20
"""SIGKILLs per backend and scenario in the default run (the ``slow`` variants do more)."""

SLOW_KILLS = 40
SLOW_MIGRATE_KILLS = 30


@dataclass
class KillRecord:
    """What a kill loop did (for the assertions at the end of a test)."""

    kills: int = 0
    early_kills: int = 0
    durable: int = -1
    summaries_seen: int = 0
    kills_inside_summaries: int = 0


def _location(backend: str, root: Path) -> Path:
    return root / "astrid.db" if backend == "sqlite" else root / "sessions"


def check_store(
    backend: str,
    location: Path,
    sid: str,
    durable: int,
    summarizing: bool,
    allowances: bool = False,
) -> int:
    """Check the store after a kill; return the number of the last stored message (-1: none).

    ``allowances``: the session allowances are exactly ``t0 .. t<last>`` (saved with the
    messages, in one write).
    """
    if backend == "sqlite" and location.exists():
        assert sqlite_integrity(location) == "ok"
    store = SessionStore(open_backend(backend, str(location)))
    try:
        if isinstance(store.backend, SqliteBackend):
            assert store.backend.schema_version() == len(MIGRATIONS)
        if isinstance(store.backend, FileBackend):
            assert store.backend.problems() == []
            path = location / f"{sid}.json"
            if path.exists():  # the document on disk parses as a whole
                SessionDocument.from_json_text(path.read_bytes(), source=str(path))
        listing = store.list_sessions()
        session = store.load(sid)
        if session is None:
            assert durable < 0, f"an acknowledged save up to m{durable} is gone"
            assert listing == []
            return -1
        assert [(r.id, r.message_count) for r in listing] == [(sid, len(session.messages))]
        messages = list(session.messages)
        if messages and is_summary_message(messages[0]):
            assert summarizing, "a summary appeared in a run without summarization"
            messages = messages[1:]
        numbers: list[int] = []
        for message in messages:
            n = number_of(message.text())
            assert n is not None, f"unexpected message {message.to_json()!r:.200}"
            assert message.text() == body_of(n), f"message m{n} is torn"
            numbers.append(n)
        if numbers:
            start = numbers[0] if summarizing else 0
            assert numbers == list(range(start, start + len(numbers))), numbers
        last = numbers[-1] if numbers else -1
        assert durable <= last <= durable + 1, (durable, last)
        history = store.history(sid)
        ever = set()
        for message in history:
            if is_summary_message(message):
                continue
            n = number_of(message.text())
            assert n is not None and message.text() == body_of(n)
            ever.add(n)
        assert ever == set(range(last + 1)), "a message stored earlier is missing from history"
        active = [h.message for h in store.backend.history(sid) if h.active]
        assert active == [m.to_json() for m in session.messages]
        if allowances:
            tools = [
                getattr(a.action_pattern, "tool", None)
                for a in session.allowance_store.export_session_allowances()
            ]
            assert tools == [f"t{i}" for i in range(last + 1)], "state and messages diverged"
        return last
    finally:
        store.close()


def kill_loop(
    backend: str,
    location: Path,
    kills: int,
    rng: random.Random,
    summarize_every: int = 0,
    allowances: bool = False,
    sid: str | None = None,
    durable: int = -1,
) -> KillRecord:
    """Start writers and SIGKILL them ``kills`` times; check the store after every kill.

    ``sid``/``durable``: continue a session whose messages up to ``durable`` are stored.
    """
    sid = sid or str(uuid.UUID(int=rng.getrandbits(128), version=4))
    extra = ["--summarize-every", str(summarize_every)] if summarize_every else []
    if allowances:
        extra.append("--allowances")
    record = KillRecord(durable=durable)
    while record.kills < kills:
        child = Child.writer("crash", backend, str(location), sid, *extra)
        roll = rng.random()
        if roll < 0.2:
            # Anywhere from interpreter start-up to the first saves (opening, schema set-up).
            time.sleep(rng.uniform(0.0, 0.45))
            record.early_kills += 1
        elif summarize_every and roll < 0.6:
            # Inside a summarization: its two saves and the summary between them.
            if not child.wait_for("summarizing", rng.randint(1, 2)):
                child.finish()
                pytest.fail(f"the writer exited on its own: {child.stderr}")
            time.sleep(rng.uniform(0.0, 0.004))
        else:
            if not child.wait_for("saved ", rng.randint(1, 8)):
                child.finish()
                pytest.fail(f"the writer exited on its own: {child.stderr}")
            time.sleep(rng.uniform(0.0, 0.012))
        assert child.kill(), f"the writer died on its own: {child.stderr}"
        assert child.stderr == "", child.stderr
        for line in child.lines:
            if line.startswith("saved "):
                record.durable = max(record.durable, int(line.split()[1]))
            record.summaries_seen += line == "summarized"
        if "summarizing" in child.lines[-1:]:
            record.kills_inside_summaries += 1
        record.kills += 1
        record.durable = check_store(
            backend, location, sid, record.durable, bool(summarize_every), allowances
        )
    # A writer that is left alone continues exactly where the last one stopped.
    child = Child.writer("crash", backend, str(location), sid, "--count", "3", *extra)
    assert child.finish() == 0, child.stderr
    saved = [int(line.split()[1]) for line in child.lines if line.startswith("saved ")]
    assert saved == [record.durable + 1, record.durable + 2, record.durable + 3]
    record.durable = check_store(
        backend, location, sid, record.durable + 3, bool(summarize_every), allowances
    )
    return record


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_sigkill_during_saves_loses_no_acknowledged_save(backend: str, tmp_path: Path) -> None:
    record = kill_loop(backend, _location(backend, tmp_path), KILLS, random.Random(f"s-{backend}"))
    assert record.kills >= KILLS
    assert record.durable >= KILLS  # the writers made progress across the kills


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_sigkill_during_saves_keeps_many_allowances_in_step(backend: str, tmp_path: Path) -> None:
    """Each save adds an allowance too; past 64 of them SQLite saves deltas of keyed rows."""
    location = _location(backend, tmp_path)
    sid = str(uuid.uuid4())
    # Past 64 allowances first, so the kills land in keyed (delta) saves.
    child = Child.writer("crash", backend, str(location), sid, "--count", "70", "--allowances")
    assert child.finish() == 0, child.stderr
    check_store(backend, location, sid, 69, False, allowances=True)
    if backend == "sqlite":
        with sqlite3.connect(location) as raw:
            assert raw.execute("SELECT keyed FROM sessions").fetchall() == [(1,)]
        raw.close()
    rng = random.Random(f"a-{backend}")
    record = kill_loop(backend, location, KILLS, rng, allowances=True, sid=sid, durable=69)
    assert record.kills >= KILLS
    assert record.durable >= 69 + KILLS  # the writers made progress across the kills


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_sigkill_during_summarization_loses_no_message(backend: str, tmp_path: Path) -> None:
    location = _location(backend, tmp_path)
    record = kill_loop(backend, location, KILLS, random.Random(f"z-{backend}"), summarize_every=3)
    assert record.kills >= KILLS
    assert record.summaries_seen > 0
    assert record.kills_inside_summaries > 0
    store = SessionStore(open_backend(backend, str(location)))
    try:
        [row] = store.list_sessions()
        session = store.load(row.id)
        assert session is not None and is_summary_message(session.messages[0])
    finally:
        store.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "file"])
@pytest.mark.parametrize("summarize_every", [0, 2])
def test_many_sigkills(backend: str, summarize_every: int, tmp_path: Path) -> None:
    rng = random.Random(f"slow-{backend}-{summarize_every}")
    record = kill_loop(backend, _location(backend, tmp_path), SLOW_KILLS, rng, summarize_every)
    assert record.kills >= SLOW_KILLS


# -- workspace state killed midway ---------------------------------------------------------------


def check_workspace(backend: str, location: Path, workspace: Path, durable: int) -> int:
    """The stored workspace state after a kill: allowances ``t0 .. tk`` and a spend of ``k + 1``.

    ``k`` is the last acknowledged save or the one in flight; returns it (-1: nothing stored).
    """
    if backend == "sqlite" and location.exists():
        assert sqlite_integrity(location) == "ok"
    store = SessionStore(open_backend(backend, str(location)))
    try:
        state = store.load_workspace_state(workspace)
        tools = [getattr(a.action_pattern, "tool", None) for a in state.allowances]
        last = len(tools) - 1
        assert tools == [f"t{i}" for i in range(last + 1)], tools
        assert durable <= last <= durable + 1, (durable, last)
        spent = state.budget.total_spent_usd if state.budget is not None else 0.0
        assert spent == last + 1, f"allowances of save {last} with the spend of {spent:g} saves"
        return last
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_sigkill_during_workspace_saves_keeps_allowances_and_spend_in_step(
    backend: str, tmp_path: Path
) -> None:
    """Issue 14 item 2: the allowances, the budget and the escape paths are one atomic write."""
    location = _location(backend, tmp_path)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    rng = random.Random(f"w-{backend}")
    durable = -1
    for _ in range(KILLS):
        child = Child.writer("wscrash", backend, str(location), str(workspace))
        if not child.wait_for("saved ", rng.randint(1, 6)):
            child.finish()
            pytest.fail(f"the writer exited on its own: {child.stderr}")
        time.sleep(rng.uniform(0.0, 0.01))
        assert child.kill(), f"the writer died on its own: {child.stderr}"
        assert child.stderr == "", child.stderr
        for line in child.lines:
            if line.startswith("saved "):
                durable = max(durable, int(line.split()[1]))
        durable = check_workspace(backend, location, workspace, durable)
    child = Child.writer("wscrash", backend, str(location), str(workspace), "--count", "2")
    assert child.finish() == 0, child.stderr
    saved = [int(line.split()[1]) for line in child.lines if line.startswith("saved ")]
    assert saved == [durable + 1, durable + 2]
    assert check_workspace(backend, location, workspace, durable + 2) == durable + 2
    assert durable >= KILLS  # the writers made progress across the kills


# -- a migration killed midway ------------------------------------------------------------------

N_SESSIONS = 36
_SESSION_FILE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.json")


def _config(root: Path, backend: str) -> Path:
    """A config file naming a store of ``backend`` and a capability store under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    if backend == "sqlite":
        storage = f'[storage]\nbackend = "sqlite"\n[storage.options]\npath = "{root}/astrid.db"\n'
        caps = f'[capabilities]\nstore = "sqlite"\n[capabilities.options]\npath = "{root}/c.db"\n'
    else:
        storage = f'[storage]\nbackend = "file"\n[storage.options]\ndirectory = "{root}/sessions"\n'
        caps = (
            f'[capabilities]\nstore = "file"\n[capabilities.options]\ndirectory = "{root}/caps"\n'
        )
    path = root / "config.toml"
    path.write_text(storage + caps + '[git]\ncapture = "none"\n', encoding="utf-8")
    return path


def _fill_source(config: Path, workspaces: list[Path], rng: random.Random) -> None:
    """Sessions (a third summarized, so they have history), workspace state and tokens."""
    store = open_store(load_config(config))
    manager = ContextManager(keep_recent=2)
    try:
        for i in range(N_SESSIONS):
            session = store.new_session(f"prompt {i}")
            session.metadata.title = f"session {i}"
            session.with_workspace(workspaces[i % len(workspaces)])
            for n in range(rng.randint(3, 12)):
                session.add_message(Message.user(body_of(1000 * i + n)))
            store.save(session)
            if i % 3 == 0:
                asyncio.run(manager.summarize(session, store=store))
                session.add_message(Message.assistant(f"after the summary of {i}"))
                store.save(session)
        for index, ws in enumerate(workspaces):
            store.save_workspace_state(
                ws,
                WorkspaceState(
                    allowances=[
                        Allowance.create(
                            FilePattern(pattern=f"{ws}/**", permission=Permission.READ),
                            session_only=False,
                            workspace_root=ws,
                        )
                    ],
                    budget=WorkspaceBudgetSnapshot(
                        total_spent_usd=1.5 + index, last_updated=utcnow()
                    ),
                    escape=EscapeState(remembered_paths=[str(ws)]),
                ),
            )
        assert store.capabilities is not None
        key = KeyPair.generate()
        for n in range(3):
            token = CapabilityToken.create(
                ResourcePattern.new(f"mcp://server{n}:*"),
                [Permission.INVOKE],
                TokenScope.PERSISTENT,
                bytes(8),
                AuditEntryId.new(),
                key,
            )
            store.capabilities.add(token)
            if n == 0:
                store.capabilities.revoke(token.id)
    finally:
        store.close()


def _snapshot(config: Path, workspaces: list[Path]) -> dict[str, Any]:
    """Everything a migration must carry over, in comparable form."""
    store = open_store(load_config(config))
    try:
        sessions: dict[str, Any] = {}
        for row in store.list_sessions(limit=1000):
            record = store.backend.load(row.id)
            assert record is not None
            sessions[row.id] = (
                record.state,
                record.messages,
                [(h.active, h.message) for h in store.backend.history(row.id)],
            )
        workspace = {str(ws): store.load_workspace_state(ws) for ws in workspaces}
        caps = store.capabilities.backend if store.capabilities is not None else None
        assert caps is not None
        tokens = (sorted(caps.list_tokens()), caps.revoked_ids(), caps.used_ids())
        return {"sessions": sessions, "workspace": workspace, "tokens": tokens}
    finally:
        store.close()


def _target_count(backend: str, root: Path) -> int:
    """How many sessions the target holds right now (read without opening a store)."""
    if backend == "file":
        try:
            return sum(1 for p in (root / "sessions").iterdir() if _SESSION_FILE.fullmatch(p.name))
        except FileNotFoundError:
            return 0
    db = root / "astrid.db"
    if not db.exists() or db.stat().st_size == 0:
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            return int(conn.execute("SELECT count(*) FROM sessions").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def _check_partial_target(config: Path, source: dict[str, Any], backend: str, root: Path) -> int:
    """The target after a kill: it opens, and every session in it is a complete copy.

    "Complete" means the same active messages and the same history as in the source: a
    session caught between the writes of its copy must not be visible as a different one.
    Returns how many sessions the target holds.
    """
    if backend == "sqlite" and (root / "astrid.db").exists():
        assert sqlite_integrity(root / "astrid.db") == "ok"
    store = open_store(load_config(config))
    try:
        problems = getattr(store.backend, "problems", None)
        assert not callable(problems) or problems() == []
        rows = store.list_sessions(limit=1000)
        for row in rows:
            assert row.id in source["sessions"], f"unknown session {row.id} in the target"
            session = store.load(row.id)
            assert session is not None
            _state, active, history = source["sessions"][row.id]
            got = [m.to_json() for m in session.messages]
            got_history = [(h.active, h.message) for h in store.backend.history(row.id)]
            archived = [m for is_active, m in history if not is_active]
            assert not (archived and got == archived), (
                f"session {row.id}: a kill between the two writes of its copy left its "
                f"{len(archived)} replaced messages visible as its active messages"
            )
            assert got == active, f"session {row.id}: the target holds other messages"
            assert got_history == history, f"session {row.id}: the target's history differs"
        return len(rows)
    finally:
        store.close()


def _migrate(src: Path, dst: Path, home: Path) -> Child:
    return Child(
        [sys.executable, "-m", "astrid.cli", "migrate", "--from", str(src), "--to", str(dst)],
        home=home,
    )


def _migration_kill_loop(
    tmp_path: Path, source_backend: str, target_backend: str, kills: int, seed: str
) -> tuple[int, int]:
    rng = random.Random(seed)
    workspaces = [tmp_path / "ws-a", tmp_path / "ws-b"]
    for ws in workspaces:
        ws.mkdir()
    home = tmp_path / "home"
    src = _config(tmp_path / "src", source_backend)
    dst_root = tmp_path / "dst"
    dst = _config(dst_root, target_backend)
    _fill_source(src, workspaces, rng)
    before = _snapshot(src, workspaces)
    assert len(before["sessions"]) == N_SESSIONS

    def reset_target() -> None:
        for item in dst_root.iterdir():
            if item != dst:
                shutil.rmtree(item) if item.is_dir() else item.unlink()

    killed = completed = 0
    while killed < kills:
        present = _target_count(target_backend, dst_root)
        child = _migrate(src, dst, home)
        goal = rng.randint(present + 1, N_SESSIONS) if present < N_SESSIONS else N_SESSIONS + 1
        while child.proc.poll() is None and _target_count(target_backend, dst_root) < goal:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.02))
        if child.kill():
            killed += 1
            _check_partial_target(dst, before, target_backend, dst_root)
        else:
            assert child.proc.returncode == 0, child.stderr
            assert any(line.startswith("verified:") for line in child.lines), child.lines
            assert _snapshot(dst, workspaces) == before
            completed += 1
            reset_target()
        assert _snapshot(src, workspaces) == before, "the migration changed its source"
    # Resume once more, to completion: the target is then equal to the source.
    child = _migrate(src, dst, home)
    assert child.finish() == 0, child.stderr
    assert _snapshot(dst, workspaces) == before
    assert _snapshot(src, workspaces) == before
    return killed, completed


DIRECTIONS = [("sqlite", "file"), ("file", "sqlite")]


@pytest.mark.parametrize(("source", "target"), DIRECTIONS)
def test_sigkill_during_migrate_never_damages_either_store(
    source: str, target: str, tmp_path: Path
) -> None:
    killed, _completed = _migration_kill_loop(
        tmp_path, source, target, KILLS, f"m-{source}-{target}"
    )
    assert killed >= KILLS


@pytest.mark.slow
@pytest.mark.parametrize(("source", "target"), DIRECTIONS)
def test_many_sigkills_during_migrate(source: str, target: str, tmp_path: Path) -> None:
    killed, _completed = _migration_kill_loop(
        tmp_path, source, target, SLOW_MIGRATE_KILLS, f"slow-m-{source}-{target}"
    )
    assert killed >= SLOW_MIGRATE_KILLS
