"""Fixtures: a factory of astrid stores on each backend, PostgreSQL included.

The PostgreSQL server is the postgres plugin's own session fixture (``pg_server``, a real
throwaway server on 127.0.0.1), reused from its conftest rather than copied.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.store import SessionStore

_PG_CONFTEST = Path(__file__).parents[2] / "astrid-postgres" / "tests" / "conftest.py"
_spec = importlib.util.spec_from_file_location("astrid_postgres_test_fixtures", _PG_CONFTEST)
assert _spec is not None and _spec.loader is not None
_pg_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pg_fixtures)
pg_server = _pg_fixtures.pg_server

BACKENDS = ("memory", "file", "sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], SessionStore]]:
    """``make_store()``: a new, empty astrid store on the parametrized backend each call
    (closed at the end of the test)."""
    opened: list[SessionStore] = []
    kind: str = request.param
    dsn = request.getfixturevalue("pg_server").dsn() if kind == "postgres" else None

    def make() -> SessionStore:
        where = tmp_path / f"s{len(opened)}"
        if kind == "memory":
            backend = MemoryBackend()
        elif kind == "file":
            backend = FileBackend(where / "sessions")
        elif kind == "sqlite":
            where.mkdir()
            backend = SqliteBackend(where / "astrid.db")
        else:
            from astrid_postgres.backend import PostgresBackend

            backend = PostgresBackend(dsn, schema=f"c_{uuid.uuid4().hex[:16]}", max_size=4)
        store = SessionStore(backend)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
