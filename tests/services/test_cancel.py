"""Cancelling jobs: a running handler is stopped and the job ends CANCELLED; a job cancelled while
it waits in the queue never runs. The worker runs one job at a time here, so a job can be held
waiting behind another."""

import asyncio
from typing import Any
from uuid import uuid4

import pytest

from cloudtask.contracts.queues import JOBS_COMPLETED
from cloudtask.contracts.signals import CANCEL_CHANNEL, REQUEUED, cancel_key, lease_key, lost_key
from cloudtask.kv.memory import MemoryKV
from cloudtask.results.service import ResultsService
from cloudtask.settings import Settings
from cloudtask.worker.leases import RunningAttempts, Taken
from cloudtask.worker.registry import HandlerRegistry
from tests.conftest import Backends
from tests.helpers import eventually, wait_for_status
from tests.services.conftest import Stack
from tests.services.support import metric, registry_of, wait_for_metric, wait_until_set


class Handlers:
    def __init__(self) -> None:
        self.long_started = asyncio.Event()
        self.long_cancelled = False
        self.release_gate = asyncio.Event()
        self.gate_started = asyncio.Event()
        self.never_calls = 0

    async def long(self, payload: Any) -> Any:
        self.long_started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.long_cancelled = True
            raise
        return "ran to the end"

    async def stubborn(self, payload: Any) -> Any:
        # Catches the cancellation, tidies up, and returns as if it had ended its work.
        self.long_started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.long_cancelled = True
            await asyncio.sleep(0.2)
            return "tidied up after the cancel"
        return "ran to the end"

    async def gate(self, payload: Any) -> Any:
        self.gate_started.set()
        await self.release_gate.wait()
        return "gate opened"

    async def never(self, payload: Any) -> Any:
        self.never_calls += 1
        return "ran"


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def stack_handlers(handlers: Handlers) -> HandlerRegistry:
    return registry_of(handlers, "long", "stubborn", "gate", "never")


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"worker_concurrency": 1})


async def _cancel(stack: Stack, token: str, job_id: str) -> dict[str, Any]:
    response = await stack.client.http.post(
        f"/jobs/{job_id}/cancel", headers=stack.client.auth(token)
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()
    return job


async def test_cancelling_a_running_job_stops_its_handler_and_ends_it_cancelled(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="long", payload={}, maxAttempts=3)
    await wait_until_set(handlers.long_started)
    await wait_for_status(stack.client, token, job["id"], "RUNNING")

    answer = await _cancel(stack, token, job["id"])
    assert answer["status"] == "RUNNING"

    done = await wait_for_status(
        stack.client, token, job["id"], "CANCELLED", "FAILED", "SCHEDULED", timeout=5
    )
    assert done["status"] == "CANCELLED"
    assert done["attempts"] == 1
    assert done["finishedAt"] is not None
    assert handlers.long_cancelled


async def test_a_handler_that_catches_the_cancel_and_returns_ends_its_job_cancelled(
    stack: Stack, handlers: Handlers
) -> None:
    # It stopped when asked: the job is CANCELLED, as the contract says, not COMPLETED with what
    # the handler returned on its way out.
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="stubborn", payload={}, maxAttempts=3)
    await wait_until_set(handlers.long_started)
    await wait_for_status(stack.client, token, job["id"], "RUNNING")

    assert (await _cancel(stack, token, job["id"]))["status"] == "RUNNING"

    done = await wait_for_status(
        stack.client, token, job["id"], "CANCELLED", "COMPLETED", "FAILED", timeout=5
    )
    assert handlers.long_cancelled
    assert (done["status"], done["result"], done["attempts"]) == ("CANCELLED", None, 1)


async def test_a_job_cancelled_while_it_waits_in_the_queue_never_runs(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    try:
        gate = await stack.client.create_job(token, type="gate", payload={})
        await wait_until_set(handlers.gate_started)
        waiting = await stack.client.create_job(token, type="never", payload={})
        assert (await stack.client.get_job(token, waiting["id"]))["status"] == "PENDING"

        answer = await _cancel(stack, token, waiting["id"])
        assert answer["status"] == "CANCELLED"
    finally:
        handlers.release_gate.set()
    await wait_for_status(stack.client, token, gate["id"], "COMPLETED")

    await wait_for_metric(
        stack.worker.metrics.registry,
        "cloudtask_worker_jobs_processed_total",
        1,
        type="never",
        outcome="cancelled",
    )
    assert handlers.never_calls == 0
    done = await stack.client.get_job(token, waiting["id"])
    assert done["status"] == "CANCELLED"
    assert done["attempts"] == 0
    assert done["startedAt"] is None


async def test_a_cancel_heard_after_the_lease_is_taken_stops_the_handler_as_it_starts(
    backends: Backends,
) -> None:
    running = RunningAttempts(backends.kv, "test-worker", lease_seconds=15)
    await running.start()
    job_id = uuid4()
    try:
        await running.take(job_id, 1, claim=True)
        await backends.kv.publish(CANCEL_CHANNEL, str(job_id).encode())

        async def cancelled_when_tracked() -> bool:
            run: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            running.track(job_id, 1, run)
            running.untrack(run)
            return run.cancelled()

        await eventually(cancelled_when_tracked)
    finally:
        await running.drop(job_id, 1)
        await running.stop()


async def test_leases_taken_together_are_written_in_one_round_trip_each_with_its_own_flag(
    backends: Backends,
) -> None:
    running = RunningAttempts(backends.kv, "test-worker", lease_seconds=15)
    await running.start()
    jobs = [uuid4() for _ in range(5)]
    await backends.kv.set(cancel_key(jobs[2]), b"1", ttl=60)
    await backends.kv.set(lost_key(jobs[3], 3), b"1", ttl=60)
    try:
        taken = await asyncio.gather(
            *(running.take(job_id, 3, claim=n % 2 == 0) for n, job_id in enumerate(jobs))
        )
        assert [t.cancelled for t in taken] == [False, False, True, False, False]
        assert [t.lost_before for t in taken] == [False, False, False, True, False]
        assert not any(t.copy for t in taken)
        leases = await backends.kv.get_many([lease_key(job_id, 3) for job_id in jobs])
        assert all(lease and lease.startswith(b"test-worker/") for lease in leases), leases
        assert len(set(leases)) == 5  # a value of each take's own
        assert running._takes.writes == 1
        lone = await running.take(uuid4(), 1, claim=True)
        assert lone == Taken()  # a lone one is not kept waiting
        assert running._takes.writes == 2
    finally:
        for job_id in jobs:
            await running.drop(job_id, 3)
        await running.stop()


async def test_a_first_delivery_whose_lease_is_held_is_a_copy_and_takes_nothing(
    backends: Backends,
) -> None:
    ours = RunningAttempts(backends.kv, "worker-a", lease_seconds=15)
    theirs = RunningAttempts(backends.kv, "worker-b", lease_seconds=15)
    await ours.start()
    await theirs.start()
    held, requeued, free = uuid4(), uuid4(), uuid4()
    await backends.kv.set(lease_key(requeued, 1), REQUEUED, ttl=60)
    try:
        assert await theirs.take(held, 1, claim=True) == Taken()
        theirs_lease = await backends.kv.get(lease_key(held, 1))
        assert theirs_lease is not None and theirs_lease.startswith(b"worker-b/")
        # Another worker holds it: a copy; and the holder's lease is left as it was.
        assert await ours.take(held, 1, claim=True) == Taken(copy=True)
        assert await backends.kv.get(lease_key(held, 1)) == theirs_lease
        assert len(ours) == 0
        # This worker runs it: a copy, known without asking the store.
        writes = theirs._takes.writes
        assert await theirs.take(held, 1, claim=True) == Taken(copy=True)
        assert theirs._takes.writes == writes
        assert len(theirs) == 1
        # A redelivery takes it whoever held it; a claim takes a requeued or a free attempt.
        assert await ours.take(held, 1, claim=False) == Taken()
        assert (await backends.kv.get(lease_key(held, 1)) or b"").startswith(b"worker-a/")
        assert await ours.take(requeued, 1, claim=True) == Taken()
        assert await ours.take(free, 1, claim=True) == Taken()
        leases = await backends.kv.get_many([lease_key(requeued, 1), lease_key(free, 1)])
        assert all(lease and lease.startswith(b"worker-a/") for lease in leases), leases
        # Another attempt of the same job is another lease.
        assert await theirs.take(held, 2, claim=True) == Taken()
    finally:
        for job_id in (held, requeued, free):
            await ours.drop(job_id, 1)
        await theirs.drop(held, 1)
        await theirs.drop(held, 2)
        await ours.stop()
        await theirs.stop()


async def test_a_claim_is_not_refused_by_its_own_write(backends: Backends) -> None:
    # A call sent again after a dropped connection (as redis-py retries) finds its first write.
    running = RunningAttempts(backends.kv, "worker-a", lease_seconds=15)
    job_id = uuid4()
    write = running._kv.claim_many_and_get

    async def sent_twice(claims: dict[str, bytes], **rest: Any) -> Any:
        first = await write(claims, **rest)
        again = await write(claims, **rest)
        assert again == first
        return again

    running._kv.claim_many_and_get = sent_twice  # type: ignore[method-assign]
    await running.start()
    try:
        assert await running.take(job_id, 1, claim=True) == Taken()
        assert len(running) == 1
    finally:
        await running.drop(job_id, 1)
        await running.stop()


async def test_the_heartbeat_leaves_a_claim_on_its_way_alone(backends: Backends) -> None:
    # Heartbeats every 100 ms, claims that take 750 ms: were the heartbeat to write a claim on
    # its way, it would take over the other worker's lease, and the copy would run. (A lease of
    # 60 ms expired once while the machine was busy: a stall, not the heartbeat's doing.)
    theirs = RunningAttempts(backends.kv, "worker-b", lease_seconds=0.3)
    ours = RunningAttempts(backends.kv, "worker-a", lease_seconds=0.3)
    write = ours._kv.claim_many_and_get

    async def slow(claims: dict[str, bytes], **rest: Any) -> Any:
        await asyncio.sleep(0.75)
        return await write(claims, **rest)

    await theirs.start()
    job_id = uuid4()
    assert await theirs.take(job_id, 1, claim=True) == Taken()
    ours._kv = _Slowed(ours._kv, slow)
    await ours.start()
    try:
        assert await ours.take(job_id, 1, claim=True) == Taken(copy=True)
        assert (await backends.kv.get(lease_key(job_id, 1)) or b"").startswith(b"worker-b/")
    finally:
        await theirs.drop(job_id, 1)
        await ours.stop()
        await theirs.stop()


class _Slowed:
    """The store, with its claims slowed down."""

    def __init__(self, kv: Any, claim: Any) -> None:
        self._kv, self.claim_many_and_get = kv, claim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)


async def test_an_attempt_handed_out_again_is_taken_from_a_worker_that_renewed_it(
    backends: Backends,
) -> None:
    # Its lease lapsed (the worker stalled), the scheduler marked it lost and handed it out
    # again, and the stalled worker's heartbeat wrote the lease back: the new delivery runs.
    stalled = RunningAttempts(backends.kv, "worker-b", lease_seconds=15)
    ours = RunningAttempts(backends.kv, "worker-a", lease_seconds=15)
    await stalled.start()
    await ours.start()
    job_id = uuid4()
    try:
        assert await stalled.take(job_id, 1, claim=True) == Taken()
        await backends.kv.set(lost_key(job_id, 1), b"1", ttl=60)
        assert await ours.take(job_id, 1, claim=True) == Taken(lost_before=True)
        assert (await backends.kv.get(lease_key(job_id, 1)) or b"").startswith(b"worker-a/")
    finally:
        await stalled.drop(job_id, 1)
        await ours.drop(job_id, 1)
        await stalled.stop()
        await ours.stop()


async def test_an_attempt_handed_out_again_to_the_worker_still_running_it_runs_again(
    backends: Backends,
) -> None:
    # Its lease lapsed while this worker stalled, the scheduler handed it out again, and the
    # delivery came back here: not a copy (the job is PENDING again, nothing else would run it).
    running = RunningAttempts(backends.kv, "worker-a", lease_seconds=15)
    await running.start()
    job_id = uuid4()
    try:
        assert await running.take(job_id, 1, claim=True) == Taken()
        assert await running.take(job_id, 1, claim=True) == Taken(copy=True)
        await backends.kv.set(lost_key(job_id, 1), b"1", ttl=60)
        assert await running.take(job_id, 1, claim=True) == Taken(lost_before=True)
    finally:
        await running.drop(job_id, 1)
        await running.stop()


async def test_a_requeued_marker_is_left_only_over_the_workers_own_lease(
    backends: Backends,
) -> None:
    ours = RunningAttempts(backends.kv, "worker-a", lease_seconds=15)
    theirs = RunningAttempts(backends.kv, "worker-b", lease_seconds=15)
    put_back, taken_over = uuid4(), uuid4()
    await ours.start()
    await theirs.start()
    try:
        assert await ours.take(put_back, 1, claim=True) == Taken()
        await ours.drop(put_back, 1, marker=REQUEUED)
        assert await backends.kv.get(lease_key(put_back, 1)) == REQUEUED
        # The copy was taken by another worker before the marker was written: its lease stays.
        assert await ours.take(taken_over, 1, claim=True) == Taken()
        assert await theirs.take(taken_over, 1, claim=False) == Taken()
        await ours.drop(taken_over, 1, marker=REQUEUED)
        lease = await backends.kv.get(lease_key(taken_over, 1))
        assert lease is not None and lease.startswith(b"worker-b/")
    finally:
        await theirs.drop(taken_over, 1)
        await backends.kv.delete(lease_key(put_back, 1))
        await ours.stop()
        await theirs.stop()


@pytest.mark.parametrize("together", [False, True], ids=["in_turn", "together"])
async def test_a_copy_of_an_attempt_handed_out_again_is_a_copy(
    backends: Backends, together: bool
) -> None:
    # The scheduler marked the attempt lost and handed it out again; the hand-out message
    # was published twice (the outbox relay), and each copy reaches a worker.
    a = RunningAttempts(backends.kv, "worker-a", lease_seconds=15)
    b = RunningAttempts(backends.kv, "worker-b", lease_seconds=15)
    job_id = uuid4()
    await a.start()
    await b.start()
    try:
        await backends.kv.set(lost_key(job_id, 1), b"1", ttl=60)
        if together:
            taken = await asyncio.gather(
                a.take(job_id, 1, claim=True), b.take(job_id, 1, claim=True)
            )
        else:
            taken = [await a.take(job_id, 1, claim=True), await b.take(job_id, 1, claim=True)]
        assert sorted(taken, key=lambda t: t.copy) == [Taken(lost_before=True), Taken(copy=True)]
        runner = "worker-a/" if taken[0] == Taken(lost_before=True) else "worker-b/"
        lease = await backends.kv.get(lease_key(job_id, 1))
        assert lease is not None and lease.startswith(runner.encode())
    finally:
        await a.drop(job_id, 1)
        await b.drop(job_id, 1)
        await a.stop()
        await b.stop()


async def test_a_cancel_reaches_every_run_of_the_job_however_many_ended(
    backends: Backends,
) -> None:
    # A run that ignored its timeout goes on beside the next attempt, in the same worker.
    running = RunningAttempts(backends.kv, "test-worker", lease_seconds=15)
    await running.start()
    job_id = uuid4()
    loop = asyncio.get_running_loop()
    stray, ended, current = loop.create_future(), loop.create_future(), loop.create_future()
    try:
        running.track(job_id, 1, stray)
        running.track(job_id, 2, ended)
        running.untrack(ended)  # the second attempt's run ended; the third runs
        running.track(job_id, 3, current)
        await backends.kv.publish(CANCEL_CHANNEL, str(job_id).encode())

        async def both_cancelled() -> bool:
            return stray.cancelled() and current.cancelled()

        await eventually(both_cancelled)
        assert not ended.cancelled()
    finally:
        await running.stop()


class _SlowRenewals(MemoryKV):
    """The in-process store, its heartbeat writes taking 0.2 s to land, as on a busy Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.renewing = asyncio.Event()

    async def set_many(self, items: dict[str, bytes], *, ttl: float) -> None:
        self.renewing.set()
        await asyncio.sleep(0.2)
        await super().set_many(items, ttl=ttl)


async def test_a_requeued_marker_is_not_overwritten_by_a_renewal_already_on_its_way() -> None:
    kv = _SlowRenewals()
    running = RunningAttempts(kv, "worker-a", lease_seconds=0.3)  # a renewal every 0.1 s
    job_id = uuid4()
    await kv.start()
    await running.start()
    try:
        assert await running.take(job_id, 1, claim=True) == Taken()
        kv.renewing.clear()
        await kv.renewing.wait()  # a renewal of its lease is on its way
        await running.drop(job_id, 1, marker=REQUEUED)
        await asyncio.sleep(0.3)  # that renewal has landed; no other writes the lease
        assert await kv.get(lease_key(job_id, 1)) == REQUEUED
    finally:
        await running.stop()
        await kv.close()


async def test_a_pending_job_is_cancelled_at_once_even_if_a_worker_ran_it_that_moment(
    stack: Stack, handlers: Handlers
) -> None:
    # A short job sends no jobs.started: until its report is written it reads PENDING, though
    # it ran. The results-processor is away, so the report waits. The cancel answered PENDING
    # (the report would decide) and the job then COMPLETED: the contract's PENDING job becomes
    # CANCELLED, and a finished job never changes again.
    await stack.results.stop()
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="never", payload={"n": 1})

    async def reported() -> bool:
        return (await stack.backends.broker.stats(JOBS_COMPLETED)).messages == 1

    await eventually(reported)
    assert handlers.never_calls == 1
    answered = await _cancel(stack, token, job["id"])
    assert answered["status"] == "CANCELLED"
    assert answered["finishedAt"] is not None
    results = ResultsService(stack.settings, db=stack.backends.db, broker=stack.backends.broker)
    await results.start()
    try:
        await eventually(lambda: _ignored_completions(results, 1))
    finally:
        await results.stop()
    done = await stack.client.get_job(token, job["id"])
    assert (done["status"], done["result"], done["attempts"]) == ("CANCELLED", None, 0)
    assert handlers.never_calls == 1


async def _ignored_completions(results: ResultsService, count: int) -> bool:
    name = "cloudtask_results_events_total"
    return metric(results.metrics.registry, name, kind="completed", outcome="ignored") >= count


async def test_a_copy_of_a_hand_out_reaching_the_worker_running_it_leaves_its_lease_alone(
    backends: Backends,
) -> None:
    running = RunningAttempts(backends.kv, "worker-a", lease_seconds=15)
    job_id = uuid4()
    await running.start()
    try:
        await backends.kv.set(lost_key(job_id, 1), b"1", ttl=60)
        assert await running.take(job_id, 1, claim=True) == Taken(lost_before=True)
        lease = await backends.kv.get(lease_key(job_id, 1))
        assert await running.take(job_id, 1, claim=True) == Taken(copy=True)
        assert len(running) == 1  # still renewed by the heartbeat
        assert await backends.kv.get(lease_key(job_id, 1)) == lease
    finally:
        await running.drop(job_id, 1)
        await running.stop()


class _SlowMarkers(MemoryKV):
    """The in-process store, each claim taking 0.1 s, counting how many are on their way at once."""

    def __init__(self) -> None:
        super().__init__()
        self.at_once = self.most_at_once = 0

    async def claim_many_and_get(self, claims: Any, **rest: Any) -> Any:
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        try:
            await asyncio.sleep(0.1)
            return await super().claim_many_and_get(claims, **rest)
        finally:
            self.at_once -= 1


async def test_a_stopping_worker_leaves_its_requeued_markers_side_by_side() -> None:
    kv = _SlowMarkers()
    running = RunningAttempts(kv, "worker-a", lease_seconds=15)
    jobs = [uuid4() for _ in range(8)]
    await kv.start()
    await running.start()
    try:
        for job_id in jobs:
            assert await running.take(job_id, 1, claim=True) == Taken()
        kv.most_at_once = 0
        await asyncio.gather(*(running.drop(job_id, 1, marker=REQUEUED) for job_id in jobs))
        assert kv.most_at_once == len(jobs)  # not one after the other
        assert await kv.get_many([lease_key(job_id, 1) for job_id in jobs]) == [REQUEUED] * 8
    finally:
        await running.stop()
        await kv.close()
