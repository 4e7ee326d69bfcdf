"""File-system helpers shared by the backends and the key store: private directories and the
one atomic private-file write."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

PRIVATE_DIR_MODE = 0o700


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents; every directory created here is 0700.

    Existing directories keep their mode. Safe against another process creating the same
    directories at the same time. ``OSError`` if a directory cannot be created.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, PRIVATE_DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(directory, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask


PRIVATE_FILE_MODE = 0o600

TEMP_NAME = re.compile(r"(?P<target>.+)\.tmp\.[0-9a-f]{16}")
"""The name of an ``atomic_write`` temp file: ``<target>.tmp.<16 hex>`` (sweepers match it)."""


def fsync_dir(directory: Path) -> None:
    """Make a create, rename or unlink in ``directory`` durable (``OSError`` if it cannot)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_temp(path: Path) -> tuple[Path, int]:
    """A new 0600 temp file beside ``path`` (``TEMP_NAME``), opened for writing."""
    tmp = path.with_name(f"{path.name}.tmp.{os.urandom(8).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, PRIVATE_FILE_MODE)
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)  # the open's mode is filtered by the umask
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp, fd


@contextlib.contextmanager
def atomic_text_file(path: Path) -> Iterator[IO[str]]:
    """A UTF-8 text file written in pieces that appears at ``path`` whole (0600, fsynced,
    renamed over it) when the block ends, or not at all when it raises."""
    tmp, fd = _private_temp(path)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write(
    path: Path,
    data: bytes,
    *,
    durable: bool = True,
    replace: bool = True,
    before_replace: Callable[[], None] | None = None,
) -> os.stat_result:
    """Write ``data`` to ``path`` whole or not at all, as a private (0600) file.

    The bytes go to a temp file beside ``path`` (``TEMP_NAME``), written in full, fsynced, then
    renamed over ``path`` and the directory fsynced: after a crash ``path`` holds the old bytes or
    the new ones. ``durable`` False skips both fsyncs (a cache that can be rebuilt).
    ``replace`` False never replaces an existing file: ``FileExistsError`` if ``path`` exists
    (or another process created it meanwhile). The temp file is removed on any failure.
    ``before_replace`` runs once the temp file is complete, just before the rename (something
    that must be durable before the new bytes are visible); if it raises, nothing is replaced.
    Returns the stat of the written file (taken before the rename). ``OSError`` on failure.
    """
    tmp, fd = _private_temp(path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if before_replace is not None:
            before_replace()
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)
    return st


def create_private_file(path: Path) -> bool:
    """Create ``path`` as an empty 0600 file; False if it exists already (kept as it is).

    An exclusive create (``O_EXCL``): of two processes racing, exactly one gets True. The
    directory is not fsynced (``fsync_dir`` if the create must be durable). ``OSError`` else.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, flags, PRIVATE_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    finally:
        os.close(fd)
    return True
