"""The one atomic private-file write (``astrid.fsutil``) and the writers built on it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from astrid.config import write_default_config
from astrid.errors import ConfigError
from astrid.fsutil import TEMP_NAME, atomic_write, create_private_file
from astrid.security.crypto import PRIVATE_KEY_LEN, load_or_create_keypair

_real_write = os.write
_real_fsync = os.fsync


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def one_byte_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``os.write`` writes at most one byte per call (a short write every time); the names in
    the target directory seen during the writes are recorded."""
    seen: list[str] = []

    def short_write(fd: int, data: bytes | memoryview) -> int:
        path = Path(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else None
        if path is not None:
            seen.append(path.name)
        return _real_write(fd, bytes(memoryview(data)[:1]))

    monkeypatch.setattr(os, "write", short_write)
    return seen


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[bool, int]]]:
    """Every ``os.fsync`` as (is a directory, inode), still really fsyncing."""
    calls: list[tuple[bool, int]] = []

    def recording_fsync(fd: int) -> None:
        st = os.fstat(fd)
        calls.append((stat.S_ISDIR(st.st_mode), st.st_ino))
        _real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    yield calls


def test_writes_all_bytes_through_short_writes(tmp_path: Path, one_byte_writes: list[str]) -> None:
    target = tmp_path / "doc.json"
    data = b'{"a": "' + b"x" * 300 + b'"}'
    atomic_write(target, data)
    assert target.read_bytes() == data
    assert len(one_byte_writes) == len(data)
    # the bytes went to a temp file of the documented name, never to the target itself
    assert one_byte_writes and all(TEMP_NAME.fullmatch(n) for n in one_byte_writes)
    assert TEMP_NAME.fullmatch(one_byte_writes[0])["target"] == "doc.json"  # type: ignore[index]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.json"]


def test_file_is_private_whatever_the_umask(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"old")
    target.chmod(0o644)
    old_umask = os.umask(0)
    try:
        atomic_write(target, b"new")
        atomic_write(tmp_path / "fresh", b"x", durable=False)
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert _mode(tmp_path / "fresh") == 0o600


def test_failure_leaves_no_temp_file_and_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_bytes(b"keep")  # a non-empty directory: the rename must fail
    with pytest.raises(OSError):
        atomic_write(target, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (target / "inside").read_bytes() == b"keep"


def test_failure_while_writing_removes_the_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "doc"
    target.write_bytes(b"old")
    calls = 0

    def failing_write(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise OSError(28, "No space left on device")
        return _real_write(fd, bytes(memoryview(data)[:2]))

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, b"new content")
    monkeypatch.undo()
    assert calls == 2
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc"]


def test_durable_write_fsyncs_the_file_and_the_directory(
    tmp_path: Path, fsyncs: list[tuple[bool, int]]
) -> None:
    target = tmp_path / "doc"
    atomic_write(target, b"data")
    directory_inode = tmp_path.stat().st_ino
    assert fsyncs == [(False, target.stat().st_ino), (True, directory_inode)]
    fsyncs.clear()
    atomic_write(target, b"cache", durable=False)
    assert fsyncs == []
    assert target.read_bytes() == b"cache"


def test_returns_the_written_files_stat(tmp_path: Path) -> None:
    target = tmp_path / "doc"
    st = atomic_write(target, b"12345")
    now = target.stat()
    assert (st.st_ino, st.st_size, st.st_mtime_ns) == (now.st_ino, 5, now.st_mtime_ns)


def test_no_replace_keeps_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "key"
    atomic_write(target, b"first", replace=False)
    with pytest.raises(FileExistsError):
        atomic_write(target, b"second", replace=False)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key"]


def test_create_private_file_is_exclusive_and_0600(tmp_path: Path) -> None:
    path = tmp_path / "marker"
    old_umask = os.umask(0)
    try:
        assert create_private_file(path) is True
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600 and path.read_bytes() == b""
    path.write_bytes(b"kept")
    assert create_private_file(path) is False
    assert path.read_bytes() == b"kept"


# -- the writers that use it ----------------------------------------------------------------


def test_runtime_key_survives_short_writes(tmp_path: Path, one_byte_writes: list[str]) -> None:
    """The key file was written with one unchecked ``os.write``: a short write truncated it."""
    path = tmp_path / "home" / "runtime.key"
    keypair = load_or_create_keypair(path)
    assert len(path.read_bytes()) == PRIVATE_KEY_LEN
    assert _mode(path) == 0o600
    assert load_or_create_keypair(path).public_key_bytes == keypair.public_key_bytes
    assert sorted(p.name for p in path.parent.iterdir()) == ["runtime.key"]


def test_runtime_key_creation_fsyncs_the_directory(
    tmp_path: Path, fsyncs: list[tuple[bool, int]]
) -> None:
    path = tmp_path / "runtime.key"
    load_or_create_keypair(path)
    assert (True, tmp_path.stat().st_ino) in fsyncs


def test_config_init_is_private_and_never_clobbers(
    tmp_path: Path, one_byte_writes: list[str]
) -> None:
    path = tmp_path / "home" / "config.toml"
    write_default_config(path)
    assert _mode(path) == 0o600
    text = path.read_text(encoding="utf-8")
    assert len(one_byte_writes) == len(text.encode("utf-8"))
    path.write_text("# mine\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="already exists"):
        write_default_config(path)
    assert path.read_text(encoding="utf-8") == "# mine\n"
    write_default_config(path, overwrite=True)
    assert path.read_text(encoding="utf-8") == text

