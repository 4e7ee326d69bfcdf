"""The storage contract (``astrid.testing``) against a real PostgreSQL server, unchanged."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from astrid.plugins import PluginContext, get_implementation
from astrid.store import StorageBackend
from astrid.testing import StorageConformance

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.testing import TemporaryServer


class TestPostgresConformance(StorageConformance):
    """Each test gets its own schema; a reopen is a second backend over the same schema."""

    server: TemporaryServer

    @pytest.fixture(autouse=True)
    def _server(self, pg_server: TemporaryServer) -> None:
        self.server = pg_server

    def make_backend(self, tmp_path: Path) -> StorageBackend:
        """A fresh schema, built through the plugin registration as a host would."""
        backend = get_implementation("storage", "postgres").create(
            {"dsn": self.server.dsn(), "schema": f"c_{uuid.uuid4().hex[:16]}", "max_size": 8},
            PluginContext(home=tmp_path),
        )
        assert isinstance(backend, PostgresBackend)
        return backend

    def reopen_backend(self, backend: StorageBackend, tmp_path: Path) -> StorageBackend:
        """Another backend (another pool) over the same schema: a restart or a second host."""
        assert isinstance(backend, PostgresBackend)
        return PostgresBackend(self.server.dsn(), schema=backend.schema, max_size=8)
