"""Two schedulers side by side on the same back ends: one leads and acts, the other takes over
when the leader dies, and a leader that was superseded is fenced out.

No worker runs here: the tests consume ``jobs.created`` themselves and count the messages per
(job, attempt), so a duplicate dispatch would show.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from cloudtask.contracts.statuses import JobStatus
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import dispatch as dispatch_q
from cloudtask.db.tables import leadership
from cloudtask.kv.redis import RedisKV
from cloudtask.scheduler import firing
from cloudtask.scheduler.service import SchedulerService
from cloudtask.settings import Settings
from tests.conftest import Backends
from tests.helpers import eventually
from tests.services import scheduling
from tests.services.scheduling import CreatedCounter

LEASE = 2.0


@pytest.fixture
def pair_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"scheduler_poll_seconds": 0.1, "scheduler_lease_seconds": LEASE}
    )


def _scheduler(backends: Backends, settings: Settings, holder: str) -> SchedulerService:
    return SchedulerService(
        settings, db=backends.db, broker=backends.broker, kv=backends.kv, holder=holder
    )


@pytest.fixture
async def pair(
    backends: Backends, pair_settings: Settings
) -> AsyncIterator[list[SchedulerService]]:
    schedulers = [_scheduler(backends, pair_settings, h) for h in ("sched-a", "sched-b")]
    for scheduler in schedulers:
        await scheduler.start()
    try:
        yield schedulers
    finally:
        for scheduler in schedulers:
            await scheduler.stop()


async def _leader(pair: list[SchedulerService]) -> tuple[SchedulerService, SchedulerService]:
    """Wait until exactly one of the pair acts; return it and the other."""

    async def one() -> list[SchedulerService] | None:
        acting = [s for s in pair if s.leadership.acting]
        return acting if len(acting) == 1 else None

    leader = (await eventually(one))[0]
    return leader, next(s for s in pair if s is not leader)


def _tasks_of(scheduler: SchedulerService) -> list[asyncio.Task[None]]:
    """The service's background tasks, whichever attributes hold them."""
    found: list[asyncio.Task[None]] = []
    for value in vars(scheduler).values():
        candidates = value if isinstance(value, list) else [value]
        found += [task for task in candidates if isinstance(task, asyncio.Task)]
    assert any(task.get_name() == "scheduler-leadership" for task in found)
    return found


async def _fenced_holder(backends: Backends) -> tuple[str, int]:
    async with session.reading(backends.db) as conn:
        row = (await conn.execute(select(leadership.c.holder, leadership.c.token))).one()
    return row.holder, row.token


async def _dispatched(
    backends: Backends, counter: CreatedCounter, ids: list[uuid.UUID], timeout: float = 10
) -> None:
    """Make the jobs due and wait until each was announced on ``jobs.created``."""
    await scheduling.make_due(backends, ids)

    async def all_seen() -> bool:
        return {str(i) for i in ids} <= counter.jobs()

    await eventually(all_seen, timeout=timeout)


def _count(scheduler: SchedulerService, name: str, **labels: str) -> float:
    return scheduler.metrics.registry.get_sample_value(name, labels) or 0.0


def _dispatched_count(scheduler: SchedulerService) -> float:
    return _count(scheduler, "cloudtask_jobs_dispatched_total", type="echo")


def _fired_count(scheduler: SchedulerService) -> float:
    return _count(scheduler, "cloudtask_schedules_fired_total")


async def test_only_one_scheduler_acts_and_every_job_and_firing_happens_once(
    backends: Backends, pair: list[SchedulerService]
) -> None:
    leader, follower = await _leader(pair)
    assert (await _fenced_holder(backends))[0] == leader.leadership.holder
    user = await scheduling.add_user(backends)
    ids = await scheduling.add_waiting_jobs(backends, user, 50)
    schedule = await scheduling.add_schedule(
        backends, user, next_run_at=utcnow() - timedelta(seconds=1)
    )

    async with scheduling.counting_created(backends) as counter:
        await _dispatched(backends, counter, ids)
        [fired] = await eventually(lambda: scheduling.jobs_of_schedule(backends, schedule))
        # Later rounds (marked by a job due later than all of these) change nothing; the fired
        # job's message went out before the marker's.
        await _dispatched(backends, counter, await scheduling.add_waiting_jobs(backends, user, 1))

    assert str(fired.id) in counter.jobs()
    assert counter.duplicates() == {}
    assert {attempt for _, attempt in counter.seen} == {1}
    assert len(counter.seen) == 52
    assert len(await scheduling.jobs_of_schedule(backends, schedule)) == 1
    assert await scheduling.firings(backends, schedule) == 1
    assert {row.status for row in await scheduling.job_rows(backends, ids)} == {JobStatus.PENDING}
    assert not follower.leadership.acting
    assert (_dispatched_count(follower), _fired_count(follower)) == (0, 0)
    assert (_dispatched_count(leader), _fired_count(leader)) == (51, 1)


async def test_when_the_leader_dies_the_other_takes_over_within_the_lease(
    backends: Backends, pair: list[SchedulerService]
) -> None:
    leader, follower = await _leader(pair)
    assert await _fenced_holder(backends) == (leader.leadership.holder, leader.leadership.token)
    token = leader.leadership.token or 0
    # Dead, not stopped: nothing renews, releases or acts any more.
    for task in _tasks_of(leader):
        task.cancel()
    died = time.monotonic()

    async def follower_leads() -> bool:
        return follower.leadership.acting

    await eventually(follower_leads, timeout=LEASE + 1.5, interval=0.02)
    assert time.monotonic() - died <= LEASE + 1 + 0.25  # the poll's own slack
    assert await _fenced_holder(backends) == (follower.leadership.holder, token + 1)

    user = await scheduling.add_user(backends)
    ids = await scheduling.add_waiting_jobs(backends, user, 20)
    async with scheduling.counting_created(backends) as counter:
        await _dispatched(backends, counter, ids)
    assert counter.duplicates() == {}
    assert _dispatched_count(follower) == 20


async def test_a_leader_that_stops_renewing_is_replaced_and_fenced_out(
    backends: Backends, pair: list[SchedulerService]
) -> None:
    leader, follower = await _leader(pair)
    # Renewing stops and its loop goes on, as in a process paused past its lease.
    for task in _tasks_of(leader):
        if task.get_name() == "scheduler-leadership":
            task.cancel()

    async def follower_leads() -> bool:
        return follower.leadership.acting

    await eventually(follower_leads, timeout=LEASE + 1.5)
    user = await scheduling.add_user(backends)
    ids = await scheduling.add_waiting_jobs(backends, user, 30)
    async with scheduling.counting_created(backends) as counter:
        await _dispatched(backends, counter, ids)

        async def stepped_down() -> bool:
            return not leader.leadership.acting

        await eventually(stepped_down)
        await _dispatched(backends, counter, await scheduling.add_waiting_jobs(backends, user, 1))
    assert counter.duplicates() == {}
    assert len(counter.seen) == 31


async def test_a_leader_whose_token_was_superseded_does_not_act(
    backends: Backends, pair_settings: Settings
) -> None:
    scheduler = _scheduler(backends, pair_settings, "sched-old")
    await scheduler.leadership.refresh()
    assert scheduler.leadership.acting
    user = await scheduling.add_user(backends)
    ids = await scheduling.add_waiting_jobs(backends, user, 3)
    await scheduling.make_due(backends, ids)
    async with session.transaction(backends.db) as conn:
        await dispatch_q.take_leadership(conn, "sched-new", now=utcnow())

    async with session.transaction(backends.db) as conn:
        assert await scheduler.leadership.fenced(conn) is False
    assert not scheduler.leadership.acting
    await scheduler.tick()
    rows = await scheduling.job_rows(backends, ids)
    assert {row.status for row in rows} == {JobStatus.SCHEDULED}
    assert _dispatched_count(scheduler) == 0


async def test_a_leader_still_holding_the_token_passes_the_fence(
    backends: Backends, pair_settings: Settings
) -> None:
    scheduler = _scheduler(backends, pair_settings, "sched-only")
    await scheduler.leadership.refresh()
    async with session.transaction(backends.db) as conn:
        assert await scheduler.leadership.fenced(conn) is True
    user = await scheduling.add_user(backends)
    ids = await scheduling.add_waiting_jobs(backends, user, 3)
    await scheduling.make_due(backends, ids)
    await scheduler.tick()
    rows = await scheduling.job_rows(backends, ids)
    assert {row.status for row in rows} == {JobStatus.PENDING}
    await scheduler.leadership.release()


async def test_due_jobs_are_dispatched_highest_priority_first(backends: Backends) -> None:
    user = await scheduling.add_user(backends)
    [low] = await scheduling.add_waiting_jobs(backends, user, 1, priority=1)
    [high] = await scheduling.add_waiting_jobs(backends, user, 1, priority=9)
    [middle] = await scheduling.add_waiting_jobs(backends, user, 1, priority=5)
    await scheduling.make_due(backends, [low, high, middle])
    async with session.transaction(backends.db) as conn:
        due, rows = await dispatch_q.dispatch_due(conn, now=utcnow(), limit=2)
    assert [job.id for job in due] == [high, middle]
    assert [job.attempt for job in due] == [1, 1] and len(rows) == 2
    statuses = {row.id: row.status for row in await scheduling.job_rows(backends, [low, high])}
    assert statuses == {low: JobStatus.SCHEDULED, high: JobStatus.PENDING}


@pytest.mark.parametrize("backend_urls", ["real"], indirect=True)
async def test_without_the_key_value_store_both_act_and_the_database_keeps_it_once(
    backends: Backends, pair_settings: Settings
) -> None:
    unreachable = RedisKV("redis://127.0.0.1:1/0", timeout=0.5)
    both = [
        SchedulerService(
            pair_settings, db=backends.db, broker=backends.broker, kv=unreachable, holder=holder
        )
        for holder in ("sched-a", "sched-b")
    ]
    for scheduler in both:
        await scheduler.start()
    try:

        async def both_act() -> bool:
            return all(s.leadership.acting and s.leadership.degraded for s in both)

        await eventually(both_act)
        user = await scheduling.add_user(backends)
        # More than two batches: both schedulers take some, each skipping the rows the other locked.
        ids = await scheduling.add_waiting_jobs(backends, user, 1200)
        schedule = await scheduling.add_schedule(backends, user, next_run_at=utcnow())
        async with scheduling.counting_created(backends) as counter:
            await _dispatched(backends, counter, ids, timeout=30)
            await eventually(lambda: scheduling.jobs_of_schedule(backends, schedule))
            await _dispatched(
                backends, counter, await scheduling.add_waiting_jobs(backends, user, 1)
            )
    finally:
        for scheduler in both:
            await scheduler.stop()
        await unreachable.close()
    assert counter.duplicates() == {}
    assert len(counter.seen) == 1202
    assert await scheduling.firings(backends, schedule) == 1
    assert sum(_dispatched_count(s) for s in both) == 1201


async def test_a_round_that_fired_a_full_batch_of_schedules_asks_for_the_next_at_once(
    backends: Backends, pair_settings: Settings
) -> None:
    # Else the leader waits its poll interval after each batch: thousands of schedules due
    # together fired over tens of seconds, and a backlog longer than a period lost firings.
    scheduler = _scheduler(backends, pair_settings, "sched-firing")
    await scheduler.leadership.refresh()
    user = await scheduling.add_user(backends)
    due = utcnow() - timedelta(minutes=1)
    ids = [
        await scheduling.add_schedule(backends, user, next_run_at=due)
        for _ in range(firing.FIRE_BATCH + 1)
    ]

    more = [await scheduler.tick()]
    while more[-1] and len(more) < 10:
        more.append(await scheduler.tick())

    assert more[0] is True and more[-1] is False
    assert [await scheduling.firings(backends, i) for i in ids] == [1] * len(ids)
    await scheduler.leadership.release()
