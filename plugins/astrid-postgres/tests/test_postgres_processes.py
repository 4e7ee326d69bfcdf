"""Several processes at once: appends and saves to one session, migrations on one schema, uses
of one single-use capability token, charges to one workspace budget."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg
from astrid.messages import Message
from astrid.security.actions import Permission
from astrid.security.capabilities import (
    AuditEntryId,
    CapabilityStore,
    ResourcePattern,
    TokenBuilder,
)
from astrid.security.crypto import KeyPair
from astrid.store import SessionStore
from psycopg import sql

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.capabilities import PostgresCapabilityBackend
from astrid_postgres.schema import KNOWN
from astrid_postgres.testing import TemporaryServer

WORKER = Path(__file__).with_name("_pg_worker.py")


def run_together(commands: Sequence[Sequence[str]], timeout: float = 90) -> list[dict[str, Any]]:
    """Start every worker, wait until all are connected, release them at once, collect output."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in commands
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", (line, proc.stderr.read() if proc.stderr else "")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_processes_appending_and_saving_to_one_session_lose_and_duplicate_nothing(
    pg_server: TemporaryServer, schema: str
) -> None:
    count = 200
    writers = {"a1": "append", "a2": "append", "a3": "append", "s1": "save", "s2": "save"}
    with SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as store:
        session = store.new_session("shared")
        session.add_message(Message.user("start"))
        first = store.save(session)
        sid = session.id.bare

        results = run_together(
            [
                [mode, pg_server.dsn(), schema, sid, name, str(count)]
                for name, mode in writers.items()
            ]
        )

        loaded = store.load(sid)
        assert loaded is not None
        texts = [m.text() or "" for m in loaded.messages]
        assert texts[0] == "start"
        assert len(texts) == 1 + count * len(writers)
        assert len(set(texts)) == len(texts), "a message was stored twice"
        for name in writers:
            mine = [t for t in texts if t.startswith(f"{name}:")]
            assert mine == [f"{name}:{i}" for i in range(count)], f"{name}: lost or reordered"
        history = store.history(sid)
        assert [m.text() for m in history] == texts
        # Every append and every successful save bumped the revision exactly once.
        assert store.revision_of(loaded) == first + count * len(writers)
        [summary] = store.list_sessions()
        assert summary.message_count == len(texts)
        retries = sum(r["retries"] for r in results)
        print(f"save retries on ConcurrencyError: {retries}")


def test_processes_migrating_one_schema_at_once_apply_each_migration_once(
    pg_server: TemporaryServer, schema: str
) -> None:
    results = run_together([["open", pg_server.dsn(), schema] for _ in range(4)])
    assert [r["version"] for r in results] == [len(KNOWN)] * 4
    with psycopg.connect(pg_server.dsn()) as conn:
        rows = conn.execute(
            sql.SQL("SELECT name FROM {}._astrid_migrations ORDER BY name").format(
                sql.Identifier(schema)
            )
        ).fetchall()
    assert [r[0] for r in rows] == list(KNOWN)


def test_processes_racing_to_use_one_single_use_token_let_exactly_one_use_it(
    pg_server: TemporaryServer, schema: str
) -> None:
    key = KeyPair.generate()
    token = (
        TokenBuilder(ResourcePattern.new("mcp://server:tool"))
        .permission(Permission.INVOKE)
        .persistent()
        .single_use()
        .build(key.key_id, AuditEntryId.new(), key)
    )
    with PostgresCapabilityBackend(pg_server.dsn(), schema=schema) as backend:
        CapabilityStore(backend).add(token)
        results = run_together([["use", pg_server.dsn(), schema, str(token.id)] for _ in range(5)])
        assert sorted(r["used"] for r in results) == [False, False, False, False, True]
        assert backend.used_ids() == {str(token.id)}


def test_processes_charging_one_workspace_add_up_exactly(
    pg_server: TemporaryServer, schema: str, tmp_path: Path
) -> None:
    """Each save adds what its process charged (issue 14 item 1): the stored total is the sum."""
    workspace, writers, saves = str(tmp_path / "ws"), 4, 25
    results = run_together(
        [["spend", pg_server.dsn(), schema, workspace, str(saves)] for _ in range(writers)]
    )
    seen = [r["spent"] for r in results]
    assert all(saves * 0.25 <= spent <= writers * saves * 0.25 for spent in seen)
    assert max(seen) == writers * saves * 0.25  # the last save saw every process's spend
    store = SessionStore(PostgresBackend(pg_server.dsn(), schema=schema))
    try:
        budget = store.load_workspace_state(workspace).budget
        assert budget is not None
        assert budget.total_spent_usd == writers * saves * 0.25
    finally:
        store.close()
