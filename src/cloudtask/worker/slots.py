"""The worker's ``WORKER_CONCURRENCY`` slots, given to waiting jobs highest priority first.

The worker holds more deliveries than it runs (the prefetch, and long jobs acknowledge their
delivery once announced), so when every slot is busy, deliveries wait here. RabbitMQ delivered
them in priority order, but only among the messages queued at that moment: a job of priority 9
submitted after the low ones already held would wait behind them in a first-come semaphore.
Here a freed slot goes to the waiting job of the highest priority, the earliest of those first.
"""

import asyncio
import heapq
import itertools
from types import TracebackType


class PrioritySlots:
    def __init__(self, size: int) -> None:
        self._free = size
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []  # a heap
        self._arrivals = itertools.count()

    def held(self, priority: int) -> "_Held":
        """A slot for as long as the ``async with`` block runs."""
        return _Held(self, priority)

    async def acquire(self, priority: int) -> None:
        if self._free > 0:  # then no one waits: a released slot goes to a waiter first
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (-priority, next(self._arrivals), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot, then cancelled before taking it up
            raise

    def release(self) -> None:
        """Hand the slot to the first waiter still waiting, or free it."""
        while self._waiting:
            *_, future = heapq.heappop(self._waiting)
            if not future.done():  # a cancelled waiter's future is done: skipped
                future.set_result(None)
                return
        self._free += 1


class _Held:
    # A class rather than contextlib.asynccontextmanager: every job enters one.
    __slots__ = ("_priority", "_slots")

    def __init__(self, slots: PrioritySlots, priority: int) -> None:
        self._slots = slots
        self._priority = priority

    async def __aenter__(self) -> None:
        await self._slots.acquire(self._priority)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._slots.release()
