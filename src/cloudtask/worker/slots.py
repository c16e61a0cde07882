"""The worker's ``WORKER_CONCURRENCY`` slots, given to waiting jobs highest priority first.

The worker holds more deliveries than it runs (the prefetch, and long jobs acknowledge their
delivery once announced), so when every slot is busy, deliveries wait here. RabbitMQ delivered
them in priority order, but only among the messages queued at that moment: a job of priority 9
submitted after the low ones already held would wait behind them in a first-come semaphore.
Here a freed slot goes to the waiting job of the highest priority, the earliest enqueued of those
first (not the first to arrive here: a delivery returned to the queue arrives again, behind later
ones); and when one has waited too long, all that wait are turned away, to go back to their
places in the queue (``pipeline.WAIT_LIMIT``), so that jobs still in RabbitMQ are compared with
them too.
"""

import asyncio
import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")
# (-priority, enqueued, arrival, when it began to wait, what waits, its future)
_Waiter = tuple[int, float, int, float, T | None, asyncio.Future[bool]]


class PrioritySlots(Generic[T]):
    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: list[_Waiter[T]] = []  # a heap
        self._arrivals = itertools.count()

    def try_acquire(self) -> bool:
        """Take a free slot if there is one, without waiting."""
        if self._free > 0:  # then no one waits: a released slot goes to a waiter first
            self._free -= 1
            return True
        return False

    async def acquire(self, priority: int, enqueued: float = 0.0, item: T | None = None) -> bool:
        """Wait for a slot: True once handed one, False if :meth:`turn_away` sent this waiter
        off. ``enqueued`` (a timestamp) orders waiters of one priority; ``item`` is what
        :meth:`turn_away` gives back for this waiter."""
        if self.try_acquire():
            return True
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        entry = (-priority, enqueued, next(self._arrivals), loop.time(), item, future)
        heapq.heappush(self._waiting, entry)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.result():
                self.release()  # handed a slot, then cancelled before taking it up
            elif entry in self._waiting:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def release(self) -> None:
        """Hand the slot to the first waiter still waiting, or free it."""
        while self._waiting:
            *_, future = heapq.heappop(self._waiting)
            if not future.done():  # a waiter cancelled this turn is skipped
                future.set_result(True)
                return
        self._free += 1

    def waiting_since(self) -> float | None:
        """When the longest waiter still waiting began to (the event loop's clock), if any."""
        return min((since for *_, since, _, f in self._waiting if not f.done()), default=None)

    def turn_away(self) -> list[T]:
        """Send every waiter off (their :meth:`acquire` returns False); their items, in the
        order they would have had slots."""
        waiting, self._waiting = sorted(self._waiting), []
        items = []
        for *_, item, future in waiting:
            if not future.done():
                future.set_result(False)
                if item is not None:
                    items.append(item)
        return items
