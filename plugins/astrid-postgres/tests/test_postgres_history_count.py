"""``count_history``: the history counted in SQL, as ``SessionStore.history_count`` reads it."""

from __future__ import annotations

from astrid.messages import Message
from astrid.store import HistoryCounter, SessionStore

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.testing import TemporaryServer


def test_the_history_is_counted_in_sql(pg_server: TemporaryServer, schema: str) -> None:
    backend = PostgresBackend(pg_server.dsn(), schema=schema)
    assert isinstance(backend, HistoryCounter)
    with SessionStore(backend) as store:
        session = store.new_session("p")
        for i in range(3):
            session.add_message(Message.user(f"old {i}"))
        store.save(session)
        session.clear_messages()
        session.add_message(Message.user("new"))
        store.save(session)
        sid = session.id.bare
        assert store.history_count(sid) == len(store.history_entries(sid)) == 4
        loaded = store.load(sid)
        assert loaded is not None and len(loaded.messages) == 1
        assert store.history_count("00000000-0000-4000-8000-000000000000") == 0
