"""Publishes from concurrent callers, sent together.

A worker reports each job as it ends, one message at a time, and a publish of one message costs
RabbitMQ's client about 125 microseconds of CPU where one of four costs 55-65 per message
(``publishing.py``). Here a message waits while a publish is already in flight, and with
``linger`` (the worker's reports: 2 ms), under load, that long for others; the messages that
gathered go out together in the next publish, and each caller returns once the broker confirmed
its own, as the api's group commit does for jobs. Alone, a message is published at once.

A failed publish fails every caller in its group with :class:`BrokerUnavailable`; each retries as
it would have alone (the worker's reports go to its own declared queues, so what fails one fails
them all).
"""

from cloudtask.batching import Batcher
from cloudtask.broker.base import Broker, OutgoingMessage
from cloudtask.errors import BrokerUnavailable


class GroupedPublisher:
    def __init__(
        self, broker: Broker, *, name: str = "grouped-publishes", linger: float = 0
    ) -> None:
        self._batcher: Batcher[OutgoingMessage] = Batcher(
            broker.publish_many, shared_failures=(BrokerUnavailable,), name=name, linger=linger
        )

    @property
    def publishes(self) -> int:
        """Publishes made so far; fewer than the messages when they were grouped."""
        return self._batcher.writes

    def start(self) -> None:
        self._batcher.start()

    async def stop(self) -> None:
        """Stop publishing; callers still waiting are cancelled."""
        await self._batcher.stop()

    async def publish(self, queue: str, body: bytes, *, priority: int = 0) -> None:
        """Return once the broker confirmed this message; raise :class:`BrokerUnavailable` if
        its group was not confirmed."""
        await self._batcher.add(OutgoingMessage(queue, body, priority))
