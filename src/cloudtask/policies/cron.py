"""When a recurring schedule fires: cron expressions in an IANA time zone, with clock changes.

Cron expressions have five fields (minute hour day month weekday) or a macro such as ``@hourly``,
and are read in the schedule's local wall-clock time, as cron does. Around clock changes:

- a firing time that does not exist (the hour skipped when clocks go forward) fires once, at the
  moment the clock jumps, however many firings that hour held;
- a firing time that happens twice (the hour repeated when clocks go back) fires once, at its
  first occurrence.

A schedule that could not fire on time (its scheduler was down) fires once for the most recent
missed time, then carries on from now: missed firings are not replayed one by one.
"""

import functools
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter

_MAX_STEPS = 10_000
# croniter's "H" (hashed) and "R" (random) values pick a different time each time an expression is
# read, so the scheduler and the API would disagree on when a schedule fires.
_HASHED_OR_RANDOM = re.compile(r"(?:^|,)[HhRr]")


class InvalidSchedule(ValueError):
    """The cron expression or time zone is not valid."""


_RANGE = re.compile(r"^([0-9A-Za-z]+)-([0-9A-Za-z]+)(?:/[0-9]+)?$")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# The names each field takes (minute, hour, day of month, month, day of week).
_NAMES: tuple[dict[str, int], ...] = (
    {},
    {},
    {},
    {name: number for number, name in enumerate(_MONTHS, 1)},
    {name: number for number, name in enumerate(_DAYS)},
)


def _read_item(item: str, names: dict[str, int], expression: str) -> str:
    match = _RANGE.match(item)
    if match is None:
        return item
    low, high = (int(v) if v.isdigit() else names.get(v.lower()) for v in (match[1], match[2]))
    if low is None or high is None:
        return item  # croniter judges it
    if low > high:
        raise InvalidSchedule(
            f"invalid cron expression {expression!r}: the range {item!r} runs backwards"
        )
    return match[1] if low == high else item


@functools.lru_cache(maxsize=1024)
def _as_croniter_reads(expression: str) -> str:
    """The expression as croniter must be given it to mean what cron means: a range of one value
    (``30-30``, with a step or not) is that value, where croniter reads every value of the field;
    a range running backwards (``30-10``), which croniter wraps around, is refused, as cron
    refuses it."""
    fields = expression.split()
    if len(fields) != len(_NAMES):
        return expression  # a macro, or refused by croniter
    return " ".join(
        ",".join(_read_item(item, names, expression) for item in field.split(","))
        for field, names in zip(fields, _NAMES, strict=True)
    )


@functools.cache
def _zone_names() -> frozenset[str]:
    # Only the zones themselves: not the folders and data files beside them in the zoneinfo
    # folder, nor "localtime", which names whatever zone the host happens to be in.
    return frozenset(available_timezones() - {"localtime"})


def parse_zone(name: str) -> ZoneInfo:
    try:
        if name not in _zone_names():
            raise ZoneInfoNotFoundError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise InvalidSchedule(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Paris"
        ) from None


def invalid_cron_message(expression: str) -> str:
    return (
        f"invalid cron expression {expression!r}: use five fields "
        "(minute hour day-of-month month day-of-week) or a macro such as @hourly"
    )


def check_cron(expression: str) -> None:
    fields = expression.split()
    macro = len(fields) == 1 and expression.startswith("@")
    if (
        not (macro or len(fields) == 5)
        or any(_HASHED_OR_RANDOM.search(field) for field in fields)
        or not croniter.is_valid(_as_croniter_reads(expression))
    ):
        raise InvalidSchedule(invalid_cron_message(expression))
    try:
        next_fire(expression, ZoneInfo("UTC"), datetime(2000, 1, 1, tzinfo=UTC))
    except (ValueError, KeyError, InvalidSchedule):
        raise InvalidSchedule(f"cron expression {expression!r} never fires") from None


def _exists(wall: datetime, zone: ZoneInfo) -> bool:
    back = wall.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    return back == wall


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time: the first occurrence if it happens twice, the moment
    the clock jumps if it does not happen at all."""
    while not _exists(wall, zone):
        wall = wall.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def next_fire(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The first firing strictly after the instant ``after``, as an aware UTC datetime."""
    start = after.astimezone(zone).replace(tzinfo=None)
    walls = croniter(_as_croniter_reads(expression), start)
    for _ in range(_MAX_STEPS):
        instant = _instant(walls.get_next(datetime), zone)
        if instant > after:
            return instant
    raise InvalidSchedule(f"cron expression {expression!r} never fires")


def latest_fire(expression: str, zone: ZoneInfo, due: datetime, now: datetime) -> datetime:
    """The most recent firing at or before ``now``, given that ``due`` (≤ ``now``) was the next
    one owed: the one firing a late scheduler makes up for."""
    local = now.astimezone(zone)
    # In the second pass of a repeated hour, the firings of that hour fired at their first pass,
    # although their wall times are later than the clock's: walk back from where the clock stood
    # before it went back.
    offsets = (local.utcoffset(), local.replace(fold=0).utcoffset())
    offset = max(offset or timedelta(0) for offset in offsets)
    start = now.astimezone(UTC).replace(tzinfo=None) + offset + timedelta(seconds=1)
    walls = croniter(_as_croniter_reads(expression), start)
    for _ in range(_MAX_STEPS):
        instant = _instant(walls.get_prev(datetime), zone)
        if instant <= due:
            return due
        if instant <= now:
            return instant
    return due
