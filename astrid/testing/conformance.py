"""The storage conformance suite: subclass ``StorageConformance`` to check a backend.

Every test goes through ``SessionStore`` (what hosts use) or, where the contract is about the
backend itself, through the raw ``StorageBackend`` methods. See ``docs/plugin-authors.md``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

try:
    import pytest
except ImportError as exc:  # pragma: no cover - only without pytest installed
    raise ImportError("astrid.testing needs pytest: pip install pytest") from exc

from ..document import GitState
from ..errors import (
    BudgetExceeded,
    ConcurrencyError,
    InvalidKey,
    InvalidSessionId,
    SerializationError,
    SessionNotFound,
    StorageError,
)
from ..messages import ImagePart, Message, MessageRole, TextPart, ToolCall, ToolCallResult
from ..security import allowances as _allowances
from ..security.actions import McpToolCall, Permission
from ..security.allowances import Allowance, ExactTool, FilePattern
from ..security.budget import BudgetValidator, WorkspaceBudgetSnapshot, WorkspaceBudgetTracker
from ..security.deferred import ActionContext, DeferredResolution, ErrorResolution, Priority
from ..security.escape import EscapeDecision, EscapeOperation, EscapeRequest, EscapeState
from ..security.kv import KvStore, NamespaceListing
from ..session import AgentSession
from ..store import (
    KEYED_STATE_MIN,
    WORKSPACE_STATE_KEY,
    DecodedLoader,
    HistoryEntry,
    SessionRecord,
    SessionStore,
    SessionSummary,
    SessionWrite,
    StateDelta,
    StorageBackend,
    WorkspaceState,
    takes_state_delta,
)
from ..timeutil import utcnow
from . import keyed_state
from .audit_conformance import AuditConformance
from .keyed_state import (
    allowance_data,
    comparable,
    grow,
    loaded_state,
    no_full_state,
    partial_state,
    recorded_writes,
    sorted_paths,
    whole_state,
    write,
)
from .ledger_conformance import LedgerConformance

HOSTILE_IDS: tuple[str, ...] = (
    "../../etc/passwd",
    "..",
    "",
    "   ",
    "not-a-uuid",
    "/tmp/session.json",
    "00000000-0000-4000-8000-00000000000g",
    "00000000-0000-4000-8000-0000000000001",
    "00000000-0000-4000-8000-000000000001/../x",
    "00000000-0000-4000-8000-000000000001\0",
    "session:../../x",
    "C:\\Windows\\system32",
)
"""Session ids that are not UUIDs: the facade refuses them before any backend sees them."""

HOSTILE_TEXTS: tuple[str, ...] = (
    "plain",
    'it\'s "quoted" and `backticked`',
    "'; DROP TABLE sessions; --",
    "back\\slash \\u0000 \\n not escapes",
    "NUL\0in\0the\0middle\0",
    "emoji \U0001f680\U0001f9d1\u200d\U0001f4bb and flags \U0001f1eb\U0001f1f7",
    "right-to-left \u202e gnirts and zero width \u200b\ufeff",
    "line one\nline two\r\nline three\ttabbed",
    "%_*?[]{}<>|&$#@!~^",
    "\u00e9\u00e8\u00ea \u4e2d\u6587 \u0440\u0443\u0441\u0441\u043a\u0438\u0439 \U00010348",
)
"""Text that breaks naive quoting, escaping, encoding or C strings."""


def sample_messages() -> list[Message]:
    """One message of every kind astrid knows, plus messages of unknown shape kept verbatim."""
    return [
        Message.system("You are a careful assistant."),
        Message.user('Read "a.txt" please'),
        Message.assistant_with_tools(
            [
                ToolCall(
                    id="call-1",
                    name="fs:read_file",
                    arguments={"path": "a.txt", "n": [1, 2.5, None, True], "o": {"k": "v"}},
                ),
                ToolCall(id="call-2", name="no_server", arguments={}),
            ]
        ),
        Message.tool_result(ToolCallResult.success("call-1", "hello\nworld")),
        Message.tool_result(ToolCallResult.error("call-2", "permission denied")),
        Message(
            role=MessageRole.USER,
            content=[
                TextPart(text="what is in this picture?"),
                ImagePart(data="aGVsbG8gd29ybGQ=", media_type="image/png"),
            ],
        ),
        Message.from_json({"role": "critic", "content": "from a newer writer", "score": 0.5}),
        Message.from_json({"role": "assistant", "content": {"kind": "future", "n": [1, 2]}}),
        Message.assistant("done"),
    ]


def _as_json(messages: Sequence[Message]) -> list[Any]:
    return [m.to_json() for m in messages]


def _texts(n: int, prefix: str = "m") -> list[Message]:
    return [Message.user(f"{prefix}{i}") for i in range(n)]


def _session_with(n: int, prefix: str = "m", prompt: str = "p") -> AgentSession:
    session = AgentSession(prompt)
    for message in _texts(n, prefix):
        session.add_message(message)
    return session


def _edited(text: str) -> Message:
    return Message.user(f"EDITED {text}")


def _assign(session: AgentSession, messages: list[Message]) -> None:
    session.messages = messages


def _append_and_edit(session: AgentSession, index: int) -> None:
    session.add_message(Message.user("new"))
    session.messages[index] = _edited(str(index))


MESSAGE_EDITS: dict[str, Callable[[AgentSession], object]] = {
    "setitem": lambda s: s.messages.__setitem__(1, _edited("1")),
    "setitem_negative": lambda s: s.messages.__setitem__(-1, _edited("-1")),
    "setitem_slice": lambda s: s.messages.__setitem__(slice(1, 3), [_edited("1:3")]),
    "setitem_step_slice": lambda s: s.messages.__setitem__(
        slice(None, None, 2), [_edited("a"), _edited("b"), _edited("c")]
    ),
    "setitem_past_the_end": lambda s: s.messages.__setitem__(slice(5, 5), [_edited("end")]),
    "delitem": lambda s: s.messages.__delitem__(2),
    "delitem_slice": lambda s: s.messages.__delitem__(slice(1, 3)),
    "delitem_last": lambda s: s.messages.__delitem__(-1),
    "insert": lambda s: s.messages.insert(1, _edited("inserted")),
    "insert_at_the_end": lambda s: s.messages.insert(99, _edited("inserted")),
    "pop": lambda s: s.messages.pop(),
    "pop_first": lambda s: s.messages.pop(0),
    "remove": lambda s: s.messages.remove(s.messages[2]),
    "clear": lambda s: s.messages.clear(),
    "clear_messages": lambda s: s.clear_messages(),
    "sort": lambda s: s.messages.sort(key=lambda m: m.text() or "", reverse=True),
    "reverse": lambda s: s.messages.reverse(),
    "extend": lambda s: s.messages.extend([_edited("extended")]),
    "iadd": lambda s: s.messages.__iadd__([_edited("added")]),
    "imul": lambda s: s.messages.__imul__(2),
    "imul_zero": lambda s: s.messages.__imul__(0),
    "assign_edited": lambda s: _assign(s, [s.messages[0], _edited("1"), *s.messages[2:]]),
    "assign_extended": lambda s: _assign(s, [*s.messages, _edited("appended")]),
    "assign_shorter": lambda s: _assign(s, list(s.messages[:3])),
    "assign_empty": lambda s: _assign(s, []),
    "append_then_edit_the_new_one": lambda s: _append_and_edit(s, -1),
    "edit_then_append": lambda s: _append_and_edit(s, 0),
}
"""Every kind of change a host can make to ``session.messages`` (after a save of 5 messages)."""


UNSTORABLE_VALUES: dict[str, tuple[Any, str]] = {
    "lone_surrogate": ({"text": "\ud800"}, r"\$\.content\[0\]\.arguments\.text: a lone surrogate"),
    "lone_surrogate_in_a_key": ({"k\udfff": 1}, r"a lone surrogate \(U\+DFFF\) in a key"),
    "nan": ({"x": [1, float("nan")]}, r"arguments\.x\[1\]: nan"),
    "infinity": ({"x": float("inf")}, "inf, which JSON cannot hold"),
    "negative_infinity": ({"x": float("-inf")}, "-inf, which JSON cannot hold"),
    "integer_above_64_bits": ({"n": 2**63}, "outside the 64-bit range"),
    "integer_below_64_bits": ({"n": -(2**63) - 1}, "outside the 64-bit range"),
}
"""Tool-call arguments that are valid in Python (and some in JSON) but that no store may hold."""


def _change(
    session: AgentSession,
    *,
    expected: int | None,
    messages: Sequence[Message],
    base: int,
    replace: bool = False,
    archived: Sequence[Message] = (),
    updated_at: datetime | None = None,
) -> SessionWrite:
    """A raw ``SessionWrite`` for ``session`` (what the facade, or a migration, would send)."""
    state = session.to_document().to_data()
    state.pop("messages", None)
    count = len(messages) if replace else base + len(messages)
    return SessionWrite(
        session_id=session.id.bare,
        expected_revision=expected,
        state=state,
        messages=_as_json(messages),
        base_count=base,
        replace=replace,
        summary=SessionSummary(
            id=session.id.bare,
            title=session.metadata.title,
            created_at=session.created_at,
            updated_at=updated_at if updated_at is not None else utcnow(),
            message_count=count,
            token_count=session.token_count,
            workspace_path=None,
            model=session.model,
        ),
        archived=_as_json(archived),
    )


class _RecordingBackend:
    """Passes every call to a backend and keeps the writes it was sent."""

    def __init__(self, inner: StorageBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.writes: list[SessionWrite] = []

    def load(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        """Delegate."""
        return self.inner.load(session_id, tail=tail)

    def write(self, change: SessionWrite) -> int:
        """Record, then delegate."""
        self.writes.append(change)
        return self.inner.write(change)

    def append(
        self, session_id: str, messages: Sequence[Any], summary: SessionSummary | None = None
    ) -> tuple[int, int]:
        """Delegate."""
        return self.inner.append(session_id, messages, summary)

    def delete(self, session_id: str) -> bool:
        """Delegate."""
        return self.inner.delete(session_id)

    def list_sessions(
        self, *, workspace: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[SessionSummary]:
        """Delegate."""
        return self.inner.list_sessions(workspace=workspace, limit=limit, offset=offset)

    def count_sessions(self, *, workspace: str | None = None) -> int:
        """Delegate."""
        return self.inner.count_sessions(workspace=workspace)

    def history(self, session_id: str) -> list[HistoryEntry]:
        """Delegate."""
        return self.inner.history(session_id)

    def kv(self) -> KvStore:
        """Delegate."""
        return self.inner.kv()

    def schema_version(self) -> int:
        """Delegate."""
        return self.inner.schema_version()

    def close(self) -> None:
        """Leave closing to the owner of the inner backend."""


class ShiftedClock:
    """``utcnow()`` plus an offset a test moves forward: allowances expire without sleeping."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.offset

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward by ``delta``."""
        self.offset += delta


class StorageConformance(LedgerConformance, AuditConformance):
    """The storage contract as pytest tests; subclass it as ``Test<Name>`` in a test module."""

    tick_seconds: ClassVar[float] = 0.002
    """Pause between saves whose order of activity a test checks (raise it for coarse clocks)."""

    thread_count: ClassVar[int] = 8
    """Threads used by the concurrency tests."""

    _open_backends: list[StorageBackend]
    _closed_backends: list[StorageBackend]

    # -- what a plugin author provides ----------------------------------------------------------

    def make_backend(self, tmp_path: Path) -> StorageBackend:
        """A fresh, empty backend keeping its data in the empty directory ``tmp_path``."""
        raise NotImplementedError(f"{type(self).__name__} must define make_backend(tmp_path)")

    def reopen_backend(self, backend: StorageBackend, tmp_path: Path) -> StorageBackend | None:
        """A second instance over the same data as ``backend``; None if nothing persists."""
        return None

    # -- fixtures --------------------------------------------------------------------------------

    @pytest.fixture
    def data_dir(self, tmp_path: Path) -> Path:
        """The empty directory the backend under test keeps its data in."""
        path = tmp_path / "store"
        path.mkdir()
        return path

    @pytest.fixture
    def backend(self, data_dir: Path) -> Iterator[StorageBackend]:
        """A fresh backend, closed (with any reopened instances) after the test."""
        self._open_backends = []
        self._closed_backends = []
        first = self.make_backend(data_dir)
        self._open_backends.append(first)
        yield first
        for opened in reversed(self._open_backends):
            self._close(opened)

    @pytest.fixture
    def clock(self, monkeypatch: pytest.MonkeyPatch) -> ShiftedClock:
        """The clock allowance expiry is judged by (injected for the test), moved forward by
        the expiry tests instead of sleeping."""
        shifted = ShiftedClock()
        monkeypatch.setattr(_allowances, "utcnow", shifted)
        return shifted

    @pytest.fixture
    def store(self, backend: StorageBackend) -> SessionStore:
        """A ``SessionStore`` over the backend under test."""
        return SessionStore(backend)

    @pytest.fixture
    def workspace(self, tmp_path: Path) -> Path:
        """An existing workspace directory, outside the backend's data directory."""
        path = (tmp_path / "workspace").resolve()
        path.mkdir()
        return path

    # -- helpers ---------------------------------------------------------------------------------

    def _close(self, backend: StorageBackend) -> None:
        if any(backend is closed for closed in self._closed_backends):
            return
        self._closed_backends.append(backend)
        backend.close()

    def _maybe_reopen(
        self, backend: StorageBackend, data_dir: Path, *, close_first: bool = True
    ) -> StorageBackend | None:
        """A second instance over the same data (the first closed unless ``close_first``)."""
        if type(self).reopen_backend is StorageConformance.reopen_backend:
            return None
        if close_first:
            self._close(backend)
        other = self.reopen_backend(backend, data_dir)
        if other is not None:
            self._open_backends.append(other)
        return other

    def _reopen(
        self, backend: StorageBackend, data_dir: Path, *, close_first: bool = True
    ) -> StorageBackend:
        """Like ``_maybe_reopen``, but skips the test for a backend that does not persist."""
        other = self._maybe_reopen(backend, data_dir, close_first=close_first)
        if other is None:
            pytest.skip(f"{type(self).__name__}: reopen_backend gives nothing (not persistent)")
        return other

    def _tick(self) -> None:
        time.sleep(self.tick_seconds)

    # -- the protocol ----------------------------------------------------------------------------

    def test_backend_satisfies_the_protocol_and_starts_empty(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        assert isinstance(backend, StorageBackend)
        assert isinstance(backend.name, str) and backend.name
        assert isinstance(backend.kv(), KvStore)
        assert backend.count_sessions() == 0
        assert backend.list_sessions() == []
        assert store.most_recent() is None

    def test_schema_version_is_a_non_negative_int(self, backend: StorageBackend) -> None:
        version = backend.schema_version()
        assert isinstance(version, int) and not isinstance(version, bool)
        assert version >= 0

    def test_close_can_be_called_and_keeps_saved_data(
        self, backend: StorageBackend, store: SessionStore, data_dir: Path
    ) -> None:
        session = _session_with(2)
        store.save(session)
        self._close(backend)
        other = self._maybe_reopen(backend, data_dir)
        if other is None:
            return
        loaded = SessionStore(other).load(session.id)
        assert loaded is not None
        assert _as_json(loaded.messages) == _as_json(session.messages)

    # -- save and load ---------------------------------------------------------------------------

    def test_round_trip_keeps_every_message_kind_and_the_session_state(
        self, store: SessionStore, workspace: Path, tmp_path: Path
    ) -> None:
        outside = (tmp_path / "outside").resolve()
        outside.mkdir()
        session = AgentSession('You are helpful. "Quotes" stay.', user_id=bytes(range(8)))
        session.with_workspace(workspace).with_model("model-x")
        for message in sample_messages():
            session.add_message(message)
        session.metadata.title = "A title"
        session.metadata.tags = ["t1", "t2"]
        session.metadata.custom = {"k": "v", "empty": ""}
        session.budget_tracker.record_cost(1.25)
        grant = Allowance.create(ExactTool(server="fs", tool="read"), session_only=True)
        session.add_session_allowance(grant)
        session.escape_handler.process_decision(
            EscapeRequest.new(outside, EscapeOperation.READ, "docs"), EscapeDecision.ALLOW_ALWAYS
        )
        session.git_state = GitState(branch="main", commit="0123456789abcdef")
        session.extra_fields = {"x_future_field": {"nested": [1, "two", None]}}
        store.save(session)

        loaded = store.load(session.id)
        assert loaded is not None
        assert loaded is not session
        assert loaded.id == session.id
        assert loaded.user_id == bytes(range(8))
        assert loaded.system_prompt == session.system_prompt
        assert loaded.created_at == session.created_at
        assert _as_json(loaded.messages) == _as_json(session.messages)
        assert [m.is_known for m in loaded.messages] == [m.is_known for m in session.messages]
        assert loaded.token_count == session.token_count > 0
        assert loaded.metadata.model_dump() == session.metadata.model_dump()
        assert loaded.metadata.turn_count == 2 and loaded.metadata.tool_call_count == 2
        assert loaded.budget_tracker.spent() == 1.25
        assert [a.id for a in loaded.allowance_store.export_session_allowances()] == [grant.id]
        assert loaded.escape_handler.remembered_paths == session.escape_handler.remembered_paths
        assert loaded.workspace_path == workspace
        assert loaded.model == "model-x"
        assert loaded.git_state == session.git_state
        assert loaded.extra_fields == session.extra_fields
        assert loaded.parent_id is None

    def test_stored_document_equals_the_saved_one(self, store: SessionStore) -> None:
        session = AgentSession("p").with_model("m")
        for message in sample_messages():
            session.add_message(message)
        session.metadata.title = "doc"
        store.save(session)
        stored = store.load_document(session.id)
        assert stored is not None
        expected = session.to_document().to_data()
        got = stored.to_data()
        spent = (expected.pop("budget_snapshot"), got.pop("budget_snapshot"))
        assert got == expected
        assert spent[0]["session_spent_usd"] == spent[1]["session_spent_usd"]
        assert spent[0]["config"] == spent[1]["config"]

    def test_many_allowances_and_escape_paths_survive_every_kind_of_change(
        self, backend: StorageBackend, store: SessionStore, workspace: Path
    ) -> None:
        """A session with more session allowances and escape paths than ``KEYED_STATE_MIN``
        (a backend with ``accepts_state_delta`` gets only changes), changed every save."""
        reader = SessionStore(backend)
        session = AgentSession("many")
        dirs = []
        for i in range(KEYED_STATE_MIN + 10):
            session.add_session_allowance(
                Allowance.create(ExactTool(server="fs", tool=f"t{i}"), session_only=True)
            )
            where = workspace / f"d{i}"
            where.mkdir()
            dirs.append(where)
            session.escape_handler.process_decision(
                EscapeRequest.new(where, EscapeOperation.READ, "conformance"),
                EscapeDecision.ALLOW_ALWAYS,
            )
        store.save(session)
        once = Allowance.create(ExactTool(server="fs", tool="once"), session_only=True, max_uses=2)
        changes: list[Callable[[], object]] = [
            lambda: session.add_session_allowance(once),
            lambda: session.allowance_store.consume_use(once.id),
            lambda: session.allowance_store.consume_use(once.id),  # used up: no longer saved
            lambda: session.add_session_allowance(
                Allowance.create(ExactTool(server="fs", tool="new"), session_only=True)
            ),
            lambda: None,  # a save with no state change
            lambda: session.escape_handler.clear_all(),
            lambda: session.escape_handler.process_decision(
                EscapeRequest.new(dirs[3], EscapeOperation.WRITE, "conformance"),
                EscapeDecision.ALLOW_ALWAYS,
            ),
            lambda: session.end_session(),
        ]
        for step, change in enumerate(changes):
            change()
            session.add_message(Message.user(f"step {step}"))
            store.save(session)
            loaded = reader.load(session.id)
            assert loaded is not None, f"step {step}"
            assert comparable(loaded) == comparable(session), f"step {step}"

    # -- many allowances and escape paths (keyed state, ``accepts_state_delta``) -----------------

    def test_random_security_changes_load_back_as_whole_writes(
        self,
        backend: StorageBackend,
        store: SessionStore,
        workspace: Path,
        monkeypatch: pytest.MonkeyPatch,
        clock: ShiftedClock,
    ) -> None:
        """Random allowance and escape changes (uses, expiries, removals), a save after each:
        every load equals the session, whichever way the backend stored each save."""
        rng = random.Random(7)
        reader = SessionStore(backend)
        session = store.new_session("random")
        writes = recorded_writes(backend, monkeypatch)
        made = 0
        for turn in range(160):
            op = rng.random()
            if op < 0.45 or made < KEYED_STATE_MIN:
                grow(session, made, workspace)
                made += 1
            elif op < 0.6:
                session.add_session_allowance(
                    Allowance.create(
                        ExactTool(server="fs", tool=f"once{turn}"), session_only=True, max_uses=1
                    )
                )
            elif op < 0.7:
                session.allowance_store.find_matching_and_consume(
                    McpToolCall(server="fs", tool=f"once{rng.randrange(turn)}")
                )
            elif op < 0.75:
                session.add_session_allowance(
                    Allowance.create(
                        ExactTool(server="fs", tool=f"soon{turn}"),
                        session_only=True,
                        expires_at=clock() + timedelta(milliseconds=rng.choice([1, 20, 60_000])),
                    )
                )
            elif op < 0.8:
                entries = session.allowance_store.all()
                session.allowance_store.consume_use(entries[rng.randrange(len(entries))].id)
            elif op < 0.83:
                session.escape_handler.clear_all()
            elif op < 0.85:
                session.end_session()
            session.add_message(Message.user(f"turn {turn}"))
            store.save(session)
            if turn % 7 == 0 or turn > 150:
                # Past every short expiry, so the load and the export agree on what expired.
                clock.advance(timedelta(milliseconds=25))
                loaded = reader.load(session.id)
                assert loaded is not None, f"turn {turn}"
                assert comparable(loaded) == comparable(session), f"turn {turn}"
        if takes_state_delta(backend):
            # Both ways were taken: deltas, and whole writes (expiries, the journal's floor).
            kinds = [w.delta is not None for w in writes]
            assert kinds.count(True) > 40, kinds
            assert kinds[KEYED_STATE_MIN + 1 :].count(False) > 0, kinds

    def test_a_reloaded_session_with_many_allowances_saves_its_changes(
        self,
        backend: StorageBackend,
        store: SessionStore,
        workspace: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Loaded by another store (as a stateless server does), changed and saved: the stored
        state follows; a backend taking deltas gets only the changes from the first save."""
        session = store.new_session("reloaded")
        for i in range(KEYED_STATE_MIN + 5):
            grow(session, i, workspace)
        store.save(session)
        other = SessionStore(backend)
        loaded = other.load(session.id)
        assert loaded is not None
        writes = recorded_writes(backend, monkeypatch)
        for i in range(3):
            loaded.add_message(Message.user(f"m{i}"))
            grow(loaded, 100 + i, workspace)
            other.save(loaded)
        again = SessionStore(backend).load(session.id)
        assert again is not None and comparable(again) == comparable(loaded)
        if takes_state_delta(backend):
            assert [w.delta is not None and len(w.delta) == 2 for w in writes] == [True] * 3

    def test_what_the_load_refuses_is_dropped_from_the_store_by_the_next_save(
        self,
        backend: StorageBackend,
        store: SessionStore,
        workspace: Path,
        monkeypatch: pytest.MonkeyPatch,
        clock: ShiftedClock,
    ) -> None:
        """A remembered escape path that no longer exists and an allowance that expired are
        dropped on load; the next save drops them from the store too (a backend taking deltas
        gets them as removals, nothing else)."""
        session = store.new_session("dropped")
        for i in range(KEYED_STATE_MIN + 5):
            grow(session, i, workspace)
        soon = Allowance.create(
            ExactTool(server="fs", tool="soon"),
            session_only=True,
            expires_at=clock() + timedelta(milliseconds=300),
        )
        session.add_session_allowance(soon)
        store.save(session)
        gone = workspace / "grown-3"
        gone.rmdir()
        clock.advance(timedelta(milliseconds=350))
        other = SessionStore(backend)
        loaded = other.load(session.id)
        assert loaded is not None and str(gone) not in loaded.escape_handler.remembered_paths
        assert soon.id not in {a.id for a in loaded.allowance_store.all()}
        writes = recorded_writes(backend, monkeypatch)
        for i in range(3):
            loaded.add_message(Message.user(f"m{i}"))
            other.save(loaded)
        record = backend.load(session.id.bare)
        assert record is not None
        stored = record.state["escape_state"]["remembered_paths"]
        assert str(gone) not in stored and len(stored) == KEYED_STATE_MIN + 4
        assert [a["id"] for a in record.state["allowances"]] == [
            str(a.id) for a in loaded.allowance_store.export_session_allowances()
        ]
        if takes_state_delta(backend):
            first = writes[0].delta
            assert first is not None
            assert dict(first.allowances) == {str(soon.id): None}
            assert dict(first.remembered_paths) == {str(gone): False}
            assert [w.delta is not None for w in writes[1:]] == [True, True]

    def test_an_allowance_refused_by_the_load_and_granted_again_goes_last(
        self,
        backend: StorageBackend,
        store: SessionStore,
        workspace: Path,
        monkeypatch: pytest.MonkeyPatch,
        clock: ShiftedClock,
    ) -> None:
        """The same allowance id, expired at the load and granted again afterwards: the store
        lists it where the session does (last), not in its old place."""
        session = store.new_session("regranted")
        soon = Allowance.create(
            ExactTool(server="fs", tool="soon"),
            session_only=True,
            expires_at=clock() + timedelta(milliseconds=300),
        )
        session.add_session_allowance(soon)
        for i in range(KEYED_STATE_MIN + 5):
            grow(session, i, workspace)
        store.save(session)
        clock.advance(timedelta(milliseconds=350))
        other = SessionStore(backend)
        loaded = other.load(session.id)
        assert loaded is not None
        loaded.add_session_allowance(soon.model_copy(update={"expires_at": None}))
        loaded.add_message(Message.user("again"))
        writes = recorded_writes(backend, monkeypatch)
        other.save(loaded)
        assert writes[0].delta is None  # a delta could only update it in its old place
        again = SessionStore(backend).load(session.id)
        assert again is not None
        ids = [a.id for a in again.allowance_store.export_session_allowances()]
        assert ids[-1] == soon.id and ids.count(soon.id) == 1
        assert comparable(again) == comparable(loaded)

    @pytest.mark.parametrize(
        "case",
        [
            "repeated id",
            "allowance without id",
            "allowance not an object",
            "unsorted paths",
            "repeated path",
            "path not a string",
        ],
    )
    def test_many_allowances_that_cannot_be_keyed_come_back_exactly(
        self, backend: StorageBackend, case: str
    ) -> None:
        """Whatever a backend does with many allowances and paths, an odd list comes back as
        written (a keyed backend keeps such a state whole)."""
        allowances: list[Any] = [allowance_data(i) for i in range(KEYED_STATE_MIN + 10)]
        paths: list[Any] = sorted_paths(10)
        if case == "repeated id":
            allowances.append(allowances[0])
        elif case == "allowance without id":
            allowances.append({"no": "id"})
        elif case == "allowance not an object":
            allowances.append("text")
        elif case == "unsorted paths":
            paths.reverse()
        elif case == "repeated path":
            paths.append(paths[0])
        else:
            paths.append(7)
        state = whole_state(allowances, paths)
        write(backend, state, None)
        assert loaded_state(backend) == state

    def _takes_deltas(self, backend: StorageBackend) -> None:
        if not takes_state_delta(backend):
            pytest.skip(f"{backend.name} does not take state deltas (accepts_state_delta)")

    def test_a_delta_changes_allowances_in_place_and_adds_new_ones_last(
        self, backend: StorageBackend
    ) -> None:
        self._takes_deltas(backend)
        allowances = [allowance_data(i) for i in range(KEYED_STATE_MIN + 6)]
        paths = sorted_paths(10)
        rev = write(backend, whole_state(allowances, paths), None)
        changed = dict(allowances[5], uses_remaining=3)
        new = [allowance_data(100), allowance_data(101)]
        delta = StateDelta(
            allowances={
                allowances[2]["id"]: None,
                new[1]["id"]: new[1],
                allowances[5]["id"]: changed,
                new[0]["id"]: new[0],
            },
            remembered_paths={paths[0]: False, "/zz": True, "/0": True},
            full_state=no_full_state,
        )
        partial = partial_state(whole_state([], []))
        partial["token_count"] = 9
        rev = write(backend, partial, rev, delta, messages=[{"role": "user", "content": "m"}])
        expected = [a for a in allowances if a["id"] != allowances[2]["id"]]
        expected[4] = changed
        expected += [new[1], new[0]]
        loaded = loaded_state(backend)
        assert loaded["allowances"] == expected
        assert loaded["escape_state"] == {
            "remembered_paths": sorted(["/0", "/zz", *paths[1:]]),
            "note": "kept",
        }
        assert loaded["token_count"] == 9
        record = backend.load(keyed_state.SID)
        assert record is not None and record.revision == rev == 2 and len(record.messages) == 1

    def test_a_delta_for_a_state_stored_whole_writes_the_full_state(
        self, backend: StorageBackend
    ) -> None:
        self._takes_deltas(backend)
        small = whole_state([allowance_data(i) for i in range(3)], ["/a"])
        rev = write(backend, small, None)
        whole = whole_state([allowance_data(i) for i in range(5)], ["/a", "/b"])
        delta = StateDelta({"x": None}, {"/b": True}, lambda: whole)
        write(backend, partial_state(whole), rev, delta, [{"role": "user", "content": "m"}])
        assert loaded_state(backend) == whole

    def test_a_stale_delta_changes_nothing(self, backend: StorageBackend) -> None:
        self._takes_deltas(backend)
        state = whole_state([allowance_data(i) for i in range(KEYED_STATE_MIN + 6)], [])
        rev = write(backend, state, None)
        delta = StateDelta({state["allowances"][0]["id"]: None}, {"/x": True}, no_full_state)
        with pytest.raises(ConcurrencyError):
            write(backend, partial_state(state), rev + 1, delta)
        with pytest.raises(ConcurrencyError):
            write(backend, partial_state(state), rev, delta, base=3)
        assert loaded_state(backend) == state
        record = backend.load(keyed_state.SID)
        assert record is not None and record.revision == rev

    def test_load_decoded_if_offered_matches_load(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        """``load_decoded`` (optional) returns what ``load`` does, messages as ``Message``."""
        if not isinstance(backend, DecodedLoader):
            pytest.skip(f"{backend.name} has no load_decoded (optional)")
        decoded = backend.load_decoded
        session = AgentSession("p")
        oracle = Message.from_json({"role": "oracle", "content": "an unknown role"})
        for message in [*sample_messages(), oracle]:
            session.add_message(message)
        store.save(session)
        missing = str(uuid.uuid4())
        assert decoded(missing) is None and decoded(missing, tail=2) is None
        for tail in (None, 0, 3, 1000):
            plain = backend.load(session.id.bare, tail=tail)
            built = decoded(session.id.bare, tail=tail)
            assert plain is not None and built is not None
            assert all(isinstance(m, Message) for m in built.messages)
            assert [m.to_json() for m in built.messages] == plain.messages
            assert [m.is_known for m in built.messages] == [
                Message.from_json(m).is_known for m in plain.messages
            ]
            assert (built.state, built.revision, built.message_count, built.message_offset) == (
                plain.state,
                plain.revision,
                plain.message_count,
                plain.message_offset,
            )

    def test_load_of_a_missing_session_is_none(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        store.save(_session_with(1))
        missing = str(uuid.uuid4())
        assert store.load(missing) is None
        assert store.load(missing, tail=3) is None
        assert store.load_document(missing) is None
        assert backend.load(missing) is None
        assert backend.history(missing) == []

    # -- incremental saves -----------------------------------------------------------------------

    def test_a_save_sends_only_the_new_messages(self, backend: StorageBackend) -> None:
        recorder = _RecordingBackend(backend)
        store = SessionStore(recorder)
        session = _session_with(3)
        first = store.save(session)
        assert recorder.writes[-1].expected_revision is None
        assert recorder.writes[-1].messages == _as_json(session.messages)

        session.add_message(Message.user("four"))
        session.add_message(Message.assistant("five"))
        second = store.save(session)
        change = recorder.writes[-1]
        assert change.expected_revision == first
        assert change.base_count == 3 and not change.replace
        assert change.messages == _as_json(session.messages[3:])
        assert second > first
        assert len(backend.history(session.id.bare)) == 5

        session.metadata.title = "state only"
        third = store.save(session)
        assert recorder.writes[-1].messages == []
        assert third > second
        record = backend.load(session.id.bare)
        assert record is not None
        assert record.revision == third
        assert record.state["metadata"]["title"] == "state only"
        assert record.messages == _as_json(session.messages)
        assert len(backend.history(session.id.bare)) == 5

    def test_saving_again_without_changes_does_not_duplicate_messages(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = _session_with(4)
        for _ in range(3):
            store.save(session)
        loaded = store.load(session.id)
        assert loaded is not None
        store.save(loaded)
        store.save(loaded)
        loaded.add_message(Message.user("after load"))
        store.save(loaded)
        again = store.load(session.id)
        assert again is not None
        assert _as_json(again.messages) == _as_json([*session.messages, Message.user("after load")])
        assert len(backend.history(session.id.bare)) == 5
        [summary] = store.list_sessions()
        assert summary.message_count == 5

    # -- tail loads ------------------------------------------------------------------------------

    def test_tail_load_returns_the_last_messages_and_their_offset(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = _session_with(10)
        store.save(session)
        sid = session.id.bare
        for tail, expected_len in ((0, 0), (1, 1), (3, 3), (10, 10), (25, 10)):
            record = backend.load(sid, tail=tail)
            assert record is not None
            assert len(record.messages) == expected_len
            assert record.message_count == 10
            assert record.message_offset == 10 - expected_len
            assert record.messages == _as_json(session.messages[10 - expected_len :])
        whole = backend.load(sid)
        assert whole is not None and whole.message_offset == 0 and len(whole.messages) == 10
        loaded = store.load(session.id, tail=3)
        assert loaded is not None
        assert _as_json(loaded.messages) == _as_json(session.messages[-3:])
        assert loaded.token_count == session.token_count

    def test_appending_to_a_tail_loaded_session_keeps_every_message(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = _session_with(10)
        store.save(session)
        tail = store.load(session.id, tail=2)
        assert tail is not None
        tail.add_message(Message.assistant("eleven"))
        store.save(tail)
        tail.add_message(Message.user("twelve"))
        store.save(tail)
        full = store.load(session.id)
        assert full is not None
        expected = [*session.messages, Message.assistant("eleven"), Message.user("twelve")]
        assert _as_json(full.messages) == _as_json(expected)
        assert [h.message for h in backend.history(session.id.bare)] == _as_json(expected)

    # -- revisions -------------------------------------------------------------------------------

    def test_revisions_increase_with_every_save_and_append(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = _session_with(1)
        seen = [store.save(session)]
        session.add_message(Message.user("two"))
        seen.append(store.save(session))
        seen.append(store.append_messages(session.id, [Message.user("three")]))
        assert seen == sorted(set(seen))
        record = backend.load(session.id.bare)
        assert record is not None and record.revision == seen[-1]
        loaded = store.load(session.id)
        assert loaded is not None and store.revision_of(loaded) == seen[-1]
        assert store.revision_of(AgentSession("never saved")) is None

    def test_a_stale_save_raises_and_keeps_the_first_writers_messages(
        self, store: SessionStore
    ) -> None:
        original = _session_with(2)
        store.save(original)
        first = store.load(original.id)
        second = store.load(original.id)
        assert first is not None and second is not None
        first.add_message(Message.user("from the first writer"))
        first.metadata.title = "first"
        second.add_message(Message.user("from the second writer"))
        second.metadata.title = "second"
        store.save(first)
        with pytest.raises(ConcurrencyError):
            store.save(second)
        stored = store.load(original.id)
        assert stored is not None
        assert _as_json(stored.messages) == _as_json(first.messages)
        assert stored.metadata.title == "first"

        retry = store.load(original.id)
        assert retry is not None
        retry.add_message(Message.user("from the second writer"))
        store.save(retry)
        final = store.load(original.id)
        assert final is not None
        assert [m.text() for m in final.messages] == [
            "m0",
            "m1",
            "from the first writer",
            "from the second writer",
        ]

    def test_saving_a_new_session_object_over_an_existing_id_is_a_conflict(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = _session_with(2)
        store.save(session)
        impostor = AgentSession.with_id(session.id, bytes(8), "impostor")
        impostor.add_message(Message.user("overwrite?"))
        with pytest.raises(ConcurrencyError):
            store.save(impostor)
        with pytest.raises(ConcurrencyError):
            SessionStore(backend).save(impostor)
        stored = store.load(session.id)
        assert stored is not None
        assert stored.system_prompt == "p"
        assert _as_json(stored.messages) == _as_json(session.messages)

    def test_the_backend_refuses_writes_based_on_another_revision(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = _session_with(2)
        store.save(session)
        session.add_message(Message.user("m2"))
        current = store.save(session)
        extra = [Message.user("never stored")]
        for expected in (None, current - 1, current + 1):
            with pytest.raises(ConcurrencyError):
                backend.write(_change(session, expected=expected, messages=extra, base=3))
        record = backend.load(session.id.bare)
        assert record is not None
        assert record.revision == current
        assert record.messages == _as_json(session.messages)
        ghost = _session_with(1)
        with pytest.raises(ConcurrencyError):
            backend.write(_change(ghost, expected=1, messages=ghost.messages, base=0))
        assert backend.load(ghost.id.bare) is None
        ok = backend.write(_change(session, expected=current, messages=extra, base=3))
        assert ok > current
        revision, count = backend.append(session.id.bare, [Message.user("raw").to_json()])
        assert revision > ok and count == 5
        record = backend.load(session.id.bare)
        assert record is not None
        assert record.revision == revision and record.message_count == 5
        assert record.messages[-2:] == _as_json([*extra, Message.user("raw")])

    def test_concurrent_saves_from_threads_let_exactly_one_win(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = _session_with(1)
        store.save(session)
        stores = [SessionStore(backend) for _ in range(self.thread_count)]
        copies = [s.load(session.id) for s in stores]
        assert all(copy is not None for copy in copies)
        barrier = threading.Barrier(self.thread_count, timeout=60)
        outcomes: list[str] = []
        lock = threading.Lock()

        def run(index: int) -> None:
            copy = copies[index]
            assert copy is not None
            copy.add_message(Message.user(f"writer {index}"))
            barrier.wait()
            try:
                stores[index].save(copy)
                result = f"won {index}"
            except ConcurrencyError:
                result = "lost"
            except BaseException as exc:  # reported below, not swallowed
                result = f"error {exc!r}"
            with lock:
                outcomes.append(result)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(self.thread_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not [o for o in outcomes if o.startswith("error")], outcomes
        winners = [o for o in outcomes if o.startswith("won")]
        assert len(outcomes) == self.thread_count and len(winners) == 1, outcomes
        stored = store.load(session.id)
        assert stored is not None
        assert [m.text() for m in stored.messages] == ["m0", f"writer {winners[0].split()[1]}"]

    def test_concurrent_appends_from_threads_lose_nothing(self, store: SessionStore) -> None:
        session = _session_with(1)
        store.save(session)
        per_thread = 10
        errors: list[BaseException] = []

        def run(index: int) -> None:
            try:
                for j in range(per_thread):
                    store.append_messages(session.id, [Message.user(f"t{index}-{j}")])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(self.thread_count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        stored = store.load(session.id)
        assert stored is not None
        texts = [m.text() or "" for m in stored.messages]
        assert len(texts) == 1 + self.thread_count * per_thread
        for index in range(self.thread_count):
            mine = [t for t in texts if t.startswith(f"t{index}-")]
            assert mine == [f"t{index}-{j}" for j in range(per_thread)]

    # -- append without a revision check ---------------------------------------------------------

    def test_append_messages_skips_the_revision_check_and_makes_loaded_copies_stale(
        self, store: SessionStore
    ) -> None:
        session = _session_with(2)
        store.save(session)
        loaded = store.load(session.id)
        assert loaded is not None
        store.append_messages(session.id, [Message.user("a1"), Message.assistant("a2")])
        store.append_messages(session.id.bare, [Message.user("a3")])
        stored = store.load(session.id)
        assert stored is not None
        assert [m.text() for m in stored.messages] == ["m0", "m1", "a1", "a2", "a3"]
        loaded.add_message(Message.user("stale"))
        with pytest.raises(ConcurrencyError):
            store.save(loaded)
        [summary] = store.list_sessions()
        assert summary.message_count == 5

    def test_append_to_a_missing_session_raises_session_not_found(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        missing = str(uuid.uuid4())
        with pytest.raises(SessionNotFound) as info:
            store.append_messages(missing, [Message.user("lost")])
        assert isinstance(info.value, StorageError)
        with pytest.raises(SessionNotFound):
            backend.append(missing, [Message.user("lost").to_json()])
        assert store.load(missing) is None
        assert store.count() == 0

    # -- replace ---------------------------------------------------------------------------------

    def test_replacing_messages_keeps_the_old_ones_in_history(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = _session_with(3)
        store.save(session)
        originals = list(session.messages)
        session.clear_messages()
        summary = Message.system("Summary of m0..m2")
        session.add_message(summary)
        store.save(session)
        loaded = store.load(session.id)
        assert loaded is not None
        assert _as_json(loaded.messages) == _as_json([summary])
        assert _as_json(store.history(session.id)) == _as_json([*originals, summary])

        loaded.add_message(Message.user("next"))
        store.save(loaded)
        entries = backend.history(session.id.bare)
        assert [e.message for e in entries] == _as_json([*originals, summary, Message.user("next")])
        assert [e.active for e in entries] == [False, False, False, True, True]
        seqs = [e.seq for e in entries]
        assert seqs == sorted(set(seqs))
        again = store.load(session.id)
        assert again is not None
        assert _as_json(again.messages) == _as_json([summary, Message.user("next")])
        record = backend.load(session.id.bare, tail=1)
        assert record is not None
        assert record.message_count == 2 and record.message_offset == 1
        [listed] = store.list_sessions()
        assert listed.message_count == 2

    @pytest.mark.parametrize("edit", sorted(MESSAGE_EDITS))
    def test_every_edit_of_the_messages_is_saved_and_keeps_the_old_ones(
        self, store: SessionStore, edit: str
    ) -> None:
        session = _session_with(5)
        store.save(session)
        originals = list(session.messages)
        MESSAGE_EDITS[edit](session)
        expected = _as_json(session.messages)
        store.save(session)
        loaded = store.load(session.id)
        assert loaded is not None
        assert _as_json(loaded.messages) == expected, edit
        history = _as_json(store.history(session.id))
        assert history[:5] == _as_json(originals), edit
        if expected:
            assert history[-len(expected) :] == expected, edit
        store.save(session)  # nothing changed: nothing is written twice
        assert _as_json(store.history(session.id)) == history
        session.add_message(Message.user("after the edit"))
        store.save(session)
        again = store.load(session.id)
        assert again is not None
        assert _as_json(again.messages) == [*expected, Message.user("after the edit").to_json()]

    @pytest.mark.parametrize("value", sorted(UNSTORABLE_VALUES))
    def test_values_no_store_can_keep_are_refused_before_anything_is_written(
        self, backend: StorageBackend, store: SessionStore, value: str
    ) -> None:
        bad, where = UNSTORABLE_VALUES[value]
        session = _session_with(2)
        store.save(session)
        revision = store.revision_of(session)
        message = Message.assistant_with_tools([ToolCall(id="c1", name="t", arguments=bad)])
        session.add_message(message)
        with pytest.raises(SerializationError, match=rf"session {session.id.bare}: message 2"):
            store.save(session)
        with pytest.raises(SerializationError, match=where):
            store.append_messages(session.id, [message])
        with pytest.raises(SerializationError, match="the state"):
            fresh = _session_with(1)
            fresh.extra_fields["odd"] = bad
            store.save(fresh)
        assert store.load(fresh.id) is None
        loaded = store.load(session.id)
        assert loaded is not None and store.revision_of(loaded) == revision
        assert _as_json(loaded.messages) == _as_json(session.messages[:2])
        session.messages.pop()
        session.add_message(Message.user("storable"))
        store.save(session)  # the session still saves once the content is gone

    def test_editing_inside_a_tail_loaded_window_is_refused(self, store: SessionStore) -> None:
        session = _session_with(5)
        store.save(session)
        tail = store.load(session.id, tail=2)
        assert tail is not None
        tail.messages[0] = Message.user("EDITED")
        with pytest.raises(StorageError, match="only the last 2 of 5"):
            store.save(tail)
        tail.messages.pop(0)
        with pytest.raises(StorageError, match="only the last 2 of 5"):
            store.save(tail)
        loaded = store.load(session.id)
        assert loaded is not None
        assert _as_json(loaded.messages) == _as_json(session.messages)

    def test_a_create_can_carry_archived_messages_in_the_same_write(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = AgentSession("p")
        old = _texts(3, "old")
        active = [Message.system("summary"), Message.user("a1")]
        revision = backend.write(
            _change(session, expected=None, messages=active, base=0, archived=old)
        )
        assert _as_json(store.history(session.id)) == _as_json([*old, *active])
        entries = backend.history(session.id.bare)
        assert [e.active for e in entries] == [False, False, False, True, True]
        seqs = [e.seq for e in entries]
        assert seqs == sorted(set(seqs))
        record = backend.load(session.id.bare)
        assert record is not None
        assert record.revision == revision
        assert record.messages == _as_json(active)
        assert record.message_count == 2 and record.message_offset == 0
        tail = backend.load(session.id.bare, tail=1)
        assert tail is not None
        assert tail.messages == _as_json(active[1:]) and tail.message_offset == 1
        [listed] = store.list_sessions()
        assert listed.message_count == 2

        loaded = store.load(session.id)
        assert loaded is not None
        assert _as_json(loaded.messages) == _as_json(active)
        loaded.add_message(Message.user("a2"))
        store.save(loaded)
        again = store.load(session.id)
        assert again is not None
        assert _as_json(again.messages) == _as_json([*active, Message.user("a2")])
        entries = backend.history(session.id.bare)
        assert [e.message for e in entries] == _as_json([*old, *active, Message.user("a2")])
        assert [e.active for e in entries] == [False] * 3 + [True] * 3
        seqs = [e.seq for e in entries]
        assert seqs == sorted(set(seqs))

    def test_a_replace_can_carry_archived_messages_in_the_same_write(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = _session_with(2)
        current = store.save(session)
        imported = _texts(2, "imported")
        active = [Message.system("summary")]
        revision = backend.write(
            _change(
                session, expected=current, messages=active, base=2, replace=True, archived=imported
            )
        )
        assert revision > current
        entries = backend.history(session.id.bare)
        assert [e.message for e in entries] == _as_json([*_texts(2), *imported, *active])
        assert [e.active for e in entries] == [False, False, False, False, True]
        seqs = [e.seq for e in entries]
        assert seqs == sorted(set(seqs))
        loaded = store.load(session.id)
        assert loaded is not None
        assert _as_json(loaded.messages) == _as_json(active)
        record = backend.load(session.id.bare, tail=5)
        assert record is not None
        assert record.message_count == 1 and record.messages == _as_json(active)
        loaded.add_message(Message.user("next"))
        store.save(loaded)
        again = store.load(session.id)
        assert again is not None
        assert _as_json(again.messages) == _as_json([*active, Message.user("next")])

    def test_archived_messages_on_a_plain_append_are_refused(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        session = _session_with(2)
        current = store.save(session)
        with pytest.raises(ValueError, match="archived"):
            backend.write(
                _change(
                    session,
                    expected=current,
                    messages=[Message.user("m2")],
                    base=2,
                    archived=[Message.user("never stored")],
                )
            )
        record = backend.load(session.id.bare)
        assert record is not None
        assert record.revision == current
        assert record.messages == _as_json(session.messages)
        assert [e.message for e in backend.history(session.id.bare)] == _as_json(session.messages)

    def test_archived_messages_survive_a_reopen(
        self, backend: StorageBackend, store: SessionStore, data_dir: Path
    ) -> None:
        session = AgentSession("p")
        old = _texts(2, "old")
        active = [Message.system("summary"), Message.user("a1")]
        backend.write(_change(session, expected=None, messages=active, base=0, archived=old))
        before = backend.history(session.id.bare)

        other = self._reopen(backend, data_dir)
        assert other.history(session.id.bare) == before
        reopened = SessionStore(other)
        loaded = reopened.load(session.id)
        assert loaded is not None
        assert _as_json(loaded.messages) == _as_json(active)
        loaded.add_message(Message.user("a2"))
        reopened.save(loaded)
        entries = other.history(session.id.bare)
        assert [e.message for e in entries] == _as_json([*old, *active, Message.user("a2")])
        assert [e.active for e in entries] == [False, False, True, True, True]

    # -- listing ---------------------------------------------------------------------------------

    def test_listing_is_newest_activity_first(self, store: SessionStore) -> None:
        sessions = []
        for i in range(5):
            session = _session_with(1, prefix=f"s{i}-")
            store.save(session)
            sessions.append(session)
            self._tick()
        expected = [s.id.bare for s in reversed(sessions)]
        assert [s.id for s in store.list_sessions()] == expected

        sessions[0].add_message(Message.user("activity"))
        store.save(sessions[0])
        self._tick()
        listed = [s.id for s in store.list_sessions()]
        assert listed[0] == sessions[0].id.bare

        store.append_messages(sessions[2].id, [Message.user("appended")])
        rows = store.list_sessions()
        assert [r.id for r in rows][:2] == [sessions[2].id.bare, sessions[0].id.bare]
        assert all(a.updated_at >= b.updated_at for a, b in itertools.pairwise(rows))

    def test_paging_has_no_overlaps_or_gaps(self, store: SessionStore) -> None:
        created = set()
        for i in range(25):
            session = _session_with(1, prefix=f"p{i}-")
            store.save(session)
            created.add(session.id.bare)
            if i % 5 == 0:
                self._tick()
        everything = [s.id for s in store.list_sessions(limit=100)]
        assert len(everything) == 25 and set(everything) == created
        pages = [store.list_sessions(limit=7, offset=offset) for offset in range(0, 25, 7)]
        assert [len(p) for p in pages] == [7, 7, 7, 4]
        assert [s.id for page in pages for s in page] == everything
        assert store.list_sessions(limit=7, offset=25) == []
        assert store.list_sessions(limit=0) == []
        assert len(store.list_sessions()) == 25
        assert store.count() == 25
        rows = store.list_sessions(limit=100)
        keys = [(-r.updated_at.timestamp(), r.id) for r in rows]
        assert keys == sorted(keys)

    def test_listing_filters_by_exact_workspace_and_counts(
        self, store: SessionStore, tmp_path: Path
    ) -> None:
        root = tmp_path.resolve()
        spaces = {
            "main": root / "ws",
            "longer": root / "ws2",
            "child": root / "ws" / "sub",
            "wildcard": root / "w_",
            "quoted": root / 'it\'s "q" %',
        }
        ids: dict[str, list[str]] = {name: [] for name in spaces}
        for name, path in spaces.items():
            for _ in range(2 if name == "main" else 1):
                session = _session_with(1).with_workspace(path)
                store.save(session)
                ids[name].append(session.id.bare)
        store.save(_session_with(1))
        for name, path in spaces.items():
            listed = store.list_sessions(workspace=path)
            assert sorted(s.id for s in listed) == sorted(ids[name]), name
            assert all(s.workspace_path == str(path) for s in listed)
            assert store.count(workspace=path) == len(ids[name])
        assert store.count(workspace=root / "nowhere") == 0
        assert store.list_sessions(workspace=root / "nowhere") == []
        assert store.count() == 7
        main = store.list_sessions(workspace=spaces["main"])
        assert store.list_sessions(workspace=spaces["main"], limit=1, offset=1) == main[1:]

    def test_summaries_carry_title_counts_workspace_model_and_parent(
        self, store: SessionStore, workspace: Path
    ) -> None:
        parent = _session_with(3).with_workspace(workspace).with_model("model-p")
        parent.metadata.title = "The parent"
        child = parent.child("child prompt")
        child.add_message(Message.user("child work"))
        store.save(parent)
        store.save(child)
        rows = {s.id: s for s in store.list_sessions()}
        p, c = rows[parent.id.bare], rows[child.id.bare]
        assert p.title == "The parent" and p.display_title() == "The parent"
        assert p.message_count == 3 and p.token_count == parent.token_count > 0
        assert p.workspace_path == str(workspace) and p.model == "model-p"
        assert p.parent_id is None
        assert p.created_at == parent.created_at
        assert c.parent_id == parent.id.bare
        assert c.title is None and c.display_title() == f"Session {child.id.bare[:8]}"
        assert c.message_count == 1 and c.token_count == child.token_count
        assert c.workspace_path == str(workspace) and c.model == "model-p"
        assert p.updated_at >= p.created_at
        loaded_child = store.load(child.id)
        assert loaded_child is not None and loaded_child.parent_id == parent.id

    # -- delete, prune, most recent --------------------------------------------------------------

    def test_listing_ties_are_ordered_by_id(self, backend: StorageBackend) -> None:
        """Sessions whose last activity is the same instant are listed by id ascending, not by
        title nor by the order they were written in, on every page."""
        moment = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
        sessions = sorted((_session_with(1) for _ in range(6)), key=lambda s: s.id.bare)
        for i, session in enumerate(reversed(sessions)):  # newest id first, titles ascending
            session.metadata.title = f"title {i}"
            backend.write(
                _change(session, expected=None, messages=session.messages, base=0,
                        updated_at=moment)
            )
        expected = [s.id.bare for s in sessions]
        assert [row.id for row in backend.list_sessions()] == expected
        paged = [
            row.id for offset in range(0, 6, 4) for row in backend.list_sessions(limit=4,
                                                                                 offset=offset)
        ]
        assert paged == expected

    def test_listing_rows_carry_the_stored_revision(self, backend: StorageBackend) -> None:
        """After every kind of write (create, save, append, replace) the listing row's
        ``revision`` is the one the write returned and ``load`` gives."""
        session = _session_with(2)
        sid = session.id.bare

        def check(revision: int) -> None:
            record = backend.load(sid)
            assert record is not None and record.revision == revision
            rows = {row.id: row for row in backend.list_sessions()}
            assert rows[sid].revision == revision, f"listing row of {sid}"

        revision = backend.write(_change(session, expected=None, messages=session.messages,
                                         base=0))
        check(revision)
        revision = backend.write(
            _change(session, expected=revision, messages=[Message.user("m2")], base=2)
        )
        check(revision)
        revision, _count = backend.append(sid, [Message.user("m3").to_json()])
        check(revision)
        revision = backend.write(
            _change(session, expected=revision, messages=[Message.user("x")], base=4,
                    replace=True)
        )
        check(revision)

    def test_a_write_keeps_the_summarys_updated_at_and_an_append_stamps_now(
        self, backend: StorageBackend
    ) -> None:
        """``write`` stores ``change.summary.updated_at`` as given (``import`` and ``migrate``
        carry a session's last activity over); ``append`` is activity, stamped now. Both come
        back timezone-aware, in UTC, from ``load`` and from the listing."""
        session = _session_with(2)
        sid = session.id.bare

        def check(moment: datetime) -> None:
            record = backend.load(sid)
            assert record is not None
            row = {r.id: r for r in backend.list_sessions()}[sid]
            for where, value in (("load", record.updated_at), ("listing", row.updated_at)):
                assert value.utcoffset() == timedelta(0), f"{where}: {value!r} is not UTC"
                assert value == moment, f"{where}: updated_at {value} instead of {moment}"

        first = datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC)
        revision = backend.write(
            _change(session, expected=None, messages=session.messages, base=0, updated_at=first)
        )
        check(first)
        second = datetime(2021, 3, 5, 0, 0, 0, tzinfo=UTC)
        revision = backend.write(
            _change(session, expected=revision, messages=[Message.user("m2")], base=2,
                    updated_at=second)
        )
        check(second)
        third = datetime(2022, 1, 1, 12, 0, 0, tzinfo=UTC)
        revision = backend.write(
            _change(session, expected=revision, messages=[Message.user("r")], base=3,
                    replace=True, updated_at=third)
        )
        check(third)
        before = utcnow() - timedelta(seconds=1)
        backend.append(sid, [Message.user("now").to_json()])
        record = backend.load(sid)
        assert record is not None
        assert record.updated_at >= before, (
            f"append: updated_at {record.updated_at} is not now (after {before})"
        )
        assert record.updated_at.utcoffset() == timedelta(0)

    def test_a_save_based_on_another_message_count_is_a_conflict(
        self, backend: StorageBackend
    ) -> None:
        """A save with the stored revision but a ``base_count`` that is not the stored number
        of active messages would append in the wrong place: ``ConcurrencyError``, nothing
        written."""
        session = _session_with(3)
        first = backend.write(_change(session, expected=None, messages=session.messages, base=0))
        extra = [Message.user("misplaced")]
        for base in (2, 4, 0):
            with pytest.raises(ConcurrencyError):
                backend.write(_change(session, expected=first, messages=extra, base=base))
        record = backend.load(session.id.bare)
        assert record is not None
        assert record.revision == first and record.messages == _as_json(session.messages)
        assert backend.write(_change(session, expected=first, messages=extra, base=3)) > first

    cross_process_appends: ClassVar[int] = 150
    """Appends each of the two processes makes in the cross-process locking test."""

    def test_two_processes_appending_to_one_session_lose_nothing(
        self, backend: StorageBackend, data_dir: Path, tmp_path: Path
    ) -> None:
        """Two instances in two processes (``reopen_backend`` in a forked child) append to one
        session at once: every message is kept and every append got its own revision, so the
        backend serializes writers across processes, not only threads."""
        if type(self).reopen_backend is StorageConformance.reopen_backend:
            pytest.skip(f"{type(self).__name__}: reopen_backend gives nothing (not persistent)")
        session = _session_with(1)
        sid = session.id.bare
        start = backend.write(_change(session, expected=None, messages=session.messages, base=0))
        count = self.cross_process_appends
        ctx = multiprocessing.get_context("fork")
        go = ctx.Event()
        report = tmp_path / "child-revisions.json"

        def child() -> None:
            other = self.reopen_backend(backend, data_dir)
            assert other is not None
            go.wait(30)
            revisions = [
                other.append(sid, [Message.user(f"child {i}").to_json()])[0]
                for i in range(count)
            ]
            other.close()
            report.write_text(json.dumps(revisions))

        process = ctx.Process(target=child)
        process.start()
        try:
            go.set()
            mine = [
                backend.append(sid, [Message.user(f"parent {i}").to_json()])[0]
                for i in range(count)
            ]
        finally:
            process.join(120)
        assert process.exitcode == 0, "the second process failed (its traceback is above)"
        theirs = json.loads(report.read_text())
        revisions = mine + theirs
        assert len(set(revisions)) == len(revisions), "two appends got the same revision"
        assert min(revisions) > start
        record = backend.load(sid)
        assert record is not None
        assert record.message_count == 1 + 2 * count, "appends were lost"
        texts = [Message.from_json(m).text() or "" for m in record.messages[1:]]
        for who in ("parent", "child"):  # each process's messages, all there and in its order
            assert [t for t in texts if t.startswith(who)] == [f"{who} {i}" for i in range(count)]

    def test_delete_removes_the_session_and_its_history(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        doomed, kept = _session_with(2), _session_with(1)
        store.save(doomed)
        doomed.clear_messages()
        doomed.add_message(Message.system("summary"))
        store.save(doomed)
        store.save(kept)
        loaded_before = store.load(doomed.id)
        assert loaded_before is not None
        assert store.delete(doomed.id) is True
        assert store.delete(doomed.id) is False
        assert store.load(doomed.id) is None
        assert backend.history(doomed.id.bare) == []
        assert [s.id for s in store.list_sessions()] == [kept.id.bare]
        assert store.count() == 1
        assert store.load(kept.id) is not None
        with pytest.raises(SessionNotFound):
            store.append_messages(doomed.id, [Message.user("ghost")])
        loaded_before.add_message(Message.user("resurrect?"))
        with pytest.raises(ConcurrencyError):
            store.save(loaded_before)
        assert store.load(doomed.id) is None
        assert store.delete(str(uuid.uuid4())) is False

    def test_prune_by_last_activity(self, store: SessionStore) -> None:
        old, new = _session_with(1), _session_with(1)
        store.save(old)
        self._tick()
        middle = utcnow()
        self._tick()
        store.save(new)
        assert store.prune(older_than=timedelta(hours=1)) == []
        assert store.prune(older_than=timedelta(0), now=middle, dry_run=True) == [old.id.bare]
        assert store.count() == 2
        assert store.prune(older_than=timedelta(0), now=middle) == [old.id.bare]
        assert store.load(old.id) is None and store.load(new.id) is not None
        future = utcnow() + timedelta(days=30)
        assert store.prune(older_than=timedelta(days=1), now=future, dry_run=True) == [new.id.bare]
        assert store.count() == 1
        assert store.prune(older_than=timedelta(days=1), now=future) == [new.id.bare]
        assert store.count() == 0 and store.list_sessions() == []

    def test_most_recent_is_the_latest_activity(self, store: SessionStore) -> None:
        assert store.most_recent() is None
        first, second = _session_with(1, prefix="first"), _session_with(1, prefix="second")
        store.save(first)
        self._tick()
        store.save(second)
        recent = store.most_recent()
        assert recent is not None and recent.id == second.id
        assert _as_json(recent.messages) == _as_json(second.messages)
        self._tick()
        first.add_message(Message.user("again"))
        store.save(first)
        recent = store.most_recent()
        assert recent is not None and recent.id == first.id

    # -- workspace state -------------------------------------------------------------------------

    def test_workspace_state_round_trip_and_isolation(
        self, store: SessionStore, workspace: Path, tmp_path: Path
    ) -> None:
        other = (tmp_path / "other-workspace").resolve()
        other.mkdir()
        escape = (tmp_path / "escape").resolve()
        escape.mkdir()
        empty = store.load_workspace_state(workspace)
        assert empty.allowances == [] and empty.budget is None and empty.escape is None

        grant = Allowance.create(
            FilePattern(pattern=f"{workspace}/**", permission=Permission.WRITE),
            session_only=False,
            workspace_root=workspace,
        )
        budget = WorkspaceBudgetSnapshot(total_spent_usd=3.5, last_updated=utcnow())
        escapes = EscapeState(remembered_paths=[str(escape)])
        state = WorkspaceState(allowances=[grant], budget=budget, escape=escapes)
        store.save_workspace_state(workspace, state)

        loaded = store.load_workspace_state(workspace)
        assert loaded.allowances == [grant]
        assert loaded.budget == budget
        assert loaded.escape == escapes
        elsewhere = store.load_workspace_state(other)
        assert elsewhere.allowances == [] and elsewhere.budget is None
        assert elsewhere.escape is None

        store.save_workspace_state(other, WorkspaceState())
        assert store.load_workspace_state(workspace).allowances == [grant]
        assert store.load_workspace_state(other).allowances == []

    def test_attach_workspace_and_save_workspace_of_round_trip(
        self, store: SessionStore, workspace: Path, tmp_path: Path
    ) -> None:
        first_escape = (tmp_path / "escape-1").resolve()
        second_escape = (tmp_path / "escape-2").resolve()
        other = (tmp_path / "other-workspace").resolve()
        for path in (first_escape, second_escape, other):
            path.mkdir()
        old_grant = Allowance.create(
            ExactTool(server="fs", tool="read"), session_only=False, workspace_root=workspace
        )
        store.save_workspace_state(
            workspace,
            WorkspaceState(
                allowances=[old_grant],
                budget=WorkspaceBudgetSnapshot(total_spent_usd=2.0, last_updated=utcnow()),
                escape=EscapeState(remembered_paths=[str(first_escape)]),
            ),
        )
        session = AgentSession("p")
        tracker = store.attach_workspace(session, workspace, max_usd=10.0)
        assert session.workspace_budget_tracker is tracker
        assert tracker.spent() == 2.0 and tracker.max_usd() == 10.0
        assert session.workspace_path == workspace
        assert old_grant.id in {a.id for a in session.allowance_store.all()}
        assert session.escape_handler.is_allowed(first_escape)

        tracker.record_cost(1.5)
        new_grant = Allowance.create(
            ExactTool(server="fs", tool="write"), session_only=False, workspace_root=workspace
        )
        session.import_workspace_allowances([new_grant])
        session.escape_handler.process_decision(
            EscapeRequest.new(second_escape, EscapeOperation.WRITE, "w"),
            EscapeDecision.ALLOW_ALWAYS,
        )
        store.save_workspace_of(session)

        later = AgentSession("q")
        again = store.attach_workspace(later, workspace)
        assert again.spent() == 3.5
        assert {a.id for a in later.export_workspace_allowances()} == {old_grant.id, new_grant.id}
        assert later.escape_handler.is_allowed(first_escape)
        assert later.escape_handler.is_allowed(second_escape)

        stranger = AgentSession("r")
        fresh = store.attach_workspace(stranger, other)
        assert fresh.spent() == 0.0
        assert stranger.export_workspace_allowances() == []
        assert not stranger.escape_handler.is_allowed(first_escape)
        with pytest.raises(StorageError):
            store.save_workspace_of(AgentSession("no workspace"))

    def _second_store(self, backend: StorageBackend, data_dir: Path) -> SessionStore:
        """Another ``SessionStore`` on the same data: a second open instance (another process,
        as far as the backend can tell) when the backend persists, else the same backend."""
        other = self._maybe_reopen(backend, data_dir, close_first=False)
        return SessionStore(other if other is not None else backend)

    def test_workspace_spend_from_two_stores_adds_up(
        self, backend: StorageBackend, store: SessionStore, data_dir: Path, workspace: Path
    ) -> None:
        """Issue 14 item 1: the stored total is the sum of what every session charged, not the
        last saver's snapshot (it was 8.0 spent, 4.0 stored)."""
        second = self._second_store(backend, data_dir)
        first_session, second_session = AgentSession("a"), AgentSession("b")
        first = store.attach_workspace(first_session, workspace, max_usd=10.0)
        other = second.attach_workspace(second_session, workspace, max_usd=10.0)
        assert first is not other
        first.record_cost(4.0)
        other.record_cost(4.0)
        store.save_workspace_of(first_session)
        second.save_workspace_of(second_session)
        assert store.load_workspace_state(workspace).budget is not None
        stored = store.load_workspace_state(workspace).budget
        assert stored is not None and stored.total_spent_usd == 8.0
        assert other.spent() == 8.0  # the saver adopted the stored total
        # reservations, settles and refunds travel as deltas too
        reservation = first.reserve(1.0)
        first.settle(reservation, 0.5)
        other.record_cost(1.0)
        other.refund_cost(0.25)
        store.save_workspace_of(first_session)
        second.save_workspace_of(second_session)
        store.save_workspace_of(first_session)  # nothing new: adopts what the other stored
        assert first.spent() == other.spent() == 9.25
        loaded = SessionStore(backend).load_workspace_state(workspace).budget
        assert loaded is not None and loaded.total_spent_usd == 9.25
        # a third session sees the sum and refuses what would exceed the limit
        third_session = AgentSession("c")
        third = SessionStore(backend).attach_workspace(third_session, workspace, max_usd=10.0)
        assert third.spent() == 9.25
        with pytest.raises(BudgetExceeded):
            BudgetValidator(third_session.budget_tracker, third).reserve(1.0)

    def test_sessions_of_one_store_share_a_workspace_tracker(
        self, store: SessionStore, workspace: Path
    ) -> None:
        one, two = AgentSession("a"), AgentSession("b")
        tracker = store.attach_workspace(one, workspace, max_usd=5.0)
        assert store.attach_workspace(two, workspace, max_usd=5.0) is tracker
        tracker.record_cost(4.0)
        with pytest.raises(BudgetExceeded):  # refused at once, before any save
            BudgetValidator(two.budget_tracker, two.workspace_budget_tracker).reserve(2.0)
        store.save_workspace_of(one)
        store.save_workspace_of(two)  # the same tracker: its spend is added once
        stored = store.load_workspace_state(workspace).budget
        assert stored is not None and stored.total_spent_usd == 4.0
        third = AgentSession("c")
        different = store.attach_workspace(third, workspace, max_usd=8.0)
        assert different is not tracker and different.max_usd() == 8.0
        assert different.spent() == 4.0
        different.record_cost(1.0)
        store.save_workspace_of(third)  # another tracker (other limits) stores 1.0 more
        tracker.record_cost(0.5)
        assert store.attach_workspace(AgentSession("d"), workspace, max_usd=5.0) is tracker
        assert tracker.spent() == 5.5 and tracker.unsaved() == 0.5  # the attach read the 5.0
        store.save_workspace_of(one)
        stored = store.load_workspace_state(workspace).budget
        assert stored is not None and stored.total_spent_usd == 5.5

    def test_threads_saving_workspace_spend_at_once_lose_nothing(
        self, backend: StorageBackend, data_dir: Path, workspace: Path
    ) -> None:
        saves = 10
        stores = [self._second_store(backend, data_dir) for _ in range(self.thread_count)]
        errors: list[BaseException] = []
        start = threading.Barrier(len(stores))

        def charge(store: SessionStore) -> None:
            try:
                session = AgentSession("p")
                tracker = store.attach_workspace(session, workspace)
                start.wait()
                for _ in range(saves):
                    tracker.record_cost(0.25)
                    store.save_workspace_of(session)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=charge, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        stored = SessionStore(backend).load_workspace_state(workspace).budget
        assert stored is not None and stored.total_spent_usd == 0.25 * saves * len(stores)

    def test_workspace_state_is_one_document_and_the_three_key_layout_still_loads(
        self, backend: StorageBackend, store: SessionStore, workspace: Path
    ) -> None:
        """Issue 14 item 2: one atomic write; stores written with three keys still load."""
        ns = f"ws:{workspace}"
        grant = Allowance.create(
            ExactTool(server="fs", tool="read"), session_only=False, workspace_root=workspace
        )
        kv = backend.kv()
        kv.set(f"{ns}:allowances", "all", f"[{grant.model_dump_json()}]".encode())
        kv.set(
            f"{ns}:budget",
            "all",
            b'{"total_spent_usd": 2.5, "last_updated": "2025-01-01T00:00:00Z"}',
        )
        kv.set(f"{ns}:escape", "all", b'{"remembered_paths": []}')
        session = AgentSession("p")
        tracker = store.attach_workspace(session, workspace, max_usd=10.0)
        assert tracker.spent() == 2.5
        assert [a.id for a in session.export_workspace_allowances()] == [grant.id]
        tracker.record_cost(1.0)
        store.save_workspace_of(session)
        for part in ("allowances", "budget", "escape"):
            assert kv.get(f"{ns}:{part}", "all") is None, f"the old {part} key was left"
        assert kv.list_keys(ns) == [WORKSPACE_STATE_KEY]
        state = store.load_workspace_state(workspace)
        assert [a.id for a in state.allowances] == [grant.id]
        assert state.budget is not None and state.budget.total_spent_usd == 3.5
        assert state.escape == EscapeState(remembered_paths=[])

    def test_a_bad_stored_workspace_spend_is_refused_not_reset(
        self, backend: StorageBackend, store: SessionStore, workspace: Path
    ) -> None:
        """Issue 14 item 4: a non-finite stored spend is an error naming where, never 0."""
        ns = f"ws:{workspace}"
        for literal in (b"null", b"-1.0", b"1e999"):
            backend.kv().set(
                ns,
                WORKSPACE_STATE_KEY,
                b'{"allowances": [], "budget": {"total_spent_usd": '
                + literal
                + b', "last_updated": "2025-01-01T00:00:00Z"}}',
            )
            with pytest.raises(SerializationError, match="total_spent_usd"):
                store.load_workspace_state(workspace)
            with pytest.raises(SerializationError, match="total_spent_usd"):
                store.attach_workspace(AgentSession("p"), workspace)
            session = AgentSession("p").with_workspace(workspace)
            session.with_workspace_budget(WorkspaceBudgetTracker(10.0))
            session.workspace_budget_tracker.record_cost(1.0)  # type: ignore[union-attr]
            before = backend.kv().get(ns, WORKSPACE_STATE_KEY)
            with pytest.raises(SerializationError, match="total_spent_usd"):
                store.save_workspace_of(session)  # nothing is added to a bad total
            assert backend.kv().get(ns, WORKSPACE_STATE_KEY) == before

    # -- key-value store -------------------------------------------------------------------------

    def test_kv_get_set_overwrite_delete_exists(self, backend: StorageBackend) -> None:
        kv = backend.kv()
        assert kv.get("ns", "key") is None
        assert kv.exists("ns", "key") is False
        kv.set("ns", "key", b"one")
        assert kv.get("ns", "key") == b"one"
        assert kv.exists("ns", "key") is True
        kv.set("ns", "key", b"two")
        assert kv.get("ns", "key") == b"two"
        assert kv.list_keys("ns") == ["key"]
        assert kv.delete("ns", "key") is True
        assert kv.delete("ns", "key") is False
        assert kv.get("ns", "key") is None and kv.exists("ns", "key") is False
        assert kv.delete("never", "there") is False

    def test_kv_list_keys_sorted_and_clear_namespace(self, backend: StorageBackend) -> None:
        kv = backend.kv()
        assert kv.list_keys("ns") == []
        for key in ("b", "a", "c", "aa", "B"):
            kv.set("ns", key, key.encode())
        assert kv.list_keys("ns") == sorted(["b", "a", "c", "aa", "B"])
        assert kv.clear_namespace("ns") == 5
        assert kv.list_keys("ns") == []
        assert kv.get("ns", "a") is None
        assert kv.clear_namespace("ns") == 0
        assert kv.clear_namespace("never-used") == 0

    def test_kv_namespaces_are_isolated_even_when_prefixes_overlap(
        self, backend: StorageBackend
    ) -> None:
        kv = backend.kv()
        namespaces = ["a", "a:b", "ab", "a%", "a_", "A", "a:b:c"]
        for ns in namespaces:
            kv.set(ns, "key", ns.encode())
            kv.set(ns, f"only-{ns}", b"x")
        for ns in namespaces:
            assert kv.get(ns, "key") == ns.encode()
            assert kv.list_keys(ns) == sorted(["key", f"only-{ns}"])
        assert kv.delete("a", "key") is True
        assert kv.get("a:b", "key") == b"a:b"
        assert kv.clear_namespace("a") == 1
        assert kv.clear_namespace("a%") == 2
        for ns in ("a:b", "ab", "a_", "A", "a:b:c"):
            assert kv.list_keys(ns) == sorted(["key", f"only-{ns}"]), ns

    def _listing(self, kv: KvStore) -> NamespaceListing:
        """``kv`` if it has the optional ``list_namespaces``; otherwise skip the test."""
        if not isinstance(kv, NamespaceListing):
            pytest.skip(f"{type(kv).__name__} has no list_namespaces (optional)")
        return kv

    def test_kv_list_namespaces_sorted_and_only_non_empty(
        self, backend: StorageBackend, data_dir: Path
    ) -> None:
        kv = backend.kv()
        listing = self._listing(kv)
        assert listing.list_namespaces() == []
        namespaces = [
            "b",
            "a",
            "A",
            "ab",
            "a:b",
            "a:b:c",
            "a%",
            "a_",
            "/",
            "a/b",
            "..",
            "../../etc/passwd",
            " spaced ",
            "line\nbreak",
            "caf\u00e9 \u4e2d\u6587 \U0001f680",
            "ws:" + "/deep" * 80,  # longer than a file name
        ]
        for ns in namespaces:
            kv.set(ns, "key", ns.encode())
        kv.set("a", "second", b"2")
        kv.set("long key only", "k" * 1000, b"v")
        expected = sorted([*namespaces, "long key only"])
        assert listing.list_namespaces() == expected
        for ns in ("never-used", "ghost"):  # reads and misses create nothing
            assert kv.get(ns, "key") is None and kv.exists(ns, "key") is False
            assert kv.list_keys(ns) == [] and kv.delete(ns, "key") is False
            assert kv.clear_namespace(ns) == 0
        assert listing.list_namespaces() == expected
        assert kv.delete("b", "key") is True  # its only key: the namespace goes
        assert kv.delete("a", "key") is True  # one key left: it stays
        assert kv.clear_namespace("a:b") == 1
        assert kv.clear_namespace("ws:" + "/deep" * 80) == 1
        assert kv.delete("long key only", "k" * 1000) is True
        gone = {"b", "a:b", "ws:" + "/deep" * 80, "long key only"}
        expected = sorted(set(expected) - gone)
        assert listing.list_namespaces() == expected
        for ns in expected:
            assert kv.list_keys(ns), ns
        kv.set("ws:" + "/deep" * 80, "again", b"v")  # a cleared namespace comes back when set
        expected = sorted([*expected, "ws:" + "/deep" * 80])
        assert listing.list_namespaces() == expected
        other = self._maybe_reopen(backend, data_dir)
        if other is not None:
            assert self._listing(other.kv()).list_namespaces() == expected

    def test_kv_rejects_empty_and_nul_names(self, backend: StorageBackend) -> None:
        kv = backend.kv()
        for ns, key in (("", "k"), ("ns", ""), ("n\0s", "k"), ("ns", "k\0"), ("\0", "\0")):
            with pytest.raises(InvalidKey):
                kv.set(ns, key, b"v")
            with pytest.raises(InvalidKey):
                kv.get(ns, key)
            with pytest.raises(InvalidKey):
                kv.delete(ns, key)
            with pytest.raises(InvalidKey):
                kv.exists(ns, key)
        for ns in ("", "bad\0ns"):
            with pytest.raises(InvalidKey):
                kv.list_keys(ns)
            with pytest.raises(InvalidKey):
                kv.clear_namespace(ns)
        assert kv.list_keys("ns") == []

    def test_kv_keeps_bytes_and_odd_names_exactly(self, backend: StorageBackend) -> None:
        kv = backend.kv()
        values = {
            "empty": b"",
            "binary": bytes(range(256)),
            "nul": b"\0\0\0",
            "not-utf8": b"\xff\xfe\x80",
            "big": bytes(range(256)) * 4096,
        }
        for key, value in values.items():
            kv.set("bytes", key, value)
        for key, value in values.items():
            assert kv.get("bytes", key) == value, key
        odd = [
            "../../etc/passwd",
            'it\'s "q"',
            "%_*?[]",
            "emoji \U0001f680",
            " leading and trailing ",
            "x" * 1000,
            "line\nbreak",
        ]
        for key in odd:
            kv.set("odd ns \U0001f680 %", key, key.encode())
        assert kv.list_keys("odd ns \U0001f680 %") == sorted(odd)
        for key in odd:
            assert kv.get("odd ns \U0001f680 %", key) == key.encode()

    def test_persistent_deferred_queue_round_trip(
        self, backend: StorageBackend, store: SessionStore, data_dir: Path
    ) -> None:
        session = _session_with(1)
        store.save(session)
        session.with_persistent_deferred_queue(store.deferred_queue_kv(session.id))
        item = DeferredResolution.new(
            ErrorResolution(error="disk full", attempted_action="write a.txt"),
            "needs a human",
            Priority.HIGH,
            ActionContext.new("finish the report"),
        )
        queued = session.approval_manager.deferred_queue.queue_persistent(item)
        assert store.deferred_queue_kv(session.id).list_keys() == [str(queued)]

        copy = store.load(session.id)
        assert copy is not None
        copy.with_persistent_deferred_queue(store.deferred_queue_kv(copy.id))
        assert copy.approval_manager.get_pending_resolutions() == [item]
        stranger = AgentSession("other")
        stranger.with_persistent_deferred_queue(store.deferred_queue_kv(stranger.id))
        assert stranger.approval_manager.get_pending_resolutions() == []

        other = self._maybe_reopen(backend, data_dir)
        if other is None:
            return
        reopened = SessionStore(other)
        restored = reopened.load(session.id)
        assert restored is not None
        restored.with_persistent_deferred_queue(reopened.deferred_queue_kv(restored.id))
        assert restored.approval_manager.get_pending_resolutions() == [item]
        restored.approval_manager.deferred_queue.resolve_persistent(queued)
        assert reopened.deferred_queue_kv(session.id).list_keys() == []

    # -- persistence across a reopen -------------------------------------------------------------

    def test_sessions_survive_a_reopen(
        self, backend: StorageBackend, store: SessionStore, data_dir: Path, workspace: Path
    ) -> None:
        session = AgentSession("persist me").with_workspace(workspace).with_model("m")
        for message in sample_messages():
            session.add_message(message)
        session.metadata.title = "kept"
        session.budget_tracker.record_cost(0.5)
        store.save(session)
        session.clear_messages()
        session.add_message(Message.system("summary"))
        store.save(session)
        history = _as_json(store.history(session.id))

        reopened = SessionStore(self._reopen(backend, data_dir))
        loaded = reopened.load(session.id)
        assert loaded is not None
        assert _as_json(loaded.messages) == _as_json(session.messages)
        assert loaded.metadata.title == "kept" and loaded.budget_tracker.spent() == 0.5
        assert loaded.workspace_path == workspace and loaded.model == "m"
        assert _as_json(reopened.history(session.id)) == history

    def test_revisions_survive_a_reopen(
        self, backend: StorageBackend, store: SessionStore, data_dir: Path
    ) -> None:
        session = _session_with(2)
        store.save(session)
        session.add_message(Message.user("m2"))
        before = store.save(session)

        other = self._reopen(backend, data_dir)
        reopened = SessionStore(other)
        loaded = reopened.load(session.id)
        assert loaded is not None and reopened.revision_of(loaded) == before
        loaded.add_message(Message.user("after reopen"))
        after = reopened.save(loaded)
        assert after > before
        with pytest.raises(ConcurrencyError):
            other.write(_change(session, expected=before, messages=[Message.user("stale")], base=3))
        with pytest.raises(ConcurrencyError):
            reopened.save(session)
        final = reopened.load(session.id)
        assert final is not None
        assert [m.text() for m in final.messages] == ["m0", "m1", "m2", "after reopen"]

    def test_listing_kv_and_workspace_state_survive_a_reopen(
        self, backend: StorageBackend, store: SessionStore, data_dir: Path, workspace: Path
    ) -> None:
        ids = []
        for i in range(3):
            session = _session_with(i + 1).with_workspace(workspace)
            store.save(session)
            ids.append(session.id.bare)
            self._tick()
        store.save(_session_with(1))
        before = store.list_sessions()
        backend.kv().set("ns", "key", b"\0value\xff")
        budget = WorkspaceBudgetSnapshot(total_spent_usd=7.25, last_updated=utcnow())
        store.save_workspace_state(workspace, WorkspaceState(budget=budget))

        reopened = SessionStore(self._reopen(backend, data_dir))
        assert reopened.list_sessions() == before
        assert [s.id for s in reopened.list_sessions(workspace=workspace)] == ids[::-1]
        assert reopened.count() == 4 and reopened.count(workspace=workspace) == 3
        assert reopened.backend.kv().get("ns", "key") == b"\0value\xff"
        assert reopened.load_workspace_state(workspace).budget == budget

    def test_two_open_instances_see_each_others_saves_and_conflict(
        self, backend: StorageBackend, store: SessionStore, data_dir: Path
    ) -> None:
        session = _session_with(2)
        store.save(session)
        other = self._reopen(backend, data_dir, close_first=False)
        second = SessionStore(other)
        copy = second.load(session.id)
        assert copy is not None
        assert _as_json(copy.messages) == _as_json(session.messages)
        copy.add_message(Message.user("from the second instance"))
        second.save(copy)
        session.add_message(Message.user("from the first instance"))
        with pytest.raises(ConcurrencyError):
            store.save(session)
        seen = store.load(session.id)
        assert seen is not None
        assert [m.text() for m in seen.messages] == ["m0", "m1", "from the second instance"]
        second.save(_session_with(1))
        assert store.count() == 2
        other.kv().set("shared", "key", b"v")
        assert backend.kv().get("shared", "key") == b"v"

    # -- hostile input ---------------------------------------------------------------------------

    @pytest.mark.parametrize("bad_id", HOSTILE_IDS)
    def test_hostile_session_ids_are_refused(
        self, backend: StorageBackend, store: SessionStore, bad_id: str
    ) -> None:
        store.save(_session_with(1))
        with pytest.raises(InvalidSessionId):
            store.load(bad_id)
        with pytest.raises(InvalidSessionId):
            store.load(bad_id, tail=1)
        with pytest.raises(InvalidSessionId):
            store.load_document(bad_id)
        with pytest.raises(InvalidSessionId):
            store.delete(bad_id)
        with pytest.raises(InvalidSessionId):
            store.history(bad_id)
        with pytest.raises(InvalidSessionId):
            store.append_messages(bad_id, [Message.user("x")])
        with pytest.raises(InvalidSessionId):
            store.deferred_queue_kv(bad_id)
        assert backend.count_sessions() == 1

    def test_equivalent_id_spellings_reach_the_same_session(self, store: SessionStore) -> None:
        session = _session_with(1)
        store.save(session)
        bare = session.id.bare
        spellings = [
            bare.upper(),
            f"{{{bare}}}",
            bare.replace("-", ""),
            f"session:{bare}",
            f"urn:uuid:{bare}",
            f"  {bare} ",
        ]
        for spelling in spellings:
            loaded = store.load(spelling)
            assert loaded is not None and loaded.id == session.id, spelling
        store.append_messages(bare.upper(), [Message.user("via upper case")])
        assert [s.id for s in store.list_sessions()] == [bare]
        assert store.delete(bare.upper()) is True
        assert store.load(bare) is None

    def test_hostile_text_round_trips_verbatim(self, store: SessionStore) -> None:
        session = AgentSession(HOSTILE_TEXTS[2])
        session.metadata.title = "Title with 'quotes', \"doubles\", \\ and \U0001f680"
        session.metadata.custom = {text: text for text in HOSTILE_TEXTS}
        session.metadata.tags = list(HOSTILE_TEXTS)
        session.with_model("model'; --")
        for text in HOSTILE_TEXTS:
            session.add_message(Message.user(text))
            session.add_message(
                Message.assistant_with_tools([ToolCall(id=text, name=text, arguments={text: text})])
            )
            session.add_message(Message.tool_result(ToolCallResult.success(text, text)))
        store.save(session)
        loaded = store.load(session.id)
        assert loaded is not None
        assert _as_json(loaded.messages) == _as_json(session.messages)
        assert loaded.metadata.model_dump() == session.metadata.model_dump()
        assert loaded.system_prompt == HOSTILE_TEXTS[2]
        assert loaded.model == "model'; --"
        [summary] = store.list_sessions()
        assert summary.title == session.metadata.title and summary.model == "model'; --"
        tail = store.load(session.id, tail=1)
        assert tail is not None
        assert _as_json(tail.messages) == _as_json(session.messages[-1:])

    def test_a_one_megabyte_message_round_trips(
        self, backend: StorageBackend, store: SessionStore
    ) -> None:
        big = ("0123456789abcdef\u00e9\U0001f680\0" * 55_000)[: 1 << 20]
        session = _session_with(1)
        session.add_message(Message.user(big))
        store.save(session)
        session.add_message(Message.assistant(big[::-1]))
        store.save(session)
        loaded = store.load(session.id)
        assert loaded is not None
        assert loaded.messages[1].text() == big
        assert loaded.messages[2].text() == big[::-1]
        record = backend.load(session.id.bare, tail=1)
        assert record is not None and record.messages == [Message.assistant(big[::-1]).to_json()]

    # -- the async API ---------------------------------------------------------------------------

    def test_every_async_store_method_works_through_a_worker_thread(
        self, store: SessionStore, workspace: Path
    ) -> None:
        """The async API runs the backend's calls in a worker thread: each method once."""

        async def main() -> None:
            session = _session_with(2)
            assert await store.asave(session) == store.revision_of(session)
            session.add_message(Message.assistant("appended"))
            revision = await store.asave(session)
            session.budget_tracker.record_cost(0.25)
            assert await store.asave_state(session) > revision
            loaded = await store.aload(session.id)
            assert loaded is not None
            assert _as_json(loaded.messages) == _as_json(session.messages)
            assert loaded.budget_tracker.spent() == 0.25
            tail = await store.aload(session.id, tail=1)
            assert tail is not None and [m.text() for m in tail.messages] == ["appended"]
            assert _as_json(await store.ahistory(session.id)) == _as_json(session.messages)
            assert [s.id for s in await store.alist_sessions()] == [session.id.bare]
            assert await store.acount() == 1 and await store.acount(workspace=workspace) == 0

            tracker = await store.aattach_workspace(session, workspace, max_usd=5.0)
            assert tracker.max_usd() == 5.0 and session.workspace_path == workspace
            tracker.record_cost(1.0)
            await store.asave_workspace_of(session)
            state = await store.aload_workspace_state(workspace)
            assert state.budget is not None and state.budget.total_spent_usd == 1.0

            kv = store.akv("conformance-async")
            await kv.aset_json("k", {"v": [1, "two"]})
            assert await kv.aget_json("k") == {"v": [1, "two"]}
            assert await kv.aexists("k") and await kv.alist_keys() == ["k"]
            assert await kv.adelete("k") and not await kv.aexists("k")
            await kv.aset("raw", b"\x00bytes")
            assert await kv.aget("raw") == b"\x00bytes"
            assert await kv.aclear() == 1

            future = utcnow() + timedelta(days=30)
            doomed = await store.aprune(older_than=timedelta(days=1), now=future, dry_run=True)
            assert doomed == [session.id.bare] and await store.acount() == 1
            assert await store.adelete(session.id) and not await store.adelete(session.id)
            assert await store.aload(session.id) is None

        asyncio.run(main())

    def test_concurrent_async_saves_of_one_session_lose_nothing(self, store: SessionStore) -> None:
        """Two ``asave`` of one session at once run one after another, neither conflicting."""

        async def main() -> None:
            session = _session_with(1)
            saves = [asyncio.create_task(store.asave(session)) for _ in range(3)]
            session.add_message(Message.user("added while the saves wait"))
            revisions = await asyncio.gather(*saves)
            assert list(revisions) == sorted(set(revisions))
            loaded = await store.aload(session.id)
            assert loaded is not None
            assert _as_json(loaded.messages) == _as_json(session.messages)

        asyncio.run(main())


__all__ = ["HOSTILE_IDS", "HOSTILE_TEXTS", "StorageConformance", "sample_messages"]
