"""An in-process broker for ``cloudtask dev`` and tests: priority queues, prefetch, manual acks.

It behaves like the RabbitMQ broker where CloudTask can tell the difference: higher priorities are
delivered first, unacknowledged deliveries return to their place in their queue (marked
redelivered) when rejected, when a consumer is cancelled or its handler fails, and nothing
survives the process.
"""

import asyncio
import heapq
import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cloudtask.broker.base import (
    Broker,
    Consumer,
    Delivery,
    Handler,
    OutgoingMessage,
    QueueStats,
)
from cloudtask.contracts.queues import ALL_QUEUES, JOBS_CREATED, MAX_PRIORITY

log = logging.getLogger(__name__)


@dataclass
class _Message:
    body: bytes
    headers: Mapping[str, Any]
    priority: int
    redelivered: bool = False
    seq: int | None = None  # its place in the queue, kept when it is requeued


@dataclass
class _Queue:
    max_priority: int
    heap: list[tuple[int, int, _Message]] = field(default_factory=list)
    consumers: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    # Consumers in turn, as RabbitMQ serves them: the next message goes to the first with room,
    # which then moves to the back (else the one that waited first would take every message).
    turns: list["MemoryConsumer"] = field(default_factory=list)


class MemoryDelivery(Delivery):
    def __init__(self, broker: "MemoryBroker", queue: str, message: _Message) -> None:
        self._broker = broker
        self._queue = queue
        self._message = message
        self.body = message.body
        self.headers = message.headers
        self.priority = message.priority
        self.redelivered = message.redelivered
        self.settled = False
        self.on_settle: list[Any] = []

    async def ack(self) -> None:
        await self._settle(requeue=False)

    async def reject(self, *, requeue: bool) -> None:
        await self._settle(requeue=requeue)

    async def _settle(self, *, requeue: bool) -> None:
        if self.settled:
            return
        self.settled = True
        if requeue:
            self._message.redelivered = True
            self._broker.enqueue(self._queue, self._message)
        for callback in self.on_settle:
            callback()
        await self._broker.notify(self._queue)


class MemoryConsumer(Consumer):
    def __init__(self, broker: "MemoryBroker", queue: str, handler: Handler, prefetch: int) -> None:
        self._broker = broker
        self._queue = queue
        self._handler = handler
        self._prefetch = prefetch
        self._unsettled: set[MemoryDelivery] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task = asyncio.create_task(self._run())

    def has_room(self) -> bool:
        return len(self._unsettled) < self._prefetch

    def _my_turn(self, queue: _Queue) -> bool:
        first = next((consumer for consumer in queue.turns if consumer.has_room()), None)
        return bool(queue.heap) and first is self

    async def _run(self) -> None:
        queue = self._broker.queue(self._queue)
        queue.turns.append(self)
        try:
            await self._take_in_turn(queue)
        finally:
            queue.turns.remove(self)
            async with queue.changed:  # the next in turn may have waited for this one
                queue.changed.notify_all()

    async def _take_in_turn(self, queue: _Queue) -> None:
        while True:
            async with queue.changed:
                await queue.changed.wait_for(lambda: self._my_turn(queue))
                _, _, message = heapq.heappop(queue.heap)
                queue.turns.remove(self)
                queue.turns.append(self)
                if queue.heap:
                    queue.changed.notify_all()  # the next in turn takes the next message
            delivery = MemoryDelivery(self._broker, self._queue, message)
            self._unsettled.add(delivery)
            delivery.on_settle.append(lambda d=delivery: self._unsettled.discard(d))
            task = asyncio.create_task(self._handle(delivery))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, delivery: MemoryDelivery) -> None:
        try:
            await self._handler(delivery)
        except Exception:
            log.exception("consumer handler failed; the message returns to its queue")
            await delivery.reject(requeue=True)

    async def stop_receiving(self) -> None:
        self._loop_task.cancel()
        await asyncio.gather(self._loop_task, return_exceptions=True)

    async def cancel(self) -> None:
        self._loop_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(self._loop_task, *self._tasks, return_exceptions=True)
        for delivery in list(self._unsettled):
            await delivery.reject(requeue=True)
        self._broker.queue(self._queue).consumers -= 1


class MemoryBroker(Broker):
    def __init__(self) -> None:
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count()
        self._consumers: list[MemoryConsumer] = []
        self.running = False

    def queue(self, name: str) -> _Queue:
        if name not in self._queues:
            max_priority = MAX_PRIORITY if name == JOBS_CREATED else 0
            self._queues[name] = _Queue(max_priority=max_priority)
        return self._queues[name]

    def enqueue(self, name: str, message: _Message) -> None:
        queue = self.queue(name)
        priority = min(max(message.priority, 0), queue.max_priority)
        # FIFO within a priority, and a requeued message back in its place, as RabbitMQ does.
        if message.seq is None:
            message.seq = next(self._seq)
        heapq.heappush(queue.heap, (-priority, message.seq, message))

    async def notify(self, name: str) -> None:
        queue = self.queue(name)
        async with queue.changed:
            queue.changed.notify_all()

    async def start(self) -> None:
        self.running = True
        for name in ALL_QUEUES:
            self.queue(name)

    async def close(self) -> None:
        for consumer in self._consumers:
            await consumer.cancel()
        self._consumers.clear()
        self.running = False

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        touched = set()
        for message in messages:
            self.enqueue(
                message.queue, _Message(message.body, dict(message.headers), message.priority)
            )
            touched.add(message.queue)
        for name in touched:
            await self.notify(name)

    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int,
        on_lost: Callable[[], None] | None = None,
    ) -> Consumer:
        self.queue(queue).consumers += 1
        consumer = MemoryConsumer(self, queue, handler, max(prefetch, 1))
        self._consumers.append(consumer)
        return _Tracked(consumer, self._consumers)

    async def get(self, queue: str) -> Delivery | None:
        heap = self.queue(queue).heap
        if not heap:
            return None
        _, _, message = heapq.heappop(heap)
        return MemoryDelivery(self, queue, message)

    async def stats(self, queue: str) -> QueueStats:
        state = self.queue(queue)
        return QueueStats(messages=len(state.heap), consumers=state.consumers)

    async def purge(self, queue: str) -> int:
        state = self.queue(queue)
        count = len(state.heap)
        state.heap.clear()
        return count

    async def ping(self) -> bool:
        return self.running


class _Tracked(Consumer):
    """Removes a cancelled consumer from the broker's list, so close() does not cancel it twice."""

    def __init__(self, consumer: MemoryConsumer, registry: list[MemoryConsumer]) -> None:
        self._consumer = consumer
        self._registry = registry

    async def stop_receiving(self) -> None:
        await self._consumer.stop_receiving()

    async def cancel(self) -> None:
        if self._consumer in self._registry:
            self._registry.remove(self._consumer)
            await self._consumer.cancel()
