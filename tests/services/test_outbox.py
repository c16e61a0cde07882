"""The outbox publisher: what it publishes leaves the table, what it could not stays for the
relay, and a row a relay holds is not published twice."""

import asyncio
import logging
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


async def _stored(backends: Backends, count: int, priorities: int = 1) -> list[outbox_q.OutboxRow]:
    """``count`` due jobs committed with their outbox rows, as the API stores them: one row per
    priority, the jobs' priorities taking turns among ``priorities`` values."""
    user_id = await scheduling.add_user(backends)
    new_jobs = [scheduling.due_job(user_id, payload=str(n)) for n in range(count)]
    for n, job in enumerate(new_jobs):
        job.priority = n % priorities
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
    assert await scheduling.outbox_messages(backends) == 0
    assert sum(counted) == 5


async def test_rows_a_failed_publish_could_not_send_are_left_for_the_relay(
    backends: Backends,
) -> None:
    rows = await _stored(backends, 3)
    down = RabbitMQBroker(CLOSED_PORT_URL, connect_timeout=1)  # never started: refuses at once
    await _publish(OutboxPublisher(backends.db, down), rows)
    assert await scheduling.outbox_messages(backends) == 3
    assert await _published(backends) == []
    relay = OutboxPublisher(backends.db, backends.broker, relay_after=0)
    assert await relay.relay() == 3
    assert sorted(await _published(backends)) == ["0", "1", "2"]
    assert await scheduling.outbox_messages(backends) == 0


async def test_messages_left_for_the_relay_are_logged_once_per_interval_not_per_row(
    backends: Backends, caplog: pytest.LogCaptureFixture
) -> None:
    rows = await _stored(backends, 4, priorities=4)  # four rows, each published on its own
    down = RabbitMQBroker(CLOSED_PORT_URL, connect_timeout=1)
    publisher = OutboxPublisher(backends.db, down)
    with caplog.at_level(logging.WARNING, logger="cloudtask.outbox"):
        async with _running(publisher):
            for row in rows:
                publisher.submit([row])
                await asyncio.sleep(0)
                await publisher.drain()
    deferred = [r for r in caplog.records if r.getMessage() == "outbox messages left for the relay"]
    assert [getattr(r, "count", None) for r in deferred] == [1]  # the first, then quiet
    assert await scheduling.outbox_messages(backends) == 4


async def test_rows_a_relay_holds_are_left_to_it(backends: Backends) -> None:
    if backends.kind == "memory":
        pytest.skip("SQLite has one writer at a time and no row locks to skip")
    rows = await _stored(backends, 4, priorities=4)
    assert len(rows) == 4
    async with session.transaction(backends.db) as conn:
        held = await outbox_q.claim_stale(
            conn, older_than=datetime.now(UTC) + timedelta(seconds=1), limit=2
        )
        assert len(held) == 2
        publisher = OutboxPublisher(backends.db, backends.broker)
        await _publish(publisher, rows)
        # Only the two rows no relay held were published and deleted.
        assert len(await _published(backends)) == 2
    assert await scheduling.outbox_messages(backends) == 2


async def test_jobs_written_together_share_a_row_per_priority(backends: Backends) -> None:
    rows = await _stored(backends, 7, priorities=3)
    assert [(row.priority, len(row.bodies)) for row in rows] == [(0, 3), (1, 2), (2, 2)]
    payloads = [[JobCreated.model_validate_json(b).payload for b in row.bodies] for row in rows]
    assert payloads == [[0, 3, 6], [1, 4], [2, 5]]
    assert await scheduling.outbox_messages(backends) == 7
    publisher = OutboxPublisher(backends.db, backends.broker)
    await _publish(publisher, rows)
    assert sorted(await _published(backends), key=int) == [str(n) for n in range(7)]
    assert await scheduling.outbox_messages(backends) == 0


async def test_a_relay_takes_rows_up_to_its_limit_of_messages_and_always_one(
    backends: Backends,
) -> None:
    big = await _stored(backends, 3)  # one row of three messages
    small = await _stored(backends, 2, priorities=2)  # two rows of one
    assert [len(row.bodies) for row in big + small] == [3, 1, 1]
    later = datetime.now(UTC) + timedelta(seconds=1)
    for limit, taken in ((1, [3]), (2, [3]), (4, [3, 1]), (5, [3, 1, 1]), (500, [3, 1, 1])):
        async with session.transaction(backends.db) as conn:
            held = await outbox_q.claim_stale(conn, older_than=later, limit=limit)
        assert [len(row.bodies) for row in held] == taken, limit
        assert [row.bodies for row in held] == [row.bodies for row in (big + small)[: len(taken)]]
    relay = OutboxPublisher(backends.db, backends.broker, relay_after=0)
    assert await relay.relay() == 5
    assert sorted(await _published(backends)) == ["0", "0", "1", "1", "2"]
    assert await scheduling.outbox_messages(backends) == 0


def test_grouping_keeps_order_and_splits_full_rows() -> None:
    def message(queue: str, body: str, priority: int) -> outbox_q.NewOutboxMessage:
        return outbox_q.NewOutboxMessage(queue, body, priority)

    messages = [
        message("a", "1", 5),
        message("b", "2", 5),
        message("a", "3", 1),
        message("a", "4", 5),
        message("a", r'"x\ny"', 5),  # an escaped line break, as JSON writes it: shares the row
        message("a", "5\n6", 5),  # a raw line break: a row of its own
    ]
    rows = outbox_q.grouped(messages)
    assert [(row.queue, row.priority, row.bodies) for row in rows] == [
        ("a", 5, ["1", "4", r'"x\ny"']),
        ("b", 5, ["2"]),
        ("a", 1, ["3"]),
        ("a", 5, ["5\n6"]),
    ]
    assert [outbox_q.bodies(row.body, len(row.bodies)) for row in rows] == [
        row.bodies for row in rows
    ]
    many = outbox_q.grouped([message("a", str(n), 0) for n in range(outbox_q.MAX_MESSAGES + 1)])
    assert [len(row.bodies) for row in many] == [outbox_q.MAX_MESSAGES, 1]
    assert outbox_q.grouped([]) == []


def test_grouping_splits_rows_at_their_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outbox_q, "MAX_ROW_BYTES", 10)
    bodies = ["aaaa", "bbbb", "cc", "dddddddddddd", "e"]  # 4 + 4 + 2 = 10 fits; 12 alone
    rows = outbox_q.grouped([outbox_q.NewOutboxMessage("a", body, 0) for body in bodies])
    assert [row.bodies for row in rows] == [["aaaa", "bbbb", "cc"], ["dddddddddddd"], ["e"]]
