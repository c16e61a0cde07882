"""RabbitMQ only: a broker that is not connected fails fast instead of hanging."""

import asyncio

import pytest

from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.contracts.queues import JOBS_CREATED, JOBS_DEAD
from cloudtask.errors import BrokerUnavailable

CLOSED_PORT_URL = "amqp://guest:guest@127.0.0.1:1/"


async def _publish_fails_quickly(broker: RabbitMQBroker) -> None:
    async with asyncio.timeout(3):
        with pytest.raises(BrokerUnavailable):
            await broker.publish(JOBS_CREATED, b"{}", priority=5)


async def test_publishing_on_a_never_started_broker_raises_at_once(rabbit_url: str) -> None:
    broker = RabbitMQBroker(rabbit_url)
    await _publish_fails_quickly(broker)
    assert await broker.ping() is False


async def test_publishing_on_a_closed_broker_raises_at_once(rabbit_url: str) -> None:
    broker = RabbitMQBroker(rabbit_url)
    await broker.start()
    await broker.wait_connected(10)
    await broker.close()
    await _publish_fails_quickly(broker)
    with pytest.raises(BrokerUnavailable):
        await broker.stats(JOBS_CREATED)


async def test_a_broker_that_cannot_connect_starts_and_refuses_to_publish() -> None:
    broker = RabbitMQBroker(CLOSED_PORT_URL, connect_timeout=1)
    try:
        async with asyncio.timeout(5):
            await broker.start()
        await _publish_fails_quickly(broker)
        assert await broker.ping() is False
        with pytest.raises(BrokerUnavailable):
            await broker.get(JOBS_CREATED)
    finally:
        await broker.close()


async def test_a_publish_no_queue_takes_raises_instead_of_vanishing(rabbit_url: str) -> None:
    # Mandatory publishes: if an operator deleted a queue, the message comes back and the
    # publisher hears of it (the outbox keeps the row), rather than RabbitMQ dropping it.
    broker = RabbitMQBroker(rabbit_url)
    await broker.start()
    try:
        await broker.wait_connected(10)
        with pytest.raises(BrokerUnavailable):
            await broker.publish("cloudtask.test.no-such-queue", b"{}")
        before = await broker.stats(JOBS_DEAD)
        await broker.publish(JOBS_DEAD, b"{}")  # the channel is still usable
        assert (await broker.stats(JOBS_DEAD)).messages == before.messages + 1
    finally:
        await broker.close()
