"""``format_rfc3339`` (isoformat-based) writes exactly what the strftime form wrote."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astrid.timeutil import _format_rfc3339_strftime, format_rfc3339, parse_rfc3339

ZONES: list[tzinfo | None] = [
    None,
    UTC,
    timezone(timedelta(0)),
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=-23, minutes=-59, seconds=-59)),
    timezone(timedelta(hours=14)),
    ZoneInfo("UTC"),
    ZoneInfo("Europe/Paris"),
    ZoneInfo("America/St_Johns"),
    ZoneInfo("Australia/Lord_Howe"),
]


def same(value: datetime) -> None:
    """Both forms give the same text, or both raise the same error."""
    try:
        expected = _format_rfc3339_strftime(value)
    except (OverflowError, ValueError) as exc:
        with pytest.raises(type(exc)):
            format_rfc3339(value)
        return
    assert format_rfc3339(value) == expected, repr(value)


@settings(max_examples=3000)
@given(
    value=st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)
    ),
    zone=st.sampled_from(ZONES),
    fold=st.sampled_from([0, 1]),
)
def test_same_text_as_strftime(value: datetime, zone: tzinfo | None, fold: int) -> None:
    same(value.replace(tzinfo=zone, fold=fold))


def test_same_text_on_the_edges() -> None:
    rng = random.Random(3)
    years = [1, 2, 9, 10, 99, 100, 999, 1000, 1001, 1969, 1970, 2000, 2038, 9998, 9999]
    micros = [0, 1, 9, 10, 999, 1000, 500000, 999999]
    for year in years:
        for micro in micros:
            for zone in ZONES:
                for month, day, hour in ((1, 1, 0), (12, 31, 23), (6, 15, 12)):
                    base = datetime(year, month, day, hour, rng.randrange(60), rng.randrange(60))
                    same(base.replace(microsecond=micro, tzinfo=zone))


def test_known_values() -> None:
    assert format_rfc3339(datetime(2025, 1, 1, tzinfo=UTC)) == "2025-01-01T00:00:00Z"
    assert format_rfc3339(datetime(2025, 1, 1, 0, 0, 0, 5)) == "2025-01-01T00:00:00.000005Z"
    paris = datetime(2025, 7, 1, 2, 30, tzinfo=ZoneInfo("Europe/Paris"))
    assert format_rfc3339(paris) == "2025-07-01T00:30:00Z"
    assert format_rfc3339(datetime(5, 1, 1, tzinfo=UTC)) == _format_rfc3339_strftime(
        datetime(5, 1, 1, tzinfo=UTC)
    )
    now = datetime.now(UTC)
    assert parse_rfc3339(format_rfc3339(now)) == now
