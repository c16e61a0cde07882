"""What CloudTask needs from a message broker, and nothing about which one it is.

Every publish is confirmed before it returns; every consumer acknowledges by hand. Queues are the
contract's four, declared durable when the broker starts.
"""

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class OutgoingMessage:
    queue: str
    body: bytes
    priority: int = 0
    headers: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueueStats:
    messages: int
    consumers: int


class Delivery(ABC):
    """One message handed to a consumer; it stays with the consumer until acked or rejected."""

    body: bytes
    headers: Mapping[str, Any]
    priority: int
    redelivered: bool

    @abstractmethod
    async def ack(self) -> None: ...

    @abstractmethod
    async def reject(self, *, requeue: bool) -> None: ...

    @property
    def lost(self) -> bool:
        """Whether the channel it came on closed: if it was not settled, the broker hands it out
        again (and may have, if the acknowledgement sent last was still on its way)."""
        return False


Handler = Callable[[Delivery], Awaitable[None]]


class Consumer(ABC):
    @abstractmethod
    async def stop_receiving(self) -> None:
        """Take no new deliveries; those already handed out can still be acknowledged."""

    @abstractmethod
    async def cancel(self) -> None:
        """Stop receiving; deliveries not yet acknowledged go back to the queue."""


class Broker(ABC):
    @abstractmethod
    async def start(self) -> None:
        """Connect and declare the queues. A broker that is down does not fail this: it is
        reconnected in the background, and :meth:`publish` raises until it is back."""

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish persistently and return once the broker confirmed all of them.

        Raises :class:`cloudtask.errors.BrokerUnavailable` if any was not confirmed; some may
        have been, so a caller retrying must tolerate duplicates (consumers are idempotent).
        """

    async def publish(
        self,
        queue: str,
        body: bytes,
        *,
        priority: int = 0,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        await self.publish_many([OutgoingMessage(queue, body, priority, headers or {})])

    @abstractmethod
    async def consume(
        self,
        queue: str,
        handler: Handler,
        *,
        prefetch: int,
        on_lost: Callable[[], None] | None = None,
    ) -> Consumer:
        """Call ``handler`` for each delivery, at most ``prefetch`` unacknowledged at a time.
        ``on_lost`` is called when deliveries not yet settled were lost with their channel (the
        connection went): the broker hands them out again, redelivered, and settling them
        fails. The in-process broker loses no channel."""

    @abstractmethod
    async def get(self, queue: str) -> Delivery | None:
        """Take one message if there is one (for operators and tests reading ``jobs.dead``)."""

    @abstractmethod
    async def stats(self, queue: str) -> QueueStats: ...

    @abstractmethod
    async def purge(self, queue: str) -> int: ...

    @abstractmethod
    async def ping(self) -> bool:
        """Whether the broker is reachable now."""
