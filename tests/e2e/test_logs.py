"""Logs of real processes: JSON lines, lines about a job keyed by ``jobId`` (and ``attempt``) and
``service``, and never a password, a token, a JWT secret or a payload.

Every connection URL carries a password of its own (a PostgreSQL role, a RabbitMQ user and a Redis
ACL user made for the test, an SMTP server that refuses connections), so a URL that reaches a log
line unredacted is caught.
"""

import asyncio
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis

from tests.conftest import JWT_SECRET
from tests.e2e.processes import Process, Processes, free_port
from tests.infra import admin, rabbitmqctl

SERVICES = ("api", "worker", "results", "scheduler")
JWT = re.compile(r"eyJ[\w-]{5,}\.[\w-]{5,}")
# A log line about an attempt (the worker running it, the results-processor recording it) names it.
FINAL = {"COMPLETED", "FAILED", "CANCELLED"}
ATTEMPT_ACTIONS = {"job.started", "job.finished", "job.requeued", "job.retry_scheduled"}


def _marker(kind: str) -> str:
    return f"{kind}-{secrets.token_hex(8)}"


async def _grant(database_url: str, role: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'GRANT ALL ON ALL TABLES IN SCHEMA public TO "{role}"')
        await conn.execute(f'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    finally:
        await conn.close()


async def _revoke(database_url: str, role: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP OWNED BY "{role}"')
    finally:
        await conn.close()


@pytest.fixture
def passwords() -> dict[str, str]:
    return {kind: _marker(kind) for kind in ("pgpass", "mqpass", "kvpass", "smtppass")}


@pytest.fixture
def secret_urls(
    pg_url: str, rabbit_url: str, redis_url: str, passwords: dict[str, str]
) -> Iterator[dict[str, str]]:
    """CLOUDTASK_* URLs whose users have passwords: a role, a RabbitMQ user, a Redis ACL user."""
    user = f"ct_logs_{secrets.token_hex(4)}"
    pg, mq, kv = urlsplit(pg_url), urlsplit(rabbit_url), urlsplit(redis_url)
    admin(f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{passwords['pgpass']}'")
    asyncio.run(_grant(pg_url, user))
    rabbitmqctl("add_user", user, passwords["mqpass"])
    rabbitmqctl("set_permissions", "-p", mq.path.lstrip("/"), user, ".*", ".*", ".*")
    client = redis.Redis.from_url(redis_url)
    client.execute_command("ACL", "SETUSER", user, "on", f">{passwords['kvpass']}", "~*", "&*",
                           "+@all")  # fmt: skip
    try:
        yield {
            "CLOUDTASK_DATABASE_URL": f"postgresql://{user}:{passwords['pgpass']}@{pg.hostname}:"
            f"{pg.port}{pg.path}",
            "CLOUDTASK_RABBITMQ_URL": f"amqp://{user}:{passwords['mqpass']}@{mq.hostname}:"
            f"{mq.port}{mq.path}",
            "CLOUDTASK_REDIS_URL": f"redis://{user}:{passwords['kvpass']}@{kv.hostname}:"
            f"{kv.port}{kv.path}",
            # Nothing listens there: every email attempt fails, and is retried.
            "CLOUDTASK_SMTP_URL": f"smtp://mailer:{passwords['smtppass']}@127.0.0.1:{free_port()}",
        }
    finally:
        client.execute_command("ACL", "DELUSER", user)
        client.close()
        rabbitmqctl("delete_user", user)
        asyncio.run(_revoke(pg_url, user))
        admin(f'DROP ROLE "{user}"')


def _start(procs: Processes) -> dict[str, Process]:
    return dict(zip(SERVICES, procs.start_side_by_side(*SERVICES), strict=True))


def _lines(process: Process) -> list[dict[str, Any]]:
    """Every line the process wrote, each parsed as one JSON object."""
    entries = []
    for line in process.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{process.args[0]} wrote a line that is not JSON: {line!r}")
        assert isinstance(entry, dict), line
        assert {"timestamp", "level", "service", "message"} <= entry.keys(), line
        assert entry["service"] == process.args[0], line
        entries.append(entry)
    return entries


def _assert_no_secret(text: str, secrets_: list[str]) -> None:
    for secret in secrets_:
        assert secret not in text, f"a log line holds {secret!r}"
    assert not JWT.search(text), f"a log line holds a JWT: {JWT.search(text)}"


@pytest.fixture
def failing_web() -> Iterator[int]:
    """A web server on loopback answering every request 502; its port."""

    class Failing(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(502)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _run_jobs(
    api: Process, password: str, payload_marker: str, web_port: int
) -> tuple[list[str], list[str]]:
    """Register, log in (once wrongly), send a forged token, run jobs; returns job ids, tokens."""
    email = f"logs-{secrets.token_hex(4)}@example.com"
    with httpx.Client(base_url=api.url, timeout=10) as http:
        registered = http.post("/auth/register", json={"email": email, "password": password})
        assert registered.status_code == 201, registered.text
        wrong = http.post("/auth/login", json={"email": email, "password": password + "x"})
        assert wrong.status_code == 401
        login = http.post("/auth/login", json={"email": email, "password": password})
        tokens = [registered.json()["token"], login.json()["token"]]
        forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJtYWxsb3J5In0.forgedsig"
        assert http.get("/jobs", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
        http.headers["Authorization"] = f"Bearer {tokens[1]}"
        bodies = [
            {"type": "echo", "payload": {"note": payload_marker}},
            {"type": "no.such.type", "payload": {"note": payload_marker}},
            {"type": "email", "payload": {"to": "ada@example.com", "subject": "Hi"},
             "maxAttempts": 2},
            # A token in a URL's query: the HTTP client logged each request's URL, and the
            # job's error named it.
            {"type": "http", "maxAttempts": 1, "payload": {
                "url": f"http://127.0.0.1:{web_port}/hook?access_token={payload_marker}"}},
        ]  # fmt: skip
        ids = [http.post("/jobs", json=body).json()["id"] for body in bodies]
        for job_id, final in zip(ids, ("COMPLETED", "FAILED", "FAILED", "FAILED"), strict=True):
            assert _wait_final(http, job_id) == final, job_id
    return ids, tokens


def _wait_final(http: httpx.Client, job_id: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while (status := http.get(f"/jobs/{job_id}").json()["status"]) not in FINAL:
        assert time.monotonic() < deadline, f"job {job_id} still {status}"
        time.sleep(0.1)
    return str(status)


def test_a_full_run_logs_json_lines_keyed_by_job_and_no_secret(
    procs: Processes, secret_urls: dict[str, str], passwords: dict[str, str], failing_web: int
) -> None:
    procs.env.update(secret_urls, CLOUDTASK_HTTP_ALLOWED_HOSTS="127.0.0.1")
    stack = _start(procs)
    password, payload_marker = _marker("regpass"), _marker("payload")
    job_ids, tokens = _run_jobs(stack["api"], password, payload_marker, failing_web)
    for name in reversed(SERVICES):
        assert stack[name].stop() == 0, f"{name} did not stop cleanly"
    entries = {name: _lines(process) for name, process in stack.items()}
    for name, lines in entries.items():
        assert lines, f"{name} logged nothing"
        for entry in lines:
            if "jobId" in entry and entry.get("action") in ATTEMPT_ACTIONS:
                assert isinstance(entry.get("attempt"), int), entry
    for job_id in job_ids:
        about = [e for lines in entries.values() for e in lines if job_id in json.dumps(e)]
        for entry in about:
            assert entry.get("jobId") == job_id, f"a line about {job_id} lacks its jobId: {entry}"
        services = {e["service"] for e in about}
        assert {"api", "worker", "results"} <= services, (job_id, services)
    email = [e for e in entries["worker"] if e.get("jobId") == job_ids[2]]
    steps = [(e["action"], e["attempt"]) for e in email]
    assert steps == [
        ("job.started", 1),
        ("job.finished", 1),
        ("job.started", 2),
        ("job.finished", 2),
    ]
    recorded = [e for e in entries["results"] if e.get("jobId") == job_ids[2]]
    assert [(e["status"], e["attempt"]) for e in recorded] == [("SCHEDULED", 1), ("FAILED", 2)]
    # Each attempt's record names the worker that ran it, as the worker's own lines do.
    ran_by = {(e["attempt"], e["workerId"]) for e in email}
    assert {(e["attempt"], e["workerId"]) for e in recorded} <= ran_by, (recorded, email)
    assert all(isinstance(e["workerId"], str) for e in recorded)
    text = "\n".join(process.log() for process in stack.values())
    _assert_no_secret(text, [*passwords.values(), password, payload_marker, JWT_SECRET, *tokens])


def test_unreachable_dependencies_are_logged_without_their_passwords(procs: Processes) -> None:
    passwords = [_marker(kind) for kind in ("pgpass", "mqpass", "kvpass")]
    closed = [free_port() for _ in passwords]
    procs.env.update(
        CLOUDTASK_DATABASE_URL=f"postgresql://ct:{passwords[0]}@127.0.0.1:{closed[0]}/ct",
        CLOUDTASK_RABBITMQ_URL=f"amqp://ct:{passwords[1]}@127.0.0.1:{closed[1]}/",
        CLOUDTASK_REDIS_URL=f"redis://ct:{passwords[2]}@127.0.0.1:{closed[2]}/0",
    )
    started = procs.start_side_by_side(*SERVICES, up_even_if_degraded=True)
    register = {"email": "down@example.com", "password": _marker("regpass")}
    assert (
        httpx.post(f"{started[0].url}/auth/register", json=register, timeout=10).status_code == 503
    )
    deadline = time.monotonic() + 20
    while not all(_warned(process) for process in started):
        assert time.monotonic() < deadline, "a service did not report its unreachable dependency"
        time.sleep(0.2)
    for process in started:
        _assert_no_secret(process.log(), [*passwords, register["password"]])


def _warned(process: Process) -> bool:
    return any(entry["level"] in {"warning", "error"} for entry in _lines(process))
