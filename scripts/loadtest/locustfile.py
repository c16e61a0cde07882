"""The original job-service's load test, for Locust (headless): each simulated user registers
(or logs in) once, then submits ``POST /jobs`` with a fresh ``Idempotency-Key`` at a steady pace,
so that all users together aim at ``--job-rate`` jobs/s (300 by default, the original's target).
At the end the run fails (exit code 1) if the 95th percentile is over ``--p95-limit-ms`` (3 s, the
original's goal) or more than 1% of requests failed.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/locust -f scripts/loadtest/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --host http://localhost:8080

Only ever point it at a CloudTask you run yourself (localhost). See docs/benchmarks.md.
"""

import uuid
from typing import Any

from locust import FastHttpUser, constant_pacing, events, task
from locust.env import Environment

PASSWORD = "loadtest-password"


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _options(parser: Any) -> None:
    parser.add_argument(
        "--job-rate", type=float, default=300, help="jobs/s all users aim at together (300)"
    )
    parser.add_argument("--job-type", default="echo", help="type of the submitted jobs (echo)")
    parser.add_argument(
        "--p95-limit-ms", type=float, default=3000, help="fail the run above this p95 (3000)"
    )


class JobSubmitter(FastHttpUser):
    """One client of the API: a registered user submitting jobs at its share of the rate."""

    def wait_time(self) -> float:
        # Constant pacing: each user starts a request every users/rate seconds, whatever the
        # answer took (at once when it took longer), so all users together aim at --job-rate.
        options = self.environment.parsed_options
        interval = max(1, options.num_users or 1) / options.job_rate
        return constant_pacing(interval)(self)

    def on_start(self) -> None:
        email = f"loadtest-{uuid.uuid4().hex[:12]}@example.com"
        credentials = {"email": email, "password": PASSWORD}
        with self.client.post(
            "/auth/register", json=credentials, name="/auth/register", catch_response=True
        ) as registered:
            if registered.status_code == 409:  # a rerun with the same email: log in instead
                registered.success()
            elif registered.status_code != 201:
                registered.failure(f"register answered {registered.status_code}")
                return
        answer = registered
        if registered.status_code == 409:
            answer = self.client.post("/auth/login", json=credentials, name="/auth/login")
        self.token = answer.json()["token"]

    @task
    def submit_job(self) -> None:
        body = {
            "type": self.environment.parsed_options.job_type,
            "payload": {"submittedBy": "locust", "nonce": uuid.uuid4().hex},
            "priority": 5,
        }
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Idempotency-Key": str(uuid.uuid4()),
        }
        with self.client.post(
            "/jobs", json=body, headers=headers, name="/jobs", catch_response=True
        ) as response:
            if response.status_code != 201:
                response.failure(f"answered {response.status_code}: {response.text[:200]}")


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _verdict(environment: Environment, **_kwargs: Any) -> None:
    options = environment.parsed_options
    if options is None:  # run as a library, without the command line
        return
    stats = environment.stats.total
    limit = options.p95_limit_ms
    p95 = stats.get_response_time_percentile(0.95) or 0
    if stats.fail_ratio > 0.01:
        print(f"FAILED: {stats.fail_ratio:.1%} of requests failed")
        environment.process_exit_code = 1
    elif p95 > limit:
        print(f"FAILED: p95 {p95:.0f} ms is over {limit:.0f} ms")
        environment.process_exit_code = 1
    else:
        print(f"OK: {stats.total_rps:.0f} requests/s, p95 {p95:.0f} ms")
