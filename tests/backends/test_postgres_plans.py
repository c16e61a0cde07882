"""The results-processor's updates find their jobs through the index however small ``jobs`` was
when its connection first ran them (see ``db.engine.create_engine``'s ``fresh_plans``).

PostgreSQL only: SQLite plans each statement anew.
"""

import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.contracts.messages import JobFinished, JobStarted
from cloudtask.contracts.statuses import JobStatus
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.engine import create_engine
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


async def _scans_of_jobs(engine: AsyncEngine, job_id: uuid.UUID) -> tuple[int, int, JobStatus]:
    """Apply a start and an end to ``job_id`` in one transaction on ``engine``'s connection;
    the sequential and index scans of ``jobs`` they made, and the job's status after."""
    now = utcnow()
    async with session.transaction(engine) as conn:
        await job_events.apply_started(conn, [_started(job_id, now)], now=now)
        moved = await job_events.apply_finished(conn, [_finished(job_id, now)], now=now)
        scans = (
            await conn.execute(
                text(
                    "SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relname = 'jobs'"
                )
            )
        ).one()
    assert [t.id for t in moved] == [job_id]
    return int(scans.seq_scan), int(scans.idx_scan), moved[0].status


async def _run_while_small(engine: AsyncEngine) -> None:
    """Run both updates as a busy results-processor would while ``jobs`` is nearly empty."""
    for _ in range(FIRST_RUNS):
        now = utcnow()
        async with session.transaction(engine) as conn:
            await job_events.apply_started(conn, [_started(uuid.uuid4(), now)], now=now)
            await job_events.apply_finished(conn, [_finished(uuid.uuid4(), now)], now=now)


async def test_updates_use_the_index_after_the_table_grew(pg_url: str, writer: AsyncEngine) -> None:
    user_id = uuid.uuid4()
    async with session.transaction(writer) as conn:
        await users_q.create_user(
            conn, user_id=user_id, email="plans@example.com", password_hash="x", now=utcnow()
        )
    # One connection each, so every run of a statement is on the connection that keeps its plan.
    fresh = create_engine(pg_url, pool_size=1, fresh_plans=True)
    kept = create_engine(pg_url, pool_size=1)
    try:
        await _add_jobs(writer, user_id, 2)
        await _run_while_small(fresh)
        await _run_while_small(kept)
        first, second, *_ = await _add_jobs(writer, user_id, GROWN_TO)

        seq_scans, index_scans, status = await _scans_of_jobs(fresh, first)
        assert (seq_scans, status) == (0, JobStatus.COMPLETED)
        assert index_scans >= 2
        # What the option prevents: the plan kept from the small table reads all of it.
        seq_scans, _, status = await _scans_of_jobs(kept, second)
        assert seq_scans > 0
        assert status == JobStatus.COMPLETED
    finally:
        await fresh.dispose()
        await kept.dispose()
