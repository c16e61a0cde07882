"""A busy worker starts the due jobs highest priority first, whichever it already holds: those
waiting in it for a slot take them in priority order, and a delivery that waits too long is given
back to the queue, where RabbitMQ (or the in-memory broker) compares it with the jobs submitted
since. One slot here, held by a long job while low, middle and high jobs arrive, in that order."""

import asyncio
from typing import Any

import pytest

from cloudtask.settings import Settings
from cloudtask.worker.registry import HandlerRegistry
from tests.helpers import eventually, wait_for_status
from tests.services.conftest import Stack
from tests.services.support import metric, registry_of

LEVELS = (("low", 0), ("mid", 4), ("high", 9))


class Handlers:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[str] = []

    async def blocker(self, payload: Any) -> Any:
        await self.release.wait()  # long enough to be announced: its delivery is acknowledged
        return payload

    async def noted(self, payload: Any) -> Any:
        self.started.append(str(payload))
        return payload


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def stack_handlers(handlers: Handlers) -> HandlerRegistry:
    return registry_of(handlers, "blocker", "noted")


@pytest.fixture(params=[None, 8], ids=["default-prefetch", "prefetch-8"])
def stack_settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    return settings.model_copy(update={"worker_concurrency": 1, "worker_prefetch": request.param})


async def test_a_freed_slot_goes_to_the_highest_priority_due_job(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    blocker = await stack.client.create_job(token, type="blocker", payload="blocker")
    await wait_for_status(stack.client, token, blocker["id"], "RUNNING")
    jobs = [
        await stack.client.create_job(token, type="noted", payload=level, priority=priority)
        for level, priority in LEVELS
        for _ in range(2)
    ]
    registry = stack.worker.metrics.registry

    async def given_back() -> bool:  # each delivery held waiting, the low ones at least
        given = metric(registry, "cloudtask_worker_deliveries_given_back_total", reason="waited")
        return given >= min(stack.worker.prefetch, len(jobs))

    try:
        await eventually(given_back)
    finally:
        handlers.release.set()
    for job in jobs:
        await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    assert handlers.started == ["high", "high", "mid", "mid", "low", "low"]
