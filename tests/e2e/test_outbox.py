"""Nothing accepted is lost between the database and RabbitMQ (the transactional outbox)."""

import concurrent.futures
import secrets
import subprocess
import time

import httpx
import pytest

from tests.e2e.amqp import read_messages
from tests.e2e.processes import CLOUDTASK, Process, Processes
from tests.infra import RABBIT_HOST, rabbitmqctl


def _token(api: Process) -> str:
    email = f"outbox-{secrets.token_hex(4)}@example.com"
    response = httpx.post(
        f"{api.url}/auth/register", json={"email": email, "password": "password123"}
    )
    assert response.status_code == 201, response.text
    token: str = response.json()["token"]
    return token


def _submit(api: Process, token: str, count: int) -> set[str]:
    def one(index: int) -> str:
        response = httpx.post(
            f"{api.url}/jobs",
            json={"type": "echo", "payload": index},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert response.status_code == 201, response.text
        job_id: str = response.json()["id"]
        return job_id

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return set(pool.map(one, range(count)))


@pytest.mark.alone
def test_jobs_accepted_while_rabbitmq_is_down_are_published_when_it_returns(
    procs: Processes,
) -> None:
    api = procs.start("api")
    token = _token(api)
    rabbitmqctl("stop_app")
    try:
        started = time.monotonic()
        accepted = _submit(api, token, 5)
        assert time.monotonic() - started < 2
        health = httpx.get(f"{api.url}/actuator/health", timeout=5)
        assert health.status_code == 503
        assert health.json()["components"]["broker"] == {"status": "DOWN"}
    finally:
        rabbitmqctl("start_app")
    seen = read_messages(procs.env["CLOUDTASK_RABBITMQ_URL"], "jobs.created", wanted=accepted)
    assert accepted <= set(seen)
    api.wait_healthy("/actuator/health", timeout=30)


def test_jobs_accepted_before_the_api_is_killed_are_published_after_it_restarts(
    procs: Processes,
) -> None:
    # A vhost that does not exist yet: the API cannot publish, so every message waits in the
    # outbox when the process is killed.
    vhost = f"ct-later-{secrets.token_hex(4)}"
    later = f"amqp://guest:guest@{RABBIT_HOST}/{vhost}"
    api = procs.start("api", env={"CLOUDTASK_RABBITMQ_URL": later}, up_even_if_degraded=True)
    accepted = _submit(api, _token(api), 10)
    api.kill()
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        procs.start("api", env={"CLOUDTASK_RABBITMQ_URL": later})
        seen = read_messages(later, "jobs.created", wanted=accepted)
        assert accepted <= set(seen)
    finally:
        subprocess.run(
            ["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60, check=False
        )


def test_a_burst_cut_short_by_sigkill_loses_nothing(procs: Processes) -> None:
    api = procs.start("api")
    accepted = _submit(api, _token(api), 40)
    api.kill()
    procs.start("api")
    seen = read_messages(procs.env["CLOUDTASK_RABBITMQ_URL"], "jobs.created", wanted=accepted)
    assert accepted <= set(seen)


def test_pending_jobs_whose_messages_were_purged_run_once_queued_again(procs: Processes) -> None:
    # Purged from jobs.created, they stayed PENDING for good: nothing can tell a lost message
    # from one waiting in a long queue but the operator, who runs `cloudtask requeue`.
    api = procs.start("api", env={"CLOUDTASK_OUTBOX_RELAY_AFTER_SECONDS": "0.5"})
    client = procs.client(api)
    lost = {client.submit(type="echo", payload=n)["id"] for n in range(3)}
    url = procs.env["CLOUDTASK_RABBITMQ_URL"]
    assert lost <= set(read_messages(url, "jobs.created", wanted=lost))  # taken, and gone
    done = subprocess.run(
        [CLOUDTASK, "requeue", "--older-than", "0"],
        env=procs.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("queued again 3 PENDING job(s) waiting since before ")
    procs.start_side_by_side("worker", "results")
    for job_id in lost:
        job = client.wait(job_id, "COMPLETED", "FAILED")
        assert (job["status"], job["attempts"]) == ("COMPLETED", 1)
