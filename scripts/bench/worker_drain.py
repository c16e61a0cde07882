"""One worker process on its own: how fast it drains a full ``jobs.created`` queue of ``echo``
jobs, and the CPU it spends per job. ``python -m scripts.bench.worker_drain [--jobs N]``.

The end-to-end figure shares two cores among seven processes, and its CPU per process moves by
a third from run to run on a shared machine; this isolates the worker, the largest of them. The
queue is filled before the worker starts, and the worker's CPU is counted from the moment its
health endpoint answers (its start-up is not a job's cost) until ``jobs.completed`` holds every
report. Nothing consumes the reports: no results-processor, scheduler or api runs.

With ``--pythonpath DIR`` the worker imports CloudTask from ``DIR`` (a checkout's ``src``), so
two versions can be compared on the same machine in the same minute.
"""

import asyncio
import time
import uuid
from pathlib import Path

from cloudtask.broker.base import OutgoingMessage
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.contracts.messages import JobCreated
from cloudtask.contracts.queues import ALL_QUEUES, JOBS_COMPLETED, JOBS_CREATED
from cloudtask.contracts.timefmt import utcnow
from scripts.bench import drains
from scripts.bench.infra import Infra
from scripts.bench.stack import service_env


async def _fill(broker: RabbitMQBroker, jobs: int) -> None:
    for queue in ALL_QUEUES:
        await broker.purge(queue)
    now = utcnow()
    messages = [
        OutgoingMessage(
            JOBS_CREATED,
            JobCreated(
                job_id=uuid.uuid4(),
                user_id=uuid.uuid4(),
                type="echo",
                payload={"n": n},
                enqueued_at=now,
            ).encode(),
        )
        for n in range(jobs)
    ]
    for start in range(0, jobs, 1000):
        await broker.publish_many(messages[start : start + 1000])


async def _drained(broker: RabbitMQBroker, jobs: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (await broker.stats(JOBS_COMPLETED)).messages < jobs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {jobs} reports within {timeout} s")
        await asyncio.sleep(0.05)


def drain_once(infra: Infra, jobs: int, pythonpath: str | None, log_dir: Path) -> drains.Figures:
    broker = RabbitMQBroker(infra.rabbitmq_url)

    async def fill() -> None:
        await broker.start()
        await _fill(broker, jobs)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(fill())
        env = service_env(infra)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        seconds, cpu = drains.drain_service(
            "worker",
            env,
            log_dir,
            lambda: loop.run_until_complete(_drained(broker, jobs, timeout=max(120, jobs / 50))),
        )
        loop.run_until_complete(broker.close())
    finally:
        loop.close()
    return drains.figures(jobs, seconds, cpu["worker"])


def main() -> None:
    options = drains.parser(__doc__).parse_args()
    drains.run_in_turn(
        options,
        lambda infra, version, logs: drain_once(infra, options.jobs, version, logs),
        lambda figures: (
            f"{figures['jobs_per_s']:7,.0f} jobs/s  "
            f"{figures['cpu_ms_per_job']:.3f} ms CPU/job  "
            f"worker at {figures['cpu_pct']:.0f}% of a core"
        ),
    )


if __name__ == "__main__":
    main()
