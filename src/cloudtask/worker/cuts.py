"""Attempts whose delivery went with its connection (a network cut, a broker restart).

RabbitMQ hands such an attempt out again, redelivered, while the worker that lost the delivery
may still be running it. That worker says so in the attempt's lease (``HELD_CUT``, and
``HELD_ANNOUNCED`` once its jobs.started is confirmed: ``leases.hold_after_cut``) and leaves a
reported mark once it has reported; the worker that gets the redelivery waits for one or the
other rather than run the attempt a second time (``Cuts.held_elsewhere``).
"""

import asyncio
import collections
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from cloudtask.broker.base import Delivery
from cloudtask.contracts.messages import JobCreated
from cloudtask.contracts.signals import (
    HELD_ANNOUNCED,
    HELD_CUT,
    REPORTED_MARK_TTL,
    REQUEUED,
    lease_key,
    reported_key,
)
from cloudtask.errors import KVUnavailable
from cloudtask.kv.base import KV
from cloudtask.worker import reporting
from cloudtask.worker.leases import RunningAttempts

log = logging.getLogger(__name__)
# A redelivery finding an attempt's lease held, by a worker that has not said it lost the
# delivery (``HELD_CUT``), looks again for this long before it takes the lease and runs: its
# holder may be dead (its lease not yet expired), or alive and writing the mark that moment.
HOLDER_GRACE = 0.25
# How often a redelivery waiting for a live holder's report looks at the lease again.
HELD_POLL = 0.25
# How long after its ack an attempt is marked reported if the connection goes (``acked``):
# the ack and the news of the cut cross within milliseconds.
ACKED_RECENTLY = 1.0


class HeldAttempt(Protocol):
    cut: bool  # its delivery's channel closed while this worker held it
    confirmed: bool  # its jobs.started was confirmed: the job is RUNNING
    acknowledged: bool  # as far as this worker knows: the connection may have gone


class Cuts:
    """The attempts a worker is running or reporting, with their deliveries, and the marks it
    leaves in the key-value store when their connection goes."""

    def __init__(self, running: RunningAttempts, kv: KV, stopping: asyncio.Event) -> None:
        self._running = running
        self._kv = kv
        self._stopping = stopping
        # The attempts running or reporting here, by id, with their deliveries (``lost``).
        self.held: dict[int, tuple[Delivery, HeldAttempt, JobCreated]] = {}
        # The reported marks of attempts acknowledged in the last ``ACKED_RECENTLY`` seconds,
        # with when: an ack sent just before the connection went may never have reached
        # RabbitMQ. (Keys, not deliveries: under load a second holds thousands.)
        self._acked: collections.deque[tuple[float, str]] = collections.deque()
        self._marking: set[asyncio.Task[None]] = set()

    def hold(self, delivery: Delivery, attempt: HeldAttempt, job: JobCreated) -> None:
        self.held[id(attempt)] = (delivery, attempt, job)

    def release(self, attempt: HeldAttempt) -> None:
        self.held.pop(id(attempt), None)

    def connection_lost(self) -> None:
        """The channel deliveries came on closed (the connection went): RabbitMQ hands the
        attempts running or reporting here out again, redelivered. Their leases say that this
        worker, alive, still holds them (``leases.hold_after_cut``), so that a redelivery waits
        for the report rather than run the attempt a second time (``held_elsewhere``)."""
        for delivery, attempt, job in self.held.values():
            if attempt.cut or not delivery.lost:
                continue
            attempt.cut = True
            # Announced once jobs.started is confirmed, whether or not its ack went out then.
            self.mark_held(job, announced=attempt.confirmed or attempt.acknowledged)
        # Done here, their acks sent just before: the redelivery of one whose ack was lost
        # finds its lease saying nothing, and waits HOLDER_GRACE; these marks come first.
        # (Acks on an earlier channel within the span are marked too: no redelivery reads them.)
        since = asyncio.get_running_loop().time() - ACKED_RECENTLY
        reported = {key: b"1" for acked_at, key in self._acked if acked_at >= since}
        self._acked.clear()
        if reported:
            self._in_background(self._mark_reported(reported))

    def mark_held(self, job: JobCreated, *, announced: bool) -> None:
        """Say in the attempt's lease that this worker still holds it, its delivery lost."""
        self._in_background(
            self._running.hold_after_cut(job.job_id, job.attempt, announced=announced)
        )

    def acked(self, job: JobCreated) -> None:
        """The attempt was reported and its delivery acknowledged, just now."""
        now = asyncio.get_running_loop().time()
        while self._acked and self._acked[0][0] < now - ACKED_RECENTLY:
            self._acked.popleft()
        self._acked.append((now, reported_key(job.job_id, job.attempt)))

    async def reported_unacknowledged(self, job: JobCreated) -> None:
        """The attempt was reported, but its delivery's ack may not have reached RabbitMQ: the
        worker that gets the redelivery skips it on this mark. Written before the lease goes,
        which holds back copies (first deliveries) till then, and which a redelivery waits on
        while it says HELD_CUT."""
        with contextlib.suppress(KVUnavailable):
            await self._kv.set(reported_key(job.job_id, job.attempt), b"1", ttl=REPORTED_MARK_TTL)

    async def held_elsewhere(self, delivery: Delivery, job: JobCreated) -> bool:
        """For a redelivered attempt: whether it needs no run here, because the worker that lost
        its delivery reported it (``reported_key``) or announced it (the scheduler watches it
        from then on). While that worker says it still runs the attempt (``HELD_CUT``), wait
        for one or the other; if its lease goes (the worker died), run. A lease whose holder
        says nothing is looked at for ``HOLDER_GRACE``, then taken over; so is one that says
        it runs the attempt for longer than the attempt may run and report (a lease left
        behind). Stopping, this delivery lost too, or with the store unreachable, the delivery
        goes on its way (at least once)."""
        keys = [reported_key(job.job_id, job.attempt), lease_key(job.job_id, job.attempt)]
        loop = asyncio.get_running_loop()
        grace_ends = loop.time() + HOLDER_GRACE
        held_ends = (
            loop.time()
            + job.timeout_seconds
            + reporting.PUBLISH_LIMIT
            + self._running.lease_seconds
        )
        while not self._stopping.is_set() and not delivery.lost and loop.time() < held_ends:
            try:
                reported, lease = await self._kv.get_many(keys)
            except KVUnavailable:
                return False
            if reported is not None or (lease is not None and lease.endswith(HELD_ANNOUNCED)):
                return True
            if lease is not None and lease.endswith(HELD_CUT):
                await asyncio.sleep(HELD_POLL)
            elif lease is None or lease == REQUEUED or loop.time() >= grace_ends:
                return False
            else:
                await asyncio.sleep(HOLDER_GRACE / 5)
        return False

    async def _mark_reported(self, marks: dict[str, bytes]) -> None:
        try:
            await self._kv.set_many(marks, ttl=REPORTED_MARK_TTL)
        except KVUnavailable as exc:
            log.warning("could not mark attempts reported: %s", exc)

    def _in_background(self, mark: Coroutine[Any, Any, None]) -> None:
        """Write ``mark`` without waiting for it (from a callback, or beside the run), keeping
        its task until it ends."""
        task = asyncio.create_task(mark)
        self._marking.add(task)
        task.add_done_callback(self._marking.discard)
