"""Leases on running attempts, renewed by a heartbeat, and the cancel signals from the API.

Once the worker has acknowledged a running attempt's delivery (see ``pipeline``), the broker no
longer watches it; instead the worker holds a lease per running attempt in the key-value store and
renews them all in one round trip every third of their TTL. The scheduler treats a RUNNING job
without a lease as abandoned by a dead worker and hands it out again. Leases taken together
(deliveries arrive in bursts, up to the prefetch) are written, and their cancel flags and lost
marks (``signals.lost_key``) read, in one round trip as well; the jobs then go on in step, and
their reports share socket writes too.

A cancel signal can arrive after the lease is taken but before the handler is started; it is kept
and applied when the handler is tracked, so a job cancelled in that moment still never runs.

A first delivery of an attempt *claims* its lease: one held by a worker (this one or another,
running the attempt or done with it for less than the TTL) means the message is a copy (the
outbox relay published it again, say) and the attempt is not run twice. The worker holding the
lease holds the original delivery, or has reported the attempt, or the scheduler hands it out
again once the lease expires, so the copy can be dropped. Each take writes a value of its own,
so that a claim is never refused by its own write (the call sent again after a dropped
connection); the heartbeat leaves a claim on its way alone. A redelivery
(its worker died before acknowledging it, or lost the connection, or it went back to the queue)
that the pipeline lets run (see ``cuts`` and ``hold_after_cut``), an attempt
put back on the queue (``REQUEUED``, the marker a claim may replace) and one the scheduler marked
lost take the lease whoever held it. The lost mark is taken once: the first delivery of the
hand-out to take the lease writes its own value over the scheduler's mark, in the same way as a
claim, and a later one (a copy of the hand-out) finds the mark taken and is a copy.
"""

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cloudtask.batching import Batcher
from cloudtask.contracts.signals import (
    CANCEL_CHANNEL,
    HELD_ANNOUNCED,
    HELD_CUT,
    LOST,
    LOST_MARK_TTL,
    REQUEUED,
    cancel_key,
    lease_key,
    lost_key,
)
from cloudtask.errors import KVUnavailable
from cloudtask.kv.base import KV, Subscription

log = logging.getLogger(__name__)
# Under load, the leases of jobs delivered within 2 ms of each other are taken in one Redis round
# trip; a job delivered alone takes its lease at once (see Batcher).
TAKE_LINGER = 0.002


@dataclass
class _Take:
    lease: str
    cancel: str
    lost: str
    claim: bool
    token: bytes  # the lease's value: this worker's id and a number of this take's own
    holder: bytes | None = None
    cancel_flag: bytes | None = None
    lost_mark: bytes | None = None


@dataclass(frozen=True)
class Taken:
    """What the store said as the lease was taken."""

    cancelled: bool = False  # the job's cancellation was requested
    lost_before: bool = False  # the scheduler handed this attempt out again (``lost_key``)
    copy: bool = False  # a claim found the lease held: another delivery has the attempt


class RunningAttempts:
    """The attempts this worker runs now: their leases and the tasks to cancel."""

    def __init__(self, kv: KV, worker_id: str, lease_seconds: float) -> None:
        self._kv = kv
        self._worker_id = worker_id.encode()
        self.lease_seconds = lease_seconds
        # Lease key -> the job, and the value its take wrote: a value of each take's own, so
        # that a claim tells its own write (the call sent again after a dropped connection)
        # from another delivery's.
        self._leases: dict[str, tuple[UUID, bytes]] = {}
        # Leases whose claim is on its way: the heartbeat does not write them, or it could take
        # over another worker's lease just before the claim reads it.
        self._claiming: set[str] = set()
        self._numbers = itertools.count(1)
        # Each handler running, by its future: one job may have two (a run that ignored its
        # timeout, still going, and the next attempt).
        self._runs: dict[asyncio.Future[Any], tuple[UUID, int]] = {}
        self._cancel_before_start: set[UUID] = set()
        # Runs a cancel reached while they ran: an async handler may catch the cancellation and
        # return all the same; it stopped when asked, and its attempt ends cancelled.
        self._stopped: set[asyncio.Future[Any]] = set()
        self._subscription: Subscription | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        # Held while the heartbeat writes: a marker left over a lease waits for the write on
        # its way, which, read before the lease was dropped, could land over the marker.
        self._renewing = asyncio.Lock()
        self._takes = Batcher(
            self._take_many, shared_failures=(KVUnavailable,), name="leases", linger=TAKE_LINGER
        )

    async def start(self) -> None:
        self._takes.start()
        self._subscription = await self._kv.subscribe(CANCEL_CHANNEL, self._on_cancel)
        self._heartbeat = asyncio.create_task(self._beat(), name="lease-heartbeat")

    async def stop(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        if self._subscription is not None:
            await self._subscription.close()
        await self._takes.stop()

    async def take(self, job_id: UUID, attempt: int, *, claim: bool) -> Taken:
        """Lease the attempt; returns whether the job's cancellation was requested and whether
        the attempt was lost with a worker before, or, for a ``claim``, that the lease was held
        (the delivery is a copy; nothing was taken). If the store is unreachable the job runs
        anyway: the heartbeat writes the lease once the store is back (and the scheduler does
        not judge leases until then)."""
        key = lease_key(job_id, attempt)
        if claim and key in self._leases and not await self._handed_out_again(job_id, attempt):
            return Taken(copy=True)  # running here: a copy, unless handed out again meanwhile
        token = self._worker_id + b"/%d" % next(self._numbers)
        take = _Take(key, cancel_key(job_id), lost_key(job_id, attempt), claim, token)
        before = self._leases.get(key)  # a run of this attempt here, which a copy leaves alone
        self._leases[key] = (job_id, token)
        if claim:
            self._claiming.add(key)
        first = take
        try:
            await self._takes.add(take)
            if claim and take.lost_mark is not None:
                if not await self._take_lost_mark(take):
                    take.holder = take.lost_mark  # a copy of the hand-out took it up first
                elif take.holder is not None:
                    # Its lease since renewed by a worker that had stalled: taken whoever
                    # holds it, as before claims (both may run it).
                    take = _Take(key, take.cancel, take.lost, False, token)
                    await self._takes.add(take)
        except KVUnavailable as exc:
            log.warning(
                "running without a lease: %s", exc, extra={"jobId": str(job_id), "attempt": attempt}
            )
            # What the first step read still holds: a cancel flag, a lost mark.
            return Taken(first.cancel_flag is not None, first.lost_mark is not None)
        finally:
            self._claiming.discard(key)
        if take.holder is not None:
            if self._leases.get(key) == (job_id, token):  # not taken by a redelivery here
                if before is not None:
                    self._leases[key] = before
                else:
                    del self._leases[key]
                if not self._leases_job(job_id):  # a cancel heard meanwhile is not kept
                    self._cancel_before_start.discard(job_id)
            return Taken(copy=True)
        return Taken(take.cancel_flag is not None, take.lost_mark is not None)

    async def _take_lost_mark(self, take: _Take) -> bool:
        """Write this take's value over the scheduler's lost mark; whether it was still the
        scheduler's (or this take's already). If the store cannot say, it is taken to be, so
        that the delivery runs rather than being dropped (at least once)."""
        try:
            return await self._kv.claim(take.lost, take.token, ttl=LOST_MARK_TTL, free=LOST) is None
        except KVUnavailable:
            return True

    async def _handed_out_again(self, job_id: UUID, attempt: int) -> bool:
        """Whether the scheduler handed out again an attempt this worker still runs (its lease
        lapsed while the worker stalled), and no delivery took the hand-out up yet (the mark is
        still the scheduler's); if the store cannot say, it is taken to be, so that the delivery
        runs rather than being dropped (at least once)."""
        try:
            return await self._kv.get(lost_key(job_id, attempt)) == LOST
        except KVUnavailable:
            return True

    async def _take_many(self, takes: Sequence[_Take]) -> None:
        claims = [take for take in takes if take.claim]
        holders, values = await self._kv.claim_many_and_get(
            {take.lease: take.token for take in claims},
            ttl=self.lease_seconds,
            free=REQUEUED,
            forced={take.lease: take.token for take in takes if not take.claim},
            get_keys=[key for take in takes for key in (take.cancel, take.lost)],
        )
        for take, holder in zip(claims, holders, strict=True):
            take.holder = holder
        for take, cancel_flag, lost_mark in zip(takes, values[::2], values[1::2], strict=True):
            take.cancel_flag, take.lost_mark = cancel_flag, lost_mark

    async def drop(self, job_id: UUID, attempt: int, *, marker: bytes | None = None) -> None:
        """Stop renewing the lease (it expires by itself: a finished job needs none), or leave
        ``marker`` in it (a requeued attempt)."""
        key = lease_key(job_id, attempt)
        _, token = self._leases.pop(key, (job_id, None))
        self._cancel_before_start.discard(job_id)
        if marker is not None:
            # Only over this worker's own lease (the copy put back may have been taken already,
            # and the worker running it holds the lease now), and after a renewal already on its
            # way, which may hold the lease's old value; none after it does. Not under the lock:
            # a stopping worker leaves many markers at once.
            async with self._renewing:
                pass
            with contextlib.suppress(KVUnavailable):
                await self._kv.claim(key, marker, ttl=24 * 3600, free=token or marker)

    async def hold_after_cut(self, job_id: UUID, attempt: int, *, announced: bool) -> None:
        """Say in the lease that this worker, alive, still holds an attempt whose delivery was
        lost with its channel (``HELD_CUT``, or ``HELD_ANNOUNCED`` once ``jobs.started`` is
        confirmed): the redelivery waits for its report, or is a copy. Renewals keep saying so."""
        key = lease_key(job_id, attempt)
        async with self._renewing:  # not overwritten by a renewal of the old value on its way
            held = self._leases.get(key)
            if held is None:
                return
            token = held[1]
            marked = token.split(b"#", 1)[0] + (HELD_ANNOUNCED if announced else HELD_CUT)
            if marked == token:
                return
            self._leases[key] = (job_id, marked)
            try:
                await self._kv.claim(key, marked, ttl=self.lease_seconds, free=token)
            except KVUnavailable as exc:
                log.warning("could not mark a lease held: %s", exc, extra={"jobId": str(job_id)})

    def track(self, job_id: UUID, attempt: int, run: "asyncio.Future[Any]") -> None:
        self._runs[run] = (job_id, attempt)
        if job_id in self._cancel_before_start:
            run.cancel()

    def runs(self) -> list[tuple[UUID, int, "asyncio.Future[Any]"]]:
        return [(job_id, attempt, run) for run, (job_id, attempt) in self._runs.items()]

    def untrack(self, run: "asyncio.Future[Any]") -> None:
        self._runs.pop(run, None)
        self._stopped.discard(run)

    def stopped(self, run: "asyncio.Future[Any]") -> bool:
        """Whether a cancel of its job stopped ``run`` (see ``_on_cancel``); ask before
        ``untrack``."""
        return run in self._stopped

    def __len__(self) -> int:
        return len(self._leases)

    def _leases_job(self, job_id: UUID) -> bool:
        """Whether this worker holds a lease of ``job_id``'s."""
        return any(leased == job_id for leased, _ in self._leases.values())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if not self._leases:
                continue
            async with self._renewing:
                items = {k: v for k, (_, v) in self._leases.items() if k not in self._claiming}
                try:
                    await self._kv.set_many(items, ttl=self.lease_seconds)
                except KVUnavailable as exc:
                    log.warning("could not renew leases: %s", exc)

    def _on_cancel(self, message: bytes) -> None:
        try:
            job_id = UUID(message.decode())
        except ValueError:
            return
        runs = [(run, attempt) for run, (job, attempt) in self._runs.items() if job == job_id]
        if not runs and self._leases_job(job_id):
            self._cancel_before_start.add(job_id)  # leased, its handler not started yet
        for run, attempt in runs:
            if run.done():
                continue
            log.info(
                "cancelling a running job",
                extra={"action": "job.cancel", "jobId": str(job_id), "attempt": attempt},
            )
            if run.cancel():
                self._stopped.add(run)
