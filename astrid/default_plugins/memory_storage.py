"""The ``memory`` storage backend: everything in process memory, for tests and ephemeral hosts."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..errors import ConcurrencyError, SessionNotFound
from ..hookspecs import hookimpl
from ..ledger import LedgerRow, matches, sort_rows
from ..plugins import PluginContext
from ..security.audit import AuditRecord, by_chain, seal, to_import
from ..security.kv import KvStore, MemoryKvStore
from ..store import (
    HistoryEntry,
    SessionRecord,
    SessionSummary,
    SessionWrite,
    WorkspaceWrite,
    apply_workspace_write,
    check_messages_storable,
)
from ..timeutil import utcnow


class MemoryOptions(BaseModel):
    """The memory backend takes no options."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class _Entry:
    state: dict[str, Any]
    summary: SessionSummary
    revision: int
    messages: list[tuple[int, Any]] = field(default_factory=list)
    archived: list[tuple[int, Any]] = field(default_factory=list)
    next_seq: int = 0


class MemoryBackend:
    """Sessions in a dict, guarded by one lock; nothing survives the process."""

    name = "memory"
    persistent = False
    """Nothing survives the process: ``astrid migrate`` refuses it as a target."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._sessions: dict[str, _Entry] = {}
        self._kv = MemoryKvStore()
        self._ledger: dict[str, LedgerRow] = {}
        """Spend-ledger rows by id (they outlive their session's deletion)."""
        self._audit: dict[str, list[AuditRecord]] = {}
        """Audit entries per chain, in sequence (sealed under the write lock)."""

    def load(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        """The session (or its last ``tail`` messages), or None."""
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                return None
            total = len(entry.messages)
            start = 0 if tail is None else max(0, total - tail)
            return SessionRecord(
                state=copy.deepcopy(entry.state),
                messages=[copy.deepcopy(m) for _, m in entry.messages[start:]],
                message_offset=start,
                message_count=total,
                revision=entry.revision,
                updated_at=entry.summary.updated_at,
            )

    def write(self, change: SessionWrite) -> int:
        """Apply one save; ``ConcurrencyError`` on a stale revision."""
        change.check_archived()
        change.check_storable()
        with self._lock:
            entry = self._sessions.get(change.session_id)
            current = entry.revision if entry is not None else None
            if current != change.expected_revision:
                raise ConcurrencyError(
                    f"session {change.session_id}: stale save (based on revision "
                    f"{change.expected_revision}, stored revision is {current})"
                )
            if entry is None:
                entry = _Entry(state={}, summary=change.summary, revision=0)
            elif not change.replace and len(entry.messages) != change.base_count:
                raise ConcurrencyError(
                    f"session {change.session_id}: stale save (based on {change.base_count} "
                    f"messages, {len(entry.messages)} stored)"
                )
            new = copy.deepcopy(entry) if change.session_id in self._sessions else entry
            if change.replace:
                new.archived.extend(new.messages)
                new.messages = []
            for message in change.archived:
                new.archived.append((new.next_seq, copy.deepcopy(message)))
                new.next_seq += 1
            for message in change.messages:
                new.messages.append((new.next_seq, copy.deepcopy(message)))
                new.next_seq += 1
            new.state = copy.deepcopy(change.state)
            new.revision += 1
            new.summary = replace(
                change.summary, message_count=len(new.messages), revision=new.revision
            )
            self._sessions[change.session_id] = new
            for row in change.ledger:
                self._ledger.setdefault(row.id, row)
            for chain, items in by_chain(change.audit).items():
                stored = self._audit.setdefault(chain, [])
                head = (stored[-1].seq, stored[-1].hash) if stored else None
                stored.extend(seal(items, head))
            return new.revision

    def append(
        self, session_id: str, messages: Sequence[Any], summary: SessionSummary | None = None
    ) -> tuple[int, int]:
        """Append regardless of revision; ``SessionNotFound`` if the session does not exist."""
        check_messages_storable(session_id, messages)
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                raise SessionNotFound(f"session {session_id} not found in the memory store")
            for message in messages:
                entry.messages.append((entry.next_seq, copy.deepcopy(message)))
                entry.next_seq += 1
            entry.revision += 1
            base = summary or entry.summary
            entry.summary = replace(
                base,
                message_count=len(entry.messages),
                revision=entry.revision,
                updated_at=utcnow(),
            )
            return entry.revision, len(entry.messages)

    def delete(self, session_id: str) -> bool:
        """Remove a session; False if absent."""
        with self._lock:
            return self._sessions.pop(session_id, None) is not None

    def _sorted(self, workspace: str | None) -> list[SessionSummary]:
        rows = [e.summary for e in self._sessions.values()]
        if workspace is not None:
            rows = [r for r in rows if r.workspace_path == workspace]
        rows.sort(key=lambda r: (_neg(r.updated_at), r.id))
        return rows

    def list_sessions(
        self, *, workspace: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[SessionSummary]:
        """A page of summaries, newest activity first."""
        with self._lock:
            return self._sorted(workspace)[offset : offset + limit]

    def count_sessions(self, *, workspace: str | None = None) -> int:
        """How many sessions (optionally in one workspace)."""
        with self._lock:
            return len(self._sorted(workspace))

    def history(self, session_id: str) -> list[HistoryEntry]:
        """Every message ever stored, replaced ones included, by sequence."""
        with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                return []
            rows = [HistoryEntry(seq, False, copy.deepcopy(m)) for seq, m in entry.archived]
            rows += [HistoryEntry(seq, True, copy.deepcopy(m)) for seq, m in entry.messages]
            rows.sort(key=lambda h: h.seq)
            return rows

    def import_audit(self, records: Sequence[AuditRecord]) -> int:
        """Store entries copied from another store after each chain's own (``to_import``)."""
        added = 0
        with self._lock:
            for chain, items in by_chain(records).items():
                stored = self._audit.setdefault(chain, [])
                new = to_import(items, [r.hash for r in stored])
                stored.extend(new)
                added += len(new)
        return added

    def list_audit(self, *, session_id: str | None = None) -> list[AuditRecord]:
        """The audit entries (of one session), by chain then sequence."""
        with self._lock:
            return [
                r
                for chain in sorted(self._audit)
                for r in self._audit[chain]
                if session_id is None or r.session_id == session_id
            ]

    def list_ledger(
        self,
        *,
        session_id: str | None = None,
        workspace: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerRow]:
        """The spend-ledger rows passing the filters, by time."""
        with self._lock:
            rows = list(self._ledger.values())
        return sort_rows(
            r
            for r in rows
            if matches(r, session_id=session_id, workspace=workspace, since=since, until=until)
        )

    def kv(self) -> KvStore:
        """The in-memory key-value store."""
        return self._kv

    def write_workspace_state(self, change: WorkspaceWrite) -> float | None:
        """Apply a workspace write under the backend's lock; return the stored total."""
        kv = self._kv
        with self._lock:
            return apply_workspace_write(change, kv.get, kv.set, kv.delete, "memory store")

    def schema_version(self) -> int:
        """Schemaless: 0."""
        return 0

    def close(self) -> None:
        """Nothing to release."""


def _neg(moment: datetime) -> float:
    return -moment.timestamp()


@hookimpl
def register_storage_backends(register: Any) -> None:
    """Register the ``memory`` backend."""
    register(
        "memory",
        lambda options, context: MemoryBackend(),
        MemoryOptions,
        "In-process memory; nothing is persisted (tests, ephemeral hosts).",
    )


__all__ = ["MemoryBackend", "MemoryOptions", "PluginContext"]
