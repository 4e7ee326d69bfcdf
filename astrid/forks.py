"""Session forks: a new session that starts as another one's first N messages.

The fork's state is the source's as of message N, reconstructed from what the store keeps: the
store overwrites a session's state on every save (its history keeps only messages), so the state
at an earlier message is not stored. At the end (N = all messages) it is the current state,
exactly. Before the end it is rebuilt from the spend ledger, when the backend keeps one and its
turn rows match the source's assistant messages one to one: the spend is the sum of the rows
settled before the first call after message N, and only the session allowances created before
that call are kept. Otherwise (no ledger, or rows that do not match) it fails closed: the spend
is the source's current spend and the session allowances and remembered escape paths are
dropped. ``metadata.fork_state`` says which: ``exact``, ``ledger`` or ``conservative``.

Every backend copies the prefix (see docs/concepts.md, "Forks", for why it is not shared).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .document import SessionDocument
from .errors import InvalidForkPoint
from .ids import SessionId, validate_session_id
from .ledger import KIND_TURN, LedgerRow
from .messages import Message, MessageRole
from .timeutil import format_rfc3339, parse_rfc3339, utcnow

if TYPE_CHECKING:
    from datetime import datetime

    from .session import AgentSession
    from .store import SessionStore

FORKED_FROM = "forked_from"
"""Metadata key: the id of the session a fork was made from."""
FORK_POINT = "fork_point"
"""Metadata key: how many of the source's messages the fork starts with."""
FORK_STATE = "fork_state"
"""Metadata key: how the fork's security state was obtained (``exact``, ``ledger``,
``conservative``)."""


def _assistant_count(messages: list[Message]) -> int:
    return sum(1 for m in messages if m.role == MessageRole.ASSISTANT)


def _ledger_cutoff(
    rows: list[LedgerRow], messages: list[Message], at: int
) -> tuple[float, datetime | None] | None:
    """(spend as of message ``at``, time of the first turn call after it) or None when the
    turn rows do not match the assistant messages one to one."""
    turns = [r for r in rows if r.kind == KIND_TURN]
    if len(turns) != _assistant_count(messages):
        return None
    done = _assistant_count(messages[:at])
    cutoff = turns[done].at if done < len(turns) else None
    spent = sum(
        (r.cost_usd for r in rows if cutoff is None or r.at < cutoff), start=Decimal(0)
    )
    return float(spent), cutoff


def fork_data(
    store: SessionStore, source: AgentSession, at: int | None, new_id: SessionId
) -> dict[str, Any]:
    """The document data of a fork of ``source`` (as loaded from ``store``) at message ``at``."""
    total = len(source.messages)
    point = total if at is None else at
    if isinstance(point, bool) or not isinstance(point, int) or not 0 <= point <= total:
        raise InvalidForkPoint(
            f"session {source.id.bare}: cannot fork at message {at!r}: it has {total} "
            f"messages (use 0 to {total})"
        )
    data = source.state_data()
    data["allowances"] = list(data.get("allowances") or [])
    messages = list(source.messages[:point])
    how = "exact"
    if point < total:
        rows: list[LedgerRow] = []
        if store.keeps_ledger:
            sid = source.id.bare
            rows = store.list_ledger(session_id=sid)
            rows += [r for r in store.list_ledger() if r.parent_session_id == sid]
            rows.sort(key=lambda r: (r.at, r.id))
        found = _ledger_cutoff(rows, list(source.messages), point) if rows else None
        escape = dict(data.get("escape_state") or {})
        escape["remembered_paths"] = []
        data["escape_state"] = escape
        if found is None:
            how = "conservative"
            data["allowances"] = []
        else:
            how = "ledger"
            spent, cutoff = found
            data["budget_snapshot"] = {
                **(data.get("budget_snapshot") or {}), "session_spent_usd": spent
            }
            if cutoff is not None:
                data["allowances"] = [
                    a for a in data["allowances"] if parse_rfc3339(a.get("created_at")) < cutoff
                ]
    meta = dict(data.get("metadata") or {})
    meta["turn_count"] = sum(1 for m in messages if m.role == MessageRole.USER)
    meta["tool_call_count"] = sum(
        len(m.tool_calls() or ()) for m in messages if m.role == MessageRole.ASSISTANT
    )
    meta[FORKED_FROM] = source.id.bare
    meta[FORK_POINT] = point
    meta[FORK_STATE] = how
    data["metadata"] = meta
    data["id"] = new_id.bare
    data["messages"] = messages
    return data


def fork_session(
    store: SessionStore, session_id: str | SessionId, *, at: int | None = None
) -> AgentSession:
    """Fork ``session_id`` at message ``at`` (default: all), save the fork and return it."""
    from .session import AgentSession

    sid = validate_session_id(session_id)
    source = store.load(sid)
    if source is None:
        raise store.not_found(sid)
    new_id = SessionId.new()
    data = fork_data(store, source, at, new_id)
    data["created_at"] = format_rfc3339(utcnow())
    doc = SessionDocument.from_data(data, source=f"fork of session {sid}")
    fork = AgentSession.from_document(doc, token_estimator=store.token_estimator)
    if store.capabilities is not None:
        fork.with_capability_store(store.capabilities)
    fork.recount_tokens()
    store.save(fork)
    return fork


def fork_of(metadata: Any) -> tuple[str, int] | None:
    """(source id, fork point) recorded in a session's metadata (a model or its data), or None."""
    extra = metadata if isinstance(metadata, dict) else getattr(metadata, "model_extra", None)
    if not isinstance(extra, dict):
        return None
    source, point = extra.get(FORKED_FROM), extra.get(FORK_POINT)
    if isinstance(source, str) and isinstance(point, int) and not isinstance(point, bool):
        return source, point
    return None


__all__ = ["FORKED_FROM", "FORK_POINT", "FORK_STATE", "fork_data", "fork_of", "fork_session"]
