"""Recovering attempts that will never be reported: their worker died, or hangs.

- Lost: a RUNNING attempt whose lease has expired (the worker stopped renewing it) is handed out
  again under the same attempt number, at most ``max_deliveries`` times; a lost attempt whose
  cancellation was requested just ends CANCELLED. It is marked in the key-value store first, so
  that the worker that takes it up runs it alone.
- Hung: a RUNNING attempt older than its timeout plus ``running_grace_seconds`` counts as a failed,
  retryable attempt: retried after a backoff if attempts remain, else FAILED.

Neither is judged while ``jobs.completed`` has reports waiting: behind a backlog of reports the
missing one is most likely among them.
"""

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncConnection

from cloudtask.broker.base import Broker
from cloudtask.contracts.messages import JobFinished
from cloudtask.contracts.queues import JOBS_COMPLETED
from cloudtask.contracts.signals import LOST, LOST_MARK_TTL, STORE_MARK, lease_key, lost_key
from cloudtask.contracts.statuses import JobStatus
from cloudtask.db.queries import dispatch as dispatch_q
from cloudtask.db.queries import job_events
from cloudtask.db.queries import outbox as outbox_q
from cloudtask.errors import BrokerUnavailable, KVUnavailable
from cloudtask.kv.base import KV
from cloudtask.policies.backoff import compute_backoff
from cloudtask.settings import Settings

log = logging.getLogger(__name__)
BATCH = 500


@dataclass
class Recovered:
    lost: int = 0
    hung: int = 0
    cancelled: int = 0
    gave_up: int = 0
    rows: list[outbox_q.OutboxRow] = field(default_factory=list)


async def find_candidates(
    conn: AsyncConnection,
    settings: Settings,
    now: datetime,
    past: dispatch_q.Attempt | None = None,
) -> list[dispatch_q.Attempt]:
    """The next ``BATCH`` RUNNING attempts to judge, oldest first, after ``past`` (the last of
    the batch before)."""
    # The shortest timeout is 1 s: anything younger is neither hung nor (having taken its lease
    # before it started) lost.
    youngest = min(settings.worker_lease_seconds, 1 + settings.running_grace_seconds)
    after = None if past is None or past.started_at is None else (past.started_at, past.id)
    return await dispatch_q.running_since(
        conn, now - timedelta(seconds=youngest), BATCH, past=after
    )


async def lost_among(
    kv: KV,
    running: list[dispatch_q.Attempt],
    settings: Settings,
    now: datetime,
    *,
    instance: str | None = None,
) -> set[dispatch_q.Attempt]:
    """The attempts whose lease is gone. A lease outlives a dead worker by up to its TTL, so only
    attempts older than that are asked about; if the store cannot be asked, lost its keys since
    the schedulers last marked it, or is another run of it than ``instance`` (restarted: see
    ``leadership``), none is called lost."""
    settled = now - timedelta(seconds=settings.worker_lease_seconds + 1)
    running = [job for job in running if job.started_at is not None and job.started_at < settled]
    if not running:
        return set()
    try:
        mark, *leases = await kv.get_many(
            [STORE_MARK, *(lease_key(job.id, job.attempt) for job in running)]
        )
        if mark is None or (instance is not None and await kv.instance() not in (instance, None)):
            return set()
    except KVUnavailable:
        return set()
    return {job for job, lease in zip(running, leases, strict=True) if lease is None}


async def mark_lost(kv: KV, lost: set[dispatch_q.Attempt]) -> bool:
    """Tell the workers that these attempts were lost with a worker, before they are handed out
    again: each then runs alone, so that if one of them killed its worker, the others are not
    counted with it when it does so again; and it is taken whoever renewed its lease since (a
    worker that had stalled), where a first delivery finding the lease held is taken for a copy.
    Returns whether they are marked; unmarked (the store away), they are not handed out."""
    if not lost:
        return True
    marks = {lost_key(job.id, job.attempt): LOST for job in lost}
    try:
        await kv.set_many(marks, ttl=LOST_MARK_TTL)
    except KVUnavailable:
        log.warning("could not mark lost attempts: not handed out yet", extra={"lost": len(lost)})
        return False
    return True


async def reports_waiting(broker: Broker) -> bool:
    """Whether ``jobs.completed`` holds reports no results-processor has taken yet."""
    try:
        return (await broker.stats(JOBS_COMPLETED)).messages > 0
    except BrokerUnavailable:
        return False  # reports cannot be behind a broker that is away; judge as before


def is_hung(job: dispatch_q.Attempt, settings: Settings, now: datetime) -> bool:
    if job.started_at is None:
        return False
    limit = job.timeout_seconds + settings.running_grace_seconds
    return job.started_at + timedelta(seconds=limit) < now


async def recover(
    conn: AsyncConnection,
    settings: Settings,
    running: list[dispatch_q.Attempt],
    lost: set[dispatch_q.Attempt],
    *,
    now: datetime,
) -> Recovered:
    outcome = Recovered()
    requeue = []
    for job in running:
        if job in lost and job.cancel_requested:
            ended = await dispatch_q.end_lost(conn, job, JobStatus.CANCELLED, "cancelled", now=now)
            outcome.cancelled += ended
        elif job in lost and job.redeliveries + 1 >= settings.max_deliveries:
            error = f"its worker was lost {job.redeliveries + 1} times"
            outcome.gave_up += await dispatch_q.end_lost(
                conn, job, JobStatus.FAILED, error, now=now
            )
        elif job in lost:
            requeue.append(job)
        elif is_hung(job, settings, now):
            outcome.hung += len(
                await job_events.apply_finished(conn, [_hung(job, settings, now)], now=now)
            )
    requeued, outcome.rows = await dispatch_q.redispatch(conn, requeue, now=now)
    outcome.lost = len(requeued)
    return outcome


def _hung(job: dispatch_q.Attempt, settings: Settings, now: datetime) -> job_events.FinishedEvent:
    event = JobFinished(
        job_id=job.id,
        attempt=job.attempt,
        status="FAILED",
        error=f"no report within its timeout ({job.timeout_seconds:g} s) plus "
        f"{settings.running_grace_seconds:g} s: the worker hangs or was cut off",
        retryable=True,
        worker_id="scheduler",
        started_at=job.started_at or now,
        finished_at=now,
    )
    delay = compute_backoff(
        job.attempt,
        base=settings.retry_backoff_base_seconds,
        cap=settings.retry_backoff_cap_seconds,
    )
    return job_events.FinishedEvent(event, now + timedelta(seconds=delay))
