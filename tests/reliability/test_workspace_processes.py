"""Workspace budgets across processes: what every process charged adds up in the store.

Several ``writer.py spend`` processes attach a session each to one workspace of one store (a
SQLite file or a file-backend directory), are released together, and each charges the
workspace budget 0.25 and saves the workspace state, over and over. The stored total must be
exactly the sum (0.25 is exact in binary, so any lost or doubled save shows). Before issue 14
item 1 each save wrote its own tracker's total, so the last writer won.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from astrid.store import SessionStore

from .harness import Child
from .writer import open_backend

WRITERS = 4
SAVES_EACH = 25


def _location(backend: str, root: Path) -> Path:
    return root / "astrid.db" if backend == "sqlite" else root / "sessions"


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_processes_charging_one_workspace_add_up_exactly(backend: str, tmp_path: Path) -> None:
    location = _location(backend, tmp_path)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    children = [
        Child.writer("spend", backend, str(location), str(workspace), "w", str(SAVES_EACH))
        for _ in range(WRITERS)
    ]
    for child in children:
        if not child.wait_for("ready"):
            child.finish()
            pytest.fail(f"a writer exited before it was ready: {child.stderr}")
    for child in children:
        child.send("go")
    seen = []
    for child in children:
        assert child.finish() == 0, child.stderr
        assert child.stderr == "", child.stderr
        [done] = [line for line in child.lines if line.startswith("done ")]
        seen.append(float(done.split()[1]))
    # each tracker adopted the stored total at its last save: at least its own charges
    assert all(SAVES_EACH * 0.25 <= spent <= WRITERS * SAVES_EACH * 0.25 for spent in seen)
    assert max(seen) == WRITERS * SAVES_EACH * 0.25  # the last save saw everything

    store = SessionStore(open_backend(backend, str(location)))
    try:
        budget = store.load_workspace_state(workspace).budget
        assert budget is not None
        assert budget.total_spent_usd == WRITERS * SAVES_EACH * 0.25
    finally:
        store.close()
