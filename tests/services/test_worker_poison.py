"""An attempt whose deliveries keep ending without a report (it kills its worker) is failed and
dead-lettered by the worker once given a slot ``MAX_DELIVERIES`` times; a delivery that merely
went back to the queue is never counted (``test_worker_priority``). An attempt lost with its
worker before runs alone, so that the jobs beside it are not counted with it
(``tests/e2e/test_pipeline.py`` kills real workers)."""

import asyncio
import uuid
from typing import Any

import pytest

from cloudtask.broker.grouping import GroupedPublisher
from cloudtask.broker.memory import MemoryBroker
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.contracts.messages import JobCreated, JobFinished
from cloudtask.contracts.queues import ALL_QUEUES, JOBS_COMPLETED, JOBS_CREATED, JOBS_DEAD
from cloudtask.contracts.timefmt import utcnow
from cloudtask.kv.memory import MemoryKV
from cloudtask.settings import Settings
from cloudtask.worker.handlers import builtin_handlers
from cloudtask.worker.service import WorkerService
from tests.careless_peer import publish_carelessly
from tests.conftest import Backends
from tests.helpers import eventually
from tests.services.support import registry_of


async def test_an_attempt_delivered_max_deliveries_times_is_failed_and_dead_lettered(
    backends: Backends, settings: Settings
) -> None:
    broker = MemoryBroker()  # a delivery taken and rejected here comes back redelivered
    await broker.start()
    job = JobCreated(
        job_id=uuid.uuid4(), user_id=uuid.uuid4(), type="echo", payload=1, enqueued_at=utcnow()
    )
    await broker.publish(JOBS_CREATED, job.encode())
    first = await broker.get(JOBS_CREATED)
    assert first is not None
    await first.reject(requeue=True)  # as when its worker died: the next one is redelivered
    # Two deliveries given a slot before this one, without a report.
    for _ in range(2):
        await backends.kv.incr(f"cloudtask:deliveries:{job.job_id}:1", ttl=60)
    limited = settings.model_copy(update={"max_deliveries": 3})
    worker = WorkerService(
        limited, broker=broker, kv=backends.kv, handlers=builtin_handlers(limited)
    )
    await worker.start()
    try:
        finished = await eventually(lambda: broker.get(JOBS_COMPLETED), timeout=10)
        dead = await eventually(lambda: broker.get(JOBS_DEAD), timeout=10)
    finally:
        await worker.stop(grace=1)
        await broker.close()
    event = JobFinished.model_validate_json(finished.body)
    assert (event.job_id, event.status) == (job.job_id, "FAILED")
    assert event.error == "delivered 3 times without finishing"
    assert dead.body == job.encode()
    assert dead.headers["x-death-reason"] == event.error


class Overlaps:
    """A handler that notes how many attempts ran at once while each ran."""

    def __init__(self) -> None:
        self.running = 0
        self.most: dict[str, int] = {}

    async def hold(self, payload: Any) -> Any:
        self.running += 1
        try:
            self.most[payload] = self.running
            await asyncio.sleep(0.2)
            self.most[payload] = max(self.most[payload], self.running)
        finally:
            self.running -= 1
        return payload


async def test_attempts_lost_with_their_worker_before_run_alone(
    backends: Backends, settings: Settings
) -> None:
    broker = MemoryBroker()
    await broker.start()
    names = ["fresh-1", "fresh-2", "lost-1", "lost-2"]
    jobs = {
        name: JobCreated(
            job_id=uuid.uuid4(),
            user_id=uuid.uuid4(),
            type="hold",
            payload=name,
            enqueued_at=utcnow(),
        )
        for name in names
    }
    for job in jobs.values():
        await broker.publish(JOBS_CREATED, job.encode())
    taken = [await broker.get(JOBS_CREATED) for _ in names]
    for delivery in taken:  # each comes back redelivered, as from a worker that died
        assert delivery is not None
        await delivery.reject(requeue=True)
    for name in ("lost-1", "lost-2"):  # and these were given a slot once more, and lost again
        await backends.kv.incr(f"cloudtask:deliveries:{jobs[name].job_id}:1", ttl=60)
    overlaps = Overlaps()
    worker = WorkerService(
        settings.model_copy(update={"worker_concurrency": 4}),
        broker=broker,
        kv=backends.kv,
        handlers=registry_of(overlaps, "hold"),
    )
    await worker.start()
    finished: list[JobFinished] = []

    async def all_finished() -> bool:
        while (delivery := await broker.get(JOBS_COMPLETED)) is not None:
            finished.append(JobFinished.model_validate_json(delivery.body))
            await delivery.ack()
        return len(finished) == len(names)

    try:
        await eventually(all_finished, timeout=10)
    finally:
        await worker.stop(grace=1)
        await broker.close()
    assert sorted((event.result, event.status) for event in finished) == [
        (name, "COMPLETED") for name in sorted(names)
    ]
    # Each lost one ran with no other beside it; the fresh ones may run together (whether they
    # did depends on the order the deliveries reached the gate).
    assert (overlaps.most["lost-1"], overlaps.most["lost-2"]) == (1, 1)


async def test_jobs_a_careless_peer_published_run_and_so_do_the_ones_behind_them(
    rabbit_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A header name that is not UTF-8 once stopped every worker on jobs.created for good.
    careless, behind = (
        JobCreated(
            job_id=uuid.uuid4(), user_id=uuid.uuid4(), type="echo", payload=n, enqueued_at=utcnow()
        )
        for n in (1, 2)
    )
    broker = RabbitMQBroker(rabbit_url)
    await broker.start()
    await broker.wait_connected(10)
    for queue in ALL_QUEUES:
        await broker.purge(queue)
    await publish_carelessly(monkeypatch, rabbit_url, JOBS_CREATED, [careless.encode()])
    await broker.publish(JOBS_CREATED, behind.encode())
    worker = WorkerService(
        settings, broker=broker, kv=MemoryKV(), handlers=builtin_handlers(settings)
    )
    await worker.start()
    reports: list[JobFinished] = []

    async def both_reported() -> bool:
        while (delivery := await broker.get(JOBS_COMPLETED)) is not None:
            reports.append(JobFinished.model_validate_json(delivery.body))
            await delivery.ack()
        return len(reports) >= 2

    try:
        await eventually(both_reported, timeout=10)
    finally:
        await worker.stop(grace=1)
        await broker.close()
    assert {(report.job_id, report.status, report.result) for report in reports} == {
        (careless.job_id, "COMPLETED", 1),
        (behind.job_id, "COMPLETED", 2),
    }


class Steps:
    """A handler noting the order attempts began in."""

    def __init__(self) -> None:
        self.began: list[str] = []

    async def step(self, payload: Any) -> Any:
        self.began.append(payload)
        return payload


async def test_an_attempt_waiting_to_run_alone_waits_for_the_reports_of_those_beside_it(
    backends: Backends, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It was let in once their handlers ended: a worker it then killed took their reports,
    # still on their way, down with it, and each was counted once more (a job that ran beside
    # a poison was failed as "delivered 3 times without finishing").
    broker = MemoryBroker()
    await broker.start()
    beside, lost = (
        JobCreated(
            job_id=uuid.uuid4(),
            user_id=uuid.uuid4(),
            type="step",
            payload=name,
            priority=priority,
            enqueued_at=utcnow(),
        )
        for name, priority in (("beside", 9), ("lost", 0))
    )
    await broker.publish(JOBS_CREATED, lost.encode(), priority=0)
    taken = await broker.get(JOBS_CREATED)
    assert taken is not None
    await taken.reject(requeue=True)  # redelivered, as from a worker that died
    await backends.kv.incr(f"cloudtask:deliveries:{lost.job_id}:1", ttl=60)  # and lost again
    await broker.publish(JOBS_CREATED, beside.encode(), priority=9)  # delivered first
    report_held = asyncio.Event()
    publish = GroupedPublisher.publish

    async def holding_besides_report(
        self: GroupedPublisher, queue: str, body: bytes, *, priority: int = 0
    ) -> None:
        if queue == JOBS_COMPLETED and b'"beside"' in body:
            await report_held.wait()
        await publish(self, queue, body, priority=priority)

    monkeypatch.setattr(GroupedPublisher, "publish", holding_besides_report)
    steps = Steps()
    worker = WorkerService(
        settings, broker=broker, kv=backends.kv, handlers=registry_of(steps, "step")
    )
    await worker.start()
    try:
        await eventually(lambda: _began(steps, "beside"))
        await asyncio.sleep(0.5)  # its handler ended long since; its report waits
        assert steps.began == ["beside"]
        report_held.set()
        await eventually(lambda: _began(steps, "lost"))
    finally:
        await worker.stop(grace=1)
        await broker.close()
    assert steps.began == ["beside", "lost"]


async def _began(steps: Steps, name: str) -> bool:
    return name in steps.began
