"""Session forks and the ``encrypted`` backend on a real PostgreSQL server: a fork's link and
its state as of the fork point survive a second backend over the schema; sealed sessions hold
no message text in the tables."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import psycopg
from astrid.default_plugins.encrypted_storage import EncryptedBackend
from astrid.forks import fork_of
from astrid.ledger import KIND_TURN, LedgerRow, new_row_id
from astrid.messages import Message
from astrid.store import SessionStore
from astrid.timeutil import utcnow
from psycopg import sql

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.testing import TemporaryServer


def test_a_fork_round_trips_with_the_spend_as_of_its_point(
    pg_server: TemporaryServer, schema: str
) -> None:
    start = utcnow() - timedelta(minutes=1)
    with SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as store:
        session = store.new_session("p")
        for i, cost in enumerate(("0.10", "0.25")):
            session.add_message(Message.user(f"q{i}"))
            session.add_message(Message.assistant(f"a{i}"))
            session.changes.ledger.append(LedgerRow(
                id=new_row_id(), session_id=session.id.bare, parent_session_id=None,
                workspace=None, workspace_charged=False, model="m", provider="scripted",
                kind=KIND_TURN, input_tokens=1, output_tokens=1, cache_read_tokens=0,
                cache_write_tokens=0, reasoning_tokens=0, usage_reported=True,
                reserved_usd=Decimal(cost), cost_usd=Decimal(cost),
                at=start + timedelta(seconds=10 * (i + 1)),
            ))
        session.budget_tracker.record_cost(0.35)
        store.save(session)
        fork = store.fork(session.id, at=2)
    with SessionStore(PostgresBackend(pg_server.dsn(), schema=schema)) as again:
        loaded = again.load(fork.id)
        assert loaded is not None
        assert [m.text() for m in loaded.messages] == ["q0", "a0"]
        assert fork_of(loaded.metadata) == (session.id.bare, 2)
        assert abs(loaded.budget_tracker.spent() - 0.10) < 1e-9


def test_encrypted_over_postgres_stores_no_message_text(
    pg_server: TemporaryServer, schema: str
) -> None:
    key = bytes(range(32))
    with SessionStore(EncryptedBackend(PostgresBackend(pg_server.dsn(), schema=schema), key,
                                       encrypt_metadata=True)) as store:
        session = store.new_session("p")
        session.metadata.title = "the zebra plan"
        session.add_message(Message.user("the launch code is zebra-4417"))
        store.save(session)
        loaded = store.load(session.id)
        assert loaded is not None and loaded.messages[0].text() == "the launch code is zebra-4417"
    with psycopg.connect(pg_server.dsn()) as conn:
        dumped = "".join(
            str(row)
            for table in ("sessions", "messages")
            for row in conn.execute(sql.SQL("SELECT * FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)
            )).fetchall()
        )
    assert session.id.bare in dumped and "zebra" not in dumped
