"""The ``astrid`` command: sessions, configuration, plugins, migration and store checks.

Thin: every command calls astrid's public API (config, store, plugins). Any ``AstridError`` or
``OSError`` prints one line, ``astrid: error: <message>``, unless ``--debug`` is given.
Exit codes: 0 ok, 1 error (or problems found), 2 usage error, 3 not found.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from . import __version__
from .config import (
    HOME_ENV,
    PLUGGABLE,
    LoadedConfig,
    astrid_home,
    find_config_file,
    load_config,
    write_default_config,
)
from .document import SessionDocument
from .errors import (
    AstridError,
    ConfigError,
    InvalidSessionId,
    SerializationError,
    SessionNotFound,
)
from .ids import validate_session_id
from .messages import ImagePart, Message, MessageRole, OpaqueContent, ToolCallResult
from .plugins import KINDS, PluginContext, get_implementation, plugin_info, registry
from .security.kv import KvStore, NamespaceListing, namespaces_of
from .store import (
    SessionRecord,
    SessionStore,
    SessionSummary,
    SessionWrite,
    StorageBackend,
    open_store,
    workspace_key,
)
from .timeutil import format_rfc3339, parse_rfc3339, to_utc, utcnow

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

# The keys astrid's file backend adds to a document (``astrid.default_plugins.file_storage``);
# an imported document carries them only when it was copied out of such a directory.
_FILE_REVISION_KEY = "astrid_revision"
_FILE_UPDATED_AT_KEY = "astrid_updated_at"
_FILE_ARCHIVED_KEY = "astrid_archived_messages"
_FILE_KEYS = (_FILE_REVISION_KEY, _FILE_UPDATED_AT_KEY, _FILE_ARCHIVED_KEY)

_PAGE = 500
_F = TypeVar("_F", bound=Callable[..., Any])


# -- errors and the group ------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    config: str | None
    debug: bool


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, SessionNotFound):
        return EXIT_NOT_FOUND
    if isinstance(exc, InvalidSessionId):
        return EXIT_USAGE
    return EXIT_ERROR


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, AstridError | OSError):
        return text
    return f"unexpected {type(exc).__name__}: {text} (run with --debug for the traceback)"


def _error(message: str) -> None:
    click.echo(f"astrid: error: {message}", err=True)


class _AstridGroup(click.Group):
    """The top-level group: turns errors into one line and an exit code (unless --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, BrokenPipeError):
            raise  # click reports these itself (usage errors exit 2)
        except Exception as exc:
            if ctx.params.get("debug"):
                raise
            _error(_one_line(exc))
            ctx.exit(_exit_code(exc))


def _opts(ctx: click.Context) -> _Options:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, _Options) else _Options(None, False)


def _load(ctx: click.Context) -> LoadedConfig:
    return load_config(_opts(ctx).config)


@contextlib.contextmanager
def _store(ctx: click.Context) -> Iterator[SessionStore]:
    with open_store(_load(ctx)) as store:
        yield store


def _json_option(func: _F) -> _F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")(
        func
    )


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


# -- formatting ----------------------------------------------------------------------------


def _time(moment: datetime | None) -> str:
    return to_utc(moment).strftime("%Y-%m-%d %H:%M:%SZ") if moment is not None else "-"


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: max(0, width - 3)] + "..."


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = []
        for i, cell in enumerate(row):
            if i == len(row) - 1:
                cells.append(cell.rjust(widths[i]) if i in right else cell)
            else:
                cells.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _role(message: Message) -> str:
    role = message.role
    if isinstance(role, MessageRole):
        return role.value
    return role or "?"


def render_message(message: Message, width: int = 110) -> str:
    """One line describing a message's content (text, tool calls, a result, parts)."""
    content = message.content
    calls = message.tool_calls()
    if isinstance(content, str):
        text = content
    elif calls is not None:
        text = "; ".join(f"-> {c.name} {_compact(c.arguments)}" for c in calls) or "-> (no calls)"
    elif isinstance(content, ToolCallResult):
        flag = " (error)" if content.is_error else ""
        text = f"<- {content.call_id}{flag}: {content.content}"
    elif isinstance(content, OpaqueContent):
        text = f"(unrecognised content) {_compact(content.value)}"
    else:
        parts = []
        for part in content:
            if isinstance(part, ImagePart):
                parts.append(f"[image {part.media_type}, {len(part.data)} base64 chars]")
            else:
                parts.append(getattr(part, "text", ""))
        text = " ".join(parts)
    return _clip(text, width)


def _summary_json(row: SessionSummary) -> dict[str, Any]:
    return {
        "id": row.id,
        "title": row.title,
        "display_title": row.display_title(),
        "created_at": format_rfc3339(row.created_at),
        "updated_at": format_rfc3339(row.updated_at),
        "message_count": row.message_count,
        "token_count": row.token_count,
        "workspace_path": row.workspace_path,
        "model": row.model,
        "parent_id": row.parent_id,
        "revision": row.revision,
    }


def _all_summaries(store: SessionStore, page: int = _PAGE) -> list[SessionSummary]:
    """Every listed session, by paging (corrupt entries a backend cannot list are skipped)."""
    rows: list[SessionSummary] = []
    offset = 0
    while True:
        chunk = store.list_sessions(limit=page, offset=offset)
        rows.extend(chunk)
        if len(chunk) < page:
            return rows
        offset += len(chunk)


def _backend_problems(store: SessionStore) -> list[tuple[str, str]]:
    """``problems()`` of a backend that exposes it (the file backend): (location, problem)."""
    probe = getattr(store.backend, "problems", None)
    if not callable(probe):
        return []
    return [(str(where), str(what)) for where, what in probe()]


# -- the command group ---------------------------------------------------------------------


@click.group(cls=_AstridGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    help="The config file (default: $ASTRID_CONFIG, ./astrid.toml, <home>/config.toml).",
)
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.version_option(__version__, prog_name="astrid")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, debug: bool) -> None:
    """astrid: manage agent sessions, their stores, configuration and plugins."""
    ctx.obj = _Options(config_path, debug)


# -- sessions ------------------------------------------------------------------------------


@cli.group()
def sessions() -> None:
    """List, show, export, import, delete and prune stored sessions."""


@sessions.command("list")
@click.option("--workspace", metavar="PATH", help="Only sessions of this workspace directory.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@_json_option
@click.pass_context
def sessions_list(
    ctx: click.Context, workspace: str | None, limit: int, offset: int, as_json: bool
) -> None:
    """List sessions, newest activity first, one page at a time.

    Each listed session's document (all but its messages) is loaded to check it: a row that
    cannot load is flagged, in the table and as ``load_error`` in ``--json``.
    """
    with _store(ctx) as store:
        total = store.count(workspace=workspace)
        rows = store.list_sessions(workspace=workspace, limit=limit, offset=offset)
        unreadable = len(_backend_problems(store))
        errors = {r.id: e for r in rows if (e := _load_problem(store, r)) is not None}
    if unreadable:
        click.echo(
            f"warning: {unreadable} session file(s) cannot be read and are not listed; "
            "run `astrid doctor`",
            err=True,
        )
    for problem in errors.values():
        click.echo(f"warning: cannot be loaded: {problem}", err=True)
    if as_json:
        _echo_json(
            {
                "total": total,
                "offset": offset,
                "limit": limit,
                "sessions": [{**_summary_json(r), "load_error": errors.get(r.id)} for r in rows],
            }
        )
        return
    if not rows:
        where = f" in workspace {workspace_key(workspace)}" if workspace else ""
        click.echo(f"no sessions{where}" + (f" (offset {offset} of {total})" if total else ""))
        return
    table = [
        [
            r.id,
            _time(r.updated_at),
            str(r.message_count),
            str(r.token_count),
            "! cannot be loaded" if r.id in errors else _clip(r.display_title(), 40),
            r.workspace_path or "-",
        ]
        for r in rows
    ]
    click.echo(
        _table(("id", "updated", "messages", "tokens", "title", "workspace"), table, right=(2, 3))
    )
    shown = f"{offset + 1}-{offset + len(rows)} of {total}"
    more = f"; next page: --offset {offset + len(rows)}" if offset + len(rows) < total else ""
    click.echo(f"\n{shown}{more}")


def _load_problem(store: SessionStore, row: SessionSummary) -> str | None:
    """Why a listed session's document cannot load, or None; its messages are not read.

    One ``load(tail=0)`` per listed row (on SQLite: the session's row only, ~0.1 ms), so a page
    costs the same at any number of sessions; ``doctor`` loads every session in full.
    """
    try:
        record = store.backend.load(row.id, tail=0)
        if record is None:
            return f"{_session_location(store, row.id)}: listed but not found"
        data = dict(record.state)
        data["messages"] = []
        SessionDocument.from_data(data, source=_session_location(store, row.id))
    except AstridError as exc:
        return _one_line(exc)
    return None


def _load_record(store: SessionStore, session_id: str) -> tuple[SessionRecord, SessionDocument]:
    sid = validate_session_id(session_id)
    record = store.backend.load(sid)
    if record is None:
        raise SessionNotFound(f"session {sid} not found in the {store.backend.name} store")
    data = dict(record.state)
    data["messages"] = record.messages
    doc = SessionDocument.from_data(data, source=f"{store.backend.name} session {sid}")
    return record, doc


def session_view(store: SessionStore, session_id: str, last: int = 20) -> dict[str, Any]:
    """What ``sessions show`` prints, as JSON-ready data (``last`` messages included)."""
    record, doc = _load_record(store, session_id)
    total = len(doc.messages)
    start = max(0, total - last)
    budget = doc.budget_snapshot
    workspace: dict[str, Any] | None = None
    if doc.workspace_path:
        try:
            state = store.load_workspace_state(doc.workspace_path)
        except AstridError as exc:
            workspace = {"path": doc.workspace_path, "error": str(exc)}
        else:
            workspace = {
                "path": doc.workspace_path,
                "allowances": [str(a.action_pattern) for a in state.allowances],
                "spent_usd": state.budget.total_spent_usd if state.budget else None,
                "escape_paths": list(state.escape.remembered_paths) if state.escape else [],
            }
    return {
        "id": doc.id,
        "title": doc.metadata.title,
        "created_at": format_rfc3339(doc.created_at),
        "updated_at": format_rfc3339(record.updated_at),
        "revision": record.revision,
        "model": doc.model,
        "workspace_path": doc.workspace_path,
        "parent_id": doc.parent_id,
        "git_state": doc.git_state.model_dump(mode="json") if doc.git_state else None,
        "system_prompt": doc.system_prompt,
        "message_count": total,
        "history_count": len(store.backend.history(doc.id)),
        "token_count": doc.token_count,
        "metadata": doc.metadata.model_dump(mode="json"),
        "budget": (
            {
                "spent_usd": budget.session_spent_usd,
                "limit_usd": budget.config.session_max_usd,
                "per_action_max_usd": budget.config.per_action_max_usd,
                "warn_at_percent": budget.config.warn_at_percent,
                "last_updated": format_rfc3339(budget.last_updated),
            }
            if budget is not None
            else None
        ),
        "allowances": [
            {
                "id": str(a.id),
                "pattern": str(a.action_pattern),
                "expires_at": format_rfc3339(a.expires_at) if a.expires_at else None,
                "uses_remaining": a.uses_remaining,
                "max_uses": a.max_uses,
                "workspace_root": str(a.workspace_root) if a.workspace_root else None,
            }
            for a in doc.allowances
        ],
        "escape_paths": list(doc.escape_state.remembered_paths) if doc.escape_state else [],
        "workspace": workspace,
        "messages": [
            {
                "index": start + i + 1,
                "role": _role(m),
                "summary": render_message(m),
                "content": m.to_json(),
            }
            for i, m in enumerate(doc.messages[start:])
        ],
    }


def print_session(view: dict[str, Any]) -> None:
    """Print a ``session_view`` for people."""
    meta = view["metadata"]
    git = view["git_state"]
    lines = [f"session {view['id']}"]

    def field(label: str, value: str) -> None:
        lines.append(f"  {label + ':':<17}{value}")

    def item(text: str) -> None:
        lines.append(f"    - {text}")

    field("title", view["title"] or "Session " + view["id"][:8])
    field("created", _time(parse_rfc3339(view["created_at"])))
    field("updated", f"{_time(parse_rfc3339(view['updated_at']))} (revision {view['revision']})")
    field("model", view["model"] or "-")
    field("workspace", view["workspace_path"] or "-")
    field("git", f"{git.get('branch') or '?'} @ {git.get('commit') or '?'}" if git else "-")
    field("parent", view["parent_id"] or "-")
    history = view["history_count"]
    field(
        "messages",
        f"{view['message_count']} ({view['token_count']} tokens)"
        + (
            f"; the history keeps {history}, replaced ones included"
            if history > view["message_count"]
            else ""
        ),
    )
    field(
        "counters",
        f"{meta['turn_count']} turns, {meta['tool_call_count']} tool calls, "
        f"{meta['approval_count']} approvals",
    )
    if meta["tags"]:
        field("tags", ", ".join(meta["tags"]))
    for key, value in sorted(meta["custom"].items()):
        field("custom", f"{key} = {value}")
    budget = view["budget"]
    field(
        "budget",
        f"${budget['spent_usd']:.4f} spent of ${budget['limit_usd']:.2f} "
        f"(per action max ${budget['per_action_max_usd']:.2f}, "
        f"warn at {budget['warn_at_percent']}%)"
        if budget is not None
        else "-",
    )
    field("allowances", f"{len(view['allowances'])} (this session only)")
    for a in view["allowances"]:
        limits = []
        if a["uses_remaining"] is not None:
            limits.append(f"{a['uses_remaining']} uses left")
        if a["expires_at"]:
            limits.append(f"expires {_time(parse_rfc3339(a['expires_at']))}")
        item(a["pattern"] + (f" ({', '.join(limits)})" if limits else ""))
    field("escape paths", str(len(view["escape_paths"])))
    for path in view["escape_paths"]:
        item(path)
    ws = view["workspace"]
    if ws is not None and "error" in ws:
        field("workspace state", f"unreadable: {ws['error']}")
    elif ws is not None:
        spent = f"${ws['spent_usd']:.4f} spent" if ws["spent_usd"] is not None else "no spend"
        field(
            "workspace state",
            f"{len(ws['allowances'])} allowances, {spent}, {len(ws['escape_paths'])} escape paths",
        )
    field("system prompt", _clip(view["system_prompt"], 90) or "-")
    shown = view["messages"]
    lines.append("")
    if shown:
        lines.append(f"messages (last {len(shown)} of {view['message_count']}):")
        table = [[str(m["index"]), m["role"], m["summary"]] for m in shown]
        rendered = _table(("#", "role", "content"), table, right=(0,))
        lines.extend("  " + line for line in rendered.split("\n"))
    else:
        lines.append(f"messages: none shown ({view['message_count']} stored)")
    click.echo("\n".join(lines))


@sessions.command("show")
@click.argument("session_id", metavar="ID")
@click.option(
    "--messages",
    "last",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many of the last messages to show.",
)
@_json_option
@click.pass_context
def sessions_show(ctx: click.Context, session_id: str, last: int, as_json: bool) -> None:
    """Show a session: messages, metadata, budget, allowances, escape paths, git, parent."""
    with _store(ctx) as store:
        view = session_view(store, session_id, last)
    if as_json:
        _echo_json(view)
    else:
        print_session(view)


# -- export --------------------------------------------------------------------------------


@contextlib.contextmanager
def _output(path: str) -> Iterator[IO[str] | None]:
    """The output stream: None for stdout (``-``), else a new private (0600) file."""
    if path == "-":
        yield None
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        yield fh


def _unlisted(store: SessionStore) -> list[str]:
    """A line per session the backend cannot even list (its ``problems()``): id, file, why."""
    lines = []
    for where, what in _backend_problems(store):
        try:
            sid = validate_session_id(Path(where).name.removesuffix(".json"))
        except InvalidSessionId:
            lines.append(f"{where}: {what} (not exported)")
        else:
            lines.append(f"session {sid} not exported: {where}: {what}")
    return lines


@sessions.command("export")
@click.argument("session_ids", metavar="[ID]...", nargs=-1)
@click.option("--all", "export_all", is_flag=True, help="Export every session.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["json", "jsonl"]),
    default="json",
    show_default=True,
    help="json: one document (one ID) or an array; jsonl: one compact document per line.",
)
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    default="-",
    help="Write to FILE (created 0600) instead of stdout.",
)
@click.pass_context
def sessions_export(
    ctx: click.Context, session_ids: tuple[str, ...], export_all: bool, fmt: str, output: str
) -> None:
    """Export sessions as the original's documents, with their security state."""
    if bool(session_ids) == export_all:
        raise click.UsageError("give one or more session IDs, or --all (not both)")
    failed = 0
    written = 0
    with _store(ctx) as store:
        if export_all:
            ids = [row.id for row in _all_summaries(store)]
            for line in _unlisted(store):
                failed += 1
                _error(line)
        else:
            ids = [validate_session_id(s) for s in session_ids]
            for sid in ids:
                if store.backend.load(sid, tail=0) is None:
                    raise SessionNotFound(
                        f"session {sid} not found in the {store.backend.name} store"
                    )
        single = fmt == "json" and not export_all and len(ids) == 1
        with _output(output) as fh:

            def write(text: str) -> None:
                click.echo(text, nl=False, file=fh)

            if fmt == "json" and not single:
                write("[")
            for sid in ids:
                try:
                    doc = store.load_document(sid)
                except AstridError as exc:
                    failed += 1
                    _error(f"session {sid} not exported: {_one_line(exc)}")
                    continue
                if doc is None:  # deleted meanwhile
                    continue
                if fmt == "jsonl":
                    write(json.dumps(doc.to_data(), ensure_ascii=False) + "\n")
                elif single:
                    write(doc.to_json_text() + "\n")
                else:
                    body = doc.to_json_text().replace("\n", "\n  ")
                    write(("," if written else "") + "\n  " + body)
                written += 1
            if fmt == "json" and not single:
                write("\n]\n" if written else "]\n")
    if output != "-":
        click.echo(f"exported {written} session(s) to {output}", err=True)
    if failed:
        _error(f"{failed} session(s) could not be exported")
        ctx.exit(EXIT_ERROR)


# -- import --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Incoming:
    """One document read from an import source, or the error that replaced it."""

    location: str
    data: Any = None
    error: str | None = None
    mtime: datetime | None = None


def _mtime(path: Path) -> datetime | None:
    try:
        return to_utc(datetime.fromtimestamp(path.stat().st_mtime).astimezone())
    except OSError:
        return None


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    return Path(path).read_text(encoding="utf-8")


def _parse_json_docs(text: str, location: str, mtime: datetime | None) -> Iterator[_Incoming]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        yield _Incoming(location, error=f"{location}: invalid JSON: {exc}")
        return
    if isinstance(data, list):
        for i, item in enumerate(data):
            yield _Incoming(f"{location}[{i}]", data=item, mtime=mtime)
    else:
        yield _Incoming(location, data=data, mtime=mtime)


def _parse_jsonl_docs(text: str, location: str) -> Iterator[_Incoming]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{location}:{number}"
        try:
            yield _Incoming(where, data=json.loads(line))
        except ValueError as exc:
            yield _Incoming(where, error=f"{where}: invalid JSON: {exc}")


def _looks_like_jsonl(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return False
    try:
        return isinstance(json.loads(lines[0]), dict)
    except ValueError:
        return False


def _incoming(source: str, fmt: str) -> Iterator[_Incoming]:
    """The documents of a file, stdin (``-``) or a directory of ``<uuid>.json`` files."""
    if source != "-" and Path(source).is_dir():
        files = sorted(
            p
            for p in Path(source).iterdir()
            if p.suffix == ".json" and not p.name.startswith(".") and p.is_file()
        )
        for path in files:
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                yield _Incoming(str(path), error=f"{path}: cannot read: {exc}")
                continue
            yield from _parse_json_docs(text, str(path), _mtime(path))
        return
    location = "<stdin>" if source == "-" else source
    try:
        text = _read_text(source)
    except (OSError, UnicodeDecodeError) as exc:
        yield _Incoming(location, error=f"{location}: cannot read: {exc}")
        return
    mtime = None if source == "-" else _mtime(Path(source))
    if fmt == "jsonl" or (fmt == "auto" and _looks_like_jsonl(text)):
        yield from _parse_jsonl_docs(text, location)
    else:
        yield from _parse_json_docs(text, location, mtime)


def _archived_messages(doc: SessionDocument, location: str) -> list[Any]:
    raw = (doc.__pydantic_extra__ or {}).get(_FILE_ARCHIVED_KEY)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(i, dict) and "message" in i for i in raw):
        raise SerializationError(
            f"{location}: key {_FILE_ARCHIVED_KEY!r} must be a list of {{'seq', 'message'}}"
        )
    return [item["message"] for item in raw]


def _last_activity(doc: SessionDocument, fallback: datetime | None) -> datetime:
    """The document's last activity: astrid's own stamp, the budget's, the file's, creation."""
    stamp = (doc.__pydantic_extra__ or {}).get(_FILE_UPDATED_AT_KEY)
    if stamp is not None:
        with contextlib.suppress(ValueError):
            parsed = parse_rfc3339(stamp)
            if isinstance(parsed, datetime):
                return to_utc(parsed)
    if doc.budget_snapshot is not None:
        return to_utc(doc.budget_snapshot.last_updated)
    return to_utc(fallback) if fallback is not None else to_utc(doc.created_at)


def _write_session(
    store: SessionStore,
    state: dict[str, Any],
    archived: list[Any],
    active: list[Any],
    summary: SessionSummary,
    existing: SessionRecord | None,
) -> int:
    """Write a whole session, its replaced messages and its active ones, in ONE backend write.

    Over an existing session the write replaces its messages (they stay in its history). A kill
    at any moment leaves either the previous state or the complete new one.
    """
    revision = existing.revision if existing is not None else None
    return store.backend.write(
        SessionWrite(
            session_id=summary.id,
            expected_revision=revision,
            state=state,
            messages=list(active),
            base_count=existing.message_count if existing is not None else 0,
            replace=existing is not None,
            summary=replace(summary, message_count=len(active)),
            archived=list(archived),
        )
    )


def _import_one(store: SessionStore, item: _Incoming, overwrite: bool) -> str:
    """Import one document; returns ``imported``, ``replaced`` or ``skipped``."""
    doc = SessionDocument.from_data(item.data, source=item.location)
    archived = _archived_messages(doc, item.location)
    state = doc.to_data()
    state.pop("messages", None)
    for key in _FILE_KEYS:
        state.pop(key, None)
    existing = store.backend.load(doc.id, tail=0)
    if existing is not None and not overwrite:
        return "skipped"
    active = [m.to_json() for m in doc.messages]
    summary = SessionSummary(
        id=doc.id,
        title=doc.metadata.title,
        created_at=to_utc(doc.created_at),
        updated_at=_last_activity(doc, item.mtime),
        message_count=len(active),
        token_count=doc.token_count,
        workspace_path=workspace_key(doc.workspace_path) if doc.workspace_path else None,
        model=doc.model,
        parent_id=doc.parent_id,
    )
    _write_session(store, state, archived, active, summary, existing)
    return "imported" if existing is None else "replaced"


_IMPORT_EPILOG = """\
FILE is one document, a JSON array of documents, JSON Lines (one document per line), or a
directory of <uuid>.json files such as the Rust astrid's ~/.astrid/sessions. A session that
already exists is skipped unless --overwrite (its old messages stay in its history). A bad
document is reported on one line naming the file (and the line for JSON Lines); the others are
still imported, and the exit status is 1.
"""


@sessions.command("import", epilog=_IMPORT_EPILOG)
@click.argument("source", metavar="FILE", type=click.Path(exists=True, allow_dash=True))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "json", "jsonl"]),
    default="auto",
    show_default=True,
    help="json: a document or an array of them; jsonl: one document per line.",
)
@click.option("--overwrite", is_flag=True, help="Replace sessions that already exist.")
@click.pass_context
def sessions_import(ctx: click.Context, source: str, fmt: str, overwrite: bool) -> None:
    """Import the original's session documents (a file, JSON Lines, or a sessions directory)."""
    counts = {"imported": 0, "replaced": 0, "skipped": 0, "failed": 0}
    with _store(ctx) as store:
        for item in _incoming(source, fmt):
            if item.error is not None:
                counts["failed"] += 1
                _error(item.error)
                continue
            try:
                outcome = _import_one(store, item, overwrite)
            except AstridError as exc:
                counts["failed"] += 1
                message = _one_line(exc)
                if not message.startswith(item.location):
                    message = f"{item.location}: {message}"
                _error(message)
                continue
            counts[outcome] += 1
            if outcome == "skipped":
                click.echo(
                    f"skipped {item.location}: session {item.data.get('id')} already exists "
                    "(use --overwrite to replace it)"
                )
    click.echo(
        f"imported {counts['imported']}, replaced {counts['replaced']}, "
        f"skipped {counts['skipped']}, failed {counts['failed']}"
    )
    if counts["failed"]:
        ctx.exit(EXIT_ERROR)


# -- delete and prune ----------------------------------------------------------------------


@sessions.command("delete")
@click.argument("session_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def sessions_delete(ctx: click.Context, session_id: str, yes: bool) -> None:
    """Delete a session and its message history."""
    sid = validate_session_id(session_id)
    with _store(ctx) as store:
        if not yes:
            try:
                record = store.backend.load(sid, tail=0)
            except AstridError as exc:  # a corrupt session can still be deleted
                what = f"unreadable: {_one_line(exc)}"
            else:
                if record is None:
                    raise SessionNotFound(
                        f"session {sid} not found in the {store.backend.name} store"
                    )
                meta = record.state.get("metadata")
                title = meta.get("title") if isinstance(meta, dict) else None
                what = f"{title or 'Session ' + sid[:8]}, {record.message_count} messages"
            click.confirm(f"Delete session {sid} ({what})?", abort=True, err=True)
        if not store.delete(sid):
            raise SessionNotFound(f"session {sid} not found in the {store.backend.name} store")
    click.echo(f"deleted {sid}")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"(\d+)\s*([smhdw])")


def parse_duration(text: str) -> timedelta:
    """``90m``, ``12h``, ``30d``, ``2w`` (or a sum such as ``1d12h``) as a timedelta."""
    spec = text.strip().lower()
    if not spec or _DURATION.sub("", spec).strip():
        raise ValueError(f"invalid duration {text!r}: use e.g. 90m, 12h, 30d or 2w")
    seconds = sum(int(n) * _UNITS[u] for n, u in _DURATION.findall(spec))
    return timedelta(seconds=seconds)


class _Duration(click.ParamType[timedelta, Any]):
    name = "DURATION"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@sessions.command("prune")
@click.option(
    "--older-than",
    "older_than",
    type=_Duration(),
    required=True,
    help="Delete sessions whose last activity is older than this (90m, 12h, 30d, 2w).",
)
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@_json_option
@click.pass_context
def sessions_prune(
    ctx: click.Context, older_than: timedelta, dry_run: bool, as_json: bool
) -> None:
    """Delete sessions by last activity (with --dry-run, only list them)."""
    now = utcnow()
    with _store(ctx) as store:
        ids = store.prune(older_than=older_than, dry_run=dry_run, now=now)
    if as_json:
        _echo_json(
            {
                "dry_run": dry_run,
                "cutoff": format_rfc3339(now - older_than),
                "sessions": ids,
            }
        )
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {len(ids)} session(s) inactive since before {_time(now - older_than)}")
    for sid in ids:
        click.echo(f"  {sid}")


# -- config --------------------------------------------------------------------------------


@cli.group("config")
def config_group() -> None:
    """Create, show, validate and locate the configuration file."""


@config_group.command("init")
@click.option("--path", "path", metavar="P", help="Where to write (default <home>/config.toml).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
@click.pass_context
def config_init(ctx: click.Context, path: str | None, force: bool) -> None:
    """Write a commented default configuration file."""
    target = Path(path or _opts(ctx).config or astrid_home() / "config.toml")
    if target.exists() and not force:
        raise AstridError(f"{target}: already exists (use --force to replace it)")
    write_default_config(target, overwrite=True)
    click.echo(f"wrote {target}")


def _present(raw: Any, dotted: str) -> bool:
    node = raw
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _flatten(prefix: str, value: Any, out: list[tuple[str, Any]]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out.append((prefix, value))


def effective_config(loaded: LoadedConfig) -> tuple[dict[str, Any], list[tuple[str, Any, str]]]:
    """The effective config (plugin options with their defaults) and each value's source."""
    data = loaded.config.model_dump(mode="json")
    for section, key, kind in PLUGGABLE:
        impl = get_implementation(kind, data[section][key], where=loaded.where)
        options = impl.options.model_validate(data[section]["options"])
        data[section]["options"] = options.model_dump(mode="json")
    raw: dict[str, Any] = {}
    if loaded.source is not None:
        raw = tomllib.loads(loaded.source.read_text(encoding="utf-8"))
    flat: list[tuple[str, Any]] = []
    _flatten("", data, flat)
    origin = str(loaded.source) if loaded.source is not None else "default"
    rows = [(k, v, origin if _present(raw, k) else "default") for k, v in flat]
    return data, rows


@config_group.command("show")
@_json_option
@click.pass_context
def config_show(ctx: click.Context, as_json: bool) -> None:
    """Print the effective configuration and where each value came from."""
    loaded = _load(ctx)
    data, rows = effective_config(loaded)
    if as_json:
        _echo_json(
            {
                "file": str(loaded.source) if loaded.source else None,
                "home": str(loaded.home),
                "config": data,
                "sources": {k: s for k, _v, s in rows},
            }
        )
        return
    click.echo(f"file: {loaded.source or '(none: defaults)'}")
    home_from = HOME_ENV if os.environ.get(HOME_ENV) else "default"
    click.echo(f"home: {loaded.home} ({home_from})\n")
    click.echo(_table(("key", "value", "source"), [[k, _compact(v), s] for k, v, s in rows]))


@config_group.command("validate")
@click.pass_context
def config_validate(ctx: click.Context) -> None:
    """Load and validate the configuration (plugin names and their options)."""
    loaded = _load(ctx)
    click.echo(f"ok: {loaded.source or '(none: defaults)'}")


@config_group.command("path")
@click.pass_context
def config_path(ctx: click.Context) -> None:
    """Print the config file in use (or that defaults apply) and the astrid home."""
    source = find_config_file(_opts(ctx).config)
    click.echo(str(source) if source is not None else "(none: defaults)")
    click.echo(f"home: {astrid_home()}")


# -- plugins -------------------------------------------------------------------------------


@cli.command("plugins")
@_json_option
def plugins_command(as_json: bool) -> None:
    """List installed plugins, their versions and hooks, and what each kind registers."""
    info = plugin_info()
    impls = {
        kind: [
            {"name": impl.name, "plugin": impl.plugin, "description": impl.description}
            for impl in sorted(registry(kind).values(), key=lambda i: i.name)
        ]
        for kind in KINDS
    }
    if as_json:
        _echo_json({"plugins": info, "implementations": impls})
        return
    rows = [[p["name"], p["version"] or "-", ", ".join(p["hooks"]) or "-"] for p in info]
    click.echo(_table(("plugin", "version", "hooks"), rows))
    click.echo("")
    impl_rows = [
        [kind, i["name"], i["plugin"], _clip(i["description"], 70)]
        for kind, items in impls.items()
        for i in items
    ]
    click.echo(_table(("kind", "name", "plugin", "description"), impl_rows))


# -- migrate -------------------------------------------------------------------------------


def _derived_namespaces(rows: Sequence[SessionSummary]) -> list[str]:
    """The key-value namespaces astrid derives from sessions and their workspaces."""
    names = [f"deferred:{r.id}" for r in rows]
    workspaces = sorted({r.workspace_path for r in rows if r.workspace_path})
    for ws in workspaces:
        names += [f"ws:{ws}", f"ws:{ws}:allowances", f"ws:{ws}:budget", f"ws:{ws}:escape"]
    return names


def _kv_namespaces(
    kv: KvStore, rows: Sequence[SessionSummary], failures: list[str]
) -> tuple[list[str], bool]:
    """Every namespace the source lists plus the derived ones, sorted; False if it cannot list."""
    derived = _derived_namespaces(rows)
    try:
        listed = namespaces_of(kv)
    except AstridError as exc:
        failures.append(f"kv namespaces: cannot list them: {_one_line(exc)}")
        listed = None
    if listed is None:
        return sorted(set(derived)), False
    return sorted(set(listed) | set(derived)), True


def _copy_session(
    source: SessionStore,
    target: SessionStore,
    row: SessionSummary,
    present: SessionSummary | None,
) -> str:
    """Copy one session (state, active messages, history); ``copied``/``skipped``/``gone``."""
    history = source.backend.history(row.id)
    if (
        present is not None
        and present.message_count == row.message_count
        and len(target.backend.history(row.id)) == len(history)
    ):
        return "skipped"
    record = source.backend.load(row.id)
    if record is None:
        return "gone"
    data = dict(record.state)
    data["messages"] = record.messages
    SessionDocument.from_data(data, source=_session_location(source, row.id))
    archived = [h.message for h in history if not h.active]
    if present is not None:
        target.backend.delete(row.id)
    summary = replace(row, message_count=record.message_count)
    _write_session(target, dict(record.state), archived, list(record.messages), summary, None)
    return "copied"


def _persistent(backend: StorageBackend) -> bool:
    """A backend's optional ``persistent`` attribute; absent means it keeps its data."""
    return bool(getattr(backend, "persistent", True))


def _copy_capabilities(source: SessionStore, target: SessionStore) -> tuple[int, int, int]:
    """Copy persistent capability tokens, revocations and used markers; their counts."""
    src = source.capabilities.backend if source.capabilities is not None else None
    dst = target.capabilities.backend if target.capabilities is not None else None
    if src is None or dst is None or src is dst:
        return 0, 0, 0
    tokens = 0
    for data in src.list_tokens():
        try:
            token_id = json.loads(data)["id"]
        except (ValueError, KeyError, TypeError):
            continue
        dst.put_token(str(token_id), data)
        tokens += 1
    revoked = src.revoked_ids()
    for token_id in revoked:
        dst.add_revoked(token_id)
    used = src.used_ids()
    for token_id in used:
        dst.add_used(token_id)
    return tokens, len(revoked), len(used)


_MIGRATE_EPILOG = """\
Copies each session's state, active messages and history (replaced messages included), every
key-value namespace of the source (the deferred-approval queues, the workspaces' allowances,
budgets and escape paths, and whatever hosts and plugins stored) and the persistent capability
tokens, revocations and used markers. A source whose key-value store cannot list its namespaces
(a backend without list_namespaces) gets only the namespaces derived from the sessions and their
workspaces copied, and the summary says so.

Resumable: a session already in the target with the same message count and history length is
skipped; a different one is copied again. At the end the target is checked: every session
present with the same message count and every copied namespace with the same keys; the exit
status is 1 on any failure or mismatch. A target whose backend is not persistent (memory) is
refused.
"""


@cli.command("migrate", epilog=_MIGRATE_EPILOG)
@click.option("--from", "from_config", required=True, metavar="CONFIG", help="Source config.")
@click.option("--to", "to_config", required=True, metavar="CONFIG", help="Target config.")
@click.option(
    "--batch",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Sessions listed per page.",
)
@click.pass_context
def migrate(ctx: click.Context, from_config: str, to_config: str, batch: int) -> None:
    """Copy every session and its state from one store to another (resumable, verified)."""
    src_loaded, dst_loaded = load_config(from_config), load_config(to_config)
    if Path(from_config).resolve() == Path(to_config).resolve():
        raise click.UsageError("--from and --to name the same config file")
    with open_store(src_loaded) as source, open_store(dst_loaded) as target:
        if repr(source.backend) == repr(target.backend):
            raise AstridError(f"the source and target are the same store: {source.backend!r}")
        if not _persistent(target.backend):
            raise ConfigError(
                f"{dst_loaded.where}: key 'storage.backend': the {target.backend.name!r} backend "
                "is not persistent (what it holds is gone when the process ends); migrate to a "
                "store that keeps its data"
            )
        failures: list[str] = [
            f"{where}: {what} (not migrated)" for where, what in _backend_problems(source)
        ]
        rows = _all_summaries(source, batch)
        present = {r.id: r for r in _all_summaries(target, batch)}
        counts = {"copied": 0, "skipped": 0, "gone": 0}
        done: list[SessionSummary] = []
        with click.progressbar(
            rows,
            label="migrating sessions",
            file=sys.stderr,
            show_pos=True,
        ) as bar:
            for row in bar:
                try:
                    outcome = _copy_session(source, target, row, present.get(row.id))
                except AstridError as exc:
                    message = _one_line(exc)
                    if row.id not in message:
                        message = f"session {row.id}: {message}"
                    failures.append(message)
                    continue
                counts[outcome] += 1
                if outcome != "gone":
                    done.append(row)
        kv_keys = 0
        kv_filled: set[str] = set()
        src_kv, dst_kv = source.backend.kv(), target.backend.kv()
        namespaces, listed = _kv_namespaces(src_kv, done, failures)
        for ns in namespaces:
            try:
                for key in src_kv.list_keys(ns):
                    value = src_kv.get(ns, key)
                    if value is not None:
                        dst_kv.set(ns, key, value)
                        kv_keys += 1
                        kv_filled.add(ns)
            except AstridError as exc:
                failures.append(f"kv namespace {ns!r}: {_one_line(exc)}")
        tokens, revoked, used = _copy_capabilities(source, target)
        after = {r.id: r for r in _all_summaries(target, batch)}
        mismatches = []
        messages = 0
        for row in done:
            got = after.get(row.id)
            if got is None:
                mismatches.append(f"session {row.id}: missing from the target")
            elif got.message_count != row.message_count:
                mismatches.append(
                    f"session {row.id}: {row.message_count} messages in the source, "
                    f"{got.message_count} in the target"
                )
            else:
                messages += row.message_count
        for ns in namespaces:
            try:
                missing = set(src_kv.list_keys(ns)) - set(dst_kv.list_keys(ns))
            except AstridError as exc:
                mismatches.append(f"kv namespace {ns!r}: cannot verify: {_one_line(exc)}")
                continue
            if missing:
                mismatches.append(f"kv namespace {ns!r}: {len(missing)} keys missing")
    click.echo(
        f"copied {counts['copied']}, skipped {counts['skipped']} (already present), "
        f"failed {len(failures)}"
        + (f", vanished during the run {counts['gone']}" if counts["gone"] else "")
    )
    which = "every namespace the source lists" if listed else "derived namespaces only"
    click.echo(
        f"kv: {kv_keys} keys in {len(kv_filled)} namespaces ({which}); capabilities: "
        f"{tokens} tokens, {revoked} revoked, {used} used"
    )
    if not isinstance(src_kv, NamespaceListing):
        click.echo(
            f"note: the source's key-value store ({src_kv!r}) cannot list its namespaces (no "
            "list_namespaces): only the deferred-approval queues and workspace state derived "
            "from the sessions were copied; other namespaces were left behind"
        )
    for line in failures + mismatches:
        _error(line)
    if mismatches or failures:
        _error(f"migration incomplete: {len(failures)} failed, {len(mismatches)} mismatches")
        ctx.exit(EXIT_ERROR)
    click.echo(f"verified: {len(done)} sessions, {messages} messages")


# -- doctor --------------------------------------------------------------------------------


def _session_location(store: SessionStore, sid: str) -> str:
    backend = store.backend
    path_of = getattr(backend, "path_of", None)
    if callable(path_of):
        return str(path_of(sid))
    path = getattr(backend, "path", None)
    if path is not None:
        return f"{path}: session {sid}"
    return f"{backend.name} session {sid}"


def _strip_location(message: str, prefixes: Sequence[str]) -> str:
    for prefix in prefixes:
        if message.startswith(prefix + ": "):
            return message[len(prefix) + 2 :]
    return message


def _store_location(backend: Any, fallback: str) -> str:
    """Where a backend keeps its data (its file or directory), for problems of the whole store."""
    for attr in ("path", "directory"):
        value = getattr(backend, attr, None)
        if value is not None:
            return str(value)
    return fallback


def _open_to_inspect(loaded: LoadedConfig) -> SessionStore:
    """The store as ``doctor`` opens it: only the storage backend, asked to create nothing.

    A backend honouring ``PluginContext.read_only`` (the file backend) makes no directory,
    lock or index; the capability store is not opened at all.
    """
    cfg = loaded.config
    impl = get_implementation(
        "storage", cfg.storage.backend, where=f"{loaded.where}: key 'storage.backend'"
    )
    backend = impl.create(cfg.storage.options, PluginContext(home=loaded.home, read_only=True))
    return SessionStore(backend)


@cli.command(
    "doctor",
    epilog="Each problem is printed as '<location>: <problem>'; the exit status is 1 if any. "
    "With --json the report is always one JSON object, problems included.",
)
@_json_option
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the store: schema version, every session loads, corrupt or stray files."""
    debug = _opts(ctx).debug
    problems: list[tuple[str, str]] = []

    def report(where: str, exc: Exception) -> None:
        if debug:
            raise exc
        problems.append((where, _one_line(exc)))

    checked = 0
    swept = 0
    schema: int | None = None
    try:
        loaded = _load(ctx)
    except Exception as exc:
        if not as_json or debug:
            raise
        report(_opts(ctx).config or "<config>", exc)
        _echo_json(_doctor_json(problems, None, None, schema, checked, swept))
        ctx.exit(EXIT_ERROR)
    backend_name = loaded.config.storage.backend
    try:
        store = _open_to_inspect(loaded)
    except Exception as exc:
        report(loaded.where, exc)
    else:
        with store:
            backend_name = store.backend.name
            rows: list[SessionSummary] = []
            try:
                schema = store.backend.schema_version()
                # Temporary files of killed writers (file backend): removed, reported, no problem.
                swept = int(getattr(store.backend, "swept_temp_files", 0))
                sweep = getattr(store.backend, "sweep_temp_files", None)
                if callable(sweep):
                    swept += int(sweep())
                problems.extend(_backend_problems(store))
                rows = _all_summaries(store)
            except Exception as exc:
                report(_store_location(store.backend, loaded.where), exc)
            for row in rows:
                checked += 1
                where = _session_location(store, row.id)
                try:
                    session = store.load(row.id)
                except Exception as exc:
                    if debug:
                        raise
                    message = _strip_location(
                        _one_line(exc), (where, f"{store.backend.name} session {row.id}")
                    )
                    problems.append((where, message))
                    continue
                if session is None:
                    problems.append((where, "listed but cannot be loaded"))
                elif len(session.messages) != row.message_count:
                    problems.append(
                        (
                            where,
                            f"listed with {row.message_count} messages, "
                            f"{len(session.messages)} loaded",
                        )
                    )
    if as_json:
        _echo_json(_doctor_json(problems, loaded.where, backend_name, schema, checked, swept))
    else:
        if schema is not None:
            click.echo(f"store: {backend_name} (schema version {schema})")
        if swept:
            click.echo(f"removed {swept} orphaned temporary file(s) of killed writers")
        for where, what in problems:
            click.echo(f"{where}: {what}")
        if problems:
            click.echo(f"{len(problems)} problem(s); {checked} sessions checked")
        else:
            click.echo(f"ok: {checked} sessions checked")
    if problems:
        ctx.exit(EXIT_ERROR)


def _doctor_json(
    problems: list[tuple[str, str]],
    config: str | None,
    backend: str | None,
    schema: int | None,
    checked: int,
    swept: int,
) -> dict[str, Any]:
    """The ``doctor --json`` report."""
    return {
        "ok": not problems,
        "config": config,
        "backend": backend,
        "schema_version": schema,
        "sessions_checked": checked,
        "temp_files_removed": swept,
        "problems": [{"location": w, "problem": p} for w, p in problems],
    }


# -- demo ----------------------------------------------------------------------------------

DEMO_NOTES = "buy milk, eggs and bread\ncall the plumber on Tuesday\n"
DEMO_PROMPTS = (
    "What is in notes.txt?",
    "Ask a helper to plan my errands.",
    "Thanks!",
)


def _usage(tokens_in: int, tokens_out: int) -> dict[str, Any]:
    return {"usage": {"input_tokens": tokens_in, "output_tokens": tokens_out}}


DEMO_SCRIPT: list[list[dict[str, Any]]] = [
    # Turn 1: the model reads a file (the approval handler approves it for the session).
    [
        {"text": "Let me read the notes."},
        {"tool_call": {"id": "call_1", "name": "read_file", "arguments": {"path": "notes.txt"}}},
        _usage(120, 30),
    ],
    [
        {"text": "The notes say: buy milk, eggs and bread, and call the plumber on Tuesday."},
        _usage(200, 25),
    ],
    # Turn 2: the model delegates to a sub-agent through the `task` tool.
    [
        {
            "tool_call": {
                "id": "call_2",
                "name": "task",
                "arguments": {
                    "description": "plan errands",
                    "prompt": "Plan the errands: buy milk, eggs and bread; call the plumber.",
                },
            }
        },
        _usage(260, 40),
    ],
    [{"text": "Monday: groceries. Tuesday: call the plumber."}, _usage(80, 20)],
    [
        {"text": "A helper planned it: groceries on Monday, the plumber on Tuesday."},
        _usage(320, 25),
    ],
    # Turn 3: the context is over its (small) limit, so older turns are summarized first.
    [{"text": "You're welcome!"}, _usage(150, 5)],
]
"""The model's side of the demo, replayed by the ``scripted`` provider."""


class _AutoApprove:
    """The demo's approval handler: reports each request and approves it for the session."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say

    async def request_approval(self, request: Any) -> Any:
        """Approve for the session (a real host would ask its user here)."""
        from .security.approvals import ApprovalResponse, ApproveSession

        self.say(f"  [approval] {request.action.summary()} -> approved for this session")
        return ApprovalResponse.new(request.id, ApproveSession())

    def is_available(self) -> bool:
        """Always reachable."""
        return True


@cli.command("demo")
@click.option(
    "--workspace",
    metavar="DIR",
    help="The demo's workspace directory (default <home>/demo-workspace).",
)
@_json_option
@click.pass_context
def demo(ctx: click.Context, workspace: str | None, as_json: bool) -> None:
    """Run a scripted agent session (tool call, approval, sub-agent, summary) and show it."""
    import asyncio

    from .default_plugins.scripted_provider import ScriptedProvider
    from .runtime import AgentRuntime, RuntimeConfig

    loaded = _load(ctx)
    root = Path(workspace) if workspace else loaded.home / "demo-workspace"
    say: Callable[[str], None] = (lambda _text: None) if as_json else click.echo
    with open_store(loaded) as store:
        # After the store: it creates the astrid home private (0700); mkdir would not.
        root.mkdir(parents=True, exist_ok=True)
        (root / "notes.txt").write_text(DEMO_NOTES, encoding="utf-8")
        runtime = AgentRuntime(
            ScriptedProvider(DEMO_SCRIPT),
            store=store,
            config=RuntimeConfig(workspace=root, max_context_tokens=160, keep_recent_count=2),
            approval_handler=_AutoApprove(say),
        )
        session = runtime.create_session("You are a helpful assistant.")
        store.attach_workspace(session, root)
        say(f"demo session {session.id.bare} ({store.backend.name} store, workspace {root})")
        for prompt in DEMO_PROMPTS:
            say(f"> {prompt}")
            result = asyncio.run(runtime.run_turn(session, prompt))
            if result.summarization is not None and result.summarization.messages_evicted:
                say(
                    f"  [summary] {result.summarization.messages_evicted} older messages "
                    "summarized (they stay in the session's history)"
                )
            for record in result.tool_calls:
                outcome = render_message(Message.tool_result(record.result), 70)
                say(f"  [tool] {record.call.name} {outcome}")
            say(f"  {result.text}  (${result.cost_usd:.6f})")
        store.save_workspace_of(session)
        children = [
            row.id for row in _all_summaries(store) if row.parent_id == session.id.bare
        ]
        view = session_view(store, session.id.bare, last=50)
    if as_json:
        _echo_json({"session": view, "children": children})
        return
    for child in children:
        click.echo(f"  [sub-agent] session {child}: astrid sessions show {child}")
    click.echo("")
    print_session(view)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``astrid`` console script."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="astrid")


if __name__ == "__main__":
    main()
