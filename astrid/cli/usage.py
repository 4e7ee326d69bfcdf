"""``astrid usage``: what the LLM calls cost, from the store's spend ledger (``astrid.ledger``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

import click

from ..ledger import GROUPS, GroupBy, LedgerTotals
from ..money import money
from ..timeutil import to_utc, utcnow
from ._common import echo_json, json_option, resolve_session_id, store_of, table
from .sessions import parse_duration


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``7d``, ``24h``, ``90m`` (before ``now``) or an ISO date / date-time (UTC unless it says
    otherwise) as an aware UTC datetime; ``ValueError`` naming the text otherwise."""
    spec = text.strip()
    try:
        return to_utc(now or utcnow()) - parse_duration(spec)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(spec.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"invalid --since {text!r}: use a relative time (7d, 24h, 90m) or an ISO date or "
            "date-time (2026-12-01, 2026-12-01T09:30, 2026-12-01T09:30+01:00)"
        ) from None
    return to_utc(moment)


class _Since(click.ParamType[datetime, Any]):
    name = "WHEN"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_since(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _text_rows(totals: list[LedgerTotals], by: str | None) -> list[list[str]]:
    rows = []
    for t in totals:
        key = t.key if t.key is not None else ("(none)" if by is not None else "all")
        rows.append(
            [
                key,
                str(t.calls),
                str(t.input_tokens),
                str(t.output_tokens),
                str(t.cache_read_tokens + t.cache_write_tokens),
                str(t.reasoning_tokens),
                money(t.cost_usd),
            ]
        )
    return rows


@click.command(
    "usage",
    epilog="Costs are exact sums of the ledger rows (one per LLM call: turns, sub-agent "
    "turns, summaries). JSON carries them as decimal strings.",
)
@click.option(
    "--by",
    "by",
    type=click.Choice(GROUPS),
    default=None,
    help="One line per session, workspace, model or UTC day (default: one total).",
)
@click.option(
    "--since",
    "since",
    type=_Since(),
    default=None,
    help="Only calls from then on: 7d, 24h, 90m, or an ISO date / date-time (UTC).",
)
@click.option("--session", "session_ref", metavar="ID", help="Only this session (a prefix).")
@json_option
@click.pass_context
def usage(
    ctx: click.Context,
    by: str | None,
    since: datetime | None,
    session_ref: str | None,
    as_json: bool,
) -> None:
    """Show the calls, tokens and cost recorded in the spend ledger."""
    with store_of(ctx) as store:
        sid = resolve_session_id(store, session_ref) if session_ref is not None else None
        totals = store.usage(by=cast("GroupBy | None", by), since=since, session_id=sid)
    if as_json:
        echo_json(
            {
                "by": by,
                "since": since.isoformat() if since is not None else None,
                "session": sid,
                "groups": [t.to_json() for t in totals],
                "total": _grand(totals).to_json(),
            }
        )
        return
    headers = [by or "", "calls", "input", "output", "cache", "reasoning", "cost"]
    rows = _text_rows(totals, by)
    if by is not None and len(totals) > 1:
        rows.append(_text_rows([_grand(totals)], None)[0])
        rows[-1][0] = "total"
    click.echo(table(headers, rows, right=range(1, 7)))
    unreported = sum(t.unreported for t in totals)
    if unreported:
        click.echo(
            f"{unreported} call(s) had no usage reported by the provider: charged their "
            "reservation"
        )


def _grand(totals: list[LedgerTotals]) -> LedgerTotals:
    """Every group added up."""
    out = LedgerTotals(None)
    for t in totals:
        out.calls += t.calls
        out.input_tokens += t.input_tokens
        out.output_tokens += t.output_tokens
        out.cache_read_tokens += t.cache_read_tokens
        out.cache_write_tokens += t.cache_write_tokens
        out.reasoning_tokens += t.reasoning_tokens
        out.unreported += t.unreported
        out.reserved_usd += t.reserved_usd
        out.cost_usd += t.cost_usd
    return out


__all__ = ["parse_since", "usage"]
