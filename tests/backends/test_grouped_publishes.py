"""Publishes of concurrent callers sent together, each caller answered for its own message."""

import asyncio

import pytest

from cloudtask.broker.base import Broker, QueueStats
from cloudtask.broker.grouping import GroupedPublisher
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_STARTED
from cloudtask.errors import BrokerUnavailable
from tests.backends.recorder import wait_for_stats


async def test_concurrent_publishes_share_publishes_and_all_arrive(broker: Broker) -> None:
    grouped = GroupedPublisher(broker)
    grouped.start()
    try:
        await grouped.publish(JOBS_STARTED, b"alone")  # nothing in flight: at once
        assert grouped.publishes == 1
        await asyncio.gather(
            *(grouped.publish(JOBS_COMPLETED, b"%d" % n, priority=n % 3) for n in range(50))
        )
        # The first went out alone; the others gathered while it was in flight.
        assert 2 <= grouped.publishes < 1 + 50
    finally:
        await grouped.stop()
    await wait_for_stats(broker, JOBS_STARTED, QueueStats(messages=1, consumers=0))
    await wait_for_stats(broker, JOBS_COMPLETED, QueueStats(messages=50, consumers=0))


async def test_a_failed_publish_fails_each_caller_of_its_group(rabbit_url: str) -> None:
    grouped = GroupedPublisher(RabbitMQBroker(rabbit_url))  # never connected
    grouped.start()
    try:
        results = await asyncio.gather(
            *(grouped.publish(JOBS_COMPLETED, b"%d" % n) for n in range(5)),
            return_exceptions=True,
        )
    finally:
        await grouped.stop()
    assert all(isinstance(result, BrokerUnavailable) for result in results)


async def test_stopping_cancels_callers_still_waiting(broker: Broker) -> None:
    grouped = GroupedPublisher(broker)  # not started: nothing is published
    waiting = asyncio.create_task(grouped.publish(JOBS_COMPLETED, b"late"))
    await asyncio.sleep(0.05)
    await grouped.stop()
    with pytest.raises(asyncio.CancelledError):
        await waiting
