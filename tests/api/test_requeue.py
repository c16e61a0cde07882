"""``cloudtask requeue``'s work: a new message for each PENDING job queued before the cut-off,
through the outbox; none while the outbox still holds messages (their jobs are not lost)."""

import uuid
from datetime import timedelta

import orjson
import pytest
from sqlalchemy import func, select, update

from cloudtask.contracts.timefmt import utcnow
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.db.tables import jobs, outbox
from cloudtask.requeue import OutboxNotEmpty, requeue_pending
from tests.conftest import Backends
from tests.helpers import Client, eventually


async def _age(backends: Backends, job_id: str, seconds: float) -> None:
    async with backends.db.begin() as conn:
        await conn.execute(
            update(jobs)
            .where(jobs.c.id == uuid.UUID(job_id))
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


async def _published(backends: Backends) -> None:
    """Until the api's publisher has removed its messages from the outbox."""

    async def empty() -> bool:
        async with backends.db.connect() as conn:
            return (await outbox_q.backlog(conn))[0] == 0

    await eventually(empty)


async def test_each_pending_job_queued_before_the_cut_off_gets_one_new_message(
    client: Client, backends: Backends
) -> None:
    token = await client.register()
    old = await client.create_job(token, type="echo", payload="old", priority=7)
    young = await client.create_job(token, type="echo", payload="young")
    later = await client.create_job(token, type="echo", runAt="2999-01-01T00:00:00Z")
    await _age(backends, old["id"], 120)
    await _age(backends, later["id"], 120)  # SCHEDULED: the scheduler's, not lost
    await _published(backends)
    done = await requeue_pending(backends.db, older_than=60)
    assert done.jobs == 1
    async with backends.db.connect() as conn:
        rows = (await conn.execute(select(outbox))).all()
    assert [(row.queue, row.priority, row.messages) for row in rows] == [("jobs.created", 7, 1)]
    (body,) = outbox_q.bodies(rows[0].body, 1)
    message = orjson.loads(body)
    assert (message["jobId"], message["attempt"], message["payload"]) == (old["id"], 1, "old")
    assert young["status"] == "PENDING"


async def test_nothing_is_queued_again_while_the_outbox_holds_messages(
    client: Client, backends: Backends
) -> None:
    token = await client.register()
    job = await client.create_job(token, type="echo")
    await _age(backends, job["id"], 120)
    await _published(backends)
    async with backends.db.begin() as conn:
        await outbox_q.add(conn, [outbox_q.NewOutboxMessage("jobs.created", "{}", 5)], now=utcnow())
    with pytest.raises(OutboxNotEmpty, match="outbox still holds 1 message"):
        await requeue_pending(backends.db, older_than=60)
    async with backends.db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(outbox))).scalar() == 1
