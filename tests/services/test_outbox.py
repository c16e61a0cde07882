"""The outbox publisher: what it publishes leaves the table, what it could not stays for the
relay, and a row a relay holds is not published twice."""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.contracts.messages import JobCreated
from cloudtask.contracts.queues import JOBS_CREATED
from cloudtask.db import session
from cloudtask.db.queries import jobs as jobs_q
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.outbox import OutboxPublisher
from tests.conftest import Backends
from tests.services import scheduling

CLOSED_PORT_URL = "amqp://guest:guest@127.0.0.1:1/"


async def _stored(backends: Backends, count: int) -> list[outbox_q.OutboxRow]:
    """``count`` due jobs committed with their outbox rows, as the API stores them."""
    user_id = await scheduling.add_user(backends)
    new_jobs = [scheduling.due_job(user_id, payload=str(n)) for n in range(count)]
    async with session.autocommit(backends.db) as conn:
        return await jobs_q.submit(conn, new_jobs)


async def _published(backends: Backends) -> list[str]:
    payloads = []
    while (delivery := await backends.broker.get(JOBS_CREATED)) is not None:
        payloads.append(str(JobCreated.model_validate_json(delivery.body).payload))
        await delivery.ack()
    return payloads


@asynccontextmanager
async def _running(publisher: OutboxPublisher) -> AsyncIterator[None]:
    task = asyncio.create_task(publisher.run())
    try:
        yield
    finally:
        publisher.stop()
        await asyncio.wait_for(task, 5)


async def _publish(publisher: OutboxPublisher, rows: Sequence[outbox_q.OutboxRow]) -> None:
    async with _running(publisher):
        publisher.submit(rows)
        await asyncio.sleep(0)
        await publisher.drain()


async def test_published_rows_leave_the_outbox(backends: Backends) -> None:
    rows = await _stored(backends, 5)
    counted: list[int] = []
    publisher = OutboxPublisher(backends.db, backends.broker, on_published=counted.append)
    await _publish(publisher, rows)
    assert sorted(await _published(backends)) == [str(n) for n in range(5)]
    assert await scheduling.outbox_rows(backends) == 0
    assert sum(counted) == 5


async def test_rows_a_failed_publish_could_not_send_are_left_for_the_relay(
    backends: Backends,
) -> None:
    rows = await _stored(backends, 3)
    down = RabbitMQBroker(CLOSED_PORT_URL, connect_timeout=1)  # never started: refuses at once
    await _publish(OutboxPublisher(backends.db, down), rows)
    assert await scheduling.outbox_rows(backends) == 3
    assert await _published(backends) == []
    relay = OutboxPublisher(backends.db, backends.broker, relay_after=0)
    assert await relay.relay() == 3
    assert sorted(await _published(backends)) == ["0", "1", "2"]
    assert await scheduling.outbox_rows(backends) == 0


async def test_rows_a_relay_holds_are_left_to_it(backends: Backends) -> None:
    if backends.kind == "memory":
        pytest.skip("SQLite has one writer at a time and no row locks to skip")
    rows = await _stored(backends, 4)
    async with session.transaction(backends.db) as conn:
        held = await outbox_q.claim_stale(
            conn, older_than=datetime.now(UTC) + timedelta(seconds=1), limit=2
        )
        assert len(held) == 2
        publisher = OutboxPublisher(backends.db, backends.broker)
        await _publish(publisher, rows)
        # Only the two rows no relay held were published and deleted.
        assert len(await _published(backends)) == 2
    assert await scheduling.outbox_rows(backends) == 2
