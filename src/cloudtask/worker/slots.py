"""The worker's ``WORKER_CONCURRENCY`` slots, given to waiting jobs highest priority first.

The worker holds more deliveries than it runs (the prefetch, and long jobs acknowledge their
delivery once announced), so when every slot is busy, deliveries wait here. RabbitMQ delivered
them in priority order, but only among the messages queued at that moment: a job of priority 9
submitted after the low ones already held would wait behind them in a first-come semaphore.
Here a freed slot goes to the waiting job of the highest priority, the earliest of those first;
and a delivery that waits too long is given back to the queue (``pipeline.WAIT_LIMIT``), so that
jobs still in RabbitMQ are compared with it too.
"""

import asyncio
import heapq
import itertools


class PrioritySlots:
    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._arrivals = itertools.count()

    def try_acquire(self) -> bool:
        """Take a free slot if there is one, without waiting."""
        if self._free > 0:  # then no one waits: a released slot goes to a waiter first
            self._free -= 1
            return True
        return False

    async def acquire(self, priority: int) -> None:
        if self.try_acquire():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (-priority, next(self._arrivals), future)
        heapq.heappush(self._waiting, entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot, then cancelled before taking it up
            elif entry in self._waiting:  # waiters give up often (pipeline.WAIT_LIMIT)
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            raise

    def release(self) -> None:
        """Hand the slot to the first waiter still waiting, or free it."""
        while self._waiting:
            *_, future = heapq.heappop(self._waiting)
            if not future.done():  # a waiter cancelled this turn is skipped
                future.set_result(None)
                return
        self._free += 1
