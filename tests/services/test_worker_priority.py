"""Jobs waiting in a worker for a slot start highest priority first, whatever order they arrived
in: the worker holds more deliveries than it runs, and RabbitMQ's priority order covers only the
messages still queued. One slot here, and room for more waiting deliveries."""

import asyncio
from typing import Any

import pytest

from cloudtask.settings import Settings
from cloudtask.worker.registry import HandlerRegistry
from tests.helpers import eventually, wait_for_status
from tests.services.conftest import Stack
from tests.services.support import registry_of

WAITING = 6


class Handlers:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[Any] = []

    async def blocker(self, payload: Any) -> Any:
        await self.release.wait()  # long enough to be announced: its delivery is acknowledged
        return payload

    async def noted(self, payload: Any) -> Any:
        self.started.append(payload)
        return payload


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def stack_handlers(handlers: Handlers) -> HandlerRegistry:
    return registry_of(handlers, "blocker", "noted")


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"worker_concurrency": 1, "worker_prefetch": WAITING + 2})


async def test_a_freed_slot_goes_to_the_highest_priority_waiting(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    blocker = await stack.client.create_job(token, type="blocker", payload="blocker")
    await wait_for_status(stack.client, token, blocker["id"], "RUNNING")
    jobs = [
        await stack.client.create_job(token, type="noted", payload=f"{level}-{n}", priority=p)
        for level, p in (("low", 0), ("mid", 4), ("high", 9))
        for n in range(WAITING // 3)
    ]

    async def all_held() -> bool:  # the running blocker and every job waiting for its slot
        return stack.worker.busy == 1 + WAITING

    try:
        await eventually(all_held)
    finally:
        handlers.release.set()
    for job in jobs:
        await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    assert handlers.started == ["high-0", "high-1", "mid-0", "mid-1", "low-0", "low-1"]
