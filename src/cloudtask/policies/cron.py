"""When a recurring schedule fires: cron expressions in an IANA time zone, with clock changes.

Cron expressions have five fields (minute hour day month weekday) or a macro such as ``@hourly``,
and are read in the schedule's local wall-clock time, as cron does. Around clock changes, as
Vixie cron and cronie do:

- a schedule whose minute or hour field starts with ``*`` (``*/15 2 * * *``, ``0 */2 * * *``,
  ``@hourly``) follows the clock: a time the clock skips does not fire, and a time it goes
  through twice fires twice, so that it never fires off its grid (cron's "wildcard" jobs);
- any other schedule fires at a time that does not exist (skipped when clocks go forward) once,
  at the moment the clock jumps, however many firings that hour held; and at a time that happens
  twice (repeated when clocks go back) once, at its first occurrence.

A schedule that could not fire on time (its scheduler was down) fires once for the most recent
missed time, then carries on from now: missed firings are not replayed one by one.
"""

import contextlib
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


_RANGE = re.compile(r"^([0-9A-Za-z]+)-([0-9A-Za-z]+)(/[0-9]+)?$")
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


_LAST_WEEKDAY = re.compile(r"^([0-7]|[A-Za-z]{3})[Ll]$")


def _read_item(item: str, names: dict[str, int]) -> str:
    last = _LAST_WEEKDAY.match(item) if names is _NAMES[4] else None
    if last is not None:  # 5L, FRIL: the last Friday of the month, which croniter spells L5
        day = last[1] if last[1].isdigit() else names.get(last[1].lower())
        return item if day is None else f"L{day}"
    match = _RANGE.match(item)
    if match is None or match[3] == "/0":
        return item  # croniter judges it
    low, high = (int(v) if v.isdigit() else names.get(v.lower()) for v in (match[1], match[2]))
    return match[1] if low is not None and low == high else item


@functools.lru_cache(maxsize=1024)
def _as_croniter_reads(expression: str) -> str:
    """The expression as croniter must be given it to mean what cron means: a range of one value
    (``30-30``, with a step or not) is that value, where croniter reads every value of the field.
    A range running backwards (``22-2``) wraps around, as in croniter and Celery's crontab."""
    fields = expression.split()
    if len(fields) != len(_NAMES):
        return expression  # a macro, or refused by croniter
    if _mixes_nth_and_plain_days(fields[4]):  # refused here, so a stored one is paused too
        raise InvalidSchedule(_mixed_days_message(expression))
    return " ".join(
        ",".join(_read_item(item, names) for item in field.split(","))
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
    fields = expression.split()
    if len(fields) == len(_NAMES) and expression == " ".join(fields):
        return (
            f"invalid cron expression {expression!r}: a field holds what cron does not read "
            "(minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or jan-dec, day-of-week "
            "0-7 or sun-sat; with * , - / and L, W, #)"
        )
    return (
        f"invalid cron expression {expression!r}: use five fields one space apart "
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


def _mixed_days_message(expression: str) -> str:
    # croniter reads 1L,MON as the last Mondays alone, dropping the others, and refuses 1#2,5.
    return (
        f"invalid cron expression {expression!r}: a day-of-week list cannot mix a last or nth "
        "weekday (5L, 1#2) with other days"
    )


def _mixes_nth_and_plain_days(field: str) -> bool:
    items = field.split(",")
    special = [item for item in items if "#" in item or "l" in item.lower()]
    return bool(special) and len(special) != len(items)


def _instants(wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """Every UTC instant at which the clock reads ``wall``, earliest first: none in a skipped
    hour, two in a repeated one."""
    found: list[datetime] = []
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if instant.astimezone(zone).replace(tzinfo=None) == wall and instant not in found:
            found.append(instant)
    return found


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of a local wall time: the first occurrence if it happens twice, the moment
    the clock jumps if it does not happen at all."""
    while not (instants := _instants(wall, zone)):
        wall = wall.replace(second=0, microsecond=0) + timedelta(minutes=1)
    return instants[0]


def _on_the_clock(expression: str) -> bool:
    # As cron tells its "wildcard" jobs (MIN_STAR or HR_STAR). Macros are read in any case.
    fields = expression.split()
    if len(fields) != len(_NAMES):
        return expression.lower() == "@hourly"
    return fields[0].startswith("*") or fields[1].startswith("*")


# More than any clock change (Lord Howe's is 30 minutes, Troll's 2 hours).
_NEAR = timedelta(hours=3)


def _change_near(instant: datetime, zone: ZoneInfo) -> timedelta:
    """By how much the clock changes within ``_NEAR`` of ``instant`` (zero if it does not)."""
    before, after = ((instant + shift).astimezone(zone).utcoffset() for shift in (-_NEAR, _NEAR))
    return abs((after or timedelta(0)) - (before or timedelta(0)))


def _next_on_the_clock(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    # The clock reads each time in order, but for the times of a repeated hour, read again once
    # it went back: near such a change, the walk starts that much earlier (the second pass of
    # the times the clock read before ``after``), and goes on until a time is first read after
    # the best found, as every later one is.
    change = _change_near(after, zone)
    walls = croniter(
        _as_croniter_reads(expression), after.astimezone(zone).replace(tzinfo=None) - change
    )
    best: datetime | None = None
    for _ in range(_MAX_STEPS):
        instants = _instants(walls.get_next(datetime), zone)
        if best is not None and instants and instants[0] > best:
            return best
        later = [instant for instant in instants if instant > after]
        if later and (best is None or later[0] < best):
            best = later[0]
            if not change:
                return best
    raise InvalidSchedule(f"cron expression {expression!r} never fires")


def _latest_on_the_clock(expression: str, zone: ZoneInfo, due: datetime, now: datetime) -> datetime:
    change = _change_near(now, zone)
    start = now.astimezone(zone).replace(tzinfo=None) + change + timedelta(seconds=1)
    walls = croniter(_as_croniter_reads(expression), start)
    best: datetime | None = None
    for _ in range(_MAX_STEPS):
        instants = _instants(walls.get_prev(datetime), zone)
        if instants and instants[-1] <= max(best or due, due):
            break  # every earlier time was last read before this one
        earlier = [instant for instant in instants if instant <= now]
        if earlier and (best is None or earlier[-1] > best):
            best = earlier[-1]
            if not change:
                break
    return due if best is None or best <= due else best


def _either_day(expression: str) -> tuple[str, str] | None:
    """A day of the month and a day of the week both given: cron fires on either (``0 0 8 * 1``,
    the 8th and every Monday). croniter does so for plain values, but with ``#`` (the Nth
    weekday) it fires on neither or ignores the day of the month, and with ``W`` (the nearest
    weekday) it ignores the day of the week; the two halves are read apart instead."""
    fields = expression.split()
    if len(fields) != len(_NAMES) or not (_given(fields[2]) and _given(fields[4])):
        return None
    minute, hour, day, month, weekday = fields
    return f"{minute} {hour} {day} {month} *", f"{minute} {hour} * {month} {weekday}"


_STEP_OVER_ALL = re.compile(r"^[*?]/[0-9]+$")


def _given(field: str) -> bool:
    """Whether a day field restricts the day, as croniter reads plain values: a field that starts
    with * or ? does not (``*,5`` is every day), unless it is a step over all (``*/10``)."""
    return field[0] not in "*?" or _STEP_OVER_ALL.match(field) is not None


def next_fire(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The first firing strictly after the instant ``after``, as an aware UTC datetime."""
    if halves := _either_day(expression):
        fires = []
        for half in halves:
            try:
                fires.append(_next_fire(half, zone, after))
            except (ValueError, KeyError, InvalidSchedule):
                continue  # that half never fires (the 31st of February); the other may
        if not fires:
            raise InvalidSchedule(f"cron expression {expression!r} never fires")
        return min(fires)
    return _next_fire(expression, zone, after)


def _next_fire(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    if _on_the_clock(expression):
        return _next_on_the_clock(expression, zone, after)
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
    if halves := _either_day(expression):
        latest = due
        for half in halves:
            with contextlib.suppress(ValueError, KeyError, InvalidSchedule):
                latest = max(latest, _latest_fire(half, zone, due, now))
        return latest
    return _latest_fire(expression, zone, due, now)


def _latest_fire(expression: str, zone: ZoneInfo, due: datetime, now: datetime) -> datetime:
    if _on_the_clock(expression):
        return _latest_on_the_clock(expression, zone, due, now)
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
