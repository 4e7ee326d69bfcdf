"""UTC timestamps in the original's JSON form (RFC 3339, ``Z`` suffix)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, SupportsIndex

from pydantic import BeforeValidator, PlainSerializer


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """Make a datetime aware and UTC (naive values are taken as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class StoredTime(datetime):
    """A UTC datetime read from stored text, which it keeps (``text``) so that an unchanged value
    is written back exactly as it was read: nine fractional digits, ``.5``, an offset.

    Any derived value (``replace``, arithmetic, ``astimezone`` to another zone) has no text and is
    formatted afresh. Copies and pickles keep the text.
    """

    __slots__ = ("text",)
    text: str

    @classmethod
    def read(cls, value: datetime, text: str) -> StoredTime:
        """``value`` (UTC) remembering the ``text`` it was parsed from."""
        stored = cls(
            value.year,
            value.month,
            value.day,
            value.hour,
            value.minute,
            value.second,
            value.microsecond,
            value.tzinfo,
            fold=value.fold,
        )
        stored.text = text
        return stored

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[Any, ...]:
        state = datetime.__reduce_ex__(self, protocol)[1]
        return (_stored_time, (state, getattr(self, "text", None)))


def _stored_time(state: tuple[Any, ...], text: str | None) -> datetime:
    """Unpickle a ``StoredTime``: its datetime state, then its text."""
    value = datetime(*state)
    return StoredTime.read(value, text) if text is not None else value


def format_rfc3339(value: datetime) -> str:
    """Write a datetime the way chrono writes ``DateTime<Utc>``: UTC with a ``Z`` suffix.

    Naive values are taken as UTC; years below 1000 get four digits (``0999-...``), which
    ``parse_rfc3339`` reads back. A ``StoredTime`` gives back the text it was read from.
    ``isoformat`` gives the same text as the ``strftime`` form
    (:func:`_format_rfc3339_strftime`) several times faster.
    """
    if type(value) is StoredTime:
        text: str | None = getattr(value, "text", None)
        if text is not None:
            return text
    tz = value.tzinfo
    if tz is not None and tz is not UTC:
        value = value.astimezone(UTC)
    if tz is None:
        return value.isoformat() + "Z"
    return value.isoformat()[:-6] + "Z"  # drop "+00:00"


def _format_rfc3339_strftime(value: datetime) -> str:
    """The reference form of :func:`format_rfc3339` (``%Y`` is not zero-padded everywhere)."""
    value = to_utc(value)
    text = f"{value.year:04d}" + value.strftime("-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    return text + "Z"


def parse_rfc3339(value: Any) -> Any:
    """Accept RFC 3339 with any offset and up to nine fractional digits; return UTC.

    Text gives a ``StoredTime`` that remembers it, so ``format_rfc3339`` writes an unchanged
    value back as it was read: verbatim in the original's form (``...T...Z``), otherwise the same
    instant in that form with the fractional digits as written (``+02:00`` becomes ``Z``).
    """
    if isinstance(value, datetime):
        return to_utc(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        digits = ""
        if "." in text:
            head, _, rest = text.partition(".")
            for ch in rest:
                if ch.isdigit():
                    digits += ch
                else:
                    break
            tail = rest[len(digits) :]
            text = f"{head}.{(digits + '000000')[:6]}{tail}" if digits else head + tail
        try:
            parsed = to_utc(datetime.fromisoformat(text))
        except ValueError as exc:
            raise ValueError(f"invalid RFC 3339 timestamp {value!r}") from exc
        if value[-1:] == "Z" and value[10:11] == "T":
            return StoredTime.read(parsed, value)
        fraction = f".{digits}" if digits else ""
        whole = parsed.replace(microsecond=0).isoformat()[:-6]  # drop "+00:00"
        return StoredTime.read(parsed, f"{whole}{fraction}Z")
    return value


Timestamp = Annotated[
    datetime,
    BeforeValidator(parse_rfc3339),
    PlainSerializer(format_rfc3339, return_type=str, when_used="json"),
]
"""A UTC datetime field that reads any RFC 3339 offset and writes ``...Z``."""
