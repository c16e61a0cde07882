"""What `cloudtask dev` does at start with the jobs it held when it last stopped."""

from datetime import timedelta

from cloudtask.contracts.signals import REQUEUED, lease_key
from cloudtask.contracts.statuses import JobStatus
from cloudtask.contracts.timefmt import utcnow
from cloudtask.dev import requeue_unfinished
from tests.conftest import Backends
from tests.services import scheduling


async def test_requeued_markers_are_used_up_at_start_whatever_the_jobs_status(
    backends: Backends,
) -> None:
    # Both put back as the last process stopped: one RUNNING, one PENDING (it was waiting to run
    # alone). A marker left in the key-value file would make the next run of either, if a kill
    # cut it off, look put back at the following start.
    user = await scheduling.add_user(backends)
    running, pending = await scheduling.add_waiting_jobs(backends, user, 2)
    started = utcnow() - timedelta(minutes=1)
    await scheduling.update_jobs(
        backends, [running], status=JobStatus.RUNNING, attempts=1, dispatch_attempt=1,
        run_at=started, started_at=started,
    )  # fmt: skip
    await scheduling.update_jobs(
        backends, [pending], status=JobStatus.PENDING, dispatch_attempt=1, run_at=started
    )
    for job_id in (running, pending):
        await backends.kv.set(lease_key(job_id, 1), REQUEUED, ttl=3600)
    assert await requeue_unfinished(backends.db, backends.broker, backends.kv) == 2
    rows = await scheduling.job_rows(backends, [running, pending])
    assert {row.status for row in rows} == {JobStatus.PENDING}
    leases = await backends.kv.get_many([lease_key(running, 1), lease_key(pending, 1)])
    assert leases == [None, None]
