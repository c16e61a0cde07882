"""Attempts run side by side, or one alone.

A worker that dies takes every attempt it held with it, and each is delivered again: the job
that killed it and the ones that merely ran beside it look the same. An attempt delivered again
after it was already lost once runs alone in its worker (no other attempt runs meanwhile, and
those before it have reported: the pipeline leaves the gate then), so that if it kills its
worker again, no other job is counted with it (``pipeline``).
"""

import asyncio


class RunGate:
    def __init__(self) -> None:
        self._running = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._open = asyncio.Event()  # cleared while an attempt runs alone or waits to
        self._open.set()
        self._alone = asyncio.Lock()  # one such attempt at a time

    def try_enter(self) -> bool:
        """Enter beside the others without waiting, unless an attempt runs or waits to run alone."""
        if not self._open.is_set():
            return False
        self._enter()
        return True

    async def enter(self, *, alone: bool = False) -> None:
        """Enter beside the others once no attempt runs alone; or, ``alone``, once none runs."""
        if not alone:
            while not self._open.is_set():
                await self._open.wait()
            self._enter()
            return
        await self._alone.acquire()
        self._open.clear()
        try:
            await self._idle.wait()
        except BaseException:
            self._reopen()
            raise
        self._enter()

    def leave(self, *, alone: bool = False) -> None:
        self._running -= 1
        if self._running == 0:
            self._idle.set()
        if alone:
            self._reopen()

    @property
    def running(self) -> int:
        return self._running

    def _enter(self) -> None:
        self._running += 1
        self._idle.clear()

    def _reopen(self) -> None:
        self._open.set()
        self._alone.release()
