"""``JsonlBackend``: one append-only JSON Lines file per session, safe across threads and processes.

Layout of the directory (default ``<home>/jsonl``):

* ``FORMAT``: the layout version (``1``). A directory written by a newer version is refused with
  ``SchemaVersionError`` rather than misread.
* ``sessions/<uuid>.jsonl``: one line per save or append, never rewritten. A line is one JSON
  object: ``op`` (``save`` or ``append``), ``revision``, ``replace``, ``first_seq``/``next_seq``
  (the sequence numbers of its ``messages``), ``messages`` (only the new ones), ``state`` (saves
  only: the session document without its messages) and ``summary`` (the listing row after this
  line). A save that creates or replaces may also carry ``archived``: messages recorded in the
  history as already replaced, numbered from ``archived_seq`` (just before ``first_seq``). A
  line counts once its final newline is written: a line cut short by a crash is ignored by
  readers and cut off by the next writer, so the file always opens cleanly.
* ``locks/<uuid>.lock``: ``flock`` files (exclusive for writers, shared for readers). They are
  never removed, so a waiter never locks a file that another process just deleted.
* ``kv/<sha256 of the namespace>.json``: one namespace of the key-value store,
  ``{"namespace": ..., "items": {key: base64 value}}``, replaced atomically (``kv/.lock``).

A save reads only the last line of the file (the revision, the message count and the next
sequence number are there) and appends one line, so it costs what changed. Loading replays the
file: the last ``save`` line gives the state, ``replace`` lines move the active messages to the
history.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from astrid.errors import (
    ConcurrencyError,
    SchemaVersionError,
    SerializationError,
    SessionNotFound,
    StorageError,
)
from astrid.ids import validate_session_id
from astrid.security.kv import validate_name
from astrid.store import (
    HistoryEntry,
    SessionRecord,
    SessionSummary,
    SessionWrite,
    WorkspaceWrite,
    apply_workspace_write,
    check_messages_storable,
)

FORMAT_VERSION = 1
_CHUNK = 64 * 1024


# -- small helpers --------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _summary_to_json(summary: SessionSummary) -> dict[str, Any]:
    data = dataclasses.asdict(summary)
    data["created_at"] = _utc(summary.created_at).isoformat()
    data["updated_at"] = _utc(summary.updated_at).isoformat()
    return data


def _summary_from_json(data: dict[str, Any]) -> SessionSummary:
    values = dict(data)
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    values["updated_at"] = datetime.fromisoformat(values["updated_at"])
    return SessionSummary(**values)


@contextlib.contextmanager
def _flock(path: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created 0600); separate opens exclude each other."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_replace(path: Path, data: bytes, *, fsync: bool) -> None:
    """Write ``data`` to a private temporary file and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        _fsync_dir(path.parent)


def _tail(fd: int) -> tuple[int, int, bytes | None]:
    """(file size, committed size, last committed line) of a session file, read backwards."""
    size = os.fstat(fd).st_size
    buf = b""
    pos = size
    end: int | None = None  # absolute offset of the last newline
    while pos > 0:
        step = min(_CHUNK, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        if end is None:
            newline = buf.rfind(b"\n")
            if newline < 0:
                continue
            end = pos + newline
        start = buf.rfind(b"\n", 0, end - pos)
        if start >= 0:
            return size, end + 1, buf[start + 1 : end - pos]
    if end is None:
        return size, 0, None
    return size, end + 1, buf[:end]


# -- the backend ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Replayed:
    state: dict[str, Any]
    active: list[tuple[int, Any]]
    archived: list[tuple[int, Any]]
    revision: int
    updated_at: datetime


class JsonlBackend:
    """Sessions as append-only JSON Lines files in one directory."""

    name = "jsonl"

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.directory = Path(directory).expanduser().absolute()
        self.fsync = fsync
        self._sessions = self.directory / "sessions"
        self._locks = self.directory / "locks"
        self._closed = False
        try:
            for path in (self.directory, self._sessions, self._locks):
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"jsonl store: cannot create {self.directory}: {exc}") from exc
        self._check_format()
        self._kv = JsonlKvStore(self.directory / "kv", fsync=fsync)

    def __repr__(self) -> str:
        return f"JsonlBackend({str(self.directory)!r})"

    def _check_format(self) -> None:
        marker = self.directory / "FORMAT"
        with _flock(self._locks / "FORMAT.lock", exclusive=True):
            try:
                text = marker.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                _atomic_replace(marker, f"{FORMAT_VERSION}\n".encode(), fsync=self.fsync)
                return
        if not text.isdigit():
            raise StorageError(f"{marker}: not a jsonl store (FORMAT is {text[:20]!r})")
        if int(text) > FORMAT_VERSION:
            raise SchemaVersionError(
                f"{self.directory} was written by a newer astrid-example-storage "
                f"(format {text}, this version knows {FORMAT_VERSION})"
            )

    # -- paths, locks, lines -------------------------------------------------------------

    def _path(self, session_id: str) -> Path:
        if self._closed:
            raise StorageError(f"the jsonl store {self.directory} is closed")
        return self._sessions / f"{validate_session_id(session_id)}.jsonl"

    def _lock(self, sid: str, *, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        return _flock(self._locks / f"{sid}.lock", exclusive=exclusive)

    def describe(self, session_id: str) -> str:
        """Where a session lives, for error messages."""
        return str(self._path(session_id))

    def _decode(self, line: bytes, path: Path, number: int | str = "last") -> dict[str, Any]:
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise SerializationError(f"{path}: line {number} is not valid JSON: {exc}") from None
        if not isinstance(record, dict) or "revision" not in record or "summary" not in record:
            raise SerializationError(f"{path}: line {number} is not a jsonl store record")
        return record

    def _append_line(self, fd: int, record: dict[str, Any], path: Path) -> None:
        try:
            line = json.dumps(record, separators=(",", ":")).encode("ascii") + b"\n"
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"{path}: cannot encode the save: {exc}") from exc
        _write_all(fd, line)
        if self.fsync:
            os.fsync(fd)

    def _replay(self, sid: str) -> _Replayed | None:
        path = self._path(sid)
        with self._lock(sid, exclusive=False):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
        committed = data[: data.rfind(b"\n") + 1]
        lines = committed.split(b"\n")[:-1]
        if not lines:
            return None
        state: dict[str, Any] = {}
        active: list[tuple[int, Any]] = []
        archived: list[tuple[int, Any]] = []
        record: dict[str, Any] = {}
        for number, line in enumerate(lines, start=1):
            record = self._decode(line, path, number)
            if record.get("replace"):
                archived.extend(active)
                active = []
            replaced = record.get("archived") or []
            if replaced:
                start = int(record["archived_seq"])
                archived.extend((start + i, m) for i, m in enumerate(replaced))
            first = int(record["first_seq"])
            active.extend((first + i, m) for i, m in enumerate(record["messages"]))
            if record["op"] == "save":
                state = record["state"]
        summary = _summary_from_json(record["summary"])
        return _Replayed(state, active, archived, int(record["revision"]), summary.updated_at)

    # -- reading ---------------------------------------------------------------------------

    def load(self, session_id: str, *, tail: int | None = None) -> SessionRecord | None:
        """The session (only its last ``tail`` active messages if given), or None."""
        if tail is not None and tail < 0:
            raise ValueError("tail must be >= 0")
        replayed = self._replay(session_id)
        if replayed is None:
            return None
        total = len(replayed.active)
        start = 0 if tail is None else max(0, total - tail)
        return SessionRecord(
            state=replayed.state,
            messages=[m for _, m in replayed.active[start:]],
            message_offset=start,
            message_count=total,
            revision=replayed.revision,
            updated_at=replayed.updated_at,
        )

    def history(self, session_id: str) -> list[HistoryEntry]:
        """Every message ever stored, replaced ones first flagged inactive, by sequence."""
        replayed = self._replay(session_id)
        if replayed is None:
            return []
        rows = [HistoryEntry(seq, False, m) for seq, m in replayed.archived]
        rows += [HistoryEntry(seq, True, m) for seq, m in replayed.active]
        return sorted(rows, key=lambda entry: entry.seq)

    def _summaries(self, workspace: str | None) -> list[SessionSummary]:
        if self._closed:
            raise StorageError(f"the jsonl store {self.directory} is closed")
        rows: list[SessionSummary] = []
        with os.scandir(self._sessions) as entries:
            names = [e.name for e in entries if e.name.endswith(".jsonl")]
        for name in names:
            sid = name[: -len(".jsonl")]
            path = self._sessions / name
            with self._lock(sid, exclusive=False):
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    _size, _committed, line = _tail(fd)
                finally:
                    os.close(fd)
            if line is None:
                continue
            summary = _summary_from_json(self._decode(line, path)["summary"])
            if workspace is None or summary.workspace_path == workspace:
                rows.append(summary)
        rows.sort(key=lambda r: (-r.updated_at.timestamp(), r.id))
        return rows

    def list_sessions(
        self, *, workspace: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[SessionSummary]:
        """A page of summaries, newest activity first (ties by id)."""
        return self._summaries(workspace)[offset : offset + limit]

    def count_sessions(self, *, workspace: str | None = None) -> int:
        """How many sessions (optionally in one workspace)."""
        return len(self._summaries(workspace))

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _open_for_append(
        self, sid: str, *, create: bool
    ) -> Iterator[tuple[int | None, dict[str, Any] | None]]:
        """Under the session's exclusive lock: an fd positioned for appending and the last line.

        The fd is None when the file does not exist and ``create`` is False. A torn last line is
        cut off before anything is appended.
        """
        path = self._path(sid)
        with self._lock(sid, exclusive=True):
            try:
                fd: int | None = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
                created = False
            except FileNotFoundError:
                if not create:
                    yield None, None
                    return
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                created = True
            assert fd is not None
            try:
                size, committed, line = _tail(fd)
                if committed < size:
                    os.ftruncate(fd, committed)
                yield fd, (self._decode(line, path) if line is not None else None)
            finally:
                os.close(fd)
            if created and self.fsync:
                _fsync_dir(self._sessions)

    def write(self, change: SessionWrite) -> int:
        """Append one save; ``ConcurrencyError`` unless ``expected_revision`` is the stored one.

        ``change.archived`` (a create or a replace only) rides in the same line, so the session
        and its history are one atomic write.
        """
        sid = validate_session_id(change.session_id)
        change.check_storable()  # the rule every backend applies: no NaN, no lone surrogate
        archived = list(change.archived)
        if archived and change.expected_revision is not None and not change.replace:
            raise ValueError(
                f"session {sid}: archived messages can only be written by a create or a "
                "replace, not by an append"
            )
        path = self._path(sid)
        with self._open_for_append(sid, create=change.expected_revision is None) as (fd, last):
            current = int(last["revision"]) if last is not None else None
            if current != change.expected_revision or (fd is None):
                raise ConcurrencyError(
                    f"session {sid}: stale save (based on revision {change.expected_revision}, "
                    f"stored revision is {current})"
                )
            count = int(last["summary"]["message_count"]) if last is not None else 0
            next_seq = int(last["next_seq"]) if last is not None else 0
            if last is not None and not change.replace and count != change.base_count:
                raise ConcurrencyError(
                    f"session {sid}: stale save (based on {change.base_count} messages, "
                    f"{count} stored)"
                )
            revision = (current or 0) + 1
            kept = 0 if change.replace else count
            summary = dataclasses.replace(
                change.summary, message_count=kept + len(change.messages), revision=revision
            )
            record: dict[str, Any] = {
                "op": "save",
                "revision": revision,
                "replace": change.replace and last is not None,
            }
            if archived:
                record["archived_seq"] = next_seq
                record["archived"] = archived
                next_seq += len(archived)
            record.update(
                {
                    "first_seq": next_seq,
                    "next_seq": next_seq + len(change.messages),
                    "messages": list(change.messages),
                    "state": change.state,
                    "summary": _summary_to_json(summary),
                }
            )
            self._append_line(fd, record, path)
            return revision

    def append(
        self, session_id: str, messages: Sequence[Any], summary: SessionSummary | None = None
    ) -> tuple[int, int]:
        """Append without a revision check; ``SessionNotFound`` if the session does not exist."""
        sid = validate_session_id(session_id)
        check_messages_storable(sid, messages)
        path = self._path(sid)
        with self._open_for_append(sid, create=False) as (fd, last):
            if fd is None or last is None:
                raise SessionNotFound(
                    f"session {sid} not found in the jsonl store {self.directory}"
                )
            revision = int(last["revision"]) + 1
            count = int(last["summary"]["message_count"]) + len(messages)
            next_seq = int(last["next_seq"])
            base = summary if summary is not None else _summary_from_json(last["summary"])
            row = dataclasses.replace(
                base, message_count=count, revision=revision, updated_at=datetime.now(UTC)
            )
            self._append_line(
                fd,
                {
                    "op": "append",
                    "revision": revision,
                    "replace": False,
                    "first_seq": next_seq,
                    "next_seq": next_seq + len(messages),
                    "messages": list(messages),
                    "summary": _summary_to_json(row),
                },
                path,
            )
            return revision, count

    def delete(self, session_id: str) -> bool:
        """Remove a session file (its history goes with it); False if it did not exist."""
        sid = validate_session_id(session_id)
        path = self._path(sid)
        with self._lock(sid, exclusive=True):
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            if self.fsync:
                _fsync_dir(self._sessions)
            return True

    # -- the rest --------------------------------------------------------------------------

    def kv(self) -> JsonlKvStore:
        """The key-value store in ``<directory>/kv``."""
        return self._kv

    def write_workspace_state(self, change: WorkspaceWrite) -> float | None:
        """Save a workspace's state in one step across processes; the stored budget total."""
        return self._kv.write_workspace_state(change)

    def schema_version(self) -> int:
        """The layout version of the directory."""
        return FORMAT_VERSION

    def close(self) -> None:
        """Files are opened per operation; afterwards every call raises ``StorageError``."""
        self._closed = True


class JsonlKvStore:
    """A ``KvStore``: one JSON file per namespace, values base64, replaced atomically."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock_path = directory / ".lock"

    def __repr__(self) -> str:
        return f"JsonlKvStore({str(self.directory)!r})"

    def _file(self, namespace: str) -> Path:
        validate_name("namespace", namespace)
        digest = hashlib.sha256(namespace.encode("utf-8", "surrogatepass")).hexdigest()
        return self.directory / f"{digest}.json"

    def _read(self, namespace: str) -> dict[str, bytes]:
        path = self._file(namespace)
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise SerializationError(f"{path}: not valid JSON: {exc}") from None
        return {key: base64.b64decode(value) for key, value in data["items"].items()}

    def _write(self, namespace: str, items: dict[str, bytes]) -> None:
        path = self._file(namespace)
        if not items:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        doc = {
            "namespace": namespace,
            "items": {key: base64.b64encode(value).decode("ascii") for key, value in items.items()},
        }
        _atomic_replace(path, json.dumps(doc).encode("ascii"), fsync=self.fsync)

    def _locked(self, *, exclusive: bool) -> contextlib.AbstractContextManager[None]:
        return _flock(self._lock_path, exclusive=exclusive)

    def get(self, namespace: str, key: str) -> bytes | None:
        """The value stored under ``key``, or None when absent."""
        validate_name("key", key)
        with self._locked(exclusive=False):
            return self._read(namespace).get(key)

    def set(self, namespace: str, key: str, value: bytes) -> None:
        """Store ``value`` under ``key``, replacing any previous value."""
        validate_name("key", key)
        with self._locked(exclusive=True):
            items = self._read(namespace)
            items[key] = bytes(value)
            self._write(namespace, items)

    def delete(self, namespace: str, key: str) -> bool:
        """Remove ``key``; True if it existed."""
        validate_name("key", key)
        with self._locked(exclusive=True):
            items = self._read(namespace)
            if items.pop(key, None) is None:
                return False
            self._write(namespace, items)
            return True

    def exists(self, namespace: str, key: str) -> bool:
        """True if ``key`` is stored in ``namespace``."""
        return self.get(namespace, key) is not None

    def list_keys(self, namespace: str) -> list[str]:
        """Every key of ``namespace``, sorted."""
        with self._locked(exclusive=False):
            return sorted(self._read(namespace))

    def clear_namespace(self, namespace: str) -> int:
        """Remove every key of ``namespace``; return how many were removed."""
        with self._locked(exclusive=True):
            removed = len(self._read(namespace))
            self._write(namespace, {})
            return removed

    def write_workspace_state(self, change: WorkspaceWrite) -> float | None:
        """``apply_workspace_write`` under the store's exclusive lock.

        The document is one namespace file, replaced atomically; the lock makes reading the
        stored total and writing the new one a single step for every process.
        """

        def put(namespace: str, key: str, value: bytes) -> None:
            items = self._read(namespace)
            items[key] = value
            self._write(namespace, items)

        def delete(namespace: str, key: str) -> None:
            items = self._read(namespace)
            if items.pop(key, None) is not None:
                self._write(namespace, items)

        with self._locked(exclusive=True):
            return apply_workspace_write(
                change,
                lambda namespace, key: self._read(namespace).get(key),
                put,
                delete,
                f"jsonl kv store {self.directory}",
            )

    def list_namespaces(self) -> list[str]:
        """Every namespace holding at least one key, sorted (optional ``KvStore`` method)."""
        found: list[str] = []
        with self._locked(exclusive=False):
            for name in os.listdir(self.directory):
                if len(name) != 69 or not name.endswith(".json"):
                    continue  # the lock file and temporary files
                path = self.directory / name
                try:
                    doc = json.loads(path.read_bytes())
                except FileNotFoundError:
                    continue
                except ValueError as exc:
                    raise SerializationError(f"{path}: not valid JSON: {exc}") from None
                namespace = doc.get("namespace") if isinstance(doc, dict) else None
                if isinstance(namespace, str) and doc["items"] and self._file(namespace) == path:
                    found.append(namespace)
        return sorted(found)


__all__ = ["FORMAT_VERSION", "JsonlBackend", "JsonlKvStore"]
