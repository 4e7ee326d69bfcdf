"""Helpers for testing a backend's keyed security state (``accepts_state_delta``) directly.

They build whole states with many allowances and escape paths, the partial state a delta save
sends, and ``SessionWrite``s, so a backend's own tests can check its rows after each kind of
write. ``StorageConformance`` checks the behaviour through ``SessionStore``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..security.allowances import Allowance, ExactTool
from ..security.escape import EscapeDecision, EscapeOperation, EscapeRequest
from ..session import AgentSession
from ..store import SessionSummary, SessionWrite, StateDelta, StorageBackend
from ..timeutil import utcnow

if TYPE_CHECKING:
    import pytest

SID = "6f1c1b7e-3c1a-4a5e-9d7e-1f2a3b4c5d6e"
"""The session the helpers write unless told otherwise."""


def allowance_data(i: int) -> dict[str, Any]:
    """The JSON data of a new session allowance for tool ``fs/t<i>``."""
    return Allowance.create(ExactTool(server="fs", tool=f"t{i}"), session_only=True).model_dump(
        mode="json"
    )


def sorted_paths(n: int) -> list[str]:
    """``n`` distinct absolute paths, sorted (as a state lists remembered escape paths)."""
    return sorted(f"/work/p{i:04d}" for i in range(n))


def whole_state(
    allowances: list[Any], paths: list[Any], *, sid: str = SID, **extra: Any
) -> dict[str, Any]:
    """A whole session state holding ``allowances`` and ``paths`` (and an unknown escape key)."""
    return {
        "id": sid,
        "user_id": "00" * 8,
        "system_prompt": "p",
        "created_at": "2026-01-01T00:00:00Z",
        "token_count": 0,
        "metadata": {},
        "allowances": allowances,
        "budget_snapshot": None,
        "escape_state": {"remembered_paths": paths, "note": "kept"},
        **extra,
    }


def partial_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` as a delta save sends it: no allowances, no remembered paths."""
    rest = {k: v for k, v in state.items() if k != "allowances"}
    rest["escape_state"] = {
        k: v for k, v in state["escape_state"].items() if k != "remembered_paths"
    }
    return rest


def no_full_state() -> dict[str, Any]:
    """A ``StateDelta.full_state`` for deltas that must apply without it."""
    raise AssertionError("a delta on a keyed session must not ask for the whole state")


def write(
    backend: StorageBackend,
    state: dict[str, Any],
    revision: int | None,
    delta: StateDelta | None = None,
    messages: list[Any] | None = None,
    base: int = 0,
    *,
    replace: bool = False,
    sid: str = SID,
) -> int:
    """``backend.write`` of one save of ``sid`` (a create when ``revision`` is None)."""
    now = utcnow()
    return backend.write(
        SessionWrite(
            session_id=sid,
            expected_revision=revision,
            state=state,
            messages=messages or [],
            base_count=base,
            replace=replace,
            summary=SessionSummary(sid, None, now, now, 0, 0, None),
            delta=delta,
        )
    )


def loaded_state(backend: StorageBackend, *, sid: str = SID, tail: int | None = None) -> Any:
    """The stored state of ``sid`` as the backend loads it (asserting it exists)."""
    record = backend.load(sid, tail=tail)
    assert record is not None, f"session {sid} is not stored"
    return record.state


def recorded_writes(backend: StorageBackend, monkeypatch: pytest.MonkeyPatch) -> list[SessionWrite]:
    """The writes ``backend`` receives from now on (its ``write`` wrapped on the instance)."""
    writes: list[SessionWrite] = []
    real = backend.write

    def record(change: SessionWrite) -> int:
        writes.append(change)
        return real(change)

    monkeypatch.setattr(backend, "write", record)
    return writes


def grow(session: AgentSession, i: int, where: Path) -> None:
    """One more session allowance (``fs/t<i>``) and one more remembered escape path (a new
    directory ``where/grown-<i>``)."""
    session.add_session_allowance(
        Allowance.create(ExactTool(server="fs", tool=f"t{i}"), session_only=True)
    )
    path = where / f"grown-{i}"
    path.mkdir()
    session.escape_handler.process_decision(
        EscapeRequest.new(path, EscapeOperation.READ, "test"), EscapeDecision.ALLOW_ALWAYS
    )


def comparable(session: AgentSession) -> dict[str, Any]:
    """The session's document data without the budget snapshot's time (taken at each export)."""
    data = session.to_document().to_data()
    if isinstance(data.get("budget_snapshot"), dict):
        data["budget_snapshot"].pop("last_updated", None)
    return data
