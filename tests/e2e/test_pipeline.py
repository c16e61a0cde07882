"""The pipeline as processes: api, results, scheduler and workers on real infrastructure."""

import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.e2e.client import ApiClient
from tests.e2e.probes import execute, job_row, metric
from tests.e2e.processes import Process, Processes

ROOT = Path(__file__).parents[2]
HANDLERS = ["--import", "tests.e2e.handlers"]


def _stack(procs: Processes, *worker_args: str) -> ApiClient:
    api, *_ = procs.start_side_by_side(
        "api", "results", "scheduler", ("worker", *worker_args), cwd=ROOT
    )
    return procs.client(api)


def test_a_job_survives_its_worker_being_killed(procs: Processes) -> None:
    procs.env["CLOUDTASK_WORKER_LEASE_SECONDS"] = "3"
    client = _stack(procs)
    job = client.submit(type="sleep", payload={"seconds": 2}, maxAttempts=1)
    client.wait(job["id"], "RUNNING")
    procs.started[-1].kill()
    procs.start("worker")
    done = client.wait(job["id"], "COMPLETED", "FAILED", timeout=40)
    assert done["status"] == "COMPLETED"
    assert done["result"] == "Slept for 2 seconds"
    row = job_row(procs.env["CLOUDTASK_DATABASE_URL"], job["id"])
    assert row["redeliveries"] == 1
    assert row["attempts"] == 1


def _workers_until_one_lives(
    procs: Processes, client: ApiClient, poison: dict[str, Any], logs: Path
) -> int:
    """Start workers one after another, as a supervisor restarts them, until the job that kills
    them is failed; returns how many died."""
    deaths = 0
    while client.get(poison["id"])["status"] != "FAILED":
        assert deaths < 6, "the job that kills its worker was never failed"
        worker = Process(["worker", *HANDLERS, "--port", "0"], procs.env, logs / f"w{deaths}", ROOT)
        procs.started.append(worker)
        deadline = time.monotonic() + 60
        while worker.proc.poll() is None and client.get(poison["id"])["status"] != "FAILED":
            assert time.monotonic() < deadline, worker.log()
            time.sleep(0.1)
        if worker.proc.poll() is not None:
            assert worker.proc.returncode == 70, worker.log()
            deaths += 1
    return deaths


def test_a_job_that_kills_its_worker_is_failed_and_the_jobs_beside_it_run(
    procs: Processes, tmp_path: Path
) -> None:
    # It kills its worker at once: its delivery, and theirs, come back redelivered.
    procs.env["CLOUDTASK_MAX_DELIVERIES"] = "3"
    api, _, _ = procs.start_side_by_side("api", "results", "scheduler")
    client = procs.client(api)
    poison = client.submit(type="e2e.crash", payload={})
    beside = [client.submit(type="e2e.double", payload={"n": n}) for n in range(6)]
    deaths = _workers_until_one_lives(procs, client, poison, tmp_path)
    assert client.get(poison["id"])["error"] == "delivered 3 times without finishing"
    for n, job in enumerate(beside):
        done = client.wait(job["id"], "COMPLETED", "FAILED")
        assert done["result"] == {"doubled": 2 * n}, done
    assert deaths == 3


def test_a_running_job_that_kills_its_worker_is_failed_and_the_jobs_beside_it_run(
    procs: Processes, tmp_path: Path
) -> None:
    # It kills its worker after its delivery was acknowledged, and theirs too: the scheduler
    # finds them all lost by their leases, and hands them out again. Lost twice, it is failed:
    # once beside them, once alone.
    procs.env["CLOUDTASK_MAX_DELIVERIES"] = "2"
    procs.env["CLOUDTASK_WORKER_LEASE_SECONDS"] = "3"
    api, _, _ = procs.start_side_by_side("api", "results", "scheduler")
    client = procs.client(api)
    poison = client.submit(type="e2e.crash_later", payload={"seconds": 0.3})
    beside = [client.submit(type="e2e.block", payload={"seconds": 1}) for _ in range(3)]
    deaths = _workers_until_one_lives(procs, client, poison, tmp_path)
    assert client.get(poison["id"])["error"] == "its worker was lost 2 times"
    for job in beside:
        assert client.wait(job["id"], "COMPLETED", "FAILED")["result"] == "finished"
    assert deaths == 2


def test_a_custom_handler_module_runs_its_jobs_and_a_running_one_can_be_cancelled(
    procs: Processes,
) -> None:
    client = _stack(procs, *HANDLERS)
    doubled = client.submit(type="e2e.double", payload={"n": 21})
    assert client.wait(doubled["id"], "COMPLETED")["result"] == {"doubled": 42}
    blocked = client.submit(type="e2e.block", payload={"seconds": 600})
    client.wait(blocked["id"], "RUNNING")
    response = client.http.post(f"/jobs/{blocked['id']}/cancel")
    assert response.status_code == 200
    cancelled = client.wait(blocked["id"], "CANCELLED", timeout=5)
    assert cancelled["finishedAt"] is not None


def test_a_sigterm_requeues_what_did_not_finish_within_the_grace(procs: Processes) -> None:
    client = _stack(procs, "--grace", "0.5")
    job = client.submit(type="sleep", payload={"seconds": 2.5}, maxAttempts=1)
    client.wait(job["id"], "RUNNING")
    worker = procs.started[-1]
    started = time.monotonic()
    assert worker.stop(timeout=20) == 0
    assert time.monotonic() - started < 10
    procs.start("worker")
    done = client.wait(job["id"], "COMPLETED", "FAILED", timeout=30)
    assert done["status"] == "COMPLETED"


def test_a_second_signal_cuts_the_grace_short(procs: Processes) -> None:
    # As Celery's second Ctrl-C: the first begins the stop, the second puts running jobs back.
    client = _stack(procs, "--grace", "60")
    job = client.submit(type="sleep", payload={"seconds": 30}, maxAttempts=1)
    client.wait(job["id"], "RUNNING")
    worker = procs.started[-1]
    started = time.monotonic()
    worker.signal(signal.SIGINT)
    # Soon after, as a second Ctrl-C comes (two signals sent at once may reach the process as
    # one: a pending signal is not queued twice).
    time.sleep(0.1)
    worker.signal(signal.SIGINT)
    assert worker.proc.wait(20) == 0
    assert time.monotonic() - started < 10
    assert "stopping now: running jobs go back to the queue" in worker.log()
    procs.start("worker")
    assert client.wait(job["id"], "RUNNING", timeout=30)["attempts"] == 1


def test_higher_priorities_start_first_when_the_worker_is_saturated(procs: Processes) -> None:
    # One slot, held by the blocker; the worker takes two low jobs into its prefetch meanwhile,
    # and gives them back once they have waited (pipeline.WAIT_LIMIT), so the high ones submitted
    # after them still start first.
    client = _stack(procs, "--concurrency", "1")
    blocker = client.submit(type="sleep", payload={"seconds": 3})
    client.wait(blocker["id"], "RUNNING")
    low = [client.submit(type="sleep", payload={"seconds": 0.1}, priority=0) for _ in range(5)]
    high = [client.submit(type="sleep", payload={"seconds": 0.1}, priority=9) for _ in range(5)]
    finished = [client.wait(job["id"], "COMPLETED", timeout=60) for job in low + high]

    def starts(jobs: list[dict[str, object]]) -> list[float]:
        return [datetime.fromisoformat(str(j["startedAt"])).timestamp() for j in jobs]

    assert max(starts(finished[5:])) < min(starts(finished[:5]))


def test_a_hung_worker_does_not_leave_its_job_running(procs: Processes) -> None:
    procs.env["CLOUDTASK_RUNNING_GRACE_SECONDS"] = "1"
    client = _stack(procs, *HANDLERS)
    retried = client.submit(
        type="e2e.hang", payload={"seconds": 3}, timeoutSeconds=1, maxAttempts=2
    )
    once = client.submit(type="e2e.hang", payload={"seconds": 3}, timeoutSeconds=1, maxAttempts=1)
    for job, attempts in ((retried, 2), (once, 1)):
        ended = client.wait(job["id"], "FAILED", "COMPLETED", timeout=40)
        assert ended["status"] == "FAILED"
        assert ended["attempts"] == attempts
        assert "timeout" in ended["error"] or "timed out" in ended["error"]


def test_two_schedulers_survive_the_leader_being_killed(procs: Processes) -> None:
    procs.env["CLOUDTASK_SCHEDULER_LEASE_SECONDS"] = "4"
    api, _, _, first, second = procs.start_side_by_side(
        "api", "results", "worker", "scheduler", "scheduler"
    )
    client = procs.client(api)

    def leader_flags() -> list[float]:
        return [metric(s.url, "cloudtask_scheduler_leader") for s in (first, second)]

    deadline = time.monotonic() + 10
    while sorted(leader_flags()) != [0.0, 1.0]:
        assert time.monotonic() < deadline, leader_flags()
        time.sleep(0.2)
    leader, follower = (first, second) if leader_flags()[0] == 1.0 else (second, first)
    jobs = [client.submit(type="echo", payload=i, delaySeconds=2) for i in range(20)]
    leader.signal(signal.SIGKILL)
    killed = time.monotonic()
    while metric(follower.url, "cloudtask_scheduler_leader") != 1.0:
        assert time.monotonic() - killed < 4 + 1.5, "the follower did not take over in time"
        time.sleep(0.1)
    for job in jobs:
        done = client.wait(job["id"], "COMPLETED", timeout=30)
        assert done["attempts"] == 1
    worker = procs.started[2]
    assert metric(worker.url, "cloudtask_worker_jobs_started_total") == len(jobs)


def test_a_real_cron_firing_creates_exactly_one_job(procs: Processes) -> None:
    api, *_ = procs.start_side_by_side("api", "results", "worker", "scheduler", "scheduler")
    client = procs.client(api)
    response = client.http.post(
        "/schedules",
        json={"name": "yearly", "cron": "0 0 1 1 *", "type": "echo", "payload": "tick"},
    )
    assert response.status_code == 201
    schedule = response.json()
    first_run = datetime.fromisoformat(schedule["nextRunAt"])
    assert (first_run.month, first_run.day, first_run.hour, first_run.minute) == (1, 1, 0, 0)
    # Rather than wait for New Year, the first firing is brought forward to a second from now,
    # in the database; the schedulers fire it as they find it.
    moved = execute(
        procs.env["CLOUDTASK_DATABASE_URL"],
        "UPDATE schedules SET next_run_at = now() + interval '1 second' WHERE id = $1::uuid",
        schedule["id"],
    )
    assert moved == "UPDATE 1"
    due = client.http.get(f"/schedules/{schedule['id']}").json()["nextRunAt"]
    deadline = time.monotonic() + 20
    fired: list[dict[str, object]] = []
    while not fired:
        assert time.monotonic() < deadline, "no firing within 20 s"
        time.sleep(0.2)
        fired = [j for j in client.http.get("/jobs").json() if j["scheduleId"] == schedule["id"]]
    job = client.wait(str(fired[0]["id"]), "COMPLETED")
    assert job["result"] == "tick"
    assert job["runAt"] == due
    time.sleep(1)  # a second scheduler creating a duplicate would have done so by now
    listing = client.http.get("/jobs").json()
    assert [j["runAt"] for j in listing if j["scheduleId"] == schedule["id"]] == [job["runAt"]]
    # The next firing is the cron's again: the New Year after this one.
    after = client.http.get(f"/schedules/{schedule['id']}").json()["nextRunAt"]
    assert after == f"{datetime.fromisoformat(due).year + 1}-01-01T00:00:00Z"


def test_a_worker_without_a_types_handler_leaves_its_jobs_to_one_with_it(
    procs: Processes,
) -> None:
    # As in a rolling deploy that adds a handler: one worker has it, the other not yet.
    client = _stack(procs, *HANDLERS)
    procs.start("worker", cwd=ROOT)
    jobs = [client.submit(type="e2e.double", payload={"n": n}) for n in range(6)]
    for n, job in enumerate(jobs):
        done = client.wait(job["id"], "COMPLETED", "FAILED", timeout=30)
        assert (done["status"], done["result"]) == ("COMPLETED", {"doubled": 2 * n})
    unknown = client.submit(type="e2e.nowhere", payload={})
    failed = client.wait(unknown["id"], "COMPLETED", "FAILED", timeout=30)
    assert failed["error"] == "unknown job type: e2e.nowhere"
