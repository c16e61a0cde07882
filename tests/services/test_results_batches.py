"""The results-processor on its own: both events of an attempt, however they are batched."""

from datetime import timedelta

from cloudtask.contracts.messages import JobFinished, JobStarted
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_STARTED
from cloudtask.contracts.statuses import JobStatus
from cloudtask.contracts.timefmt import utcnow
from cloudtask.results.service import ResultsService
from cloudtask.settings import Settings
from tests.conftest import Backends
from tests.helpers import eventually
from tests.services import scheduling
from tests.services.support import metric

EVENTS = "cloudtask_results_events_total"


async def test_a_start_and_an_end_that_arrive_together_leave_the_job_finished(
    backends: Backends, settings: Settings
) -> None:
    user = await scheduling.add_user(backends)
    ids = await scheduling.add_waiting_jobs(backends, user, 20)
    await scheduling.update_jobs(backends, ids, status=JobStatus.PENDING, dispatch_attempt=1)
    started_at = utcnow() - timedelta(seconds=2)
    for n, job_id in enumerate(ids):  # both events queued before the processor reads any
        await backends.broker.publish(
            JOBS_STARTED,
            JobStarted(job_id=job_id, attempt=1, worker_id="w", started_at=started_at).encode(),
        )
        end = JobFinished(
            job_id=job_id,
            attempt=1,
            status="COMPLETED",
            result={"n": n},
            worker_id="w",
            started_at=started_at,
            finished_at=started_at + timedelta(seconds=1),
        )
        await backends.broker.publish(JOBS_COMPLETED, end.encode())
    results = ResultsService(settings, db=backends.db, broker=backends.broker)
    await results.start()
    try:

        async def all_finished() -> list[object] | None:
            rows = await scheduling.job_rows(backends, ids)
            return rows if all(r.status == JobStatus.COMPLETED for r in rows) else None

        rows = await eventually(all_finished)
        await eventually(lambda: _counted(results, 40))
    finally:
        await results.stop()
    by_id = {row.id: row for row in rows}
    for n, job_id in enumerate(ids):
        row = by_id[job_id]
        assert (row.attempts, row.result, row.error) == (1, f'{{"n":{n}}}', None)
        assert row.started_at == started_at
        assert row.finished_at == started_at + timedelta(seconds=1)
    registry = results.metrics.registry
    assert metric(registry, EVENTS, kind="started", outcome="applied") == 20
    assert metric(registry, EVENTS, kind="started", outcome="ignored") == 0
    assert metric(registry, EVENTS, kind="completed", outcome="applied") == 20


async def _counted(results: ResultsService, total: int) -> bool:
    registry = results.metrics.registry
    seen = sum(
        metric(registry, EVENTS, kind=kind, outcome=outcome)
        for kind in ("started", "completed")
        for outcome in ("applied", "ignored")
    )
    return seen >= total
