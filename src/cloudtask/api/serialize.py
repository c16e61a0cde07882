"""Stored records as the API's JSON (the ``Job`` schema), without a second validation pass."""

from typing import Any

import orjson

from cloudtask.contracts import jsoncodec
from cloudtask.contracts.timefmt import format_rfc3339
from cloudtask.db.queries.jobs import JobRecord
from cloudtask.db.queries.schedules import ScheduleRecord


def _parse(text: str | None) -> Any:
    # The codec, not orjson: orjson would turn integers beyond 64 bits into floats.
    return None if text is None else jsoncodec.loads(text)


def _stored(text: str | None) -> Any:
    """A job's stored JSON text, to be written into an answer as it is.

    A job's payload and result are stored as ``jsoncodec`` wrote them after validating them, so
    parsing the text and writing the value again would give the same text back; orjson embeds
    it instead (a listing parsed a hundred documents per page). The body then needs orjson,
    which ``jsoncodec.dumps`` writes with for anything an answer holds (its standard-library
    fallback is for values nested deeper than 255 levels, which no answer is).
    """
    return None if text is None else orjson.Fragment(text)


def job_json(job: JobRecord) -> dict[str, Any]:
    """The ``Job`` body; for orjson only (see :func:`_stored`), so render it with
    ``jsoncodec.dumps``."""
    return {
        "id": jsoncodec.uuid_value(job.id),
        "type": job.type,
        "payload": _stored(job.payload),
        "status": job.status.value,
        "priority": job.priority,
        "attempts": job.attempts,
        "maxAttempts": job.max_attempts,
        "timeoutSeconds": jsoncodec.whole_as_int(job.timeout_seconds),
        "runAt": format_rfc3339(job.run_at),
        "result": _stored(job.result),
        "error": job.error,
        "scheduleId": str(job.schedule_id) if job.schedule_id else None,
        "createdAt": format_rfc3339(job.created_at),
        "updatedAt": format_rfc3339(job.updated_at),
        "startedAt": format_rfc3339(job.started_at),
        "finishedAt": format_rfc3339(job.finished_at),
    }


def schedule_json(schedule: ScheduleRecord) -> dict[str, Any]:
    return {
        "id": str(schedule.id),
        "name": schedule.name,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "type": schedule.type,
        "payload": _parse(schedule.payload),
        "priority": schedule.priority,
        "maxAttempts": schedule.max_attempts,
        "timeoutSeconds": jsoncodec.whole_as_int(schedule.timeout_seconds),
        "paused": schedule.paused,
        "nextRunAt": None if schedule.paused else format_rfc3339(schedule.next_run_at),
        "lastRunAt": format_rfc3339(schedule.last_run_at),
        "createdAt": format_rfc3339(schedule.created_at),
    }
