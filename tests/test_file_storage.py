"""The ``file`` backend: the original's layout both ways, locking, the listing index, the kv."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from astrid import AgentSession, Message, SessionDocument, ToolCall
from astrid.default_plugins import file_storage
from astrid.default_plugins.file_storage import (
    ARCHIVED_KEY,
    INDEX_NAME,
    JOURNAL_NAME,
    REVISION_KEY,
    UPDATED_AT_KEY,
    FileBackend,
    FileKvStore,
    FileOptions,
)
from astrid.errors import (
    ConcurrencyError,
    InvalidKey,
    InvalidSessionId,
    SerializationError,
    SessionNotFound,
    StorageError,
)
from astrid.messages import ToolCallResult
from astrid.plugins import PluginContext
from astrid.store import SessionStore, SessionSummary, SessionWrite, StorageBackend
from astrid.timeutil import utcnow
from tests.originals import RUST_DOCUMENT, RUST_ID

# spec §2.7, verbatim: a document as the Rust astrid writes it.
ORIGINAL_KEYS = [
    "id",
    "user_id",
    "messages",
    "system_prompt",
    "created_at",
    "token_count",
    "metadata",
    "allowances",
    "budget_snapshot",
    "escape_state",
    "workspace_path",
    "model",
    "git_state",
]


@pytest.fixture
def sessions_dir(tmp_path: Path) -> Path:
    """Where the backend keeps sessions (not created: the backend creates it lazily)."""
    return tmp_path / "home" / "sessions"


@pytest.fixture
def backend(sessions_dir: Path) -> FileBackend:
    """A file backend over ``sessions_dir``."""
    return FileBackend(sessions_dir)


@pytest.fixture
def store(backend: FileBackend) -> Iterator[SessionStore]:
    """The facade over the file backend."""
    with SessionStore(backend) as s:
        yield s


def make_session(n: int = 3, prompt: str = "You are helpful") -> AgentSession:
    """A session with ``n`` user/assistant text messages."""
    session = AgentSession(prompt, user_id=bytes(range(1, 9)))
    for i in range(n):
        session.add_message(Message.user(f"q{i}") if i % 2 == 0 else Message.assistant(f"a{i}"))
    return session


def texts(session: AgentSession) -> list[str | None]:
    """The text of each message."""
    return [m.text() for m in session.messages]


def read_json(path: Path) -> dict[str, Any]:
    """A file's JSON object."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def put_rust_document(directory: Path, text: str = RUST_DOCUMENT, sid: str = RUST_ID) -> Path:
    """Write a document the way the Rust astrid does (no astrid keys, plain rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{sid}.json"
    tmp = directory / f"{sid}.json.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def rust_reader_accepts(data: dict[str, Any]) -> None:
    """Check what the original's serde reader requires of a document (spec §2.2, §2.3)."""
    assert list(data)[: len(ORIGINAL_KEYS)] == ORIGINAL_KEYS
    assert str(uuid.UUID(data["id"])) == data["id"]
    assert len(bytes.fromhex(data["user_id"])) == 8
    assert isinstance(data["system_prompt"], str)
    assert isinstance(data["created_at"], str) and data["created_at"].endswith("Z")
    assert isinstance(data["token_count"], int)
    meta = data["metadata"]
    for key in ("tags", "turn_count", "tool_call_count", "approval_count", "custom"):
        assert key in meta
    for message in data["messages"]:
        assert set(message) == {"role", "content"}
        assert message["role"] in {"system", "user", "assistant", "tool"}
    assert isinstance(data["allowances"], list)


def summary(sid: str, updated_at: datetime, workspace: str | None = None) -> SessionSummary:
    """A summary for direct backend writes."""
    return SessionSummary(
        id=sid,
        title=None,
        created_at=updated_at,
        updated_at=updated_at,
        message_count=0,
        token_count=0,
        workspace_path=workspace,
    )


# -- round trips -----------------------------------------------------------------------------


def test_round_trip_through_the_session_store(store: SessionStore, sessions_dir: Path) -> None:
    session = make_session(1)
    call = ToolCall(id="call_1", name="read_file", arguments={"file_path": "/ws/ä.txt"})
    session.add_message(Message.assistant_with_tools([call]))
    session.add_message(Message.tool_result(ToolCallResult.success("call_1", "héllo")))
    session.metadata.title = "Reading"
    session.with_model("m-1")
    assert store.save(session) == 1
    assert (sessions_dir / f"{session.id.bare}.json").is_file()

    for reader in (store, SessionStore(FileBackend(sessions_dir))):
        loaded = reader.load(session.id)
        assert loaded is not None
        assert loaded.id == session.id
        assert [m.to_json() for m in loaded.messages] == [m.to_json() for m in session.messages]
        assert loaded.metadata.title == "Reading"
        assert loaded.model == "m-1"
        assert loaded.user_id == session.user_id
        assert loaded.token_count == session.token_count

    session.add_message(Message.assistant("done"))
    assert store.save(session) == 2
    again = store.load(session.id)
    assert again is not None and len(again.messages) == 4
    assert store.load(AgentSession().id) is None


def test_the_saved_file_is_the_original_document(store: SessionStore, sessions_dir: Path) -> None:
    session = make_session(2)
    store.save(session)
    path = sessions_dir / f"{session.id.bare}.json"
    text = path.read_text(encoding="utf-8")
    data = json.loads(text)
    rust_reader_accepts(data)
    assert data["id"] == session.id.bare
    assert data[REVISION_KEY] == 1
    assert datetime.fromisoformat(data[UPDATED_AT_KEY].replace("Z", "+00:00")) <= utcnow()
    assert ARCHIVED_KEY not in data
    # SessionDocument reads it and writes it back byte for byte (astrid keys are kept extras).
    assert SessionDocument.from_json_text(text, source=str(path)).to_json_text() == text
    assert not text.endswith("\n") and text.startswith('{\n  "id": ')


def test_a_rust_document_lists_loads_and_survives_a_save(
    store: SessionStore, backend: FileBackend, sessions_dir: Path
) -> None:
    path = put_rust_document(sessions_dir)
    mtime = datetime.fromtimestamp(path.stat().st_mtime_ns / 1e9, UTC)

    [row] = store.list_sessions()
    assert row.id == RUST_ID
    assert row.message_count == 4
    assert row.token_count == 205
    assert row.workspace_path == "/ws"
    assert row.model == "claude-sonnet-4-20250514"
    assert row.revision == 0
    assert abs(row.updated_at - mtime) < timedelta(milliseconds=1)
    assert row.created_at == datetime(2026, 2, 22, 3, 48, 10, 123456, tzinfo=UTC)
    assert store.count(workspace="/ws") == 1

    record = backend.load(RUST_ID)
    assert record is not None and record.revision == 0
    assert abs(record.updated_at - mtime) < timedelta(milliseconds=1)

    session = store.load(RUST_ID)
    assert session is not None
    assert session.token_count == 205
    assert [m.role for m in session.messages] == ["user", "assistant", "tool", "assistant"]
    assert store.revision_of(session) == 0

    session.add_message(Message.user("and b.txt?"))
    assert store.save(session) == 1
    data = read_json(path)
    rust_reader_accepts(data)
    assert data["id"] == RUST_ID and data["user_id"] == "0102030405060708"
    assert len(data["messages"]) == 5
    assert data["git_state"] == {"branch": "main", "commit": "0123abcd..."}
    assert data["budget_snapshot"]["config"]["warn_at_percent"] == 80
    assert data["workspace_path"] == "/ws"
    assert data[REVISION_KEY] == 1
    original = json.loads(RUST_DOCUMENT)
    assert data["messages"][:4] == original["messages"]
    # the listing follows the save without a rescan surprise
    [row] = store.list_sessions()
    assert row.revision == 1 and row.message_count == 5


def test_a_document_without_an_id_match_is_an_error_naming_the_file(
    store: SessionStore, backend: FileBackend, sessions_dir: Path
) -> None:
    other = "11111111-2222-4333-8444-555555555555"
    path = put_rust_document(sessions_dir, sid=other)
    with pytest.raises(SerializationError, match=str(path)):
        store.load(other)
    assert store.list_sessions() == []
    assert [p for p, _ in backend.problems()] == [path]


# -- revisions, replace, tail ----------------------------------------------------------------


def test_a_stale_save_is_refused(store: SessionStore, backend: FileBackend) -> None:
    session = make_session(2)
    store.save(session)
    first = store.load(session.id)
    second = SessionStore(FileBackend(backend.directory)).load(session.id)
    assert first is not None and second is not None
    first.add_message(Message.user("from first"))
    store.save(first)
    second.add_message(Message.user("from second"))
    with pytest.raises(ConcurrencyError, match="stale"):
        SessionStore(FileBackend(backend.directory)).save(second)
    # creating a session that already exists is stale too
    clone = make_session(1)
    clone.id = session.id
    with pytest.raises(ConcurrencyError):
        SessionStore(backend).save(clone)
    loaded = store.load(session.id)
    assert loaded is not None and texts(loaded)[-1] == "from first"


def test_a_rust_rewrite_behind_astrid_makes_its_save_stale(
    store: SessionStore, sessions_dir: Path
) -> None:
    session = make_session(2)
    store.save(session)
    path = sessions_dir / f"{session.id.bare}.json"
    data = read_json(path)
    for key in (REVISION_KEY, UPDATED_AT_KEY):
        del data[key]
    data["messages"].append({"role": "user", "content": "typed in the Rust CLI"})
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    session.add_message(Message.user("astrid"))
    with pytest.raises(ConcurrencyError):
        store.save(session)


def test_replace_keeps_history_with_stable_seqs(
    store: SessionStore, backend: FileBackend, sessions_dir: Path
) -> None:
    session = make_session(4)
    store.save(session)
    session.messages = [Message.system("summary of q0..a3"), session.messages[-1]]
    assert store.save(session) == 2
    data = read_json(sessions_dir / f"{session.id.bare}.json")
    assert [m["content"] for m in data["messages"]] == ["summary of q0..a3", "a3"]
    assert [a["seq"] for a in data[ARCHIVED_KEY]] == [0, 1, 2, 3]
    rust_reader_accepts(data)

    history = backend.history(session.id.bare)
    assert [(h.seq, h.active) for h in history] == [
        (0, False),
        (1, False),
        (2, False),
        (3, False),
        (4, True),
        (5, True),
    ]
    session.add_message(Message.user("next"))
    store.save(session)
    after = backend.history(session.id.bare)
    assert [(h.seq, h.active) for h in after[:6]] == [(h.seq, h.active) for h in history]
    assert (after[-1].seq, after[-1].message["content"]) == (6, "next")
    assert [m.text() for m in store.history(session.id)] == [
        "q0",
        "a1",
        "q2",
        "a3",
        "summary of q0..a3",
        "a3",
        "next",
    ]
    loaded = store.load(session.id)
    assert loaded is not None
    assert texts(loaded) == ["summary of q0..a3", "a3", "next"]
    assert ARCHIVED_KEY not in loaded.extra_fields and REVISION_KEY not in loaded.extra_fields


def test_tail_load_then_append(store: SessionStore, backend: FileBackend) -> None:
    session = make_session(10)
    store.save(session)
    tail = store.load(session.id, tail=3)
    assert tail is not None
    assert texts(tail) == ["a7", "q8", "a9"]
    record = backend.load(session.id.bare, tail=3)
    assert record is not None
    assert (record.message_offset, record.message_count) == (7, 10)
    empty = backend.load(session.id.bare, tail=0)
    assert empty is not None and empty.messages == [] and empty.message_offset == 10
    tail.add_message(Message.user("q10"))
    store.save(tail)
    full = store.load(session.id)
    assert full is not None and len(full.messages) == 11 and texts(full)[-1] == "q10"


def test_append_and_delete(store: SessionStore, backend: FileBackend, sessions_dir: Path) -> None:
    session = make_session(1)
    store.save(session)
    assert store.append_messages(session.id, [Message.assistant("x"), Message.user("y")]) == 2
    assert backend.append(session.id.bare, [{"role": "user", "content": "z"}]) == (3, 4)
    with pytest.raises(ConcurrencyError):
        store.save(session)
    [row] = store.list_sessions()
    assert (row.message_count, row.revision) == (4, 3)
    with pytest.raises(SessionNotFound):
        backend.append(str(uuid.uuid4()), [])
    assert store.delete(session.id) is True
    assert store.delete(session.id) is False
    assert not (sessions_dir / f"{session.id.bare}.json").exists()
    assert store.list_sessions() == []
    assert backend.history(session.id.bare) == []


# -- listing ---------------------------------------------------------------------------------


def test_listing_order_paging_and_workspace_filter(store: SessionStore, tmp_path: Path) -> None:
    ws1, ws2 = tmp_path / "ws1", tmp_path / "ws2"
    ids = []
    for i in range(5):
        session = make_session(i + 1)
        session.with_workspace(ws1 if i % 2 == 0 else ws2)
        store.save(session)
        ids.append(session.id.bare)
        time.sleep(0.002)
    assert [s.id for s in store.list_sessions()] == ids[::-1]
    assert [s.id for s in store.list_sessions(limit=2, offset=1)] == [ids[3], ids[2]]
    assert [s.id for s in store.list_sessions(workspace=ws1)] == [ids[4], ids[2], ids[0]]
    assert [s.id for s in store.list_sessions(workspace=ws2, limit=1)] == [ids[3]]
    assert store.count() == 5 and store.count(workspace=ws2) == 2
    recent = store.most_recent()
    assert recent is not None and recent.id.bare == ids[4]
    # appending is activity: the oldest becomes the newest
    store.append_messages(ids[0], [Message.user("bump")])
    assert store.list_sessions()[0].id == ids[0]


def test_listing_ties_break_by_id(backend: FileBackend) -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    ids = sorted(str(uuid.uuid4()) for _ in range(3))
    for sid in reversed(ids):
        backend.write(SessionWrite(sid, None, {"id": sid}, [], 0, False, summary(sid, moment)))
    assert [s.id for s in backend.list_sessions()] == ids


def test_listing_does_not_reparse_unchanged_files(
    store: SessionStore, backend: FileBackend, sessions_dir: Path
) -> None:
    sessions = [make_session(i + 1) for i in range(3)]
    for session in sessions:
        session.metadata.title = f"title {session.id.bare[:4]}"
        store.save(session)
    put_rust_document(sessions_dir)
    assert len(store.list_sessions()) == 4  # the Rust file is parsed once here

    fresh = FileBackend(sessions_dir)
    assert len(fresh.list_sessions()) == 4
    assert fresh.parse_count == 0  # everything came from the on-disk index
    before = backend.parse_count
    assert len(backend.list_sessions()) == 4
    assert backend.parse_count == before

    # Corrupt an indexed file in place, keeping its size and mtime: the index still answers.
    path = sessions_dir / f"{sessions[0].id.bare}.json"
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.write(b"#" * st.st_size)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size
    other = FileBackend(sessions_dir)
    titles = {s.id: s.title for s in other.list_sessions()}
    assert titles[sessions[0].id.bare] == sessions[0].metadata.title
    assert other.parse_count == 0
    assert other.problems() == []


def test_listing_revalidates_against_the_directory(
    store: SessionStore, backend: FileBackend, sessions_dir: Path
) -> None:
    session = make_session(2)
    store.save(session)
    assert [s.id for s in store.list_sessions()] == [session.id.bare]

    # a file written by the Rust astrid after the index was built
    rust = put_rust_document(sessions_dir)
    assert {s.id for s in store.list_sessions()} == {session.id.bare, RUST_ID}

    # the Rust astrid changes it: only that file is parsed again
    data = json.loads(RUST_DOCUMENT)
    data["metadata"]["title"] = "Renamed in Rust"
    put_rust_document(sessions_dir, json.dumps(data, indent=2))
    before = backend.parse_count
    rows = {s.id: s for s in store.list_sessions()}
    assert rows[RUST_ID].title == "Renamed in Rust"
    assert backend.parse_count == before + 1

    # removed behind astrid's back: dropped from the index
    rust.unlink()
    assert [s.id for s in store.list_sessions()] == [session.id.bare]
    fresh = FileBackend(sessions_dir)  # the cache on disk (snapshot + journal) agrees
    assert [s.id for s in fresh.list_sessions()] == [session.id.bare]
    assert fresh.parse_count == 0

    # a lost or garbled index is rebuilt
    (sessions_dir / INDEX_NAME).write_text("{not json", encoding="utf-8")
    assert [s.id for s in FileBackend(sessions_dir).list_sessions()] == [session.id.bare]


def test_a_corrupt_file_is_skipped_and_reported(
    store: SessionStore, backend: FileBackend, sessions_dir: Path
) -> None:
    good = make_session(2)
    store.save(good)
    bad_id = str(uuid.uuid4())
    bad = sessions_dir / f"{bad_id}.json"
    bad.write_text('{"id": "truncated', encoding="utf-8")
    upper = sessions_dir / f"{str(uuid.uuid4()).upper()}.json"
    upper.write_text(RUST_DOCUMENT, encoding="utf-8")
    (sessions_dir / "notes.json").write_text("{}", encoding="utf-8")
    (sessions_dir / f"{bad_id}.json.tmp.abc").write_text("partial", encoding="utf-8")
    not_object = sessions_dir / f"{uuid.uuid4()}.json"
    not_object.write_text("[]", encoding="utf-8")

    assert [s.id for s in store.list_sessions()] == [good.id.bare]
    assert store.count() == 1
    problems = dict(backend.problems())
    assert set(problems) == {bad, upper, not_object}
    assert "invalid JSON" in problems[bad]
    assert "canonical" in problems[upper]
    assert "JSON object" in problems[not_object]
    with pytest.raises(SerializationError, match=str(bad)):
        store.load(bad_id)
    with pytest.raises(SerializationError, match=str(bad)):
        backend.write(
            SessionWrite(bad_id, None, {"id": bad_id}, [], 0, False, summary(bad_id, utcnow()))
        )
    # the corrupt file is remembered, not parsed on every listing
    before = backend.parse_count
    store.list_sessions()
    assert backend.parse_count == before
    assert store.delete(bad_id) is True
    assert set(dict(backend.problems())) == {upper, not_object}


def test_prune_goes_by_last_activity(store: SessionStore, sessions_dir: Path) -> None:
    path = put_rust_document(sessions_dir)
    old = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    os.utime(path, (old, old))
    fresh = make_session(1)
    store.save(fresh)
    assert store.prune(older_than=timedelta(days=30)) == [RUST_ID]
    assert [s.id for s in store.list_sessions()] == [fresh.id.bare]


def test_the_directory_is_created_lazily(sessions_dir: Path) -> None:
    backend = FileBackend(sessions_dir)
    assert backend.list_sessions() == [] and backend.count_sessions() == 0
    assert backend.load(str(uuid.uuid4())) is None
    assert backend.delete(str(uuid.uuid4())) is False
    assert backend.problems() == []
    assert not sessions_dir.exists()
    SessionStore(backend).save(make_session(1))
    assert sessions_dir.is_dir()


# -- files on disk ---------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """Run with the common umask 022."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
def test_files_are_private_and_the_parent_is_left_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    sessions = home / "sessions"
    backend = FileBackend(sessions)
    store = SessionStore(backend)
    session = make_session(1)
    store.save(session)
    store.kv("deferred:x").set("k", b"v")
    store.list_sessions()

    assert mode(home) == 0o755  # the original chmod-ed an existing parent; astrid does not
    assert mode(sessions) == 0o700
    assert mode(sessions / ".locks") == 0o700
    assert mode(sessions / f"{session.id.bare}.json") == 0o600
    assert mode(sessions / INDEX_NAME) == 0o600
    store.save(session)  # the second save of a session is journalled
    assert mode(sessions / JOURNAL_NAME) == 0o600
    for lock in (sessions / ".locks").iterdir():
        assert mode(lock) == 0o600
    kv = home / "kv"
    assert mode(kv) == 0o700
    [ns_dir] = kv.iterdir()
    assert mode(ns_dir) == 0o700
    [value] = ns_dir.iterdir()
    assert mode(value) == 0o600

    # an existing directory keeps its mode; a saved file is 0600 whatever the umask
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.umask(0)
    other = make_session(1)
    SessionStore(FileBackend(shared)).save(other)
    assert mode(shared) == 0o755
    assert mode(shared / f"{other.id.bare}.json") == 0o600


def test_no_temp_file_is_left_after_a_save(store: SessionStore, sessions_dir: Path) -> None:
    session = make_session(2)
    store.save(session)
    session.add_message(Message.user("again"))
    store.save(session)
    store.list_sessions()
    names = os.listdir(sessions_dir)
    assert not [n for n in names if ".tmp" in n]
    assert sorted(names) == sorted([".locks", INDEX_NAME, JOURNAL_NAME, f"{session.id.bare}.json"])


@pytest.mark.parametrize(
    "bad",
    ["../../etc/passwd", "..", "a/b", "", "6f1c2a8e-0b7d-4f4e-9a51-2d3c4b5a6978/../../x", "\0"],
)
def test_bad_ids_are_rejected_before_any_filesystem_access(tmp_path: Path, bad: str) -> None:
    directory = tmp_path / "sessions"
    backend = FileBackend(directory)
    change = SessionWrite(bad, None, {"id": bad}, [], 0, False, summary(bad, utcnow()))
    with pytest.raises(InvalidSessionId):
        backend.write(change)
    with pytest.raises(InvalidSessionId):
        backend.load(bad)
    with pytest.raises(InvalidSessionId):
        backend.append(bad, [])
    with pytest.raises(InvalidSessionId):
        backend.delete(bad)
    with pytest.raises(InvalidSessionId):
        backend.history(bad)
    with pytest.raises(InvalidSessionId):
        backend.path_of(bad)
    with pytest.raises(InvalidSessionId):
        SessionStore(backend).load(bad)
    assert not directory.exists()
    assert os.listdir(tmp_path) == []


def test_ids_are_canonicalised_for_file_names(backend: FileBackend, sessions_dir: Path) -> None:
    sid = str(uuid.uuid4())
    loud = "session:" + sid.upper()
    backend.write(SessionWrite(loud, None, {"id": sid}, [], 0, False, summary(sid, utcnow())))
    assert (sessions_dir / f"{sid}.json").is_file()
    assert backend.load(loud) is not None
    assert backend.path_of(loud) == sessions_dir / f"{sid}.json"


# -- several writers -------------------------------------------------------------------------

WRITER = """
import pathlib, sys, time
from astrid import Message
from astrid.default_plugins.file_storage import FileBackend
from astrid.store import SessionStore

directory, sid, tag, go = sys.argv[1:5]
while not pathlib.Path(go).exists():
    time.sleep(0.001)
store = SessionStore(FileBackend(directory))
for i in range(100):
    store.append_messages(sid, [Message.user(f"{tag}-{i}")])
"""


def test_two_processes_appending_lose_nothing(store: SessionStore, sessions_dir: Path) -> None:
    session = make_session(1)
    store.save(session)
    go = sessions_dir.parent / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(sessions_dir), session.id.bare, tag, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for tag in ("a", "b")
    ]
    go.touch()
    for proc in procs:
        _out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()

    loaded = store.load(session.id)
    assert loaded is not None
    got = texts(loaded)
    assert len(got) == 201
    assert [t for t in got if t and t.startswith("a-")] == [f"a-{i}" for i in range(100)]
    assert [t for t in got if t and t.startswith("b-")] == [f"b-{i}" for i in range(100)]
    [row] = store.list_sessions()
    assert (row.message_count, row.revision) == (201, 201)


def test_threads_appending_lose_nothing(store: SessionStore, backend: FileBackend) -> None:
    session = make_session(0)
    store.save(session)

    def writer(tag: str) -> None:
        for i in range(20):
            store.append_messages(session.id, [Message.user(f"{tag}-{i}")])

    threads = [threading.Thread(target=writer, args=(t,)) for t in "wxyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = store.load(session.id)
    assert loaded is not None
    got = texts(loaded)
    assert len(got) == 80
    for tag in "wxyz":
        assert [t for t in got if t and t.startswith(tag)] == [f"{tag}-{i}" for i in range(20)]


# -- the key-value store ---------------------------------------------------------------------


def test_kv_basics_and_layout(tmp_path: Path) -> None:
    root = tmp_path / "kv"
    kv = FileKvStore(root)
    assert kv.get("ns", "k") is None and kv.list_keys("ns") == [] and not root.exists()
    kv.set("ns", "k", b"one")
    kv.set("ns", "k", b"two")
    assert kv.get("ns", "k") == b"two"
    assert kv.exists("ns", "k") and not kv.exists("ns", "other")

    def b64(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    assert (root / b64("ns") / b64("k")).read_bytes() == b"two"
    odd = ["../../etc/passwd", "a/b", ".", "ключ", "x" * 300, "with space", "k"]
    for key in odd:
        kv.set("ws:/a/b:allowances", key, key.encode())
    assert kv.list_keys("ws:/a/b:allowances") == sorted(odd)
    for key in odd:
        assert kv.get("ws:/a/b:allowances", key) == key.encode()
    long_ns = "ws:" + "/deep" * 80
    kv.set(long_ns, "all", b"{}")
    assert FileKvStore(root).get(long_ns, "all") == b"{}"
    assert kv.list_keys(long_ns) == ["all"]
    assert all(len(p.name) <= 255 for p in root.rglob("*"))

    assert kv.delete("ws:/a/b:allowances", "x" * 300) is True
    assert kv.delete("ws:/a/b:allowances", "x" * 300) is False
    assert kv.clear_namespace("ws:/a/b:allowances") == len(odd) - 1
    assert kv.clear_namespace("ws:/a/b:allowances") == 0
    assert kv.list_keys("ws:/a/b:allowances") == []
    assert kv.get("ns", "k") == b"two"
    assert not [p for p in root.rglob("*") if ".tmp" in p.name]

    for ns, key in [("", "k"), ("ns", ""), ("n\0s", "k"), ("ns", "k\0")]:
        with pytest.raises(InvalidKey):
            kv.set(ns, key, b"v")
        with pytest.raises(InvalidKey):
            kv.get(ns, key)
    with pytest.raises(InvalidKey):
        kv.list_keys("")
    with pytest.raises(InvalidKey):
        kv.clear_namespace("a\0")

def test_kv_list_namespaces_reads_the_layout_and_ignores_what_is_not_a_namespace(
    tmp_path: Path,
) -> None:
    root = tmp_path / "kv"
    kv = FileKvStore(root)
    assert kv.list_namespaces() == [] and not root.exists()

    def b64(text: str) -> str:
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    long_ns = "ws:" + "/deep" * 80
    kv.set("short", "k", b"v")
    kv.set(long_ns, "all", b"{}")
    [hashed] = [p for p in root.iterdir() if p.name.startswith("~")]
    assert (hashed / ".namespace").read_text(encoding="utf-8") == long_ns
    assert kv.list_keys(long_ns) == ["all"]  # the name file is not a key

    # Directories and files that are not namespaces with keys are not listed.
    (root / b64("emptied")).mkdir()  # a namespace whose last key was deleted
    (root / b64("temps only")).mkdir()
    (root / b64("temps only") / f"{b64('k')}.tmp.{'0' * 16}").write_bytes(b"partial")
    (root / b64("orphaned long key")).mkdir()
    (root / b64("orphaned long key") / ("~" + "0" * 64)).write_bytes(b"no .key file")
    (root / b64("a file")).write_bytes(b"not a directory")
    (root / "not base64!").mkdir()
    (root / "not base64!" / b64("k")).write_bytes(b"v")
    legacy = root / ("~" + "1" * 64)  # a long namespace written before names were kept
    legacy.mkdir()
    (legacy / b64("k")).write_bytes(b"v")
    forged = root / ("~" + "2" * 64)  # a name file that does not hash to its directory
    forged.mkdir()
    (forged / ".namespace").write_text("forged")
    (forged / b64("k")).write_bytes(b"v")
    assert kv.list_namespaces() == sorted(["short", long_ns])

    assert kv.clear_namespace(long_ns) == 1
    assert not hashed.exists() and kv.list_namespaces() == ["short"]
    kv.set(long_ns, "again", b"v")
    assert kv.list_namespaces() == sorted(["short", long_ns])
    assert kv.delete(long_ns, "again") is True
    assert kv.list_namespaces() == ["short"]  # the directory and its name file stay, empty


def test_the_store_kv_lives_next_to_the_sessions(
    store: SessionStore, sessions_dir: Path, tmp_path: Path
) -> None:
    store.kv("deferred:abc").set_json("r1", {"a": 1})
    again = SessionStore(FileBackend(sessions_dir))
    assert again.kv("deferred:abc").get_json("r1") == {"a": 1}
    assert (sessions_dir.parent / "kv").is_dir()
    elsewhere = FileBackend(sessions_dir, kv_directory=tmp_path / "elsewhere")
    assert elsewhere.kv().get("deferred:abc", "r1") is None


def test_workspace_state_round_trips(
    store: SessionStore, sessions_dir: Path, tmp_path: Path
) -> None:
    session = make_session(1)
    tracker = store.attach_workspace(session, tmp_path / "ws", max_usd=5.0)
    tracker.record_cost(1.25)
    store.save_workspace_of(session)
    state = SessionStore(FileBackend(sessions_dir)).load_workspace_state(tmp_path / "ws")
    assert state.budget is not None and state.budget.total_spent_usd == 1.25


# -- the plugin ------------------------------------------------------------------------------


def test_registration_and_options(tmp_path: Path) -> None:
    found: dict[str, Any] = {}

    def register(name: str, factory: Any, options: Any, description: str = "") -> None:
        found[name] = (factory, options, description)

    file_storage.register_storage_backends(register=register)
    factory, options, description = found["file"]
    assert options is FileOptions and description
    made = factory(FileOptions(), PluginContext(home=tmp_path))
    assert isinstance(made, FileBackend) and isinstance(made, StorageBackend)
    assert made.directory == tmp_path / "sessions"
    assert made.kv_directory == tmp_path / "kv"
    assert made.schema_version() == 1 and made.name == "file"
    custom = factory(
        FileOptions(directory=str(tmp_path / "s"), kv_directory=str(tmp_path / "k")),
        PluginContext(home=tmp_path),
    )
    assert (custom.directory, custom.kv_directory) == (tmp_path / "s", tmp_path / "k")
    with pytest.raises(ValidationError):
        FileOptions.model_validate({"dir": "x"})
    made.close()


def test_a_fifo_in_place_of_a_session_file_is_an_error_not_a_hang(
    store: SessionStore, sessions_dir: Path
) -> None:
    good = AgentSession("p")
    good.add_message(Message.user("kept"))
    store.save(good)
    sid = str(uuid.uuid4())
    os.mkfifo(sessions_dir / f"{sid}.json", 0o600)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            store.load(sid)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "loading a FIFO blocked"
    assert isinstance(outcome[0], StorageError) and "not a regular file" in str(outcome[0])
    loaded = store.load(good.id)
    assert loaded is not None and loaded.messages[0].text() == "kept"


# -- an unusable directory is refused at open (issue 14 item 14) ------------------------------


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_directory_that_is_a_regular_file_is_refused_at_open(tmp_path: Path) -> None:
    regular = tmp_path / "sessions"
    regular.write_text("not a directory\n")
    with pytest.raises(StorageError, match=f"{regular} is not a directory"):
        FileBackend(regular)
    with pytest.raises(StorageError, match=f"{regular} is not a directory"):
        FileBackend(regular / "below")  # a missing directory under a regular file
    with pytest.raises(StorageError, match="is not a directory"):
        FileBackend(tmp_path / "ok", kv_directory=regular)
    assert regular.read_text() == "not a directory\n"


def test_a_non_empty_directory_of_someone_else_is_refused_and_left_alone(tmp_path: Path) -> None:
    foreign = tmp_path / "etc"
    (foreign / "ssh").mkdir(parents=True)
    (foreign / "hosts").write_text("127.0.0.1 localhost\n")
    (foreign / "settings.json").write_text("{}")
    with pytest.raises(StorageError, match="is not empty and is not a session directory"):
        FileBackend(foreign)
    with pytest.raises(StorageError, match=str(foreign)):
        file_storage._create(
            FileOptions(directory=str(foreign)), PluginContext(home=tmp_path / "home")
        )
    assert _names(foreign) == ["hosts", "settings.json", "ssh"]  # no .locks, no index


def test_an_empty_a_new_or_an_astrid_or_rust_directory_is_accepted(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "lost+found").mkdir(parents=True)  # a freshly made file system
    SessionStore(FileBackend(empty)).save(AgentSession("p"))
    assert FileBackend(empty).count_sessions() == 1  # now it holds astrid's files
    new = tmp_path / "new" / "sessions"
    FileBackend(new)
    assert not new.exists() and not new.parent.exists()  # opening creates nothing
    rust = tmp_path / "rust"
    rust.mkdir()
    (rust / f"{RUST_ID}.json").write_text(RUST_DOCUMENT)  # written by the Rust astrid
    (rust / "notes.txt").write_text("mine")
    assert [r.id for r in FileBackend(rust).list_sessions()] == [RUST_ID]


def test_read_only_open_creates_nothing_and_refuses_writes(sessions_dir: Path) -> None:
    session = AgentSession("p")
    session.add_message(Message.user("kept"))
    SessionStore(FileBackend(sessions_dir)).save(session)
    for name in (INDEX_NAME, JOURNAL_NAME):
        (sessions_dir / name).unlink(missing_ok=True)
    for lock in (sessions_dir / ".locks").iterdir():
        lock.unlink()
    (sessions_dir / ".locks").rmdir()
    before = _names(sessions_dir)
    inspect = SessionStore(FileBackend(sessions_dir, read_only=True))
    assert [r.id for r in inspect.list_sessions()] == [session.id.bare]
    assert inspect.backend.problems() == []  # type: ignore[attr-defined]
    loaded = inspect.load(session.id)
    assert loaded is not None and loaded.messages[0].text() == "kept"
    loaded.add_message(Message.user("more"))
    with pytest.raises(StorageError, match="read-only"):
        inspect.save(loaded)
    assert _names(sessions_dir) == before  # no .locks, no index, no temp file
    context = PluginContext(home=sessions_dir.parent, read_only=True)
    assert file_storage._create(FileOptions(), context).read_only is True


def test_a_directory_named_like_a_session_is_an_error_naming_its_path(
    backend: FileBackend, sessions_dir: Path
) -> None:
    sid = str(uuid.uuid4())
    (sessions_dir / f"{sid}.json").mkdir(parents=True)
    with pytest.raises(StorageError) as err:
        backend.load(sid)
    message = str(err.value)
    assert f"{sessions_dir / sid}.json is a directory" in message
    assert "Errno" not in message and not message.rstrip().endswith(tuple("0123456789"))
    assert [(p, why) for p, why in backend.problems()] == [
        (sessions_dir / f"{sid}.json", "not a regular file")
    ]
