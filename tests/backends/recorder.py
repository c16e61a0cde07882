"""A consumer handler for tests that records what it receives."""

from dataclasses import dataclass, field

from cloudtask.broker.base import Broker, Delivery, QueueStats
from tests.helpers import eventually


@dataclass
class Recorder:
    """Keeps every delivery; acknowledges each one only if ``ack`` is set."""

    ack: bool = False
    deliveries: list[Delivery] = field(default_factory=list)

    async def __call__(self, delivery: Delivery) -> None:
        self.deliveries.append(delivery)
        if self.ack:
            await delivery.ack()

    @property
    def bodies(self) -> list[bytes]:
        return [delivery.body for delivery in self.deliveries]

    async def wait_for(self, count: int) -> list[Delivery]:
        async def enough() -> bool:
            return len(self.deliveries) >= count

        await eventually(enough)
        return self.deliveries


async def wait_for_stats(broker: Broker, queue: str, expected: QueueStats) -> None:
    """Wait until the queue reports ``expected`` (RabbitMQ's counts may lag a moment)."""

    last: list[QueueStats] = []

    async def matches() -> bool:
        last.append(await broker.stats(queue))
        return last[-1] == expected

    try:
        await eventually(matches, timeout=5)
    except AssertionError:
        raise AssertionError(f"{queue}: {last[-1]}, expected {expected}") from None
