"""Capture the git branch and commit of a workspace (spec §2.4, design §5 item 8).

Three interchangeable capture functions, each ``(path) -> GitState | None``:

* :func:`capture_subprocess` is the original: two ``git rev-parse`` processes per call.
* :func:`capture_fs` reads ``.git`` directly and spawns nothing. It mirrors what git 2.39's
  ``git -C <path> rev-parse --abbrev-ref HEAD`` and ``git -C <path> rev-parse HEAD`` print:
  discovery walks up from the physical path to the filesystem root, stopping at a mount point;
  a ``.git`` file (``gitdir: ...``, linked worktrees and submodules) is followed and a broken one
  is fatal, as in git; ``commondir`` is honoured (``HEAD`` and other per-worktree refs live in
  the worktree's git dir, everything else and ``packed-refs`` in the common dir); refs are
  loose files, ``refs/...`` symlinks or ``packed-refs`` entries, symbolic refs are followed to
  git's depth of five; the branch name is shortened exactly like git's strict
  ``shorten_unambiguous_ref`` (a tag ``main`` next to a branch ``main`` gives ``heads/main``);
  an ambiguous ``HEAD`` (say a tag named ``HEAD``) gives the empty branch git prints; an unborn
  branch gives None, unless a file named ``HEAD`` sits in the directory, in which case git
  prints the literal ``HEAD`` twice and so do we.
* :func:`capture_none` captures nothing.

What :func:`capture_fs` deliberately ignores: the environment (``GIT_DIR``,
``GIT_WORK_TREE``, ``GIT_COMMON_DIR``, ``GIT_CEILING_DIRECTORIES``,
``GIT_DISCOVERY_ACROSS_FILESYSTEM``), all configuration (``safe.directory`` ownership checks,
``core.warnAmbiguousRefs`` -- strict shortening is assumed, ``core.repositoryformatversion``
and ``extensions.*``: a reftable repository yields None), and the hash algorithm (an object id
of 40 or 64 hex digits is accepted). Nothing is cached between calls; any unreadable file or
unexpected error gives None rather than an exception.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

from astrid.document import GitState

__all__ = ["GIT_TIMEOUT_SECONDS", "capture_fs", "capture_none", "capture_subprocess"]

GIT_TIMEOUT_SECONDS = 5.0
"""Wall-clock limit for each ``git`` process started by :func:`capture_subprocess`."""

# Rust's `str::trim` strips Unicode White_Space; Python's `str.strip()` also strips \x1c-\x1f.
_RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)


# --------------------------------------------------------------------------- subprocess


def _run_git(path: Path, *args: str) -> str | None:
    """Run one git command in ``path``; its trimmed stdout if it exited 0 with UTF-8 output."""
    try:
        proc = subprocess.run(
            ["git", "-C", os.fspath(path), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    try:
        text = proc.stdout.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.strip(_RUST_WHITESPACE)


def capture_subprocess(path: Path) -> GitState | None:
    """The original capture: ``git rev-parse --abbrev-ref HEAD`` and ``git rev-parse HEAD``."""
    branch = _run_git(path, "rev-parse", "--abbrev-ref", "HEAD")
    commit = _run_git(path, "rev-parse", "HEAD")
    if branch is None and commit is None:
        return None
    return GitState(branch=branch, commit=commit)


def capture_none(path: Path) -> GitState | None:
    """Capture nothing (git state disabled)."""
    return None


# --------------------------------------------------------------------------- filesystem


class _Fatal(Exception):
    """Where git would die (exit 128)."""


_SYMREF_MAXDEPTH = 5
_MAX_GITFILE_SIZE = 1 << 20
_GIT_SPACE = b" \t\n\r"
_OID = re.compile(rb"([0-9a-fA-F]{40}(?:[0-9a-fA-F]{24})?)(?![^ \t\n\r\x00])")
_HEX40 = re.compile(rb"[0-9a-fA-F]{40}")
# Anything check_refname_format refuses: forbidden bytes, "..", "@{", an empty component, a
# component starting with "." or ending with ".lock", a trailing ".".
_BAD_REFNAME = re.compile(
    rb"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|(?:^|/)(?:/|\.)|\.lock(?:/|$)|/$|\.$"
)
_PSEUDOREF = re.compile(rb"[A-Z_-]*")
_PER_WORKTREE = (b"refs/worktree/", b"refs/bisect/", b"refs/rewritten/")
# git's ref_rev_parse_rules as (prefix, suffix) around the short name.
_RULES: tuple[tuple[bytes, bytes], ...] = (
    (b"", b""),
    (b"refs/", b""),
    (b"refs/tags/", b""),
    (b"refs/heads/", b""),
    (b"refs/remotes/", b""),
    (b"refs/remotes/", b"/HEAD"),
)


def _join(base: bytes, name: bytes) -> bytes:
    """``base/name`` as git builds it (no normalization; the OS resolves ``..``)."""
    return base + name if base.endswith(b"/") else base + b"/" + name


def _refname_ok(name: bytes, onelevel: bool = True) -> bool:
    """git's ``check_refname_format`` (without pattern support)."""
    if not name or name == b"@" or _BAD_REFNAME.search(name):
        return False
    return onelevel or b"/" in name


def _cstr(data: bytes) -> bytes:
    """``data`` up to its first NUL, as C code would see it."""
    nul = data.find(b"\0")
    return data if nul < 0 else data[:nul]


def _validate_headref(path: bytes) -> bool:
    """git's ``validate_headref``: a ``refs/`` symlink, a ``ref: refs/`` file or a hex id."""
    try:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return os.readlink(path)[:255].startswith(b"refs/")
        with open(path, "rb") as fh:
            buf = _cstr(fh.read(255))
    except OSError:
        return False
    if buf.startswith(b"ref:") and buf[4:].lstrip(_GIT_SPACE).startswith(b"refs/"):
        return True
    return _HEX40.match(buf) is not None


def _common_dir(gitdir: bytes) -> bytes:
    """git's ``get_common_dir``: ``gitdir/commondir`` if present, else ``gitdir``."""
    path = _join(gitdir, b"commondir")
    if not os.path.lexists(path):
        return gitdir
    with open(path, "rb") as fh:
        data = fh.read()
    if not data:
        raise _Fatal("failed to read commondir")
    data = _cstr(data.rstrip(b"\r\n"))
    return data if data.startswith(b"/") else _join(gitdir, data)


def _is_git_directory(suspect: bytes) -> bool:
    """git's ``is_git_directory``: valid HEAD plus accessible ``objects`` and ``refs``."""
    if not _validate_headref(_join(suspect, b"HEAD")):
        return False
    common = _common_dir(suspect)
    return os.access(_join(common, b"objects"), os.X_OK) and os.access(
        _join(common, b"refs"), os.X_OK
    )


def _read_gitfile(path: bytes) -> bytes:
    """git's ``read_gitfile_gently`` for a regular ``.git`` file; errors are fatal."""
    if os.stat(path).st_size > _MAX_GITFILE_SIZE:
        raise _Fatal("gitfile too large")
    with open(path, "rb") as fh:
        buf = fh.read()
    if not buf.startswith(b"gitdir: "):
        raise _Fatal("invalid gitfile format")
    buf = buf.rstrip(b"\r\n")
    if len(buf) < 9:
        raise _Fatal("no path in gitfile")
    target = _cstr(buf[8:])
    if not target.startswith(b"/"):
        target = path[: path.rfind(b"/") + 1] + target
    if not _is_git_directory(target):
        raise _Fatal("not a git repository")
    return target


def _discover(cwd: bytes) -> tuple[bytes, bytes] | None:
    """Find ``(gitdir, commondir)`` walking up from ``cwd`` like git's setup, or None."""
    device = os.stat(cwd).st_dev
    current = cwd
    while True:
        dotgit = _join(current, b".git")
        try:
            st: os.stat_result | None = os.stat(dotgit)
        except OSError:
            st = None
        if st is not None:
            if stat.S_ISREG(st.st_mode):
                gitdir = _read_gitfile(dotgit)
                return gitdir, _common_dir(gitdir)
            if _is_git_directory(dotgit):
                return dotgit, _common_dir(dotgit)
        if _is_git_directory(current):
            return current, _common_dir(current)
        parent = os.path.dirname(current)
        if parent == current:
            return None
        if os.stat(parent).st_dev != device:
            return None
        current = parent


class _Refs:
    """A read-only view of a files-backend ref store for one capture (nothing outlives it)."""

    def __init__(self, gitdir: bytes, commondir: bytes) -> None:
        self.gitdir = gitdir
        self.commondir = commondir
        self._packed: bytes | None = None
        self._packed_loaded = False

    def _ref_path(self, name: bytes) -> bytes:
        if name.startswith(_PER_WORKTREE) or _PSEUDOREF.fullmatch(name):
            return _join(self.gitdir, name)
        if name.startswith(b"main-worktree/"):
            name = name[len(b"main-worktree/") :]
        return _join(self.commondir, name)

    def _packed_lookup(self, name: bytes) -> bytes | None:
        if not self._packed_loaded:
            self._packed_loaded = True
            try:
                with open(_join(self.commondir, b"packed-refs"), "rb") as fh:
                    data = fh.read()
            except FileNotFoundError:
                data = b""
            self._packed = data if data.endswith(b"\n") else data + b"\n"
        data = self._packed or b""
        needle = b" " + name + b"\n"
        start = 0
        while (hit := data.find(needle, start)) >= 0:
            line_start = data.rfind(b"\n", 0, hit) + 1
            oid = data[line_start:hit]
            if len(oid) in (40, 64) and _OID.fullmatch(oid):
                return oid.lower()
            start = hit + 1
        return None

    def _read_raw(self, name: bytes) -> tuple[bool, bytes] | None:
        """One ref: ``(True, target)`` if symbolic, ``(False, oid)`` if direct, else None."""
        path = self._ref_path(name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        except OSError:
            return None  # e.g. ENOTDIR: git gives up on this ref
        if st is None or stat.S_ISDIR(st.st_mode):
            oid = self._packed_lookup(name)
            return None if oid is None else (False, oid)
        try:
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                if target.startswith(b"refs/") and _refname_ok(target, onelevel=False):
                    return True, target
            with open(path, "rb") as fh:
                buf = fh.read().rstrip(_GIT_SPACE)
        except OSError:
            return None
        if buf.startswith(b"ref:"):
            return True, _cstr(buf[4:].lstrip(_GIT_SPACE))
        match = _OID.match(buf)
        return None if match is None else (False, match.group(1).lower())

    def resolve(self, name: bytes) -> tuple[bytes, bytes] | None:
        """git's ``refs_resolve_ref_unsafe(RESOLVE_REF_READING)``: ``(final name, oid)``."""
        for _ in range(_SYMREF_MAXDEPTH):
            if not _refname_ok(name):
                return None
            raw = self._read_raw(name)
            if raw is None:
                return None
            symbolic, value = raw
            if not symbolic:
                return name, value
            name = value
        return None

    def shorten(self, full: bytes) -> bytes:
        """git's strict ``shorten_unambiguous_ref``."""
        for i in range(len(_RULES) - 1, 0, -1):
            prefix, suffix = _RULES[i]
            if len(full) < len(prefix) + len(suffix):
                continue
            if not (full.startswith(prefix) and full.endswith(suffix)):
                continue
            short = full[len(prefix) : len(full) - len(suffix)]
            if not any(
                j != i and self.resolve(pre + short + suf) is not None
                for j, (pre, suf) in enumerate(_RULES)
            ):
                return short
        return full


def _decode(value: bytes) -> str | None:
    """Printed bytes as the original keeps them: strict UTF-8, then trimmed."""
    try:
        return value.decode("utf-8").strip(_RUST_WHITESPACE)
    except UnicodeDecodeError:
        return None


def _capture_fs(path: Path) -> GitState | None:
    """The body of :func:`capture_fs`; may raise."""
    raw = os.fsencode(path)
    if not os.path.isdir(raw):
        return None  # `git -C` cannot chdir there
    cwd = os.path.realpath(raw)  # git works from getcwd(), the physical path
    found = _discover(cwd)
    if found is None:
        return None
    if os.path.isdir(_join(found[1], b"reftable")):
        return None
    refs = _Refs(*found)
    # `rev-parse HEAD` dwims "HEAD" through every rule and takes the first hit.
    hits = [hit for pre, suf in _RULES if (hit := refs.resolve(pre + b"HEAD" + suf))]
    if not hits:
        # Not a revision: git then takes "HEAD" as a file name, printing it, and exits 0 only
        # if such a file exists in the directory.
        if os.path.lexists(_join(cwd, b"HEAD")):
            return GitState(branch="HEAD", commit="HEAD")
        return None
    full, oid = hits[0]
    commit = _decode(oid)
    # `--abbrev-ref` reports an ambiguous name as an error, printing nothing, exit 0.
    branch = _decode(refs.shorten(full)) if len(hits) == 1 else ""
    if branch is None and commit is None:
        return None
    return GitState(branch=branch, commit=commit)


def capture_fs(path: Path) -> GitState | None:
    """Read branch and commit from ``.git`` directly, as ``capture_subprocess`` would report."""
    try:
        return _capture_fs(path)
    except (OSError, ValueError, _Fatal):
        return None
