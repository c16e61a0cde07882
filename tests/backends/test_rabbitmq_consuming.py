"""RabbitMQ only: consumers on aiormq's channels, subscribed again when the connection returns,
and reading what a careless peer publishes."""

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import unquote, urlsplit

import aiormq
import pytest

from cloudtask.broker import dead_letters
from cloudtask.broker.base import OutgoingMessage, QueueStats
from cloudtask.broker.frame_decoding import MAX_DEPTH
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_DEAD
from cloudtask.errors import BrokerUnavailable
from tests import infra
from tests.backends.conftest import started_broker
from tests.backends.recorder import Recorder, wait_for_stats
from tests.careless_peer import (
    MORE_FLAGS,
    NOT_UTF8_READ,
    headers_properties,
    nested_headers,
    publish_carelessly,
    publish_raw_properties,
)
from tests.helpers import eventually


@pytest.fixture
async def rabbit(rabbit_url: str) -> AsyncIterator[RabbitMQBroker]:
    async with started_broker(rabbit_url) as broker:
        assert isinstance(broker, RabbitMQBroker)
        yield broker


async def _lose_connection(rabbit_url: str, broker: RabbitMQBroker) -> None:
    vhost = unquote(urlsplit(rabbit_url).path.lstrip("/"))
    await asyncio.to_thread(
        infra.rabbitmqctl, "close_all_connections", "--vhost", vhost, "test: connection lost"
    )

    async def reconnected() -> bool:
        try:
            await broker.stats(JOBS_COMPLETED)
        except BrokerUnavailable:
            return False
        return True

    await asyncio.sleep(0.5)  # the close reaches the client
    await eventually(reconnected, timeout=20)


async def _publish(broker: RabbitMQBroker, *bodies: bytes) -> None:
    messages = [OutgoingMessage(JOBS_COMPLETED, body) for body in bodies]

    async def published() -> bool:
        try:
            await broker.publish_many(messages)
        except BrokerUnavailable:
            return False
        return True

    await eventually(published, timeout=20)


async def test_a_consumer_receives_again_after_a_lost_connection_once(
    rabbit: RabbitMQBroker, rabbit_url: str
) -> None:
    received = Recorder(ack=True)
    await rabbit.consume(JOBS_COMPLETED, received, prefetch=10)
    await _publish(rabbit, b"before")
    await received.wait_for(1)
    await _lose_connection(rabbit_url, rabbit)
    await _publish(rabbit, b"after-1", b"after-2")
    await received.wait_for(3)
    assert received.bodies == [b"before", b"after-1", b"after-2"]
    # Subscribed again once, not once per reconnection path: one consumer, nothing left over.
    await wait_for_stats(rabbit, JOBS_COMPLETED, QueueStats(messages=0, consumers=1))


async def test_a_delivery_held_across_a_lost_connection_comes_back(
    rabbit: RabbitMQBroker, rabbit_url: str
) -> None:
    received = Recorder(ack=False)
    consumer = await rabbit.consume(JOBS_COMPLETED, received, prefetch=10)
    await _publish(rabbit, b"held")
    (first,) = await received.wait_for(1)
    assert not first.redelivered
    await _lose_connection(rabbit_url, rabbit)
    again = (await received.wait_for(2))[1]
    assert again.body == b"held" and again.redelivered
    with pytest.raises(BrokerUnavailable):
        await first.ack()  # its channel is gone: it cannot settle the delivery of another one
    await again.ack()
    await consumer.cancel()
    await wait_for_stats(rabbit, JOBS_COMPLETED, QueueStats(messages=0, consumers=0))


async def test_a_consumer_stopped_before_a_lost_connection_stays_stopped(
    rabbit: RabbitMQBroker, rabbit_url: str
) -> None:
    received = Recorder(ack=True)
    consumer = await rabbit.consume(JOBS_COMPLETED, received, prefetch=10)
    await consumer.stop_receiving()
    await _lose_connection(rabbit_url, rabbit)
    await _publish(rabbit, b"nobody")
    await wait_for_stats(rabbit, JOBS_COMPLETED, QueueStats(messages=1, consumers=0))
    assert received.bodies == []


async def test_settling_a_delivery_twice_sends_one_frame(rabbit: RabbitMQBroker) -> None:
    # A second ack or reject of a tag makes RabbitMQ close the channel ("unknown delivery tag"),
    # which would return every other unacknowledged delivery of the consumer.
    received = Recorder(ack=False)
    await rabbit.consume(JOBS_COMPLETED, received, prefetch=10)
    await _publish(rabbit, b"1", b"2")
    first, second = await received.wait_for(2)
    await first.ack()
    await first.ack()
    await first.reject(requeue=True)
    await second.ack()
    await _publish(rabbit, b"3")
    third = (await received.wait_for(3))[2]
    await third.ack()
    assert received.bodies == [b"1", b"2", b"3"]
    assert not any(d.redelivered for d in received.deliveries)
    await wait_for_stats(rabbit, JOBS_COMPLETED, QueueStats(messages=0, consumers=1))


async def test_a_consumer_whose_queue_is_deleted_declares_it_again_and_consumes(
    rabbit: RabbitMQBroker, rabbit_url: str
) -> None:
    # RabbitMQ cancels the subscriptions of a deleted queue (an operator recreating it, say).
    received = Recorder(ack=False)
    await rabbit.consume(JOBS_COMPLETED, received, prefetch=10)
    await _publish(rabbit, b"before")
    (held,) = await received.wait_for(1)
    connection = await aiormq.connect(rabbit_url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(JOBS_COMPLETED)
    finally:
        await connection.close()

    async def consumed_again() -> bool:
        try:  # before it is declared again, asking closes the broker's channel (404)
            stats = await rabbit.stats(JOBS_COMPLETED)
        except BrokerUnavailable:
            return False
        return stats == QueueStats(messages=0, consumers=1)

    await eventually(consumed_again, timeout=20)
    await _publish(rabbit, b"after")
    await (await received.wait_for(2))[1].ack()
    assert received.bodies == [b"before", b"after"]
    # Declared again before subscribing, rather than left to a failed subscription closing the
    # channel (which would hand back every delivery held on it, running jobs' included).
    await held.ack()


async def test_messages_whose_headers_pamqp_cannot_decode_are_delivered_read_as_they_can_be(
    rabbit: RabbitMQBroker, rabbit_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Undecoded, each such message closed the connection each time it was delivered: it went
    # back to the head of the queue and no consumer of the queue ever received another.
    received = Recorder(ack=True)
    await rabbit.consume(JOBS_COMPLETED, received, prefetch=10)
    await publish_carelessly(monkeypatch, rabbit_url, JOBS_COMPLETED, [b"careless"])
    for body, properties in [
        (b"more-flags", MORE_FLAGS),
        (b"deep", headers_properties(nested_headers(3000))),
        (b"nested", headers_properties(nested_headers(3))),
    ]:
        await publish_raw_properties(monkeypatch, rabbit_url, JOBS_COMPLETED, body, properties)
    await _publish(rabbit, b"next")
    deliveries = await received.wait_for(5)
    assert [delivery.body for delivery in deliveries] == [
        b"careless",
        b"more-flags",
        b"deep",
        b"nested",
        b"next",
    ]
    careless, more_flags, deep, nested, _ = deliveries
    assert careless.headers == {f"x-{NOT_UTF8_READ}": 1, "x-sent": None}
    assert more_flags.headers == {}
    assert deep.headers == {"n": _nested(MAX_DEPTH - 1, innermost=None)}
    assert nested.headers == {"n": {"n": {}}}
    # Read the first time, on the connection they came on.
    assert not any(delivery.redelivered for delivery in deliveries)
    await wait_for_stats(rabbit, JOBS_COMPLETED, QueueStats(messages=0, consumers=1))


def _nested(depth: int, *, innermost: object) -> object:
    """{"n": {"n": … innermost}} with ``depth`` tables around ``innermost``."""
    value = innermost
    for _ in range(depth):
        value = {"n": value}
    return value


async def test_a_message_with_a_header_name_that_is_not_utf8_is_dead_lettered_with_it(
    rabbit: RabbitMQBroker, rabbit_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await publish_carelessly(monkeypatch, rabbit_url, JOBS_COMPLETED, [b"unreadable"])
    delivery = await eventually(lambda: rabbit.get(JOBS_COMPLETED))
    assert await dead_letters.move(rabbit, delivery, JOBS_COMPLETED, "unreadable")
    dead = await eventually(lambda: rabbit.get(JOBS_DEAD))
    assert dead.body == b"unreadable"
    assert dead.headers[f"x-{NOT_UTF8_READ}"] == 1
    assert dead.headers["x-death-reason"] == "unreadable"


async def test_a_dead_letter_jobs_dead_refuses_goes_back_after_a_pause_not_at_once(
    rabbit: RabbitMQBroker, rabbit_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full dead queue refusing publishes: the message came straight back, and the consumer
    # moved it again, as fast as the broker answered, for as long as the queue stayed full.
    vhost = unquote(urlsplit(rabbit_url).path.lstrip("/"))
    policy = ["-p", vhost, "test-dead-full"]
    await asyncio.to_thread(
        infra.rabbitmqctl,
        "set_policy",
        *policy,
        r"^jobs\.dead$",
        '{"max-length": 0, "overflow": "reject-publish"}',
        "--apply-to",
        "queues",
    )
    steps: list[str] = []

    async def pause(seconds: float) -> None:
        steps.append(f"pause {seconds}")

    monkeypatch.setattr(dead_letters, "_pause", pause)
    try:
        await _publish(rabbit, b"unreadable")
        delivery = await eventually(lambda: rabbit.get(JOBS_COMPLETED))
        reject = delivery.reject

        async def recorded_reject(*, requeue: bool) -> None:
            steps.append(f"reject requeue={requeue}")
            await reject(requeue=requeue)

        monkeypatch.setattr(delivery, "reject", recorded_reject)
        assert not await dead_letters.move(rabbit, delivery, JOBS_COMPLETED, "unreadable")
    finally:
        await asyncio.to_thread(infra.rabbitmqctl, "clear_policy", *policy)
    assert steps == [f"pause {dead_letters.PUT_BACK_AFTER}", "reject requeue=True"]
    await wait_for_stats(rabbit, JOBS_COMPLETED, QueueStats(messages=1, consumers=0))
