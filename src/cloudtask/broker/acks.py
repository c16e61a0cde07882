"""Coalescing a RabbitMQ consumer's acknowledgements into fewer frames."""

import asyncio

from aiormq.abc import AbstractChannel


class Acks:
    """The acknowledgements of one consumer channel, coalesced.

    Acks asked for in the same turn of the event loop go out together: one ``basic.ack`` with
    ``multiple`` for the longest run of them that leaves no other delivery of the channel
    unsettled below it (``multiple`` would settle that one too), one frame each for the rest. The
    results-processor acknowledges a whole written batch at once: one frame instead of hundreds,
    for it and for RabbitMQ.

    A channel numbers its deliveries 1, 2, 3, …, but each reaches its consumer in a task of its
    own, so a delivery may have arrived and not been counted yet: ``multiple`` only ever covers
    tags below the first one not seen.
    """

    def __init__(self, channel: AbstractChannel) -> None:
        self.channel = channel
        self._unsettled: set[int] = set()
        self._next_unseen = 1
        self._seen_ahead: set[int] = set()
        self._wanted: dict[int, asyncio.Future[None]] = {}
        self._flushing = False
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(self, tag: int) -> None:
        self._unsettled.add(tag)
        if tag != self._next_unseen:
            self._seen_ahead.add(tag)
            return
        self._next_unseen += 1
        while self._next_unseen in self._seen_ahead:
            self._seen_ahead.remove(self._next_unseen)
            self._next_unseen += 1

    def settled(self, tag: int) -> None:
        """A delivery rejected on its own."""
        self._unsettled.discard(tag)

    async def ack(self, tag: int) -> None:
        if tag not in self._unsettled:
            await self.channel.basic_ack(tag)  # not one this consumer counted: on its own
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._wanted[tag] = done
        if not self._flushing:
            self._flushing = True
            task = asyncio.get_running_loop().create_task(self._flush_while_wanted())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await done

    async def _flush_while_wanted(self) -> None:
        # A task: it first runs after the callbacks already queued in this turn, so every ack
        # they ask for joins the first flush. Flushes run one after another: a tag taken by one
        # must be on the wire before a later ``multiple`` can reach past it.
        try:
            while self._wanted:
                await self._flush()
        finally:
            self._flushing = False

    async def _flush(self) -> None:
        wanted, self._wanted = self._wanted, {}
        tags = sorted(wanted)
        limit = min((t for t in self._unsettled if t not in wanted), default=self._next_unseen)
        limit = min(limit, self._next_unseen)
        covered = [t for t in tags if t < limit]
        self._unsettled.difference_update(tags)
        try:
            if covered:
                await self.channel.basic_ack(covered[-1], multiple=len(covered) > 1)
                for tag in covered:  # sent: whatever happens to the frames after it
                    _settle(wanted[tag])
            for tag in tags[len(covered) :]:
                await self.channel.basic_ack(tag)
                _settle(wanted[tag])
        except BaseException as exc:
            for done in wanted.values():
                if not done.done():
                    done.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for done in wanted.values():
            _settle(done)


def _settle(done: "asyncio.Future[None]") -> None:
    if not done.done():
        done.set_result(None)
