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

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

_MAX_STEPS = 10_000


class InvalidSchedule(ValueError):
    """The cron expression or time zone is not valid."""


def parse_zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidSchedule(
            f"unknown time zone {name!r}; use an IANA name such as Europe/Paris"
        ) from None


def check_cron(expression: str) -> None:
    fields = expression.split()
    macro = len(fields) == 1 and expression.startswith("@")
    if not (macro or len(fields) == 5) or not croniter.is_valid(expression):
        raise InvalidSchedule(
            f"invalid cron expression {expression!r}: use five fields "
            "(minute hour day-of-month month day-of-week) or a macro such as @hourly"
        )
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
    walls = croniter(expression, start)
    for _ in range(_MAX_STEPS):
        instant = _instant(walls.get_next(datetime), zone)
        if instant > after:
            return instant
    raise InvalidSchedule(f"cron expression {expression!r} never fires")


def latest_fire(expression: str, zone: ZoneInfo, due: datetime, now: datetime) -> datetime:
    """The most recent firing at or before ``now``, given that ``due`` (≤ ``now``) was the next
    one owed: the one firing a late scheduler makes up for."""
    walls = croniter(expression, now.astimezone(zone).replace(tzinfo=None) + timedelta(seconds=1))
    for _ in range(_MAX_STEPS):
        instant = _instant(walls.get_prev(datetime), zone)
        if instant <= due:
            return due
        if instant <= now:
            return instant
    return due
