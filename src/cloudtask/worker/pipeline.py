"""What the worker does with one delivery of ``jobs.created``: decode → run → report.

1. Decode. A message that cannot be parsed goes to ``jobs.dead`` with the reason.
2. Run, in one of the worker's ``WORKER_CONCURRENCY`` slots, held until the handler ends (not
   while the report waits for its confirm) and given to waiting deliveries highest priority
   first, earliest enqueued first within one; when one has waited ``WAIT_LIMIT``, all that wait
   go back to the queue, in that order, to be compared with the jobs queued since. An attempt
   given a slot ``max_deliveries`` times (it keeps killing its worker) is failed and
   dead-lettered; one counted before, or marked lost by the scheduler (read with its lease),
   runs alone (``gate``), so that the jobs beside it are not counted with it. The worker takes
   a lease on the attempt; a job cancelled while it waited is skipped, and so is a copy of the
   message whose attempt another delivery holds (``leases``).
   Otherwise the handler starts, under the job's timeout. A handler still running after
   ``ANNOUNCE_AFTER`` makes the worker publish ``jobs.started`` (confirmed) and only then
   acknowledge the delivery, so the broker's delivery timeout (30 minutes by default) never cuts
   short a job allowed an hour; from there the lease, renewed by heartbeats and watched by the
   scheduler, stands for the delivery.
3. Report. ``jobs.completed`` is published (confirmed, retried while the broker is away), then
   the delivery is acknowledged if it still is not, and the lease is given up. If the connection
   went before the acknowledgement, the worker says in the lease that it still holds the
   attempt, then leaves a reported mark: the worker that gets the redelivery waits for the one
   and does not run the attempt again (``cuts``). A job that ended
   before ``ANNOUNCE_AFTER`` is reported by this one message, which carries its ``startedAt``:
   most jobs are short, and each saves a publish, a persistent message in RabbitMQ and an event
   for the results-processor to read. Until then the delivery is unacknowledged, so a worker
   that dies has it redelivered, as with any job not yet started.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from cloudtask.broker import dead_letters
from cloudtask.broker.base import Broker, Delivery
from cloudtask.broker.grouping import GroupedPublisher
from cloudtask.contracts.messages import JobCreated, JobFinished, JobStarted
from cloudtask.contracts.queues import (
    JOBS_COMPLETED,
    JOBS_CREATED,
    JOBS_STARTED,
    REQUEUED_HEADER,
)
from cloudtask.contracts.signals import (
    HELD_ANNOUNCED,
    REQUEUED,
    handler_key,
)
from cloudtask.contracts.timefmt import utcnow
from cloudtask.errors import BrokerUnavailable, KVUnavailable
from cloudtask.kv.base import KV
from cloudtask.observability.metrics import WorkerMetrics
from cloudtask.worker import execution, reporting
from cloudtask.worker.cuts import Cuts
from cloudtask.worker.execution import Outcome
from cloudtask.worker.gate import RunGate
from cloudtask.worker.leases import RunningAttempts
from cloudtask.worker.registry import HandlerRegistry
from cloudtask.worker.slots import PrioritySlots

log = logging.getLogger(__name__)
# Long enough for a short job to end first (an echo takes microseconds, a local mail a few
# milliseconds), short enough that RUNNING shows at once to someone watching a long one.
ANNOUNCE_AFTER = 0.05
# The deliveries waiting for a slot go back to the queue once the first has waited this long
# (see ``_wait_for_slot``): far longer than a busy worker's short jobs keep it waiting, so only a
# worker whose slots hold long jobs returns deliveries, about twice a second each.
WAIT_LIMIT = 0.5


@dataclass
class PipelineDeps:
    broker: Broker
    reports: GroupedPublisher  # jobs.started and jobs.completed, grouped across jobs
    kv: KV
    handlers: HandlerRegistry
    running: RunningAttempts
    executor: Executor
    metrics: WorkerMetrics
    worker_id: str
    max_deliveries: int


@dataclass
class _Turn:
    """How an attempt takes its turn at the gate: alone or not, and whether it holds it."""

    alone: bool
    inside: bool = False


@dataclass
class _Attempt:
    started_at: datetime
    outcome: Outcome = execution.CANCELLED  # until the handler's own outcome replaces it
    announced: bool = False  # jobs.started published and the delivery acknowledged
    acknowledged: bool = False  # as far as this worker knows: the connection may have gone
    copy: bool = False  # another delivery of the attempt holds its lease: not run, not reported
    cut: bool = False  # its delivery's channel closed while this worker held it
    confirmed: bool = False  # its jobs.started was confirmed: the job is RUNNING
    left: bool = False  # its delivery was lost before it started: the redelivery runs it


class Pipeline:
    def __init__(self, deps: PipelineDeps, slots: PrioritySlots[Delivery]) -> None:
        self.deps = deps
        self._slots = slots
        self._gate = RunGate()
        self.stopping = asyncio.Event()
        self._requeue: set[tuple[object, int]] = set()
        self._putting_back = False  # stopping, past the grace: no handler starts any more
        self._returning: asyncio.Task[None] | None = None
        self.cuts = Cuts(deps.running, deps.kv, self.stopping)

    async def __call__(self, delivery: Delivery) -> None:
        job = await self._decode(delivery)
        if job is None:
            return
        await self._process(delivery, job)

    def requeue_running(self) -> None:
        """Stop every running attempt and put it back on ``jobs.created`` (graceful shutdown), and
        those still on their way to their handler too."""
        self._putting_back = True
        for job_id, attempt, run in self.deps.running.runs():
            # One done already is reported as it ended, not run again; so is a sync handler that
            # had returned, its result on its way to the loop (see ``_run``).
            if run.cancel():
                self._requeue.add((job_id, attempt))

    async def _decode(self, delivery: Delivery) -> JobCreated | None:
        try:
            job = JobCreated.model_validate_json(delivery.body)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "body"
            if await self._dead_letter(delivery, f"unparseable message: {where}: {error['msg']}"):
                self.deps.metrics.dead_lettered.labels("unparseable").inc()
            return None
        return job

    async def _lost_before(self, job: JobCreated) -> bool:
        """Whether this attempt, delivered again, was counted by ``_delivered_too_often``
        before: it was lost with a worker at least twice. It then runs alone (``gate``), so
        that the count of a job that keeps killing its worker is not the count of the jobs that
        ran beside it too, and only it is failed."""
        try:
            counted = await self.deps.kv.get(_deliveries_key(job))
        except KVUnavailable:
            return False
        if counted is None:
            return False
        _log_alone(job)
        return True

    async def _go_alone(self, job: JobCreated, turn: "_Turn") -> bool:
        """Leave the attempts running side by side and wait to run alone (an attempt the
        scheduler handed out again, found so as its lease was taken). False if the worker began
        to stop meanwhile: the attempt is then put back on the queue, as a running one is."""
        _log_alone(job)
        self._gate.leave()
        turn.inside = False
        await self._gate.enter(alone=True)
        turn.inside = turn.alone = True
        if self.stopping.is_set():
            self._requeue.add((job.job_id, job.attempt))
            return False
        return True

    async def _delivered_too_often(self, delivery: Delivery, job: JobCreated) -> bool:
        """Whether this attempt was given a slot ``max_deliveries`` times without finishing.
        Counted once the delivery has a slot and may run, not as it arrives: a delivery that
        went back to the queue while it waited did not kill a worker, nor did one that waited
        while another ran alone; and nothing awaited between arrival and slot lets a later
        delivery overtake an earlier one to a free slot."""
        if not delivery.redelivered:
            return False
        try:
            counted = await self.deps.kv.incr(_deliveries_key(job), ttl=24 * 3600)
        except KVUnavailable:
            return False
        return counted >= self.deps.max_deliveries

    async def _give_up(self, delivery: Delivery, job: JobCreated) -> None:
        reason = f"delivered {self.deps.max_deliveries} times without finishing"
        if not await self._report(job, utcnow(), Outcome("failed", error=reason)):
            # Its only message: kept for later.
            await reporting.quietly(delivery.reject(requeue=True))
            return
        if await self._dead_letter(delivery, reason):
            self.deps.metrics.dead_lettered.labels("redelivered").inc()

    async def _process(self, delivery: Delivery, job: JobCreated) -> None:
        # A slot is held while the attempt runs, not while its report waits for the broker's
        # confirm: the next delivery starts meanwhile (the prefetch leaves room for both).
        if job.type not in self.deps.handlers and await self._handled_elsewhere(job.type):
            await asyncio.sleep(WAIT_LIMIT)  # not at once: the other workers may all be busy
            await self._leave_to_others(delivery, job)
            return
        if delivery.redelivered and await self.cuts.held_elsewhere(delivery, job):
            await self._skip_copy(delivery, job, "copy skipped: held by the worker that lost it")
            return
        if self._left_to_redelivery(delivery, job) or not await self._wait_for_slot(delivery, job):
            return
        # The gate is left once the attempt is reported, not when its handler ends (as the
        # slot is): an attempt waiting to run alone, which may kill the worker, waits for the
        # reports of those beside it too, or they would go down with it, finished, and be
        # counted once more.
        turn = _Turn(alone=False)
        try:
            try:
                turn.alone = delivery.redelivered and await self._lost_before(job)
                if turn.alone or not self._gate.try_enter():
                    await self._gate.enter(alone=turn.alone)
                turn.inside = True
                if self.stopping.is_set() or self._left_to_redelivery(delivery, job):
                    await reporting.quietly(delivery.reject(requeue=True))
                    return
                attempt = None
                if not await self._delivered_too_often(delivery, job):
                    attempt = await self._attempt(delivery, job, turn)
            finally:
                self._slots.release()
            await self._end(delivery, job, attempt)
        finally:
            if turn.inside:
                self._gate.leave(alone=turn.alone)

    async def _end(self, delivery: Delivery, job: JobCreated, attempt: "_Attempt | None") -> None:
        if attempt is None:
            await self._give_up(delivery, job)
        elif attempt.copy:  # the delivery holding the lease runs and reports
            await self._skip_copy(delivery, job, "copy skipped")
        elif not attempt.left:
            await self._conclude(delivery, job, attempt)

    def _left_to_redelivery(self, delivery: Delivery, job: JobCreated) -> bool:
        """Whether the delivery was lost with its channel before its attempt started here: the
        broker hands it out again, and that delivery runs it (a run here would be a second)."""
        if not delivery.lost:
            return False
        self.deps.metrics.given_back.labels("lost").inc()
        _log("delivery lost before its attempt started", job, self.deps.worker_id)
        return True

    async def _skip_copy(self, delivery: Delivery, job: JobCreated, message: str) -> None:
        await reporting.quietly(delivery.ack())
        self.deps.metrics.copies.inc()
        _log(message, job, self.deps.worker_id)

    async def _conclude(self, delivery: Delivery, job: JobCreated, attempt: "_Attempt") -> None:
        """Report the attempt (or put it back on the queue), then let its delivery and lease go."""
        try:
            await self._settle(delivery, job, attempt)
        finally:
            self.cuts.release(attempt)

    async def _settle(self, delivery: Delivery, job: JobCreated, attempt: "_Attempt") -> None:
        reported = False
        if (job.job_id, job.attempt) in self._requeue:
            # A delivery lost unacknowledged, of an attempt never announced, is on its way to
            # another worker already (its redelivery waits on this lease): a copy would run too.
            copy = not (delivery.lost and not attempt.acknowledged and not attempt.confirmed)
            # One announced, its lease saying so: the redelivery may have been dropped as a copy
            # already, or may come later; the marker tells a late one it is a copy of this one.
            marker = REQUEUED + HELD_ANNOUNCED if delivery.lost and attempt.confirmed else REQUEUED
            published = await self._put_back(job, publish=copy, marker=marker)
        else:
            published = reported = await self._report(job, attempt.started_at, attempt.outcome)
        if not attempt.announced:
            if published:
                attempt.acknowledged = await reporting.acknowledged(delivery)
            else:
                # The job is still PENDING, and nothing but this message will move it (the
                # scheduler recovers RUNNING jobs only): back to the queue, to run again.
                await reporting.quietly(delivery.reject(requeue=True))
        if reported and (not attempt.acknowledged or attempt.cut):
            # The connection went before the ack (or with it, which may not have arrived):
            # RabbitMQ delivers the attempt again.
            await self.cuts.reported_unacknowledged(job)
        elif reported:
            self.cuts.acked(job)
        await self.deps.running.drop(job.job_id, job.attempt)

    async def _wait_for_slot(self, delivery: Delivery, job: JobCreated) -> bool:
        """Take a slot; or return False when the delivery went back to ``jobs.created``. RabbitMQ
        orders by priority only the messages still queued: while this one waits here, a higher
        one submitted since may wait there, and another worker may be idle. So every delivery
        waiting here when the longest waiting has waited ``WAIT_LIMIT`` goes back to the queue,
        and is delivered again in order, to this worker or another."""
        if self._slots.try_acquire():  # most jobs: no timer to set and cancel
            return True
        if self._returning is None or self._returning.done():
            self._returning = asyncio.create_task(self._return_waiting())
        return await self._slots.acquire(job.priority, job.enqueued_at.timestamp(), delivery)

    async def _return_waiting(self) -> None:
        """While deliveries wait for a slot: once the longest waiting has waited ``WAIT_LIMIT``,
        send every one back to the queue."""
        loop = asyncio.get_running_loop()
        while (since := self._slots.waiting_since()) is not None:
            if (left := since + WAIT_LIMIT - loop.time()) > 0:
                await asyncio.sleep(left)
                continue
            # RabbitMQ puts rejected messages back ahead of the rest of their priority, in the
            # order they come (and hands one to a consumer with room at once): earliest first.
            for delivery in self._slots.turn_away():
                try:
                    await self._return_to_place(delivery)
                except Exception:  # the rest still go back; this one with its channel at worst
                    log.exception("could not return a waiting delivery to the queue")

    async def returns_done(self) -> None:
        """Wait until the deliveries being returned to the queue are (worker shutdown)."""
        if self._returning is not None:
            await asyncio.shield(self._returning)

    async def _return_to_place(self, delivery: Delivery) -> None:
        """Reject the delivery back into ``jobs.created``: RabbitMQ puts it ahead of the
        messages of its priority still queued (the in-memory broker in its place)."""
        await reporting.quietly(delivery.reject(requeue=True))  # a lost channel requeues it too
        self.deps.metrics.given_back.labels("waited").inc()

    async def _leave_to_others(self, delivery: Delivery, job: JobCreated) -> None:
        """Publish the message again at the back of the queue, for a worker with its type's
        handler, then acknowledge the delivery (so it is never lost); with the broker away,
        reject it back instead."""
        # A redelivery or a requeued attempt stays one: its lease may still hold the worker that
        # lost it, and a first delivery would take the copy for a duplicate.
        try:
            await self.deps.broker.publish(
                JOBS_CREATED,
                delivery.body,
                priority=job.priority,
                headers=None if _first(delivery) else {REQUEUED_HEADER: True},
            )
        except BrokerUnavailable:
            await reporting.quietly(delivery.reject(requeue=True))
            return
        # If the channel went, its copy returns to the queue too.
        await reporting.quietly(delivery.ack())
        self.deps.metrics.given_back.labels("handled_elsewhere").inc()

    async def _handled_elsewhere(self, job_type: str) -> bool:
        """Whether a running worker has a handler for ``job_type`` (see ``WorkerService``). If
        the store is unreachable, no one is known to: the job fails as of an unknown type."""
        try:
            return await self.deps.kv.get(handler_key(job_type)) is not None
        except KVUnavailable:
            return False

    async def _attempt(self, delivery: Delivery, job: JobCreated, turn: "_Turn") -> "_Attempt":
        deps = self.deps
        # The lease first: from then on a cancel signal is heard (and kept until the handler
        # starts), and one sent earlier has left the flag read next.
        taken = await deps.running.take(job.job_id, job.attempt, claim=_first(delivery))
        if taken.copy:
            return _Attempt(utcnow(), copy=True)
        if taken.cancelled:
            return _Attempt(utcnow(), execution.CANCELLED)
        if taken.lost_before and not turn.alone and not await self._go_alone(job, turn):
            return _Attempt(utcnow(), execution.CANCELLED)
        if self._left_to_redelivery(delivery, job):  # while the lease was taken
            # Its lease, no longer renewed, says nothing: the redelivery takes it over.
            await deps.running.drop(job.job_id, job.attempt)
            return _Attempt(utcnow(), left=True)
        attempt = _Attempt(utcnow())
        self.cuts.hold(delivery, attempt, job)
        _log("job started", job, deps.worker_id)

        async def announce() -> None:
            started = JobStarted(
                job_id=job.job_id,
                attempt=job.attempt,
                worker_id=deps.worker_id,
                started_at=attempt.started_at,
            )
            try:
                await deps.reports.publish(JOBS_STARTED, started.encode())
            except BrokerUnavailable:
                # The delivery goes back to the queue with its channel, and a copy may run
                # elsewhere (at least once); this one still runs to its end and reports.
                log.warning("could not announce a started job", extra={"jobId": str(job.job_id)})
            else:
                attempt.confirmed = True
                attempt.acknowledged = await reporting.acknowledged(delivery)
                if attempt.cut:  # RUNNING, watched by the scheduler: the redelivery is a copy
                    self.cuts.mark_held(job, announced=True)
            attempt.announced = True

        attempt.outcome = await self._run(job, announce)
        return attempt

    async def _run(self, job: JobCreated, announce: Callable[[], Awaitable[None]]) -> Outcome:
        deps = self.deps
        handler = deps.handlers.get(job.type)
        label = deps.metrics.job_type(job.type)
        if handler is None:
            return execution.unknown_type(job.type)
        if self._putting_back:  # it would be cut off as the worker exits, and counted lost
            self._requeue.add((job.job_id, job.attempt))
            return execution.CANCELLED
        deps.metrics.jobs_started.labels(label).inc()
        deps.metrics.in_flight.inc()
        begun = time.perf_counter()
        run = execution.start(handler, job.payload, deps.executor)
        deps.running.track(job.job_id, job.attempt, run.future)
        try:
            if not await execution.settled_within(run.future, ANNOUNCE_AFTER):
                await announce()
            outcome = await execution.finish(run, job.timeout_seconds, since=begun)
            if outcome.completed and run.thread_call is None and deps.running.stopped(run.future):
                # An async handler that caught the cancellation and returned: it stopped when
                # its job was cancelled, which ends CANCELLED, not COMPLETED with what it
                # returned. (A sync one cannot be stopped; one that returned first stands.)
                outcome = execution.CANCELLED
            if run.future.cancelled() and outcome.kind != "cancelled":
                # A sync handler that returned as its run was put back: reported, not run again.
                self._requeue.discard((job.job_id, job.attempt))
        finally:
            deps.running.untrack(run.future)
            deps.metrics.in_flight.dec()
            deps.metrics.job_duration.labels(label).observe(time.perf_counter() - begun)
        if run.still_running:
            deps.metrics.abandoned.inc()
        return outcome

    async def _report(self, job: JobCreated, started_at: datetime, outcome: Outcome) -> bool:
        """Publish the attempt's end; whether the broker took it (``reporting.until_published``)."""
        finished = JobFinished(
            job_id=job.job_id,
            attempt=job.attempt,
            status="COMPLETED" if outcome.completed else "FAILED",
            result=outcome.result,
            error=outcome.error,
            retryable=outcome.retryable,
            worker_id=self.deps.worker_id,
            started_at=started_at,
            finished_at=utcnow(),
        )
        published = await reporting.until_published(
            lambda: self.deps.reports.publish(JOBS_COMPLETED, finished.encode())
        )
        self.deps.metrics.jobs_processed.labels(
            self.deps.metrics.job_type(job.type), outcome.kind
        ).inc()
        _log(
            "job finished",
            job,
            self.deps.worker_id,
            exc_info=outcome.exception,
            outcome=outcome.kind,
            error=outcome.error,
        )
        return published

    async def _put_back(
        self, job: JobCreated, *, publish: bool = True, marker: bytes = REQUEUED
    ) -> bool:
        """Put the attempt back on ``jobs.created``: a copy, unless ``publish`` is false (its
        delivery, lost with the connection, went back there already); ``marker`` is left in
        its lease."""
        self._requeue.discard((job.job_id, job.attempt))
        published = not publish or await reporting.until_published(
            lambda: self.deps.broker.publish(
                JOBS_CREATED, job.encode(), priority=job.priority, headers={REQUEUED_HEADER: True}
            )
        )
        # The marker tells the scheduler the attempt waits in the queue, not that it was lost.
        # Written once the copy is: a marker left by a publish that never happened (the broker
        # away until the worker exits) would hide the attempt from recovery for a day.
        await self.deps.running.drop(job.job_id, job.attempt, marker=marker if published else None)
        if not published:  # nothing waits in the queue: the lease expires, the attempt is lost
            return False
        self.deps.metrics.requeued.inc()
        _log("job requeued", job, self.deps.worker_id)
        return True

    async def _dead_letter(self, delivery: Delivery, reason: str) -> bool:
        return await dead_letters.move(self.deps.broker, delivery, JOBS_CREATED, reason)


def _first(delivery: Delivery) -> bool:
    """Whether this is the attempt's first delivery, which only claims its lease: not one the
    broker delivers again, nor one put back on the queue (see ``leases``)."""
    return not delivery.redelivered and not delivery.headers.get(REQUEUED_HEADER)


def _log_alone(job: JobCreated) -> None:
    extra = {"action": "job.alone", "jobId": str(job.job_id), "attempt": job.attempt}
    log.warning("attempt runs alone: it was lost with its worker before", extra=extra)


def _deliveries_key(job: JobCreated) -> str:
    return f"cloudtask:deliveries:{job.job_id}:{job.attempt}"


def _log(
    message: str,
    job: JobCreated,
    worker_id: str,
    exc_info: BaseException | None = None,
    **extra: object,
) -> None:
    if not log.isEnabledFor(logging.INFO):  # twice per job: skip building the fields
        return
    fields = {
        "action": message.replace(" ", "."),
        "jobId": str(job.job_id),
        "attempt": job.attempt,
        "workerId": worker_id,
        "type": job.type,
    }
    fields.update({k: v for k, v in extra.items() if v is not None})
    log.info(message, extra=fields, exc_info=exc_info)
