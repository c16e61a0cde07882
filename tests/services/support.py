"""What several service tests need: a job's stored row, metric readings, the dead-letter queue,
a registry of test handlers."""

import asyncio
from typing import Any
from uuid import UUID, uuid4

from prometheus_client import CollectorRegistry
from sqlalchemy import select

from cloudtask.broker.base import Broker, Delivery
from cloudtask.contracts.messages import JobCreated
from cloudtask.contracts.queues import JOBS_DEAD
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.tables import jobs
from cloudtask.worker.registry import HandlerRegistry
from cloudtask.worker.service import WorkerService
from tests.conftest import Backends
from tests.helpers import eventually, wait_for_status
from tests.services.conftest import Stack


async def job_row(backends: Backends, job_id: str) -> dict[str, Any]:
    """Every column of the job as stored."""
    async with session.reading(backends.db) as conn:
        row = (await conn.execute(select(jobs).where(jobs.c.id == UUID(job_id)))).one()
    return dict(row._mapping)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The current value of a sample, 0 if it was never set."""
    return registry.get_sample_value(name, labels) or 0.0


async def wait_for_metric(
    registry: CollectorRegistry, name: str, value: float, **labels: str
) -> None:
    """Wait until a sample reaches ``value`` (services count just after acting)."""

    async def reached() -> bool:
        return metric(registry, name, **labels) >= value

    await eventually(reached)


async def next_dead_letter(broker: Broker, timeout: float = 10) -> Delivery:
    """Take the next message on ``jobs.dead`` (acknowledged), waiting for one to arrive."""
    delivery = await eventually(lambda: broker.get(JOBS_DEAD), timeout=timeout)
    await delivery.ack()
    return delivery


async def wait_until_set(event: asyncio.Event, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        await event.wait()


def registry_of(handlers: object, *names: str) -> HandlerRegistry:
    """A registry of the methods ``names`` of ``handlers``, each under its own name."""
    registry = HandlerRegistry()
    for name in names:
        registry.register(name, getattr(handlers, name))
    return registry


async def finished_by_a_second_worker(
    stack: Stack, handlers: HandlerRegistry, token: str, job_id: str
) -> dict[str, Any]:
    """Start a second worker with ``handlers`` on the stack's back ends, wait until the job has
    finished, stop that worker; the job as the API then shows it."""
    second = WorkerService(
        stack.settings,
        broker=stack.backends.broker,
        kv=stack.backends.kv,
        handlers=handlers,
        worker_id="second-worker",
    )
    await second.start()
    try:
        return await wait_for_status(stack.client, token, job_id, "COMPLETED", "FAILED")
    finally:
        await second.stop(grace=1)


class HeldHandlers:
    """A handler, ``held``, that runs until released, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def held(self, payload: Any) -> Any:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return payload


def job_message(job: dict[str, Any], attempt: int = 1) -> bytes:
    """A ``jobs.created`` message of ``job`` (as the API answered it), for its ``attempt``."""
    return JobCreated(
        job_id=UUID(job["id"]),
        user_id=uuid4(),
        type=job["type"],
        payload=job["payload"],
        priority=job["priority"],
        attempt=attempt,
        timeout_seconds=job["timeoutSeconds"],
        enqueued_at=utcnow(),
    ).encode()
