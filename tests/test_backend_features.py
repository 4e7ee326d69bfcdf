"""Optional backend features are protocols (``astrid.store``, ``astrid.security``): a backend
with the feature gets it used, one without gets the documented fallback."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest

from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.memory_storage import MemoryBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import PluginError
from astrid.security.capabilities import (
    CapabilityStore,
    ClosableBackend,
    MemoryCapabilityBackend,
    UseClaimer,
)
from astrid.security.kv import MemoryKvStore, NamespaceListing, namespaces_of
from astrid.session import AgentSession
from astrid.store import (
    KEYED_STATE_MIN,
    DecodedLoader,
    DirectoryLocated,
    FileLocated,
    MessageObjectWriter,
    PersistenceFlag,
    ProblemReporter,
    SessionDescriber,
    SessionRecord,
    SessionStore,
    StateDeltaAcceptor,
    TempFileSweeper,
    WorkspaceStateWriter,
    is_persistent,
    takes_state_delta,
)
from astrid.testing.conformance import _RecordingBackend
from astrid.testing.keyed_state import grow, recorded_writes


class Bare(_RecordingBackend):
    """Only the required ``StorageBackend`` members (delegated to a real backend): no optional
    feature at all."""


def test_the_bare_backend_has_no_optional_feature(tmp_path: Path) -> None:
    bare = Bare(SqliteBackend(tmp_path / "s.db"))
    for feature in (
        StateDeltaAcceptor, DecodedLoader, SessionDescriber, ProblemReporter, PersistenceFlag,
        FileLocated, DirectoryLocated, TempFileSweeper, WorkspaceStateWriter,
        MessageObjectWriter,
    ):
        assert not isinstance(bare, feature), feature.__name__


# -- accepts_state_delta: only the value True counts -----------------------------------------


class TruthyDelta(SqliteBackend):
    accepts_state_delta = 1  # type: ignore[assignment]  # truthy, but not True


class NoDelta(SqliteBackend):
    accepts_state_delta = False


def _many(store: SessionStore, workspace: Path) -> AgentSession:
    session = store.new_session("many")
    for i in range(KEYED_STATE_MIN + 5):
        grow(session, i, workspace)
    store.save(session)
    return session


@pytest.mark.parametrize(("cls", "deltas"), [(SqliteBackend, True), (TruthyDelta, False),
                                             (NoDelta, False)])
def test_state_deltas_only_for_accepts_state_delta_true(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type[SqliteBackend], deltas: bool
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    backend = cls(tmp_path / "s.db")
    assert takes_state_delta(backend) is deltas
    store = SessionStore(backend)
    session = _many(store, workspace)
    writes = recorded_writes(backend, monkeypatch)
    grow(session, 500, workspace)
    store.save(session)
    assert [w.delta is not None for w in writes] == [deltas]
    loaded = SessionStore(backend).load(session.id)
    assert loaded is not None
    assert len(loaded.allowance_store.export_session_allowances()) == KEYED_STATE_MIN + 6


def test_takes_state_delta_needs_the_value_true() -> None:
    class Declares:
        def __init__(self, value: Any) -> None:
            self.accepts_state_delta = value

    assert [takes_state_delta(Declares(v)) for v in (True, 1, "yes", None, False)] == [
        True, False, False, False, False
    ]
    assert takes_state_delta(object()) is False


# -- load_decoded ------------------------------------------------------------------------------


class CountingDecoded(Bare):
    def __init__(self, inner: SqliteBackend) -> None:
        super().__init__(inner)
        self.decoded_loads = 0

    def load_decoded(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        self.decoded_loads += 1
        assert isinstance(self.inner, DecodedLoader)
        return self.inner.load_decoded(session_id, tail=tail)


class NoneDecoded(SqliteBackend):
    load_decoded = None  # type: ignore[assignment]  # switched off: load is used


@pytest.mark.parametrize("kind", ["bare", "counting", "none"])
def test_load_uses_load_decoded_when_offered_else_load(tmp_path: Path, kind: str) -> None:
    inner = SqliteBackend(tmp_path / "s.db")
    backend: Any
    if kind == "bare":
        backend = Bare(inner)
    elif kind == "counting":
        backend = CountingDecoded(inner)
    else:
        backend = NoneDecoded(tmp_path / "s.db")
    store = SessionStore(backend)
    session = store.new_session("p")
    store.save(session)
    loaded = store.load(session.id)
    assert loaded is not None and loaded.id == session.id
    assert isinstance(backend, DecodedLoader) is (kind == "counting")
    if kind == "counting":
        assert backend.decoded_loads == 1


# -- describe ----------------------------------------------------------------------------------


def test_describe_names_the_backends_place_or_the_store_and_the_id(tmp_path: Path) -> None:
    sqlite = SqliteBackend(tmp_path / "s.db")
    sid = str(uuid4())
    assert SessionStore(sqlite).describe(sid) == f"{sqlite.path}: session {sid}"
    assert SessionStore(Bare(sqlite)).describe(sid) == f"sqlite session {sid}"


# -- problems, persistent, location, temp files ------------------------------------------------


def test_problems_without_the_method_are_none(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    directory.mkdir()
    file_backend = FileBackend(directory)
    (directory / f"{uuid4()}.json").write_text("{broken", encoding="utf-8")
    assert isinstance(file_backend, ProblemReporter)
    found = SessionStore(file_backend).problems()
    assert len(found) == 1 and all(isinstance(part, str) for part in found[0])
    assert SessionStore(Bare(file_backend)).problems() == []


def test_persistent_unless_declared_false(tmp_path: Path) -> None:
    class Zero(Bare):
        persistent = 0

    sqlite = SqliteBackend(tmp_path / "s.db")
    assert SessionStore(MemoryBackend()).persistent is False
    assert SessionStore(sqlite).persistent is True  # no attribute: persistent
    assert SessionStore(Bare(sqlite)).persistent is True
    assert is_persistent(Zero(sqlite)) is False


def test_location_is_the_path_or_the_directory_if_declared(tmp_path: Path) -> None:
    sqlite = SqliteBackend(tmp_path / "s.db")
    files = FileBackend(tmp_path / "sessions")
    assert SessionStore(sqlite).location() == str(sqlite.path)
    assert SessionStore(files).location() == str(tmp_path / "sessions")
    assert SessionStore(Bare(sqlite)).location() is None
    assert SessionStore(MemoryBackend()).location() is None


def test_temp_files_are_swept_only_by_a_sweeper(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    directory.mkdir()
    files = FileBackend(directory)
    assert isinstance(files, TempFileSweeper)
    sid = str(uuid4())
    (directory / f"{sid}.json.tmp.{'ab' * 8}").write_bytes(b"half")
    assert SessionStore(Bare(files)).sweep_temp_files() == 0
    assert (directory / f"{sid}.json.tmp.{'ab' * 8}").exists()


# -- namespace listing, workspace state ----------------------------------------------------------


def test_namespaces_of_a_store_without_listing_is_none() -> None:
    class NoListing:
        def __init__(self) -> None:
            self.kv = MemoryKvStore()

        def get(self, namespace: str, key: str) -> bytes | None:
            return self.kv.get(namespace, key)

    listing = MemoryKvStore()
    listing.set("a", "k", b"v")
    assert isinstance(listing, NamespaceListing) and namespaces_of(listing) == ["a"]
    assert namespaces_of(NoListing()) is None  # type: ignore[arg-type]


# -- capability backends: close and claim_use ----------------------------------------------------


class CountingClose(MemoryCapabilityBackend):
    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_store_close_closes_a_capability_backend_only_if_it_can(tmp_path: Path) -> None:
    closing = CountingClose()
    assert isinstance(closing, ClosableBackend)
    assert not isinstance(MemoryCapabilityBackend(), ClosableBackend)
    SessionStore(MemoryBackend(), capabilities=CapabilityStore(backend=closing)).close()
    assert closing.closed == 1
    # without close: nothing more to do, and no error
    SessionStore(MemoryBackend(), capabilities=CapabilityStore(backend=MemoryCapabilityBackend())
                 ).close()


def test_a_capability_backend_without_claim_use_refuses_single_use_tokens() -> None:
    class Old(MemoryCapabilityBackend):
        claim_use = None  # type: ignore[assignment]  # an older backend's shape

    assert isinstance(MemoryCapabilityBackend(), UseClaimer)
    assert not isinstance(Old(), UseClaimer)
    store = CapabilityStore(backend=Old())  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="has no claim_use method"):
        store.mark_used(uuid4())
