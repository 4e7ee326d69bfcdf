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
    """Write a datetime the way chrono writes ``DateTime<Utc>``: UTC with a ``Z`` suffix."""
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
