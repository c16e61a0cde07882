"""`cloudtask results` plans its updates for the jobs table as it is, not as it was when its
connection first ran them (``db.engine.Plans``; ``tests/backends/test_postgres_plans.py`` has
the mechanism, this the service's use of it)."""

import asyncio
import time

import asyncpg

from tests.e2e.probes import job_row
from tests.e2e.processes import Processes

FIRST_JOBS = 8  # a statement keeps a generic plan from its sixth run on
GROWN_BY = 20_000

# Rows of jobs read by every backend (reported by each within seconds of its transactions), and
# rows updated: the results-processor's own update says when its report has come in.
_STATS = (
    "SELECT seq_tup_read + coalesce(idx_tup_fetch, 0), n_tup_upd"
    " FROM pg_stat_user_tables WHERE relname = 'jobs'"
)
_GROW = (
    "INSERT INTO jobs (id, user_id, type, payload, status, priority, attempts, dispatch_attempt,"
    " max_attempts, timeout_seconds, run_at, result, cancel_requested, redeliveries, created_at,"
    " updated_at, started_at, finished_at)"
    " SELECT gen_random_uuid(), $1::uuid, 'echo', '{}', 'COMPLETED', 5, 1, 1, 3, 300, now(), '{}',"
    " false, 0, now(), now(), now(), now() FROM generate_series(1, $2::int)"
)


def _sql(database_url: str, query: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()

    return asyncio.run(run())


def test_the_results_processor_reads_one_row_per_update_after_the_table_grew(
    procs: Processes,
) -> None:
    database_url = procs.env["CLOUDTASK_DATABASE_URL"]
    api, _, _ = procs.start_side_by_side("api", "results", "worker")
    client = procs.client(api)
    for _ in range(FIRST_JOBS):  # one at a time: each write is a batch of its own
        job = client.submit(type="echo", payload={})
        client.wait(job["id"], "COMPLETED")
    user_id = job_row(database_url, job["id"])["user_id"]
    _sql(database_url, _GROW, user_id, GROWN_BY)
    time.sleep(1.1)  # past the results-processor's last report of its statistics
    ((read_before, updated_before),) = _sql(database_url, _STATS)

    last = client.submit(type="echo", payload={})
    client.wait(last["id"], "COMPLETED")
    deadline = time.monotonic() + 30
    while True:
        ((read, updated),) = _sql(database_url, _STATS)
        if updated > updated_before or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert updated > updated_before, "the results-processor's statistics never came in"
    # A plan kept from the small table reads all of it for the update (over 20,000 rows);
    # planned per run, the update reads its row, and the api's reads of the job theirs.
    assert read - read_before < GROWN_BY // 20
