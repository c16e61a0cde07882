"""Collecting concurrent work into batches: one database write for many items.

Each caller (a consumer callback with its event, a request with its job) adds its item and waits
for the batch it joined to be written; a single flusher writes whatever has gathered, so batches
grow with the load and a lone item is written at once. With ``linger``, a flusher that finds
items arriving together (more than one waiting, or its last batch held more than one) waits that
long for more before it writes: under load, fewer and larger writes, each with its fixed cost
(a statement, a round trip, the acknowledgements after it); at a trickle, no wait.

A batch that fails for a reason that is not the whole batch's (an exception not in
``shared_failures``: one item the database refuses) is written again one item at a time, so one
bad item does not fail the good ones beside it.
"""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self,
        flush: Callable[[Sequence[T]], Awaitable[None]],
        *,
        max_size: int = 500,
        shared_failures: tuple[type[Exception], ...] = (),
        name: str = "batcher",
        linger: float = 0,
    ) -> None:
        self._linger = linger
        self._last_size = 0
        self._name = name
        self._flush = flush
        self._max_size = max_size
        self._shared_failures = shared_failures
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.writes = 0
        """Flushes so far, retries of single items included."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self._name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, waiter in self._pending:
            waiter.cancel()

    async def add(self, item: T) -> None:
        """Queue ``item`` and return once its batch was flushed (or raise what flushing raised)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, waiter))
        self._wake.set()
        await waiter

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._linger and self._together() and len(self._pending) < self._max_size:
                await asyncio.sleep(self._linger)
            self._wake.clear()
            while self._pending:
                batch, self._pending = (
                    self._pending[: self._max_size],
                    self._pending[self._max_size :],
                )
                await self._write(batch)

    def _together(self) -> bool:
        return len(self._pending) > 1 or self._last_size > 1

    async def _write(self, batch: Sequence[tuple[T, "asyncio.Future[None]"]]) -> None:
        self.writes += 1
        self._last_size = len(batch)
        try:
            await self._flush([item for item, _ in batch])
        except asyncio.CancelledError:
            # Stopped mid-write: its waiters must not wait for an answer that will never come.
            for _, waiter in batch:
                waiter.cancel()
            raise
        except self._shared_failures as exc:
            _settle(batch, exc)
        except Exception as exc:  # handed to the waiters, which decide what to do
            if len(batch) == 1:
                _settle(batch, exc)
                return
            for entry in batch:
                await self._write([entry])
        else:
            _settle(batch, None)


def _settle(batch: Sequence[tuple[T, "asyncio.Future[None]"]], exc: Exception | None) -> None:
    for _, waiter in batch:
        if waiter.done():
            continue
        if exc is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(exc)
