"""A busy worker starts the due jobs highest priority first, whichever it already holds: those
waiting in it for a slot take them in that order, and a delivery that waits too long goes back
to the queue, where RabbitMQ (or the in-memory broker) compares it with the jobs submitted since.
One slot here, held by a long job while low, middle and high jobs arrive, in that order, three of
each; the jobs go back to the queue more times than ``MAX_DELIVERIES`` allows a job that kills its
worker, and none is taken for one. Within one priority, the in-memory broker keeps the order they
were submitted in; RabbitMQ does not always keep it for messages rejected back together (two came
back swapped in about one run in eight), so there only the priorities' order is asserted."""

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
    update = {"worker_concurrency": 1, "worker_prefetch": request.param, "max_deliveries": 2}
    return settings.model_copy(update=update)


async def test_a_freed_slot_goes_to_the_highest_priority_due_job(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    blocker = await stack.client.create_job(token, type="blocker", payload="blocker")
    await wait_for_status(stack.client, token, blocker["id"], "RUNNING")
    jobs = [
        await stack.client.create_job(token, type="noted", payload=f"{level}{n}", priority=priority)
        for level, priority in LEVELS
        for n in range(3)
    ]
    registry = stack.worker.metrics.registry

    async def given_back() -> bool:  # each delivery held waiting returned 3 times at least
        given = metric(registry, "cloudtask_worker_deliveries_given_back_total", reason="waited")
        return given >= 3 * min(stack.worker.prefetch, len(jobs))

    try:
        await eventually(given_back)
    finally:
        handlers.release.set()
    for job in jobs:
        await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    submitted = [f"{level}{n}" for level in ("high", "mid", "low") for n in range(3)]
    if stack.backends.kind == "memory":
        assert handlers.started == submitted
    else:
        assert [name[:-1] for name in handlers.started] == [name[:-1] for name in submitted]
        assert sorted(handlers.started) == sorted(submitted)
    assert metric(registry, "cloudtask_worker_dead_lettered_total", reason="redelivered") == 0
