"""One results-processor on its own: how fast it writes a full ``jobs.completed`` queue to
PostgreSQL, and the CPU it spends per job.
``python -m scripts.bench.results_drain [--jobs N]``.

The counterpart of ``worker_drain.py`` for the second-largest process of the end-to-end figure.
N PENDING ``echo`` jobs are inserted, and ``jobs.completed`` holds one report per job as a worker
leaves short jobs (it announces ``jobs.started`` only for a job still running after 50 ms;
``--with-started`` adds one per job, as for long jobs), before the results-processor starts. Its
CPU is counted from the moment its health endpoint answers until every job is COMPLETED in
PostgreSQL; PostgreSQL's own CPU is printed beside it. No worker, api or scheduler runs.

With ``--pythonpath DIR`` the results-processor imports CloudTask from ``DIR`` (a checkout's
``src``), so two versions can be compared on the same machine in the same minute.
"""

import asyncio
import time
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg

from cloudtask.broker.base import OutgoingMessage
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.contracts.messages import JobFinished, JobStarted
from cloudtask.contracts.queues import ALL_QUEUES, JOBS_COMPLETED, JOBS_STARTED
from cloudtask.contracts.timefmt import utcnow
from scripts.bench import drains
from scripts.bench.infra import Infra
from scripts.bench.stack import migrate, server_pids, service_env

WORKER_ID = "bench-worker"


def _asyncpg_url(database_url: str) -> str:
    return database_url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _insert_jobs(conn: asyncpg.Connection, jobs: int) -> list[uuid.UUID]:
    user = uuid.uuid4()
    now = utcnow()
    await conn.execute(
        "INSERT INTO users (id, email, email_key, password_hash, created_at)"
        " VALUES ($1, 'bench@example.com', 'bench@example.com', 'x', $2)",
        user,
        now,
    )
    ids = [uuid.uuid4() for _ in range(jobs)]
    await conn.copy_records_to_table(
        "jobs",
        columns=[
            "id",
            "user_id",
            "type",
            "payload",
            "status",
            "priority",
            "attempts",
            "dispatch_attempt",
            "max_attempts",
            "timeout_seconds",
            "run_at",
            "created_at",
            "updated_at",
        ],
        records=[
            (job, user, "echo", f'{{"n": {n}}}', "PENDING", 5, 0, 1, 3, 300.0, now, now, now)
            for n, job in enumerate(ids)
        ],
    )
    await conn.execute("VACUUM ANALYZE jobs")
    return ids


async def _fill(broker: RabbitMQBroker, ids: list[uuid.UUID], with_started: bool) -> None:
    for queue in ALL_QUEUES:
        await broker.purge(queue)
    began = utcnow()
    ended = began + timedelta(milliseconds=1)
    started = [
        OutgoingMessage(
            JOBS_STARTED,
            JobStarted(job_id=job, attempt=1, worker_id=WORKER_ID, started_at=began).encode(),
        )
        for job in ids
        if with_started
    ]
    finished = [
        OutgoingMessage(
            JOBS_COMPLETED,
            JobFinished(
                job_id=job,
                attempt=1,
                status="COMPLETED",
                result={"n": n},
                worker_id=WORKER_ID,
                started_at=began,
                finished_at=ended,
            ).encode(),
        )
        for n, job in enumerate(ids)
    ]
    for messages in (started, finished):
        for start in range(0, len(messages), 1000):
            await broker.publish_many(messages[start : start + 1000])


async def _completed(
    broker: RabbitMQBroker, conn: asyncpg.Connection, jobs: int, timeout: float
) -> None:
    # The queues are watched first: counting the jobs scans the table, and PostgreSQL's CPU is
    # measured, so the count is only taken once no report waits to be delivered.
    deadline = time.monotonic() + timeout
    while True:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {jobs} jobs COMPLETED within {timeout} s")
        waiting = [(await broker.stats(q)).messages for q in (JOBS_STARTED, JOBS_COMPLETED)]
        if sum(waiting) == 0:
            done = await conn.fetchval("SELECT count(*) FROM jobs WHERE status = 'COMPLETED'")
            if done >= jobs:
                return
        await asyncio.sleep(0.02)


def drain_once(
    infra: Infra, jobs: int, with_started: bool, pythonpath: str | None, log_dir: Path
) -> drains.Figures:
    broker = RabbitMQBroker(infra.rabbitmq_url)
    env = service_env(infra)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    migrate(env, log_dir)
    database = infra.database_url.rsplit("/", 1)[1]

    async def prepare() -> asyncpg.Connection:
        conn = await asyncpg.connect(_asyncpg_url(infra.database_url))
        await conn.execute("TRUNCATE jobs, users CASCADE")
        ids = await _insert_jobs(conn, jobs)
        await broker.start()
        await _fill(broker, ids, with_started)
        return conn

    loop = asyncio.new_event_loop()
    try:
        conn = loop.run_until_complete(prepare())
        seconds, cpu = drains.drain_service(
            "results",
            env,
            log_dir,
            lambda: loop.run_until_complete(
                _completed(broker, conn, jobs, timeout=max(120, jobs / 50))
            ),
            others=lambda: {"postgresql": server_pids([database])["postgresql"]},
        )
        loop.run_until_complete(conn.close())
        loop.run_until_complete(broker.close())
    finally:
        loop.close()
    return {
        **drains.figures(jobs, seconds, cpu["results"]),
        "postgres_cpu_ms_per_job": 1000 * cpu["postgresql"] / jobs,
    }


def main() -> None:
    options_parser = drains.parser(__doc__)
    options_parser.add_argument(
        "--with-started", action="store_true", help="a jobs.started report per job as well"
    )
    options = options_parser.parse_args()
    drains.run_in_turn(
        options,
        lambda infra, version, logs: drain_once(
            infra, options.jobs, options.with_started, version, logs
        ),
        lambda figures: (
            f"{figures['jobs_per_s']:7,.0f} jobs/s  "
            f"{figures['cpu_ms_per_job']:.3f} ms CPU/job  "
            f"results at {figures['cpu_pct']:.0f}% of a core  "
            f"PostgreSQL {figures['postgres_cpu_ms_per_job']:.3f} ms CPU/job"
        ),
    )


if __name__ == "__main__":
    main()
