"""``astrid migrate``: copy every session and its state from one store to another."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import load_config
from ..store import SessionStore, open_store
from ..transfer import migrate as migrate_stores
from ._common import EXIT_ERROR, Progress, error

_MIGRATE_EPILOG = """\
Copies each session's state, active messages and history (replaced messages included), every
key-value namespace of the source (the deferred-approval queues, the workspaces' allowances,
budgets and escape paths, and whatever hosts and plugins stored), the persistent capability
tokens, revocations and used markers, and the audit log verbatim (still signed by the key that
sealed it; a target chain that holds other entries is a failure). A source whose key-value
store cannot list its namespaces (a backend without list_namespaces) gets only the namespaces
derived from the sessions and their workspaces copied, and the summary says so.

Resumable: a session already in the target with the same message count and history length is
skipped (a different one is copied again), and so is an audit entry already copied. At the end
the target is checked: every session present with the same message count and every copied
namespace with the same keys; the exit status is 1 on any failure or mismatch. A target whose
backend is not persistent (memory) is refused.
"""


@click.command("migrate", epilog=_MIGRATE_EPILOG)
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
        result = migrate_stores(
            source,
            target,
            batch=batch,
            target_key=SessionStore.backend_key(dst_loaded),
            progress=Progress("migrating sessions"),
        )
    click.echo(
        f"copied {len(result.copied)}, skipped {len(result.skipped)} (already present), "
        f"failed {len(result.failed)}"
        + (f", vanished during the run {len(result.vanished)}" if result.vanished else "")
    )
    listed = result.namespaces_listed
    which = "every namespace the source lists" if listed else "derived namespaces only"
    click.echo(
        f"kv: {result.kv_keys} keys in {result.kv_namespaces} namespaces ({which}); "
        f"capabilities: {result.tokens} tokens, {result.revoked} revoked, {result.used} used; "
        f"audit: {result.audit_entries} entries copied in {result.audit_chains} chain(s)"
    )
    if not result.source_lists_namespaces:
        click.echo(
            f"note: the source's key-value store ({result.source_kv}) cannot list its namespaces "
            "(no list_namespaces): only the deferred-approval queues and workspace state derived "
            "from the sessions were copied; other namespaces were left behind"
        )
    for failure in result.failed + result.mismatches:
        error(failure.message)
    if not result.ok:
        error(
            f"migration incomplete: {len(result.failed)} failed, "
            f"{len(result.mismatches)} mismatches"
        )
        ctx.exit(EXIT_ERROR)
    click.echo(
        f"verified: {result.verified_sessions} sessions, {result.verified_messages} messages"
    )
