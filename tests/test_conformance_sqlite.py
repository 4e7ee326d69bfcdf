"""The storage contract, checked on the SQLite backend (reopened over the same file)."""

from __future__ import annotations

from pathlib import Path

from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.testing import StorageConformance


class TestSqliteBackend(StorageConformance):
    def make_backend(self, tmp_path: Path) -> SqliteBackend:
        return SqliteBackend(tmp_path / "astrid.db")

    def reopen_backend(self, backend: object, tmp_path: Path) -> SqliteBackend:
        return SqliteBackend(tmp_path / "astrid.db")
