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
of 40 or 64 hex digits is accepted). Any unreadable file or unexpected error gives None rather
than an exception.

:func:`capture_fs` caches its answer per workspace path and re-checks, on every call, every fact
the answer was derived from (see "the cache" below, and what it assumes): it returns what an
uncached capture (:func:`capture_fs_uncached`) would return at that moment, mostly for the cost
of one ``lstat`` per file or directory involved. :func:`capture_subprocess` is not cached.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import threading
import time
from pathlib import Path

from astrid.document import GitState

__all__ = [
    "GIT_TIMEOUT_SECONDS",
    "capture_fs",
    "capture_fs_uncached",
    "capture_none",
    "capture_subprocess",
]

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


def _parse_loose(data: bytes) -> tuple[bool, bytes] | None:
    """A loose ref file's content: ``(True, target)`` if symbolic, ``(False, oid)``, or None."""
    buf = data.rstrip(_GIT_SPACE)
    if buf.startswith(b"ref:"):
        return True, _cstr(buf[4:].lstrip(_GIT_SPACE))
    match = _OID.match(buf)
    return None if match is None else (False, match.group(1).lower())


# --------------------------------------------------------------------------- observations
#
# Every file system call of a capture goes through an _Observer. It memoizes each answer for
# the capture (one consistent answer per path) and records it as a fact on the path's _Node.
# A capture is a deterministic function of those answers, so while every fact still holds a
# new capture would compute the same result: that is what the cache checks on each call.

_Stat = os.stat_result | int
"""A stat call's result, or the errno it failed with."""

_Sig = tuple[int, int, int, int, int, int]
"""mode, inode, device, size, mtime_ns, ctime_ns: what any change to a file or directory moves."""

_IFMT = 0o170000
_ENOENT = errno.ENOENT

_WINDOW_COARSE_NS = 2_000_000_000
"""git's racy-file rule for whole-second timestamps (1-2 s granularity file systems)."""

_WINDOW_FINE_NS = 100_000_000
"""The same for sub-second timestamps: ten times the coarsest kernel timestamp tick (10 ms)."""

_REVERIFY_NS = 10_000_000_000
"""A cached answer is recomputed from scratch at least this often (bounds any missed change)."""

_CONTENT_MAX = 1 << 16
"""Larger file contents are not kept: any change to such a file means a full capture."""

_CACHE_MAX = 64
"""Workspaces whose answer is cached (the oldest is dropped first)."""


def _errno(exc: OSError) -> int:
    """The errno of a failed call (EIO when the OS gave none)."""
    return exc.errno if exc.errno is not None else errno.EIO


def _lstat_now(path: bytes) -> _Stat:
    """``os.lstat`` as a value."""
    try:
        return os.lstat(path)
    except OSError as exc:
        return _errno(exc)


def _stat_now(path: bytes) -> _Stat:
    """``os.stat`` as a value."""
    try:
        return os.stat(path)
    except OSError as exc:
        return _errno(exc)


def _proj(value: _Stat) -> tuple[int, int] | int:
    """The part of a stat the capture itself uses: file type and device (or the errno)."""
    if isinstance(value, int):
        return value
    return (value.st_mode & _IFMT, value.st_dev)


def _sig_of(st: os.stat_result) -> _Sig:
    """A stat's change signature."""
    return (st.st_mode, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _sig(value: _Stat) -> _Sig | int:
    """A stat's change signature (or the errno)."""
    return value if isinstance(value, int) else _sig_of(value)


def _trusted(sig: _Sig | int, t_ns: int) -> bool:
    """Whether an unchanged ``sig`` proves an unchanged file: no change since ``t_ns`` can keep it.

    A change within the timestamp granularity of the last one can leave mtime and ctime as they
    were (git's "racy" files), so a signature whose times are too close to ``t_ns`` (taken before
    the stat) is not trusted. A failed stat is an exact fact and always trusted.
    """
    if isinstance(sig, int):
        return True
    mtime, ctime = sig[4], sig[5]
    coarse = mtime % 1_000_000_000 == 0 and ctime % 1_000_000_000 == 0
    window = _WINDOW_COARSE_NS if coarse else _WINDOW_FINE_NS
    return max(mtime, ctime) < t_ns - window


def _read_now(path: bytes, cap: int | None, known: os.stat_result | None = None) -> bytes | int:
    """The file's content (at most ``cap`` bytes), or the errno.

    ``known``, a stat of the file taken just before, saves the read that would find the end.
    """
    try:
        fd = os.open(path, os.O_RDONLY)  # non-inheritable, as every fd Python opens
    except OSError as exc:
        return _errno(exc)
    try:
        size = -1 if known is None or not stat.S_ISREG(known.st_mode) else known.st_size
        chunks: list[bytes] = []
        total = 0
        while cap is None or total < cap:
            want = max(size + 1, 4096) if total == 0 else 65536
            if cap is not None:
                want = min(want, cap - total)
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total == size and len(chunk) < want:
                break  # all stat promised, in a short read: the end of a regular file
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except OSError as exc:
        return _errno(exc)
    finally:
        os.close(fd)


def _oserror(code: int, path: bytes) -> OSError:
    """The exception a failed call raised (``OSError`` picks the subclass from the errno)."""
    return OSError(code, os.strerror(code), path)


def _simple_absolute(raw: bytes) -> bool:
    """An absolute path without ``.``, ``..`` or empty components (its realpath needs no lexing)."""
    if not raw.startswith(b"/") or raw.startswith(b"//"):
        return False
    return all(part not in (b"", b".", b"..") for part in raw[1:].split(b"/"))


class _Node:
    """What one capture learned about one path, each fact checkable again later.

    ``lproj``/``fproj``: the type and device (or errno) ``lstat``/``stat`` gave. ``content``
    with ``csig``: the bytes read and the signature of the file read (``data``: every reader
    parsed it as a loose ref, so a direct ref may change its object id without changing the
    capture's path; ``source``: that object id is the answer's commit). ``neg`` with ``nsig``:
    entries absent from this directory. ``access`` with ``asig``: ``os.access(X_OK)``. ``rerr``,
    ``link`` and ``real`` (a failed read, a ``readlink``, a ``realpath``) are re-done each time.
    ``fastkind`` 1 or 2: the node holds while ``lstat`` gives ``fast`` (its projection or
    signature).
    """

    __slots__ = (
        "access",
        "asig",
        "atrust",
        "cap",
        "content",
        "csig",
        "ctrust",
        "data",
        "fast",
        "fastkind",
        "fproj",
        "link",
        "lproj",
        "neg",
        "nsig",
        "ntrust",
        "path",
        "real",
        "rerr",
        "source",
    )

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.lproj: tuple[int, int] | int | None = None
        self.fproj: tuple[int, int] | int | None = None
        self.content: bytes | None = None
        self.csig: _Sig | None = None
        self.ctrust = False
        self.cap: int | None = None
        self.data = False
        self.source = False
        self.neg: list[bytes] | None = None
        self.nsig: _Sig | int | None = None
        self.ntrust = False
        self.access: bool | None = None
        self.asig: _Sig | int | None = None
        self.atrust = False
        self.rerr: int | None = None
        self.link: bytes | int | None = None
        self.real: bytes | None = None
        self.fast: object = None
        self.fastkind = 0

    def _signed(self) -> bool:
        """True if a fact rests on a signature (content, absent entries, access)."""
        return self.csig is not None or self.neg is not None or self.access is not None

    def _follows(self) -> bool:
        """True if a fact is about what the path resolves to (``stat`` rather than ``lstat``)."""
        return self.fproj is not None or self._signed()

    def _live(self) -> bool:
        """True if a fact must be re-done on every check."""
        return self.rerr is not None or self.link is not None or self.real is not None

    def first_fast(self) -> None:
        """The fast check right after a capture: for nodes of type facts alone."""
        if (
            self.lproj is not None
            and self.fproj in (None, self.lproj)
            and not self._signed()
            and not self._live()
        ):
            self.fastkind, self.fast = 1, self.lproj

    def holds(self, entry: _Entry, t_ns: int, lst: _Stat) -> bool:
        """Re-check every fact now (``lst``: the path's ``lstat``), refreshing signatures.

        A changed object id in a ``data`` file is accepted (and becomes the answer's commit if
        this is the ``source``); any other difference fails.
        """
        path = self.path
        if self.lproj is not None and _proj(lst) != self.lproj:
            return False
        fst = lst
        if not isinstance(lst, int) and stat.S_ISLNK(lst.st_mode) and self._follows():
            fst = _stat_now(path)
        if self.fproj is not None and _proj(fst) != self.fproj:
            return False
        sig = _sig(fst)
        trusted = True
        if self.neg is not None:
            if sig != self.nsig or not self.ntrust:
                for member in self.neg:
                    if _lstat_now(member) != _ENOENT:
                        return False
                self.nsig, self.ntrust = sig, _trusted(sig, t_ns)
            trusted = self.ntrust
        if self.csig is not None:
            if sig != self.csig or not self.ctrust:
                if isinstance(fst, int) or isinstance(sig, int):
                    return False
                data = _read_now(path, self.cap, fst)
                if isinstance(data, int):
                    return False
                if data != self.content and not self._new_oid(data, entry):
                    return False
                # The signature taken before the read: any later change will differ from it.
                self.csig, self.ctrust = sig, _trusted(sig, t_ns)
            trusted = trusted and self.ctrust
        if self.access is not None:
            if sig != self.asig or not self.atrust:
                if os.access(path, os.X_OK) != self.access:
                    return False
                self.asig, self.atrust = sig, _trusted(sig, t_ns)
            trusted = trusted and self.atrust
        live = False
        if self.rerr is not None:
            if _read_now(path, self.cap) != self.rerr:
                return False
            live = True
        if self.link is not None:
            try:
                link: bytes | int = os.readlink(path)
            except OSError as exc:
                link = _errno(exc)
            if link != self.link:
                return False
            live = True
        if self.real is not None:
            if os.path.realpath(path) != self.real:
                return False
            live = True
        if live or fst is not lst:
            self.fastkind, self.fast = 0, None
        elif self._signed():
            self.fastkind, self.fast = (2, sig) if trusted else (0, None)
        else:
            self.fastkind, self.fast = 1, _proj(lst)
        return True

    def _new_oid(self, data: bytes, entry: _Entry) -> bool:
        """Accept new content of a ``data`` file that is still a direct ref; False otherwise."""
        if not self.data or self.content is None or len(data) > _CONTENT_MAX:
            return False
        old, new = _parse_loose(self.content), _parse_loose(data)
        if old is None or old[0] or new is None or new[0]:
            return False
        self.content = data
        if self.source and entry.answer is not None:
            entry.answer = (entry.answer[0], _decode(new[1]))
        return True


class _Entry:
    """A cached answer, the facts it rests on, and when it was last computed from scratch."""

    __slots__ = ("answer", "born", "nodes")

    def __init__(
        self, answer: tuple[str | None, str | None] | None, nodes: list[_Node], born: int
    ) -> None:
        self.answer = answer
        self.nodes = nodes
        self.born = born

    def still(self, t_ns: int) -> bool:
        """True if every fact still holds (the answer is what a capture would give now)."""
        for node in self.nodes:
            try:
                lst: _Stat = os.lstat(node.path)
            except OSError as exc:
                lst = _errno(exc)
            kind = node.fastkind
            if kind:
                if isinstance(lst, int):
                    got: object = lst
                elif kind == 1:
                    got = (lst.st_mode & _IFMT, lst.st_dev)
                else:
                    got = _sig_of(lst)
                if got == node.fast:
                    continue
            if not node.holds(self, t_ns, lst):
                return False
        return True


class _Observer:
    """The file system as one capture sees it: memoized calls, each recorded as a fact."""

    def __init__(self, t_ns: int) -> None:
        self.t_ns = t_ns
        self.nodes: dict[bytes, _Node] = {}
        self.cacheable = True
        self._l: dict[bytes, _Stat] = {}
        self._f: dict[bytes, _Stat] = {}
        self._r: dict[bytes, tuple[bytes | int, int | None]] = {}
        self._links: dict[bytes, bytes | int] = {}
        self._access: dict[bytes, bool] = {}
        self._absences: dict[bytes, bool] = {}

    def _node(self, path: bytes) -> _Node:
        node = self.nodes.get(path)
        if node is None:
            node = self.nodes[path] = _Node(path)
        return node

    def _lstat(self, path: bytes) -> _Stat:
        value = self._l.get(path)
        if value is None:
            value = self._l[path] = _lstat_now(path)
        return value

    def _stat(self, path: bytes) -> _Stat:
        value = self._f.get(path)
        if value is None:
            known = self._l.get(path)
            if known is not None and (isinstance(known, int) or not stat.S_ISLNK(known.st_mode)):
                value = known  # what stat would have said at that moment
            else:
                value = _stat_now(path)
            self._f[path] = value
        return value

    def _absent(self, path: bytes) -> bool:
        """Record that ``path`` has no directory entry, if so; False if ``lstat`` finds one.

        The fact kept is that the first missing component is absent from the nearest existing
        directory on the way: while that directory is unchanged it is still absent, and so is
        ``path``.
        """
        known = self._absences.get(path)
        if known is None:
            known = self._absences[path] = self._note_absent(path)
        return known

    def _note_absent(self, path: bytes) -> bool:
        """:meth:`_absent` for a path not seen yet."""
        if self._lstat(path) != _ENOENT:
            self._node(path).lproj = _proj(self._lstat(path))
            return False
        child = path
        while True:
            parent = os.path.dirname(child)
            if parent == child:
                break
            found = self._stat(parent)
            if not isinstance(found, int) and stat.S_ISDIR(found.st_mode):
                node = self._node(parent)
                if node.neg is None:
                    node.neg = []
                    node.nsig = _sig(found)
                    node.ntrust = _trusted(node.nsig, self.t_ns)
                if child not in node.neg:
                    node.neg.append(child)
                return True
            if found != _ENOENT or self._lstat(parent) != _ENOENT:
                break
            child = parent
        self._node(path).lproj = _ENOENT
        return True

    def lstat(self, path: bytes) -> _Stat:
        """``os.lstat`` (the errno on failure)."""
        value = self._lstat(path)
        if value == _ENOENT:
            self._absent(path)
        else:
            self._node(path).lproj = _proj(value)
        return value

    def stat(self, path: bytes) -> _Stat:
        """``os.stat`` (the errno on failure)."""
        known = self._l.get(path)
        if known is not None and (isinstance(known, int) or not stat.S_ISLNK(known.st_mode)):
            return self.lstat(path)  # the same answer, recorded as the lstat fact
        value = self._stat(path)
        if value != _ENOENT or not self._absent(path):
            self._node(path).fproj = _proj(value)
        return value

    def isdir(self, path: bytes) -> bool:
        """``os.path.isdir``."""
        value = self.stat(path)
        return not isinstance(value, int) and stat.S_ISDIR(value.st_mode)

    def lexists(self, path: bytes) -> bool:
        """``os.path.lexists``."""
        return not isinstance(self.lstat(path), int)

    def read(self, path: bytes, *, ref: bool, cap: int | None = None) -> bytes:
        """The whole file (at most ``cap`` bytes); ``ref``: the reader parses it as a loose ref."""
        known = self._r.get(path)
        if known is None:
            before = self._stat(path)  # the signature to check later, taken before the read
            # Where stat fails, open fails the same way (the same path walk).
            value: bytes | int = before if isinstance(before, int) else _read_now(path, cap, before)
            if isinstance(value, int):
                if value != _ENOENT or not self._absent(path):
                    node = self._node(path)
                    node.rerr, node.cap = value, cap
            elif not isinstance(before, int):
                node = self._node(path)
                node.content = value if len(value) <= _CONTENT_MAX else None
                node.csig = csig = _sig_of(before)
                node.ctrust, node.cap = _trusted(csig, self.t_ns), cap
                node.data = ref and node.content is not None
            self._r[path] = (value, cap)
        else:
            value, known_cap = known
            if known_cap != cap:
                self.cacheable = False  # one content per node: never cache such a capture
            if not ref and not isinstance(value, int):
                self._node(path).data = False
        if isinstance(value, int):
            raise _oserror(value, path)
        return value

    def readlink(self, path: bytes) -> bytes:
        """``os.readlink``."""
        value = self._links.get(path)
        if value is None:
            try:
                value = os.readlink(path)
            except OSError as exc:
                value = _errno(exc)
            self._links[path] = self._node(path).link = value
        if isinstance(value, int):
            raise _oserror(value, path)
        return value

    def access(self, path: bytes) -> bool:
        """``os.access(path, X_OK)``; the ``stat`` taken first shows later if it may differ."""
        value = self._access.get(path)
        if value is None:
            sig = _sig(self._stat(path))
            value = self._access[path] = os.access(path, os.X_OK)
            node = self._node(path)
            node.access, node.asig, node.atrust = value, sig, _trusted(sig, self.t_ns)
        return value

    def realpath(self, raw: bytes) -> bytes:
        """``os.path.realpath`` of a directory: the path ``getcwd()`` gives after ``chdir``."""
        if _simple_absolute(raw):
            prefix = b""
            for part in raw[1:].split(b"/"):
                prefix += b"/" + part
                found = self.lstat(prefix)
                if isinstance(found, int) or not stat.S_ISDIR(found.st_mode):
                    break  # a symlink (or a race): let realpath resolve it
            else:
                return raw  # no symlink on the way: realpath changes nothing
        real = os.path.realpath(raw)
        self._node(raw).real = real
        return real

    def mark_source(self, path: bytes) -> None:
        """The answer's commit is the object id read from ``path`` (a loose ref file)."""
        node = self.nodes.get(path)
        if node is not None and node.data:
            node.source = True


# --------------------------------------------------------------------------- the capture


def _validate_headref(fs: _Observer, path: bytes) -> bool:
    """git's ``validate_headref``: a ``refs/`` symlink, a ``ref: refs/`` file or a hex id."""
    st = fs.lstat(path)
    if isinstance(st, int):
        return False
    try:
        if stat.S_ISLNK(st.st_mode):
            return fs.readlink(path)[:255].startswith(b"refs/")
        buf = _cstr(fs.read(path, ref=False)[:255])
    except OSError:
        return False
    if buf.startswith(b"ref:") and buf[4:].lstrip(_GIT_SPACE).startswith(b"refs/"):
        return True
    return _HEX40.match(buf) is not None


def _common_dir(fs: _Observer, gitdir: bytes) -> bytes:
    """git's ``get_common_dir``: ``gitdir/commondir`` if present, else ``gitdir``."""
    path = _join(gitdir, b"commondir")
    if not fs.lexists(path):
        return gitdir
    data = fs.read(path, ref=False)
    if not data:
        raise _Fatal("failed to read commondir")
    data = _cstr(data.rstrip(b"\r\n"))
    return data if data.startswith(b"/") else _join(gitdir, data)


def _is_git_directory(fs: _Observer, suspect: bytes) -> bool:
    """git's ``is_git_directory``: valid HEAD plus accessible ``objects`` and ``refs``."""
    if not _validate_headref(fs, _join(suspect, b"HEAD")):
        return False
    common = _common_dir(fs, suspect)
    return fs.access(_join(common, b"objects")) and fs.access(_join(common, b"refs"))


def _read_gitfile(fs: _Observer, path: bytes) -> bytes:
    """git's ``read_gitfile_gently`` for a regular ``.git`` file; errors are fatal."""
    buf = fs.read(path, ref=False, cap=_MAX_GITFILE_SIZE + 1)
    if len(buf) > _MAX_GITFILE_SIZE:
        raise _Fatal("gitfile too large")
    if not buf.startswith(b"gitdir: "):
        raise _Fatal("invalid gitfile format")
    buf = buf.rstrip(b"\r\n")
    if len(buf) < 9:
        raise _Fatal("no path in gitfile")
    target = _cstr(buf[8:])
    if not target.startswith(b"/"):
        target = path[: path.rfind(b"/") + 1] + target
    if not _is_git_directory(fs, target):
        raise _Fatal("not a git repository")
    return target


def _device(fs: _Observer, path: bytes) -> int:
    """``os.stat(path).st_dev`` (raising as it would)."""
    st = fs.stat(path)
    if isinstance(st, int):
        raise _oserror(st, path)
    return st.st_dev


def _discover(fs: _Observer, start: bytes) -> tuple[bytes, bytes] | None:
    """Find ``(gitdir, commondir)`` walking up from ``start`` like git's setup, or None.

    git starts from ``getcwd()``, the physical path. ``start`` itself may be any path to that
    directory: the kernel resolves every path built below it the same way. Only the walk up,
    which works on the text, needs the physical path.
    """
    device = _device(fs, start)
    current = start
    while True:
        dotgit = _join(current, b".git")
        st = fs.stat(dotgit)
        if not isinstance(st, int):
            if stat.S_ISREG(st.st_mode):
                gitdir = _read_gitfile(fs, dotgit)
                return gitdir, _common_dir(fs, gitdir)
            if _is_git_directory(fs, dotgit):
                return dotgit, _common_dir(fs, dotgit)
        if _is_git_directory(fs, current):
            return current, _common_dir(fs, current)
        if current is start:
            current = fs.realpath(start)
        parent = os.path.dirname(current)
        if parent == current:
            return None
        if _device(fs, parent) != device:
            return None
        current = parent


_Resolved = tuple[bytes, bytes, bytes | None]
"""A resolved ref: its final name, its object id, and the loose file that id came from."""


class _Refs:
    """A read-only view of a files-backend ref store for one capture (nothing outlives it)."""

    def __init__(self, fs: _Observer, gitdir: bytes, commondir: bytes) -> None:
        self.fs = fs
        self.gitdir = gitdir
        self.commondir = commondir
        self._packed: bytes | None = None

    def _ref_path(self, name: bytes) -> bytes:
        if name.startswith(_PER_WORKTREE) or _PSEUDOREF.fullmatch(name):
            return _join(self.gitdir, name)
        if name.startswith(b"main-worktree/"):
            name = name[len(b"main-worktree/") :]
        return _join(self.commondir, name)

    def _packed_lookup(self, name: bytes) -> bytes | None:
        if self._packed is None:
            try:
                data = self.fs.read(_join(self.commondir, b"packed-refs"), ref=False)
            except FileNotFoundError:
                data = b""
            self._packed = data if data.endswith(b"\n") else data + b"\n"
        data = self._packed
        needle = b" " + name + b"\n"
        start = 0
        while (hit := data.find(needle, start)) >= 0:
            line_start = data.rfind(b"\n", 0, hit) + 1
            oid = data[line_start:hit]
            if len(oid) in (40, 64) and _OID.fullmatch(oid):
                return oid.lower()
            start = hit + 1
        return None

    def _read_raw(self, name: bytes) -> tuple[bool, bytes, bytes | None] | None:
        """One ref: ``(True, target, _)`` if symbolic, ``(False, oid, file)`` if direct, or None.

        ``file`` is the loose ref file the id was read from (None when packed).
        """
        path = self._ref_path(name)
        st = self.fs.lstat(path)
        if isinstance(st, int):
            if st != _ENOENT:
                return None  # e.g. ENOTDIR: git gives up on this ref
            oid = self._packed_lookup(name)
            return None if oid is None else (False, oid, None)
        if stat.S_ISDIR(st.st_mode):
            oid = self._packed_lookup(name)
            return None if oid is None else (False, oid, None)
        try:
            if stat.S_ISLNK(st.st_mode):
                target = self.fs.readlink(path)
                if target.startswith(b"refs/") and _refname_ok(target, onelevel=False):
                    return True, target, None
            parsed = _parse_loose(self.fs.read(path, ref=True))
        except OSError:
            return None
        return None if parsed is None else (parsed[0], parsed[1], path)

    def resolve(self, name: bytes) -> _Resolved | None:
        """git's ``refs_resolve_ref_unsafe(RESOLVE_REF_READING)``: final name, oid, file."""
        for _ in range(_SYMREF_MAXDEPTH):
            if not _refname_ok(name):
                return None
            raw = self._read_raw(name)
            if raw is None:
                return None
            symbolic, value, source = raw
            if not symbolic:
                return name, value, source
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


_Answer = tuple[str | None, str | None]
"""``(branch, commit)`` of a capture that found something."""


def _capture_fs(fs: _Observer, raw: bytes) -> _Answer | None:
    """The body of the file system capture; may raise."""
    if not fs.isdir(raw):
        return None  # `git -C` cannot chdir there
    found = _discover(fs, raw)
    if found is None:
        return None
    if fs.isdir(_join(found[1], b"reftable")):
        return None
    refs = _Refs(fs, *found)
    # `rev-parse HEAD` dwims "HEAD" through every rule and takes the first hit.
    hits = [hit for pre, suf in _RULES if (hit := refs.resolve(pre + b"HEAD" + suf))]
    if not hits:
        # Not a revision: git then takes "HEAD" as a file name, printing it, and exits 0 only
        # if such a file exists in the directory.
        if fs.lexists(_join(raw, b"HEAD")):
            return "HEAD", "HEAD"
        return None
    full, oid, source = hits[0]
    commit = _decode(oid)
    # `--abbrev-ref` reports an ambiguous name as an error, printing nothing, exit 0.
    branch = _decode(refs.shorten(full)) if len(hits) == 1 else ""
    if branch is None and commit is None:
        return None
    if source is not None:
        fs.mark_source(source)
    return branch, commit


def _observe(fs: _Observer, raw: bytes) -> _Answer | None:
    """One capture through ``fs``; None wherever the capture fails."""
    try:
        return _capture_fs(fs, raw)
    except (OSError, ValueError, _Fatal):
        return None


def _state(answer: _Answer | None) -> GitState | None:
    """A fresh ``GitState`` (callers may mutate what they get)."""
    return None if answer is None else GitState(branch=answer[0], commit=answer[1])


def capture_fs_uncached(path: Path) -> GitState | None:
    """:func:`capture_fs` without its cache: every file read again."""
    return _state(_observe(_Observer(time.time_ns()), os.fsencode(path)))


# --------------------------------------------------------------------------- the cache
#
# capture_fs keeps, per absolute workspace path, the last answer and the facts it rests on
# (the _Nodes). Each call re-checks them, most with one lstat: a path's type and device, a
# directory's signature for the entries known to be absent from it, a file's signature for the
# content read from it. A signature is trusted only once its times are older than git's racy
# window; until then the content is read again and the absent entries looked up again. A loose
# ref whose object id alone changed (a commit on the current branch) updates the answer without
# a full capture. Anything else that changed means a full capture, as does an entry older than
# _REVERIFY_NS. The result is what capture_fs_uncached would return at the time of the call.
#
# Assumed, as git's own index assumes: file times come from a clock that agrees with ours to
# within the racy window (true of local file systems), and the process keeps its user and
# groups (os.access results are re-checked only when the directory's signature moves).
# _REVERIFY_NS bounds how long a change missed despite that could go unnoticed.

_LOCK = threading.Lock()
_CACHE: dict[bytes, _Entry] = {}


def _forget_all() -> None:
    """Drop every cached answer (and a lock a forking thread may have held)."""
    global _LOCK
    _LOCK = threading.Lock()
    _CACHE.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all)


def capture_fs(path: Path) -> GitState | None:
    """Read branch and commit from ``.git`` directly, as ``capture_subprocess`` would report.

    Cached per workspace and re-validated on every call (see "The cache" in this module).
    """
    raw = os.fsencode(path)
    if not raw.startswith(b"/"):
        return _state(_observe(_Observer(time.time_ns()), raw))  # depends on the cwd
    with _LOCK:
        t_ns = time.time_ns()
        entry = _CACHE.pop(raw, None)
        if entry is not None and 0 <= t_ns - entry.born < _REVERIFY_NS:
            try:
                fresh = entry.still(t_ns)
            except (OSError, ValueError):
                fresh = False
            if fresh:
                _CACHE[raw] = entry
                return _state(entry.answer)
        fs = _Observer(t_ns)
        answer = _observe(fs, raw)
        if fs.cacheable:
            nodes = list(fs.nodes.values())
            for node in nodes:
                node.first_fast()
            _CACHE[raw] = _Entry(answer, nodes, t_ns)
            while len(_CACHE) > _CACHE_MAX:
                del _CACHE[next(iter(_CACHE))]
        return _state(answer)
