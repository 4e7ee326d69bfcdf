"""``astrid sessions``: list, show, export, import, delete and prune stored sessions."""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import click

from ..errors import AstridError
from ..fsutil import atomic_text_file
from ..ids import validate_session_id
from ..messages import ImagePart, Message, MessageRole, OpaqueContent, ToolCallResult
from ..store import SessionStore, SessionSummary, workspace_key
from ..timeutil import format_rfc3339, parse_rfc3339, utcnow
from ..transfer import export_sessions, import_sessions
from ._common import (
    EXIT_ERROR,
    EXIT_USAGE,
    Progress,
    clip,
    compact,
    echo_json,
    error,
    json_option,
    money,
    money_json,
    one_line,
    reading_store_of,
    resolve_session_id,
    store_of,
    table,
    time_text,
)


@click.group()
def sessions() -> None:
    """List, show, export, import, delete and prune stored sessions."""


# -- formatting ----------------------------------------------------------------------------


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
        text = "; ".join(f"-> {c.name} {compact(c.arguments)}" for c in calls) or "-> (no calls)"
    elif isinstance(content, ToolCallResult):
        flag = " (error)" if content.is_error else ""
        text = f"<- {content.call_id}{flag}: {content.content}"
    elif isinstance(content, OpaqueContent):
        text = f"(unrecognised content) {compact(content.value)}"
    else:
        parts = []
        for part in content:
            if isinstance(part, ImagePart):
                parts.append(f"[image {part.media_type}, {len(part.data)} base64 chars]")
            else:
                parts.append(getattr(part, "text", ""))
        text = " ".join(parts)
    return clip(text, width)


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


# -- list ----------------------------------------------------------------------------------


@sessions.command("list")
@click.option("--workspace", metavar="PATH", help="Only sessions of this workspace directory.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--tree", is_flag=True, help="Every session, forks indented under their source.")
@json_option
@click.pass_context
def sessions_list(
    ctx: click.Context,
    workspace: str | None,
    limit: int,
    offset: int,
    tree: bool,
    as_json: bool,
) -> None:
    """List sessions, newest activity first, one page at a time.

    Each listed session's document (all but its messages) is loaded to check it: a row that
    cannot load is flagged, in the table and as ``load_error`` in ``--json``. ``--tree`` lists
    every session (no pages), each fork under the session it was forked from.
    """
    if tree:
        _list_tree(ctx, workspace, as_json)
        return
    with reading_store_of(ctx) as store:
        total = store.count(workspace=workspace)
        rows = store.list_sessions(workspace=workspace, limit=limit, offset=offset)
        unreadable = len(store.problems())
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
        echo_json(
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
    cells = [
        [
            r.id,
            time_text(r.updated_at),
            str(r.message_count),
            str(r.token_count),
            "! cannot be loaded" if r.id in errors else clip(r.display_title(), 40),
            r.workspace_path or "-",
        ]
        for r in rows
    ]
    click.echo(
        table(("id", "updated", "messages", "tokens", "title", "workspace"), cells, right=(2, 3))
    )
    shown = f"{offset + 1}-{offset + len(rows)} of {total}"
    more = f"; next page: --offset {offset + len(rows)}" if offset + len(rows) < total else ""
    click.echo(f"\n{shown}{more}")


def _fork_link(store: SessionStore, row: SessionSummary) -> tuple[str, int] | None:
    """(source id, fork point) of a listed session, or None (not a fork, or unreadable)."""
    from ..forks import fork_of

    try:
        record = store.load_record(row.id, tail=0)
    except AstridError:
        return None
    return None if record is None else fork_of(record.state.get("metadata"))


def _list_tree(ctx: click.Context, workspace: str | None, as_json: bool) -> None:
    """``sessions list --tree``: every session, forks indented under their source."""
    with reading_store_of(ctx) as store:
        rows = [
            r for r in store.all_sessions()
            if workspace is None or r.workspace_path == workspace_key(workspace)
        ]
        links = {r.id: link for r in rows if (link := _fork_link(store, r)) is not None}
    listed = {r.id for r in rows}
    children: dict[str | None, list[SessionSummary]] = {}
    for r in rows:
        source = links[r.id][0] if r.id in links else None
        children.setdefault(source if source in listed else None, []).append(r)
    if as_json:
        echo_json({"sessions": [
            {**_summary_json(r), "forked_from": links[r.id][0] if r.id in links else None,
             "fork_point": links[r.id][1] if r.id in links else None}
            for r in rows
        ]})
        return
    if not rows:
        click.echo("no sessions")
        return
    seen: set[str] = set()

    def show(row: SessionSummary, depth: int) -> None:
        if row.id in seen:  # a cycle (hand-edited metadata) is printed once
            return
        seen.add(row.id)
        link = links.get(row.id)
        fork = f"  (fork of {link[0][:8]} at {link[1]})" if link else ""
        indent = "  " * depth + ("└─ " if depth else "")
        click.echo(f"{indent}{row.id}  {row.message_count} msgs  "
                   f"{clip(row.display_title(), 40)}{fork}")
        for child in children.get(row.id, []):
            show(child, depth + 1)

    for root in children.get(None, []):
        show(root, 0)


def _load_problem(store: SessionStore, row: SessionSummary) -> str | None:
    """Why a listed session's document cannot load, or None; its messages are not read.

    One state-only load per listed row (on SQLite: the session's row only, ~0.1 ms), so a page
    costs the same at any number of sessions; ``doctor`` loads every session in full.
    """
    try:
        record = store.load_record(row.id, tail=0)
        if record is None:
            return f"{store.describe(row.id)}: listed but not found"
        store.decode_record(row.id, record)
    except AstridError as exc:
        return one_line(exc)
    return None


# -- show ----------------------------------------------------------------------------------


def session_view(store: SessionStore, session_id: str, last: int = 20) -> dict[str, Any]:
    """What ``sessions show`` prints, as JSON-ready data (``last`` messages included)."""
    sid = validate_session_id(session_id)
    record = store.load_record(sid, tail=last)  # a long session's other messages stay unread
    if record is None:
        raise store.not_found(sid)
    doc = store.decode_record(sid, record)
    total = record.message_count
    start = total - len(doc.messages)
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
                "spent_usd": money_json(state.budget.total_spent_usd) if state.budget else None,
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
        "history_count": store.history_count(doc.id),
        "token_count": doc.token_count,
        "metadata": doc.metadata.model_dump(mode="json"),
        "budget": (
            {
                "spent_usd": money_json(budget.session_spent_usd),
                "limit_usd": money_json(budget.config.session_max_usd),
                "per_action_max_usd": money_json(budget.config.per_action_max_usd),
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
            for i, m in enumerate(doc.messages)
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
    field("created", time_text(parse_rfc3339(view["created_at"])))
    field(
        "updated", f"{time_text(parse_rfc3339(view['updated_at']))} (revision {view['revision']})"
    )
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
        f"{money(budget['spent_usd'])} spent of {money(budget['limit_usd'])} "
        f"(per action max {money(budget['per_action_max_usd'])}, "
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
            limits.append(f"expires {time_text(parse_rfc3339(a['expires_at']))}")
        item(a["pattern"] + (f" ({', '.join(limits)})" if limits else ""))
    field("escape paths", str(len(view["escape_paths"])))
    for path in view["escape_paths"]:
        item(path)
    ws = view["workspace"]
    if ws is not None and "error" in ws:
        field("workspace state", f"unreadable: {ws['error']}")
    elif ws is not None:
        spent = f"{money(ws['spent_usd'])} spent" if ws["spent_usd"] is not None else "no spend"
        field(
            "workspace state",
            f"{len(ws['allowances'])} allowances, {spent}, {len(ws['escape_paths'])} escape paths",
        )
    field("system prompt", clip(view["system_prompt"], 90) or "-")
    shown = view["messages"]
    lines.append("")
    if shown:
        lines.append(f"messages (last {len(shown)} of {view['message_count']}):")
        cells = [[str(m["index"]), m["role"], m["summary"]] for m in shown]
        rendered = table(("#", "role", "content"), cells, right=(0,))
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
@json_option
@click.pass_context
def sessions_show(ctx: click.Context, session_id: str, last: int, as_json: bool) -> None:
    """Show a session: messages, metadata, budget, allowances, escape paths, git, parent.

    ID is a session id or a unique prefix of it (at least 6 hex digits).
    """
    with reading_store_of(ctx) as store:
        view = session_view(store, resolve_session_id(store, session_id), last)
    if as_json:
        echo_json(view)
    else:
        print_session(view)


# -- export --------------------------------------------------------------------------------


@contextlib.contextmanager
def _output(path: str) -> Iterator[Callable[[str], None]]:
    """A writer to stdout (``-``) or to FILE. FILE appears whole (0600) when the export ends,
    or not at all when it stops early, an existing FILE untouched; a refusal before the first
    write leaves no file at all."""
    if path == "-":
        yield lambda text: click.echo(text, nl=False)
        return
    with contextlib.ExitStack() as stack:
        opened: list[IO[str]] = []

        def write(text: str) -> None:
            if not opened:
                opened.append(stack.enter_context(atomic_text_file(Path(path))))
            opened[0].write(text)

        yield write


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
    ctx: click.Context, session_ids: tuple[str, ...], export_all: bool, fmt: Any, output: str
) -> None:
    """Export sessions as the original's documents, with their security state.

    Each ID is a session id or a unique prefix of it (at least 6 hex digits).
    """
    if bool(session_ids) == export_all:
        raise click.UsageError("give one or more session IDs, or --all (not both)")
    # a progress bar for --all, unless it would garble the documents on the same terminal
    bar = Progress("exporting sessions") if export_all and not (
        output == "-" and sys.stdout.isatty()
    ) else None
    with reading_store_of(ctx) as store:
        ids = None if export_all else [resolve_session_id(store, s) for s in session_ids]
        with _output(output) as write:
            result = export_sessions(store, write, ids, fmt=fmt, progress=bar)
    for failure in result.failed:
        error(failure.message)
    where = f" to {output}" if output != "-" else ""
    click.echo(f"exported {len(result.exported)} session(s){where}", err=True)
    if result.failed:
        error(f"{len(result.failed)} session(s) could not be exported")
        ctx.exit(EXIT_ERROR)


# -- import --------------------------------------------------------------------------------


_IMPORT_EPILOG = """\
FILE is one document, a JSON array of documents, JSON Lines (one document per line), or a
directory of <uuid>.json files such as the Rust astrid's ~/.astrid/sessions (its other files
are not read; each is named on an "ignored" line). A session that
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
def sessions_import(ctx: click.Context, source: str, fmt: Any, overwrite: bool) -> None:
    """Import the original's session documents (a file, JSON Lines, or a sessions directory)."""
    with store_of(ctx) as store:
        result = import_sessions(
            store, source, fmt=fmt, overwrite=overwrite, progress=Progress("importing sessions")
        )
    for failure in result.failed:
        error(failure.message)
    for path in result.ignored:
        click.echo(f"ignored {path}: not named <uuid>.json, not read")
    for skipped in result.skipped:
        click.echo(
            f"skipped {skipped.location}: session {skipped.session_id} already exists "
            "(use --overwrite to replace it)"
        )
    click.echo(
        f"imported {len(result.imported)}, replaced {len(result.replaced)}, "
        f"skipped {len(result.skipped)}, failed {len(result.failed)}"
        + (f", ignored {len(result.ignored)} other file(s)" if result.ignored else "")
    )
    if result.failed:
        ctx.exit(EXIT_ERROR)


# -- delete and prune ----------------------------------------------------------------------


def _confirm(ctx: click.Context, question: str, refused: str) -> None:
    """Ask ``question`` on stderr (or read the piped answer); anything but yes, end of input
    included, is one error line saying ``refused``, and exit status 1."""
    try:
        answered = click.confirm(question, err=True)
    except click.Abort:  # end of input, or Ctrl-C at the prompt
        click.echo(err=True)
        answered = False
    if not answered:
        error(f"{refused} (--yes deletes without asking)")
        ctx.exit(EXIT_ERROR)


@sessions.command("delete")
@click.argument("session_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def sessions_delete(ctx: click.Context, session_id: str, yes: bool) -> None:
    """Delete a session and its message history.

    ID is a session id or a unique prefix of it (at least 6 hex digits). Asks first (the answer
    is read from standard input); any answer but yes, or none, deletes nothing (exit 1).
    """
    with store_of(ctx) as store:
        sid = resolve_session_id(store, session_id)
        if not yes:
            try:
                record = store.load_record(sid, tail=0)
            except AstridError as exc:  # a corrupt session can still be deleted
                what = f"unreadable: {one_line(exc)}"
            else:
                if record is None:
                    raise store.not_found(sid)
                meta = record.state.get("metadata")
                title = meta.get("title") if isinstance(meta, dict) else None
                what = f"{title or 'Session ' + sid[:8]}, {record.message_count} messages"
            _confirm(ctx, f"Delete session {sid} ({what})?", f"session {sid} not deleted")
        if not store.delete(sid):
            raise store.not_found(sid)
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
@click.option("--dry-run", is_flag=True, help="Only count (or list) what would be deleted.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--verbose", "-v", is_flag=True, help="List the id of every session.")
@json_option
@click.pass_context
def sessions_prune(
    ctx: click.Context,
    older_than: timedelta,
    dry_run: bool,
    yes: bool,
    verbose: bool,
    as_json: bool,
) -> None:
    """Delete sessions by last activity, after a confirmation (--yes skips it; without a
    terminal it is required). With --dry-run, only count them."""
    if not (dry_run or yes or sys.stdin.isatty()):
        error("sessions prune deletes without asking only with --yes (standard input is not "
              "a terminal); --dry-run counts what it would delete")
        ctx.exit(EXIT_USAGE)
    now = utcnow()
    cutoff = now - older_than
    with store_of(ctx) as store:
        if not (dry_run or yes):
            count = len(store.prune(older_than=older_than, dry_run=True, now=now))
            if count:
                _confirm(
                    ctx,
                    f"Delete {count} session(s) inactive since before {time_text(cutoff)}?",
                    "nothing deleted",
                )
        ids = store.prune(
            older_than=older_than,
            dry_run=dry_run,
            now=now,
            progress=Progress("deleting sessions"),
        )
    if as_json:
        echo_json({"dry_run": dry_run, "cutoff": format_rfc3339(cutoff), "sessions": ids})
        return
    verb = "would delete" if dry_run else "deleted"
    hint = "" if verbose or not ids else " (--verbose lists them)"
    click.echo(f"{verb} {len(ids)} session(s) inactive since before {time_text(cutoff)}{hint}")
    for sid in ids if verbose else ():
        click.echo(f"  {sid}")


# -- rekey ---------------------------------------------------------------------------------


@sessions.command("rekey")
@click.option("--new-key-env", metavar="VAR", help="Environment variable holding the new key.")
@click.option("--new-key-file", metavar="PATH", help="File (mode 0600) holding the new key.")
@click.pass_context
def sessions_rekey(ctx: click.Context, new_key_env: str | None, new_key_file: str | None) -> None:
    """Re-encrypt every session of an ``encrypted`` store under a new key.

    Run it with no other process writing; then point key_env or key_file at the new key.
    """
    from ..default_plugins.encrypted_storage import read_key, rekey_store

    if (new_key_env is None) == (new_key_file is None):
        error("sessions rekey: give exactly one of --new-key-env and --new-key-file")
        ctx.exit(EXIT_USAGE)
    new_key = read_key(new_key_env, new_key_file)
    with store_of(ctx) as store:
        old_id, new_id, count = rekey_store(
            store, new_key, progress=Progress("re-encrypting sessions")
        )
    click.echo(f"re-encrypted {count} session(s) from key {old_id} to key {new_id}; "
               "now set [storage.options] key_env or key_file to the new key")


# -- fork ----------------------------------------------------------------------------------


@sessions.command("fork")
@click.argument("session_id", metavar="ID")
@click.option("--at", type=click.IntRange(min=0), default=None,
              help="Fork after this many messages (default: all).")
@json_option
@click.pass_context
def sessions_fork(ctx: click.Context, session_id: str, at: int | None, as_json: bool) -> None:
    """Make a new session starting with the first N messages of ID and its security state as
    of then (see docs/concepts.md, "Forks"). ID may be a unique prefix."""
    from ..forks import FORK_STATE

    with store_of(ctx) as store:
        sid = resolve_session_id(store, session_id)
        fork = store.fork(sid, at=at)
    point = len(fork.messages)
    how = (fork.metadata.model_extra or {}).get(FORK_STATE)
    if as_json:
        echo_json({"id": fork.id.bare, "forked_from": sid, "fork_point": point,
                   "fork_state": how})
        return
    click.echo(f"forked {sid} at message {point} into {fork.id.bare} (security state: {how})")
