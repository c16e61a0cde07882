"""The RabbitMQ broker (aio-pika): durable queues, persistent messages and publisher confirms.

Publishes from many coroutines share one confirming channel, so their confirms are pipelined
rather than awaited one at a time; the messages of one publish go out in one write
(``publishing.py``). Each consumer has its own channel with its own prefetch, and takes its
deliveries from aiormq as they are (:class:`RabbitConsumer`). The connection is robust: aio-pika
reconnects and reopens the channels, the consumers subscribe again; until then, publishing raises
:class:`BrokerUnavailable` at once instead of hanging, and the transactional outbox keeps the
messages.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, AbstractRobustConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from cloudtask.broker.acks import Acks
from cloudtask.broker.base import (
    Broker,
    Consumer,
    Delivery,
    Handler,
    OutgoingMessage,
    QueueStats,
)
from cloudtask.broker.coalescing import CoalescingConnection
from cloudtask.broker.frame_decoding import tolerate_undecodable_fields
from cloudtask.broker.publishing import Unroutable, publish_confirmed
from cloudtask.contracts.queues import ALL_QUEUES, JOBS_CREATED, MAX_PRIORITY
from cloudtask.errors import BrokerUnavailable

log = logging.getLogger(__name__)

BROKER_ERRORS = (*CONNECTION_EXCEPTIONS, TimeoutError)
# How long a stop waits for each step that needs RabbitMQ; a service must stop while it is down.
STOP_TIMEOUT = 5.0


def queue_arguments(name: str) -> dict[str, Any]:
    return {"x-max-priority": MAX_PRIORITY} if name == JOBS_CREATED else {}


class RabbitDelivery(Delivery):
    """A delivery as aiormq hands it over, settled on the channel it came on.

    aio-pika's own message object is not used: it costs a task and a dozen attribute writes per
    delivery, about a tenth of a worker's CPU per job and a quarter of a results-processor's.
    """

    def __init__(
        self,
        channel: aiormq.abc.AbstractChannel,
        frame: Basic.Deliver | Basic.GetOk,
        message: DeliveredMessage,
        acks: Acks | None,
    ) -> None:
        self._channel = channel
        self._acks = acks
        self._processed = False
        self.tag: int = frame.delivery_tag or 0
        properties = message.header.properties
        self.body = message.body
        self.headers = dict(properties.headers or {})
        self.priority = properties.priority or 0
        self.redelivered = bool(frame.redelivered)

    async def ack(self) -> None:
        if self._processed:
            return  # settled already; a second frame would close the channel
        try:
            if self._acks is None:
                await self._channel.basic_ack(self.tag)
            else:
                await self._acks.ack(self.tag)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"could not acknowledge: {exc!r}") from None
        self._processed = True

    async def reject(self, *, requeue: bool) -> None:
        if self._processed:
            return
        try:
            await self._channel.basic_reject(self.tag, requeue=requeue)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"could not reject: {exc!r}") from None
        # Only once the reject is on its way may a coalesced ack reach past it.
        if self._acks is not None:
            self._acks.settled(self.tag)
        self._processed = True

    @property
    def processed(self) -> bool:
        return self._processed

    @property
    def lost(self) -> bool:
        return self._channel.is_closed


class RabbitConsumer(Consumer):
    """A consumer on the aiormq channel beneath a robust aio-pika channel.

    aio-pika reopens the channel after a lost connection, with its prefetch and the queue's
    declaration; the consumer subscribes again on each reopened channel, under the same tag. When
    RabbitMQ itself cancels the subscription (its queue was deleted), the consumer declares the
    queue again and subscribes again, as aio-pika does for its own consumers. Delivery tags count
    per channel, so each channel has its own :class:`Acks`.
    """

    def __init__(
        self,
        channel: AbstractRobustChannel,
        queue: str,
        handler: Handler,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._channel = channel
        self._queue = queue
        self._handler = handler
        self._on_lost = on_lost
        self._tag = f"cloudtask.{queue}.{uuid.uuid4().hex}"
        self._stopped = False
        self._acks: Acks | None = None  # of the channel subscribed on last
        self._tasks: set[asyncio.Task[None]] = set()

    async def subscribe(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        acks = self._acks
        if acks is None or acks.channel is not underlay:
            acks = self._acks = Acks(underlay)
            underlay.on_consumer_cancel_callbacks.add(self._on_cancelled)
            if self._on_lost is not None:
                on_lost = self._on_lost
                underlay.closing.add_done_callback(lambda _closed: on_lost())

        async def on_message(message: DeliveredMessage) -> None:
            # aiormq runs each delivery in a task of its own; the handler runs in it.
            frame = message.delivery
            if not isinstance(frame, Basic.Deliver):
                raise TypeError(f"unexpected frame {frame!r}")
            delivery = RabbitDelivery(underlay, frame, message, acks)
            acks.delivered(delivery.tag)
            try:
                await self._handler(delivery)
            except Exception:
                log.exception("consumer handler failed; the message returns to its queue")
                if not delivery.processed:
                    with contextlib.suppress(BrokerUnavailable):
                        await delivery.reject(requeue=True)

        await underlay.basic_consume(self._queue, on_message, no_ack=False, consumer_tag=self._tag)

    def _on_cancelled(self, frame: Basic.Cancel) -> None:
        # Called from the channel's frame reader, which must go on reading to let the new
        # declaration and subscription be answered: they run in a task.
        if frame.consumer_tag != self._tag or self._stopped:
            return
        log.warning("RabbitMQ cancelled the consumer of %s; consuming again", self._queue)
        task = asyncio.get_running_loop().create_task(self._subscribe_again(declare=True))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resubscribe(self, _channel: object) -> None:
        """aio-pika's reopen callback (the reopened channel has its queue declared already)."""
        await self._subscribe_again(declare=False)

    async def _subscribe_again(self, *, declare: bool) -> None:
        # Nobody awaits this for an answer (aio-pika ignores what its callbacks raise): a
        # failure is logged. It means the channel closed again, and its reopening calls this.
        try:
            if declare:
                underlay = await self._channel.get_underlay_channel()
                await underlay.queue_declare(
                    self._queue, durable=True, arguments=queue_arguments(self._queue)
                )
            if not self._stopped:
                await self.subscribe()
        except BROKER_ERRORS as exc:
            log.warning("could not consume %s again: %r", self._queue, exc)

    async def stop_receiving(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._channel.reopen_callbacks.discard(self.resubscribe)
            # A robust channel waits for its reconnection before it hands out its underlay: with
            # RabbitMQ down, a stop would wait as long. A lost connection took the subscription
            # with it, so a closed channel needs nothing, and an open one gets a bounded wait
            # (TimeoutError is one of BROKER_ERRORS).
            if self._channel.is_closed:
                return
            with contextlib.suppress(*BROKER_ERRORS):
                async with asyncio.timeout(STOP_TIMEOUT):
                    underlay = await self._channel.get_underlay_channel()
                    await underlay.basic_cancel(self._tag)

    async def cancel(self) -> None:
        await self.stop_receiving()
        # Closing the channel returns its unacknowledged deliveries to the queue (as losing the
        # connection already did, if it is lost).
        with contextlib.suppress(*BROKER_ERRORS):
            async with asyncio.timeout(STOP_TIMEOUT):
                await self._channel.close()


class RabbitMQBroker(Broker):
    def __init__(
        self, url: str, *, connect_timeout: float = 5, publish_timeout: float = 10
    ) -> None:
        self._url = url
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._connected = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None
        self._consumers: list[Consumer] = []

    async def start(self) -> None:
        try:
            await self._connect()
        except BROKER_ERRORS as exc:
            log.warning("RabbitMQ is unreachable (%r); retrying in the background", exc)
            self._connector = asyncio.create_task(self._keep_connecting())

    async def connect_once(self) -> None:
        """Connect, or raise :class:`BrokerUnavailable` saying why, without retrying (for a
        command that asks one thing and exits)."""
        try:
            await self._connect()
        except BROKER_ERRORS as exc:
            why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise BrokerUnavailable(why) from None

    async def _keep_connecting(self) -> None:
        while True:
            await asyncio.sleep(1)
            try:
                await self._connect()
            except BROKER_ERRORS:
                continue
            log.info("connected to RabbitMQ")
            return

    async def _connect(self) -> None:
        # Before any frame is read: a header pamqp cannot decode would close the connection.
        tolerate_undecodable_fields()
        connection = await aio_pika.connect_robust(
            self._url,
            timeout=self._connect_timeout,
            reconnect_interval=1,
            client_properties={"connection_name": "cloudtask"},
            connection_class=CoalescingConnection,
        )
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            for name in ALL_QUEUES:
                await channel.declare_queue(name, durable=True, arguments=queue_arguments(name))
        except BaseException:
            await connection.close()
            raise
        self._connection, self._channel = connection, channel
        self._connected.set()

    async def wait_connected(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def close(self) -> None:
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        if self._connection is not None:
            with contextlib.suppress(*BROKER_ERRORS):
                async with asyncio.timeout(STOP_TIMEOUT):
                    await self._connection.close()
        self._connection = self._channel = None
        self._connected.clear()

    def _publishing_channel(self) -> AbstractChannel:
        connection, channel = self._connection, self._channel
        if connection is None or channel is None or connection.is_closed or channel.is_closed:
            raise BrokerUnavailable("not connected to RabbitMQ")
        return channel

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        if not messages:
            return
        channel = self._publishing_channel()
        try:
            async with asyncio.timeout(self._publish_timeout):
                # All of them in one write, their confirms awaited together (see publishing.py).
                # Mandatory, and a returned message raises: an unroutable publish is an error,
                # not a silent loss.
                underlay = await channel.get_underlay_channel()
                if not isinstance(underlay, aiormq.Channel):
                    raise TypeError(f"unexpected channel type {type(underlay)!r}")
                try:
                    await publish_confirmed(underlay, messages)
                except Unroutable as exc:
                    # Its queue is gone: an operator deleted it (jobs.dead, to clear it, say).
                    # Declared again, the returned messages go once more, and only they; a
                    # queue only a consumer would declare again would otherwise take nothing
                    # until the service restarts, and a dead letter would come back for ever.
                    if any(message.queue not in ALL_QUEUES for message in exc.messages):
                        raise
                    await self._declare_again(underlay, {m.queue for m in exc.messages})
                    await publish_confirmed(underlay, exc.messages)
        except (*BROKER_ERRORS, Unroutable) as exc:
            raise BrokerUnavailable(f"publish not confirmed: {exc!r}") from None

    @staticmethod
    async def _declare_again(channel: aiormq.abc.AbstractChannel, queues: set[str]) -> None:
        for name in sorted(queues):
            log.warning("queue %s was missing; declared again", name)
            await channel.queue_declare(name, durable=True, arguments=queue_arguments(name))

    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int,
        on_lost: Callable[[], None] | None = None,
    ) -> Consumer:
        connection = self._connection
        if connection is None:
            await self._connected.wait()
            connection = self._connection
        if connection is None:
            raise BrokerUnavailable("not connected to RabbitMQ")
        try:
            channel = await connection.channel(publisher_confirms=False)
            if not isinstance(channel, AbstractRobustChannel):
                raise TypeError(f"unexpected channel type {type(channel)!r}")
            await channel.set_qos(prefetch_count=prefetch)
            await channel.declare_queue(queue, durable=True, arguments=queue_arguments(queue))
            consumer = RabbitConsumer(channel, queue, handler, on_lost)
            await consumer.subscribe()
            channel.reopen_callbacks.add(consumer.resubscribe)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"could not consume {queue}: {exc!r}") from None
        self._consumers.append(consumer)
        return consumer

    async def get(self, queue: str) -> Delivery | None:
        channel = self._publishing_channel()
        try:
            underlay = await channel.get_underlay_channel()
            message = await underlay.basic_get(queue, no_ack=False)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"could not read {queue}: {exc!r}") from None
        if not isinstance(message.delivery, Basic.GetOk):
            return None  # GetEmpty
        return RabbitDelivery(underlay, message.delivery, message, None)

    async def stats(self, queue: str) -> QueueStats:
        channel = self._publishing_channel()
        try:
            # Not channel.declare_queue(passive=True): the robust channel answers that from its
            # cache of declared queues, with the counts of the first declaration.
            underlay = await channel.get_underlay_channel()
            result = await underlay.queue_declare(queue, passive=True)
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"could not inspect {queue}: {exc!r}") from None
        return QueueStats(messages=result.message_count or 0, consumers=result.consumer_count or 0)

    async def purge(self, queue: str) -> int:
        channel = self._publishing_channel()
        try:
            amqp_queue = await channel.get_queue(queue, ensure=False)
            result = await amqp_queue.purge()
        except BROKER_ERRORS as exc:
            raise BrokerUnavailable(f"could not purge {queue}: {exc!r}") from None
        return int(result.message_count or 0)

    async def ping(self) -> bool:
        try:
            self._publishing_channel()
        except BrokerUnavailable:
            return False
        return True
