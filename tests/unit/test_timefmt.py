"""RFC 3339 times in and out."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from cloudtask.contracts.timefmt import format_rfc3339, parse_rfc3339, utcnow


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2030-01-01t00:00:00z", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2030-01-01T02:00:00+02:00", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2029-12-31T18:30:00-05:30", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2030-01-01T00:00:00-00:00", datetime(2030, 1, 1, tzinfo=UTC)),
        ("2030-01-01T00:00:00.5Z", datetime(2030, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
        ("2030-01-01T00:00:00.123Z", datetime(2030, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)),
        # A leap second is the next day's first instant; it falls at 23:59:60 in UTC alone.
        ("2016-12-31T23:59:60Z", datetime(2017, 1, 1, tzinfo=UTC)),
        ("2017-01-01T05:29:60.5+05:30", datetime(2017, 1, 1, 0, 0, 0, 500000, tzinfo=UTC)),
    ],
)
def test_rfc3339_times_parse_to_aware_utc(text: str, expected: datetime) -> None:
    parsed = parse_rfc3339(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def test_fractions_finer_than_microseconds_are_truncated() -> None:
    parsed = parse_rfc3339("2030-01-01T00:00:00.123456789+01:00")
    assert parsed == datetime(2029, 12, 31, 23, 0, 0, 123456, tzinfo=UTC)
    assert parse_rfc3339("2030-01-01T00:00:00.9999999999Z").microsecond == 999999


@pytest.mark.parametrize(
    "text", ["2030-01-01T00:00:00", "2030-01-01T00:00:00.123", "2030-01-01", "2030-01-01T00:00Z"]
)
def test_times_without_an_offset_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="offset"):
        parse_rfc3339(text)


@pytest.mark.parametrize("value", [1893456000, 1893456000.5, True, None, ["2030"], b"2030"])
def test_anything_but_a_string_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="RFC 3339 time string"):
        parse_rfc3339(value)


@pytest.mark.parametrize(
    "text",
    [
        "2030-02-30T00:00:00Z",
        "2030-13-01T00:00:00Z",
        "2030-01-01T24:00:00Z",
        "2030-01-01T23:60:00Z",
        "2020-06-15T12:34:60Z",  # a leap second anywhere but the end of a UTC day
        "2016-12-31T23:59:60+01:00",
        "2030-01-01T00:00:00+24:00",
        # Offsets' minutes past 59: read as an hour and more (2029-12-31T23:00:00Z, say).
        "2030-01-01T00:00:00+00:60",
        "2030-01-01T00:00:00+01:75",
        "2030-01-01T00:00:00-00:99",
    ],
)
def test_impossible_calendar_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="valid calendar time"):
        parse_rfc3339(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tomorrow",
        "2030-01-01T00:00:00Z ",
        "2030-01-01T00:00:00Z\n",  # a pattern's $ alone would let a final newline through
        "2030-01-01T00:00:00+02:00\n",
        " 2030-01-01T00:00:00Z",
        "2030-1-1T0:0:0Z",
        "2030-01-01 12:30:00Z",  # RFC 3339's grammar has a T (a space only by agreement, in a note)
        # Digits of other scripts: RFC 3339's are ASCII (past the sixth fraction digit, these
        # were once dropped unread and the time accepted).
        "2099-01-01T00:00:00.123456\uff17Z",
        "2099-01-01T00:00:00.000000\u0663\u0663\u0663Z",
        "2099-01-01T00:00:00.\uff17Z",
        "\uff12099-01-01T00:00:00Z",
        "\uff12\uff10\uff13\uff10-01-01T00:00:00Z",
    ],
)
def test_garbage_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339(text)


def test_formatting_writes_utc_with_a_z() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_rfc3339(datetime(2030, 1, 1, 2, 0, tzinfo=plus_two)) == "2030-01-01T00:00:00Z"
    stamp = format_rfc3339(datetime(2030, 1, 1, 0, 0, 0, 1500, tzinfo=UTC))
    assert stamp == "2030-01-01T00:00:00.001500Z"


def test_formatting_none_gives_none() -> None:
    assert format_rfc3339(None) is None


def test_formatted_times_parse_back_to_the_same_instant() -> None:
    now = utcnow()
    text = format_rfc3339(now)
    assert text is not None and text.endswith("Z")
    assert parse_rfc3339(text) == now


def test_utcnow_is_aware_utc() -> None:
    assert utcnow().utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:60Z"]
)
def test_times_beyond_the_years_utc_can_hold_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="out of range"):
        parse_rfc3339(text)
