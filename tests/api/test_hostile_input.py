"""Inputs that are valid JSON or a valid token, yet nothing the system could store or carry:
each is a clear 4xx in the error body, never a 500."""

import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, select

from cloudtask.api import context as api_context
from cloudtask.api.app import create_app
from cloudtask.api.security import TokenService
from cloudtask.contracts.jsoncodec import MAX_DEPTH
from cloudtask.db.tables import jobs, users
from cloudtask.settings import Settings
from tests.conftest import JWT_SECRET, Backends
from tests.helpers import Client, assert_error, unique_email
from tests.openapi_check import OpenAPICheck

SCHEDULE = {"name": "nightly", "cron": "0 3 * * *", "type": "echo"}


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("run_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
async def test_a_run_at_outside_the_years_utc_can_hold_is_400(client: Client, run_at: str) -> None:
    token = await client.register()
    single = await client.http.post(
        "/jobs", json={"type": "echo", "runAt": run_at}, headers=client.auth(token)
    )
    assert [d["field"] for d in assert_error(single, 400, "/jobs")["details"]] == ["runAt"]
    batch = await client.http.post(
        "/jobs/batch",
        json={"jobs": [{"type": "echo"}, {"type": "echo", "runAt": run_at}]},
        headers=client.auth(token),
    )
    assert [d["field"] for d in assert_error(batch, 400)["details"]] == ["jobs[1].runAt"]
    assert (await client.http.get("/jobs", headers=client.auth(token))).json() == []


async def test_the_extreme_times_utc_can_hold_are_accepted(client: Client) -> None:
    token = await client.register()
    job = await client.create_job(token, runAt="9999-12-31T23:59:59Z")
    assert (job["status"], job["runAt"]) == ("SCHEDULED", "9999-12-31T23:59:59Z")
    job = await client.create_job(token, runAt="0001-01-01T00:00:00Z")
    assert job["status"] == "PENDING"


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("/auth/login", '{"email": "\\ud800@example.com", "password": "long-enough"}'),
        ("/auth/register", '{"email": "a@example.com", "password": "long-enough\\udc00"}'),
        ("/jobs", '{"type": "echo", "payload": {"text": "half a pair: \\ud83d"}}'),
        ("/jobs", '{"type": "echo", "payload": {"\\udfff": 1}}'),
    ],
)
async def test_an_unpaired_surrogate_anywhere_is_a_400_malformed_body(
    client: Client, path: str, text: str
) -> None:
    token = await client.register()
    headers = {**client.auth(token), "Content-Type": "application/json"}
    response = await client.http.post(path, content=text.encode(), headers=headers)
    error = assert_error(response, 400, path)
    assert error["details"][0]["field"] == "body"
    assert "surrogate" in error["details"][0]["message"]


async def test_a_surrogate_pair_and_an_escaped_backslash_u_are_ordinary_text(
    client: Client,
) -> None:
    token = await client.register()
    text = '{"type": "echo", "payload": ["\\ud83d\\ude00", "\\\\ud800"]}'
    headers = {**client.auth(token), "Content-Type": "application/json"}
    response = await client.http.post("/jobs", content=text.encode(), headers=headers)
    assert response.status_code == 201, response.text
    assert response.json()["payload"] == ["\U0001f600", "\\ud800"]


async def test_nul_in_a_stored_text_field_is_400_and_in_a_payload_is_data(client: Client) -> None:
    token = await client.register()
    login = await client.http.post(
        "/auth/login", json={"email": "a\x00b@example.com", "password": "long-enough"}
    )
    assert [d["field"] for d in assert_error(login, 400)["details"]] == ["email"]
    for field in ("name", "cron", "timezone"):
        body = {**SCHEDULE, field: f"{SCHEDULE.get(field, 'UTC')}\x00"}
        response = await client.http.post("/schedules", json=body, headers=client.auth(token))
        assert field in [d["field"] for d in assert_error(response, 400)["details"]]
    # The published schema says so too, so a client validating against it agrees.
    schemas = (await client.http.get("/openapi.json")).json()["components"]["schemas"]
    for schema, field in (
        ("Credentials", "email"),
        ("ScheduleCreate", "name"),
        ("ScheduleCreate", "timezone"),
    ):
        pattern = schemas[schema]["properties"][field]["pattern"]
        assert re.search(pattern, "a\x00b") is None and re.search(pattern, "ab"), (schema, field)
    job = await client.create_job(token, payload={"nul": "a\x00b"})
    assert job["payload"] == {"nul": "a\x00b"}
    assert (await client.get_job(token, job["id"]))["payload"] == {"nul": "a\x00b"}


async def test_nesting_up_to_the_limit_is_accepted_and_deeper_is_a_400(client: Client) -> None:
    token = await client.register()
    headers = {**client.auth(token), "Content-Type": "application/json"}
    # The body object is one level, so the payload may nest one level less than the limit.
    fits = f'{{"type": "echo", "payload": {_nested(MAX_DEPTH - 1)}}}'
    response = await client.http.post("/jobs", content=fits.encode(), headers=headers)
    assert response.status_code == 201, response.text
    for depth in (MAX_DEPTH, 5000):
        deep = f'{{"type": "echo", "payload": {_nested(depth)}}}'
        for path in ("/jobs", "/auth/register"):
            response = await client.http.post(path, content=deep.encode(), headers=headers)
            error = assert_error(response, 400, path)
            assert error["details"][0]["field"] == "body"
            assert "nested" in error["details"][0]["message"]
    listed = (await client.http.get("/jobs", headers=client.auth(token))).json()
    assert len(listed) == 1


async def test_a_batch_takes_the_payloads_post_jobs_takes_and_no_deeper(client: Client) -> None:
    token = await client.register()
    headers = {**client.auth(token), "Content-Type": "application/json", "Idempotency-Key": "k"}
    # {"jobs": [job]} puts each job's body two levels down: the limit moves with it.
    fits = f'{{"jobs": [{{"type": "echo", "payload": {_nested(MAX_DEPTH - 1)}}}]}}'
    response = await client.http.post("/jobs/batch", content=fits.encode(), headers=headers)
    assert response.status_code == 201, response.text
    replayed = await client.http.post("/jobs/batch", content=fits.encode(), headers=headers)
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert replayed.json() == response.json()
    deep = f'{{"jobs": [{{"type": "echo", "payload": {_nested(MAX_DEPTH)}}}]}}'
    response = await client.http.post("/jobs/batch", content=deep.encode(), headers=headers)
    message = assert_error(response, 400, "/jobs/batch")["details"][0]["message"]
    # The limit a client knows, that of POST /jobs, not the batch body's own (two levels more).
    assert f"nested more than {MAX_DEPTH} levels deep" in message
    assert len((await client.http.get("/jobs", headers=client.auth(token))).json()) == 1


async def test_a_well_signed_token_of_a_user_that_does_not_exist_is_401(client: Client) -> None:
    ghost = TokenService(JWT_SECRET, 3600).issue(uuid.uuid4(), "ghost@example.com")
    headers = client.auth(ghost)
    calls: list[tuple[str, str, Any]] = [
        ("GET", "/jobs", None),
        ("POST", "/jobs", {"type": "echo"}),
        ("POST", "/jobs/batch", {"jobs": [{"type": "echo"}]}),
        ("GET", "/schedules", None),
        ("POST", "/schedules", SCHEDULE),
    ]
    for method, path, body in calls:
        response = await client.http.request(method, path, json=body, headers=headers)
        assert_error(response, 401, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_a_token_that_outlived_its_user_is_401_for_writes_at_once_and_reads_soon(
    client: Client, backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    email = unique_email()
    token = await client.register(email)
    keyed = {**client.auth(token), "Idempotency-Key": "made-before"}
    first = await client.http.post("/jobs", json={"type": "echo"}, headers=keyed)
    assert first.status_code == 201
    waiting = await client.create_job(token, delaySeconds=3600)
    cancel = await client.http.post(f"/jobs/{waiting['id']}/cancel", headers=client.auth(token))
    assert cancel.json()["status"] == "CANCELLED"
    async with backends.db.begin() as conn:
        theirs = select(users.c.id).where(users.c.email_key == email).scalar_subquery()
        await conn.execute(delete(jobs).where(jobs.c.user_id == theirs))
        await conn.execute(delete(users).where(users.c.email_key == email))
    # A retry creates a job too (the one it names went with its user: 401, not 404).
    retry = f"/jobs/{waiting['id']}/retry"
    creations = (("/jobs", {"type": "echo"}), ("/schedules", SCHEDULE), (retry, None))
    for path, body in creations:
        response = await client.http.post(path, json=body, headers=client.auth(token))
        assert_error(response, 401, path)
        assert response.headers["WWW-Authenticate"] == "Bearer"
    # Nor is the answer kept for its Idempotency-Key replayed: the job it names is gone too.
    replay = await client.http.post("/jobs", json={"type": "echo"}, headers=keyed)
    assert_error(replay, 401, "/jobs")
    # Reads trust a user found in the last minute; after that the lookup is made again.
    later = time.monotonic() + 61
    monkeypatch.setattr(api_context, "time", SimpleNamespace(monotonic=lambda: later))
    response = await client.http.get("/jobs", headers=client.auth(token))
    assert_error(response, 401, "/jobs")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/jobs"), ("POST", "/jobs/{id}/cancel"), ("GET", "/no/such/route")],
)
async def test_a_body_over_1_mib_is_413_on_every_route(
    client: Client, method: str, path: str
) -> None:
    token = await client.register()
    job = await client.create_job(token)
    path = path.format(id=job["id"])
    response = await client.http.request(
        method, path, content=b"x" * (1024 * 1024 + 1), headers=client.auth(token)
    )
    assert_error(response, 413, path)
    assert (await client.get_job(token, job["id"]))["status"] != "CANCELLED"


async def _chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        chunk = b" " * min(size, total - sent)
        sent += len(chunk)
        yield chunk


@pytest.mark.parametrize(("method", "path"), [("GET", "/jobs"), ("POST", "/jobs")])
async def test_a_chunked_body_over_1_mib_is_413_and_under_it_is_read_as_usual(
    client: Client, method: str, path: str
) -> None:
    token = await client.register()
    headers = client.auth(token)
    response = await client.http.request(
        method, path, content=_chunks(1024 * 1024 + 1), headers=headers
    )
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert_error(response, 413, path)
    body = b'{"type": "echo", "payload": "chunked"}'

    async def small() -> AsyncIterator[bytes]:
        yield body[:10]
        yield body[10:]

    created = await client.http.post("/jobs", content=small(), headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["payload"] == "chunked"


async def test_every_operation_documents_413_and_503_in_the_error_body(client: Client) -> None:
    document = (await client.http.get("/openapi.json")).json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for code in ("413", "500", "503"):
                assert code in operation["responses"], (method, path, code)


async def test_an_unexpected_error_is_a_500_in_the_error_body_and_ends_there(
    backends: Backends, settings: Settings
) -> None:
    # The exception does not reach the server (which would drop the keep-alive connection).
    app = create_app(settings, db=backends.db, broker=backends.broker, kv=backends.kv)

    async def broken() -> None:
        raise RuntimeError("boom")

    FastAPI.add_api_route(app, "/broken", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=True)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/broken")
        body = assert_error(response, 500, "/broken")
        assert "boom" not in response.text and body["message"]
        email = unique_email()
        registered = await http.post(
            "/auth/register", json={"email": email, "password": "long-enough"}
        )
        assert registered.status_code == 201


def _patterns(node: Any) -> Iterator[str]:
    """Every ``pattern`` in an OpenAPI document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from _patterns(value)
    elif isinstance(node, list):
        for item in node:
            yield from _patterns(item)


async def test_the_email_address_rule_means_the_same_to_the_server_as_to_its_schema(
    client: Client,
) -> None:
    # ECMA-262's \s, which a client validating against /openapi.json uses, differs from the
    # server's (U+0085); the published pattern names its spaces instead.
    document = (await client.http.get("/openapi.json")).json()
    assert "\\s" not in str(document["components"]["schemas"])
    # Nor a \u escape, which RE2 (Go's regular expressions) cannot read.
    patterns = list(_patterns(document))
    assert patterns and not [p for p in patterns if "\\u" in p]
    token = await client.register()
    await client.create_job(
        token, type="email", payload={"to": "a\u00e4b@example.com", "subject": "Hi"}
    )
    for to in (
        "a b@example.com",
        "a@exa\tmple.com",
        "a\r\nBcc: x@example.com",
        "a\u0085b@example.com",
        "a\u00a0b@example.com",  # beyond ASCII too: the SMTP client refuses every space
        "a@exa\u3000mple.com",
    ):
        response = await client.http.post(
            "/jobs",
            json={"type": "email", "payload": {"to": to, "subject": "Hi"}},
            headers=client.auth(token),
        )
        assert [d["field"] for d in assert_error(response, 400)["details"]] == ["payload.to"]


# Bodies on the edge of a rule: the published request schema and the server must agree on each.
EDGE_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("/auth/register", {"email": "a" * 64 + "@example.com", "password": "long-enough"}),
    ("/auth/register", {"email": "a" * 65 + "@example.com", "password": "long-enough"}),
    ("/auth/register", {"email": "a.b@example.com", "password": "long-enough"}),
    ("/auth/register", {"email": "a..b@example.com", "password": "long-enough"}),
    ("/jobs", {"type": "http", "payload": {"url": "http://x", "headers": {"X-Ok": "v"}}}),
    ("/jobs", {"type": "http", "payload": {"url": "http://x", "headers": {"bad key": "v"}}}),
    ("/jobs", {"type": "http", "payload": {"url": "http://x", "headers": {"": "v"}}}),
    ("/jobs", {"type": "email", "payload": {"to": "a,b@example.com", "subject": "Hi"}}),
    ("/jobs", {"type": "email", "payload": {"to": "\u00e4@example.com", "subject": "Hi"}}),
    ("/jobs", {"type": "email", "payload": {"to": "a@example.com", "subject": "a\u2028b"}}),
    ("/jobs", {"type": "email", "payload": {"to": "a@example.com", "subject": "a\x85b"}}),
    ("/jobs", {"type": "email", "payload": {"to": "a@example.com", "subject": "caf\u00e9"}}),
    ("/jobs", {"type": "echo", "runAt": "2030-01-01T00:00:00Z"}),
    ("/jobs", {"type": "echo", "runAt": "2030-01-01 00:00:00Z"}),
    ("/jobs", {"type": "echo", "runAt": "2030-06-15T12:34:60Z"}),
    ("/jobs", {"type": "echo", "runAt": "2030-02-30T00:00:00Z"}),
]


async def test_the_request_schemas_refuse_exactly_what_the_server_refuses(client: Client) -> None:
    check = OpenAPICheck((await client.http.get("/openapi.json")).json())
    token = await client.register()
    for path, body in EDGE_BODIES:
        response = await client.http.post(path, json=body, headers=client.auth(token))
        assert response.status_code in (201, 400), response.text
        refused_by_schema = check.request_problems("POST", path, body)
        assert bool(refused_by_schema) == (response.status_code == 400), (
            body,
            response.text,
            refused_by_schema,
        )
