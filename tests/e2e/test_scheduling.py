"""Time, as processes: delayed jobs, past runAt, cancelled waits, and a retry after its backoff."""

import time
from datetime import datetime, timedelta

from tests.e2e.processes import Processes
from tests.e2e.test_pipeline import HANDLERS, _stack


def _at(value: object) -> datetime:
    return datetime.fromisoformat(str(value))


def test_a_delayed_job_waits_then_runs_and_a_cancelled_one_never_does(procs: Processes) -> None:
    client = _stack(procs)
    delayed = client.submit(type="echo", payload="later", delaySeconds=3)
    cancelled = client.submit(type="echo", payload="never", delaySeconds=2)
    past = client.submit(type="echo", payload="now", runAt="2001-01-01T00:00:00Z")
    assert delayed["status"] == cancelled["status"] == "SCHEDULED"
    assert past["status"] == "PENDING"
    assert client.http.post(f"/jobs/{cancelled['id']}/cancel").json()["status"] == "CANCELLED"
    assert client.wait(past["id"], "COMPLETED", timeout=10)["result"] == "now"
    assert client.get(delayed["id"])["status"] == "SCHEDULED"
    done = client.wait(delayed["id"], "COMPLETED", timeout=15)
    assert _at(done["startedAt"]) >= _at(delayed["runAt"])
    assert _at(done["startedAt"]) - _at(delayed["runAt"]) < timedelta(seconds=2)
    time.sleep(1)  # past the cancelled job's runAt, with the scheduler polling twice a second
    after = client.get(cancelled["id"])
    assert after["status"] == "CANCELLED"
    assert after["attempts"] == 0 and after["startedAt"] is None


def test_a_failed_attempt_is_retried_after_its_backoff(procs: Processes) -> None:
    # Base 0.5 s, cap 2 s (see service_env): the second attempt waits 0.05-0.5 s after the first.
    client = _stack(procs, *HANDLERS)
    job = client.submit(type="e2e.flaky", payload={"key": "k1"}, maxAttempts=3)
    waiting = client.wait(job["id"], "SCHEDULED", "COMPLETED", timeout=15)
    if waiting["status"] == "SCHEDULED":
        assert waiting["attempts"] == 1
        assert "first attempt fails" in waiting["error"]
    done = client.wait(job["id"], "COMPLETED", timeout=15)
    assert done["attempts"] == 2
    assert done["result"] == {"calls": 2}
    assert done["error"] is None
    # runAt is the retry's due time: after the first attempt, within the backoff's ceiling.
    gap = _at(done["runAt"]) - _at(job["createdAt"])
    assert timedelta(seconds=0.05) <= gap <= timedelta(seconds=0.5 + 2)
    assert _at(done["startedAt"]) >= _at(done["runAt"])
