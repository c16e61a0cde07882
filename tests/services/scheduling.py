"""What the scheduler's tests share: rows written straight to the database (a user, due jobs, a
schedule's next firing) and a consumer that counts ``jobs.created`` per (job, attempt). The
outbox's and the api's group-commit tests use the user, job and outbox helpers too."""

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update

from cloudtask.broker.base import Delivery
from cloudtask.contracts import jsoncodec
from cloudtask.contracts.queues import JOBS_CREATED
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import jobs as jobs_q
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.db.queries import schedules as schedules_q
from cloudtask.db.queries import users as users_q
from cloudtask.db.tables import jobs, schedule_firings, schedules
from tests.conftest import Backends
from tests.helpers import Client, wait_for_status


async def add_user(backends: Backends) -> uuid.UUID:
    user_id = uuid.uuid4()
    async with session.transaction(backends.db) as conn:
        await users_q.create_user(
            conn, user_id=user_id, email=f"{user_id}@example.com", password_hash="x", now=utcnow()
        )
    return user_id


def due_job(user_id: uuid.UUID, payload: str = "{}") -> jobs_q.NewJob:
    """An echo job due now, not yet stored."""
    now = utcnow()
    return jobs_q.NewJob(
        id=uuid.uuid4(),
        user_id=user_id,
        type="echo",
        payload=payload,
        priority=5,
        max_attempts=3,
        timeout_seconds=300.0,
        run_at=now,
        created_at=now,
    )


async def outbox_messages(backends: Backends) -> int:
    """How many outbox messages wait to be published (a row may hold several)."""
    async with session.reading(backends.db) as conn:
        count, _oldest = await outbox_q.backlog(conn)
    return count


async def add_waiting_jobs(
    backends: Backends, user_id: uuid.UUID, count: int, *, priority: int = 5
) -> list[uuid.UUID]:
    """``count`` SCHEDULED echo jobs, due in an hour: nothing dispatches them until made due."""
    now = utcnow()
    new = [
        jobs_q.NewJob(
            id=uuid.uuid4(),
            user_id=user_id,
            type="echo",
            payload=jsoncodec.dumps_str({"n": n}),
            priority=priority,
            max_attempts=3,
            timeout_seconds=30,
            run_at=now + timedelta(hours=1),
            created_at=now,
        )
        for n in range(count)
    ]
    async with session.transaction(backends.db) as conn:
        assert await jobs_q.submit(conn, new) == []
    return [job.id for job in new]


async def update_jobs(backends: Backends, ids: list[uuid.UUID], **values: Any) -> None:
    async with session.transaction(backends.db) as conn:
        await conn.execute(update(jobs).where(jobs.c.id.in_(ids)).values(**values))


async def make_due(backends: Backends, ids: list[uuid.UUID]) -> None:
    await update_jobs(backends, ids, run_at=utcnow() - timedelta(seconds=1))


async def job_rows(backends: Backends, ids: list[uuid.UUID]) -> list[Any]:
    async with session.reading(backends.db) as conn:
        return list(await conn.execute(select(jobs).where(jobs.c.id.in_(ids))))


async def add_schedule(
    backends: Backends, user_id: uuid.UUID, *, next_run_at: datetime, **values: Any
) -> uuid.UUID:
    """A schedule stored as the API would, but due whenever the test says."""
    now = utcnow()
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "user_id": user_id,
        "name": "test",
        "cron": "0 0 1 1 *",
        "timezone": "UTC",
        "type": "echo",
        "payload": "null",
        "priority": 5,
        "max_attempts": 3,
        "timeout_seconds": 30.0,
        "paused": False,
        "next_run_at": next_run_at,
        "last_run_at": None,
        "created_at": now,
        "updated_at": now,
    }
    record = schedules_q.ScheduleRecord(**(fields | values))
    async with session.transaction(backends.db) as conn:
        await schedules_q.create(conn, record)
    return record.id


async def schedule_row(backends: Backends, schedule_id: str | uuid.UUID) -> Any:
    async with session.reading(backends.db) as conn:
        return (
            await conn.execute(
                select(schedules).where(schedules.c.id == uuid.UUID(str(schedule_id)))
            )
        ).one()


async def set_next_run(backends: Backends, schedule_id: str | uuid.UUID, when: datetime) -> None:
    async with session.transaction(backends.db) as conn:
        await conn.execute(
            update(schedules)
            .where(schedules.c.id == uuid.UUID(str(schedule_id)))
            .values(next_run_at=when)
        )


async def firings(backends: Backends, schedule_id: str | uuid.UUID) -> int:
    async with session.reading(backends.db) as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(schedule_firings)
            .where(schedule_firings.c.schedule_id == uuid.UUID(str(schedule_id)))
        )
    return int(count or 0)


async def add_firing(
    backends: Backends, schedule_id: str | uuid.UUID, fire_at: datetime, recorded_at: datetime
) -> None:
    """A firing of ``fire_at``, as a scheduler records it (with a job id no job has)."""
    async with session.transaction(backends.db) as conn:
        await schedules_q.record_firing(
            conn, uuid.UUID(str(schedule_id)), fire_at, uuid.uuid4(), now=recorded_at
        )


async def firing_times(backends: Backends, schedule_id: str | uuid.UUID) -> list[datetime]:
    async with session.reading(backends.db) as conn:
        rows = await conn.execute(
            select(schedule_firings.c.fire_at)
            .where(schedule_firings.c.schedule_id == uuid.UUID(str(schedule_id)))
            .order_by(schedule_firings.c.fire_at)
        )
    return [row.fire_at for row in rows]


async def jobs_of_schedule(backends: Backends, schedule_id: str | uuid.UUID) -> list[Any]:
    async with session.reading(backends.db) as conn:
        return list(
            await conn.execute(
                select(jobs).where(jobs.c.schedule_id == uuid.UUID(str(schedule_id)))
            )
        )


async def rounds_pass(client: Client, token: str) -> None:
    """Wait until the scheduler has made at least one full round after this call: a job due in a
    moment is dispatched in a later round than the one running now, and every step of a round
    follows the dispatch."""
    marker = await client.create_job(token, type="echo", delaySeconds=0.2)
    await wait_for_status(client, token, marker["id"], "COMPLETED")


@dataclass
class CreatedCounter:
    """Counts ``jobs.created`` messages per (job id, attempt), acknowledging each."""

    seen: Counter[tuple[str, int]] = field(default_factory=Counter)

    async def __call__(self, delivery: Delivery) -> None:
        body = json.loads(delivery.body)
        self.seen[(body["jobId"], body["attempt"])] += 1
        await delivery.ack()

    def jobs(self) -> set[str]:
        return {job_id for job_id, _ in self.seen}

    def duplicates(self) -> dict[tuple[str, int], int]:
        return {key: n for key, n in self.seen.items() if n > 1}


@asynccontextmanager
async def counting_created(backends: Backends) -> AsyncIterator[CreatedCounter]:
    counter = CreatedCounter()
    consumer = await backends.broker.consume(JOBS_CREATED, counter, prefetch=100)
    try:
        yield counter
    finally:
        await consumer.cancel()
