"""Statements find their jobs through the index however small ``jobs`` was when their connection
first ran them (see ``db.engine.Plans``): the results-processor's updates, the api's reads.

PostgreSQL only: SQLite plans each statement anew.
"""

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloudtask.contracts.messages import JobFinished, JobStarted
from cloudtask.contracts.statuses import JobStatus
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.engine import Plans, create_engine
from cloudtask.db.queries import job_events
from cloudtask.db.queries import jobs as jobs_q
from cloudtask.db.queries import users as users_q

# PostgreSQL keeps a generic plan from a prepared statement's sixth run on.
FIRST_RUNS = 8
GROWN_TO = 3000


@pytest.fixture
async def writer(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_url)
    yield engine
    await engine.dispose()


async def _add_jobs(engine: AsyncEngine, user_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    now = utcnow()
    new = [
        jobs_q.NewJob(uuid.uuid4(), user_id, "echo", "{}", 5, 3, 300.0, now, now)
        for _ in range(count)
    ]
    async with session.transaction(engine) as conn:
        await jobs_q.submit(conn, new)
    return [job.id for job in new]


def _finished(job_id: uuid.UUID, now: datetime) -> job_events.FinishedEvent:
    event = JobFinished(
        job_id=job_id,
        attempt=1,
        status="COMPLETED",
        worker_id="w",
        started_at=now - timedelta(seconds=1),
        finished_at=now,
    )
    return job_events.FinishedEvent(event, retry_at=now)


def _started(job_id: uuid.UUID, now: datetime) -> JobStarted:
    return JobStarted(job_id=job_id, attempt=1, worker_id="w", started_at=now)


async def _rows_read(conn: AsyncConnection) -> int:
    """Rows of ``jobs`` that ``conn``'s backend has read (by sequential or index scans) and not
    yet reported: this transaction's, and perhaps its last ones', so compare two readings."""
    row = (
        await conn.execute(
            text(
                "SELECT seq_tup_read + idx_tup_fetch FROM pg_stat_xact_user_tables"
                " WHERE relname = 'jobs'"
            )
        )
    ).one()
    return int(row[0])


async def _add_user(engine: AsyncEngine) -> uuid.UUID:
    user_id = uuid.uuid4()
    async with session.transaction(engine) as conn:
        await users_q.create_user(
            conn, user_id=user_id, email=f"{user_id}@example.com", password_hash="x", now=utcnow()
        )
    return user_id


async def _events_read(engine: AsyncEngine, job_id: uuid.UUID) -> tuple[int, JobStatus]:
    """Apply a start and an end to ``job_id`` in one transaction on ``engine``'s connection;
    the rows of ``jobs`` they read, and the job's status after."""
    now = utcnow()
    async with session.transaction(engine) as conn:
        before = await _rows_read(conn)
        await job_events.apply_started(conn, [_started(job_id, now)], now=now)
        moved = await job_events.apply_finished(conn, [_finished(job_id, now)], now=now)
        after = await _rows_read(conn)
    assert [t.id for t in moved] == [job_id]
    return after - before, moved[0].status


async def _run_while_small(engine: AsyncEngine) -> None:
    """Run both updates as a busy results-processor would while ``jobs`` is nearly empty."""
    for _ in range(FIRST_RUNS):
        now = utcnow()
        async with session.transaction(engine) as conn:
            await job_events.apply_started(conn, [_started(uuid.uuid4(), now)], now=now)
            await job_events.apply_finished(conn, [_finished(uuid.uuid4(), now)], now=now)


async def test_updates_use_the_index_after_the_table_grew(pg_url: str, writer: AsyncEngine) -> None:
    user_id = await _add_user(writer)
    # One connection each, so every run of a statement is on the connection that keeps its plan.
    fresh = create_engine(pg_url, pool_size=1, plans=Plans.FRESH)
    kept = create_engine(pg_url, pool_size=1)
    try:
        await _add_jobs(writer, user_id, 2)
        await _run_while_small(fresh)
        await _run_while_small(kept)
        first, second, *_ = await _add_jobs(writer, user_id, GROWN_TO)

        # Each of the two statements reads its one row.
        rows, status = await _events_read(fresh, first)
        assert rows == 2
        assert status == JobStatus.COMPLETED
        # What the option prevents: the plan kept from the small table reads all of it.
        rows, status = await _events_read(kept, second)
        assert rows > GROWN_TO
        assert status == JobStatus.COMPLETED
    finally:
        await fresh.dispose()
        await kept.dispose()


async def _get_read(engine: AsyncEngine, job_id: uuid.UUID, user_id: uuid.UUID) -> int:
    """Read the job as ``GET /jobs/{id}`` does; the rows of ``jobs`` it read."""
    async with session.reading(engine) as conn:
        before = await _rows_read(conn)
        found = await jobs_q.get(conn, job_id, user_id)
        after = await _rows_read(conn)
    assert found is not None
    return after - before


async def test_api_reads_use_the_index_after_the_table_grew(
    pg_url: str, writer: AsyncEngine
) -> None:
    user_id = await _add_user(writer)
    fresh = create_engine(pg_url, pool_size=1, plans=Plans.FRESH_SQLALCHEMY)
    kept = create_engine(pg_url, pool_size=1)
    try:
        first, *_ = await _add_jobs(writer, user_id, 2)
        for _ in range(FIRST_RUNS):
            await _get_read(fresh, first, user_id)
            await _get_read(kept, first, user_id)
        await _add_jobs(writer, user_id, GROWN_TO)

        assert await _get_read(fresh, first, user_id) == 1
        # The plan kept from the small table reads all of the user's jobs through another index.
        assert await _get_read(kept, first, user_id) > GROWN_TO
    finally:
        await fresh.dispose()
        await kept.dispose()


async def test_statements_prepared_for_one_run_are_closed(pg_url: str, writer: AsyncEngine) -> None:
    user_id = await _add_user(writer)
    first, *_ = await _add_jobs(writer, user_id, 1)
    fresh = create_engine(pg_url, pool_size=1, plans=Plans.FRESH_SQLALCHEMY)
    try:
        for _ in range(50):
            await _get_read(fresh, first, user_id)
        async with session.reading(fresh) as conn:
            open_statements = (
                await conn.execute(text("SELECT count(*) FROM pg_prepared_statements"))
            ).scalar_one()
    finally:
        await fresh.dispose()
    # Each read prepared two statements (its own and the count of rows read): all but the
    # last few were closed on the connection's next use.
    assert open_statements < 10
