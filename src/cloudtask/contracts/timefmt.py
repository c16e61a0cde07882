"""RFC 3339 times: the only time format CloudTask reads or writes."""

import functools
import re
from datetime import UTC, datetime, timedelta

# ASCII: a str pattern's \d also matches other scripts' digits (a fullwidth or Arabic-Indic one),
# which RFC 3339 does not allow; in the fraction, past its sixth digit, they were dropped unread.
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def parse_rfc3339(value: object) -> datetime:
    """Parse an RFC 3339 time (an offset is required) into an aware UTC datetime.

    Numbers are refused: JSON types are strict, and a Unix timestamp is not an RFC 3339 time.
    """
    if not isinstance(value, str):
        # ValueError, not TypeError: pydantic turns only ValueErrors into validation errors.
        raise ValueError(  # noqa: TRY004
            "must be an RFC 3339 time string, such as 2030-01-01T00:00:00Z"
        )
    match = _RFC3339.fullmatch(value)  # not match: its $ would let a final newline through
    if match is None:
        raise ValueError(
            "must be an RFC 3339 time: date, T, time and offset, such as 2030-01-01T00:00:00Z"
        )
    date, clock, fraction, offset = match.groups()
    fraction = (fraction or "")[:7]  # Python keeps microseconds; finer digits are dropped
    offset = "+00:00" if offset in ("Z", "z") else offset
    # Python reads an offset of +00:60 as +01:00, and +01:75 as +02:15.
    if int(offset[1:3]) > 23 or int(offset[4:6]) > 59:
        raise ValueError("is not a valid calendar time: an offset is -23:59 to +23:59")
    leap = clock.endswith(":60")  # RFC 3339 allows a leap second; Python does not
    if leap:
        clock = clock[:-2] + "59"
    try:
        parsed = datetime.fromisoformat(f"{date}T{clock}{fraction}{offset}")
    except ValueError:
        raise ValueError("is not a valid calendar time") from None
    try:
        utc = parsed.astimezone(UTC)
        if not leap:
            return utc
        # A leap second is inserted at the end of a UTC day: 23:59:60 in UTC, never 12:34:60.
        if (utc.hour, utc.minute) != (23, 59):
            raise ValueError("is not a valid calendar time: a leap second is 23:59:60 in UTC")
        return utc + timedelta(seconds=1)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is in year 0 in UTC; 9999's last leap
        raise ValueError("is out of range: in UTC it must fall within years 1 to 9999") from None


def format_rfc3339(value: datetime | None) -> str | None:
    """Format an aware datetime as RFC 3339 UTC with a ``Z`` suffix."""
    if value is None:
        return None
    return _format_utc(value)


# A job's times are mostly one instant (created, updated, run at, enqueued), and a batch's jobs
# share it: formatting was a fifth of the api's CPU in POST /jobs/batch (py-spy). Equal aware
# datetimes are the same instant, so they share one text whatever their offsets.
@functools.lru_cache(maxsize=1024)
def _format_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def utcnow() -> datetime:
    return datetime.now(UTC)
