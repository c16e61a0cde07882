"""RabbitMQ's delivery acknowledgement timeout (``consumer_timeout``) does not run a job twice.

The broker closes a channel that holds a delivery unacknowledged for longer than the timeout and
redelivers the message. The worker acknowledges as soon as the attempt has started (its lease
stands in for the delivery from then on), so a job longer than the timeout still runs once. The
test shortens the timeout (and the broker's check interval) for its own duration.
"""

import asyncio
import time
from collections.abc import Iterator

import aio_pika
import pytest

from tests.e2e.probes import job_row, metric
from tests.e2e.processes import Processes
from tests.infra import rabbitmqctl

pytestmark = pytest.mark.alone

TIMEOUT_MS = 1000


def _rabbit_env(name: str) -> str:
    """The broker's setting ``name`` as an Erlang term: ``{ok,Value}`` or ``undefined``."""
    return rabbitmqctl("eval", f"application:get_env(rabbit, {name}).").strip()


def _restore(name: str, saved: str) -> str:
    if saved == "undefined":
        return f"application:unset_env(rabbit, {name})"
    return f"application:set_env(rabbit, {name}, {saved.removeprefix('{ok,').removesuffix('}')})"


@pytest.fixture
def short_consumer_timeout() -> Iterator[None]:
    # The setting is the whole node's: the test runs alone (its mark), and what it was before is
    # put back.
    saved = {name: _rabbit_env(name) for name in ("consumer_timeout", "channel_tick_interval")}
    rabbitmqctl(
        "eval",
        f"application:set_env(rabbit, consumer_timeout, {TIMEOUT_MS}), "
        "application:set_env(rabbit, channel_tick_interval, 250).",
    )
    try:
        yield
    finally:
        rabbitmqctl("eval", ", ".join(_restore(n, v) for n, v in saved.items()) + ".")


def _held_delivery_is_cut_off(url: str) -> bool:
    """Control: a consumer that sits on a delivery loses its channel."""

    async def probe() -> bool:
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue("ct-timeout-probe", auto_delete=True)
            await channel.default_exchange.publish(
                aio_pika.Message(b"hold me"), routing_key=queue.name
            )
            received = asyncio.Event()

            async def hold(_message: aio_pika.abc.AbstractIncomingMessage) -> None:
                received.set()

            await queue.consume(hold)
            await received.wait()
            deadline = time.monotonic() + 4 * TIMEOUT_MS / 1000
            while not channel.is_closed and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return channel.is_closed
        finally:
            await connection.close()

    return asyncio.run(probe())


@pytest.mark.usefixtures("short_consumer_timeout")
def test_a_job_longer_than_the_consumer_timeout_runs_once(procs: Processes) -> None:
    assert _held_delivery_is_cut_off(procs.env["CLOUDTASK_RABBITMQ_URL"])
    api, _, _, worker = procs.start_side_by_side("api", "results", "scheduler", "worker")
    client = procs.client(api)
    job = client.submit(type="sleep", payload={"seconds": 3 * TIMEOUT_MS / 1000}, maxAttempts=1)
    done = client.wait(job["id"], "COMPLETED", "FAILED", timeout=30)
    assert done["status"] == "COMPLETED"
    assert done["attempts"] == 1
    assert job_row(procs.env["CLOUDTASK_DATABASE_URL"], job["id"])["redeliveries"] == 0
    assert metric(worker.url, "cloudtask_worker_jobs_started_total") == 1
