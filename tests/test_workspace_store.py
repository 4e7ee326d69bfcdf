"""``SessionStore`` workspace state on a backend without ``write_workspace_state``: fail closed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.errors import StorageError
from astrid.security.budget import WorkspaceBudgetSnapshot
from astrid.store import SessionStore, WorkspaceState, WorkspaceStateWriter
from astrid.timeutil import utcnow


class _BackendWithoutWorkspaceWrites:
    """A real memory backend seen through a plugin written before ``write_workspace_state``."""

    name = "old-style"

    def __init__(self) -> None:
        self._inner = MemoryBackend()

    def __getattr__(self, attr: str) -> Any:
        if attr == "write_workspace_state":
            raise AttributeError(attr)
        return getattr(self._inner, attr)


def test_saving_workspace_state_without_the_backend_method_fails_closed(tmp_path: Path) -> None:
    backend = _BackendWithoutWorkspaceWrites()
    assert not isinstance(backend, WorkspaceStateWriter)
    store = SessionStore(backend)  # type: ignore[arg-type]
    session = store.new_session("p")
    tracker = store.attach_workspace(session, tmp_path, max_usd=5.0)  # loading still works
    tracker.record_cost(1.0)
    with pytest.raises(StorageError, match=r"'old-style'.*write_workspace_state"):
        store.save_workspace_of(session)
    assert tracker.unsaved() == 1.0  # nothing was lost: a later save can still send it
    snapshot = WorkspaceBudgetSnapshot(total_spent_usd=2.0, last_updated=utcnow())
    with pytest.raises(StorageError, match="old-style"):
        store.save_workspace_state(tmp_path, WorkspaceState(budget=snapshot))
    assert backend.kv().list_namespaces() == []  # and nothing half-written
