"""The file backend's listing cache: a snapshot plus an append-only journal, only ever a cache."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from astrid import AgentSession, Message
from astrid.default_plugins.file_storage import (
    INDEX_NAME,
    JOURNAL_MIN_BYTES,
    JOURNAL_NAME,
    FileBackend,
)
from astrid.store import SessionStore
from tests.originals import RUST_DOCUMENT, RUST_ID
from tests.reliability.harness import REPO, child_env


def new_session(n: int, title: str = "") -> AgentSession:
    """A session with ``n`` user messages."""
    session = AgentSession("hi")
    session.metadata.title = title or None
    for i in range(n):
        session.add_message(Message.user(f"m{i}"))
    return session


def rows(directory: Path) -> dict[str, int]:
    """id → message count, as a new backend (a new process: nothing cached) lists them."""
    return {r.id: r.message_count for r in FileBackend(directory).list_sessions(limit=10_000)}


def truth(store: SessionStore, sessions: list[AgentSession]) -> dict[str, int]:
    """id → message count, loading every session."""
    counts = {}
    for session in sessions:
        loaded = store.load(session.id)
        assert loaded is not None
        counts[session.id.bare] = len(loaded.messages)
    return counts


def journal_lines(directory: Path) -> list[bytes]:
    """The journal's lines (none if it does not exist)."""
    try:
        return (directory / JOURNAL_NAME).read_bytes().splitlines()
    except FileNotFoundError:
        return []


def test_a_save_appends_one_line_and_leaves_the_snapshot_alone(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    first = new_session(1)
    store.save(first)  # the first save of a directory writes the snapshot
    snapshot = (directory / INDEX_NAME).stat()
    assert journal_lines(directory) == []

    second = new_session(2, "second")
    store.save(second)
    first.add_message(Message.user("more"))
    store.save(first)
    store.delete(second.id)
    lines = [json.loads(line) for line in journal_lines(directory)]
    assert [(sid, entry is None) for sid, entry in lines] == [
        (second.id.bare, False),
        (first.id.bare, False),
        (second.id.bare, True),
    ]
    assert lines[1][1]["message_count"] == 2
    after = (directory / INDEX_NAME).stat()
    assert (after.st_ino, after.st_mtime_ns) == (snapshot.st_ino, snapshot.st_mtime_ns)

    fresh = FileBackend(directory)
    assert [(r.id, r.message_count) for r in fresh.list_sessions()] == [(first.id.bare, 2)]
    assert fresh.parse_count == 0  # snapshot + journal answered everything


def test_the_journal_is_folded_into_the_snapshot_once_it_outgrows_it(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    sessions = [new_session(1, f"session {i}") for i in range(3)]
    biggest = 0
    for i in range(400):
        session = sessions[i % 3]
        session.add_message(Message.user(f"n{i}"))
        store.save(session)
        journal = directory / JOURNAL_NAME
        size = journal.stat().st_size if journal.exists() else 0
        biggest = max(biggest, size)
        assert size <= JOURNAL_MIN_BYTES
    assert biggest > JOURNAL_MIN_BYTES // 2  # it did grow, and was folded at the limit
    assert len(journal_lines(directory)) < 400
    snapshot = json.loads((directory / INDEX_NAME).read_bytes())
    assert set(snapshot["sessions"]) == {s.id.bare for s in sessions}
    fresh = FileBackend(directory)
    assert rows(directory) == truth(store, sessions)
    assert {r.id: r.message_count for r in fresh.list_sessions()} == truth(store, sessions)
    assert fresh.parse_count == 0


def test_a_torn_last_line_is_ignored_and_does_not_swallow_the_next(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    sessions = [new_session(1), new_session(2)]
    for session in sessions:
        store.save(session)
    journal = directory / JOURNAL_NAME
    whole = journal.read_bytes()
    torn = b'["' + sessions[0].id.bare.encode() + b'",{"ino":1,"mtime_ns'  # a crash mid-append
    journal.write_bytes(whole + torn)

    sessions[0].add_message(Message.user("after the crash"))
    store.save(sessions[0])  # the torn piece becomes a line of its own, the save another
    assert journal.read_bytes().startswith(whole + torn + b"\n")
    fresh = FileBackend(directory)
    assert {r.id: r.message_count for r in fresh.list_sessions()} == truth(store, sessions)
    assert fresh.parse_count == 0  # nothing was lost but the torn line
    assert not journal.exists()  # the listing saw a bad line and folded the journal
    assert truth(store, sessions) == {sessions[0].id.bare: 2, sessions[1].id.bare: 2}

    journal.write_bytes(torn)  # a torn line alone, read by a listing first
    assert rows(directory) == truth(store, sessions)


def _lying_lines(directory: Path) -> bytes:
    """Well-formed lines whose entries claim 999 messages for stats no file has."""
    out = []
    for line in journal_lines(directory):
        sid, entry = json.loads(line)
        entry.update(message_count=999, ino=0, mtime_ns=0, size=0)
        out.append(json.dumps([sid, entry]).encode())
    return b"\n".join(out) + b"\n"


DAMAGED_JOURNALS: dict[str, Callable[[Path], bytes]] = {
    "binary-garbage": lambda d: random.Random(7).randbytes(4096),
    "nul-bytes": lambda d: b"\0" * 8192,
    "deeply-nested": lambda d: b"[" * 100_000 + b"\n",
    "wrong-shapes": lambda d: b'{"a": 1}\n[1, 2]\n["x"]\n["x", 5]\n["x", {"ino": "1"}]\n\n[]\n',
    "lying-entries": _lying_lines,
    "drops-of-everything": lambda d: b"".join(
        json.dumps([p.stem, None]).encode() + b"\n" for p in d.glob("*-*.json")
    ),
    "one-huge-line": lambda d: b'["' + b"a" * 3_000_000,
    "not-utf8": lambda d: b'["\xff\xfe", null]\n',
}


@pytest.mark.parametrize("case", sorted(DAMAGED_JOURNALS))
def test_a_damaged_journal_is_only_a_cache(case: str, tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    sessions = [new_session(i + 1) for i in range(3)]
    for session in sessions:
        store.save(session)
    (directory / JOURNAL_NAME).write_bytes(DAMAGED_JOURNALS[case](directory))
    fresh = FileBackend(directory)
    assert {r.id: r.message_count for r in fresh.list_sessions()} == truth(store, sessions)
    assert fresh.problems() == []
    sessions[0].add_message(Message.user("still saving"))
    store.save(sessions[0])
    assert rows(directory) == truth(store, sessions)


@pytest.mark.parametrize("kind", ["fifo", "directory", "symlink"])
def test_a_journal_that_is_not_a_regular_file_is_ignored(kind: str, tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    sessions = [new_session(1), new_session(2)]
    store.save(sessions[0])
    journal = directory / JOURNAL_NAME
    outside = tmp_path / "outside"
    outside.write_bytes(b"")
    if kind == "fifo":
        os.mkfifo(journal)
    elif kind == "directory":
        journal.mkdir()
    else:
        journal.symlink_to(outside)
    store.save(sessions[1])  # no hang, no error: the cache is skipped
    sessions[0].add_message(Message.user("x"))
    store.save(sessions[0])
    assert rows(directory) == truth(store, sessions)
    assert outside.read_bytes() == b""  # never written through the link


def test_a_stale_journal_over_a_newer_snapshot_is_harmless(tmp_path: Path) -> None:
    # A crash between renaming the new snapshot and removing the journal it absorbed.
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    session = new_session(1)
    store.save(session)
    session.add_message(Message.user("two"))
    store.save(session)
    stale = (directory / JOURNAL_NAME).read_bytes()
    session.add_message(Message.user("three"))
    store.save(session)
    other = new_session(4)
    store.save(other)
    (directory / JOURNAL_NAME).write_bytes(b"junk\n")
    FileBackend(directory).list_sessions()  # the bad line gets the journal folded
    assert not (directory / JOURNAL_NAME).exists()
    (directory / JOURNAL_NAME).write_bytes(stale)
    assert rows(directory) == {session.id.bare: 3, other.id.bare: 4}


def test_a_lost_snapshot_is_rebuilt_and_the_listing_stays_right(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    sessions = [new_session(i + 1) for i in range(3)]
    for session in sessions:
        store.save(session)
    (directory / INDEX_NAME).unlink()
    assert rows(directory) == truth(store, sessions)
    sessions[2].add_message(Message.user("x"))
    store.save(sessions[2])  # a save without a snapshot writes one
    assert (directory / INDEX_NAME).exists()
    fresh = FileBackend(directory)
    assert {r.id: r.message_count for r in fresh.list_sessions()} == truth(store, sessions)


def test_a_hand_written_title_with_a_lone_surrogate_lists(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    directory.mkdir()
    data = json.loads(RUST_DOCUMENT)
    data["metadata"]["title"] = "\ud800 odd"
    (directory / f"{RUST_ID}.json").write_text(json.dumps(data), encoding="utf-8")
    backend = FileBackend(directory)
    [row] = backend.list_sessions()
    assert row.title == "\ud800 odd"
    fresh = FileBackend(directory)
    assert [r.title for r in fresh.list_sessions()] == ["\ud800 odd"]
    assert fresh.parse_count == 0


SAVE_THREE = """
import sys
from astrid import AgentSession, Message
from astrid.default_plugins.file_storage import FileBackend
from astrid.store import SessionStore

store = SessionStore(FileBackend(sys.argv[1]))
for i in range(3):
    session = AgentSession("from a child")
    session.add_message(Message.user(f"child {i}"))
    store.save(session)
    print(session.id.bare)
"""


def test_a_warm_backend_sees_another_processs_saves_without_parsing(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    mine = new_session(2)
    store.save(mine)
    backend = store.backend
    assert isinstance(backend, FileBackend)
    assert len(backend.list_sessions()) == 1
    done = subprocess.run(
        [sys.executable, "-c", SAVE_THREE, str(directory)],
        capture_output=True,
        env=child_env(),
        cwd=str(REPO),
        timeout=120,
        check=True,
    )
    theirs = done.stdout.decode().split()
    before = backend.parse_count
    assert {r.id for r in backend.list_sessions()} == {mine.id.bare, *theirs}
    assert backend.parse_count == before


def test_appending_and_listing_threads_agree(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    sessions = [new_session(1) for _ in range(4)]
    for session in sessions:
        store.save(session)
    errors: list[BaseException] = []

    def append(session: AgentSession) -> None:
        try:
            for i in range(30):
                store.append_messages(session.id, [Message.user(f"t{i}")])
        except BaseException as exc:
            errors.append(exc)

    def lister() -> None:
        try:
            for _ in range(30):
                store.list_sessions()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(s,)) for s in sessions]
    threads += [threading.Thread(target=lister) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert rows(directory) == {s.id.bare: 31 for s in sessions}
    assert {r.id: r.message_count for r in store.list_sessions()} == rows(directory)


def test_sessions_written_behind_astrids_back_are_journalled_by_a_listing(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    store.save(new_session(1))
    (directory / f"{RUST_ID}.json").write_text(RUST_DOCUMENT, encoding="utf-8")
    assert len(store.list_sessions()) == 2  # parses the Rust file, journals its entry
    [line] = journal_lines(directory)
    assert json.loads(line)[0] == RUST_ID
    fresh = FileBackend(directory)
    assert len(fresh.list_sessions()) == 2 and fresh.parse_count == 0


LIST_IN_CHILD = """
import sys
from astrid.default_plugins.file_storage import FileBackend

print(len(FileBackend(sys.argv[1]).list_sessions()))
"""


def test_a_snapshot_that_is_a_fifo_does_not_block_the_listing(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    sessions = [new_session(1), new_session(2)]
    for session in sessions:
        store.save(session)
    (directory / INDEX_NAME).unlink()
    os.mkfifo(directory / INDEX_NAME)
    done = subprocess.run(  # in a child, so that a regression times out instead of hanging
        [sys.executable, "-c", LIST_IN_CHILD, str(directory)],
        capture_output=True,
        env=child_env(),
        cwd=str(REPO),
        timeout=60,
        check=True,
    )
    assert done.stdout == b"2\n"
    sessions[0].add_message(Message.user("x"))
    store.save(sessions[0])
    assert rows(directory) == truth(store, sessions)
