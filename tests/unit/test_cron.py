"""The cron policy: when a schedule fires, read in its time zone, across clock changes.

Pure functions of fixed instants: each test passes the "now" it means.
"""

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

from cloudtask.policies import cron

ZONE_UTC = ZoneInfo("UTC")
NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC)


def chain(expression: str, zone: ZoneInfo, after: datetime, count: int) -> list[datetime]:
    """The next ``count`` firings after ``after``, each found from the one before."""
    out: list[datetime] = []
    for _ in range(count):
        after = cron.next_fire(expression, zone, after)
        out.append(after)
    return out


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("*/15 * * * *", utc(2026, 11, 27, 10, 7), utc(2026, 11, 27, 10, 15)),
        ("*/15 * * * *", utc(2026, 11, 27, 10, 15), utc(2026, 11, 27, 10, 30)),
        ("0 9 * * 1-5", utc(2026, 11, 27, 10, 0), utc(2026, 11, 30, 9, 0)),
        ("5 4 1 * *", utc(2026, 11, 27, 10, 0), utc(2026, 12, 1, 4, 5)),
        ("@hourly", utc(2026, 11, 27, 10, 0, 1), utc(2026, 11, 27, 11, 0)),
        ("@daily", utc(2026, 11, 27, 10, 0), utc(2026, 11, 28, 0, 0)),
        ("@midnight", utc(2026, 11, 27, 10, 0), utc(2026, 11, 28, 0, 0)),
        ("@weekly", utc(2026, 11, 27, 10, 0), utc(2026, 11, 29, 0, 0)),
        ("@monthly", utc(2026, 11, 27, 10, 0), utc(2026, 12, 1, 0, 0)),
        ("@yearly", utc(2026, 11, 27, 10, 0), utc(2027, 1, 1, 0, 0)),
        ("@annually", utc(2026, 11, 27, 10, 0), utc(2027, 1, 1, 0, 0)),
        # A range of one value is that value (croniter reads every value of the field).
        ("30-30 * * * *", utc(2026, 11, 29, 18, 3), utc(2026, 11, 29, 18, 30)),
        ("10-10/5 * * * *", utc(2026, 11, 29, 18, 11), utc(2026, 11, 29, 19, 10)),
        ("7-7,9 * * * *", utc(2026, 11, 29, 18, 10), utc(2026, 11, 29, 19, 7)),
        ("0 3-3 * * *", utc(2026, 11, 29, 18, 10), utc(2026, 11, 30, 3, 0)),
        ("0 0 5-5 * *", utc(2026, 11, 29, 18, 10), utc(2026, 12, 5, 0, 0)),
        ("0 0 * 3-3 *", utc(2026, 11, 29, 18, 10), utc(2027, 3, 1, 0, 0)),
        ("0 0 * JAN-JAN *", utc(2026, 11, 29, 18, 10), utc(2027, 1, 1, 0, 0)),
        ("0 0 * * 0-0", utc(2026, 11, 29, 18, 10), utc(2026, 12, 6, 0, 0)),  # Sundays
        ("0 0 * * 7-7", utc(2026, 11, 29, 18, 10), utc(2026, 12, 6, 0, 0)),
        ("0 0 * * sun-sun", utc(2026, 11, 29, 18, 10), utc(2026, 12, 6, 0, 0)),
        ("0 0 * * 5-7", utc(2026, 11, 29, 18, 10), utc(2026, 12, 4, 0, 0)),
        # A range running backwards wraps around, as in Celery's crontab.
        ("0 22-2 * * *", utc(2026, 11, 29, 2, 30), utc(2026, 11, 29, 22, 0)),
        ("0 22-2 * * *", utc(2026, 11, 29, 23, 30), utc(2026, 11, 30, 0, 0)),
        ("0 9 * * sat-sun", utc(2026, 11, 27, 10), utc(2026, 11, 28, 9, 0)),
    ],
)
def test_next_fire_is_the_first_firing_strictly_after_the_instant(
    expression: str, after: datetime, expected: datetime
) -> None:
    fired = cron.next_fire(expression, ZONE_UTC, after)
    assert fired == expected
    assert fired.utcoffset() == timedelta(0)


def test_next_fire_reads_the_expression_in_the_schedules_zone() -> None:
    assert cron.next_fire("0 9 * * *", NEW_YORK, utc(2026, 1, 10)) == utc(2026, 1, 10, 14)
    assert cron.next_fire("0 9 * * *", NEW_YORK, utc(2026, 7, 10)) == utc(2026, 7, 10, 13)
    assert cron.next_fire("0 9 * * *", BERLIN, utc(2026, 1, 10)) == utc(2026, 1, 10, 8)
    assert cron.next_fire("0 9 * * *", BERLIN, utc(2026, 7, 10)) == utc(2026, 7, 10, 7)


# Clocks go forward: New York on 2026-03-08 at 07:00 UTC (02:00 EST -> 03:00 EDT), Berlin on
# 2026-03-29 at 01:00 UTC (02:00 CET -> 03:00 CEST). Clocks go back: New York on 2026-11-01 at
# 06:00 UTC (01:00-01:59 happens twice), Berlin on 2026-10-25 at 01:00 UTC (02:00-02:59 twice).
# A schedule with a fixed minute and hour fires in the skipped hour once, at the jump, and in
# the repeated hour once, at its first occurrence; one whose minute or hour starts with "*"
# follows the clock, as cron's wildcard jobs: nothing in the skipped hour, both passes of the
# repeated one.
DST_CASES = [
    # spring forward, New York
    ("*/30 * * * *", NEW_YORK, utc(2026, 3, 8, 6), [(6, 30), (7, 0), (7, 30), (8, 0)]),
    ("0 * * * *", NEW_YORK, utc(2026, 3, 8, 5, 30), [(6, 0), (7, 0), (8, 0)]),
    ("30 2 * * *", NEW_YORK, utc(2026, 3, 7), [(7, 7, 30), (8, 7, 0), (9, 6, 30)]),
    # spring forward, Berlin
    ("*/30 * * * *", BERLIN, utc(2026, 3, 29), [(0, 30), (1, 0), (1, 30), (2, 0)]),
    ("0 * * * *", BERLIN, utc(2026, 3, 28, 23, 30), [(0, 0), (1, 0), (2, 0)]),
    ("30 2 * * *", BERLIN, utc(2026, 3, 28), [(28, 1, 30), (29, 1, 0), (30, 0, 30)]),
    ("30 * * * *", BERLIN, utc(2026, 3, 29), [(0, 30), (1, 30), (2, 30)]),  # not at 03:00
    ("*/20 2 * * *", BERLIN, utc(2026, 3, 28, 23), [(30, 0, 0), (30, 0, 20), (30, 0, 40)]),
    ("0 2 * * *", BERLIN, utc(2026, 3, 28, 23), [(1, 0), (30, 0, 0), (31, 0, 0)]),
    # fall back, New York
    ("*/30 * * * *", NEW_YORK, utc(2026, 11, 1, 4, 45), [(5, 0), (5, 30), (6, 0), (6, 30)]),
    ("0 * * * *", NEW_YORK, utc(2026, 11, 1, 4, 30), [(5, 0), (6, 0), (7, 0)]),
    ("@hourly", NEW_YORK, utc(2026, 11, 1, 4, 30), [(5, 0), (6, 0), (7, 0)]),
    ("@HOURLY", NEW_YORK, utc(2026, 11, 1, 4, 30), [(5, 0), (6, 0), (7, 0)]),
    ("30 2 * * *", NEW_YORK, utc(2026, 10, 31), [(31, 6, 30), (1, 7, 30), (2, 7, 30)]),
    ("30 1 * * *", NEW_YORK, utc(2026, 10, 31, 6), [(1, 5, 30), (2, 6, 30)]),
    # fall back, Berlin
    ("*/30 * * * *", BERLIN, utc(2026, 10, 24, 23, 45), [(0, 0), (0, 30), (1, 0), (1, 30)]),
    ("0 * * * *", BERLIN, utc(2026, 10, 24, 23, 30), [(0, 0), (1, 0), (2, 0)]),
    (
        "*/20 2 * * *",
        BERLIN,
        utc(2026, 10, 24, 23, 30),
        [(0, 0), (0, 20), (0, 40), (1, 0), (1, 20), (1, 40)],
    ),
    ("0 2 * * *", BERLIN, utc(2026, 10, 24, 23, 30), [(0, 0), (26, 1, 0)]),
    ("30 2 * * *", BERLIN, utc(2026, 10, 24), [(24, 0, 30), (25, 0, 30), (26, 1, 30)]),
]


def _expected(start: datetime, parts: list[tuple[int, ...]]) -> list[datetime]:
    """(hour, minute) on the transition day, or (day, hour, minute) in the start's month; a day
    smaller than the start's is in the next month."""
    out = []
    for part in parts:
        if len(part) == 2:
            day = start + timedelta(hours=1) if start.hour == 23 else start
            out.append(utc(day.year, day.month, day.day, part[0], part[1]))
        else:
            month = start.month + (1 if part[0] < start.day else 0)
            out.append(utc(start.year, month, part[0], part[1], part[2]))
    return out


@pytest.mark.parametrize(("expression", "zone", "start", "parts"), DST_CASES)
def test_clock_changes_fire_once_at_the_jump_or_at_the_first_occurrence(
    expression: str, zone: ZoneInfo, start: datetime, parts: list[tuple[int, ...]]
) -> None:
    assert chain(expression, zone, start, len(parts)) == _expected(start, parts)


@pytest.mark.parametrize(("expression", "zone", "start", "parts"), DST_CASES)
def test_firings_strictly_increase_and_agree_from_any_instant(
    expression: str, zone: ZoneInfo, start: datetime, parts: list[tuple[int, ...]]
) -> None:
    del parts
    firings = chain(expression, zone, start - timedelta(hours=3), 60)
    assert all(a < b for a, b in itertools.pairwise(firings))
    # From any instant in between, the next firing is the next one of the chain.
    instant = start - timedelta(hours=2)
    while instant < start + timedelta(hours=26):
        fired = cron.next_fire(expression, zone, instant)
        assert fired > instant
        assert fired == min(f for f in firings if f > instant)
        instant += timedelta(minutes=7)


@pytest.mark.parametrize(
    ("expression", "zone", "due", "now", "expected"),
    [
        # Several missed: the most recent one.
        ("*/5 * * * *", ZONE_UTC, utc(2026, 11, 27, 10), utc(2026, 11, 27, 10, 23, 30),
         utc(2026, 11, 27, 10, 20)),
        # Now exactly on a firing: that one.
        ("*/5 * * * *", ZONE_UTC, utc(2026, 11, 27, 10), utc(2026, 11, 27, 10, 20),
         utc(2026, 11, 27, 10, 20)),
        # Only the owed one has passed.
        ("*/5 * * * *", ZONE_UTC, utc(2026, 11, 27, 10), utc(2026, 11, 27, 10, 3),
         utc(2026, 11, 27, 10)),
        # Days missed, read in the zone.
        ("0 9 * * *", NEW_YORK, utc(2026, 11, 20, 14), utc(2026, 11, 27, 16),
         utc(2026, 11, 27, 14)),
        ("0 9 * * *", NEW_YORK, utc(2026, 11, 20, 14), utc(2026, 11, 27, 13),
         utc(2026, 11, 26, 14)),
        # Spring forward: the skipped firings came due at the jump.
        ("*/30 * * * *", NEW_YORK, utc(2026, 3, 8, 5), utc(2026, 3, 8, 7, 10),
         utc(2026, 3, 8, 7)),
        # Fall back, now in the repeated hour's second pass: a schedule on the clock fires in
        # it again ...
        ("*/30 * * * *", NEW_YORK, utc(2026, 11, 1, 4), utc(2026, 11, 1, 6, 40),
         utc(2026, 11, 1, 6, 30)),
        ("0 * * * *", BERLIN, utc(2026, 10, 24, 22), utc(2026, 10, 25, 1, 50),
         utc(2026, 10, 25, 1)),
        ("*/20 * * * *", BERLIN, utc(2026, 10, 24, 23, 40), utc(2026, 10, 25, 1, 6),
         utc(2026, 10, 25, 1)),
        ("*/20 2 * * *", BERLIN, utc(2026, 10, 24, 23, 40), utc(2026, 10, 25, 1, 6),
         utc(2026, 10, 25, 1)),
        # ... one with a fixed minute and hour fired at the first pass, though its wall time
        # is later than the clock's now.
        ("40 2 * * *", BERLIN, utc(2026, 10, 24, 23, 40), utc(2026, 10, 25, 1, 6),
         utc(2026, 10, 25, 0, 40)),
    ],
)  # fmt: skip
def test_latest_fire_is_the_most_recent_missed_firing(
    expression: str, zone: ZoneInfo, due: datetime, now: datetime, expected: datetime
) -> None:
    assert cron.latest_fire(expression, zone, due, now) == expected


def test_latest_fire_is_never_earlier_than_the_owed_firing() -> None:
    # An owed time off the grid (the schedule was edited): no grid firing since, so the owed one.
    due = utc(2026, 11, 27, 10, 17)
    assert cron.latest_fire("0 0 * * *", ZONE_UTC, due, utc(2026, 11, 27, 12)) == due


@pytest.mark.parametrize("zone", [ZONE_UTC, NEW_YORK, BERLIN])
def test_latest_fire_lies_between_the_owed_firing_and_now(zone: ZoneInfo) -> None:
    for start in (utc(2026, 3, 7, 20), utc(2026, 3, 28, 20), utc(2026, 10, 24, 20)):
        due = cron.next_fire("*/20 * * * *", zone, start)
        now = due
        while now < start + timedelta(days=1, hours=12):
            fired = cron.latest_fire("*/20 * * * *", zone, due, now)
            assert due <= fired <= now
            assert cron.next_fire("*/20 * * * *", zone, fired) > now
            now += timedelta(minutes=13)


@pytest.mark.parametrize(
    "expression",
    ["* * * * *", "0 9 * * 1-5", "*/10 8-18 * * mon-fri", "0 0 1,15 * *", "0 12 * jan,jul *",
     "@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@midnight", "0 0 29 2 *"],
)  # fmt: skip
def test_check_cron_accepts_five_fields_and_macros(expression: str) -> None:
    cron.check_cron(expression)


@pytest.mark.parametrize(
    "expression",
    [
        "0 0 * * * *",  # six fields (seconds)
        "* * * * * * *",
        "* * * *",
        "60 * * * *",  # out of range
        "* 24 * * *",
        "* * 0 * *",
        "* * 32 * *",
        "* * * 13 *",
        "* * * * 8",
        "*/0 * * * *",
        "",  # garbage
        "   ",
        "garbage",
        "every minute",
        "@",
        "@reboot",
        "@every 5m",
        "@hourly extra",
        "R * * * *",  # random or hashed minutes: a different time every time it is read
        "H * * * *",
        "R(0-29) * * * *",
        "0 0 31 2 *",  # never fires
        "0 0 30 2 *",
        "0 0 31 4,6,9,11 *",
        "5-5/0 * * * *",  # a step of 0, in a range of one value too
    ],
)
def test_check_cron_refuses_anything_else(expression: str) -> None:
    with pytest.raises(cron.InvalidSchedule):
        cron.check_cron(expression)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("0 0 * *", "use five fields"),
        ("@often", "use five fields"),
        ("61 0 * * *", "a field holds what cron does not read"),
        ("0 0 * * 9L", "a field holds what cron does not read"),
        # croniter reads these as the last Mondays alone, dropping every other Monday.
        ("0 0 * * 1L,MON", "cannot mix a last or nth weekday"),
        ("0 0 * * L1,1", "cannot mix a last or nth weekday"),
        ("0 0 * * 1#2,5", "cannot mix a last or nth weekday"),
    ],
)
def test_a_refused_expression_is_told_what_is_wrong_with_it(expression: str, says: str) -> None:
    with pytest.raises(cron.InvalidSchedule, match=says):
        cron.check_cron(expression)


@pytest.mark.parametrize("expression", ["0  0 * * *", " 0 0 * * *", "0 0 * * 5L ", "0\t0 * * *"])
def test_a_five_field_expression_badly_spaced_is_told_to_space_it(expression: str) -> None:
    assert "one space apart" in cron.invalid_cron_message(expression)


def test_a_never_firing_expression_is_refused_as_such() -> None:
    with pytest.raises(cron.InvalidSchedule, match="never fires"):
        cron.check_cron("0 0 30 2 *")


@pytest.mark.parametrize(
    "name", ["UTC", "America/New_York", "Europe/Berlin", "Etc/GMT+5", "Asia/Kolkata"]
)
def test_parse_zone_accepts_iana_names(name: str) -> None:
    assert str(cron.parse_zone(name)) == name


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus_Mons",
        "",
        ".",
        "America",  # a folder of zones, not a zone
        "Etc",
        "../../etc/passwd",
        "/etc/localtime",
        "Europe/../UTC",
        "Europe/Berlin/",
        "zone.tab",  # a data file beside the zones
        "localtime",  # the host's own zone, whatever it is
        "America/New_York\x00",
        "x" * 300,
    ],
)
def test_parse_zone_refuses_unknown_zones_and_paths(name: str) -> None:
    with pytest.raises(cron.InvalidSchedule, match="unknown time zone"):
        cron.parse_zone(name)


@pytest.mark.parametrize(
    ("expression", "zone", "start"),
    [
        (expression, zone, start)
        for expression in (
            *("* * * * *", "*/20 * * * *", "45 * * * *", "@hourly", "0 */2 * * *"),
            *("*/15 1,2 * * *", "* 2 * * *", "*/10 1 * * *"),  # a minute field on the clock
        )
        for zone, start in (
            (NEW_YORK, utc(2026, 3, 8, 4)),
            (BERLIN, utc(2026, 3, 28, 22)),
            (NEW_YORK, utc(2026, 11, 1, 3)),
            (BERLIN, utc(2026, 10, 24, 22)),
            (ZoneInfo("Australia/Lord_Howe"), utc(2026, 4, 4, 12)),  # back by 30 minutes
        )
    ],
)
def test_a_schedule_on_the_clock_fires_at_every_minute_whose_local_time_it_names(
    expression: str, zone: ZoneInfo, start: datetime
) -> None:
    minutes = [start + timedelta(minutes=n) for n in range(1, 8 * 60)]
    expected = [
        t for t in minutes if croniter.match(expression, t.astimezone(zone).replace(tzinfo=None))
    ]
    fired = [f for f in chain(expression, zone, start, len(expected) + 1) if f <= minutes[-1]]
    assert fired == expected


@pytest.mark.parametrize(
    ("expression", "days"),
    [
        # The 8th, or the second Monday (croniter: second Mondays only).
        ("0 0 8 * 1#2", ["2026-12-08", "2026-12-14", "2027-01-08", "2027-01-11"]),
        # The 15th, or the first Monday (croniter: never).
        ("0 0 15 * 1#1", ["2026-12-07", "2026-12-15", "2027-01-04", "2027-01-15"]),
        # The weekday nearest the 15th, or every Monday (croniter: no Mondays).
        ("0 0 15W * 1", ["2026-11-30", "2026-12-07", "2026-12-14", "2026-12-15"]),
        # Plain values, as before: the 8th, or every Monday.
        ("0 0 8 * 1", ["2026-11-30", "2026-12-07", "2026-12-08", "2026-12-14"]),
        # A step over * is a day given too: the 1st, 11th, 21st, 31st, or the first Monday.
        ("0 0 */10 * 1#1", ["2026-12-01", "2026-12-07", "2026-12-11", "2026-12-21"]),
        # A list that starts with * is every day, as croniter reads it: Mondays alone.
        ("0 0 *,5 * 1", ["2026-11-30", "2026-12-07", "2026-12-14", "2026-12-21"]),
        ("0 0 *,8 * 1#1", ["2026-12-07", "2027-01-04", "2027-02-01", "2027-03-01"]),
        # Only one half ever fires: that one.
        ("0 0 31 2 1#1", ["2027-02-01", "2028-02-07", "2029-02-05", "2030-02-04"]),
        # The last Friday of the month, spelled as croniter does and as Quartz does.
        ("0 0 * * L5", ["2026-12-25", "2027-01-29", "2027-02-26", "2027-03-26"]),
        ("0 0 * * 5L", ["2026-12-25", "2027-01-29", "2027-02-26", "2027-03-26"]),
        ("0 0 * * FRIL", ["2026-12-25", "2027-01-29", "2027-02-26", "2027-03-26"]),
        ("0 0 1 * 5L", ["2026-12-01", "2026-12-25", "2027-01-01", "2027-01-29"]),
    ],
)
def test_a_day_of_the_month_and_of_the_week_fire_on_either(
    expression: str, days: list[str]
) -> None:
    # As cron reads two restricted day fields, whatever syntax each uses.
    cron.check_cron(expression)
    fired = chain(expression, ZONE_UTC, utc(2026, 11, 29), len(days))
    assert [instant.date().isoformat() for instant in fired] == days


def test_the_latest_missed_firing_of_either_day_is_the_later_one() -> None:
    # Owed the 8th's firing; by the 15th, the second Monday (the 14th) had come too.
    owed, now = utc(2026, 12, 8), utc(2026, 12, 15, 12)
    assert cron.latest_fire("0 0 8 * 1#2", ZONE_UTC, owed, now) == utc(2026, 12, 14)
    assert cron.latest_fire("0 0 8 * 1#2", ZONE_UTC, owed, utc(2026, 12, 9)) == owed
