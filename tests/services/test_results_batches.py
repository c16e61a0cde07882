"""The results-processor on its own: both events of an attempt, however they are batched."""

import logging
from datetime import timedelta

import pytest

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


async def test_the_line_recording_an_attempt_names_the_worker_whose_end_was_written(
    backends: Backends, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Two copies of one attempt's end, from two workers, read in one batch: one is written, and
    # the line says whose.
    user = await scheduling.add_user(backends)
    [job_id] = await scheduling.add_waiting_jobs(backends, user, 1)
    await scheduling.update_jobs(backends, [job_id], status=JobStatus.PENDING, dispatch_attempt=1)
    started_at = utcnow() - timedelta(seconds=2)
    for worker in ("worker-a", "worker-b"):
        end = JobFinished(
            job_id=job_id,
            attempt=1,
            status="COMPLETED",
            result={"by": worker},
            worker_id=worker,
            started_at=started_at,
            finished_at=started_at + timedelta(seconds=1),
        )
        await backends.broker.publish(JOBS_COMPLETED, end.encode())
    results = ResultsService(settings, db=backends.db, broker=backends.broker)
    with caplog.at_level(logging.INFO, logger="cloudtask.results"):
        await results.start()
        try:
            await eventually(lambda: _counted(results, 2))
        finally:
            await results.stop()
    [row] = await scheduling.job_rows(backends, [job_id])
    [line] = [r for r in caplog.records if getattr(r, "jobId", None) == str(job_id)]
    assert row.result == f'{{"by":"{line.workerId}"}}'  # type: ignore[attr-defined]
