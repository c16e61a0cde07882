"""Collecting deliveries into batches: one database transaction for many events.

Each consumer callback adds its delivery and waits for the batch it joined to be written; a single
flusher writes whatever has gathered, so batches grow with the load and a lone event is written at
once (no lingering). A batch that fails for a reason that is not the whole batch's (an exception
not in ``shared_failures``: one event the database refuses) is written again one item at a time,
so one bad event does not fail the good ones beside it.
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
    ) -> None:
        self._flush = flush
        self._max_size = max_size
        self._shared_failures = shared_failures
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="results-batcher")

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
            self._wake.clear()
            while self._pending:
                batch, self._pending = (
                    self._pending[: self._max_size],
                    self._pending[self._max_size :],
                )
                await self._write(batch)

    async def _write(self, batch: Sequence[tuple[T, "asyncio.Future[None]"]]) -> None:
        try:
            await self._flush([item for item, _ in batch])
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
