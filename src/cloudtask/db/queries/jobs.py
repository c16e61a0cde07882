"""Queries on ``jobs`` that the API makes: submit, read, list, cancel.

Submitting a due job writes its ``jobs.created`` message to the outbox in the same transaction, so
a committed job is always eventually published.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Row, bindparam, case, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from cloudtask.contracts.messages import JobCreated
from cloudtask.contracts.queues import JOBS_CREATED
from cloudtask.contracts.statuses import JobStatus
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.db.tables import jobs, outbox

JOB_COLUMNS = (
    jobs.c.seq,
    jobs.c.id,
    jobs.c.user_id,
    jobs.c.type,
    jobs.c.payload,
    jobs.c.status,
    jobs.c.priority,
    jobs.c.attempts,
    jobs.c.max_attempts,
    jobs.c.timeout_seconds,
    jobs.c.run_at,
    jobs.c.result,
    jobs.c.error,
    jobs.c.schedule_id,
    jobs.c.cancel_requested,
    jobs.c.created_at,
    jobs.c.updated_at,
    jobs.c.started_at,
    jobs.c.finished_at,
)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as stored; ``payload`` and ``result`` are JSON text."""

    seq: int
    id: UUID
    user_id: UUID
    type: str
    payload: str
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    timeout_seconds: float
    run_at: datetime
    result: str | None
    error: str | None
    schedule_id: UUID | None
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Row[Any, *tuple[Any, ...]]) -> "JobRecord":
        values = dict(row._mapping)
        values["status"] = JobStatus(values["status"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class NewJob:
    id: UUID
    user_id: UUID
    type: str
    payload: str
    payload_value: Any
    priority: int
    max_attempts: int
    timeout_seconds: float
    run_at: datetime
    created_at: datetime
    schedule_id: UUID | None = None

    def is_due(self) -> bool:
        return self.run_at <= self.created_at

    def record(self, seq: int = 0) -> JobRecord:
        """The job as this submission stores it."""
        return JobRecord(
            seq=seq,
            id=self.id,
            user_id=self.user_id,
            type=self.type,
            payload=self.payload,
            status=JobStatus.PENDING if self.is_due() else JobStatus.SCHEDULED,
            priority=self.priority,
            attempts=0,
            max_attempts=self.max_attempts,
            timeout_seconds=self.timeout_seconds,
            run_at=self.run_at,
            result=None,
            error=None,
            schedule_id=self.schedule_id,
            cancel_requested=False,
            created_at=self.created_at,
            updated_at=self.created_at,
            started_at=None,
            finished_at=None,
        )

    def message(self, attempt: int = 1) -> outbox_q.NewOutboxMessage:
        body = JobCreated(
            job_id=self.id,
            user_id=self.user_id,
            type=self.type,
            payload=self.payload_value,
            priority=self.priority,
            attempt=attempt,
            timeout_seconds=self.timeout_seconds,
            enqueued_at=self.created_at,
        ).encode()
        return outbox_q.NewOutboxMessage(JOBS_CREATED, body.decode(), self.priority)


def _row(job: NewJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "user_id": job.user_id,
        "type": job.type,
        "payload": job.payload,
        "status": JobStatus.PENDING if job.is_due() else JobStatus.SCHEDULED,
        "priority": job.priority,
        "attempts": 0,
        "dispatch_attempt": 1,
        "max_attempts": job.max_attempts,
        "timeout_seconds": job.timeout_seconds,
        "run_at": job.run_at,
        "schedule_id": job.schedule_id,
        "cancel_requested": False,
        "redeliveries": 0,
        "created_at": job.created_at,
        "updated_at": job.created_at,
    }


async def submit(conn: AsyncConnection, new_jobs: Sequence[NewJob]) -> list[outbox_q.OutboxRow]:
    """Insert the jobs and, for those already due, their outbox messages, atomically.

    Returns the outbox rows, to be published once the caller's transaction commits.
    """
    due = [job.message() for job in new_jobs if job.is_due()]
    if conn.dialect.name == "postgresql" and len(new_jobs) == 1 and due:
        return await _submit_one_statement(conn, new_jobs[0], due[0])
    await conn.execute(insert(jobs), [_row(job) for job in new_jobs])
    return await outbox_q.add(conn, due, now=new_jobs[0].created_at) if due else []


_JOB_COLUMNS_SET = [
    "id", "user_id", "type", "payload", "status", "priority", "attempts", "dispatch_attempt",
    "max_attempts", "timeout_seconds", "run_at", "schedule_id", "cancel_requested",
    "redeliveries", "created_at", "updated_at",
]  # fmt: skip
# Built once: executing a prepared construct skips building and hashing a statement per request.
_SUBMIT_ONE = (
    insert(outbox)
    .values(
        queue=bindparam("o_queue"),
        body=bindparam("o_body"),
        priority=bindparam("o_priority"),
        created_at=bindparam("j_created_at"),
    )
    .returning(outbox.c.id)
    .add_cte(
        insert(jobs)
        .values({name: bindparam(f"j_{name}") for name in _JOB_COLUMNS_SET})
        .cte("new_job")
    )
)


async def _submit_one_statement(
    conn: AsyncConnection, job: NewJob, message: outbox_q.NewOutboxMessage
) -> list[outbox_q.OutboxRow]:
    # One statement is atomic by itself: with the job in a data-modifying CTE, a submission is
    # one round trip, and needs no transaction around it (see session.autocommit).
    params = {f"j_{name}": value for name, value in _row(job).items()} | {
        "o_queue": message.queue,
        "o_body": message.body,
        "o_priority": message.priority,
    }
    outbox_id = (await conn.execute(_SUBMIT_ONE, params)).scalar_one()
    return [outbox_q.OutboxRow(outbox_id, message.queue, message.body, message.priority)]


async def get(conn: AsyncConnection, job_id: UUID, user_id: UUID) -> JobRecord | None:
    row = (
        await conn.execute(
            select(*JOB_COLUMNS).where(jobs.c.id == job_id, jobs.c.user_id == user_id)
        )
    ).first()
    return None if row is None else JobRecord.from_row(row)


async def list_for_user(
    conn: AsyncConnection,
    user_id: UUID,
    *,
    limit: int,
    before_seq: int | None = None,
    status: JobStatus | None = None,
    job_type: str | None = None,
) -> list[JobRecord]:
    """A user's jobs, newest first, starting below ``before_seq`` (the cursor)."""
    query = select(*JOB_COLUMNS).where(jobs.c.user_id == user_id)
    if status is not None:
        query = query.where(jobs.c.status == status)
    if job_type is not None:
        query = query.where(jobs.c.type == job_type)
    if before_seq is not None:
        query = query.where(jobs.c.seq < before_seq)
    rows = await conn.execute(query.order_by(jobs.c.seq.desc()).limit(limit))
    return [JobRecord.from_row(row) for row in rows]


async def cancel(
    conn: AsyncConnection, job_id: UUID, user_id: UUID, *, now: datetime
) -> JobRecord | None:
    """Cancel a job that has not finished: at once if it is waiting, by request if it runs.

    Returns the updated job, or ``None`` if there is no such unfinished job of this user.
    """
    running = jobs.c.status == JobStatus.RUNNING
    result = await conn.execute(
        update(jobs)
        .where(
            jobs.c.id == job_id,
            jobs.c.user_id == user_id,
            jobs.c.status.in_([JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.RUNNING]),
        )
        .values(
            status=case((running, jobs.c.status), else_=JobStatus.CANCELLED),
            finished_at=case((running, jobs.c.finished_at), else_=now),
            cancel_requested=True,
            updated_at=now,
        )
        .returning(*JOB_COLUMNS)
    )
    row = result.first()
    return None if row is None else JobRecord.from_row(row)
