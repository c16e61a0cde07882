"""How messages travel from publish to consumer, on every broker."""

import asyncio

from cloudtask.broker.base import Broker, Delivery, OutgoingMessage, QueueStats
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_CREATED, JOBS_STARTED
from tests.backends.recorder import Recorder, wait_for_stats
from tests.helpers import eventually


async def test_a_consumer_receives_the_body_headers_and_priority(broker: Broker) -> None:
    received = Recorder(ack=True)
    consumer = await broker.consume(JOBS_CREATED, received, prefetch=1)
    await broker.publish(
        JOBS_CREATED, b'{"jobId": "1"}', priority=7, headers={"x-reason": "why", "x-count": 3}
    )
    [delivery] = await received.wait_for(1)
    assert delivery.body == b'{"jobId": "1"}'
    assert delivery.headers == {"x-reason": "why", "x-count": 3}
    assert delivery.priority == 7
    assert delivery.redelivered is False
    await consumer.cancel()


async def test_higher_priorities_are_delivered_first(broker: Broker) -> None:
    for priority in [1, 9, 5, 0, 7, 5]:
        await broker.publish(JOBS_CREATED, f"{priority}".encode(), priority=priority)
    await wait_for_stats(broker, JOBS_CREATED, QueueStats(messages=6, consumers=0))
    order = []
    while (delivery := await broker.get(JOBS_CREATED)) is not None:
        order.append(delivery.priority)
        await delivery.ack()
    assert order == [9, 7, 5, 5, 1, 0]


async def test_messages_of_equal_priority_keep_their_order(broker: Broker) -> None:
    await broker.publish_many([OutgoingMessage(JOBS_CREATED, b"%d" % n, 4) for n in range(5)])
    received = Recorder(ack=True)
    consumer = await broker.consume(JOBS_CREATED, received, prefetch=1)
    await received.wait_for(5)
    assert received.bodies == [b"0", b"1", b"2", b"3", b"4"]
    await consumer.cancel()


async def test_prefetch_limits_unacknowledged_deliveries(broker: Broker) -> None:
    await broker.publish_many([OutgoingMessage(JOBS_STARTED, b"%d" % n) for n in range(5)])
    received = Recorder(ack=False)
    consumer = await broker.consume(JOBS_STARTED, received, prefetch=2)
    await received.wait_for(2)
    await wait_for_stats(broker, JOBS_STARTED, QueueStats(messages=3, consumers=1))
    assert len(received.deliveries) == 2
    await received.deliveries[0].ack()
    await received.wait_for(3)
    await wait_for_stats(broker, JOBS_STARTED, QueueStats(messages=2, consumers=1))
    assert len(received.deliveries) == 3
    await consumer.cancel()


async def test_a_requeued_rejection_is_delivered_again_marked_redelivered(broker: Broker) -> None:
    await broker.publish(JOBS_STARTED, b"again")
    first = await eventually(lambda: broker.get(JOBS_STARTED))
    assert first.redelivered is False
    await first.reject(requeue=True)
    second = await eventually(lambda: broker.get(JOBS_STARTED))
    assert (second.body, second.redelivered) == (b"again", True)
    await second.ack()


async def test_a_rejection_without_requeue_drops_the_message(broker: Broker) -> None:
    await broker.publish(JOBS_STARTED, b"gone")
    delivery = await eventually(lambda: broker.get(JOBS_STARTED))
    await delivery.reject(requeue=False)
    await wait_for_stats(broker, JOBS_STARTED, QueueStats(messages=0, consumers=0))
    assert await broker.get(JOBS_STARTED) is None


async def test_cancelling_a_consumer_returns_its_unacknowledged_deliveries(
    broker: Broker,
) -> None:
    await broker.publish_many([OutgoingMessage(JOBS_COMPLETED, b"%d" % n) for n in range(3)])
    received = Recorder(ack=False)
    consumer = await broker.consume(JOBS_COMPLETED, received, prefetch=10)
    await received.wait_for(3)
    await consumer.cancel()
    await wait_for_stats(broker, JOBS_COMPLETED, QueueStats(messages=3, consumers=0))
    returned = Recorder(ack=True)
    again = await broker.consume(JOBS_COMPLETED, returned, prefetch=10)
    await returned.wait_for(3)
    assert sorted(returned.bodies) == [b"0", b"1", b"2"]
    assert all(delivery.redelivered for delivery in returned.deliveries)
    await again.cancel()


async def test_a_message_whose_handler_raises_is_requeued(broker: Broker) -> None:
    attempts: list[Delivery] = []

    async def fails_once(delivery: Delivery) -> None:
        attempts.append(delivery)
        if len(attempts) == 1:
            raise RuntimeError("handler failed")
        await delivery.ack()

    consumer = await broker.consume(JOBS_STARTED, fails_once, prefetch=1)
    await broker.publish(JOBS_STARTED, b"flaky")

    async def retried() -> bool:
        return len(attempts) >= 2

    await eventually(retried)
    assert [(d.body, d.redelivered) for d in attempts] == [(b"flaky", False), (b"flaky", True)]
    await wait_for_stats(broker, JOBS_STARTED, QueueStats(messages=0, consumers=1))
    await consumer.cancel()


async def test_publish_many_delivers_every_message(broker: Broker) -> None:
    bodies = {b"message-%d" % n for n in range(500)}
    await broker.publish_many([OutgoingMessage(JOBS_COMPLETED, body) for body in bodies])
    received = Recorder(ack=True)
    consumer = await broker.consume(JOBS_COMPLETED, received, prefetch=50)
    await received.wait_for(500)
    assert set(received.bodies) == bodies
    assert len(received.bodies) == 500
    await wait_for_stats(broker, JOBS_COMPLETED, QueueStats(messages=0, consumers=1))
    await consumer.cancel()


async def test_publish_many_of_nothing_publishes_nothing(broker: Broker) -> None:
    await broker.publish_many([])
    assert await broker.stats(JOBS_CREATED) == QueueStats(messages=0, consumers=0)


async def test_acks_given_together_settle_exactly_those_deliveries(broker: Broker) -> None:
    # RabbitMQ coalesces acks given in one turn of the loop (``multiple``): it must never settle
    # a delivery that is still held (0), nor one rejected beside them (3).
    await broker.publish_many([OutgoingMessage(JOBS_COMPLETED, b"%d" % n) for n in range(10)])
    received = Recorder(ack=False)
    consumer = await broker.consume(JOBS_COMPLETED, received, prefetch=20)
    deliveries = await received.wait_for(10)
    assert received.bodies == [b"%d" % n for n in range(10)]
    await asyncio.gather(
        deliveries[3].reject(requeue=True),
        *(delivery.ack() for n, delivery in enumerate(deliveries) if n not in (0, 3)),
    )
    again = await received.wait_for(11)
    assert again[10].body == b"3" and again[10].redelivered
    await asyncio.gather(deliveries[0].ack(), again[10].ack())
    await consumer.cancel()
    await wait_for_stats(broker, JOBS_COMPLETED, QueueStats(messages=0, consumers=0))


async def test_a_held_delivery_below_acked_ones_goes_back_on_cancel(broker: Broker) -> None:
    await broker.publish_many([OutgoingMessage(JOBS_COMPLETED, b"%d" % n) for n in range(6)])
    received = Recorder(ack=False)
    consumer = await broker.consume(JOBS_COMPLETED, received, prefetch=20)
    deliveries = await received.wait_for(6)
    await asyncio.gather(*(delivery.ack() for delivery in deliveries[2:]))
    await asyncio.gather(deliveries[0].ack())
    await consumer.cancel()  # delivery 1 was never settled: it returns to the queue
    await wait_for_stats(broker, JOBS_COMPLETED, QueueStats(messages=1, consumers=0))
    back = await eventually(lambda: broker.get(JOBS_COMPLETED))
    assert back.body == b"1"
    await back.ack()
