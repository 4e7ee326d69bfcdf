"""The ``file`` storage backend: the original's ``<dir>/<uuid>.json`` documents, shared with Rust.

This is the compatibility backend: a directory written by the Rust astrid loads and lists here,
and what is written here the Rust astrid reads.

Layout of ``<dir>`` (default ``<home>/sessions``):

* ``<uuid>.json``: one session, the original's pretty document. ``messages`` holds the active
  messages. astrid's own keys, which the original ignores, ride in the same document:
  ``astrid_revision``, ``astrid_updated_at`` and, only when some messages were replaced (by a
  summary), ``astrid_archived_messages`` (``[{"seq", "message"}]``), and once the session made
  an LLM call, ``astrid_ledger``: its spend-ledger rows (``astrid.ledger``), written by the same
  atomic replace as the session they belong to. A document without them (written by Rust) has
  revision 0 and its file mtime as last activity.
* ``.astrid-ledger-deleted.jsonl``: the ledger rows of deleted sessions (one JSON object a
  line), appended and fsynced before the session file is removed; a row found both there and
  in a document (a crash in between) counts once, by its id.
* ``.astrid-audit/<sha256 of the chain>.jsonl``: the audit log (``astrid.security.audit``), one
  append-only file per chain (workspace), one sealed entry a line (``{"body", "hash",
  "signature"}``). A save's entries are appended and fsynced under ``.locks/audit-<sha256>.lock``
  after its document's temp file is complete and before the rename that publishes it, so saved
  state never lacks its entries; a crash in between leaves entries for decisions whose state was
  not saved. A torn last line (a writer killed while appending) is cut off by the next append.
* ``.locks/<uuid>.lock`` and ``.locks/index.lock``: ``flock`` files that make read-modify-write
  safe across processes. Lock files are never removed (removing a lock file races with waiters).
* ``.astrid-index.json`` and ``.astrid-index.log``: a listing cache (id → summary and the
  file's inode, mtime and size): a snapshot plus a journal of one JSON line per change
  (``[id, entry]`` or ``[id, null]``), appended under ``.locks/index.lock`` and folded into the
  snapshot once it outgrows it, so a save costs the same at any number of sessions. The cache is
  revalidated against the directory on every listing, so files written by Rust, changed or
  removed behind astrid's back are picked up (only those are parsed), and a torn, garbled or
  stale cache only costs parsing.

Every write goes to ``<name>.tmp.<16 hex>`` (0600, ``O_EXCL``), is fsynced, renamed over the
target and the directory is fsynced. A session's temp file is only written under its
``.locks/<uuid>.lock`` and the snapshot's under ``.locks/index.lock``, so when a backend opens it
removes the temp files of a killed writer: those whose lock it can take at once (or, without a
lock file, older than 15 minutes). Directories astrid creates are 0700, files 0600.

Known limit: the Rust astrid drops unknown keys when it saves, so a session it saves loses its
astrid revision (back to 0) and its archived messages. A stale astrid save is still refused (the
revision or the message count no longer matches).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..config import PathOption, resolve_home_path
from ..errors import ConcurrencyError, InvalidKey, SerializationError, SessionNotFound, StorageError
from ..fsutil import TEMP_NAME, atomic_write, fsync_dir, make_private_dirs
from ..hookspecs import hookimpl
from ..ids import validate_session_id
from ..ledger import LedgerRow, matches, sort_rows
from ..plugins import PluginContext
from ..security.audit import (
    AuditRecord,
    PendingAudit,
    by_chain,
    seal,
    to_import,
)
from ..security.kv import KvStore, validate_name
from ..store import (
    HistoryEntry,
    SessionRecord,
    SessionSummary,
    SessionWrite,
    WorkspaceWrite,
    apply_workspace_write,
    check_messages_storable,
    workspace_key,
)
from ..timeutil import format_rfc3339, parse_rfc3339, to_utc, utcnow

REVISION_KEY = "astrid_revision"
UPDATED_AT_KEY = "astrid_updated_at"
ARCHIVED_KEY = "astrid_archived_messages"
LEDGER_KEY = "astrid_ledger"
ASTRID_KEYS = frozenset({REVISION_KEY, UPDATED_AT_KEY, ARCHIVED_KEY, LEDGER_KEY})
"""The document keys astrid adds; the original ignores them."""

DELETED_LEDGER_NAME = ".astrid-ledger-deleted.jsonl"
"""The spend-ledger rows of deleted sessions, one JSON object a line."""
INDEX_NAME = ".astrid-index.json"
JOURNAL_NAME = ".astrid-index.log"
LOCKS_DIR = ".locks"
AUDIT_DIR = ".astrid-audit"
"""The audit log's directory inside the session directory: ``<sha256 of the chain>.jsonl``."""
WORKSPACE_LOCK = ".workspace.lock"
"""The kv directory's lock file for workspace-state writes (never a namespace name)."""
JOURNAL_MIN_BYTES = 64 * 1024
"""The journal is folded into the snapshot once larger than this and than the snapshot."""
JOURNAL_MAX_READ = 256 * 1024 * 1024
"""A journal larger than this is not read (treated as garbage, then replaced)."""
ORPHAN_AGE_SECONDS = 15 * 60
"""A temp file without a lock to test is an orphan once its mtime is this old."""
INDEX_FORMAT = 1
DOCUMENT_FORMAT = 1

_Sig = tuple[int, int, int]
"""(inode, mtime_ns, size) of a file: every atomic replace gives a new inode."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class FileOptions(BaseModel):
    """Options of the ``file`` backend."""

    model_config = ConfigDict(extra="forbid")

    directory: PathOption | None = "sessions"
    """The sessions directory; default ``<home>/sessions``."""
    kv_directory: PathOption | None = None
    """The key-value directory; default ``kv`` next to the sessions directory."""


class _Corrupt(Exception):
    """A session file that cannot be used (the reason, without the path)."""


@dataclass(frozen=True)
class _Doc:
    data: dict[str, Any]
    messages: list[Any]
    archived: list[tuple[int, Any]]
    revision: int
    updated_at: datetime
    sig: _Sig
    ledger: list[Any] = field(default_factory=list)
    """The document's spend-ledger rows, as stored (``LedgerRow.to_data`` objects)."""


@dataclass(frozen=True)
class _Entry:
    sig: _Sig
    summary: SessionSummary | None
    error: str | None
    data: dict[str, Any]
    """The entry as stored in the index file (kept so rewriting the index is cheap)."""


# -- small filesystem helpers --------------------------------------------------------------


@contextlib.contextmanager
def _os_errors(what: str) -> Iterator[None]:
    """Turn ``OSError`` into ``StorageError`` naming what failed (its path, never an fd)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StorageError(
                f"file store: {what}: {exc.strerror or exc} (the store is read-only here)"
            ) from exc
        raise StorageError(f"file store: {what}: {exc.strerror or exc}") from exc


def _atomic_write(path: Path, data: bytes, *, durable: bool = True) -> _Sig:
    """``fsutil.atomic_write`` (private, whole or nothing); return the written file's signature."""
    st = atomic_write(path, data, durable=durable)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def _acquire(path: Path) -> int:
    """Open ``path`` (created 0600) and take an exclusive ``flock``; closing the fd releases it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _lock_if_free(path: Path) -> Iterator[bool | None]:
    """Try ``path``'s flock at once: True (taken), False (held elsewhere), None (no lock file)."""
    flags = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        try:
            fd = os.open(path, os.O_RDWR | flags)  # NFS emulates flock with write locks
        except PermissionError:
            fd = os.open(path, os.O_RDONLY | flags)
    except OSError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            state: bool | None = True
        except BlockingIOError:
            state = False
        except OSError:
            state = None
        yield state
    finally:
        os.close(fd)


def _remove_temps(directory: Path, names: Sequence[str], state: bool | None, now: float) -> int:
    """Unlink the temp files ``names`` if ``state`` says their lock is ours, or else if old."""
    if state is False:
        return 0
    removed = 0
    for name in names:
        path = directory / name
        try:
            if state is None and now - path.lstat().st_mtime < ORPHAN_AGE_SECONDS:
                continue
            os.unlink(path)
        except OSError:
            continue
        removed += 1
    return removed


def _sweep_kv_temps(directory: Path, names: Sequence[str]) -> int:
    """Remove the old temp files among ``names`` in a kv namespace directory (kv has no locks)."""
    temps = [n for n in names if ".tmp." in n and TEMP_NAME.fullmatch(n)]
    return _remove_temps(directory, temps, None, time.time()) if temps else 0


def _mtime(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


# -- the document --------------------------------------------------------------------------


def _decode(raw: bytes, sid: str, sig: _Sig) -> _Doc:
    """Check and split a session file's bytes; ``_Corrupt`` says why it cannot be used."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _Corrupt(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _Corrupt(f"a session document must be a JSON object, got {type(data).__name__}")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise _Corrupt("key 'messages' is missing or not a list")
    if "id" in data:
        inner = data["id"]
        try:
            inner_id = str(uuid.UUID(inner.strip())) if isinstance(inner, str) else None
        except ValueError:
            inner_id = None
        if inner_id is None:
            raise _Corrupt(f"key 'id': {str(inner)[:80]!r} is not a UUID")
        if inner_id != sid:
            raise _Corrupt(f"key 'id' is {inner_id} but the file is named {sid}.json")
    revision = data.get(REVISION_KEY, 0)
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 0:
        raise _Corrupt(f"key {REVISION_KEY!r} must be a non-negative integer")
    if UPDATED_AT_KEY in data:
        try:
            updated_at = parse_rfc3339(data[UPDATED_AT_KEY])
        except ValueError as exc:
            raise _Corrupt(f"key {UPDATED_AT_KEY!r}: {exc}") from None
        if not isinstance(updated_at, datetime):
            raise _Corrupt(f"key {UPDATED_AT_KEY!r} must be an RFC 3339 string")
    else:
        updated_at = _mtime(sig[1])
    archived: list[tuple[int, Any]] = []
    raw_archived = data.get(ARCHIVED_KEY, [])
    if not isinstance(raw_archived, list):
        raise _Corrupt(f"key {ARCHIVED_KEY!r} must be a list")
    for i, item in enumerate(raw_archived):
        seq = item.get("seq") if isinstance(item, dict) else None
        if (
            not isinstance(item, dict)
            or "message" not in item
            or isinstance(seq, bool)
            or not isinstance(seq, int)
            or (archived and seq <= archived[-1][0])
        ):
            raise _Corrupt(
                f"key {ARCHIVED_KEY!r}[{i}] must be {{'seq': int, 'message': ...}} "
                "with increasing seqs"
            )
        archived.append((seq, item["message"]))
    ledger = data.get(LEDGER_KEY, [])
    if not isinstance(ledger, list):
        raise _Corrupt(f"key {LEDGER_KEY!r} must be a list")
    return _Doc(data, messages, archived, revision, updated_at, sig, ledger)


def _compose(
    state: dict[str, Any],
    messages: list[Any],
    revision: int,
    updated_at: datetime,
    archived: list[tuple[int, Any]],
    ledger: list[Any] | None = None,
) -> dict[str, Any]:
    """The full document: state keys in order, ``messages`` after ``user_id``, astrid keys last."""
    keys = [k for k in state if k != "messages" and k not in ASTRID_KEYS]
    anchor = "user_id" if "user_id" in keys else "id" if "id" in keys else None
    doc: dict[str, Any] = {}
    if anchor is None:
        doc["messages"] = messages
    for key in keys:
        doc[key] = state[key]
        if key == anchor:
            doc["messages"] = messages
    doc[REVISION_KEY] = revision
    doc[UPDATED_AT_KEY] = format_rfc3339(updated_at)
    if archived:
        doc[ARCHIVED_KEY] = [{"seq": seq, "message": m} for seq, m in archived]
    if ledger:
        doc[LEDGER_KEY] = ledger
    return doc


def _encode(doc: dict[str, Any], path: Path) -> bytes:
    """Pretty JSON like ``serde_json::to_string_pretty`` (2 spaces, raw UTF-8)."""
    try:
        return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{path}: cannot encode the session: {exc}") from exc


def _next_seq(archived: list[tuple[int, Any]]) -> int:
    return archived[-1][0] + 1 if archived else 0


def _summary_of(
    sid: str, data: dict[str, Any], count: int, revision: int, updated_at: datetime
) -> SessionSummary:
    """A listing row read from a document (lenient: odd fields fall back to defaults)."""
    meta = data.get("metadata")
    title = meta.get("title") if isinstance(meta, dict) else None
    try:
        created = parse_rfc3339(data.get("created_at"))
    except ValueError:
        created = None
    tokens = data.get("token_count")
    ws = data.get("workspace_path")
    model = data.get("model")
    parent = data.get("parent_id")
    try:
        parent_id = str(uuid.UUID(parent)) if isinstance(parent, str) else None
    except ValueError:
        parent_id = None
    return SessionSummary(
        id=sid,
        title=title if isinstance(title, str) else None,
        created_at=created if isinstance(created, datetime) else updated_at,
        updated_at=updated_at,
        message_count=count,
        token_count=tokens if isinstance(tokens, int) and not isinstance(tokens, bool) else 0,
        workspace_path=workspace_key(ws) if isinstance(ws, str) and ws else None,
        model=model if isinstance(model, str) else None,
        parent_id=parent_id,
        revision=revision,
    )


def _normalized(summary: SessionSummary, **changes: Any) -> SessionSummary:
    """``summary`` with ``changes`` applied and its times made aware UTC."""
    new = replace(summary, **changes)
    return replace(new, created_at=to_utc(new.created_at), updated_at=to_utc(new.updated_at))


def _us(moment: datetime) -> int:
    return (to_utc(moment) - _EPOCH) // timedelta(microseconds=1)


def _from_us(value: Any) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected microseconds since the epoch")
    return _EPOCH + timedelta(microseconds=value)


def _entry(sig: _Sig, summary: SessionSummary | None, error: str | None = None) -> _Entry:
    """An index entry with its JSON form (times as integer microseconds, cheap to read)."""
    ino, mtime_ns, size = sig
    data: dict[str, Any] = {"ino": ino, "mtime_ns": mtime_ns, "size": size}
    if summary is None:
        data["error"] = error or "unreadable"
    else:
        data.update(
            title=summary.title,
            created_us=_us(summary.created_at),
            updated_us=_us(summary.updated_at),
            message_count=summary.message_count,
            token_count=summary.token_count,
            workspace_path=summary.workspace_path,
            model=summary.model,
            parent_id=summary.parent_id,
            revision=summary.revision,
        )
    return _Entry(sig, summary, data.get("error"), data)


def _entry_from_json(sid: str, raw: Any) -> _Entry | None:
    """An index entry, or None if it is malformed (the file is then parsed again)."""
    try:
        sig = (_int(raw["ino"]), _int(raw["mtime_ns"]), _int(raw["size"]))
        if "error" in raw:
            return _Entry(sig, None, str(raw["error"]), raw)
        summary = SessionSummary(
            id=sid,
            title=_opt_str(raw["title"]),
            created_at=_from_us(raw["created_us"]),
            updated_at=_from_us(raw["updated_us"]),
            message_count=_int(raw["message_count"]),
            token_count=_int(raw["token_count"]),
            workspace_path=_opt_str(raw["workspace_path"]),
            model=_opt_str(raw["model"]),
            parent_id=_opt_str(raw["parent_id"]),
            revision=_int(raw["revision"]),
        )
    except (KeyError, TypeError, ValueError, OverflowError):
        return None
    return _Entry(sig, summary, None, raw)


def _journal_op(line: bytes) -> tuple[str, _Entry | None] | None:
    """One journal line: (id, entry) for a put, (id, None) for a drop; None if malformed."""
    try:
        op = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(op, list) or len(op) != 2 or not isinstance(op[0], str):
        return None
    sid, raw = op
    if raw is None:
        return sid, None
    if not isinstance(raw, dict):
        return None
    entry = _entry_from_json(sid, raw)
    return None if entry is None else (sid, entry)


def _compact_json(value: Any) -> bytes:
    """Compact ASCII JSON (lone surrogates in a hand-edited title survive as escapes)."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _opt_str(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError("expected a string or null")


_CANONICAL_NAME = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.json")

_STORE_NAME = re.compile(
    r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\.json(\.tmp\.[0-9a-f]{16})?"
)
"""A name only a session directory holds: a session file (any case) or its temp file."""

_STORE_MARKERS = frozenset({LOCKS_DIR, INDEX_NAME, JOURNAL_NAME})
"""What astrid itself puts in a session directory."""

_IGNORED_NAMES = frozenset({"lost+found"})
"""Names that do not make a directory non-empty (a freshly made file system has one)."""


def check_session_directory(directory: Path) -> None:
    """Refuse a directory that cannot be a session directory, before anything is written.

    The rule: the path is a directory (or does not exist yet, under a directory), and it is
    empty or already holds a session file or astrid's own files (``.locks``, the index). Any
    other non-empty directory (``/etc``, a home directory) is someone else's: refused.
    """
    try:
        st = os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):
        ancestor = directory.parent  # missing: created by the first save, if under a directory
        while not (ancestor.exists() or ancestor.is_symlink()) and ancestor.parent != ancestor:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise StorageError(f"file store: {directory}: {ancestor} is not a directory") from None
        return
    except OSError as exc:
        raise StorageError(f"file store: cannot use {directory}: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise StorageError(f"file store: {directory} is not a directory")
    try:
        with os.scandir(directory) as entries:
            others = False
            for item in entries:
                if item.name in _STORE_MARKERS or _STORE_NAME.fullmatch(item.name):
                    return
                others = others or item.name not in _IGNORED_NAMES
    except PermissionError:
        return  # cannot be listed: every read will say so, naming the directory
    except OSError as exc:
        raise StorageError(f"file store: cannot list {directory}: {exc.strerror or exc}") from exc
    if others:
        raise StorageError(
            f"file store: {directory} is not empty and is not a session directory (it holds "
            f"no <uuid>.json, {LOCKS_DIR} or {INDEX_NAME}); use an empty or a new directory"
        )


# -- the audit log's chain files -------------------------------------------------------------


def _audit_line(record: AuditRecord) -> bytes:
    """One chain-file line: the signed body, its hash and signature (the rest is in the body)."""
    return _compact_json(
        {"body": record.body, "hash": record.hash, "signature": record.signature}
    ) + b"\n"


def _chain_head(fd: int, path: Path) -> tuple[int, str] | None:
    """The last entry's ``(seq, hash)`` of an open chain file (None: empty), after cutting off
    a torn last line; ``StorageError`` if the last complete line is not a readable entry."""
    size = os.fstat(fd).st_size
    window = 4096
    last = b""
    while size:
        start = max(0, size - window)
        tail = os.pread(fd, size - start, start)
        cut = tail.rfind(b"\n", 0, len(tail) - 1 if tail.endswith(b"\n") else len(tail))
        if cut < 0 and start > 0:
            window *= 4  # the line is longer than the window
            continue
        if not tail.endswith(b"\n"):  # torn: its writer died before publishing its state
            size = start + cut + 1
            os.ftruncate(fd, size)
            continue
        last = tail[cut + 1 : -1]
        break
    if not size:
        return None
    try:
        item = json.loads(last)
        seq, digest = json.loads(item["body"])["seq"], item["hash"]
        if not (isinstance(seq, int) and isinstance(digest, str)):
            raise TypeError("seq or hash of the wrong type")
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError) as exc:
        raise StorageError(
            f"file store: {path}: the last audit entry is not readable ({exc}), so the chain "
            "cannot be extended; check it with `astrid audit verify`"
        ) from exc
    return seq, digest


def _append_to_chain(
    path: Path, *, pending: Sequence[PendingAudit] = (), sealed: Sequence[AuditRecord] = ()
) -> None:
    """Append to a chain file (the caller holds its lock) and fsync it: entries already
    ``sealed`` (an import) as they are, ``pending`` ones sealed after the file's last entry
    (once a torn last line is cut off)."""
    with _os_errors(f"cannot append to {path}"):
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(path, flags, 0o600)
        try:
            created = os.fstat(fd).st_size == 0
            head = _chain_head(fd, path)
            records = [*sealed, *(seal(pending, head) if pending else ())]
            view = memoryview(b"".join(_audit_line(r) for r in records))
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(path.parent)


def _parse_line(line: bytes) -> tuple[dict[str, Any], str, str, str] | None:
    """A chain-file line's body fields, body, hash and signature; None if it does not parse."""
    try:
        item = json.loads(line)
        body, digest, signature = item["body"], item["hash"], item["signature"]
        if not all(isinstance(v, str) for v in (body, digest, signature)):
            return None
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("chain"), str):
            return None
        int(data["seq"])
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError):
        return None
    return data, body, digest, signature


def _read_chain(path: Path) -> list[AuditRecord]:
    """A chain file's entries in stored order; a torn last line (an append in progress or cut
    short) is left out, any other unreadable line becomes an entry that cannot verify."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StorageError(f"file store: cannot read {path}: {exc}") from exc
    lines = raw.split(b"\n")
    lines.pop()  # after the last newline: empty, or a torn line
    parsed = [_parse_line(line) for line in lines]
    chain = next((p[0]["chain"] for p in parsed if p is not None), path.stem)
    out: list[AuditRecord] = []
    for number, (line, item) in enumerate(zip(lines, parsed, strict=True), start=1):
        if item is None:
            out.append(
                AuditRecord(chain, out[-1].seq + 1 if out else 1, f"{path.name}:line {number}",
                            "", "", line.decode("utf-8", "replace"), "", "")
            )
            continue
        data, body, digest, signature = item
        out.append(
            AuditRecord(str(data["chain"]), int(data["seq"]), str(data.get("id")),
                        str(data.get("session_id")), str(data.get("at")), body, digest, signature)
        )
    return out


# -- the backend ---------------------------------------------------------------------------


class FileBackend:
    """Sessions as the original's JSON documents in one directory, safe across processes."""

    name = "file"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        kv_directory: str | os.PathLike[str] | None = None,
        read_only: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.kv_directory = (
            Path(kv_directory) if kv_directory is not None else self.directory.parent / "kv"
        )
        check_session_directory(self.directory)
        if self.kv_directory.exists() and not self.kv_directory.is_dir():
            raise StorageError(f"file store: {self.kv_directory} is not a directory")
        self.read_only = read_only
        """Opened to inspect: nothing is created (no locks, no index); writes are refused."""
        self.parse_count = 0
        """How many session files this backend has parsed (tests and benchmarks read it)."""
        self._lock = threading.RLock()
        self._index_sig: _Sig | None = None
        """The snapshot ``_index`` was loaded from (None: no snapshot)."""
        self._index: dict[str, _Entry] = {}
        """The cached listing; replaced, never changed in place (listings iterate it unlocked)."""
        self._journal_at: tuple[int, int] | None = None
        """(inode, offset) of the journal replayed into ``_index`` so far."""
        self._journal_bad = 0
        """Malformed or torn journal lines seen since the snapshot was loaded."""
        self._kv: FileKvStore | None = None
        self._audit_appended: set[str] = set()
        """Ids of audit entries appended by a save that then failed (its retry must skip them)."""
        self.swept_temp_files = 0 if read_only else self._sweep_temps()
        """How many orphaned temp files opening this backend removed."""

    def __repr__(self) -> str:
        return f"FileBackend({str(self.directory)!r})"

    # -- paths and locks -------------------------------------------------------------------

    def path_of(self, session_id: str) -> Path:
        """The document path of a session (the id is validated first)."""
        return self.directory / f"{validate_session_id(session_id)}.json"

    def _ensure_dirs(self) -> None:
        if self.read_only:
            raise StorageError(f"file store: {self.directory} is opened read-only: cannot write")
        with _os_errors(f"cannot create {self.directory}"):
            make_private_dirs(self.directory)
            make_private_dirs(self.directory / LOCKS_DIR)

    @contextlib.contextmanager
    def _session_lock(self, sid: str) -> Iterator[None]:
        with _os_errors(f"cannot lock session {sid}"):
            fd = _acquire(self.directory / LOCKS_DIR / f"{sid}.lock")
        try:
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[bool]:
        """Hold the directory-wide lock; yields False (unlocked) if the directory is read-only."""
        fd: int | None = None
        if not self.read_only:
            try:
                make_private_dirs(self.directory / LOCKS_DIR)
                fd = _acquire(self.directory / LOCKS_DIR / "index.lock")
            except OSError:
                fd = None
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)

    # -- reading documents -----------------------------------------------------------------

    def _read(self, path: Path) -> tuple[bytes, _Sig] | None:
        try:
            # O_NONBLOCK: a FIFO planted under a session's name must not hang the load.
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"file store: cannot read {path}: {exc.strerror or exc}") from exc
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"file store: cannot read {path}: {exc.strerror or exc}") from exc
        if not stat.S_ISREG(st.st_mode):  # checked before fdopen, which names only the fd
            os.close(fd)
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise StorageError(f"file store: {path} is {kind}, not a session file")
        with _os_errors(f"cannot read {path}"), os.fdopen(fd, "rb") as fh:
            raw = fh.read()
        self.parse_count += 1
        return raw, (st.st_ino, st.st_mtime_ns, st.st_size)

    def _load_doc(self, sid: str) -> _Doc | None:
        path = self.directory / f"{sid}.json"
        got = self._read(path)
        if got is None:
            return None
        try:
            return _decode(got[0], sid, got[1])
        except _Corrupt as exc:
            raise SerializationError(f"{path}: {exc}") from None

    def describe(self, session_id: str) -> str:
        """Where a session lives, for error messages: its file."""
        return str(self.directory / f"{validate_session_id(session_id)}.json")

    def load(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        """The session (only its last ``tail`` active messages if given), or None."""
        sid = validate_session_id(session_id)
        doc = self._load_doc(sid)
        if doc is None:
            return None
        total = len(doc.messages)
        start = 0 if tail is None else max(0, total - tail)
        state = {k: v for k, v in doc.data.items() if k != "messages" and k not in ASTRID_KEYS}
        return SessionRecord(
            state=state,
            messages=doc.messages[start:],
            message_offset=start,
            message_count=total,
            revision=doc.revision,
            updated_at=doc.updated_at,
        )

    def history(self, session_id: str) -> list[HistoryEntry]:
        """Archived then active messages, with strictly increasing, stable seqs."""
        sid = validate_session_id(session_id)
        doc = self._load_doc(sid)
        if doc is None:
            return []
        rows = [HistoryEntry(seq, False, m) for seq, m in doc.archived]
        base = _next_seq(doc.archived)
        rows += [HistoryEntry(base + i, True, m) for i, m in enumerate(doc.messages)]
        return rows

    # -- writing ---------------------------------------------------------------------------

    def _write_doc(
        self, sid: str, doc: dict[str, Any], audit: Sequence[PendingAudit] = ()
    ) -> _Sig:
        """Write a session document; ``audit`` entries are appended to their chains just before
        the rename (an entry appended by a save that fails afterwards is not appended again)."""
        path = self.directory / f"{sid}.json"
        data = _encode(doc, path)
        pending = [p for p in audit if p.fields["id"] not in self._audit_appended]
        appended: list[str] = []

        def append_audit() -> None:
            self._append_audit(pending)
            appended.extend(str(p.fields["id"]) for p in pending)

        try:
            with _os_errors(f"cannot write {path}"):
                st = atomic_write(path, data, before_replace=append_audit if pending else None)
        except BaseException:
            self._audit_appended.update(appended)
            raise
        self._audit_appended.difference_update(str(p.fields["id"]) for p in audit)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def write(self, change: SessionWrite) -> int:
        """Apply one save under the session lock; ``ConcurrencyError`` on a stale revision."""
        sid = validate_session_id(change.session_id)
        change.check_archived()
        change.check_storable()
        self._ensure_dirs()
        with self._session_lock(sid):
            current = self._load_doc(sid)
            stored = current.revision if current is not None else None
            if stored != change.expected_revision:
                raise ConcurrencyError(
                    f"session {sid}: stale save (based on revision "
                    f"{change.expected_revision}, stored revision is {stored})"
                )
            archived = list(current.archived) if current is not None else []
            existing = list(current.messages) if current is not None else []
            if current is not None and not change.replace and len(existing) != change.base_count:
                raise ConcurrencyError(
                    f"session {sid}: stale save (based on {change.base_count} "
                    f"messages, {len(existing)} stored)"
                )
            if change.replace:
                base = _next_seq(archived)
                archived.extend((base + i, m) for i, m in enumerate(existing))
                active = list(change.messages)
            else:
                active = existing + list(change.messages)
            # Messages recorded as already replaced (a create or a replace only): after the
            # stored history, before the active ones (whose seqs follow the archived ones).
            base = _next_seq(archived)
            archived.extend((base + i, m) for i, m in enumerate(change.archived))
            revision = (stored or 0) + 1
            updated_at = to_utc(change.summary.updated_at)
            ledger = list(current.ledger) if current is not None else []
            if change.ledger:
                known = {r.get("id") for r in ledger if isinstance(r, dict)}
                ledger += [r.to_data() for r in change.ledger if r.id not in known]
            sig = self._write_doc(
                sid,
                _compose(change.state, active, revision, updated_at, archived, ledger),
                change.audit,
            )
            summary = _normalized(
                change.summary,
                message_count=len(active),
                revision=revision,
                updated_at=updated_at,
            )
            self._index_put(sid, _entry(sig, summary))
            return revision

    def append(
        self, session_id: str, messages: Sequence[Any], summary: SessionSummary | None = None
    ) -> tuple[int, int]:
        """Append under the session lock regardless of revision; ``SessionNotFound`` if absent."""
        sid = validate_session_id(session_id)
        check_messages_storable(sid, messages)
        if not (self.directory / f"{sid}.json").exists():
            raise SessionNotFound(f"session {sid} not found in the file store {self.directory}")
        self._ensure_dirs()
        with self._session_lock(sid):
            current = self._load_doc(sid)
            if current is None:
                raise SessionNotFound(f"session {sid} not found in the file store {self.directory}")
            active = [*current.messages, *messages]
            revision = current.revision + 1
            now = utcnow()
            sig = self._write_doc(
                sid,
                _compose(current.data, active, revision, now, current.archived, current.ledger),
            )
            if summary is not None:
                row = _normalized(
                    summary, message_count=len(active), revision=revision, updated_at=now
                )
            else:
                row = _summary_of(sid, current.data, len(active), revision, now)
            self._index_put(sid, _entry(sig, row))
            return revision, len(active)

    def delete(self, session_id: str) -> bool:
        """Remove a session file (and its history); False if it did not exist."""
        return bool(self.delete_many([session_id]))

    def delete_many(self, session_ids: Sequence[str]) -> list[str]:
        """Remove several session files with one directory fsync and one index update
        (``BatchDeleter``: ``prune``); the ids that existed, in order. Each one's ledger rows
        are kept first, as ``delete`` keeps them."""
        sids = [validate_session_id(s) for s in session_ids]
        gone: list[str] = []
        try:
            for sid in sids:
                if self._unlink_session(sid):
                    gone.append(sid)
        finally:
            if gone:
                with _os_errors(f"cannot sync {self.directory}"):
                    fsync_dir(self.directory)
                with self._lock, self._index_lock() as locked:
                    if locked:
                        with contextlib.suppress(OSError):  # the index is only a cache
                            self._index_commit([(sid, None) for sid in gone])
        return gone

    def _unlink_session(self, sid: str) -> bool:
        """Keep a session's ledger rows, then remove its file (not yet fsynced)."""
        path = self.directory / f"{sid}.json"
        if not path.exists():
            return False
        self._ensure_dirs()
        with self._session_lock(sid):
            try:
                doc = self._load_doc(sid)
            except SerializationError:
                doc = None  # a corrupt file: no rows to keep
            if doc is not None and doc.ledger:
                self._keep_deleted_ledger(doc.ledger)
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise StorageError(f"file store: cannot delete {path}: {exc}") from exc
            return True

    # -- the spend ledger -------------------------------------------------------------------

    def _keep_deleted_ledger(self, rows: list[Any]) -> None:
        """Append a deleted session's ledger rows to ``DELETED_LEDGER_NAME`` (fsynced); after a
        torn append (no final newline) the rows start on a line of their own."""
        path = self.directory / DELETED_LEDGER_NAME
        data = b"".join(_compact_json(row) + b"\n" for row in rows)
        with _os_errors(f"cannot write {path}"):
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def _deleted_ledger(self) -> list[tuple[Any, str]]:
        """The rows of deleted sessions with where each was read. A line that is not JSON is a
        torn append, skipped: the writer killed while appending it had not removed the session
        yet, whose document still holds the rows."""
        path = self.directory / DELETED_LEDGER_NAME
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"file store: cannot read {path}: {exc}") from exc
        lines = raw.split(b"\n")
        out: list[tuple[Any, str]] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                out.append((json.loads(line), f"{path}: line {number}"))
            except (ValueError, UnicodeDecodeError, RecursionError):
                continue  # torn
        return out

    def list_ledger(
        self,
        *,
        session_id: str | None = None,
        workspace: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerRow]:
        """The spend-ledger rows passing the filters, by time: read from every session document
        (this backend parses them all) and from the deleted sessions' rows."""
        found: list[tuple[Any, str]] = []
        if session_id is not None:
            sids = [validate_session_id(session_id)]
        else:
            sids = sorted(self._refresh()[0])
        for sid in sids:
            try:
                doc = self._load_doc(sid)
            except SerializationError:
                continue  # a corrupt file: ``problems`` reports it
            if doc is not None:
                where = f"{self.directory / f'{sid}.json'}: {LEDGER_KEY}"
                found += [(item, f"{where}[{i}]") for i, item in enumerate(doc.ledger)]
        found += self._deleted_ledger()
        rows: dict[str, LedgerRow] = {}
        for item, where in found:
            row = LedgerRow.from_data(item, where)
            if matches(row, session_id=session_id, workspace=workspace, since=since, until=until):
                rows.setdefault(row.id, row)
        return sort_rows(rows.values())

    # -- the audit log --------------------------------------------------------------------

    def _chain_names(self, chain: str) -> tuple[Path, Path]:
        """A chain's file and its lock file."""
        name = hashlib.sha256(chain.encode()).hexdigest()
        return (
            self.directory / AUDIT_DIR / f"{name}.jsonl",
            self.directory / LOCKS_DIR / f"audit-{name}.lock",
        )

    @contextlib.contextmanager
    def _chain_locked(self, chain: str) -> Iterator[Path]:
        """Hold a chain's lock; yields its file's path."""
        path, lock = self._chain_names(chain)
        with _os_errors(f"cannot create {path.parent}"):
            make_private_dirs(path.parent)
        with _os_errors(f"cannot lock the audit chain {path}"):
            lock_fd = _acquire(lock)
        try:
            yield path
        finally:
            os.close(lock_fd)

    def _append_audit(self, pending: Sequence[PendingAudit]) -> None:
        """Seal entries after their chain's last stored one and append them (fsynced), each
        chain under its own lock, so concurrent writers of one workspace take turns."""
        groups = by_chain(pending)
        for chain in sorted(groups):
            with self._chain_locked(chain) as path:
                _append_to_chain(path, pending=groups[chain])

    def import_audit(self, records: Sequence[AuditRecord]) -> int:
        """Append entries copied from another store after each chain's own (``to_import``),
        under the chain's lock."""
        self._ensure_dirs()
        added = 0
        for chain, items in by_chain(records).items():
            with self._chain_locked(chain) as path:
                stored = [r.hash for r in _read_chain(path)] if path.exists() else []
                new = to_import(items, stored)
                if new:
                    _append_to_chain(path, sealed=new)
                added += len(new)
        return added

    def list_audit(self, *, session_id: str | None = None) -> list[AuditRecord]:
        """The stored audit entries (of one session), by chain, each chain in stored order; a
        line that does not parse is returned as an entry ``verify`` names (never skipped)."""
        sid = validate_session_id(session_id) if session_id is not None else None
        directory = self.directory / AUDIT_DIR
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".jsonl"))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"file store: cannot list {directory}: {exc}") from exc
        chains = [_read_chain(directory / name) for name in names]
        chains.sort(key=lambda records: records[0].chain if records else "")
        return [r for records in chains for r in records if sid is None or r.session_id == sid]

    # -- orphaned temp files --------------------------------------------------------------

    def _sweep_temps(self) -> int:
        """Remove the temp files of killed writers from the sessions directory (one listdir)."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return 0
        by_lock: dict[str, list[str]] = {}
        for name in names:
            match = TEMP_NAME.fullmatch(name) if ".tmp." in name else None
            if match is None:
                continue
            target = match["target"]
            if target == INDEX_NAME:
                by_lock.setdefault("index", []).append(name)
            elif _CANONICAL_NAME.fullmatch(target):
                by_lock.setdefault(target[: -len(".json")], []).append(name)
        removed = 0
        now = time.time()
        for lock, temps in by_lock.items():
            with _lock_if_free(self.directory / LOCKS_DIR / f"{lock}.lock") as state:
                removed += _remove_temps(self.directory, temps, state, now)
        return removed

    def sweep_temp_files(self) -> int:
        """Remove orphaned temp files now (sessions directory and kv store); how many."""
        with self._lock:
            if self._kv is None:
                self._kv = FileKvStore(self.kv_directory, read_only=self.read_only)
            kv = self._kv
        return self._sweep_temps() + kv.sweep_temp_files()

    # -- the index -------------------------------------------------------------------------

    def _read_index(self) -> dict[str, _Entry]:
        """The cached listing: the snapshot (re-read if it changed) plus the journal's new lines."""
        path = self.directory / INDEX_NAME
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):  # a FIFO would block every listing
                    return {}
                sig = (st.st_ino, st.st_mtime_ns, st.st_size)
                raw = None if sig == self._index_sig else fh.read()
        except FileNotFoundError:
            sig = None
            raw = None
        except OSError:
            return {}
        if sig != self._index_sig:
            entries: dict[str, _Entry] = {}
            try:
                data = json.loads(raw) if raw is not None else None
            except (ValueError, RecursionError):
                data = None
            if isinstance(data, dict) and data.get("format") == INDEX_FORMAT:
                sessions = data.get("sessions")
                if isinstance(sessions, dict):
                    for sid, raw_entry in sessions.items():
                        entry = _entry_from_json(sid, raw_entry)
                        if entry is not None:
                            entries[sid] = entry
            self._index, self._index_sig = entries, sig
            self._journal_at, self._journal_bad = None, 0
        self._replay_journal()
        return self._index

    def _replay_journal(self) -> None:
        """Apply the journal lines not replayed yet; torn or malformed ones are counted, skipped."""
        try:
            fd = os.open(
                self.directory / JOURNAL_NAME,
                os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK,
            )
        except FileNotFoundError:
            self._journal_at = None  # removed: what it said stays applied, and stays checked
            return
        except OSError:
            return
        try:
            st = os.fstat(fd)
            ino, offset = self._journal_at or (None, 0)
            if ino != st.st_ino or st.st_size < offset:
                offset = 0
            if st.st_size == offset or not stat.S_ISREG(st.st_mode):
                self._journal_at = (st.st_ino, offset)
                return
            if st.st_size - offset > JOURNAL_MAX_READ:
                self._journal_at = (st.st_ino, st.st_size)
                self._journal_bad += 1
                return
            chunks = []
            want = st.st_size - offset
            while want > 0:
                chunk = os.pread(fd, want, offset + st.st_size - offset - want)
                if not chunk:
                    break
                chunks.append(chunk)
                want -= len(chunk)
            data = b"".join(chunks)
        except OSError:
            return
        finally:
            os.close(fd)
        lines = data.split(b"\n")
        bad = 1 if lines.pop() else 0  # the last piece is b"" unless the last line is torn
        entries = dict(self._index)
        for line in lines:
            op = _journal_op(line) if line else None
            if op is None:
                bad += bool(line)
            elif op[1] is None:
                entries.pop(op[0], None)
            else:
                entries[op[0]] = op[1]
        self._index = entries
        self._journal_at = (st.st_ino, offset + len(data))
        self._journal_bad += bad

    def _write_index(self, entries: dict[str, _Entry]) -> None:
        """Replace the snapshot (atomic, not fsynced), then remove the journal it absorbed."""
        doc = {
            "format": INDEX_FORMAT,
            "sessions": {sid: e.data for sid, e in entries.items()},
        }
        sig = _atomic_write(self.directory / INDEX_NAME, _compact_json(doc), durable=False)
        self._index, self._index_sig = entries, sig
        self._journal_at, self._journal_bad = None, 0
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.directory / JOURNAL_NAME)

    def _journal_append(self, data: bytes) -> int:
        """Append lines in one ``O_APPEND`` write (not fsynced); the journal's new size."""
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(self.directory / JOURNAL_NAME, flags, 0o600)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{JOURNAL_NAME} is not a regular file")
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                data = b"\n" + data  # end a torn last line first: it stays one bad line
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return st.st_size + len(data)

    def _index_commit(
        self, ops: Sequence[tuple[str, _Entry | None]], state: dict[str, _Entry] | None = None
    ) -> None:
        """Journal ``ops`` (index lock held); fold into a new snapshot when the journal is big.

        ``state`` is the whole listing when the caller has it (a refresh), saving a re-read.
        """
        try:
            snapshot: int | None = os.stat(self.directory / INDEX_NAME).st_size
        except FileNotFoundError:
            snapshot = None
        limit = max(JOURNAL_MIN_BYTES, snapshot or 0)
        data = b"".join(
            _compact_json([sid, None if e is None else e.data]) + b"\n" for sid, e in ops
        )
        compact = snapshot is None or self._journal_bad > 0
        if not compact and state is not None and len(data) > limit // 2:
            compact = True  # many changes (a first listing): one snapshot, not twice the bytes
        if not compact and data:
            compact = self._journal_append(data) > limit
        if not compact:
            return
        if state is None:
            state = dict(self._read_index())
            for sid, entry in ops:
                if entry is None:
                    state.pop(sid, None)
                else:
                    state[sid] = entry
        self._write_index(state)

    def _index_update(self, sid: str, entry: _Entry | None) -> None:
        # The index is only a cache: if it cannot be written, the next listing sees the file's
        # new signature and parses it again, so the error is not the caller's.
        with self._lock, self._index_lock() as locked:
            if locked:
                with contextlib.suppress(OSError):
                    self._index_commit([(sid, entry)])

    def _index_put(self, sid: str, entry: _Entry) -> None:
        self._index_update(sid, entry)

    def _scan(self) -> tuple[dict[str, _Sig], list[tuple[Path, str]]]:
        """Stat the session files (no parsing); misnamed ones become problems."""
        found: dict[str, _Sig] = {}
        problems: list[tuple[Path, str]] = []
        try:
            entries = os.scandir(self.directory)
        except FileNotFoundError:
            return found, problems
        with entries:
            for item in entries:
                name = item.name
                if not _CANONICAL_NAME.fullmatch(name):
                    if name.startswith(".") or not name.endswith(".json") or ".tmp" in name:
                        continue
                    try:
                        canonical = uuid.UUID(name[: -len(".json")])
                    except ValueError:
                        continue
                    problems.append(
                        (
                            Path(item.path),
                            f"the file name is not the canonical lowercase id "
                            f"({canonical}.json); not loaded",
                        )
                    )
                    continue
                try:
                    st = item.stat()
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    problems.append((Path(item.path), f"cannot stat: {exc}"))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    problems.append((Path(item.path), "not a regular file"))
                    continue
                found[name[: -len(".json")]] = (st.st_ino, st.st_mtime_ns, st.st_size)
        return found, problems

    def _parse_entry(self, sid: str, sig: _Sig) -> _Entry | None:
        """Parse one file into an index entry (an error entry if corrupt; None if gone)."""
        try:
            got = self._read(self.directory / f"{sid}.json")
        except StorageError as exc:
            return _entry(sig, None, str(exc))
        if got is None:
            return None
        try:
            doc = _decode(got[0], sid, got[1])
        except _Corrupt as exc:
            return _entry(got[1], None, str(exc))
        summary = _summary_of(sid, doc.data, len(doc.messages), doc.revision, doc.updated_at)
        return _entry(doc.sig, summary)

    def _refresh(self) -> tuple[dict[str, _Entry], list[tuple[Path, str]]]:
        """The index revalidated against the directory; only new or changed files are parsed."""
        if not self.directory.is_dir():
            return {}, []
        with self._lock, self._index_lock() as locked:
            index = self._read_index()
            found, problems = self._scan()
            fresh: dict[str, _Entry] = {}
            ops: list[tuple[str, _Entry | None]] = []
            for sid, sig in found.items():
                entry = index.get(sid)
                if entry is None or entry.sig != sig:
                    entry = self._parse_entry(sid, sig)
                    if entry is None:
                        continue
                    ops.append((sid, entry))
                fresh[sid] = entry
            ops.extend((sid, None) for sid in index if sid not in fresh)
            if ops or self._journal_bad:
                self._index = fresh
                if locked:
                    with contextlib.suppress(OSError):
                        self._index_commit(ops, fresh)
            for sid, entry in fresh.items():
                if entry.summary is None:
                    problems.append((self.directory / f"{sid}.json", entry.error or "unreadable"))
            problems.sort(key=lambda p: str(p[0]))
            return fresh, problems

    def _sorted(self, workspace: str | None) -> list[SessionSummary]:
        entries, _problems = self._refresh()
        rows = [e.summary for e in entries.values() if e.summary is not None]
        if workspace is not None:
            rows = [r for r in rows if r.workspace_path == workspace]
        rows.sort(key=lambda r: (-r.updated_at.timestamp(), r.id))
        return rows

    def list_sessions(
        self, *, workspace: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[SessionSummary]:
        """A page of summaries, newest activity first; corrupt files are skipped (see problems)."""
        return self._sorted(workspace)[offset : offset + limit]

    def count_sessions(self, *, workspace: str | None = None) -> int:
        """How many readable sessions (optionally in one workspace)."""
        return len(self._sorted(workspace))

    def stray_files(self) -> list[tuple[Path, str]]:
        """Entries of the session directory that are neither a session file (its temp file
        included) nor astrid's own hidden files: nothing reads them (``StrayFileReporter``)."""
        try:
            entries = sorted(os.scandir(self.directory), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StorageError(f"file store: cannot list {self.directory}: {exc}") from exc
        stray: list[tuple[Path, str]] = []
        for item in entries:
            name = item.name
            if name.startswith(".") or name in _IGNORED_NAMES or _STORE_NAME.fullmatch(name):
                continue
            kind = "directory" if item.is_dir(follow_symlinks=False) else "file"
            stray.append(
                (
                    Path(item.path),
                    f"stray {kind}: not a session file (<uuid>.json); astrid ignores it "
                    "(move it out of the session directory)",
                )
            )
        return stray

    def list_all_sessions(self) -> list[SessionSummary]:
        """Every readable session in one directory scan (``WholeLister``): each page of
        ``list_sessions`` scans the directory again."""
        return self._sorted(None)

    def problems(self) -> list[tuple[Path, str]]:
        """Session files that cannot be listed or loaded (corrupt, misnamed), after a rescan."""
        return self._refresh()[1]

    # -- the rest of the protocol ----------------------------------------------------------

    def kv(self) -> KvStore:
        """The file key-value store (``kv_directory``)."""
        return self._file_kv()

    def _file_kv(self) -> FileKvStore:
        with self._lock:
            if self._kv is None:
                self._kv = FileKvStore(self.kv_directory, read_only=self.read_only)
            return self._kv

    def write_workspace_state(self, change: WorkspaceWrite) -> float | None:
        """Apply a workspace write under the kv store's workspace lock; the stored total.

        The document is one file replaced atomically; the lock (``flock`` on
        ``<kv_directory>/.workspace.lock``) makes the read-add-write one step across processes.
        """
        kv = self._file_kv()
        with kv.workspace_lock():
            return apply_workspace_write(
                change, kv.get, kv.set, kv.delete, f"file kv store {kv.directory}"
            )

    def schema_version(self) -> int:
        """The document format version: 1."""
        return DOCUMENT_FORMAT

    def close(self) -> None:
        """Nothing to release (files are opened per operation)."""


# -- the key-value store -------------------------------------------------------------------

_MAX_NAME = 200
"""Longer encoded names are replaced by ``~<sha256>`` (file names are limited to 255 bytes)."""

_HASHED_NAME = re.compile(r"~[0-9a-f]{64}")
"""The file name of a long namespace or key."""

_NAMESPACE_FILE = ".namespace"
"""In a long namespace's ``~<sha256>`` directory: the namespace's name (for listing)."""


def _encode_name(kind: str, value: str) -> tuple[str, bool]:
    """The file name for a namespace or key, and whether it is a hashed (long) name."""
    validate_name(kind, value)
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidKey(f"invalid key: {kind} {value!r} is not valid Unicode") from None
    name = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    if len(name) <= _MAX_NAME:
        return name, False
    return "~" + hashlib.sha256(raw).hexdigest(), True


def _decode_name(name: str) -> str | None:
    """The key a (non-hashed) file name encodes, or None if it is not one of ours."""
    try:
        value = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode("utf-8")
    except ValueError:
        return None
    encoded = base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii").rstrip("=")
    return value if encoded == name and value else None


class FileKvStore:
    """A ``KvStore``, one file per (namespace, key): ``<dir>/<b64 ns>/<b64 key>``; a long name is
    ``~<sha256>``, its text kept in ``.namespace`` (a namespace) or ``~<sha256>.key`` (a key)."""

    def __init__(self, directory: str | os.PathLike[str], *, read_only: bool = False) -> None:
        self.directory = Path(directory)
        self.read_only = read_only
        """Opened to read (its backend is): every write is a ``StorageError`` saying so."""

    def __repr__(self) -> str:
        return f"FileKvStore({str(self.directory)!r})"

    def _refuse_write(self) -> None:
        if self.read_only:
            raise StorageError(f"file kv store: {self.directory} is opened read-only: cannot write")

    @contextlib.contextmanager
    def workspace_lock(self) -> Iterator[None]:
        """Hold ``<directory>/.workspace.lock`` (``flock``): workspace writes, across processes."""
        self._refuse_write()
        with _os_errors(f"cannot lock {self.directory}"):
            make_private_dirs(self.directory)
            fd = _acquire(self.directory / WORKSPACE_LOCK)
        try:
            yield
        finally:
            os.close(fd)

    def _paths(self, namespace: str, key: str) -> tuple[Path, Path, Path | None]:
        ns_name, _ = _encode_name("namespace", namespace)
        key_name, hashed = _encode_name("key", key)
        ns_dir = self.directory / ns_name
        return ns_dir, ns_dir / key_name, ns_dir / f"{key_name}.key" if hashed else None

    def _namespace_file(self, namespace: str) -> Path | None:
        """Where a long (hashed) namespace's name is kept; None for a short one."""
        ns_name, hashed = _encode_name("namespace", namespace)
        return self.directory / ns_name / _NAMESPACE_FILE if hashed else None

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent."""
        _, path, _ = self._paths(namespace, key)
        try:
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"file kv store: cannot read {path}: {exc}") from exc

    def set(self, namespace: str, key: str, value: bytes) -> None:
        """Store ``value`` under ``key`` atomically (0600 file in a 0700 directory)."""
        self._refuse_write()
        ns_dir, path, name_file = self._paths(namespace, key)
        ns_file = self._namespace_file(namespace)
        data = bytes(value)
        with _os_errors(f"cannot write {path}"):
            for attempt in range(3):
                make_private_dirs(self.directory)
                make_private_dirs(ns_dir)
                try:
                    if ns_file is not None and not ns_file.is_file():
                        _atomic_write(ns_file, namespace.encode("utf-8"))
                    if name_file is not None:
                        _atomic_write(name_file, key.encode("utf-8"))
                    _atomic_write(path, data)
                    return
                except FileNotFoundError:
                    if attempt == 2:
                        raise

    def delete(self, namespace: str, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        self._refuse_write()
        ns_dir, path, name_file = self._paths(namespace, key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"file kv store: cannot delete {path}: {exc}") from exc
        if name_file is not None:
            with contextlib.suppress(OSError):
                os.unlink(name_file)
        with _os_errors(f"cannot sync {ns_dir}"):
            fsync_dir(ns_dir)
        return True

    def exists(self, namespace: str, key: str) -> bool:
        """True if ``key`` is stored in ``namespace``."""
        _, path, _ = self._paths(namespace, key)
        return path.is_file()

    def _value_files(self, namespace: str) -> tuple[Path, list[str]]:
        ns_name, _ = _encode_name("namespace", namespace)
        ns_dir = self.directory / ns_name
        try:
            names = os.listdir(ns_dir)
        except FileNotFoundError:
            return ns_dir, []
        except OSError as exc:
            raise StorageError(f"file kv store: cannot list {ns_dir}: {exc}") from exc
        _sweep_kv_temps(ns_dir, names)
        return ns_dir, [n for n in names if "." not in n]

    def sweep_temp_files(self) -> int:
        """Remove temp files of killed writers older than 15 minutes (kv writes take no lock)."""
        try:
            namespaces = os.listdir(self.directory)
        except OSError:
            return 0
        removed = 0
        for ns_name in namespaces:
            with contextlib.suppress(OSError):
                ns_dir = self.directory / ns_name
                removed += _sweep_kv_temps(ns_dir, os.listdir(ns_dir))
        return removed

    @staticmethod
    def _key_of(ns_dir: Path, name: str) -> str | None:
        """The key a value file (named ``name``, in ``ns_dir``) holds, or None if not a value."""
        if name.startswith("~"):
            try:
                return (ns_dir / f"{name}.key").read_text(encoding="utf-8") or None
            except (OSError, ValueError):
                return None
        return _decode_name(name)

    def list_keys(self, namespace: str) -> list[str]:
        """Every key of ``namespace``, sorted."""
        ns_dir, names = self._value_files(namespace)
        keys = [key for key in (self._key_of(ns_dir, name) for name in names) if key]
        return sorted(keys)

    def _namespace_of(self, ns_name: str) -> str | None:
        """The namespace a directory of the store holds, or None if it is not one of ours."""
        if ns_name.startswith("~"):
            if not _HASHED_NAME.fullmatch(ns_name):
                return None
            try:
                value: str | None = (self.directory / ns_name / _NAMESPACE_FILE).read_text(
                    encoding="utf-8"
                )
            except (OSError, ValueError):
                return None  # written before the name was kept, or a stray directory
        else:
            value = _decode_name(ns_name)
        if value is None:
            return None
        try:
            encoded, _ = _encode_name("namespace", value)
        except InvalidKey:
            return None
        return value if encoded == ns_name else None

    def list_namespaces(self) -> list[str]:
        """Every namespace holding at least one key, sorted (empty directories are left out)."""
        try:
            ns_names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageError(f"file kv store: cannot list {self.directory}: {exc}") from exc
        found: list[str] = []
        for ns_name in ns_names:
            namespace = self._namespace_of(ns_name)
            if namespace is None:
                continue
            ns_dir = self.directory / ns_name
            try:
                names = os.listdir(ns_dir)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise StorageError(f"file kv store: cannot list {ns_dir}: {exc}") from exc
            if any(self._key_of(ns_dir, n) for n in names if "." not in n):
                found.append(namespace)
        return sorted(found)

    def clear_namespace(self, namespace: str) -> int:
        """Remove every key of ``namespace``; return how many were removed."""
        self._refuse_write()
        ns_dir, names = self._value_files(namespace)
        removed = 0
        for name in names:
            try:
                os.unlink(ns_dir / name)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"file kv store: cannot delete {ns_dir / name}: {exc}") from exc
            removed += 1
            if name.startswith("~"):
                with contextlib.suppress(OSError):
                    os.unlink(ns_dir / f"{name}.key")
        if names:
            ns_file = self._namespace_file(namespace)
            if ns_file is not None:
                with contextlib.suppress(OSError):
                    os.unlink(ns_file)
            try:
                os.rmdir(ns_dir)
            except OSError:
                if ns_file is not None:  # not empty: a concurrent set; keep its namespace listed
                    with contextlib.suppress(OSError):
                        _atomic_write(ns_file, namespace.encode("utf-8"))
            with contextlib.suppress(OSError):
                fsync_dir(self.directory)
        return removed


# -- registration --------------------------------------------------------------------------


def _create(options: FileOptions, context: PluginContext) -> FileBackend:
    directory = resolve_home_path(options.directory or "sessions", context.home)
    kv_directory = (
        resolve_home_path(options.kv_directory, context.home)
        if options.kv_directory is not None
        else None
    )
    return FileBackend(directory, kv_directory=kv_directory, read_only=context.read_only)


@hookimpl
def register_storage_backends(register: Any) -> None:
    """Register the ``file`` backend."""
    register(
        "file",
        _create,
        FileOptions,
        "The original's <home>/sessions/<uuid>.json documents (compatible with the Rust astrid).",
    )


__all__ = ["FileBackend", "FileKvStore", "FileOptions", "PluginContext"]
