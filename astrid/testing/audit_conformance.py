"""The audit-log part of the storage contract (``astrid.security.audit``), mixed into
``StorageConformance``: skipped for a backend that keeps no audit log (``store.AuditKeeper``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ..errors import ConcurrencyError
from ..messages import Message
from ..security.audit import AuditRecord, by_chain, record, verify
from ..security.crypto import KeyPair
from ..session import AgentSession
from ..store import SessionStore, StorageBackend, workspace_key

if TYPE_CHECKING:
    _Reopen = Callable[..., StorageBackend]

_KEY = KeyPair.generate()


def decide(session: AgentSession, action: str, decision: str = "allowed") -> None:
    """Queue one decision on ``session`` (signed by this module's key)."""
    record(
        session,
        _KEY,
        actor="runtime",
        action_type="file_read",
        action=action,
        decision=decision,
        reason="r\u00e9ason \U0001f680 '; DROP TABLE audit; --",
    )


class AuditConformance:
    """Audit entries are sealed in the save's own write (a failed save stores none), chained per
    workspace across sessions, outlive a reopen and their session, and verify."""

    if TYPE_CHECKING:
        _reopen: _Reopen

    @staticmethod
    def _audit_keeper(store: SessionStore) -> None:
        if not store.keeps_audit:
            pytest.skip(f"{store.backend_name}: keeps no audit log (no list_audit)")

    def test_audit_entries_chain_per_workspace_through_every_kind_of_save(
        self, store: SessionStore, workspace: Path
    ) -> None:
        self._audit_keeper(store)
        one = store.new_session("p").with_workspace(workspace)
        decide(one, "create")
        store.save(one)  # a create
        one.add_message(Message.user("hi"))
        decide(one, "append")
        store.save(one)  # an append
        one.messages[0] = Message.user("edited")
        decide(one, "replace")
        store.save(one)  # a replace
        decide(one, "state")
        store.save_state(one)  # the state alone
        two = store.new_session("q").with_workspace(workspace)
        decide(two, "other session", "denied")
        store.save(two)
        bare = store.new_session("r")
        decide(bare, "no workspace")
        store.save(bare)
        assert one.changes.audit == [] and two.changes.audit == []
        records = store.list_audit()
        chain = workspace_key(workspace)
        ours = [r for r in records if r.chain == chain]
        assert [r.data["action"] for r in ours] == [
            "create", "append", "replace", "state", "other session"
        ]
        assert [r.seq for r in ours] == [1, 2, 3, 4, 5]
        assert [r.data["action"] for r in records if r.chain == ""] == ["no workspace"]
        assert verify(records, [_KEY.public_key_base64]) == []
        assert [r.data["action"] for r in store.list_audit(session_id=two.id)] == [
            "other session"
        ]
        assert store.list_audit(session_id=two.id)[0].data["reason"].startswith("r\u00e9ason")

    def test_audit_entries_survive_a_reopen_and_their_sessions_deletion(
        self, backend: StorageBackend, store: SessionStore, data_dir: Path
    ) -> None:
        self._audit_keeper(store)
        session = store.new_session("p")
        decide(session, "kept")
        store.save(session)
        store.delete(session.id)
        again = SessionStore(self._reopen(backend, data_dir))
        records = again.list_audit()
        assert [r.data["action"] for r in records] == ["kept"]
        assert verify(records, [_KEY.public_key_base64]) == []

    def test_a_stale_save_stores_no_audit_entry_and_keeps_it(self, store: SessionStore) -> None:
        self._audit_keeper(store)
        session = store.new_session("p")
        store.save(session)
        other = store.load(session.id)
        assert other is not None
        store.save(other)
        decide(session, "stale")
        with pytest.raises(ConcurrencyError):
            store.save(session)
        assert store.list_audit() == []
        assert len(session.changes.audit) == 1  # kept for the next save
        fresh = store.load(session.id)
        assert fresh is not None
        fresh.changes.audit.extend(session.changes.audit)
        store.save(fresh)
        assert [r.seq for r in store.list_audit()] == [1]

    def test_entries_copied_from_another_store_are_stored_verbatim_and_once(
        self, store: SessionStore, workspace: Path
    ) -> None:
        self._audit_keeper(store)
        if not store.imports_audit:
            pytest.skip(f"{store.backend_name}: cannot store copied entries (no import_audit)")
        from ..default_plugins.memory_storage import MemoryBackend
        from ..errors import StorageError

        source = SessionStore(MemoryBackend())
        one = source.new_session("p").with_workspace(workspace)
        for action in ("a", "b", "c"):
            decide(one, action)
        source.save(one)
        bare = source.new_session("q")
        decide(bare, "no workspace")
        source.save(bare)
        copied = source.list_audit()
        assert store.import_audit(copied) == 4
        assert store.import_audit(copied) == 0  # a resumed copy stores nothing twice

        def signed(records: list[AuditRecord]) -> dict[str, list[tuple[object, ...]]]:
            return {
                chain: [(r.seq, r.id, r.session_id, r.body, r.hash, r.signature) for r in rs]
                for chain, rs in by_chain(records).items()
            }

        assert signed(store.list_audit()) == signed(copied)
        later = store.new_session("r").with_workspace(workspace)
        decide(later, "after the copy")
        store.save(later)
        chain = [r for r in store.list_audit() if r.chain == workspace_key(workspace)]
        assert [r.seq for r in chain] == [1, 2, 3, 4]
        assert verify(store.list_audit(), [_KEY.public_key_base64]) == []

        other = SessionStore(MemoryBackend())
        stranger = other.new_session("s").with_workspace(workspace)
        decide(stranger, "another store's #1")
        other.save(stranger)
        with pytest.raises(StorageError, match="already holds a different entry"):
            store.import_audit(other.list_audit())
        assert len(store.list_audit()) == 5


__all__ = ["AuditConformance", "decide"]
