"""RabbitMQ only: a broker that is not connected fails fast, and stops, instead of hanging."""

import asyncio
import contextlib
import time
from urllib.parse import urlsplit

import pytest

from cloudtask.broker.base import Delivery
from cloudtask.broker.rabbitmq import STOP_TIMEOUT, RabbitMQBroker
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_CREATED, JOBS_DEAD
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


class CuttableLink:
    """A TCP relay to RabbitMQ that can be cut: every connection through it is dropped and new
    ones are refused, as when RabbitMQ goes down for this client alone."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream_port = upstream_port
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._upstream_port)
        self._writers += [writer, up_writer]

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                while data := await source.read(65536):
                    sink.write(data)
            sink.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()


async def test_a_consumer_and_its_broker_stop_while_rabbitmq_is_unreachable(
    rabbit_url: str,
) -> None:
    parts = urlsplit(rabbit_url)
    link = CuttableLink(parts.port or 5672)
    await link.start()
    broker = RabbitMQBroker(parts._replace(netloc=f"guest:guest@127.0.0.1:{link.port}").geturl())
    await broker.start()

    async def ack(delivery: Delivery) -> None:
        await delivery.ack()

    consumer = await broker.consume(JOBS_COMPLETED, ack, prefetch=4)
    link.cut()
    await asyncio.sleep(1)  # the client finds the connection gone and tries to reconnect
    started = time.monotonic()
    async with asyncio.timeout(STOP_TIMEOUT * 3 + 5):  # a robust channel would wait for ever
        await consumer.cancel()
        await broker.close()
    assert time.monotonic() - started < STOP_TIMEOUT * 3 + 1
