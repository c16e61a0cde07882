"""A delivery lost with its channel (the worker's connection to RabbitMQ went) is handed out
again, redelivered, while the worker that lost it may still run the attempt. That worker says so
in the attempt's lease, and the redelivery waits for its report rather than run the attempt a
second time; a delivery lost before its attempt started is left to its redelivery."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID, uuid4

import pytest

from cloudtask.broker.base import Delivery
from cloudtask.broker.memory import MemoryDelivery
from cloudtask.broker.rabbitmq import RabbitDelivery
from cloudtask.contracts.messages import JobCreated
from cloudtask.contracts.queues import JOBS_CREATED
from cloudtask.contracts.signals import HELD_ANNOUNCED, HELD_CUT, REQUEUED, lease_key, reported_key
from cloudtask.errors import BrokerUnavailable
from cloudtask.settings import Settings
from cloudtask.worker import cuts, pipeline, reporting
from cloudtask.worker.pipeline import Pipeline
from cloudtask.worker.registry import HandlerRegistry
from cloudtask.worker.service import WorkerService
from tests.helpers import eventually, wait_for_status
from tests.services.conftest import Stack
from tests.services.support import HeldHandlers, job_message, metric, registry_of, wait_for_metric

COPIES = "cloudtask_worker_copies_skipped_total"


class _Redelivered(Delivery):
    """A redelivery in hand, on a channel that stays open (for ``Cuts.held_elsewhere`` alone)."""

    body = b""
    headers: dict[str, Any] = {}
    priority = 0
    redelivered = True

    async def ack(self) -> None:
        pass

    async def reject(self, *, requeue: bool) -> None:
        pass


_DELIVERY = _Redelivered()


class _LostToo(_Redelivered):
    """A redelivery whose own channel closed while it waited."""

    @property
    def lost(self) -> bool:
        return True


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"worker_concurrency": 1})


@pytest.fixture
def handlers() -> HeldHandlers:
    return HeldHandlers()


@pytest.fixture
def stack_handlers(handlers: HeldHandlers) -> HandlerRegistry:
    return registry_of(handlers, "held")


def _lost_with_its_channel(monkeypatch: pytest.MonkeyPatch, *deliveries: Delivery) -> None:
    """Make ``deliveries`` say their channel closed, as a lost connection does."""
    lost = set(map(id, deliveries))
    for cls in (MemoryDelivery, RabbitDelivery):
        monkeypatch.setattr(
            cls, "lost", property(lambda delivery: id(delivery) in lost), raising=False
        )


async def test_a_delivery_lost_with_its_connection_comes_back_and_waits_for_the_report(
    stack: Stack, handlers: HeldHandlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection goes while the job runs, before its delivery was acknowledged: RabbitMQ
    # hands the delivery out again, redelivered, and the worker that lost it still runs it. It
    # ran a second time before; now the worker says in the lease that it holds the attempt, and
    # the redelivery waits for its report.
    registry = stack.worker.metrics.registry
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="held", payload={"n": 4})
    await asyncio.wait_for(handlers.started.wait(), 10)
    [(delivery, _, _)] = stack.worker.pipeline.cuts.held.values()
    _lost_with_its_channel(monkeypatch, delivery)
    await delivery.reject(requeue=True)  # what RabbitMQ does with a lost channel's deliveries
    stack.worker.pipeline.cuts.connection_lost()
    await _redelivered_and_waiting(stack)
    assert handlers.calls == 1
    handlers.release.set()
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    await wait_for_metric(registry, COPIES, 1)
    assert (done["result"], done["attempts"], handlers.calls) == ({"n": 4}, 1, 1)
    assert await stack.backends.broker.get(JOBS_CREATED) is None


def _first_ack_of_a_job(monkeypatch: pytest.MonkeyPatch, *, fails: bool) -> list[Delivery]:
    """The worker's first ack of a job's delivery never reaches the broker: it seems sent (one
    written just before the connection went) or, if it ``fails``, raises (on a channel that
    closed after the job's jobs.started was confirmed); returns where that delivery will be."""
    caught: list[Delivery] = []
    for cls in (MemoryDelivery, RabbitDelivery):

        def intercepted(ack: Callable[[Delivery], Awaitable[None]]) -> Any:
            async def first_not_sent(delivery: Delivery) -> None:
                if caught or b'"userId"' not in delivery.body:  # the results-processor's go on
                    await ack(delivery)
                    return
                caught.append(delivery)
                if fails:
                    raise BrokerUnavailable("could not acknowledge: the channel closed")

            return first_not_sent

        monkeypatch.setattr(cls, "ack", intercepted(cls.ack))
    return caught


@contextlib.asynccontextmanager
async def _another_worker(stack: Stack, handlers: HeldHandlers) -> AsyncIterator[WorkerService]:
    """A second worker on the stack's back ends, after the stack's own was stopped."""
    worker = WorkerService(
        stack.settings,
        broker=stack.backends.broker,
        kv=stack.backends.kv,
        handlers=registry_of(handlers, "held"),
        worker_id="second-worker",
    )
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(grace=1)


def _cut(monkeypatch: pytest.MonkeyPatch, stack: Stack, delivery: Delivery) -> Awaitable[None]:
    """The connection ``delivery`` came on goes: the broker hands it out again, and the worker
    hears of the loss."""
    _lost_with_its_channel(monkeypatch, delivery)
    requeued = delivery.reject(requeue=True)  # what RabbitMQ does with a lost channel's
    stack.worker.pipeline.cuts.connection_lost()
    return requeued


async def _running_then_cut(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, n: int, *, ack_fails: bool
) -> tuple[str, dict[str, Any]]:
    """A held job ``n``, RUNNING once its first ack went out unheard (or failed, if
    ``ack_fails``), then cut off: its user's token and the job."""
    acked = _first_ack_of_a_job(monkeypatch, fails=ack_fails)
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="held", payload={"n": n})
    await wait_for_status(stack.client, token, job["id"], "RUNNING")
    [delivery] = acked
    await _cut(monkeypatch, stack, delivery)
    return token, job


async def test_an_attempt_whose_ack_was_lost_just_after_it_ended_is_a_copy_when_redelivered(
    stack: Stack, handlers: HeldHandlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Reported and acknowledged, the connection went before RabbitMQ had the ack: the attempt
    # was no longer held, its lease said nothing, and the redelivery ran it again.
    handlers.release.set()
    sent = _first_ack_of_a_job(monkeypatch, fails=False)
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="held", payload={"n": 6})
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    [delivery] = sent
    await _cut(monkeypatch, stack, delivery)
    await wait_for_metric(stack.worker.metrics.registry, COPIES, 1)
    assert (done["attempts"], handlers.calls) == (1, 1)
    assert await stack.backends.broker.get(JOBS_CREATED) is None


async def test_an_attempt_cut_off_then_put_back_by_a_stopping_worker_runs_once_more(
    stack: Stack, handlers: HeldHandlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stopping worker put the attempt back with a copy, while its delivery, lost with the
    # connection, was back in the queue too: both ran.
    monkeypatch.setattr(pipeline, "ANNOUNCE_AFTER", 60)
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="held", payload={"n": 7})
    await asyncio.wait_for(handlers.started.wait(), 10)
    [(delivery, _, _)] = stack.worker.pipeline.cuts.held.values()
    await _cut(monkeypatch, stack, delivery)
    await _redelivered_and_waiting(stack)
    await stack.worker.stop(grace=0.1)  # the running attempt is put back
    assert (await stack.backends.broker.stats(JOBS_CREATED)).messages == 1
    lease = await stack.backends.kv.get(lease_key(UUID(job["id"]), 1))
    assert lease == REQUEUED
    handlers.release.set()
    async with _another_worker(stack, handlers):
        done = await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    assert (done["result"], handlers.calls) == ({"n": 7}, 2)  # cut short once, then run


async def test_an_announced_attempt_whose_ack_was_lost_is_a_copy_when_redelivered(
    stack: Stack, handlers: HeldHandlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job was announced (RUNNING: the scheduler watches its lease from then on) and its ack
    # sent, but the connection went before RabbitMQ had the ack: the redelivery is a copy at
    # once, while the attempt still runs where it was.
    token, job = await _running_then_cut(stack, monkeypatch, 5, ack_fails=False)
    await wait_for_metric(stack.worker.metrics.registry, COPIES, 1)
    assert handlers.calls == 1
    assert not handlers.release.is_set()  # still running where it was
    handlers.release.set()
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    assert (done["result"], done["attempts"], handlers.calls) == ({"n": 5}, 1, 1)


async def _redelivered_and_waiting(stack: Stack) -> None:
    """Until the message handed out again was taken from the queue, then past the grace in
    which a redelivery would take over a lease whose holder says nothing."""
    for _ in range(100):
        if (await stack.backends.broker.stats(JOBS_CREATED)).messages == 0:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(2 * cuts.HOLDER_GRACE)


def _job(job_id: UUID) -> JobCreated:
    """A ``jobs.created`` message's contents, for the store's side of a redelivery."""
    return JobCreated.model_validate_json(
        job_message(
            {
                "id": str(job_id),
                "type": "held",
                "payload": None,
                "priority": 5,
                "timeoutSeconds": 60,
            }
        )
    )


@pytest.mark.parametrize(
    ("lease", "reported", "held"),
    [
        (None, False, False),  # nobody holds it: it runs
        (REQUEUED, False, False),  # put back on the queue by a stopping worker
        (b"gone/1", False, False),  # a holder that says nothing: dead, its lease not yet expired
        (b"other/1" + HELD_ANNOUNCED, False, True),  # RUNNING and watched by the scheduler
        (b"other/1", True, True),  # reported before the ack could be sent
    ],
)
async def test_what_a_redelivery_finds_in_the_store_decides_whether_it_runs(
    stack: Stack, lease: bytes | None, reported: bool, held: bool
) -> None:
    job = _job(uuid4())
    kv = stack.backends.kv
    if lease is not None:
        await kv.set(lease_key(job.job_id, job.attempt), lease, ttl=60)
    if reported:
        await kv.set(reported_key(job.job_id, job.attempt), b"1", ttl=60)
    assert await stack.worker.pipeline.cuts.held_elsewhere(_DELIVERY, job) is held


async def test_a_redelivery_waits_no_longer_than_the_attempt_could_run_and_report(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lease left saying HELD_CUT (its holder's bug, say) kept every redelivery waiting.
    monkeypatch.setattr(reporting, "PUBLISH_LIMIT", 0.5)
    monkeypatch.setattr(stack.worker.pipeline.deps.running, "lease_seconds", 0.5)
    job = _job(uuid4()).model_copy(update={"timeout_seconds": 1})
    await stack.backends.kv.set(lease_key(job.job_id, 1), b"other/1" + HELD_CUT, ttl=60)
    held = stack.worker.pipeline.cuts.held_elsewhere(_DELIVERY, job)
    assert await asyncio.wait_for(held, 10) is False


async def test_a_redelivery_stops_waiting_once_its_own_delivery_is_lost(stack: Stack) -> None:
    # It waited on, then acknowledged a delivery it could not, counted as a copy beside its
    # own next redelivery.
    job = _job(uuid4())
    await stack.backends.kv.set(lease_key(job.job_id, 1), b"other/1" + HELD_CUT, ttl=60)
    held = stack.worker.pipeline.cuts.held_elsewhere(_LostToo(), job)
    assert await asyncio.wait_for(held, 2) is False


async def test_a_confirmed_attempt_whose_ack_failed_is_marked_announced_when_cut(
    stack: Stack, handlers: HeldHandlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Marked #cut (by the failed ack), its redelivery waited for the whole run, though the job
    # is RUNNING and the scheduler watches its lease.
    token, job = await _running_then_cut(stack, monkeypatch, 8, ack_fails=True)
    await wait_for_metric(stack.worker.metrics.registry, COPIES, 1)
    lease = await stack.backends.kv.get(lease_key(UUID(job["id"]), 1))
    assert lease is not None and lease.endswith(HELD_ANNOUNCED)
    assert handlers.calls == 1
    handlers.release.set()
    await wait_for_status(stack.client, token, job["id"], "COMPLETED")


async def test_a_confirmed_attempt_cut_off_then_put_back_runs_once_more(
    stack: Stack, handlers: HeldHandlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its redelivery, back in the queue when the stopping worker put the attempt back with a
    # copy, found the requeued marker and ran beside the copy.
    token, job = await _running_then_cut(stack, monkeypatch, 9, ack_fails=True)
    await stack.worker.stop(grace=0.1)  # hands its redelivery back, and puts the attempt back
    lease = await stack.backends.kv.get(lease_key(UUID(job["id"]), 1))
    assert lease == REQUEUED + HELD_ANNOUNCED
    handlers.release.set()
    async with _another_worker(stack, handlers) as worker:
        done = await wait_for_status(stack.client, token, job["id"], "COMPLETED")
        await wait_for_metric(worker.metrics.registry, COPIES, 1)
    assert (done["result"], handlers.calls) == ({"n": 9}, 2)  # cut short once, then run


async def test_a_redelivery_waits_while_the_holder_says_it_runs_the_attempt(stack: Stack) -> None:
    pipe, kv = stack.worker.pipeline, stack.backends.kv
    reported, died = _job(uuid4()), _job(uuid4())
    for job in (reported, died):
        await kv.set(lease_key(job.job_id, 1), b"other/1" + HELD_CUT, ttl=60)
    waiting = asyncio.create_task(pipe.cuts.held_elsewhere(_DELIVERY, reported))
    await asyncio.sleep(3 * cuts.HELD_POLL)
    assert not waiting.done()
    await kv.set(reported_key(reported.job_id, 1), b"1", ttl=60)
    assert await asyncio.wait_for(waiting, 5) is True
    # The holder died: its lease expires, and the redelivery runs the attempt.
    await kv.set(lease_key(died.job_id, 1), b"other/1" + HELD_CUT, ttl=1)
    assert await asyncio.wait_for(pipe.cuts.held_elsewhere(_DELIVERY, died), 5) is False


async def test_a_delivery_lost_while_it_waited_for_a_slot_is_left_to_its_redelivery(
    stack: Stack, handlers: HeldHandlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It ran when it got its slot, and so did its redelivery: twice.
    monkeypatch.setattr(pipeline, "WAIT_LIMIT", 60)  # not sent back for waiting meanwhile
    seen: list[Delivery] = []
    call = Pipeline.__call__

    async def recording(self: Pipeline, delivery: Delivery) -> None:
        seen.append(delivery)
        await call(self, delivery)

    monkeypatch.setattr(Pipeline, "__call__", recording)
    token = await stack.client.register()
    first = await stack.client.create_job(token, type="held", payload={"n": 1})
    await asyncio.wait_for(handlers.started.wait(), 10)
    second = await stack.client.create_job(token, type="held", payload={"n": 2})
    await eventually(lambda: _at_least(seen, 2))
    _lost_with_its_channel(monkeypatch, seen[1])
    await seen[1].reject(requeue=True)  # what RabbitMQ does with a lost channel's deliveries
    await eventually(lambda: _at_least(seen, 3))  # handed out again; it waits for the slot too
    handlers.release.set()
    for job in (first, second):
        done = await wait_for_status(stack.client, token, job["id"], "COMPLETED")
        assert (done["result"], done["attempts"]) == (job["payload"], 1)
    assert handlers.calls == 2
    registry = stack.worker.metrics.registry
    assert metric(registry, "cloudtask_worker_deliveries_given_back_total", reason="lost") == 1


async def _at_least(seen: list[Delivery], count: int) -> bool:
    return len(seen) >= count
