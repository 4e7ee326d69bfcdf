"""Import, export, migrate and check session stores: the library under ``astrid sessions
import``/``export``, ``astrid migrate`` and ``astrid doctor``, for hosts to call as well.

Built on the ``SessionStore`` facade only (never a backend directly). A bad document or session
is one ``Failure`` (or doctor ``Problem``) in the result, naming where and why, and the others are
still transferred; refusing the whole operation (a missing session, a store that cannot be a
migration target) raises an ``AstridError``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from .config import LoadedConfig
from .default_plugins.file_storage import ARCHIVED_KEY, LEDGER_KEY, REVISION_KEY, UPDATED_AT_KEY
from .document import SessionDocument
from .errors import AstridError, ConfigError, InvalidSessionId, SerializationError
from .ids import validate_session_id
from .ledger import LedgerRow, compare_totals
from .security.audit import by_chain, runtime_keys
from .security.audit import verify as verify_audit
from .security.kv import namespaces_of
from .store import SessionStore, SessionSummary, workspace_key
from .timeutil import parse_rfc3339, to_utc

__all__ = [
    "ExportResult",
    "Failure",
    "ImportResult",
    "Incoming",
    "MigrationResult",
    "Problem",
    "Skipped",
    "StoreReport",
    "all_summaries",
    "check_store",
    "export_sessions",
    "import_document",
    "import_sessions",
    "message_of",
    "migrate",
    "read_documents",
    "session_files",
]

AUDIT_KEY = "astrid_audit"
"""The key of an exported document that holds its session's audit entries (each with its chain
position, hash and signature, ``AuditRecord.to_data``): evidence, not restored by an import (a
target store's chains are its own)."""

_FILE_KEYS = (REVISION_KEY, UPDATED_AT_KEY, ARCHIVED_KEY, LEDGER_KEY, AUDIT_KEY)
"""Keys the file backend adds to a document; an imported document has them when it was copied
out of such a directory (its history is ``ARCHIVED_KEY``, its spend-ledger rows
``LEDGER_KEY``), or ``AUDIT_KEY`` when it was exported."""

PAGE = 500
"""Sessions listed per page when a whole store is walked."""


@dataclass(frozen=True)
class Failure:
    """One thing not transferred (or not matching after a migration), and why.

    ``subject``: the session id, file or namespace; ``message``: the one line saying where and
    why, as the CLI prints it.
    """

    subject: str
    message: str

    def __str__(self) -> str:
        return self.message


def message_of(exc: BaseException) -> str:
    """An error's message on one line; one that is not an ``AstridError`` or ``OSError`` (a
    bug, not bad input) says ``unexpected <class>``."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, AstridError | OSError):
        return text
    return f"unexpected {type(exc).__name__}: {text}"


def all_summaries(store: SessionStore, page: int = PAGE) -> list[SessionSummary]:
    """Every listed session (``store.all_sessions``: one pass where the backend can, else by
    pages); entries a backend cannot list are ``store.problems()``."""
    return store.all_sessions(page)


# -- export --------------------------------------------------------------------------------


@dataclass
class ExportResult:
    """What ``export_sessions`` wrote: the exported ids, in order, and what it could not."""

    exported: list[str] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)


def _unlisted(store: SessionStore, verb: str) -> list[Failure]:
    """A failure per entry the store cannot even list (``problems()``): its id, file and why."""
    failures = []
    for where, what in store.problems():
        try:
            sid = validate_session_id(Path(where).name.removesuffix(".json"))
        except InvalidSessionId:
            failures.append(Failure(where, f"{where}: {what} (not {verb})"))
        else:
            failures.append(Failure(sid, f"session {sid} not {verb}: {where}: {what}"))
    return failures


def export_sessions(
    store: SessionStore,
    write: Callable[[str], object],
    session_ids: Sequence[str] | None = None,
    *,
    fmt: Literal["json", "jsonl"] = "json",
    progress: Callable[[Sequence[str]], Iterable[str]] | None = None,
) -> ExportResult:
    """Write sessions as the original's documents, with their security state, to ``write``.

    ``session_ids`` None exports every session (a failure names each one that cannot be read);
    a given id that does not exist raises ``SessionNotFound`` before anything is written.
    ``fmt`` json: one id gives that document alone, else a JSON array; jsonl: one compact
    document per line. A session that cannot be loaded is a failure; the rest are written.
    ``progress`` wraps the ids to export (a progress bar).
    """
    result = ExportResult()
    if session_ids is None:
        ids = [row.id for row in all_summaries(store)]
        result.failed.extend(_unlisted(store, "exported"))
    else:
        ids = [validate_session_id(s) for s in session_ids]
        for sid in ids:
            if store.load_record(sid, tail=0) is None:
                raise store.not_found(sid)
    single = fmt == "json" and session_ids is not None and len(ids) == 1
    if fmt == "json" and not single:
        write("[")
    for sid in progress(ids) if progress is not None else ids:
        try:
            doc = store.load_document(sid)
        except AstridError as exc:
            result.failed.append(Failure(sid, f"session {sid} not exported: {message_of(exc)}"))
            continue
        if doc is None:  # deleted meanwhile
            continue
        data = doc.to_data()
        entries = store.list_audit(session_id=sid) if store.keeps_audit else []
        if entries:
            data[AUDIT_KEY] = [r.to_data() for r in entries]
        if fmt == "jsonl":
            write(json.dumps(data, ensure_ascii=False) + "\n")
        elif single:
            write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        else:
            body = json.dumps(data, indent=2, ensure_ascii=False).replace("\n", "\n  ")
            write(("," if result.exported else "") + "\n  " + body)
        result.exported.append(sid)
    if fmt == "json" and not single:
        write("\n]\n" if result.exported else "]\n")
    return result


# -- import --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """One document read from an import source, or the error that replaced it."""

    location: str
    data: Any = None
    error: str | None = None
    mtime: datetime | None = None


@dataclass(frozen=True)
class Skipped:
    """A document not imported because its session exists (and ``overwrite`` was not given)."""

    location: str
    session_id: str


@dataclass
class ImportResult:
    """What ``import_sessions`` did with each document, in source order within each list."""

    imported: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    """What a source directory holds besides ``<uuid>.json`` files: not read."""


def _mtime(path: Path) -> datetime | None:
    try:
        return to_utc(datetime.fromtimestamp(path.stat().st_mtime).astimezone())
    except OSError:
        return None


def _parse_json_docs(text: str, location: str, mtime: datetime | None) -> Iterator[Incoming]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        yield Incoming(location, error=f"{location}: invalid JSON: {exc}")
        return
    if isinstance(data, list):
        for i, item in enumerate(data):
            yield Incoming(f"{location}[{i}]", data=item, mtime=mtime)
    else:
        yield Incoming(location, data=data, mtime=mtime)


def _parse_jsonl_docs(text: str, location: str) -> Iterator[Incoming]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{location}:{number}"
        try:
            yield Incoming(where, data=json.loads(line))
        except ValueError as exc:
            yield Incoming(where, error=f"{where}: invalid JSON: {exc}")


def _looks_like_jsonl(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except ValueError:
        return False


SESSION_FILE = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\.json")
"""The name of a session document in a directory: ``<uuid>.json``."""


def session_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """The ``<uuid>.json`` files of ``directory``, sorted, and its other entries (hidden ones,
    such as astrid's own index and locks, left out), which an import does not read."""
    files: list[Path] = []
    others: list[Path] = []
    for path in sorted(directory.iterdir()):
        if path.name.startswith("."):
            continue
        named = SESSION_FILE.fullmatch(path.name) is not None
        (files if named and path.is_file() else others).append(path)
    return files, others


def _file_documents(path: Path) -> Iterator[Incoming]:
    """The documents of one ``<uuid>.json`` file (an error ``Incoming`` if unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        yield Incoming(str(path), error=f"{path}: cannot read: {exc}")
        return
    yield from _parse_json_docs(text, str(path), _mtime(path))


def read_documents(
    source: str | Path, fmt: Literal["auto", "json", "jsonl"] = "auto"
) -> Iterator[Incoming]:
    """The documents of a file, stdin (``-``) or a directory of ``<uuid>.json`` files.

    A file is one document, a JSON array of them, or JSON Lines (``auto`` tells them apart).
    Of a directory, only the ``<uuid>.json`` files are read (``session_files``). What cannot be
    read or parsed is an ``Incoming`` with ``error`` naming the file (and line).
    """
    text_source = str(source)
    if text_source != "-" and Path(source).is_dir():
        for path in session_files(Path(source))[0]:
            yield from _file_documents(path)
        return
    location = "<stdin>" if text_source == "-" else text_source
    try:
        stdin = text_source == "-"
        text = sys.stdin.read() if stdin else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        yield Incoming(location, error=f"{location}: cannot read: {exc}")
        return
    mtime = None if text_source == "-" else _mtime(Path(source))
    if fmt == "jsonl" or (fmt == "auto" and _looks_like_jsonl(text)):
        yield from _parse_jsonl_docs(text, location)
    else:
        yield from _parse_json_docs(text, location, mtime)


def _archived_messages(doc: SessionDocument, location: str) -> list[Any]:
    raw = (doc.__pydantic_extra__ or {}).get(ARCHIVED_KEY)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(i, dict) and "message" in i for i in raw):
        raise SerializationError(
            f"{location}: key {ARCHIVED_KEY!r} must be a list of {{'seq', 'message'}}"
        )
    return [item["message"] for item in raw]


def _ledger_rows(doc: SessionDocument, location: str) -> list[LedgerRow]:
    """The spend-ledger rows a document copied out of a file store carries (``LEDGER_KEY``)."""
    raw = (doc.__pydantic_extra__ or {}).get(LEDGER_KEY)
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise SerializationError(f"{location}: key {LEDGER_KEY!r} must be a list of rows")
    return [LedgerRow.from_data(r, f"{location}: {LEDGER_KEY}[{i}]") for i, r in enumerate(raw)]


def _last_activity(doc: SessionDocument, fallback: datetime | None) -> datetime:
    """The document's last activity: astrid's own stamp, the budget's, the file's, creation."""
    stamp = (doc.__pydantic_extra__ or {}).get(UPDATED_AT_KEY)
    if stamp is not None:
        with contextlib.suppress(ValueError):
            parsed = parse_rfc3339(stamp)
            if isinstance(parsed, datetime):
                return to_utc(parsed)
    if doc.budget_snapshot is not None:
        return to_utc(doc.budget_snapshot.last_updated)
    return to_utc(fallback) if fallback is not None else to_utc(doc.created_at)


def import_document(
    store: SessionStore,
    data: Any,
    location: str,
    *,
    overwrite: bool = False,
    mtime: datetime | None = None,
) -> Literal["imported", "replaced", "skipped"]:
    """Import one document (JSON data read from ``location``) in one atomic write.

    A session that exists is ``skipped`` unless ``overwrite`` (its old messages stay in its
    history); a document exported from the file backend brings its replaced messages along.
    ``mtime``: the source file's, the last activity of a document that records none. A bad
    document raises a ``SerializationError`` naming ``location``.
    """
    doc = SessionDocument.from_data(data, source=location)
    archived = _archived_messages(doc, location)
    ledger = _ledger_rows(doc, location)
    state = doc.to_data()
    state.pop("messages", None)
    for key in _FILE_KEYS:
        state.pop(key, None)
    existing = store.load_record(doc.id, tail=0)
    if existing is not None and not overwrite:
        return "skipped"
    active = [m.to_json() for m in doc.messages]
    summary = SessionSummary(
        id=doc.id,
        title=doc.metadata.title,
        created_at=to_utc(doc.created_at),
        updated_at=_last_activity(doc, mtime),
        message_count=len(active),
        token_count=doc.token_count,
        workspace_path=workspace_key(doc.workspace_path) if doc.workspace_path else None,
        model=doc.model,
        parent_id=doc.parent_id,
    )
    store.restore(summary, state, active, archived=archived, over=existing, ledger=ledger)
    return "imported" if existing is None else "replaced"


def import_sessions(
    store: SessionStore,
    source: str | Path,
    *,
    fmt: Literal["auto", "json", "jsonl"] = "auto",
    overwrite: bool = False,
    progress: Callable[[Sequence[Any]], Iterable[Any]] | None = None,
) -> ImportResult:
    """Import the original's session documents from a file, JSON Lines, stdin or a directory.

    Each bad document is one failure naming its file (and line); the others are imported. Of a
    directory only the ``<uuid>.json`` files are read; the other entries are ``ignored``.
    ``progress`` wraps the directory's files, or a file's documents (a progress bar).
    """
    result = ImportResult()
    wrap = progress if progress is not None else (lambda items: items)
    items: Iterable[Incoming]
    if str(source) != "-" and Path(source).is_dir():
        files, others = session_files(Path(source))
        result.ignored = [str(path) for path in others]
        items = itertools.chain.from_iterable(_file_documents(path) for path in wrap(files))
    else:
        items = wrap(list(read_documents(source, fmt)))
    for item in items:
        if item.error is not None:
            result.failed.append(Failure(item.location, item.error))
            continue
        try:
            outcome = import_document(
                store, item.data, item.location, overwrite=overwrite, mtime=item.mtime
            )
        except AstridError as exc:
            message = message_of(exc)
            if not message.startswith(item.location):
                message = f"{item.location}: {message}"
            result.failed.append(Failure(item.location, message))
            continue
        sid = str(item.data.get("id"))
        if outcome == "skipped":
            result.skipped.append(Skipped(item.location, sid))
        elif outcome == "replaced":
            result.replaced.append(sid)
        else:
            result.imported.append(sid)
    return result


# -- migrate -------------------------------------------------------------------------------


@dataclass
class MigrationResult:
    """What ``migrate`` copied, what failed, and what the check of the target found."""

    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Already in the target with the same message count and history length."""
    vanished: list[str] = field(default_factory=list)
    """Listed in the source but deleted before they were copied."""
    failed: list[Failure] = field(default_factory=list)
    mismatches: list[Failure] = field(default_factory=list)
    kv_keys: int = 0
    kv_namespaces: int = 0
    """Namespaces that had at least one key copied."""
    namespaces_listed: bool = False
    """True when every namespace the source lists was copied; False: only derived ones."""
    source_lists_namespaces: bool = True
    """False when the source's key-value store has no ``list_namespaces``."""
    source_kv: str = ""
    """The source's key-value store (its repr), for a note about what it cannot list."""
    tokens: int = 0
    revoked: int = 0
    used: int = 0
    audit_entries: int = 0
    """Audit entries copied (verbatim, still signed by the key that sealed them)."""
    audit_chains: int = 0
    """Audit chains the source holds."""
    verified_sessions: int = 0
    verified_messages: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing failed and the target matches the source."""
        return not self.failed and not self.mismatches


def _refuse_target(source: SessionStore, target: SessionStore, where: str | None) -> None:
    if source.same_store_as(target):
        raise ConfigError(f"the source and target are the same store: {source!r}")
    if not target.persistent:
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}the {target.backend_name!r} backend is not persistent (what it holds is "
            "gone when the process ends); migrate to a store that keeps its data"
        )


def _copy_session(
    source: SessionStore, target: SessionStore, row: SessionSummary, present: SessionSummary | None
) -> Literal["copied", "skipped", "gone"]:
    """Copy one session (state, active messages, history) in one write; a differing copy in
    the target is deleted first."""
    history = source.history_entries(row.id)
    if (
        present is not None
        and present.message_count == row.message_count
        and len(target.history_entries(row.id)) == len(history)
    ):
        return "skipped"
    record = source.load_record(row.id)
    if record is None:
        return "gone"
    source.decode_record(row.id, record)  # a session that does not load is not copied
    archived = [h.message for h in history if not h.active]
    ledger = source.list_ledger(session_id=row.id) if source.keeps_ledger else []
    if present is not None:
        target.delete(row.id)
    target.restore(row, record.state, record.messages, archived=archived, ledger=ledger)
    return "copied"


def _copy_kv(
    source: SessionStore, target: SessionStore, rows: Sequence[SessionSummary], out: MigrationResult
) -> list[str]:
    """Copy every namespace the source lists plus the derived ones; return those it tried."""
    src_kv, dst_kv = source.kv_store(), target.kv_store()
    derived = SessionStore.derived_namespaces(rows)
    out.source_kv = repr(src_kv)
    try:
        listed = namespaces_of(src_kv)
    except AstridError as exc:
        out.failed.append(Failure("kv", f"kv namespaces: cannot list them: {message_of(exc)}"))
        listed = None
    else:
        out.source_lists_namespaces = listed is not None
    out.namespaces_listed = listed is not None
    namespaces = sorted(set(derived) | set(listed or ()))
    filled: set[str] = set()
    for ns in namespaces:
        try:
            for key in src_kv.list_keys(ns):
                value = src_kv.get(ns, key)
                if value is not None:
                    dst_kv.set(ns, key, value)
                    out.kv_keys += 1
                    filled.add(ns)
        except AstridError as exc:
            out.failed.append(Failure(ns, f"kv namespace {ns!r}: {message_of(exc)}"))
    out.kv_namespaces = len(filled)
    return namespaces


def _verify(
    source: SessionStore,
    target: SessionStore,
    done: Sequence[SessionSummary],
    namespaces: Sequence[str],
    batch: int,
    out: MigrationResult,
) -> None:
    """Check the target: every copied session with its message count, every namespace's keys."""
    after = {r.id: r for r in all_summaries(target, batch)}
    for row in done:
        got = after.get(row.id)
        if got is None:
            out.mismatches.append(Failure(row.id, f"session {row.id}: missing from the target"))
        elif got.message_count != row.message_count:
            out.mismatches.append(
                Failure(
                    row.id,
                    f"session {row.id}: {row.message_count} messages in the source, "
                    f"{got.message_count} in the target",
                )
            )
        else:
            out.verified_messages += row.message_count
    out.verified_sessions = len(done)
    src_kv, dst_kv = source.kv_store(), target.kv_store()
    for ns in namespaces:
        try:
            missing = set(src_kv.list_keys(ns)) - set(dst_kv.list_keys(ns))
        except AstridError as exc:
            message = f"kv namespace {ns!r}: cannot verify: {message_of(exc)}"
            out.mismatches.append(Failure(ns, message))
            continue
        if missing:
            out.mismatches.append(Failure(ns, f"kv namespace {ns!r}: {len(missing)} keys missing"))


def migrate(
    source: SessionStore,
    target: SessionStore,
    *,
    batch: int = 100,
    target_key: str | None = None,
    progress: Callable[[Sequence[SessionSummary]], Iterable[SessionSummary]] | None = None,
) -> MigrationResult:
    """Copy every session and its state from ``source`` to ``target``, then check the target.

    Copies each session's state, active messages and history, every key-value namespace the
    source lists (or, if it cannot list them, those derived from the sessions and their
    workspaces), the capability tokens, revocations and used markers, and the audit log
    verbatim (``import_audit``; a chain the target holds differently is a failure).
    Resumable: a session already present with the same message count and history length is
    skipped, and so is an audit entry already copied. A target that
    is the source, or whose backend is not persistent, is refused (``ConfigError``;
    ``target_key``: where the target's backend is chosen, ``SessionStore.backend_key(config)``,
    named in the refusal). ``progress`` wraps the list of sessions to copy (a progress bar).
    """
    _refuse_target(source, target, target_key)
    out = MigrationResult()
    out.failed.extend(
        Failure(where, f"{where}: {what} (not migrated)") for where, what in source.problems()
    )
    rows = all_summaries(source, batch)
    present = {r.id: r for r in all_summaries(target, batch)}
    done: list[SessionSummary] = []
    for row in progress(rows) if progress is not None else rows:
        try:
            outcome = _copy_session(source, target, row, present.get(row.id))
        except AstridError as exc:
            message = message_of(exc)
            if row.id not in message:
                message = f"session {row.id}: {message}"
            out.failed.append(Failure(row.id, message))
            continue
        if outcome == "gone":
            out.vanished.append(row.id)
            continue
        (out.copied if outcome == "copied" else out.skipped).append(row.id)
        done.append(row)
    namespaces = _copy_kv(source, target, done, out)
    out.tokens, out.revoked, out.used = source.copy_capabilities_to(target)
    _copy_audit(source, target, out)
    _verify(source, target, done, namespaces, batch, out)
    return out


def _copy_audit(source: SessionStore, target: SessionStore, out: MigrationResult) -> None:
    """Copy the audit log verbatim, chain by chain (``import_audit``), then check each chain of
    the target begins with the source's entries; a chain that cannot be copied is a failure."""
    if not source.keeps_audit:
        return
    chains = by_chain(source.list_audit())
    out.audit_chains = len(chains)
    if not chains:
        return
    if not target.imports_audit:
        count = sum(len(c) for c in chains.values())
        out.failed.append(
            Failure(
                "audit log",
                f"the target backend {target.backend_name!r} cannot store copied audit entries "
                f"(no import_audit): {count} entries in {len(chains)} chain(s) not copied",
            )
        )
        return
    refused: set[str] = set()
    for chain, records in chains.items():
        try:
            out.audit_entries += target.import_audit(records)
        except AstridError as exc:
            refused.add(chain)
            out.failed.append(Failure(f"audit chain {chain}", message_of(exc)))
    copied = by_chain(target.list_audit())
    for chain, records in chains.items():
        there = [r.hash for r in copied.get(chain, [])][: len(records)]
        if chain not in refused and there != [r.hash for r in records]:
            out.mismatches.append(
                Failure(
                    f"audit chain {chain}",
                    f"audit chain {chain or '(no workspace)'}: the target's entries differ "
                    f"from the source's {len(records)}",
                )
            )


# -- doctor --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One problem ``check_store`` found: where (a file, a session, the config) and what."""

    location: str
    problem: str

    def __str__(self) -> str:
        return f"{self.location}: {self.problem}"


@dataclass
class StoreReport:
    """What ``check_store`` found; ``to_json()`` is the ``doctor --json`` object."""

    config: str | None
    backend_name: str | None
    schema_version: int | None = None
    sessions_checked: int = 0
    temp_files_removed: int = 0
    problems: list[Problem] = field(default_factory=list)
    ledger_rows: int | None = None
    """Spend-ledger rows read (None: the backend keeps no ledger, totals not checked)."""
    totals_checked: int = 0
    """Session and workspace budget totals compared with the ledger."""
    notes: list[Problem] = field(default_factory=list)
    """What was found but is not a problem (spend from before the ledger existed)."""
    audit_entries: int | None = None
    """Audit entries verified (None: the backend keeps no audit log)."""

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The report as JSON data (one object, problems included)."""
        return {
            "ok": self.ok,
            "config": self.config,
            "backend": self.backend_name,
            "schema_version": self.schema_version,
            "sessions_checked": self.sessions_checked,
            "temp_files_removed": self.temp_files_removed,
            "problems": [{"location": p.location, "problem": p.problem} for p in self.problems],
            "ledger_rows": self.ledger_rows,
            "totals_checked": self.totals_checked,
            "audit_entries": self.audit_entries,
            "notes": [{"location": p.location, "note": p.problem} for p in self.notes],
        }


def _strip_location(message: str, prefix: str) -> str:
    return message[len(prefix) + 2 :] if message.startswith(prefix + ": ") else message


def _check_sessions(
    store: SessionStore,
    report: StoreReport,
    strict: bool,
    progress: Callable[[Sequence[SessionSummary]], Iterable[SessionSummary]] | None = None,
) -> None:
    try:
        report.schema_version = store.schema_version()
        report.temp_files_removed = store.sweep_temp_files()  # removed, reported, no problem
        report.problems.extend(Problem(w, p) for w, p in store.problems())
        report.problems.extend(Problem(str(w), p) for w, p in store.stray_files())
        rows = all_summaries(store)
    except Exception as exc:
        if strict:
            raise
        where = store.location() or report.config or "<store>"
        report.problems.append(Problem(where, message_of(exc)))
        return
    totals: dict[str, tuple[str | None, float]] = {}
    for row in progress(rows) if progress is not None else rows:
        report.sessions_checked += 1
        where = store.describe(row.id)
        try:
            session = store.load(row.id)
        except Exception as exc:
            if strict:
                raise
            report.problems.append(Problem(where, _strip_location(message_of(exc), where)))
            continue
        if session is None:
            report.problems.append(Problem(where, "listed but cannot be loaded"))
            continue
        if len(session.messages) != row.message_count:
            report.problems.append(
                Problem(
                    where,
                    f"listed with {row.message_count} messages, {len(session.messages)} loaded",
                )
            )
        parent = session.parent_id.bare if session.parent_id is not None else None
        totals[row.id] = (parent, session.budget_tracker.spent())
    _check_ledger(store, report, totals, rows, strict)


def _check_ledger(
    store: SessionStore,
    report: StoreReport,
    totals: dict[str, tuple[str | None, float]],
    rows: list[SessionSummary],
    strict: bool,
) -> None:
    """Compare each top-level session's and each workspace's budget total with the sum of its
    spend-ledger rows (``astrid.ledger.compare_totals``): a difference is a problem, spend with
    no row at all (from before the ledger) a note."""
    if not store.keeps_ledger:
        return
    try:
        ledger = store.list_ledger()
        workspaces: dict[str, float] = {}
        charged = {r.workspace for r in ledger if r.workspace_charged and r.workspace}
        for ws in sorted(charged | {r.workspace_path for r in rows if r.workspace_path}):
            budget = store.load_workspace_state(ws).budget
            if budget is not None:
                workspaces[ws] = budget.total_spent_usd
            elif ws in charged:
                report.notes.append(
                    Problem(
                        f"workspace {ws}",
                        "spend-ledger rows charged it but no workspace budget is stored "
                        "(its state was never saved): not checked",
                    )
                )
    except Exception as exc:
        if strict:
            raise
        report.problems.append(Problem(store.location() or "<store>", message_of(exc)))
        return
    report.ledger_rows = len(ledger)
    for check in compare_totals(totals, workspaces, ledger):
        report.totals_checked += 1
        where = store.describe(check.key) if check.what == "session" else f"workspace {check.key}"
        if check.status == "differs":
            report.problems.append(Problem(where, check.describe()))
        elif check.status == "unledgered":
            report.notes.append(Problem(where, check.describe()))


def check_store(
    loaded: LoadedConfig,
    *,
    strict: bool = False,
    progress: Callable[[Sequence[SessionSummary]], Iterable[SessionSummary]] | None = None,
) -> StoreReport:
    """Check the store ``loaded`` configures: schema version, every session loads in full with
    its listed message count, entries the backend cannot list, stray files in its directory;
    creates nothing.

    Removes temporary files of killed writers (counted, not a problem). Every failure is a
    ``Problem`` in the report; with ``strict`` the first exception propagates instead.
    ``progress`` wraps the sessions to check (a progress bar).
    """
    report = StoreReport(config=loaded.where, backend_name=SessionStore.configured_backend(loaded))
    try:
        store = SessionStore.open_to_inspect(loaded)
    except Exception as exc:
        if strict:
            raise
        report.problems.append(Problem(loaded.where, message_of(exc)))
        return report
    with store:
        report.backend_name = store.backend_name
        _check_sessions(store, report, strict, progress)
        _check_audit(store, report, runtime_keys(loaded.home), strict)
    return report


def _check_audit(
    store: SessionStore, report: StoreReport, trusted: list[str], strict: bool
) -> None:
    """Verify every audit chain (``astrid.security.audit.verify``): each broken chain is a
    problem naming its first bad entry."""
    if not store.keeps_audit:
        return
    try:
        records = store.list_audit()
    except Exception as exc:
        if strict:
            raise
        report.problems.append(Problem(store.location() or "<store>", message_of(exc)))
        return
    report.audit_entries = len(records)
    for bad in verify_audit(records, trusted):
        report.problems.append(Problem("audit log", bad.describe()))
