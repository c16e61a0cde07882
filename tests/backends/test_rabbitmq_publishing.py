"""RabbitMQ only: many messages published in one write, each confirmed through aiormq's tables."""

import asyncio
import uuid
from collections.abc import AsyncIterator

import aiormq
import pytest
from aiormq.exceptions import DeliveryError, PublishError

from cloudtask.broker.base import OutgoingMessage
from cloudtask.broker.publishing import Unroutable, publish_confirmed
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.contracts.queues import JOBS_DEAD, JOBS_STARTED
from cloudtask.errors import BrokerUnavailable
from tests.helpers import eventually


@pytest.fixture
async def connection(rabbit_url: str) -> AsyncIterator[aiormq.abc.AbstractConnection]:
    connection = await aiormq.connect(rabbit_url)
    yield connection
    await connection.close()


async def _channel(connection: aiormq.abc.AbstractConnection) -> aiormq.Channel:
    channel = await connection.channel(publisher_confirms=True)
    assert isinstance(channel, aiormq.Channel)
    return channel


async def _queue(channel: aiormq.Channel, **arguments: object) -> str:
    name = f"cloudtask.test.publishing.{uuid.uuid4().hex}"
    await channel.queue_declare(name, auto_delete=False, arguments=dict(arguments))
    return name


async def _drain(channel: aiormq.Channel, queue: str) -> list[aiormq.abc.DeliveredMessage]:
    messages = []
    while True:
        message = await channel.basic_get(queue, no_ack=True)
        if message.delivery_tag is None:  # Basic.GetEmpty
            return messages
        messages.append(message)


def _tables_empty(channel: aiormq.Channel) -> bool:
    return not channel.confirmations and not channel.message_id_delivery_tag


async def _emptied(channel: aiormq.Channel) -> None:
    """After a failed batch: the broker's answers for the rest may still be on their way, and
    aiormq clears each confirmation as its answer arrives."""

    async def empty() -> bool:
        return _tables_empty(channel)

    await eventually(empty, timeout=5)


async def test_a_batch_arrives_in_order_with_its_properties(
    connection: aiormq.abc.AbstractConnection,
) -> None:
    channel = await _channel(connection)
    queue = await _queue(channel, **{"x-max-priority": 9})
    # One body larger than the frame size, so it travels as several body frames.
    big = b"x" * (channel.max_content_size * 2 + 17)
    bodies = [b"%d" % i for i in range(50)] + [big, b""]
    messages = [
        OutgoingMessage(queue, body, priority=i % 10, headers={"n": i} if i % 2 else {})
        for i, body in enumerate(bodies)
    ]
    await publish_confirmed(channel, messages)

    received = await _drain(channel, queue)
    # Priorities reorder a queue's messages; the bodies say which is which.
    by_body = {message.body: message for message in received}
    assert sorted(by_body) == sorted(bodies)
    for sent in messages:
        got = by_body[sent.body].header.properties
        assert got.delivery_mode == 2
        assert got.content_type == "application/json"
        assert got.priority == sent.priority
        assert (got.headers or {}) == dict(sent.headers)
    assert _tables_empty(channel)
    await channel.queue_delete(queue)


async def test_batches_and_single_publishes_share_a_channel_without_mixing_up_confirms(
    connection: aiormq.abc.AbstractConnection,
) -> None:
    channel = await _channel(connection)
    queue = await _queue(channel)

    async def batch(start: int) -> None:
        await publish_confirmed(
            channel, [OutgoingMessage(queue, b"b%d" % (start + i)) for i in range(100)]
        )

    async def single(i: int) -> None:
        await channel.basic_publish(b"s%d" % i, routing_key=queue, mandatory=True)

    await asyncio.gather(*(batch(start) for start in range(0, 500, 100)), *map(single, range(20)))
    assert channel.delivery_tag == 520
    assert len(await _drain(channel, queue)) == 520
    assert _tables_empty(channel)
    await channel.queue_delete(queue)


async def test_a_returned_message_fails_the_batch_and_the_rest_are_delivered(
    connection: aiormq.abc.AbstractConnection,
) -> None:
    channel = await _channel(connection)
    queue = await _queue(channel)
    messages = [
        OutgoingMessage(queue, b"1"),
        OutgoingMessage("cloudtask.test.no-such-queue", b"lost"),
        OutgoingMessage(queue, b"3"),
    ]
    with pytest.raises(Unroutable) as raised:
        await publish_confirmed(channel, messages)
    assert raised.value.messages == [messages[1]]  # the one returned, and only it
    assert sorted(m.body for m in await _drain(channel, queue)) == [b"1", b"3"]
    await _emptied(channel)
    # The channel goes on confirming.
    await publish_confirmed(channel, [OutgoingMessage(queue, b"4")])
    assert [m.body for m in await _drain(channel, queue)] == [b"4"]
    await channel.queue_delete(queue)


async def test_a_nacked_message_fails_the_batch(
    connection: aiormq.abc.AbstractConnection,
) -> None:
    channel = await _channel(connection)
    # A full queue that refuses more: the broker nacks the publishes beyond its length.
    queue = await _queue(channel, **{"x-max-length": 2, "x-overflow": "reject-publish"})
    messages = [OutgoingMessage(queue, b"%d" % i) for i in range(4)]
    messages.append(OutgoingMessage("cloudtask.test.no-such-queue", b"returned"))
    with pytest.raises(DeliveryError) as raised:  # a refusal, not for want of a queue only
        await publish_confirmed(channel, messages)
    assert not isinstance(raised.value, PublishError)
    assert sorted(m.body for m in await _drain(channel, queue)) == [b"0", b"1"]
    await _emptied(channel)
    await channel.queue_delete(queue)


async def test_a_closed_channel_refuses_at_once_and_sends_nothing(
    connection: aiormq.abc.AbstractConnection,
) -> None:
    channel = await _channel(connection)
    queue = await _queue(channel)
    await channel.close()
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await publish_confirmed(channel, [OutgoingMessage(queue, b"1")])
    other = await _channel(connection)
    assert await _drain(other, queue) == []
    await other.queue_delete(queue)


async def test_a_channel_without_confirms_is_refused(
    connection: aiormq.abc.AbstractConnection,
) -> None:
    channel = await connection.channel(publisher_confirms=False)
    assert isinstance(channel, aiormq.Channel)
    with pytest.raises(ValueError, match="publisher confirms"):
        await publish_confirmed(channel, [OutgoingMessage("cloudtask.test.anything", b"1")])


@pytest.fixture
async def broker(rabbit_url: str) -> AsyncIterator[RabbitMQBroker]:
    broker = RabbitMQBroker(rabbit_url)
    await broker.start()
    try:
        await broker.wait_connected(10)
        yield broker
    finally:
        await broker.close()


async def test_the_broker_publishes_a_large_batch_in_one_call(
    broker: RabbitMQBroker, connection: aiormq.abc.AbstractConnection
) -> None:
    channel = await _channel(connection)
    queue = await _queue(channel)
    await broker.publish_many([OutgoingMessage(queue, b"%d" % i) for i in range(2000)])
    assert (await broker.stats(queue)).messages == 2000
    with pytest.raises(BrokerUnavailable):
        await broker.publish_many(
            [OutgoingMessage(queue, b"ok"), OutgoingMessage("cloudtask.test.none", b"no")]
        )
    await channel.queue_delete(queue)


async def test_a_queue_of_ours_deleted_under_the_broker_is_declared_again_when_published_to(
    broker: RabbitMQBroker, connection: aiormq.abc.AbstractConnection
) -> None:
    # jobs.dead has no consumer to declare it again: its dead letters came back for ever.
    channel = await _channel(connection)
    await channel.queue_delete(JOBS_DEAD)
    await channel.queue_purge(JOBS_STARTED)
    await broker.publish_many(
        [OutgoingMessage(JOBS_STARTED, b"kept"), OutgoingMessage(JOBS_DEAD, b"dead")]
    )
    assert [m.body for m in await _drain(channel, JOBS_DEAD)] == [b"dead"]
    # Only what was returned went again: no copy of the other.
    assert [m.body for m in await _drain(channel, JOBS_STARTED)] == [b"kept"]
