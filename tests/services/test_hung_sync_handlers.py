"""Sync handlers left running past their timeout or cancel keep their threads, and the jobs after
them still run at once. The worker runs two jobs at a time here."""

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from cloudtask.settings import Settings
from cloudtask.worker.registry import HandlerRegistry
from tests.helpers import wait_for_status
from tests.services.conftest import Stack
from tests.services.support import registry_of, wait_for_metric

ABANDONED = "cloudtask_worker_abandoned_handlers_total"


class Handlers:
    def __init__(self) -> None:
        self.release = threading.Event()

    def hang(self, payload: Any) -> Any:
        self.release.wait(60)  # ignores its timeout and its cancel, as blocking code does
        return "released"

    def quick(self, payload: Any) -> Any:
        return {"ran": payload, "thread": threading.current_thread().name}


@pytest.fixture
def handlers() -> Iterator[Handlers]:
    handlers = Handlers()
    yield handlers
    handlers.release.set()


@pytest.fixture
def stack_handlers(handlers: Handlers) -> HandlerRegistry:
    return registry_of(handlers, "hang", "quick")


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"worker_concurrency": 2})


async def _quick_jobs_complete(stack: Stack, token: str) -> None:
    jobs = [
        await stack.client.create_job(token, type="quick", payload=n, timeoutSeconds=5)
        for n in range(4)
    ]
    for n, job in enumerate(jobs):
        done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
        assert (done["status"], done["result"]["ran"]) == ("COMPLETED", n), done


async def test_jobs_after_handlers_that_timed_out_and_hang_still_run(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    hung = [
        await stack.client.create_job(token, type="hang", timeoutSeconds=1, maxAttempts=1)
        for _ in range(2)
    ]
    for job in hung:
        done = await wait_for_status(stack.client, token, job["id"], "FAILED")
        assert done["error"] == "timed out after 1 second"
    # Both threads still block; a pool of two would keep these waiting until they time out.
    await _quick_jobs_complete(stack, token)
    await wait_for_metric(stack.worker.metrics.registry, ABANDONED, 2)
    assert not handlers.release.is_set()


async def test_jobs_after_cancelled_handlers_that_hang_still_run(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    hung = [await stack.client.create_job(token, type="hang", maxAttempts=1) for _ in range(2)]
    for job in hung:
        await wait_for_status(stack.client, token, job["id"], "RUNNING")
        response = await stack.client.http.post(
            f"/jobs/{job['id']}/cancel", headers=stack.client.auth(token)
        )
        assert response.status_code == 200
        await wait_for_status(stack.client, token, job["id"], "CANCELLED")
    await _quick_jobs_complete(stack, token)
    await wait_for_metric(stack.worker.metrics.registry, ABANDONED, 2)
