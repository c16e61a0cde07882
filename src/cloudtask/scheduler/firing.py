"""Turning due cron firings into jobs: one job per (schedule, firing time), however many
schedulers try, enforced by the primary key of ``schedule_firings``."""

import logging
from datetime import datetime
from typing import NamedTuple

from sqlalchemy.ext.asyncio import AsyncConnection

from cloudtask.db.ids import new_job_id
from cloudtask.db.queries import jobs as jobs_q
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.db.queries import schedules as schedules_q
from cloudtask.policies import cron

log = logging.getLogger(__name__)


def _job(schedule: schedules_q.ScheduleRecord, fire_at: datetime, now: datetime) -> jobs_q.NewJob:
    return jobs_q.NewJob(
        id=new_job_id(),
        user_id=schedule.user_id,
        type=schedule.type,
        payload=schedule.payload,
        priority=schedule.priority,
        max_attempts=schedule.max_attempts,
        timeout_seconds=schedule.timeout_seconds,
        run_at=min(fire_at, now),
        created_at=now,
        schedule_id=schedule.id,
    )


FIRE_BATCH = 100
"""The most schedules one round fires, in one transaction."""


class Fired(NamedTuple):
    claimed: int
    """Due schedules taken, up to the batch: as many as it means more may be waiting."""
    fired: int
    """Jobs created (a schedule that cannot be read is paused instead)."""
    rows: list[outbox_q.OutboxRow]
    """The created jobs' outbox rows."""


async def fire_due(conn: AsyncConnection, *, now: datetime, limit: int = FIRE_BATCH) -> Fired:
    """Fire every due schedule once (for its latest missed time) and move it to its next time,
    up to ``limit`` of them."""
    fired, rows = 0, []
    due = await schedules_q.claim_due(conn, now=now, limit=limit)
    for schedule in due:
        try:
            zone = cron.parse_zone(schedule.timezone)
            fire_at = cron.latest_fire(schedule.cron, zone, schedule.next_run_at, now)
            next_run_at = cron.next_fire(schedule.cron, zone, now)
        except (cron.InvalidSchedule, ValueError, KeyError) as exc:
            # Stored before a rule changed, or a zone left the time-zone database (croniter raises
            # ValueError and KeyError on what it cannot parse): pausing it keeps it from blocking
            # every schedule due after it, and shows its owner.
            log.error(  # noqa: TRY400 (the reason is the message; a traceback adds nothing)
                "schedule paused: it cannot be read",
                extra={
                    "action": "schedule.broken",
                    "scheduleId": str(schedule.id),
                    "reason": str(exc),
                },
            )
            await schedules_q.suspend(conn, schedule.id, now=now)
            continue
        job = _job(schedule, fire_at, now)
        if await schedules_q.record_firing(conn, schedule.id, fire_at, job.id, now=now):
            rows += await jobs_q.submit(conn, [job])
            fired += 1
        await schedules_q.advance(
            conn, schedule.id, next_run_at=next_run_at, last_run_at=fire_at, now=now
        )
    return Fired(len(due), fired, rows)
