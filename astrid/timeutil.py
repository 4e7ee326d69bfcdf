"""UTC timestamps in the original's JSON form (RFC 3339, ``Z`` suffix)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """Make a datetime aware and UTC (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def format_rfc3339(value: datetime) -> str:
    """Write a datetime the way chrono writes ``DateTime<Utc>``: UTC with a ``Z`` suffix.

    Naive values are taken as UTC. ``isoformat`` gives the same text as the ``strftime`` form
    (:func:`_format_rfc3339_strftime`) several times faster, except for years before 1000,
    which ``strftime`` does not zero-pad.
    """
    tz = value.tzinfo
    if tz is not None and tz is not UTC:
        value = value.astimezone(UTC)
    if value.year < 1000:
        return _format_rfc3339_strftime(value)
    if tz is None:
        return value.isoformat() + "Z"
    return value.isoformat()[:-6] + "Z"  # drop "+00:00"


def _format_rfc3339_strftime(value: datetime) -> str:
    """The reference form of :func:`format_rfc3339` (and its output for years before 1000)."""
    value = to_utc(value)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    return text + "Z"


def parse_rfc3339(value: Any) -> Any:
    """Accept RFC 3339 with any offset and up to nine fractional digits; return UTC."""
    if isinstance(value, datetime):
        return to_utc(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        if "." in text:
            head, _, rest = text.partition(".")
            digits = ""
            for ch in rest:
                if ch.isdigit():
                    digits += ch
                else:
                    break
            tail = rest[len(digits) :]
            text = f"{head}.{(digits + '000000')[:6]}{tail}" if digits else head + tail
        try:
            return to_utc(datetime.fromisoformat(text))
        except ValueError as exc:
            raise ValueError(f"invalid RFC 3339 timestamp {value!r}") from exc
    return value


Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_rfc3339),
    PlainSerializer(format_rfc3339, return_type=str, when_used="json"),
]
"""A UTC datetime field that reads any RFC 3339 offset and writes ``...Z``."""
