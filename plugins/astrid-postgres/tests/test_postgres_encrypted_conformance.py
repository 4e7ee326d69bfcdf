"""The storage contract on the ``encrypted`` backend wrapping PostgreSQL (titles sealed too)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from astrid.default_plugins.encrypted_storage import EncryptedBackend
from astrid.store import StorageBackend
from astrid.testing import StorageConformance

from astrid_postgres.backend import PostgresBackend
from astrid_postgres.testing import TemporaryServer

KEY = bytes(range(32))


class TestEncryptedPostgresConformance(StorageConformance):
    """Each test gets its own schema; a reopen wraps a second backend over the same schema."""

    server: TemporaryServer

    @pytest.fixture(autouse=True)
    def _server(self, pg_server: TemporaryServer) -> None:
        self.server = pg_server

    def make_backend(self, tmp_path: Path) -> StorageBackend:
        inner = PostgresBackend(
            self.server.dsn(), schema=f"e_{uuid.uuid4().hex[:16]}", max_size=8
        )
        return EncryptedBackend(inner, KEY, encrypt_metadata=True)

    def reopen_backend(self, backend: StorageBackend, tmp_path: Path) -> StorageBackend:
        assert isinstance(backend, EncryptedBackend)
        inner = backend.inner
        assert isinstance(inner, PostgresBackend)
        again = PostgresBackend(self.server.dsn(), schema=inner.schema, max_size=8)
        return EncryptedBackend(again, KEY, encrypt_metadata=True)
