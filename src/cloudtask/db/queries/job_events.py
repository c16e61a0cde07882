"""Applying workers' events to ``jobs``: every update conditional, so events are idempotent.

An event counts only for the attempt most recently handed out (``dispatch_attempt``) and only
while the job is PENDING or RUNNING, so a duplicate, a late ``started`` after ``completed``, or an
older attempt's event matches no row and changes nothing. A finished job never changes again.
The same attempt started again later (put back by a stopping worker, or redelivered) moves
``started_at`` to its new start, from which the scheduler judges whether it hangs; unless that
start is ``now`` itself, which is what a start stamped more than a second in the future was taken
for (see ``results.service``), and whose every copy would move it again.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import and_, case, false, or_, true, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cloudtask.contracts import jsoncodec
from cloudtask.contracts.messages import JobFinished, JobStarted
from cloudtask.contracts.statuses import JobStatus
from cloudtask.db.queries import job_events_pg
from cloudtask.db.tables import jobs


@dataclass(frozen=True, slots=True)
class FinishedEvent:
    event: JobFinished
    retry_at: datetime
    """When to run the next attempt, if this failure is retried."""


@dataclass(frozen=True, slots=True)
class Transition:
    """A job an event moved, as it now stands."""

    id: UUID
    type: str
    status: JobStatus
    attempts: int
    created_at: datetime
    finished_at: datetime | None


_OPEN = (JobStatus.PENDING, JobStatus.RUNNING)


async def apply_started(
    conn: AsyncConnection, events: Sequence[JobStarted], *, now: datetime
) -> list[UUID]:
    """Mark jobs RUNNING; returns the ids that changed."""
    if not events:
        return []
    if conn.dialect.name == "postgresql":
        return await job_events_pg.apply_started(conn, events, now=now)
    changed = []
    for event in events:
        result = await conn.execute(
            update(jobs)
            .where(
                jobs.c.id == event.job_id,
                jobs.c.dispatch_attempt == event.attempt,
                or_(
                    jobs.c.status == JobStatus.PENDING,
                    and_(jobs.c.status == JobStatus.RUNNING, jobs.c.attempts < event.attempt),
                    # The same attempt started again (put back by a stopping worker, or
                    # redelivered): its timeout runs from the new start. Not a start stamped
                    # far in the future and taken as now: each copy of it would move it again.
                    and_(
                        jobs.c.status == JobStatus.RUNNING,
                        jobs.c.attempts == event.attempt,
                        jobs.c.started_at < event.started_at,
                        true() if event.started_at != now else false(),
                    ),
                ),
            )
            .values(
                status=JobStatus.RUNNING,
                attempts=event.attempt,
                started_at=event.started_at,
                updated_at=now,
            )
            .returning(jobs.c.id)
        )
        changed += result.scalars().all()
    return changed


async def apply_finished(
    conn: AsyncConnection, events: Sequence[FinishedEvent], *, now: datetime
) -> list[Transition]:
    """Record each attempt's end: COMPLETED, CANCELLED (if a cancel was asked), SCHEDULED for a
    retry (retryable, attempts left) or FAILED."""
    if not events:
        return []
    if conn.dialect.name == "postgresql":
        rows = await job_events_pg.apply_finished(conn, [_row(i) for i in events], now=now)
        return [
            Transition(r.id, r.type, JobStatus(r.status), r.attempts, r.created_at, r.finished_at)
            for r in rows
        ]
    moved = []
    for item in events:
        event = item.event
        changes = _finished_values(item) | {"updated_at": now}
        result = await conn.execute(
            update(jobs)
            .where(
                jobs.c.id == event.job_id,
                jobs.c.dispatch_attempt == event.attempt,
                jobs.c.status.in_(_OPEN),
            )
            .values(**changes)
            .returning(
                jobs.c.id,
                jobs.c.type,
                jobs.c.status,
                jobs.c.attempts,
                jobs.c.created_at,
                jobs.c.finished_at,
            )
        )
        moved += [
            Transition(r.id, r.type, JobStatus(r.status), r.attempts, r.created_at, r.finished_at)
            for r in result
        ]
    return moved


def _finished_values(item: FinishedEvent) -> dict[str, Any]:
    event = item.event
    # If the started event has not been applied (it travels on another queue), this one stands in.
    not_started = jobs.c.attempts < event.attempt
    common = {
        "attempts": case((not_started, event.attempt), else_=jobs.c.attempts),
        "started_at": case((not_started, event.started_at), else_=jobs.c.started_at),
    }
    if event.status == JobStatus.COMPLETED:
        return common | {
            "status": JobStatus.COMPLETED,
            "result": jsoncodec.dumps_str(event.result),
            "error": None,
            "finished_at": event.finished_at,
        }
    retried = (
        and_(~jobs.c.cancel_requested, jobs.c.max_attempts > event.attempt)
        if event.retryable
        else false()
    )
    return common | {
        "status": case(
            (jobs.c.cancel_requested, JobStatus.CANCELLED),
            (retried, JobStatus.SCHEDULED),
            else_=JobStatus.FAILED,
        ),
        "error": storable(event.error),
        "finished_at": case((retried, None), else_=event.finished_at),
        "run_at": case((retried, item.retry_at), else_=jobs.c.run_at),
    }


def _row(item: FinishedEvent) -> dict[str, Any]:
    event = item.event
    completed = event.status == JobStatus.COMPLETED
    return {
        "id": event.job_id,
        "attempt": event.attempt,
        "completed": completed,
        "result": jsoncodec.dumps_str(event.result) if completed else None,
        "error": None if completed else storable(event.error),
        "retryable": event.retryable,
        "started_at": event.started_at,
        "finished_at": event.finished_at,
        "retry_at": item.retry_at,
    }


def storable(text: str | None) -> str | None:
    """``text`` as every database stores it: PostgreSQL refuses NUL characters in text (and
    anything UTF-8 cannot encode), and an error message may hold them."""
    if text is None:
        return None
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
