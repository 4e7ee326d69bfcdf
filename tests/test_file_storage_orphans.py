"""The file backend removes the temp files of killed writers, never those of live ones."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from astrid import AgentSession, Message
from astrid.default_plugins.file_storage import INDEX_NAME, LOCKS_DIR, FileBackend, FileKvStore
from astrid.store import SessionStore
from tests.reliability.harness import REPO, child_env

HOUR_AGO = time.time() - 3600

HOLDER = """
import fcntl, os, sys
lock, *temps = sys.argv[1:]
os.makedirs(os.path.dirname(lock), exist_ok=True)
fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
for temp in temps:  # the state of a save between writing its temp file and the rename
    with open(temp, "wb") as fh:
        fh.write(b'{"id": "partial')
print("ready", flush=True)
sys.stdin.read()
"""

BIG_SAVER = """
import sys
from astrid import Message
from astrid.default_plugins.file_storage import FileBackend
from astrid.store import SessionStore

store = SessionStore(FileBackend(sys.argv[1]))
session = store.load(sys.argv[2])
session.add_message(Message.user("x" * 40_000_000))
print("saving", flush=True)
store.save(session)
print("saved", flush=True)
"""

SAVER = """
import sys
from astrid import Message
from astrid.default_plugins.file_storage import FileBackend
from astrid.store import SessionStore

directory, shared, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = SessionStore(FileBackend(directory))
own = store.new_session("own")
for i in range(count):
    own.add_message(Message.user(f"own-{i}"))
    store.save(own)
    store.append_messages(shared, [Message.user(f"{own.id.bare}-{i}")])
print(own.id.bare, flush=True)
"""


class Holder:
    """A child process that holds a flock and made temp files, until killed."""

    def __init__(self, lock: Path, *temps: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(lock), *map(str, temps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            cwd=str(REPO),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == b"ready\n", self.proc.communicate(timeout=30)[1].decode()

    def kill(self) -> None:
        """SIGKILL it: its lock is released, its temp files stay behind."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.communicate(timeout=30)
        assert self.proc.returncode == -signal.SIGKILL


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    """Holders started by a test, killed at its end whatever happens."""
    started: list[Holder] = []
    yield started
    for holder in started:
        if holder.proc.poll() is None:
            holder.kill()


@pytest.fixture
def sessions_dir(tmp_path: Path) -> Path:
    """A sessions directory with one saved session (so ``.locks`` exists)."""
    directory = tmp_path / "sessions"
    session = AgentSession("hi")
    session.add_message(Message.user("one"))
    SessionStore(FileBackend(directory)).save(session)
    return directory


def temp_of(directory: Path, target: str) -> Path:
    """A temp file name as ``_atomic_write`` makes them."""
    return directory / f"{target}.tmp.{os.urandom(8).hex()}"


def test_the_temp_files_of_a_killed_lock_holder_are_removed_on_open(
    sessions_dir: Path, holders: list[Holder]
) -> None:
    sid = str(uuid.uuid4())
    doc_temp = temp_of(sessions_dir, f"{sid}.json")
    holders.append(Holder(sessions_dir / LOCKS_DIR / f"{sid}.lock", doc_temp))
    index_temp = temp_of(sessions_dir, INDEX_NAME)
    holders.append(Holder(sessions_dir / LOCKS_DIR / "index.lock", index_temp))
    for holder in holders:
        holder.kill()
    assert doc_temp.exists() and index_temp.exists()

    backend = FileBackend(sessions_dir)
    assert backend.swept_temp_files == 2
    assert not doc_temp.exists() and not index_temp.exists()
    assert len(backend.list_sessions()) == 1 and backend.problems() == []
    assert FileBackend(sessions_dir).swept_temp_files == 0


def test_a_live_writers_temp_file_is_left_alone_however_old(
    sessions_dir: Path, holders: list[Holder]
) -> None:
    sid = str(uuid.uuid4())
    doc_temp = temp_of(sessions_dir, f"{sid}.json")
    index_temp = temp_of(sessions_dir, INDEX_NAME)
    holders.append(Holder(sessions_dir / LOCKS_DIR / f"{sid}.lock", doc_temp))
    holders.append(Holder(sessions_dir / LOCKS_DIR / "index.lock", index_temp))
    for temp in (doc_temp, index_temp):
        os.utime(temp, (HOUR_AGO, HOUR_AGO))  # the lock decides, not the age

    backend = FileBackend(sessions_dir)
    assert backend.swept_temp_files == 0
    assert backend.sweep_temp_files() == 0
    assert doc_temp.exists() and index_temp.exists()

    holders[0].kill()  # the session's writer dies; the index holder is still alive
    assert backend.sweep_temp_files() == 1
    assert not doc_temp.exists() and index_temp.exists()
    holders[1].kill()
    assert FileBackend(sessions_dir).swept_temp_files == 1
    assert not index_temp.exists()


def test_a_save_killed_inside_its_write_leaves_a_temp_file_that_is_removed(
    sessions_dir: Path,
) -> None:
    [sid] = [p.stem for p in sessions_dir.glob("*.json") if not p.name.startswith(".")]
    document = (sessions_dir / f"{sid}.json").read_bytes()
    for _attempt in range(5):
        child = subprocess.Popen(
            [sys.executable, "-c", BIG_SAVER, str(sessions_dir), sid],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            cwd=str(REPO),
        )
        assert child.stdout is not None
        assert child.stdout.readline() == b"saving\n"
        deadline = time.monotonic() + 60
        while not list(sessions_dir.glob("*.json.tmp.*")) and time.monotonic() < deadline:
            if child.poll() is not None:
                break
            time.sleep(0.0005)
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        temps = list(sessions_dir.glob("*.json.tmp.*"))
        if child.returncode == -signal.SIGKILL and temps:
            break
        # the save finished before the kill: put the old document back and try again
        for temp in temps:
            temp.unlink()
        (sessions_dir / f"{sid}.json").write_bytes(document)
    else:
        pytest.fail("could not kill a save between its temp file and its rename")

    backend = FileBackend(sessions_dir)
    assert backend.swept_temp_files == 1
    assert not list(sessions_dir.glob("*.tmp.*"))
    loaded = SessionStore(backend).load(sid)
    assert loaded is not None and [m.text() for m in loaded.messages] == ["one"]


def test_without_a_lock_file_the_age_rule_decides(sessions_dir: Path) -> None:
    sid = str(uuid.uuid4())  # no .locks/<sid>.lock: not written by a locking astrid
    young = temp_of(sessions_dir, f"{sid}.json")
    old = temp_of(sessions_dir, f"{sid}.json")
    not_ours = [
        sessions_dir / f"{sid}.json.tmp",  # the Rust astrid's temp file name
        temp_of(sessions_dir, f"{sid.upper()}.json"),
        temp_of(sessions_dir, "notes.json"),
        sessions_dir / f"{sid}.json.tmp.xyz",
    ]
    for path in [young, old, *not_ours]:
        path.write_bytes(b"partial")
        if path != young:
            os.utime(path, (HOUR_AGO, HOUR_AGO))
    assert FileBackend(sessions_dir).swept_temp_files == 1
    assert young.exists() and not old.exists()
    assert all(p.exists() for p in not_ours)


def test_nothing_is_swept_from_a_missing_or_unreadable_directory(tmp_path: Path) -> None:
    assert FileBackend(tmp_path / "absent").swept_temp_files == 0
    assert not (tmp_path / "absent").exists()
    locked_out = tmp_path / "locked-out"
    locked_out.mkdir(mode=0o000)
    try:
        assert FileBackend(locked_out).swept_temp_files == 0
    finally:
        locked_out.chmod(0o700)


def test_kv_temp_files_go_by_age(tmp_path: Path) -> None:
    kv = FileKvStore(tmp_path / "kv")
    kv.set("ns", "k", b"v")
    kv.set("other", "k", b"w")
    ns_dir = tmp_path / "kv" / base64.urlsafe_b64encode(b"ns").decode().rstrip("=")
    assert ns_dir.is_dir()
    young, old = temp_of(ns_dir, "aw"), temp_of(ns_dir, "aw")
    long_name = temp_of(ns_dir, "~" + "0" * 64 + ".key")
    for path in (young, old, long_name):
        path.write_bytes(b"partial")
    for path in (old, long_name):
        os.utime(path, (HOUR_AGO, HOUR_AGO))
    assert kv.list_keys("ns") == ["k"]  # a listing sweeps its namespace directory
    assert young.exists() and not old.exists() and not long_name.exists()
    os.utime(young, (HOUR_AGO, HOUR_AGO))
    assert FileBackend(tmp_path / "sessions", kv_directory=tmp_path / "kv").sweep_temp_files() == 1
    assert not young.exists()
    assert kv.get("ns", "k") == b"v" and kv.get("other", "k") == b"w"


def test_sweeping_while_other_processes_save_removes_nothing_live(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    store = SessionStore(FileBackend(directory))
    shared = store.new_session("shared")
    store.save(shared)
    count = 60
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", SAVER, str(directory), shared.id.bare, str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(),
            cwd=str(REPO),
        )
        for _ in range(3)
    ]
    swept = opened = 0
    while any(w.poll() is None for w in writers):
        backend = FileBackend(directory)
        swept += backend.swept_temp_files + backend.sweep_temp_files()
        opened += 1
    owned = []
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err.decode()
        owned.append(out.decode().strip())
    assert opened > 10  # the sweeps really ran alongside the saves
    assert swept == 0
    for sid in owned:
        loaded = store.load(sid)
        assert loaded is not None and len(loaded.messages) == count
    loaded = store.load(shared.id)
    assert loaded is not None and len(loaded.messages) == 3 * count
    assert not list(directory.glob("*.tmp.*"))
    assert {r.id: r.message_count for r in store.list_sessions()}[shared.id.bare] == 3 * count
