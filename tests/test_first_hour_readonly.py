"""A read-only store can be read (issue 20, item 4).

On a home the user cannot write (0500, the database 0400), ``sessions list``, ``show``,
``export`` and ``doctor`` work: a reading command opens the store read-only when it cannot open
it to write. A write on a read-only store is a ``StorageError`` that says "read-only" and names
the path; ``doctor`` on a fresh home creates nothing.

The tests run as root here, and root ignores file modes: the CLI runs as root without
``CAP_DAC_OVERRIDE``/``CAP_DAC_READ_SEARCH`` (``setpriv --bounding-set``), which makes the
kernel apply the modes to it like to any user. In-process, the store is opened with the
read-only flag and the files are compared byte for byte before and after.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from astrid import Message
from astrid.default_plugins.file_storage import FileBackend
from astrid.default_plugins.sqlite_storage import SqliteBackend
from astrid.errors import StorageError
from astrid.store import SessionStore, open_store

FILE_CONFIG = '[storage]\nbackend = "file"\n'


def _without_dac_override() -> list[str]:
    """The command prefix that makes file modes bind this process's children, or a skip."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv is not installed: file modes cannot bind")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.fixture
def as_a_user(tmp_path: Path) -> list[str]:
    """The prefix, checked: under it, a 0500 directory refuses a new file."""
    prefix = _without_dac_override()
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o500)
    try:
        done = subprocess.run([*prefix, "touch", str(probe / "x")], capture_output=True)
    finally:
        probe.chmod(0o700)
    if done.returncode == 0:
        pytest.skip("file modes do not bind here (setpriv did not drop CAP_DAC_OVERRIDE)")
    return prefix


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root``: its mode and (for a file) its bytes."""
    out: dict[str, tuple[int, bytes | None]] = {}
    for path in sorted([root, *root.rglob("*")]):
        st = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        out[str(path.relative_to(root))] = (st.st_mode, content)
    return out


def make_read_only(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        path.chmod(0o500 if path.is_dir() else 0o400)
    root.chmod(0o500)


def make_writable(root: Path) -> None:
    root.chmod(0o700)
    for path in root.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)


@pytest.fixture
def read_only_home(
    tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Path, Path, str]]:
    """(home, config file, a stored session id) for the backend named by the param; the home
    is made read-only (0500 directories, 0400 files) after the session is saved."""
    home = tmp_path / "home"
    config = tmp_path / "astrid.toml"
    config.write_text(FILE_CONFIG if request.param == "file" else "", encoding="utf-8")
    os.environ["ASTRID_HOME"] = str(home)
    try:
        with open_store(config) as store:
            session = store.new_session("You are terse.")
            session.metadata.title = "kept"
            session.add_message(Message.user("hello"))
            session.add_message(Message.assistant("hi"))
            store.save(session)
            sid = session.id.bare
    finally:
        del os.environ["ASTRID_HOME"]
    make_read_only(home)
    yield home, config, sid
    make_writable(home)


def run(
    prefix: list[str], home: Path, config: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "astrid.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=config.parent,
        env={**os.environ, "ASTRID_HOME": str(home)},
    )


@pytest.mark.parametrize("read_only_home", ["sqlite", "file"], indirect=True)
def test_reading_commands_work_on_a_read_only_home(
    as_a_user: list[str], read_only_home: tuple[Path, Path, str]
) -> None:
    home, config, sid = read_only_home
    before = snapshot(home)

    listed = run(as_a_user, home, config, "sessions", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [row["id"] for row in json.loads(listed.stdout)["sessions"]] == [sid]

    shown = run(as_a_user, home, config, "sessions", "show", sid, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["title"] == "kept"

    exported = run(as_a_user, home, config, "sessions", "export", sid)
    assert exported.returncode == 0, exported.stderr
    assert json.loads(exported.stdout)["id"] == sid

    doctor = run(as_a_user, home, config, "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "1 sessions checked" in doctor.stdout

    assert snapshot(home) == before  # nothing was written, not even a sidecar


@pytest.mark.parametrize("read_only_home", ["sqlite", "file"], indirect=True)
def test_a_write_on_a_read_only_home_says_read_only_and_names_the_path(
    as_a_user: list[str], read_only_home: tuple[Path, Path, str]
) -> None:
    home, config, sid = read_only_home
    before = snapshot(home)
    done = run(as_a_user, home, config, "sessions", "delete", sid, "--yes")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith("astrid: error: ") and "read-only" in line and str(home) in line
    assert snapshot(home) == before


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_doctor_on_a_fresh_home_creates_nothing(tmp_path: Path, backend: str) -> None:
    home = tmp_path / "fresh-home"
    config = tmp_path / "astrid.toml"
    config.write_text(FILE_CONFIG if backend == "file" else "", encoding="utf-8")
    done = run([], home, config, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 sessions checked" in done.stdout
    assert not home.exists()


def saved_sqlite(path: Path) -> str:
    with SessionStore(SqliteBackend(path)) as store:
        session = store.new_session("")
        session.add_message(Message.user("one"))
        store.save(session)
        store.kv("ns").set("k", b"v")
        return session.id.bare


def test_a_read_only_sqlite_store_reads_and_refuses_every_write(tmp_path: Path) -> None:
    path = tmp_path / "astrid.db"
    sid = saved_sqlite(path)
    before = snapshot(tmp_path)
    with SessionStore(SqliteBackend(path, read_only=True)) as store:
        session = store.load(sid)
        assert session is not None
        assert [m.text() for m in session.messages] == ["one"]
        assert store.kv("ns").get("k") == b"v"
        session.add_message(Message.user("two"))
        writes: list[Callable[[], object]] = [
            lambda: store.save(session),
            lambda: store.delete(sid),
            lambda: store.kv("ns").set("k", b"w"),
            lambda: store.save(store.new_session("")),
        ]
        for write in writes:
            with pytest.raises(StorageError, match="read-only") as err:
                write()
            assert str(path) in str(err.value)
    after = snapshot(tmp_path)
    assert after[path.name] == before[path.name]  # the database file is byte for byte the same
    assert set(after) - set(before) <= {"astrid.db-wal", "astrid.db-shm"}


def test_a_read_only_sqlite_store_that_does_not_exist_reads_empty_and_creates_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "missing" / "astrid.db"
    with SessionStore(SqliteBackend(path, read_only=True)) as store:
        assert store.count() == 0
        with pytest.raises(StorageError, match="read-only"):
            store.save(store.new_session(""))
    assert not path.parent.exists()


def test_a_read_only_file_store_reads_and_refuses_every_write(tmp_path: Path) -> None:
    directory = tmp_path / "sessions"
    with SessionStore(FileBackend(directory)) as store:
        session = store.new_session("")
        session.add_message(Message.user("one"))
        store.save(session)
        store.kv("ns").set("k", b"v")
        sid = session.id.bare
    before = snapshot(tmp_path)
    with SessionStore(FileBackend(directory, read_only=True)) as store:
        loaded = store.load(sid)
        assert loaded is not None and store.kv("ns").get("k") == b"v"
        loaded.add_message(Message.user("two"))
        writes: list[Callable[[], object]] = [
            lambda: store.save(loaded),
            lambda: store.delete(sid),
            lambda: store.kv("ns").set("k", b"w"),
            lambda: store.kv("ns").delete("k"),
        ]
        for write in writes:
            with pytest.raises(StorageError, match="read-only") as err:
                write()
            assert str(tmp_path) in str(err.value)
    assert snapshot(tmp_path) == before
