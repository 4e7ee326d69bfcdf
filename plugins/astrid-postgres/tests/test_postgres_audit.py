"""The audit log on PostgreSQL: decisions of the real runtime stored in the save's transaction,
tampering caught by ``verify``, and processes writing to one workspace keep one valid chain."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psycopg
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.runtime import AgentRuntime, RuntimeConfig
from astrid.security.approvals import ApprovalResponse, ApproveSession
from astrid.security.audit import verify
from astrid.security.crypto import KeyPair
from astrid.security.deferred import ApprovalRequest
from astrid.store import SessionStore
from psycopg import sql
from test_postgres_processes import run_together

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.testing import TemporaryServer


class Approve:
    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        return ApprovalResponse.new(request.id, ApproveSession())

    def is_available(self) -> bool:
        return True


def test_runtime_decisions_are_chained_signed_and_tampering_is_named(
    pg_server: TemporaryServer, schema: str, tmp_path: Path
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "notes.txt").write_text("milk\n")
    key = KeyPair.generate()
    store = SessionStore(PostgresBackend(pg_server.dsn(), schema=schema))
    try:
        call = {"tool_call": {"id": "c1", "name": "read_file", "arguments": {"path": "notes.txt"}}}
        runtime = AgentRuntime(
            ScriptedProvider([[call], [{"text": "milk"}]]),
            store=store,
            config=RuntimeConfig(workspace=ws),
            approval_handler=Approve(),
            keypair=key,
        )
        session = runtime.create_session()
        store.attach_workspace(session, ws)
        asyncio.run(runtime.run_turn(session, "notes?"))
        records = store.list_audit(session_id=session.id)
        kinds = [(r.data["action_type"], r.data["decision"]) for r in records]
        assert ("file_read", "allowed") in kinds and ("budget_settlement", "settled") in kinds
        assert [r.seq for r in records] == list(range(1, len(records) + 1))
        assert verify(records, [key.public_key_base64]) == []
        with psycopg.connect(pg_server.dsn()) as conn:
            conn.execute(
                sql.SQL("DELETE FROM {}.audit WHERE seq = 2").format(sql.Identifier(schema))
            )
        [problem] = verify(store.list_audit(), [key.public_key_base64])
        assert problem.seq == 2 and "removed" in problem.problem
    finally:
        store.close()


def test_processes_writing_to_one_workspace_keep_one_valid_chain(
    pg_server: TemporaryServer, schema: str, tmp_path: Path
) -> None:
    key = KeyPair.generate()
    ws = str(tmp_path / "ws")
    PostgresBackend(pg_server.dsn(), schema=schema).close()  # migrate once
    results = run_together(
        [["audit", pg_server.dsn(), schema, ws, "15", key.private_bytes().hex()]] * 3
    )
    store = SessionStore(PostgresBackend(pg_server.dsn(), schema=schema))
    try:
        records = store.list_audit()
    finally:
        store.close()
    assert {r.session_id for r in records} == {r["session"] for r in results}
    assert [r.seq for r in records] == list(range(1, 46))
    assert verify(records, [key.public_key_base64]) == []
