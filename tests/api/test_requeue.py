"""``cloudtask requeue``'s work: a new message for each PENDING job queued before the cut-off,
through the outbox, a page at a time; none while the outbox or a queue still holds messages
that may stand for such jobs."""

import uuid
from datetime import timedelta

import orjson
import pytest
from sqlalchemy import func, select, update

from cloudtask import requeue
from cloudtask.broker.base import Delivery
from cloudtask.contracts.queues import ALL_QUEUES, JOBS_COMPLETED, JOBS_CREATED
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.db.tables import jobs, outbox
from cloudtask.requeue import NotNow, check_queues, requeue_pending
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
    with pytest.raises(NotNow, match="outbox still holds 1 message"):
        await requeue_pending(backends.db, older_than=60)
    async with backends.db.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(outbox))).scalar() == 1


async def test_jobs_are_queued_again_a_page_at_a_time_in_rows_of_bounded_size(
    client: Client, backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(requeue, "PAGE", 2)
    monkeypatch.setattr(outbox_q, "MAX_ROW_BYTES", 600)
    token = await client.register()
    created = [await client.create_job(token, type="echo", payload="x" * 200) for _ in range(5)]
    for job in created:
        await _age(backends, job["id"], 120)
    await _published(backends)
    assert (await requeue_pending(backends.db, older_than=60)).jobs == 5
    async with backends.db.connect() as conn:
        rows = (await conn.execute(select(outbox).order_by(outbox.c.id))).all()
    bodies = [body for row in rows for body in outbox_q.bodies(row.body, row.messages)]
    assert sorted(orjson.loads(body)["jobId"] for body in bodies) == sorted(
        job["id"] for job in created
    )
    assert all(len(row.body) <= 600 or row.messages == 1 for row in rows)
    assert len(rows) == 5  # pages of 2, 2 and 1; a row holds what fits in 600 bytes: one


async def test_nothing_is_queued_again_while_a_queue_holds_messages(
    client: Client, backends: Backends
) -> None:
    broker = backends.broker
    for queue in ALL_QUEUES:
        await broker.purge(queue)
    await check_queues(broker)  # all empty
    token = await client.register()
    await client.create_job(token, type="echo")  # no worker: its message waits

    async def queued() -> bool:
        return (await broker.stats(JOBS_CREATED)).messages == 1

    await eventually(queued)
    with pytest.raises(NotNow, match=r"jobs\.created holds 1 message.*not lost"):
        await check_queues(broker)
    await broker.purge(JOBS_CREATED)
    await broker.publish(JOBS_COMPLETED, b"{}")  # a report not yet written

    async def reported() -> bool:
        return (await broker.stats(JOBS_COMPLETED)).messages == 1

    await eventually(reported)
    with pytest.raises(NotNow, match=r"jobs\.completed holds 1 message.*may still read PENDING"):
        await check_queues(broker)


async def test_nothing_is_queued_again_while_a_worker_consumes_jobs_created(
    backends: Backends,
) -> None:
    # A worker holds deliveries RabbitMQ does not count as messages (waiting for a slot).
    broker = backends.broker
    for queue in ALL_QUEUES:
        await broker.purge(queue)

    async def holding(delivery: Delivery) -> None:
        return None

    consumer = await broker.consume(JOBS_CREATED, holding, prefetch=1)

    async def consumed() -> bool:
        return (await broker.stats(JOBS_CREATED)).consumers == 1

    try:
        await eventually(consumed)
        with pytest.raises(NotNow, match=r"jobs\.created has 1 consumer.*stop the workers"):
            await check_queues(broker)
    finally:
        await consumer.cancel()
