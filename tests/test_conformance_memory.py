"""The storage conformance suite against the built-in ``memory`` backend."""

from __future__ import annotations

from pathlib import Path

from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.testing import StorageConformance


class TestMemoryBackend(StorageConformance):
    """Nothing persists, so the reopen tests are skipped."""

    def make_backend(self, tmp_path: Path) -> MemoryBackend:
        """A fresh in-memory backend (the directory is unused)."""
        return MemoryBackend()
