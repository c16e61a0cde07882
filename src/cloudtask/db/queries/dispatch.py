"""Queries the scheduler makes on ``jobs`` and ``leadership``: due jobs, abandoned and hung
attempts, and the fencing token."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cloudtask.contracts.messages import job_created_body
from cloudtask.contracts.queues import JOBS_CREATED
from cloudtask.contracts.statuses import JobStatus
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.db.tables import jobs, leadership

SCHEDULER = "scheduler"


@dataclass(frozen=True, slots=True)
class Attempt:
    """A job about to be handed to the workers, or one a worker holds."""

    id: UUID
    user_id: UUID
    type: str
    payload: str
    priority: int
    attempt: int
    timeout_seconds: float
    run_at: datetime
    started_at: datetime | None = None
    cancel_requested: bool = False
    redeliveries: int = 0

    def message(self, now: datetime) -> outbox_q.NewOutboxMessage:
        body = job_created_body(
            job_id=self.id,
            user_id=self.user_id,
            type=self.type,
            payload_json=self.payload,
            priority=self.priority,
            attempt=self.attempt,
            timeout_seconds=self.timeout_seconds,
            enqueued_at=now,
        )
        return outbox_q.NewOutboxMessage(JOBS_CREATED, body.decode(), self.priority)


_ATTEMPT_COLUMNS = (
    jobs.c.id,
    jobs.c.user_id,
    jobs.c.type,
    jobs.c.payload,
    jobs.c.priority,
    jobs.c.timeout_seconds,
    jobs.c.run_at,
    jobs.c.started_at,
    jobs.c.cancel_requested,
    jobs.c.redeliveries,
)


def _attempt(row: Any, attempt: int) -> Attempt:
    return Attempt(
        id=row.id,
        user_id=row.user_id,
        type=row.type,
        payload=row.payload,
        priority=row.priority,
        attempt=attempt,
        timeout_seconds=row.timeout_seconds,
        run_at=row.run_at,
        started_at=row.started_at,
        cancel_requested=row.cancel_requested,
        redeliveries=row.redeliveries,
    )


async def dispatch_due(
    conn: AsyncConnection, *, now: datetime, limit: int
) -> tuple[list[Attempt], list[outbox_q.OutboxRow]]:
    """Move due SCHEDULED jobs to PENDING, highest priority first, and write their messages.

    Rows are locked with SKIP LOCKED, so schedulers running side by side never take the same job.
    """
    rows = (
        await conn.execute(
            select(*_ATTEMPT_COLUMNS, jobs.c.attempts)
            .where(jobs.c.status == JobStatus.SCHEDULED, jobs.c.run_at <= now)
            .order_by(jobs.c.priority.desc(), jobs.c.run_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not rows:
        return [], []
    moved = await conn.execute(
        update(jobs)
        .where(jobs.c.id.in_([row.id for row in rows]), jobs.c.status == JobStatus.SCHEDULED)
        .values(status=JobStatus.PENDING, dispatch_attempt=jobs.c.attempts + 1, updated_at=now)
        .returning(jobs.c.id)
    )
    # Only what this transaction moved is announced: where the row locks are not exclusive
    # (SQLite ignores FOR UPDATE), a job another scheduler took meanwhile is left to it.
    taken = set(moved.scalars())
    due = [_attempt(row, row.attempts + 1) for row in rows if row.id in taken]
    outbox_rows = await outbox_q.add(conn, [job.message(now) for job in due], now=now)
    return due, outbox_rows


async def pending(conn: AsyncConnection) -> list[Attempt]:
    """Every PENDING job's attempt, as it was handed to the workers: highest priority first,
    then oldest first."""
    rows = await conn.execute(
        select(*_ATTEMPT_COLUMNS, jobs.c.dispatch_attempt)
        .where(jobs.c.status == JobStatus.PENDING)
        .order_by(jobs.c.priority.desc(), jobs.c.created_at, jobs.c.seq)
    )
    return [_attempt(row, row.dispatch_attempt) for row in rows]


async def pending_page(
    conn: AsyncConnection, *, before: datetime, after: int, limit: int
) -> tuple[list[Attempt], int]:
    """Up to ``limit`` attempts of jobs PENDING since before ``before``, past the job ``after``
    (a ``seq``, 0 for the first page), in the order they were created; and the ``seq`` to pass
    for the next page."""
    rows = (
        await conn.execute(
            select(*_ATTEMPT_COLUMNS, jobs.c.dispatch_attempt, jobs.c.seq)
            .where(
                jobs.c.status == JobStatus.PENDING,
                jobs.c.updated_at < before,
                jobs.c.seq > after,
            )
            .order_by(jobs.c.seq)
            .limit(limit)
        )
    ).all()
    return [_attempt(row, row.dispatch_attempt) for row in rows], (rows[-1].seq if rows else after)


async def running_since(
    conn: AsyncConnection,
    before: datetime,
    limit: int | None,
    *,
    past: tuple[datetime, UUID] | None = None,
) -> list[Attempt]:
    """RUNNING attempts that started before ``before``, oldest first; with ``past``, those
    after that start and id (the last of the page before)."""
    query = (
        select(*_ATTEMPT_COLUMNS, jobs.c.dispatch_attempt)
        .where(jobs.c.status == JobStatus.RUNNING, jobs.c.started_at < before)
        .order_by(jobs.c.started_at, jobs.c.id)
        .limit(limit)
    )
    if past is not None:
        started, job_id = past
        # The first condition alone bounds the index scan (the OR alone is only a filter).
        query = query.where(
            jobs.c.started_at >= started,
            or_(jobs.c.started_at > started, jobs.c.id > job_id),
        )
    rows = await conn.execute(query)
    return [_attempt(row, row.dispatch_attempt) for row in rows]


async def redispatch(
    conn: AsyncConnection, lost: Sequence[Attempt], *, now: datetime, counted: bool = True
) -> tuple[list[Attempt], list[outbox_q.OutboxRow]]:
    """Hand attempts whose worker vanished out again (same attempt number), unless they changed
    meanwhile; ``counted``, each as one more loss of its attempt (towards ``max_deliveries``).
    Returns the attempts requeued and their outbox rows."""
    requeued = []
    for job in lost:
        result = await conn.execute(
            update(jobs)
            .where(
                jobs.c.id == job.id,
                jobs.c.status == JobStatus.RUNNING,
                jobs.c.dispatch_attempt == job.attempt,
            )
            .values(
                status=JobStatus.PENDING,
                redeliveries=jobs.c.redeliveries + int(counted),
                updated_at=now,
            )
        )
        if result.rowcount:
            requeued.append(job)
    rows = await outbox_q.add(conn, [job.message(now) for job in requeued], now=now)
    return requeued, rows


async def end_lost(
    conn: AsyncConnection, job: Attempt, status: JobStatus, error: str, *, now: datetime
) -> bool:
    """Finish a RUNNING attempt nobody will report on (cancelled, or lost too often)."""
    result = await conn.execute(
        update(jobs)
        .where(
            jobs.c.id == job.id,
            jobs.c.status == JobStatus.RUNNING,
            jobs.c.dispatch_attempt == job.attempt,
        )
        .values(status=status, error=error, finished_at=now, updated_at=now)
    )
    return bool(result.rowcount)


async def take_leadership(conn: AsyncConnection, holder: str, *, now: datetime) -> int:
    """Raise the fencing token for a new leader and return it."""
    result = await conn.execute(
        update(leadership)
        .where(leadership.c.name == SCHEDULER)
        .values(token=leadership.c.token + 1, holder=holder, updated_at=now)
        .returning(leadership.c.token)
    )
    return int(result.scalar_one())


async def still_leader(conn: AsyncConnection, holder: str, token: int) -> bool:
    """Whether ``holder`` with ``token`` is still the fenced leader. Locks the row, so within the
    caller's transaction no new leader can take over."""
    row = (
        await conn.execute(
            select(leadership.c.token, leadership.c.holder)
            .where(leadership.c.name == SCHEDULER)
            .with_for_update()
        )
    ).first()
    return row is not None and row.token == token and row.holder == holder
