"""The spend ledger on PostgreSQL: the ``0006_ledger`` migration applied in place, rows stored
as exact ``numeric`` in the save's own transaction (a save whose rows fail stores nothing), and
the runtime's rows of a real turn against a real server."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import psycopg
from astrid.default_plugins.scripted_provider import ScriptedProvider
from astrid.ledger import KIND_SUBAGENT_TURN, KIND_TURN, compare_totals
from astrid.messages import Message
from astrid.runtime import AgentRuntime, RuntimeConfig
from astrid.security.approvals import ApprovalResponse, ApproveSession
from astrid.security.deferred import ApprovalRequest
from astrid.store import SessionStore
from astrid.testing.ledger_conformance import ledger_row
from psycopg import sql

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.schema import KNOWN
from astrid_postgres.testing import TemporaryServer


def _admin(server: TemporaryServer, *statements: sql.Composed) -> None:
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def test_the_ledger_migration_is_applied_in_place_to_an_older_schema(
    pg_server: TemporaryServer, schema: str
) -> None:
    with SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as store:
        old = store.new_session("from before the ledger")
        old.budget_tracker.record_cost(0.5)
        store.save(old)
    s = sql.Identifier(schema)
    _admin(  # the schema as astrid-postgres left it before 0006_ledger
        pg_server,
        sql.SQL("DROP TABLE {}.ledger").format(s),
        sql.SQL("DELETE FROM {}._astrid_migrations WHERE name = '0006_ledger'").format(s),
    )
    backend = PostgresBackend(pg_server.dsn(), schema=schema)
    with SessionStore(backend) as store:
        assert "0006_ledger" in [name for name, _ in backend.migrations()]
        assert store.schema_version() == len(KNOWN)
        assert store.list_ledger() == []  # the migration adds no rows
        loaded = store.load(old.id)
        assert loaded is not None
        row = ledger_row(loaded)
        loaded.changes.ledger.append(row)
        store.save(loaded)
        assert store.list_ledger() == [row]
        [check] = compare_totals({old.id.bare: (None, 0.5)}, {}, store.list_ledger())
        assert check.status == "differs"  # 0.5 spent before the ledger, 1e-7 since


def test_amounts_are_numeric_and_exact_in_the_table(
    pg_server: TemporaryServer, schema: str
) -> None:
    with SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as store:
        session = store.new_session("p")
        rows = [ledger_row(session, cost_usd=Decimal("0.1")) for _ in range(3)]
        session.changes.ledger.extend(rows)
        store.save(session)
    with psycopg.connect(pg_server.dsn()) as conn:
        found = conn.execute(
            sql.SQL("SELECT sum(cost_usd), pg_typeof(cost_usd)::text FROM {}.ledger "
                    "GROUP BY 2").format(sql.Identifier(schema))
        ).fetchone()
    assert found == (Decimal("0.3"), "numeric")


def test_rows_whose_text_a_text_column_cannot_hold_are_stored_and_read_back_exactly(
    pg_server: TemporaryServer, schema: str
) -> None:
    with SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as store:
        session = store.new_session("p")
        store.save(session)
        session.add_message(Message.user("one more"))
        rows = [
            ledger_row(session, model="bad\x00model"),  # text holds no NUL: escaped
            ledger_row(session, model="\\nul:looks escaped\\0"),  # the mark itself: escaped
            ledger_row(session, model="plain \\ backslash"),  # stored as it is
        ]
        session.changes.ledger.extend(rows)
        store.save(session)
        stored = store.load(session.id)
        assert stored is not None and len(stored.messages) == 1
        assert sorted(r.model for r in store.list_ledger()) == sorted(r.model for r in rows)
    with psycopg.connect(pg_server.dsn()) as conn:
        raw = conn.execute(
            sql.SQL("SELECT model FROM {}.ledger ORDER BY model").format(sql.Identifier(schema))
        ).fetchall()
    assert sorted(m for (m,) in raw) == sorted(
        ["\\nul:bad\\0model", "\\nul:\\\\nul:looks escaped\\\\0", "plain \\ backslash"]
    )


class _Approve:
    async def request_approval(self, request: ApprovalRequest) -> ApprovalResponse | None:
        return ApprovalResponse.new(request.id, ApproveSession())

    def is_available(self) -> bool:
        return True


def test_a_turn_with_a_sub_agent_stores_its_rows_on_the_server(
    pg_server: TemporaryServer, schema: str, tmp_path: Path
) -> None:
    script = [
        [
            {"tool_call": {"id": "t1", "name": "task",
                           "arguments": {"description": "count", "prompt": "count to 3"}}},
            {"usage": {"input_tokens": 100, "output_tokens": 10}},
        ],
        [{"text": "1, 2, 3"}, {"usage": {"input_tokens": 50, "output_tokens": 5}}],
        [{"text": "Done."}, {"usage": {"input_tokens": 200, "output_tokens": 8}}],
    ]
    with SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as store:
        runtime = AgentRuntime(
            ScriptedProvider(script), store=store,
            config=RuntimeConfig(workspace=tmp_path), approval_handler=_Approve(),
        )
        session = runtime.create_session()
        asyncio.run(runtime.run_turn(session, "delegate"))
        rows = store.list_ledger()
        assert [r.kind for r in rows] == [KIND_TURN, KIND_SUBAGENT_TURN, KIND_TURN]
        assert rows[1].parent_session_id == session.id.bare
        totals = {}
        for summary in store.list_sessions():
            loaded = store.load(summary.id)
            assert loaded is not None
            parent = loaded.parent_id.bare if loaded.parent_id else None
            totals[summary.id] = (parent, loaded.budget_tracker.spent())
        [check] = compare_totals(totals, {}, rows)
        assert check.status == "ok" and check.rows == 3
