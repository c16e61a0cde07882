"""A copy of a ``jobs.created`` message (the outbox relay publishing a job again when a confirm
came late, say) does not run the attempt twice: the first delivery of an attempt claims its
lease, and a copy that finds it held, by a worker running the attempt or done with it, is
acknowledged without running. An attempt put back on the queue still runs; so does a
redelivery, but for one whose worker reported it and lost its connection before the ack (more in
``test_lost_deliveries``)."""

import asyncio

import pytest

from cloudtask.broker.base import Delivery
from cloudtask.broker.memory import MemoryDelivery
from cloudtask.broker.rabbitmq import RabbitDelivery
from cloudtask.contracts.queues import JOBS_CREATED, REQUEUED_HEADER
from cloudtask.errors import BrokerUnavailable
from cloudtask.worker.registry import HandlerRegistry
from tests.helpers import wait_for_status
from tests.services.conftest import Stack
from tests.services.support import (
    HeldHandlers,
    job_message,
    metric,
    registry_of,
    wait_for_metric,
)

COPIES = "cloudtask_worker_copies_skipped_total"


@pytest.fixture
def handlers() -> HeldHandlers:
    return HeldHandlers()


@pytest.fixture
def stack_handlers(handlers: HeldHandlers) -> HandlerRegistry:
    return registry_of(handlers, "held")


async def test_a_copy_of_a_running_or_finished_attempt_does_not_run_it_again(
    stack: Stack, handlers: HeldHandlers
) -> None:
    registry = stack.worker.metrics.registry
    broker = stack.backends.broker
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="held", payload={"n": 1})
    await asyncio.wait_for(handlers.started.wait(), 10)

    await broker.publish(JOBS_CREATED, job_message(job), priority=job["priority"])
    await wait_for_metric(registry, COPIES, 1)
    handlers.release.set()
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    assert (done["result"], done["attempts"]) == ({"n": 1}, 1)

    # Done with it: the lease outlives the attempt by up to its TTL, and a copy finds it.
    await broker.publish(JOBS_CREATED, job_message(job), priority=job["priority"])
    await wait_for_metric(registry, COPIES, 2)
    assert handlers.calls == 1


async def test_an_attempt_put_back_on_the_queue_runs_whoever_held_its_lease(
    stack: Stack, handlers: HeldHandlers
) -> None:
    registry = stack.worker.metrics.registry
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="held", payload={"n": 2})
    await asyncio.wait_for(handlers.started.wait(), 10)
    handlers.release.set()
    await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    handlers.started.clear()

    # Marked as put back (a worker stopping, `cloudtask dev` starting): it runs again.
    await stack.backends.broker.publish(
        JOBS_CREATED, job_message(job), priority=job["priority"], headers={REQUEUED_HEADER: True}
    )
    await asyncio.wait_for(handlers.started.wait(), 10)
    assert handlers.calls == 2
    assert metric(registry, COPIES) == 0


async def test_an_attempt_reported_but_not_acknowledged_is_not_run_again_when_redelivered(
    stack: Stack, handlers: HeldHandlers, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection goes between the report and the ack: RabbitMQ puts the delivery back and
    # delivers it again, redelivered, when the lease may have expired. It ran again before.
    lost_ack: list[bytes] = []

    def losing_the_first_ack(cls: type[Delivery]) -> None:
        ack = cls.ack

        async def once(delivery: Delivery) -> None:
            if not lost_ack and not delivery.redelivered:
                lost_ack.append(delivery.body)
                await delivery.reject(requeue=True)  # as the broker does with a lost channel
                raise BrokerUnavailable("could not acknowledge: the connection went")
            await ack(delivery)

        monkeypatch.setattr(cls, "ack", once)

    losing_the_first_ack(MemoryDelivery)
    losing_the_first_ack(RabbitDelivery)
    handlers.release.set()
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="held", payload={"n": 3})
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    await wait_for_metric(stack.worker.metrics.registry, COPIES, 1)
    assert len(lost_ack) == 1
    assert (done["result"], done["attempts"], handlers.calls) == ({"n": 3}, 1, 1)
    assert await stack.backends.broker.get(JOBS_CREATED) is None  # acknowledged, this time
