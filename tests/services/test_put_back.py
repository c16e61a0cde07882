"""An attempt a stopping worker put back on the queue, run again in full by another worker."""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from cloudtask.scheduler import service as scheduler_service
from cloudtask.settings import Settings
from cloudtask.worker.registry import HandlerRegistry
from tests.helpers import wait_for_status
from tests.services.conftest import Stack
from tests.services.support import finished_by_a_second_worker, wait_for_metric

TIMEOUT = 4  # the job's timeoutSeconds
RUN = 3.0  # each run of its handler: well inside the timeout
PUT_BACK_AFTER = 2.0  # the first run is cut off then, its worker stopping


class Handlers:
    def __init__(self) -> None:
        self.started: list[float] = []
        self.returned: list[float] = []
        self.as_it_returns: Callable[[], None] = lambda: None
        self.loop: asyncio.AbstractEventLoop | None = None  # the test's, once it runs

    async def quick(self, payload: Any) -> str:
        self.started.append(time.monotonic())
        # Runs once the handler has returned, before the worker took in its outcome.
        asyncio.get_running_loop().call_soon(self.as_it_returns)
        return "done"

    def quick_in_a_thread(self, payload: Any) -> str:
        self.started.append(time.monotonic())
        # On the loop, ahead of the handler's result, which reaches it the same way.
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self._once_returned)
        return "done"

    def _once_returned(self) -> None:
        # Holding the loop a moment: on a busy machine the thread may not have returned yet
        # when the loop runs this, and a handler still running is put back, rightly.
        time.sleep(0.2)
        self.as_it_returns()

    async def slow(self, payload: Any) -> str:
        self.started.append(time.monotonic())
        await asyncio.sleep(RUN)
        self.returned.append(time.monotonic())
        return "done"


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def stack_handlers(handlers: Handlers) -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register("slow", handlers.slow)
    registry.register("quick", handlers.quick)
    registry.register("quick-in-a-thread", handlers.quick_in_a_thread)
    return registry


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    # The scheduler judges an attempt hung TIMEOUT + 0.5 s after its start: before the second
    # run ends if counted from the first run's start.
    return settings.model_copy(
        update={
            "scheduler_poll_seconds": 0.1,
            "worker_lease_seconds": 3,
            "running_grace_seconds": 0.5,
        }
    )


async def test_an_attempt_put_back_has_its_whole_timeout_again_on_the_worker_that_reruns_it(
    stack: Stack,
    handlers: Handlers,
    stack_handlers: HandlerRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(scheduler_service, "RECOVERY_EVERY", 0.1)  # judged as soon as due
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="slow", timeoutSeconds=TIMEOUT, maxAttempts=1)
    first = await wait_for_status(stack.client, token, job["id"], "RUNNING")
    await asyncio.sleep(PUT_BACK_AFTER)
    await stack.worker.stop(grace=0)  # a rolling deploy: the running attempt is put back
    done = await finished_by_a_second_worker(stack, stack_handlers, token, job["id"])
    assert len(handlers.started) == 2 and len(handlers.returned) == 1
    assert (done["status"], done["attempts"], done["result"]) == ("COMPLETED", 1, "done")
    assert done["startedAt"] > first["startedAt"]  # the run that completed it


@pytest.mark.parametrize("job_type", ["quick", "quick-in-a-thread"])
async def test_an_attempt_whose_handler_returned_as_the_worker_stops_is_reported_not_put_back(
    stack: Stack, handlers: Handlers, job_type: str
) -> None:
    handlers.loop = asyncio.get_running_loop()
    handlers.as_it_returns = stack.worker.pipeline.requeue_running  # what stopping does
    token = await stack.client.register()
    job = await stack.client.create_job(token, type=job_type, maxAttempts=1)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert (done["status"], done["result"]) == ("COMPLETED", "done")
    assert len(handlers.started) == 1


async def test_an_attempt_reaching_its_handler_once_runs_are_put_back_is_put_back_too(
    stack: Stack, handlers: Handlers, stack_handlers: HandlerRegistry
) -> None:
    # Past its grace, a stopping worker puts its runs back; a delivery that was still taking its
    # lease then would start its handler only to be cut off as the worker exits.
    stack.worker.pipeline.requeue_running()
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="quick", maxAttempts=1)
    # Put back once; stopping, the worker takes no more (this one has not stopped receiving).
    await wait_for_metric(stack.worker.metrics.registry, "cloudtask_worker_jobs_requeued_total", 1)
    await stack.worker.stop(grace=0)
    assert handlers.started == []
    assert (await stack.client.get_job(token, job["id"]))["status"] == "PENDING"
    done = await finished_by_a_second_worker(stack, stack_handlers, token, job["id"])
    assert (done["status"], done["result"], done["attempts"]) == ("COMPLETED", "done", 1)
    assert len(handlers.started) == 1
