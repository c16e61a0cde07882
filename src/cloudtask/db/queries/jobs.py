"""Queries on ``jobs`` that the API makes: submit, read, list, cancel.

Submitting a due job writes its ``jobs.created`` message to the outbox in the same transaction, so
a committed job is always eventually published.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple
from uuid import UUID

import asyncpg
from sqlalchemy import Row, case, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cloudtask.contracts.messages import job_created_body
from cloudtask.contracts.queues import JOBS_CREATED
from cloudtask.contracts.statuses import JobStatus
from cloudtask.db import session
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.db.tables import jobs
from cloudtask.errors import UnknownUser

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


class ListPosition(NamedTuple):
    """Where a listing stands: the last job listed, by the order jobs are listed in."""

    created_at: datetime
    seq: int


# Not frozen, like NewJob below: a frozen dataclass sets each field through object.__setattr__,
# five times the cost of a plain one, and a batch builds a thousand of each (two microseconds a
# job for this one). Neither is changed after it is built.
@dataclass(slots=True)
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
        """A row of ``JOB_COLUMNS``, whose order is the fields' (a unit test holds them equal).

        By position: a listing builds fifty of these, and a mapping per row cost more than the
        record (py-spy on GET /jobs).
        """
        seq, id_, user_id, type_, payload, status, *rest = row
        return cls(seq, id_, user_id, type_, payload, JobStatus(status), *rest)


@dataclass(slots=True)
class NewJob:
    id: UUID
    user_id: UUID
    type: str
    payload: str
    priority: int
    max_attempts: int
    timeout_seconds: float
    run_at: datetime
    created_at: datetime
    schedule_id: UUID | None = None

    def is_due(self) -> bool:
        return self.run_at <= self.created_at

    @property
    def status(self) -> JobStatus:
        """The status it is stored with: PENDING when due, else SCHEDULED."""
        return JobStatus.PENDING if self.is_due() else JobStatus.SCHEDULED

    def record(self, seq: int = 0) -> JobRecord:
        """The job as this submission stores it."""
        # By position, in JobRecord's order (seq, id, user_id, type, payload, status, priority,
        # attempts, max_attempts, timeout_seconds, run_at, result, error, schedule_id,
        # cancel_requested, created_at, updated_at, started_at, finished_at): a third cheaper
        # than by keyword, a thousand times per batch.
        created = self.created_at
        return JobRecord(
            seq, self.id, self.user_id, self.type, self.payload, self.status, self.priority,
            0, self.max_attempts, self.timeout_seconds, self.run_at, None, None,
            self.schedule_id, False, created, created, None, None,
        )  # fmt: skip

    def message(self, attempt: int = 1) -> outbox_q.NewOutboxMessage:
        body = job_created_body(
            job_id=self.id,
            user_id=self.user_id,
            type=self.type,
            payload_json=self.payload,
            priority=self.priority,
            attempt=attempt,
            timeout_seconds=self.timeout_seconds,
            enqueued_at=self.created_at,
        )
        return outbox_q.NewOutboxMessage(JOBS_CREATED, body.decode(), self.priority)


def _row(job: NewJob) -> dict[str, Any]:
    return {
        "id": job.id,
        "user_id": job.user_id,
        "type": job.type,
        "payload": job.payload,
        "status": job.status,
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
    # The only constraint a new job can break is the foreign key to its user (ids are unique):
    # a token that outlived its user.
    try:
        if conn.dialect.name == "postgresql":
            if len(new_jobs) == 1 and due:
                return await _submit_one_statement(conn, new_jobs[0], due[0])
            new_rows = outbox_q.grouped(due)
            if len(new_jobs) >= COPY_FROM:
                return await _submit_by_copy(conn, new_jobs, new_rows)
            return await _submit_many_statement(conn, new_jobs, new_rows)
        await conn.execute(insert(jobs), [_row(job) for job in new_jobs])
    except (IntegrityError, asyncpg.ForeignKeyViolationError):
        raise UnknownUser from None
    return await outbox_q.add(conn, due, now=new_jobs[0].created_at) if due else []


# The job in a data-modifying CTE and its outbox message, in one statement: atomic by itself, so
# one round trip with no transaction around it (see session.autocommit). It runs on the asyncpg
# connection directly: this is the path of every submitted job, and SQLAlchemy's execution layer
# cost more than the statement (py-spy under wrk).
_SUBMIT_ONE = (
    "WITH new_job AS (INSERT INTO jobs (id, user_id, type, payload, status, priority, attempts,"
    " dispatch_attempt, max_attempts, timeout_seconds, run_at, schedule_id, cancel_requested,"
    " redeliveries, created_at, updated_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, 0, 1, $7, $8, $9, $10, false, 0, $11, $11))"
    " INSERT INTO outbox (queue, body, priority, created_at) VALUES ($12, $13, $6, $11)"
    " RETURNING id"
)


async def _submit_one_statement(
    conn: AsyncConnection, job: NewJob, message: outbox_q.NewOutboxMessage
) -> list[outbox_q.OutboxRow]:
    driver = await session.driver(conn)
    outbox_id = await driver.fetchval(
        _SUBMIT_ONE,
        job.id,
        job.user_id,
        job.type,
        job.payload,
        JobStatus.PENDING.value,
        job.priority,
        job.max_attempts,
        job.timeout_seconds,
        job.run_at,
        job.schedule_id,
        job.created_at,
        message.queue,
        message.body,
    )
    return [outbox_q.OutboxRow(int(outbox_id), message.queue, [message.body], message.priority)]


def _outbox_arguments(new_rows: Sequence[outbox_q.NewOutboxRow]) -> tuple[Any, ...]:
    """The outbox rows of jobs written together (see ``outbox_q.grouped``; usually one), as the
    three arrays the statements below insert them from: bodies, priorities, counts."""
    return (
        [row.body for row in new_rows],
        [row.priority for row in new_rows],
        [len(row.bodies) for row in new_rows],
    )


def _stored_rows(
    ids: Sequence[Any], new_rows: Sequence[outbox_q.NewOutboxRow]
) -> list[outbox_q.OutboxRow]:
    # One statement takes its ids from the sequence in the order it inserts, which is the
    # input's; sorting them does not rely on the order RETURNING gives them back in.
    outbox_ids = sorted(int(row[0]) for row in ids)
    return [
        outbox_q.OutboxRow(outbox_id, row.queue, row.bodies, row.priority)
        for outbox_id, row in zip(outbox_ids, new_rows, strict=True)
    ]


# Any number of jobs, and the outbox rows of the due ones, in one statement: one array per
# column, so the statement is the same (prepared once) whatever the count. Under load this is
# most of what is written (single submissions grouped by api.group_commit); it replaced
# SQLAlchemy's multi-row INSERTs, which cost the api more CPU than PostgreSQL spent. The
# data-modifying CTE runs although nothing refers to it.
_SUBMIT_MANY = (
    "WITH new_jobs AS (INSERT INTO jobs (id, user_id, type, payload, status, priority, attempts,"
    " dispatch_attempt, max_attempts, timeout_seconds, run_at, schedule_id, cancel_requested,"
    " redeliveries, created_at, updated_at)"
    " SELECT id, user_id, type, payload, status, priority, 0, 1, max_attempts, timeout_seconds,"
    " run_at, schedule_id, false, 0, created_at, created_at"
    " FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int2[],"
    " $7::int4[], $8::float8[], $9::timestamptz[], $10::uuid[], $11::timestamptz[])"
    " WITH ORDINALITY AS t(id, user_id, type, payload, status, priority, max_attempts,"
    " timeout_seconds, run_at, schedule_id, created_at, ord) ORDER BY ord)"
    " INSERT INTO outbox (queue, body, priority, messages, created_at)"
    " SELECT $12, body, priority, messages, $13 FROM unnest($14::text[], $15::int2[],"
    " $16::int4[]) WITH ORDINALITY AS o(body, priority, messages, ord) ORDER BY ord RETURNING id"
)


async def _submit_many_statement(
    conn: AsyncConnection,
    new_jobs: Sequence[NewJob],
    new_rows: Sequence[outbox_q.NewOutboxRow],
) -> list[outbox_q.OutboxRow]:
    driver = await session.driver(conn)
    ids = await driver.fetch(
        _SUBMIT_MANY,
        [job.id for job in new_jobs],
        [job.user_id for job in new_jobs],
        [job.type for job in new_jobs],
        [job.payload for job in new_jobs],
        [job.status.value for job in new_jobs],
        [job.priority for job in new_jobs],
        [job.max_attempts for job in new_jobs],
        [job.timeout_seconds for job in new_jobs],
        [job.run_at for job in new_jobs],
        [job.schedule_id for job in new_jobs],
        [job.created_at for job in new_jobs],
        JOBS_CREATED,
        new_jobs[0].created_at,
        *_outbox_arguments(new_rows),
    )
    return _stored_rows(ids, new_rows)


# From this many jobs on, COPY and a second statement for the outbox, in a transaction: four
# round trips rather than one, but for a thousand jobs 25% less CPU in PostgreSQL and in the api
# than the arrays above, whose every element asyncpg checks and encodes one by one (server
# 29-33 ms against 24-25 ms, client 12 ms against 9 ms, measured with the tables' indexes).
COPY_FROM = 100
_COPY_COLUMNS = (
    "id", "user_id", "type", "payload", "status", "priority", "attempts", "dispatch_attempt",
    "max_attempts", "timeout_seconds", "run_at", "schedule_id", "cancel_requested",
    "redeliveries", "created_at", "updated_at",
)  # fmt: skip
_ADD_OUTBOX = (
    "INSERT INTO outbox (queue, body, priority, messages, created_at)"
    " SELECT $1, body, priority, messages, $2 FROM unnest($3::text[], $4::int2[], $5::int4[])"
    " WITH ORDINALITY AS o(body, priority, messages, ord) ORDER BY ord RETURNING id"
)


async def _submit_by_copy(
    conn: AsyncConnection,
    new_jobs: Sequence[NewJob],
    new_rows: Sequence[outbox_q.NewOutboxRow],
) -> list[outbox_q.OutboxRow]:
    driver = await session.driver(conn)
    records = [
        (
            job.id, job.user_id, job.type, job.payload, job.status.value, job.priority, 0, 1,
            job.max_attempts, job.timeout_seconds, job.run_at, job.schedule_id, False, 0,
            job.created_at, job.created_at,
        )
        for job in new_jobs
    ]  # fmt: skip
    async with driver.transaction():
        await driver.copy_records_to_table("jobs", records=records, columns=_COPY_COLUMNS)
        if not new_rows:
            return []
        ids = await driver.fetch(
            _ADD_OUTBOX, JOBS_CREATED, new_jobs[0].created_at, *_outbox_arguments(new_rows)
        )
    return _stored_rows(ids, new_rows)


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
    after: ListPosition | None = None,
    status: JobStatus | None = None,
    job_type: str | None = None,
) -> list[JobRecord]:
    """A user's jobs, newest first, starting past ``after`` (the cursor)."""
    query = select(*JOB_COLUMNS).where(jobs.c.user_id == user_id)
    if status is not None:
        query = query.where(jobs.c.status == status)
    if job_type is not None:
        query = query.where(jobs.c.type == job_type)
    if after is not None:
        query = query.where(tuple_(jobs.c.created_at, jobs.c.seq) < tuple(after))
    query = query.order_by(jobs.c.created_at.desc(), jobs.c.seq.desc()).limit(limit)
    return [JobRecord.from_row(row) for row in await conn.execute(query)]


async def to_cancel(
    conn: AsyncConnection, job_id: UUID, user_id: UUID
) -> tuple[JobStatus, bool] | None:
    """The status and whether a cancel was asked, of this user's job, locked until the cancel
    commits; ``None`` if there is no such job."""
    row = (
        await conn.execute(
            select(jobs.c.status, jobs.c.cancel_requested)
            .where(jobs.c.id == job_id, jobs.c.user_id == user_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        return None
    return JobStatus(row.status), bool(row.cancel_requested)


async def cancel_asked(conn: AsyncConnection, job_id: UUID) -> bool:
    """Whether a cancel of the job was committed."""
    asked = await conn.scalar(select(jobs.c.cancel_requested).where(jobs.c.id == job_id))
    return bool(asked)


async def cancel(
    conn: AsyncConnection, job_id: UUID, user_id: UUID, *, now: datetime
) -> JobRecord | None:
    """Cancel a job that has not finished: at once if it is waiting (PENDING or SCHEDULED), by
    request if it runs.

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
