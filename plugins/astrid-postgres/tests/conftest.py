"""Fixtures: one throwaway PostgreSQL server for the whole run, and a fresh schema per test.

The server is created with ``astrid_postgres.testing.TemporaryServer`` (a cluster in a temporary
directory, 127.0.0.1, a free port) and stopped at the end even when tests fail. When no server
can be started the tests skip with the reason, except under ``CI`` where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from astrid_postgres.testing import LoginRole, ServerUnavailable, TemporaryServer


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TemporaryServer]:
    """A running throwaway server; skipped (failed under ``CI``) if none can be started."""
    server = TemporaryServer()
    try:
        server.start()
    except ServerUnavailable as exc:
        message = f"the PostgreSQL tests need a server they can start: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def schema() -> str:
    """A schema name no other test uses."""
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture(scope="session")
def owner_role(pg_server: TemporaryServer) -> LoginRole:
    """The role that owns astrid's schema and applies migrations."""
    return pg_server.create_role("astrid_owner")


@pytest.fixture(scope="session")
def app_role(pg_server: TemporaryServer) -> LoginRole:
    """The application role: SELECT, INSERT, UPDATE, DELETE only."""
    return pg_server.create_role("astrid_app")
