"""The storage contract, checked on the file backend (reopened over the same directory)."""

from __future__ import annotations

from pathlib import Path

from astrid.default_plugins.file_storage import FileBackend
from astrid.testing import StorageConformance


class TestFileBackend(StorageConformance):
    def make_backend(self, tmp_path: Path) -> FileBackend:
        return FileBackend(tmp_path / "sessions")

    def reopen_backend(self, backend: object, tmp_path: Path) -> FileBackend:
        return FileBackend(tmp_path / "sessions")
