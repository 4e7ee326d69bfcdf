"""The astrid backends these tests run on (imported by the conftest and the worker process)."""

from __future__ import annotations

from pathlib import Path

from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.store import StorageBackend

BACKENDS = ("memory", "file", "sqlite")


def make_backend(kind: str, where: Path) -> StorageBackend:
    """A backend of ``kind`` whose files (if any) live under ``where``."""
    if kind == "memory":
        return MemoryBackend()
    if kind == "file":
        return FileBackend(where / "sessions")
    return SqliteBackend(where / "astrid.db")
