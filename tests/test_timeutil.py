"""``format_rfc3339`` (isoformat-based) writes exactly what the strftime form wrote."""

from __future__ import annotations

import copy
import pickle
import random
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from astrid.timeutil import (
    StoredTime,
    _format_rfc3339_strftime,
    format_rfc3339,
    parse_rfc3339,
    to_utc,
)

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


# -- what was read is written back; every written year reads back (issue 14 item 12) ---------


@settings(max_examples=2000)
@given(
    value=st.datetimes(
        min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59, 999999)
    ),
    zone=st.sampled_from(ZONES),
)
def test_every_formatted_datetime_parses_back_to_the_same_instant(
    value: datetime, zone: tzinfo | None
) -> None:
    aware = value.replace(tzinfo=zone)
    try:
        text = format_rfc3339(aware)
    except OverflowError:  # the instant is outside datetime's range once in UTC
        return
    parsed = parse_rfc3339(text)
    assert parsed == to_utc(aware)
    assert format_rfc3339(parsed) == text


def test_years_below_1000_have_four_digits_and_read_back() -> None:
    for year in (1, 9, 10, 99, 100, 999):
        value = datetime(year, 3, 4, 5, 6, 7, 8, tzinfo=UTC)
        text = format_rfc3339(value)
        assert text == f"{year:04d}-03-04T05:06:07.000008Z"
        assert parse_rfc3339(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-22T03:48:10.123456789Z",
        "2026-02-22T03:48:10.5Z",
        "2026-02-22T03:48:10Z",
        "2026-02-22T03:48:10.000000001Z",
    ],
)
def test_a_parsed_timestamp_is_written_back_as_it_was_read(text: str) -> None:
    parsed = parse_rfc3339(text)
    assert isinstance(parsed, StoredTime) and parsed.tzinfo is UTC
    assert format_rfc3339(parsed) == text
    for copied in (copy.copy(parsed), copy.deepcopy(parsed), pickle.loads(pickle.dumps(parsed))):
        assert copied == parsed and format_rfc3339(copied) == text
    assert format_rfc3339(to_utc(parsed)) == text  # unchanged: still the text


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("2026-02-22T05:48:10.123456789+02:00", "2026-02-22T03:48:10.123456789Z"),
        ("2026-02-21T22:48:10.5-05:00", "2026-02-22T03:48:10.5Z"),
        ("2026-02-22t03:48:10.10z", "2026-02-22T03:48:10.10Z"),
        (" 0999-02-22 03:48:10+00:00 ", "0999-02-22T03:48:10Z"),
    ],
)
def test_other_forms_are_written_in_the_originals_form_with_their_digits(
    text: str, written: str
) -> None:
    parsed = parse_rfc3339(text)
    assert format_rfc3339(parsed) == written
    assert parse_rfc3339(written) == parsed


def test_a_changed_timestamp_is_formatted_afresh() -> None:
    parsed = parse_rfc3339("2026-02-22T03:48:10.123456789Z")
    assert format_rfc3339(parsed + timedelta(seconds=1)) == "2026-02-22T03:48:11.123456Z"
    assert format_rfc3339(parsed.replace(microsecond=0)) == "2026-02-22T03:48:10Z"
    paris = parsed.astimezone(ZoneInfo("Europe/Paris"))
    assert format_rfc3339(paris) == "2026-02-22T03:48:10.123456Z"
