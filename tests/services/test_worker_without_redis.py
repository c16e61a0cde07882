"""A worker keeps running jobs while the key-value store is unreachable."""

import uuid
from collections.abc import AsyncIterator

import pytest

from cloudtask.broker.memory import MemoryBroker
from cloudtask.contracts.messages import JobCreated, JobFinished
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_CREATED
from cloudtask.contracts.timefmt import utcnow
from cloudtask.kv.redis import RedisKV
from cloudtask.settings import Settings
from cloudtask.worker.handlers import builtin_handlers
from cloudtask.worker.service import WorkerService
from tests.helpers import eventually


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    broker = MemoryBroker()
    await broker.start()
    yield broker
    await broker.close()


async def test_jobs_run_without_leases_while_redis_is_down(
    broker: MemoryBroker, settings: Settings
) -> None:
    down = RedisKV("redis://127.0.0.1:1/0", timeout=0.2)
    worker = WorkerService(settings, broker=broker, kv=down, handlers=builtin_handlers(settings))
    await worker.start()
    try:
        job = JobCreated(
            job_id=uuid.uuid4(),
            user_id=uuid.uuid4(),
            type="echo",
            payload=[1],
            enqueued_at=utcnow(),
        )
        await broker.publish(JOBS_CREATED, job.encode())
        finished = await eventually(lambda: broker.get(JOBS_COMPLETED), timeout=10)
        event = JobFinished.model_validate_json(finished.body)
        assert (event.job_id, event.status, event.result) == (job.job_id, "COMPLETED", [1])
        assert event.started_at <= event.finished_at
    finally:
        await worker.stop(grace=1)
        await down.close()
