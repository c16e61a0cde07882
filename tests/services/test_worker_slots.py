"""The worker's slots: held while a handler runs, given back before the report is confirmed. The
worker runs one job at a time here."""

import asyncio
from typing import Any

import pytest

from cloudtask.broker.memory import MemoryBroker
from cloudtask.contracts.queues import JOBS_COMPLETED
from cloudtask.kv.memory import MemoryKV
from cloudtask.settings import Settings
from cloudtask.worker.registry import HandlerRegistry
from cloudtask.worker.service import WorkerService
from tests.helpers import wait_for_status
from tests.services.conftest import Stack
from tests.services.support import registry_of, wait_until_set


class Handlers:
    def __init__(self) -> None:
        self.running = 0
        self.most_at_once = 0
        self.second_ran = asyncio.Event()

    async def first(self, payload: Any) -> Any:
        return "first"

    async def second(self, payload: Any) -> Any:
        self.second_ran.set()
        return "second"

    async def counted(self, payload: Any) -> Any:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(0.05)
        self.running -= 1
        return payload


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def stack_handlers(handlers: Handlers) -> HandlerRegistry:
    return registry_of(handlers, "first", "second", "counted")


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"worker_concurrency": 1})


async def test_a_job_waiting_for_its_report_leaves_its_slot_to_the_next(
    stack: Stack, handlers: Handlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = stack.worker.pipeline.deps.reports
    publish = reports.publish
    held, release = asyncio.Event(), asyncio.Event()

    async def first_report_held(queue: str, body: bytes, *, priority: int = 0) -> None:
        if queue == JOBS_COMPLETED and b'"first"' in body:
            held.set()
            await release.wait()
        await publish(queue, body, priority=priority)

    monkeypatch.setattr(reports, "publish", first_report_held)
    token = await stack.client.register()
    try:
        first = await stack.client.create_job(token, type="first", payload={})
        await wait_until_set(held)
        second = await stack.client.create_job(token, type="second", payload={})
        # One slot, and the first job's report is not confirmed: the second runs all the same.
        await wait_until_set(handlers.second_ran)
    finally:
        release.set()
    for job, result in ((first, "first"), (second, "second")):
        done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
        assert (done["status"], done["result"]) == ("COMPLETED", result)


async def test_no_more_handlers_run_at_once_than_the_concurrency(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    jobs = [await stack.client.create_job(token, type="counted", payload=n) for n in range(6)]
    for job in jobs:
        await wait_for_status(stack.client, token, job["id"], "COMPLETED", timeout=20)
    assert handlers.most_at_once == 1


async def test_the_prefetch_is_twice_the_concurrency_unless_set(settings: Settings) -> None:
    for prefetch, expected in ((None, 6), (5, 5)):
        worker = WorkerService(
            settings.model_copy(update={"worker_concurrency": 3, "worker_prefetch": prefetch}),
            broker=MemoryBroker(),
            kv=MemoryKV(),
            handlers=HandlerRegistry(),
        )
        assert (worker.concurrency, worker.prefetch) == (3, expected)
