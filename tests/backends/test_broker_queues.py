"""Reading, counting and emptying queues, and telling whether the broker is up, on every broker."""

from cloudtask.broker.base import Broker, OutgoingMessage, QueueStats
from cloudtask.contracts.queues import ALL_QUEUES, JOBS_COMPLETED, JOBS_DEAD, JOBS_STARTED
from tests.backends.recorder import Recorder, wait_for_stats
from tests.helpers import eventually


async def test_get_returns_none_on_an_empty_queue(broker: Broker) -> None:
    for queue in ALL_QUEUES:
        assert await broker.get(queue) is None


async def test_get_takes_one_message_at_a_time(broker: Broker) -> None:
    await broker.publish(JOBS_DEAD, b"first", headers={"x-death-reason": "unparseable"})
    await broker.publish(JOBS_DEAD, b"second")
    first = await eventually(lambda: broker.get(JOBS_DEAD))
    assert (first.body, first.headers) == (b"first", {"x-death-reason": "unparseable"})
    await first.ack()
    second = await eventually(lambda: broker.get(JOBS_DEAD))
    assert second.body == b"second"
    await second.ack()
    assert await broker.get(JOBS_DEAD) is None


async def test_an_acknowledged_message_is_gone_for_good(broker: Broker) -> None:
    await broker.publish(JOBS_DEAD, b"done")
    delivery = await eventually(lambda: broker.get(JOBS_DEAD))
    await delivery.ack()
    await wait_for_stats(broker, JOBS_DEAD, QueueStats(messages=0, consumers=0))


async def test_stats_count_waiting_messages_and_consumers(broker: Broker) -> None:
    assert await broker.stats(JOBS_STARTED) == QueueStats(messages=0, consumers=0)
    await broker.publish_many([OutgoingMessage(JOBS_STARTED, b"%d" % n) for n in range(2)])
    await wait_for_stats(broker, JOBS_STARTED, QueueStats(messages=2, consumers=0))
    first = await broker.consume(JOBS_COMPLETED, Recorder(), prefetch=1)
    second = await broker.consume(JOBS_COMPLETED, Recorder(), prefetch=1)
    await wait_for_stats(broker, JOBS_COMPLETED, QueueStats(messages=0, consumers=2))
    await first.cancel()
    await wait_for_stats(broker, JOBS_COMPLETED, QueueStats(messages=0, consumers=1))
    await second.cancel()
    await wait_for_stats(broker, JOBS_COMPLETED, QueueStats(messages=0, consumers=0))


async def test_cancelling_a_consumer_twice_is_harmless(broker: Broker) -> None:
    consumer = await broker.consume(JOBS_COMPLETED, Recorder(), prefetch=1)
    await consumer.cancel()
    await consumer.cancel()
    await wait_for_stats(broker, JOBS_COMPLETED, QueueStats(messages=0, consumers=0))


async def test_purge_empties_a_queue_and_counts_what_it_removed(broker: Broker) -> None:
    await broker.publish_many([OutgoingMessage(JOBS_DEAD, b"%d" % n) for n in range(3)])
    await wait_for_stats(broker, JOBS_DEAD, QueueStats(messages=3, consumers=0))
    assert await broker.purge(JOBS_DEAD) == 3
    assert await broker.stats(JOBS_DEAD) == QueueStats(messages=0, consumers=0)
    assert await broker.get(JOBS_DEAD) is None
    assert await broker.purge(JOBS_DEAD) == 0


async def test_ping_is_true_when_started_and_false_after_close(broker: Broker) -> None:
    assert await broker.ping() is True
    await broker.close()
    assert await broker.ping() is False
