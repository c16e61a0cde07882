"""Single-job submissions that arrive together are written together, each answered only once its
own write committed, and one request's failure is not another's."""

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import delete

from cloudtask.api.group_commit import GroupCommit
from cloudtask.contracts.messages import JobCreated
from cloudtask.contracts.queues import JOBS_CREATED
from cloudtask.db import session
from cloudtask.db.queries import jobs as jobs_q
from cloudtask.db.tables import users
from cloudtask.errors import UnknownUser
from cloudtask.outbox import OutboxPublisher
from tests.conftest import Backends
from tests.helpers import Client, eventually
from tests.services import scheduling


async def test_concurrent_submissions_are_each_stored_published_and_answered(
    client: Client,
) -> None:
    tokens = [await client.register() for _ in range(3)]

    async def submit(n: int) -> tuple[str, dict[str, object]]:
        token = tokens[n % len(tokens)]
        body = {"type": "echo", "payload": {"n": n}, "priority": n % 10}
        if n % 7 == 0:
            body["delaySeconds"] = 3600
        response = await client.http.post("/jobs", json=body, headers=client.auth(token))
        assert response.status_code == 201, response.text
        return token, response.json()

    created = await asyncio.gather(*(submit(n) for n in range(60)))
    assert len({job["id"] for _, job in created}) == 60
    for n, (token, job) in enumerate(created):
        assert job["payload"] == {"n": n}
        assert job["status"] == ("SCHEDULED" if n % 7 == 0 else "PENDING")
        stored = await client.get_job(token, str(job["id"]))
        assert stored["payload"] == {"n": n} and stored["priority"] == n % 10
    due = {str(job["id"]) for n, (_, job) in enumerate(created) if n % 7 != 0}
    published: set[str] = set()

    async def drained() -> bool:
        while (delivery := await client.backends.broker.get(JOBS_CREATED)) is not None:
            published.add(str(JobCreated.model_validate_json(delivery.body).job_id))
            await delivery.ack()
        return published == due

    await eventually(drained)


@pytest.fixture
async def group_commit(backends: Backends) -> AsyncIterator[GroupCommit]:
    group_commit = GroupCommit(backends.db, OutboxPublisher(backends.db, backends.broker))
    group_commit.start()
    try:
        yield group_commit
    finally:
        await group_commit.stop()


async def _stored(backends: Backends, new_jobs: list[jobs_q.NewJob]) -> int:
    return len(await scheduling.job_rows(backends, [job.id for job in new_jobs]))


async def test_jobs_arriving_together_share_a_write(
    backends: Backends, group_commit: GroupCommit
) -> None:
    user_id = await scheduling.add_user(backends)
    new_jobs = [scheduling.due_job(user_id) for _ in range(50)]
    await asyncio.gather(*(group_commit.store(job) for job in new_jobs))
    assert await _stored(backends, new_jobs) == 50
    assert await scheduling.outbox_messages(backends) == 50
    # The first job is written alone, the 49 that arrived meanwhile in the next write.
    assert group_commit.writes <= 2


async def test_a_vanished_user_fails_only_their_own_submissions(
    backends: Backends, group_commit: GroupCommit
) -> None:
    alive, gone = await scheduling.add_user(backends), await scheduling.add_user(backends)
    async with backends.db.begin() as conn:
        await conn.execute(delete(users).where(users.c.id == gone))
    new_jobs = [scheduling.due_job(alive if n % 3 else gone) for n in range(12)]
    outcomes = await asyncio.gather(
        *(group_commit.store(job) for job in new_jobs), return_exceptions=True
    )
    for n, outcome in enumerate(outcomes):
        if n % 3:
            assert outcome is None
        else:
            assert isinstance(outcome, UnknownUser)
    stored = await _stored(backends, new_jobs)
    assert stored == 8


async def test_a_lone_job_is_written_at_once(backends: Backends, group_commit: GroupCommit) -> None:
    user_id = await scheduling.add_user(backends)
    for _ in range(3):
        await group_commit.store(scheduling.due_job(user_id))
    assert group_commit.writes == 3
    assert await scheduling.outbox_messages(backends) == 3


async def test_stopping_mid_write_leaves_no_request_waiting(backends: Backends) -> None:
    group_commit = GroupCommit(backends.db, OutboxPublisher(backends.db, backends.broker))
    group_commit.start()
    user_id = await scheduling.add_user(backends)
    waiting = [
        asyncio.create_task(group_commit.store(scheduling.due_job(user_id))) for _ in range(5)
    ]
    while group_commit.writes == 0:  # until the first write is under way
        await asyncio.sleep(0)
    await group_commit.stop()
    async with asyncio.timeout(5):
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(o is None or isinstance(o, asyncio.CancelledError) for o in outcomes)


async def test_a_large_write_stores_each_job_as_given_and_the_due_ones_messages_in_order(
    backends: Backends,
) -> None:
    # From COPY_FROM jobs on, PostgreSQL is written by COPY rather than one statement.
    user_id = await scheduling.add_user(backends)
    new_jobs = [
        scheduling.due_job(user_id, payload=f'{{"n":{n}}}') for n in range(jobs_q.COPY_FROM + 20)
    ]
    for n, job in enumerate(new_jobs):
        job.priority = n % 10
        if n % 7 == 0:
            job.run_at = job.created_at + timedelta(hours=1)
    async with session.autocommit(backends.db) as conn:
        rows = await jobs_q.submit(conn, new_jobs)

    due = [job for job in new_jobs if job.is_due()]
    # One outbox row per priority, in the order each first appears, its jobs in order.
    assert [row.priority for row in rows] == list(dict.fromkeys(job.priority for job in due))
    assert [
        [JobCreated.model_validate_json(body).job_id for body in row.bodies] for row in rows
    ] == [[job.id for job in due if job.priority == row.priority] for row in rows]
    assert [row.id for row in rows] == sorted({row.id for row in rows})
    assert await scheduling.outbox_messages(backends) == len(due)
    stored = {row.id: row for row in await scheduling.job_rows(backends, [j.id for j in new_jobs])}
    assert sorted(new_jobs, key=lambda job: stored[job.id].seq) == new_jobs
    for job in new_jobs:
        row = stored[job.id]
        assert (row.user_id, row.type, row.payload, row.priority) == (
            user_id, "echo", job.payload, job.priority,
        )  # fmt: skip
        assert row.status == job.status.value
        assert (row.attempts, row.dispatch_attempt, row.redeliveries) == (0, 1, 0)
        assert (row.max_attempts, row.timeout_seconds) == (job.max_attempts, job.timeout_seconds)
        assert (row.run_at, row.created_at, row.updated_at) == (
            job.run_at, job.created_at, job.created_at,
        )  # fmt: skip
        assert row.schedule_id is None and row.cancel_requested is False


async def test_a_large_write_for_a_vanished_user_stores_nothing(backends: Backends) -> None:
    gone = await scheduling.add_user(backends)
    async with backends.db.begin() as conn:
        await conn.execute(delete(users).where(users.c.id == gone))
    new_jobs = [scheduling.due_job(gone) for _ in range(jobs_q.COPY_FROM)]
    with pytest.raises(UnknownUser):
        async with session.autocommit(backends.db) as conn:
            await jobs_q.submit(conn, new_jobs)
    assert await _stored(backends, new_jobs) == 0
    assert await scheduling.outbox_messages(backends) == 0
