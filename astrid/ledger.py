"""The spend ledger: one row per LLM call, saved in the same atomic write as its session.

The runtime records a ``LedgerRow`` for every metered model call (a turn's call, a sub-agent
turn's call, a summarizer's call) in the session's change set; the store hands the pending rows
to the backend with the session's next save (``SessionWrite.ledger``), which writes them in the
same transaction (or the same file rename). Each row has an id, so a save retried after a
failure never stores a row twice.

Money is exact: costs are ``Decimal`` values, stored and exchanged as decimal text (the shortest
text that reads back as the float the budget tracker charged, e.g. ``"0.000123"``), and summed as
``Decimal``. The budget trackers keep float running totals; ``compare_totals`` checks them
against the ledger within ``TOLERANCE_USD``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

from .errors import SerializationError
from .timeutil import format_rfc3339, parse_rfc3339, to_utc, utcnow

KIND_TURN: Final = "turn"
"""A top-level turn's model call."""
KIND_SUBAGENT_TURN: Final = "subagent_turn"
"""A sub-agent turn's model call (the row's ``parent_session_id`` is the spawning session)."""
KIND_SUMMARIZER: Final = "summarizer"
"""A summarizer's ``complete_simple`` call (auto-summarization or ``compact``)."""
KINDS: Final = frozenset({KIND_TURN, KIND_SUBAGENT_TURN, KIND_SUMMARIZER})

GroupBy = Literal["session", "workspace", "model", "day"]
GROUPS: Final[tuple[GroupBy, ...]] = ("session", "workspace", "model", "day")

TOLERANCE_USD: Final = Decimal("0.000001")
"""How far a running budget total may be from the sum of its ledger rows (one micro-dollar):
the trackers add floats, whose rounding stays far below it."""

ZERO: Final = Decimal(0)


def usd(value: float | Decimal | str) -> Decimal:
    """An exact USD amount: a float as the shortest decimal that reads back as it."""
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, str):
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"not a decimal amount of USD: {value!r}") from None
    else:
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"not a finite amount of USD: {value!r}")
        amount = Decimal(repr(number))
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"not a finite, non-negative amount of USD: {value!r}")
    return amount + 0  # -0 reads as 0


def usd_text(amount: Decimal) -> str:
    """Decimal text of an amount without exponent (``1E-7`` is written ``0.0000001``)."""
    return format(amount, "f")


def new_row_id() -> str:
    """A fresh row id (a random UUID)."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One LLM call as it was charged.

    ``workspace`` is the session's workspace key (None without one); ``workspace_charged``
    says whether the call was charged to that workspace's budget too. ``reserved_usd`` is what
    was reserved before the call, ``cost_usd`` what was settled (the reservation itself when
    ``usage_reported`` is False). ``at`` is when the call was settled (UTC).
    """

    id: str
    session_id: str
    parent_session_id: str | None
    workspace: str | None
    workspace_charged: bool
    model: str
    provider: str
    kind: str
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    usage_reported: bool
    reserved_usd: Decimal
    cost_usd: Decimal
    at: datetime = field(default_factory=utcnow)

    def to_data(self) -> dict[str, Any]:
        """JSON-ready data (amounts as decimal text, the time as RFC 3339 UTC)."""
        return {
            "id": self.id,
            "session_id": self.session_id,
            "parent_session_id": self.parent_session_id,
            "workspace": self.workspace,
            "workspace_charged": self.workspace_charged,
            "model": self.model,
            "provider": self.provider,
            "kind": self.kind,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "usage_reported": self.usage_reported,
            "reserved_usd": usd_text(self.reserved_usd),
            "cost_usd": usd_text(self.cost_usd),
            "at": format_rfc3339(self.at),
        }

    @classmethod
    def from_data(cls, data: Any, where: str) -> LedgerRow:
        """A row from ``to_data`` output; ``SerializationError`` naming ``where`` if it is not."""
        if not isinstance(data, Mapping):
            raise SerializationError(f"{where}: a ledger row must be a JSON object")

        def text(key: str, optional: bool = False) -> Any:
            value = data.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str) or not value:
                raise SerializationError(f"{where}: ledger row key {key!r} must be a string")
            return value

        def count(key: str) -> int:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SerializationError(
                    f"{where}: ledger row key {key!r} must be a non-negative integer"
                )
            return value

        def flag(key: str) -> bool:
            value = data.get(key)
            if not isinstance(value, bool):
                raise SerializationError(f"{where}: ledger row key {key!r} must be a boolean")
            return value

        def amount(key: str) -> Decimal:
            try:
                return usd(text(key))
            except ValueError as exc:
                raise SerializationError(f"{where}: ledger row key {key!r}: {exc}") from None

        kind = text("kind")
        if kind not in KINDS:
            raise SerializationError(
                f"{where}: ledger row kind {kind!r} is not one of {', '.join(sorted(KINDS))}"
            )
        try:
            at = parse_rfc3339(text("at"))
        except ValueError as exc:
            raise SerializationError(f"{where}: ledger row key 'at': {exc}") from None
        if not isinstance(at, datetime):
            raise SerializationError(f"{where}: ledger row key 'at' must be an RFC 3339 time")
        return cls(
            id=text("id"),
            session_id=text("session_id"),
            parent_session_id=text("parent_session_id", optional=True),
            workspace=text("workspace", optional=True),
            workspace_charged=flag("workspace_charged"),
            model=text("model"),
            provider=text("provider"),
            kind=kind,
            input_tokens=count("input_tokens"),
            output_tokens=count("output_tokens"),
            cache_read_tokens=count("cache_read_tokens"),
            cache_write_tokens=count("cache_write_tokens"),
            reasoning_tokens=count("reasoning_tokens"),
            usage_reported=flag("usage_reported"),
            reserved_usd=amount("reserved_usd"),
            cost_usd=amount("cost_usd"),
            at=to_utc(at),
        )


def matches(
    row: LedgerRow,
    *,
    session_id: str | None = None,
    workspace: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> bool:
    """True if ``row`` passes the listing filters (``since`` inclusive, ``until`` exclusive)."""
    return (
        (session_id is None or row.session_id == session_id)
        and (workspace is None or row.workspace == workspace)
        and (since is None or row.at >= since)
        and (until is None or row.at < until)
    )


def sort_rows(rows: Iterable[LedgerRow]) -> list[LedgerRow]:
    """Rows in the listing order every backend returns: by time, then id."""
    return sorted(rows, key=lambda r: (r.at, r.id))


@dataclass
class LedgerTotals:
    """The calls, tokens and cost of one group of ledger rows (``key``: the group's value)."""

    key: str | None
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    unreported: int = 0
    """Calls whose provider reported no usage (charged their reservation)."""
    reserved_usd: Decimal = ZERO
    cost_usd: Decimal = ZERO

    def add(self, row: LedgerRow) -> None:
        """Count one more row."""
        self.calls += 1
        self.input_tokens += row.input_tokens
        self.output_tokens += row.output_tokens
        self.cache_read_tokens += row.cache_read_tokens
        self.cache_write_tokens += row.cache_write_tokens
        self.reasoning_tokens += row.reasoning_tokens
        self.unreported += 0 if row.usage_reported else 1
        self.reserved_usd += row.reserved_usd
        self.cost_usd += row.cost_usd

    def to_json(self) -> dict[str, Any]:
        """JSON data with the amounts as exact decimal text."""
        return {
            "key": self.key,
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "usage_not_reported": self.unreported,
            "reserved_usd": usd_text(self.reserved_usd),
            "cost_usd": usd_text(self.cost_usd),
        }


def group_key(row: LedgerRow, by: GroupBy) -> str | None:
    """The value of ``row`` that ``by`` groups on (a day is the UTC date, ``YYYY-MM-DD``)."""
    if by == "session":
        return row.session_id
    if by == "workspace":
        return row.workspace
    if by == "model":
        return row.model
    return row.at.date().isoformat()


def aggregate(rows: Iterable[LedgerRow], by: GroupBy | None) -> list[LedgerTotals]:
    """Totals per group (``by`` None: one group of every row, key None), by key; a
    group of rows without the key (no workspace) sorts first."""
    groups: dict[str | None, LedgerTotals] = {}
    for row in rows:
        key = group_key(row, by) if by is not None else None
        totals = groups.get(key)
        if totals is None:
            totals = groups[key] = LedgerTotals(key)
        totals.add(row)
    if by is None and not groups:
        groups[None] = LedgerTotals(None)
    return sorted(groups.values(), key=lambda t: (t.key is not None, t.key or ""))


# -- checking the running totals (astrid doctor) ----------------------------------------------


@dataclass(frozen=True)
class TotalCheck:
    """One running total compared with its ledger rows.

    ``status``: ``ok`` (equal within ``TOLERANCE_USD``), ``differs`` (a problem),
    ``unledgered`` (a positive total and no row at all: spent before the ledger existed, or
    through a store or an astrid without one; reported, not checked).
    """

    what: Literal["session", "workspace"]
    key: str
    total_usd: Decimal
    ledger_usd: Decimal
    rows: int
    status: Literal["ok", "differs", "unledgered"]

    def describe(self) -> str:
        """One line saying what was found."""
        if self.status == "unledgered":
            return (
                f"{self.what} budget total ${usd_text(self.total_usd)} has no spend-ledger "
                "rows: it was spent before the ledger existed (or through a store without "
                "one); not checked"
            )
        diff = self.total_usd - self.ledger_usd
        return (
            f"{self.what} budget total ${usd_text(self.total_usd)} but its {self.rows} "
            f"spend-ledger row(s) sum to ${usd_text(self.ledger_usd)} "
            f"({'+' if diff > 0 else ''}{usd_text(diff)} USD: spent before the ledger "
            "existed, charged outside the runtime, or rows lost)"
            if self.status == "differs"
            else f"{self.what} budget total ${usd_text(self.total_usd)} matches its "
            f"{self.rows} spend-ledger row(s)"
        )


def _check(
    what: Literal["session", "workspace"], key: str, total: float, rows: Sequence[LedgerRow]
) -> TotalCheck:
    total_usd = usd(total)
    ledger_usd = sum((r.cost_usd for r in rows), ZERO)
    if not rows and total_usd > TOLERANCE_USD:
        status: Literal["ok", "differs", "unledgered"] = "unledgered"
    elif abs(total_usd - ledger_usd) <= TOLERANCE_USD:
        status = "ok"
    else:
        status = "differs"
    return TotalCheck(what, key, total_usd, ledger_usd, len(rows), status)


def compare_totals(
    sessions: Mapping[str, tuple[str | None, float]],
    workspaces: Mapping[str, float],
    rows: Iterable[LedgerRow],
) -> list[TotalCheck]:
    """Check each running total against the sum of its ledger rows.

    ``sessions``: session id → (parent id, its saved budget total). A sub-agent shares its
    parent's budget tracker, so a top-level session's total is checked against the rows of
    itself and every session below it; a sub-agent's own saved total (a snapshot of the shared
    tracker) is not checked. ``workspaces``: workspace key → its stored budget total, checked
    against the rows that charged that workspace.
    """
    all_rows = list(rows)

    def root_of(sid: str) -> str:
        """The topmost stored session above ``sid`` (a cycle stops where it closes)."""
        seen = {sid}
        current = sid
        parent = sessions[current][0]
        while parent is not None and parent in sessions and parent not in seen:
            seen.add(parent)
            current = parent
            parent = sessions[current][0]
        return current

    tree: dict[str, list[LedgerRow]] = {}
    for row in all_rows:
        if row.session_id in sessions:
            start = row.session_id
        elif row.parent_session_id is not None and row.parent_session_id in sessions:
            start = row.parent_session_id  # a deleted sub-agent's rows
        else:
            continue  # a deleted session's rows: checked with its workspace only
        tree.setdefault(root_of(start), []).append(row)
    checks = [
        _check("session", sid, total, sort_rows(tree.get(sid, ())))
        for sid, (parent, total) in sorted(sessions.items())
        if parent is None or parent not in sessions
    ]
    charged: dict[str, list[LedgerRow]] = {}
    for row in all_rows:
        if row.workspace_charged and row.workspace is not None:
            charged.setdefault(row.workspace, []).append(row)
    checks += [
        _check("workspace", ws, total, charged.get(ws, ()))
        for ws, total in sorted(workspaces.items())
    ]
    return checks


__all__ = [
    "GROUPS",
    "KINDS",
    "KIND_SUBAGENT_TURN",
    "KIND_SUMMARIZER",
    "KIND_TURN",
    "TOLERANCE_USD",
    "GroupBy",
    "LedgerRow",
    "LedgerTotals",
    "TotalCheck",
    "aggregate",
    "compare_totals",
    "group_key",
    "matches",
    "new_row_id",
    "sort_rows",
    "usd",
    "usd_text",
]
