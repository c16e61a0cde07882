"""The scheduler recovers RUNNING attempts that nobody will report on.

No worker runs: a test puts a job in RUNNING itself, with a lease in the key-value store (a live
worker) or without one (a dead worker), and watches ``jobs.created`` and the job's row.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis.asyncio

from cloudtask.contracts.queues import JOBS_COMPLETED
from cloudtask.contracts.signals import STORE_MARK, lease_key, lost_key
from cloudtask.contracts.statuses import JobStatus
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db.queries import dispatch as dispatch_q
from cloudtask.kv.memory import MemoryKV
from cloudtask.kv.redis import RedisKV
from cloudtask.scheduler import recovery
from cloudtask.scheduler import service as scheduler_service
from cloudtask.scheduler.leadership import Leadership
from cloudtask.scheduler.service import SchedulerService
from cloudtask.settings import Settings
from tests import infra
from tests.conftest import Backends
from tests.helpers import eventually
from tests.services import scheduling
from tests.services.scheduling import CreatedCounter

MAX_DELIVERIES = 3
# A lease period (3 s) once the scheduler's round (every 0.1 s here) saw the store again: 10 s
# was too short once, with the machine at four times its cores.
JUDGING_WITHIN = 20.0


@pytest.fixture
def recovery_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "scheduler_poll_seconds": 0.1,
            "worker_lease_seconds": 3,
            "running_grace_seconds": 0.5,
            "max_deliveries": MAX_DELIVERIES,
            # Long enough that a retried attempt stays SCHEDULED while the test looks.
            "retry_backoff_base_seconds": 60,
            "retry_backoff_cap_seconds": 60,
        }
    )


@pytest.fixture
async def scheduler(
    backends: Backends, recovery_settings: Settings
) -> AsyncIterator[SchedulerService]:
    # A store the schedulers have used before: leases are judged at once.
    await backends.kv.set(STORE_MARK, b"1")
    service = SchedulerService(
        recovery_settings, db=backends.db, broker=backends.broker, kv=backends.kv, holder="rec"
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def created(backends: Backends) -> AsyncIterator[CreatedCounter]:
    async with scheduling.counting_created(backends) as counter:
        yield counter


async def _running(
    backends: Backends, count: int = 1, *, started: datetime | None = None, **values: Any
) -> list[uuid.UUID]:
    """Jobs a worker started (attempt 1) a minute ago, unless ``started`` says otherwise."""
    user = await scheduling.add_user(backends)
    ids = await scheduling.add_waiting_jobs(backends, user, count)
    started = started or utcnow() - timedelta(minutes=1)
    await scheduling.update_jobs(
        backends,
        ids,
        status=JobStatus.RUNNING,
        attempts=1,
        dispatch_attempt=1,
        run_at=started - timedelta(seconds=1),
        started_at=started,
        **values,
    )
    return ids


async def _row(backends: Backends, job_id: uuid.UUID) -> Any:
    return (await scheduling.job_rows(backends, [job_id]))[0]


async def _wait_status(backends: Backends, job_id: uuid.UUID, status: JobStatus) -> Any:
    async def reached() -> Any:
        row = await _row(backends, job_id)
        return row if row.status == status else None

    return await eventually(reached)


async def _redelivered(counter: CreatedCounter, job_id: uuid.UUID, times: int) -> None:
    async def enough() -> bool:
        return counter.seen[(str(job_id), 1)] >= times

    await eventually(enough)


@pytest.mark.usefixtures("scheduler")
async def test_a_lost_attempt_is_handed_out_again_under_the_same_number(
    backends: Backends, created: CreatedCounter
) -> None:
    [job_id] = await _running(backends)
    await _redelivered(created, job_id, 1)
    row = await _row(backends, job_id)
    assert row.status == JobStatus.PENDING
    assert (row.attempts, row.dispatch_attempt, row.redeliveries) == (1, 1, 1)
    assert set(created.seen) == {(str(job_id), 1)}


@pytest.mark.usefixtures("scheduler")
async def test_a_lost_attempt_is_found_behind_more_live_older_ones_than_a_batch(
    backends: Backends, created: CreatedCounter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "BATCH", 2)
    older = utcnow() - timedelta(minutes=5)
    live = await _running(backends, 5, started=older, timeout_seconds=3600)
    await backends.kv.set_many({lease_key(job_id, 1): b"live-worker" for job_id in live}, ttl=60)
    [lost] = await _running(backends, timeout_seconds=3600)
    await _redelivered(created, lost, 1)
    for job_id in live:
        assert (await _row(backends, job_id)).status == JobStatus.RUNNING
    assert set(created.seen) == {(str(lost), 1)}


@pytest.mark.usefixtures("scheduler")
async def test_an_attempt_lost_max_deliveries_times_fails(
    backends: Backends, created: CreatedCounter
) -> None:
    [job_id] = await _running(backends)
    for delivery in range(1, MAX_DELIVERIES):
        await _redelivered(created, job_id, delivery)
        assert (await _row(backends, job_id)).redeliveries == delivery
        # Another worker takes it, and dies too.
        await scheduling.update_jobs(
            backends, [job_id], status=JobStatus.RUNNING, started_at=utcnow() - timedelta(minutes=1)
        )
    row = await _wait_status(backends, job_id, JobStatus.FAILED)
    assert row.error == f"its worker was lost {MAX_DELIVERIES} times"
    assert row.finished_at is not None and row.attempts == 1
    assert created.seen == {(str(job_id), 1): MAX_DELIVERIES - 1}


@pytest.mark.usefixtures("scheduler")
async def test_a_lost_attempt_whose_cancellation_was_asked_ends_cancelled(
    backends: Backends, created: CreatedCounter
) -> None:
    [job_id] = await _running(backends, cancel_requested=True)
    row = await _wait_status(backends, job_id, JobStatus.CANCELLED)
    assert row.finished_at is not None and row.redeliveries == 0
    assert created.seen == {}


async def test_a_hung_attempt_with_attempts_left_is_scheduled_for_a_retry(
    backends: Backends, scheduler: SchedulerService, created: CreatedCounter
) -> None:
    [job_id] = await _running(backends)  # a 30 s timeout, started a minute ago
    await backends.kv.set(lease_key(job_id, 1), b"hung-worker", ttl=60)
    row = await _wait_status(backends, job_id, JobStatus.SCHEDULED)
    assert "timeout" in row.error and row.attempts == 1 and row.finished_at is None
    assert row.run_at > utcnow() + timedelta(seconds=5)
    assert row.redeliveries == 0 and created.seen == {}
    recovered = scheduler.metrics.registry.get_sample_value(
        "cloudtask_scheduler_recovered_total", {"reason": "hung"}
    )
    assert recovered == 1


@pytest.mark.usefixtures("scheduler")
async def test_a_hung_attempt_with_no_attempts_left_fails(
    backends: Backends, created: CreatedCounter
) -> None:
    [job_id] = await _running(backends, max_attempts=1)
    await backends.kv.set(lease_key(job_id, 1), b"hung-worker", ttl=60)
    row = await _wait_status(backends, job_id, JobStatus.FAILED)
    assert "timeout" in row.error and row.finished_at is not None
    assert created.seen == {}


@pytest.mark.usefixtures("scheduler")
async def test_attempts_with_a_live_lease_or_just_started_are_left_alone(
    backends: Backends, created: CreatedCounter
) -> None:
    [healthy] = await _running(backends, timeout_seconds=300)
    await backends.kv.set(lease_key(healthy, 1), b"live-worker", ttl=60)
    [fresh] = await _running(backends, started=utcnow())  # its worker has no lease yet
    [lost] = await _running(backends)
    await _redelivered(created, lost, 1)  # a recovery round looked at all three
    for job_id in (healthy, fresh):
        row = await _row(backends, job_id)
        assert (row.status, row.redeliveries, row.error) == (JobStatus.RUNNING, 0, None)
    assert set(created.seen) == {(str(lost), 1)}


async def test_nothing_is_judged_while_reports_wait_in_jobs_completed(
    backends: Backends, scheduler: SchedulerService, created: CreatedCounter
) -> None:
    # A backlog of reports: the lost-looking attempt's own report may well be among them.
    await backends.broker.publish(JOBS_COMPLETED, b'{"queued": "report"}')
    [lost] = await _running(backends)
    [hung] = await _running(backends, max_attempts=1)
    await backends.kv.set(lease_key(hung, 1), b"hung-worker", ttl=60)

    async def judging() -> bool:  # a leader that would call an attempt lost by now
        return scheduler.leadership.store_steady_for(3)

    await eventually(judging, timeout=JUDGING_WITHIN)
    await asyncio.sleep(2.5)  # a recovery round (every 2 s) or two
    for job_id in (lost, hung):
        assert (await _row(backends, job_id)).status == JobStatus.RUNNING
    assert created.seen == {}
    # The results-processor catches up: both are judged as before.
    delivery = await eventually(lambda: backends.broker.get(JOBS_COMPLETED))
    await delivery.ack()
    await _redelivered(created, lost, 1)
    await _wait_status(backends, hung, JobStatus.FAILED)


async def _store_loses_its_keys(backends: Backends) -> None:
    """As a Redis restarted without persistence: the client reconnects, no call fails."""
    if isinstance(backends.kv, MemoryKV):
        backends.kv._values.clear()  # what the in-process store keeps, all of it
        return
    flushing = redis.asyncio.Redis.from_url(infra.redis_url())
    try:
        await flushing.flushdb()
    finally:
        await flushing.aclose()


async def test_leases_lost_with_the_stores_keys_are_judged_once_heartbeats_could_rewrite_them(
    backends: Backends,
    scheduler: SchedulerService,
    created: CreatedCounter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduler_service, "RECOVERY_EVERY", 0.1)
    [alive] = await _running(backends, timeout_seconds=300)
    await backends.kv.set(lease_key(alive, 1), b"live-worker", ttl=60)
    await asyncio.sleep(0.5)  # rounds that found its lease
    await _store_loses_its_keys(backends)
    await asyncio.sleep(1.0)  # its worker's next heartbeat (every third of the 3 s lease)
    await backends.kv.set(lease_key(alive, 1), b"live-worker", ttl=60)
    row = await _row(backends, alive)
    assert (row.status, row.redeliveries) == (JobStatus.RUNNING, 0)  # not judged meanwhile

    async def judging() -> bool:  # a lease period since the scheduler saw the store emptied
        marked = await backends.kv.get(STORE_MARK) is not None
        return marked and scheduler.leadership.store_steady_for(3)

    await eventually(judging, timeout=JUDGING_WITHIN)
    await asyncio.sleep(0.5)  # rounds that judge leases again
    row = await _row(backends, alive)
    assert (row.status, row.redeliveries) == (JobStatus.RUNNING, 0)
    assert created.seen == {}
    [lost] = await _running(backends)  # a worker that really died is still found
    await _redelivered(created, lost, 1)


async def test_leases_of_a_store_restarted_from_a_snapshot_are_judged_once_rewritten(
    backends: Backends,
    scheduler: SchedulerService,
    created: CreatedCounter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not isinstance(backends.kv, MemoryKV):
        pytest.skip("a test cannot restart the Redis server the others share")
    monkeypatch.setattr(scheduler_service, "RECOVERY_EVERY", 0.1)
    [alive] = await _running(backends, timeout_seconds=300)
    await backends.kv.set(lease_key(alive, 1), b"live-worker", ttl=60)

    async def judging() -> bool:
        return scheduler.leadership.store_steady_for(3)

    await eventually(judging, timeout=JUDGING_WITHIN)
    await asyncio.sleep(0.5)  # rounds that found its lease
    # Restarted, with the keys of a snapshot taken before the lease was written: the mark is
    # back, the lease is not; the client reconnects without an error.
    await backends.kv.delete(lease_key(alive, 1))
    backends.kv.name = "restarted"
    await asyncio.sleep(1.0)  # its worker's next heartbeat
    await backends.kv.set(lease_key(alive, 1), b"live-worker", ttl=60)
    row = await _row(backends, alive)
    assert (row.status, row.redeliveries) == (JobStatus.RUNNING, 0)
    await eventually(judging, timeout=JUDGING_WITHIN)
    await asyncio.sleep(0.5)
    assert (await _row(backends, alive)).status == JobStatus.RUNNING
    assert created.seen == {}


async def test_a_scheduler_finding_the_mark_just_written_by_another_waits_as_it_does(
    backends: Backends, recovery_settings: Settings
) -> None:
    await backends.kv.delete(STORE_MARK)  # a store new to CloudTask, or just emptied
    first = Leadership(backends.kv, backends.db, "first", lease_seconds=10)
    second = Leadership(backends.kv, backends.db, "second", lease_seconds=10)
    await first.refresh()  # writes the mark
    await second.refresh()  # finds it
    for leadership in (first, second):
        assert not leadership.store_steady_for(recovery_settings.worker_lease_seconds)


async def test_lost_attempts_are_marked_before_they_are_handed_out_or_not_handed_out(
    backends: Backends,
) -> None:
    # A worker that had stalled may renew the lease of an attempt handed out again; the lost
    # mark is what lets the new delivery take it rather than be dropped as a copy. Unmarked
    # (the store away), it is not handed out this time.
    now = utcnow()
    attempt = dispatch_q.Attempt(
        uuid.uuid4(), uuid.uuid4(), "echo", "null", 5, 1, 300.0, now, started_at=now
    )
    assert await recovery.mark_lost(backends.kv, {attempt})
    assert await backends.kv.get(lost_key(attempt.id, 1)) == b"1"
    down = RedisKV("redis://127.0.0.1:1/0", timeout=0.2)
    try:
        assert not await recovery.mark_lost(down, {attempt})
    finally:
        await down.close()
    assert await recovery.mark_lost(down, set())  # nothing to mark: nothing held back


class _SaysNotWhichRun(MemoryKV):
    """A store that will not name its run (a Redis whose INFO is renamed or not allowed)."""

    async def instance(self) -> str | None:
        return None


async def test_a_store_that_will_not_name_its_run_is_still_led_and_judged(
    backends: Backends,
) -> None:
    kv = _SaysNotWhichRun()
    leadership = Leadership(kv, backends.db, "only", lease_seconds=10)
    await kv.start()
    try:
        for _ in range(2):
            await leadership.refresh()
        assert not leadership.degraded
        assert leadership.token is not None
        assert leadership.store_steady_for(0)
    finally:
        await kv.close()


async def test_a_mark_written_by_a_clock_running_ahead_counts_from_when_first_seen(
    backends: Backends,
) -> None:
    await backends.kv.set(STORE_MARK, repr(time.time() + 3600).encode())
    leadership = Leadership(backends.kv, backends.db, "only", lease_seconds=10)
    await leadership.refresh()
    await asyncio.sleep(0.3)
    await leadership.refresh()  # the mark unchanged: still counted from its first sighting
    assert leadership.store_steady_for(0.25)
