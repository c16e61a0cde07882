"""POST /jobs, GET /jobs, GET /jobs/{id}, cancel and retry."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy import select, update

from cloudtask.api.app import create_app
from cloudtask.contracts import jsoncodec
from cloudtask.contracts.messages import JobCreated
from cloudtask.contracts.queues import JOBS_CREATED
from cloudtask.contracts.signals import cancel_key
from cloudtask.contracts.statuses import JobStatus
from cloudtask.db import session
from cloudtask.db.queries import jobs as jobs_q
from cloudtask.db.tables import jobs
from cloudtask.errors import DatabaseUnavailable
from cloudtask.kv.redis import RedisKV
from cloudtask.settings import Settings
from tests.conftest import JWT_SECRET, Backends
from tests.helpers import Client, assert_error, eventually
from tests.services import scheduling

JOB_FIELDS = {
    "id", "type", "payload", "status", "priority", "attempts", "maxAttempts", "timeoutSeconds",
    "runAt", "result", "error", "scheduleId", "createdAt", "updatedAt", "startedAt", "finishedAt",
}  # fmt: skip


def _time(value: str) -> datetime:
    assert value.endswith("Z")
    return datetime.fromisoformat(value)


async def test_a_due_job_is_stored_pending_with_the_contract_defaults(client: Client) -> None:
    token = await client.register()
    job = await client.create_job(token, type="echo", payload={"hello": "world"})
    assert set(job) == JOB_FIELDS
    uuid.UUID(job["id"])
    assert job["status"] == "PENDING"
    assert job["attempts"] == 0
    assert (job["priority"], job["maxAttempts"], job["timeoutSeconds"]) == (5, 3, 300)
    assert job["payload"] == {"hello": "world"}
    assert job["result"] is None and job["error"] is None and job["scheduleId"] is None
    assert job["startedAt"] is None and job["finishedAt"] is None
    assert _time(job["runAt"]) <= _time(job["createdAt"]) + timedelta(seconds=1)
    assert await client.get_job(token, job["id"]) == job


async def test_the_payload_is_kept_exactly_as_submitted(client: Client) -> None:
    token = await client.register()
    payloads = [
        None,
        [1, "two", {"three": 3.5}],
        "text",
        12345678901234567890123456789,
        {"nested": {"list": [True, False, None]}, "unicode": "žluťoučký 🐎"},
    ]
    for payload in payloads:
        job = await client.create_job(token, payload=payload)
        assert job["payload"] == payload
        assert (await client.get_job(token, job["id"]))["payload"] == payload
    default = await client.http.post("/jobs", json={"type": "echo"}, headers=client.auth(token))
    assert default.json()["payload"] is None


async def test_a_due_job_is_published_on_jobs_created_with_its_priority(client: Client) -> None:
    token = await client.register()
    job = await client.create_job(token, type="echo", payload={"n": 1}, priority=7)
    delivery = await eventually(lambda: client.backends.broker.get(JOBS_CREATED))
    await delivery.ack()
    message = JobCreated.model_validate_json(delivery.body)
    assert str(message.job_id) == job["id"]
    assert message.type == "echo" and message.payload == {"n": 1}
    assert message.priority == 7 and delivery.priority == 7
    assert message.attempt == 1 and message.timeout_seconds == 300
    raw = jsoncodec.loads(delivery.body)
    assert set(raw) == {
        "jobId", "userId", "type", "payload", "priority", "attempt", "timeoutSeconds", "enqueuedAt",
    }  # fmt: skip


async def test_a_job_for_later_waits_scheduled_and_is_not_published(client: Client) -> None:
    token = await client.register()
    later = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    by_time = await client.create_job(token, runAt=later.isoformat().replace("+00:00", "Z"))
    by_delay = await client.create_job(token, delaySeconds=30)
    assert by_time["status"] == by_delay["status"] == "SCHEDULED"
    assert _time(by_time["runAt"]) == later
    delay = _time(by_delay["runAt"]) - _time(by_delay["createdAt"])
    assert delay == timedelta(seconds=30)
    marker = await client.create_job(token)
    delivery = await eventually(lambda: client.backends.broker.get(JOBS_CREATED))
    await delivery.ack()
    assert JobCreated.model_validate_json(delivery.body).job_id == uuid.UUID(marker["id"])
    assert await client.backends.broker.get(JOBS_CREATED) is None


async def test_run_at_in_the_past_or_with_an_offset_is_understood(client: Client) -> None:
    token = await client.register()
    past = await client.create_job(token, runAt="2020-01-01T00:00:00Z")
    assert past["status"] == "PENDING"
    assert past["runAt"] == "2020-01-01T00:00:00Z"
    offset = await client.create_job(token, runAt="2099-06-01T12:00:00+02:00")
    assert offset["runAt"] == "2099-06-01T10:00:00Z"


async def test_jobs_are_listed_newest_first_with_filters(client: Client) -> None:
    token = await client.register()
    first = await client.create_job(token, type="echo")
    second = await client.create_job(token, type="sleep", payload={"seconds": 1})
    third = await client.create_job(token, type="echo", delaySeconds=60)
    listing = await client.http.get("/jobs", headers=client.auth(token))
    assert listing.status_code == 200
    assert [j["id"] for j in listing.json()] == [third["id"], second["id"], first["id"]]
    assert "Link" not in listing.headers
    by_type = await client.http.get("/jobs", params={"type": "echo"}, headers=client.auth(token))
    assert [j["id"] for j in by_type.json()] == [third["id"], first["id"]]
    by_status = await client.http.get(
        "/jobs", params={"status": "SCHEDULED"}, headers=client.auth(token)
    )
    assert [j["id"] for j in by_status.json()] == [third["id"]]


async def test_pages_follow_the_link_header_until_none_remain(client: Client) -> None:
    token = await client.register()
    created = [(await client.create_job(token, payload=i))["id"] for i in range(7)]
    seen: list[str] = []
    url: str | None = "/jobs?limit=3&type=echo"
    pages = 0
    while url is not None:
        response = await client.http.get(url, headers=client.auth(token))
        assert response.status_code == 200
        seen += [job["id"] for job in response.json()]
        pages += 1
        link = response.headers.get("Link")
        url = None
        if link is not None:
            assert link.endswith('>; rel="next"')
            url = link[1 : link.index(">")]
            assert url.startswith("http://cloudtask.test/jobs?")
            assert "type=echo" in url and "limit=3" in url
    assert pages == 3
    assert seen == list(reversed(created))


async def test_jobs_are_listed_by_creation_time_also_when_written_in_another_order(
    client: Client,
) -> None:
    # A single job stamped on arrival can be written after a batch stamped later: the listing
    # follows createdAt, the time it shows, and jobs of one moment (a batch) newest written first.
    token = await client.register()
    user_id = uuid.UUID(jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["sub"])
    start = datetime(2026, 5, 1, 12, tzinfo=UTC)
    offsets = [2.0, 0.0, 1.0, 1.0, 0.000001, 3.0]  # seconds after start, in order of writing
    written = []
    for n, offset in enumerate(offsets):
        job = scheduling.due_job(user_id, payload=str(n))
        job.created_at = job.run_at = start + timedelta(seconds=offset)
        written.append(job)
    async with session.autocommit(client.backends.db) as conn:
        await jobs_q.submit(conn, written)
    expected = [str(written[n].id) for n in (5, 0, 3, 2, 4, 1)]

    listing = await client.http.get("/jobs", headers=client.auth(token))
    assert [job["id"] for job in listing.json()] == expected
    created = [_time(job["createdAt"]) for job in listing.json()]
    assert created == sorted(created, reverse=True)
    for query in ("limit=1", "limit=2&status=PENDING", "limit=4&type=echo"):
        seen: list[str] = []
        url: str | None = f"/jobs?{query}"
        while url is not None:
            response = await client.http.get(url, headers=client.auth(token))
            assert response.status_code == 200, response.text
            seen += [job["id"] for job in response.json()]
            link = response.headers.get("Link")
            url = None if link is None else link[1 : link.index(">")]
        assert seen == expected


async def test_cancelling_a_waiting_job_makes_it_cancelled_and_tells_the_workers(
    client: Client,
) -> None:
    token = await client.register()
    for body in ({"type": "echo"}, {"type": "echo", "delaySeconds": 60}):
        job = await client.create_job(token, **body)
        response = await client.http.post(f"/jobs/{job['id']}/cancel", headers=client.auth(token))
        assert response.status_code == 200
        cancelled = response.json()
        assert cancelled["status"] == "CANCELLED"
        assert cancelled["finishedAt"] is not None
        assert await client.backends.kv.get(cancel_key(job["id"])) is not None
        again = await client.http.post(f"/jobs/{job['id']}/cancel", headers=client.auth(token))
        assert "CANCELLED" in assert_error(again, 409)["message"]


async def test_cancelling_a_running_job_asks_it_to_stop(client: Client) -> None:
    token = await client.register()
    job = await client.create_job(token)
    async with client.backends.db.begin() as conn:
        await conn.execute(
            update(jobs).where(jobs.c.id == uuid.UUID(job["id"])).values(status="RUNNING")
        )
    heard: list[bytes] = []
    await client.backends.kv.subscribe("cloudtask:cancel", heard.append)
    response = await client.http.post(f"/jobs/{job['id']}/cancel", headers=client.auth(token))
    assert response.status_code == 200
    assert response.json()["status"] == "RUNNING"
    # The channel is the whole Redis server's: other test processes' cancels may come too.
    assert await eventually(lambda: _heard(heard, job["id"].encode()))


async def _heard(items: list[bytes], wanted: bytes) -> bool:
    return wanted in items


async def test_cancelling_a_finished_job_is_409(client: Client) -> None:
    token = await client.register()
    for status in ("COMPLETED", "FAILED"):
        job = await client.create_job(token)
        async with client.backends.db.begin() as conn:
            await conn.execute(
                update(jobs).where(jobs.c.id == uuid.UUID(job["id"])).values(status=status)
            )
        response = await client.http.post(f"/jobs/{job['id']}/cancel", headers=client.auth(token))
        assert status in assert_error(response, 409)["message"]


async def test_retrying_a_failed_or_cancelled_job_creates_a_new_one(client: Client) -> None:
    token = await client.register()
    original = await client.create_job(
        token, type="echo", payload={"k": [1]}, priority=8, maxAttempts=5, timeoutSeconds=12.5
    )
    refused = await client.http.post(f"/jobs/{original['id']}/retry", headers=client.auth(token))
    assert "PENDING" in assert_error(refused, 409)["message"]
    async with client.backends.db.begin() as conn:
        await conn.execute(
            update(jobs)
            .where(jobs.c.id == uuid.UUID(original["id"]))
            .values(status="FAILED", attempts=5, error="boom")
        )
    response = await client.http.post(f"/jobs/{original['id']}/retry", headers=client.auth(token))
    assert response.status_code == 201
    retried = response.json()
    assert retried["id"] != original["id"]
    assert retried["status"] == "PENDING" and retried["attempts"] == 0
    for field in ("type", "payload", "priority", "maxAttempts", "timeoutSeconds"):
        assert retried[field] == original[field]
    assert (await client.get_job(token, original["id"]))["status"] == "FAILED"


async def test_each_answer_creating_one_job_or_schedule_names_it_in_location(
    client: Client,
) -> None:
    token = await client.register()
    auth = client.auth(token)

    async def chunked() -> Any:
        yield b'{"type": "echo", "payload": 2}'  # no Content-Length: past the submit lane

    answers = [
        await client.http.post("/jobs", json={"type": "echo", "payload": 1}, headers=auth),
        await client.http.post("/jobs", content=chunked(), headers=auth),
    ]
    keyed = {**auth, "Idempotency-Key": "location-1"}
    answers.append(await client.http.post("/jobs", json={"type": "echo"}, headers=keyed))
    replayed = await client.http.post("/jobs", json={"type": "echo"}, headers=keyed)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.headers["Location"] == answers[-1].headers["Location"]
    async with client.backends.db.begin() as conn:
        failed = uuid.UUID(answers[0].json()["id"])
        await conn.execute(update(jobs).where(jobs.c.id == failed).values(status="FAILED"))
    answers.append(await client.http.post(f"/jobs/{failed}/retry", headers=auth))
    schedule = {"name": "n", "cron": "0 * * * *", "type": "echo"}
    answers.append(await client.http.post("/schedules", json=schedule, headers=auth))
    for answer in answers:
        assert answer.status_code == 201, answer.text
        location = answer.headers["Location"]
        assert location.rsplit("/", 1)[1] == answer.json()["id"]
        read = await client.http.get(location, headers=auth)
        assert read.status_code == 200 and read.json()["id"] == answer.json()["id"]
    batch = await client.http.post("/jobs/batch", json={"jobs": [{"type": "echo"}]}, headers=auth)
    assert batch.status_code == 201 and "Location" not in batch.headers  # many, not one


async def test_job_ids_are_time_ordered_on_every_path_that_creates_jobs(client: Client) -> None:
    # Version 7: new entries of jobs.id's unique index land on its right edge (db/ids.py).
    token = await client.register()
    single = uuid.UUID((await client.create_job(token, type="echo"))["id"])
    response = await client.http.post(
        "/jobs/batch", json={"jobs": [{"type": "echo"}] * 20}, headers=client.auth(token)
    )
    batch = [uuid.UUID(job["id"]) for job in response.json()]
    async with client.backends.db.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == single).values(status="FAILED"))
    response = await client.http.post(f"/jobs/{single}/retry", headers=client.auth(token))
    retried = uuid.UUID(response.json()["id"])
    ids = [single, *batch, retried]
    assert {job_id.version for job_id in ids} == {7}
    assert ids == sorted(ids)  # in the order they were created, a batch's included
    assert len(set(ids)) == len(ids)


async def test_a_batch_is_stored_in_request_order(client: Client) -> None:
    token = await client.register()
    bodies = [{"type": "echo", "payload": i, "priority": i % 10} for i in range(25)]
    bodies.append({"type": "echo", "delaySeconds": 60})
    response = await client.http.post(
        "/jobs/batch", json={"jobs": bodies}, headers=client.auth(token)
    )
    assert response.status_code == 201
    created = response.json()
    assert [job["payload"] for job in created[:25]] == list(range(25))
    assert [job["status"] for job in created] == ["PENDING"] * 25 + ["SCHEDULED"]
    listing = await client.http.get("/jobs?limit=500", headers=client.auth(token))
    assert len(listing.json()) == 26


async def test_one_bad_job_rejects_the_whole_batch(client: Client) -> None:
    token = await client.register()
    bodies = [{"type": "echo"}] * 5 + [{"type": "echo", "priority": 99}]
    response = await client.http.post(
        "/jobs/batch", json={"jobs": bodies}, headers=client.auth(token)
    )
    error = assert_error(response, 400, "/jobs/batch")
    assert [d["field"] for d in error["details"]] == ["jobs[5].priority"]
    bad_payload = [{"type": "echo"}, {"type": "sleep", "payload": {"seconds": 0}}]
    response = await client.http.post(
        "/jobs/batch", json={"jobs": bad_payload}, headers=client.auth(token)
    )
    assert [d["field"] for d in assert_error(response, 400)["details"]] == [
        "jobs[1].payload.seconds"
    ]
    for jobs_value in ([], [{"type": "echo"}] * 1001, "nope"):
        response = await client.http.post(
            "/jobs/batch", json={"jobs": jobs_value}, headers=client.auth(token)
        )
        assert_error(response, 400)
    listing = await client.http.get("/jobs", headers=client.auth(token))
    assert listing.json() == []


async def test_a_cancel_the_workers_cannot_hear_is_503_and_changes_nothing(
    client: Client, backends: Backends, settings: Settings
) -> None:
    # This api process cannot reach the key-value store the workers read cancellations from:
    # cancelling in the database alone would let a queued copy run, or a running one go on.
    token = await client.register()
    waiting = await client.create_job(token)
    running = await client.create_job(token)
    async with client.backends.db.begin() as conn:
        await conn.execute(
            update(jobs).where(jobs.c.id == uuid.UUID(running["id"])).values(status="RUNNING")
        )
    down = RedisKV("redis://127.0.0.1:1/0", timeout=0.2)
    app = create_app(settings, db=backends.db, broker=backends.broker, kv=down)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://cloudtask.test"
            ) as cut_off,
        ):
            for job in (waiting, running):
                path = f"/jobs/{job['id']}/cancel"
                assert_error(await cut_off.post(path, headers=client.auth(token)), 503, path)
    finally:
        await down.close()
    assert (await client.get_job(token, waiting["id"]))["status"] == "PENDING"
    async with client.backends.db.connect() as conn:
        ids = [uuid.UUID(job["id"]) for job in (waiting, running)]
        query = select(jobs.c.cancel_requested).where(jobs.c.id.in_(ids))
        asked = (await conn.execute(query)).scalars().all()
    assert asked == [False, False]
    response = await client.http.post(f"/jobs/{waiting['id']}/cancel", headers=client.auth(token))
    assert response.json()["status"] == "CANCELLED"


async def test_a_cancel_the_database_refused_takes_back_only_a_flag_of_its_own(
    client: Client, backends: Backends, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await client.register()
    taken = await client.create_job(token, type="echo")
    # A worker runs it: the first cancel is made, the job's report decides.
    async with session.transaction(client.backends.db) as conn:
        await conn.execute(
            update(jobs)
            .where(jobs.c.id == uuid.UUID(taken["id"]))
            .values(status=JobStatus.RUNNING, attempts=1)
        )
    first = await client.http.post(f"/jobs/{taken['id']}/cancel", headers=client.auth(token))
    assert (first.status_code, first.json()["status"]) == (200, "RUNNING")
    waiting = await client.create_job(token, type="echo")

    async def refused(*args: Any, **kwargs: Any) -> None:
        raise DatabaseUnavailable("database: the commit failed")

    monkeypatch.setattr(jobs_q, "cancel", refused)
    app = create_app(settings, db=backends.db, broker=backends.broker, kv=backends.kv)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        for job in (taken, waiting):
            path = f"/jobs/{job['id']}/cancel"
            assert_error(await http.post(path, headers=client.auth(token)), 503, path)
    # The first cancel stands, its flag with it; the failed one of a job not cancelled leaves
    # none to stop it.
    assert await client.backends.kv.get(cancel_key(taken["id"])) == b"1"
    assert await client.backends.kv.get(cancel_key(waiting["id"])) is None
