"""The results-processor service: consumes ``jobs.started`` and ``jobs.completed`` and writes them.

Events are written in batches (one transaction each) and acknowledged only after the commit. If the
database is unreachable the deliveries go back to their queue, to be written when it returns;
every write is conditional, so a redelivered event changes nothing twice. A message that cannot be
parsed goes to ``jobs.dead``.
"""

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.batching import Batcher
from cloudtask.broker import dead_letters
from cloudtask.broker.base import Broker, Consumer, Delivery
from cloudtask.contracts.messages import JobFinished, JobStarted
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_STARTED
from cloudtask.contracts.statuses import FINAL_STATUSES, JobStatus
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import job_events
from cloudtask.errors import BrokerUnavailable, DatabaseUnavailable
from cloudtask.observability.metrics import ResultsMetrics
from cloudtask.policies.backoff import compute_backoff
from cloudtask.settings import Settings

log = logging.getLogger(__name__)
PREFETCH = 1000
# Under load, events arriving within 5 ms of each other are written by one statement and
# acknowledged by one frame: about a fifth less CPU per job for this process, PostgreSQL and
# RabbitMQ at 1,000 jobs/s. An event arriving alone is written at once (see Batcher).
WRITE_LINGER = 0.005


class ResultsService:
    def __init__(
        self,
        settings: Settings,
        *,
        db: AsyncEngine,
        broker: Broker,
        metrics: ResultsMetrics | None = None,
    ) -> None:
        self._settings = settings
        self._db = db
        self._broker = broker
        self.metrics = metrics or ResultsMetrics()
        self._batcher: Batcher[BaseModel] = Batcher(
            self._write,
            shared_failures=(DatabaseUnavailable,),
            name="results-batcher",
            linger=WRITE_LINGER,
        )
        self._consumers: list[Consumer] = []

    async def start(self) -> None:
        self._batcher.start()
        for queue, model in ((JOBS_STARTED, JobStarted), (JOBS_COMPLETED, JobFinished)):
            handler = self._handler(queue, model)
            self._consumers.append(await self._broker.consume(queue, handler, prefetch=PREFETCH))
        log.info("results-processor started", extra={"action": "results.started"})

    async def stop(self, grace: float = 0) -> None:
        """Stop consuming; events not yet written return to their queues."""
        del grace  # nothing runs long here
        for consumer in self._consumers:
            await consumer.cancel()
        await self._batcher.stop()

    def _handler(self, queue: str, model: type[BaseModel]) -> Any:
        async def handle(delivery: Delivery) -> None:
            try:
                event = model.model_validate_json(delivery.body)
            except ValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(part) for part in error["loc"]) or "body"
                await self._dead_letter(
                    delivery, queue, f"unparseable message: {where}: {error['msg']}"
                )
                return
            try:
                await self._batcher.add(event)
            except DatabaseUnavailable:
                await asyncio.sleep(1)  # let the database come back before this returns
                await _quietly(delivery.reject(requeue=True))
                return
            except Exception as exc:
                # An event the database refuses: once more, then to jobs.dead, never in a loop.
                log.exception("could not write an event")
                if delivery.redelivered:
                    await self._dead_letter(delivery, queue, f"could not be written: {exc!r}")
                else:
                    await _quietly(delivery.reject(requeue=True))
                return
            await _quietly(delivery.ack())

        return handle

    async def _write(self, events: Sequence[BaseModel]) -> None:
        now = utcnow()
        events = [_not_after(e, now) for e in events]
        finished = [self._finished(e, now) for e in events if isinstance(e, JobFinished)]
        ends = {(f.event.job_id, f.event.attempt) for f in finished}
        # A start whose attempt's end is in the same batch adds nothing to it: the end applies to
        # a PENDING job as well, taking startedAt and the attempt from its own event. Skipping
        # the start writes each row once instead of twice (each write of a job's status puts a
        # new entry in every index of jobs), the usual case for short jobs under load.
        started: list[JobStarted] = []
        subsumed: list[JobStarted] = []
        for e in events:
            if isinstance(e, JobStarted):
                (subsumed if (e.job_id, e.attempt) in ends else started).append(e)
        # Each statement is conditional and idempotent, and deliveries are acknowledged only after
        # both: no transaction is needed around them (a crash between them redelivers the batch).
        async with session.autocommit(self._db) as conn:
            # Started first: a batch holding both events of one attempt ends in the final state.
            running = await job_events.apply_started(conn, started, now=now)
            moved = await job_events.apply_finished(conn, finished, now=now)
        ended = {job.id for job in moved}
        taken = len(running) + sum(1 for e in subsumed if e.job_id in ended)
        self.metrics.batch_size.observe(len(events))
        self.metrics.events.labels("started", "applied").inc(taken)
        self.metrics.events.labels("started", "ignored").inc(len(started) + len(subsumed) - taken)
        self.metrics.events.labels("completed", "applied").inc(len(moved))
        self.metrics.events.labels("completed", "ignored").inc(len(finished) - len(moved))
        if moved:
            # The first of two copies of an end in one batch is the one written.
            workers: dict[tuple[UUID, int], str] = {}
            for f in finished:
                workers.setdefault((f.event.job_id, f.event.attempt), f.event.worker_id)
            for job in moved:
                self._record(job, workers.get((job.id, job.attempts)))

    def _finished(self, event: JobFinished, now: datetime) -> job_events.FinishedEvent:
        delay = compute_backoff(
            event.attempt,
            base=self._settings.retry_backoff_base_seconds,
            cap=self._settings.retry_backoff_cap_seconds,
        )
        # Counted from this clock, not the worker's: one running ahead would put it off.
        return job_events.FinishedEvent(event, now + timedelta(seconds=delay))

    def _record(self, job: job_events.Transition, worker_id: str | None) -> None:
        label = self.metrics.job_type(job.type)
        self.metrics.jobs_finished.labels(label, job.status.value).inc()
        if job.status in FINAL_STATUSES and job.finished_at is not None:
            latency = (job.finished_at - job.created_at).total_seconds()
            self.metrics.end_to_end.labels(label).observe(max(latency, 0.0))
        action = "job.retry_scheduled" if job.status == JobStatus.SCHEDULED else "job.finished"
        log.info(
            f"job {job.status.value.lower()}",
            extra={
                "action": action,
                "jobId": str(job.id),
                "attempt": job.attempts,
                "workerId": worker_id,
                "status": job.status.value,
            },
        )

    async def _dead_letter(self, delivery: Delivery, queue: str, reason: str) -> None:
        if await dead_letters.move(self._broker, delivery, queue, reason):
            self.metrics.dead_lettered.inc()


CLOCK_TOLERANCE = timedelta(seconds=1)
"""How far ahead of this clock a worker's may run before its times are taken as this clock's now:
hosts' clocks differ by milliseconds, and an event comes milliseconds after it was stamped."""


def _not_after(event: BaseModel, now: datetime) -> BaseModel:
    """``event`` with its times no later than ``now`` if they were more than the tolerance
    ahead: a worker whose clock runs ahead would otherwise keep the scheduler from judging the
    attempt hung or lost until then (it judges from startedAt), and show a job finished in the
    future. A start so taken is exactly ``now``, which job_events reads as such."""
    late = now + CLOCK_TOLERANCE
    if isinstance(event, JobStarted) and event.started_at > late:
        return event.model_copy(update={"started_at": now})
    if isinstance(event, JobFinished) and event.finished_at > late:
        return event.model_copy(
            update={"started_at": min(event.started_at, now), "finished_at": now}
        )
    return event


async def _quietly(step: Any) -> None:
    try:
        await step
    except BrokerUnavailable:
        return
