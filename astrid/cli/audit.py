"""``astrid audit``: list the stored security decisions and verify their hash chains and
signatures (``astrid.security.audit``)."""

from __future__ import annotations

import click

from ..security.audit import runtime_keys
from ..security.audit import verify as verify_chain
from ._common import (
    EXIT_ERROR,
    echo_json,
    json_option,
    load,
    reading_store_of,
    resolve_session_id,
    table,
)


@click.group("audit")
def audit() -> None:
    """List and verify the audit log of security decisions."""


@audit.command("list")
@click.option("--session", "session_ref", metavar="ID", help="Only this session (a prefix).")
@json_option
@click.pass_context
def list_entries(ctx: click.Context, session_ref: str | None, as_json: bool) -> None:
    """List the stored audit entries, by workspace chain and sequence."""
    with reading_store_of(ctx) as store:
        sid = resolve_session_id(store, session_ref) if session_ref is not None else None
        records = store.list_audit(session_id=sid)
    if as_json:
        echo_json([r.to_data() for r in records])
        return
    rows = []
    for r in records:
        d = r.data
        rows.append(
            [str(r.seq), r.at, r.session_id[:8], str(d.get("actor")), str(d.get("action_type")),
             str(d.get("decision")), str(d.get("action"))[:60]]
        )
    click.echo(table(["#", "at", "session", "actor", "kind", "decision", "action"], rows))


@audit.command("verify")
@click.pass_context
def verify(ctx: click.Context) -> None:
    """Check every chain: hashes, order and signatures by the runtime key."""
    trusted = runtime_keys(load(ctx).home)
    with reading_store_of(ctx) as store:
        records = store.list_audit()
    problems = verify_chain(records, trusted)
    for problem in problems:
        click.echo(problem.describe(), err=True)
    if problems:
        ctx.exit(EXIT_ERROR)
    chains = len({r.chain for r in records})
    signer = "the runtime key" if trusted else "their own keys (no runtime key found)"
    click.echo(f"{len(records)} audit entries in {chains} chain(s) verify, signed by {signer}")


__all__ = ["audit"]
