"""``astrid doctor``: check the store (``astrid.transfer.check_store``) and print the report."""

from __future__ import annotations

import click

from ..transfer import Problem, StoreReport, check_store
from ._common import EXIT_ERROR, Progress, echo_json, json_option, load, one_line, opts


@click.command(
    "doctor",
    epilog="Each problem is printed as '<location>: <problem>'; the exit status is 1 if any. "
    "With --json the report is always one JSON object, problems included.",
)
@json_option
@click.pass_context
def doctor(ctx: click.Context, as_json: bool) -> None:
    """Check the store: schema version, every session loads, corrupt or stray files, budget
    totals against the spend ledger, and every audit chain."""
    debug = opts(ctx).debug
    try:
        loaded = load(ctx)
    except Exception as exc:
        if not as_json or debug:
            raise
        report = StoreReport(config=None, backend_name=None)
        report.problems.append(Problem(opts(ctx).config or "<config>", one_line(exc)))
        echo_json(report.to_json())
        ctx.exit(EXIT_ERROR)
    report = check_store(loaded, strict=debug, progress=Progress("checking sessions"))
    if as_json:
        echo_json(report.to_json())
    else:
        if report.schema_version is not None:
            click.echo(f"store: {report.backend_name} (schema version {report.schema_version})")
        if report.temp_files_removed:
            click.echo(
                f"removed {report.temp_files_removed} orphaned temporary file(s) of killed writers"
            )
        for problem in report.problems:
            click.echo(str(problem))
        for found in report.notes:
            click.echo(f"note: {found}")
        if report.ledger_rows is None and report.schema_version is not None:
            click.echo("note: the store keeps no spend ledger: budget totals not checked")
        from ..runtime import default_priced_note

        note = default_priced_note(loaded.config)
        if note is not None:
            click.echo(f"note: {note}")
        checked = f"{report.sessions_checked} sessions checked"
        if report.ledger_rows is not None:
            checked += (
                f", {report.totals_checked} budget totals against {report.ledger_rows} "
                "spend-ledger rows"
            )
        if report.audit_entries is not None:
            checked += f", {report.audit_entries} audit entries verified"
        if report.problems:
            click.echo(f"{len(report.problems)} problem(s); {checked}")
        else:
            click.echo(f"ok: {checked}")
    if report.problems:
        ctx.exit(EXIT_ERROR)
