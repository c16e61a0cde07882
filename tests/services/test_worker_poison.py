"""An attempt whose deliveries keep ending without a report (it kills its worker) is failed and
dead-lettered by the worker once given a slot ``MAX_DELIVERIES`` times; a delivery that merely
went back to the queue is never counted (``test_worker_priority``)."""

import uuid

from cloudtask.broker.memory import MemoryBroker
from cloudtask.contracts.messages import JobCreated, JobFinished
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_CREATED, JOBS_DEAD
from cloudtask.contracts.timefmt import utcnow
from cloudtask.settings import Settings
from cloudtask.worker.handlers import builtin_handlers
from cloudtask.worker.service import WorkerService
from tests.conftest import Backends
from tests.helpers import eventually


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
