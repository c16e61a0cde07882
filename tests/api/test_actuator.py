"""/actuator/health, /actuator/prometheus and /openapi.json."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from cloudtask.api.app import create_app
from cloudtask.broker.memory import MemoryBroker
from cloudtask.db.engine import create_engine
from cloudtask.db.migrate import upgrade_async
from cloudtask.kv.memory import MemoryKV
from cloudtask.kv.redis import RedisKV
from cloudtask.settings import Settings
from tests import infra
from tests.conftest import Backends
from tests.helpers import Client, assert_error


async def test_health_lists_each_dependency_up_and_nothing_secret(client: Client) -> None:
    response = await client.http.get("/actuator/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "UP",
        "components": {
            "db": {"status": "UP"},
            "broker": {"status": "UP"},
            "redis": {"status": "UP"},
        },
    }
    for secret in ("guest", "password", "postgres", "redis://", "amqp://"):
        assert secret not in response.text


async def test_health_is_503_naming_the_dependency_that_is_down(
    backends: Backends, settings: Settings
) -> None:
    if backends.kind == "memory":
        down = MemoryKV()
        await down.close()
    else:
        down = RedisKV("redis://127.0.0.1:1/0", timeout=0.5)
    app = create_app(settings, db=backends.db, broker=backends.broker, kv=down)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.get("/actuator/health")
    await down.close()
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "DOWN"
    assert body["components"]["redis"] == {"status": "DOWN"}
    assert body["components"]["db"] == {"status": "UP"}


@contextlib.asynccontextmanager
async def _empty_database(backends: Backends, tmp_path: Path) -> AsyncIterator[str]:
    """A database of the test's kind that answers and holds no table."""
    if backends.kind == "memory":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    name = f"ct_empty_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(infra.admin, f'CREATE DATABASE "{name}"')
    try:
        yield infra.pg_url(name)
    finally:
        await asyncio.to_thread(infra.admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _database_health(backends: Backends, settings: Settings, url: str) -> str:
    """The db component of the api's health on the database at ``url``."""
    engine = create_engine(url)
    app = create_app(settings, db=engine, broker=backends.broker, kv=backends.kv)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as http:
            response = await http.get("/actuator/health")
    finally:
        await engine.dispose()
    components = response.json()["components"]
    assert components["broker"] == components["redis"] == {"status": "UP"}
    assert response.status_code == (200 if components["db"] == {"status": "UP"} else 503)
    status: str = components["db"]["status"]
    return status


async def test_health_is_503_naming_a_database_not_migrated_to_this_versions_schema(
    backends: Backends, settings: Settings, tmp_path: Path
) -> None:
    # It answered 200 while every request that needed a table failed, and on an older version's
    # schema while requests needing what it lacks did.
    async with _empty_database(backends, tmp_path) as url:
        assert await _database_health(backends, settings, url) == "DOWN"
        await upgrade_async(url, "0004")
        assert await _database_health(backends, settings, url) == "DOWN"
        await upgrade_async(url)
        assert await _database_health(backends, settings, url) == "UP"
        # Migrated by a later version: a service started on it (rolled back) is not refused.
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE alembic_version SET version_num = '9001'"))
        finally:
            await engine.dispose()
        assert await _database_health(backends, settings, url) == "UP"


@contextlib.asynccontextmanager
async def _on_a_database_that_refuses(
    backends: Backends, settings: Settings
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The api on the test's PostgreSQL under a role it does not have (as when a role was dropped
    or a password rotated), and a client of it."""
    url = make_url(backends.database_url).set(username="ct_no_such_role")
    refused = create_engine(url.render_as_string(hide_password=False))
    app = create_app(settings, db=refused, broker=backends.broker, kv=backends.kv)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://t",
        ) as http:
            yield app, http
    finally:
        await refused.dispose()


async def test_a_database_that_turns_connections_away_is_503_on_every_route(
    client: Client, backends: Backends, settings: Settings
) -> None:
    # A role dropped or a password rotated: PostgreSQL answers, and refuses. Each route answers
    # 503 in the error body, as when it cannot be reached, and health names the database.
    if backends.kind == "memory":
        pytest.skip("SQLite has no server to refuse a connection")
    token = await client.register()
    credentials = {"email": "refused@example.com", "password": "correct-horse"}
    async with _on_a_database_that_refuses(backends, settings) as (_, http):
        for method, path, body in [
            ("POST", "/auth/register", credentials),
            ("POST", "/auth/login", credentials),
            ("POST", "/jobs", {"type": "echo"}),
            ("POST", "/jobs/batch", {"jobs": [{"type": "echo"}]}),
            ("GET", "/jobs", None),
            ("GET", "/schedules", None),
        ]:
            response = await http.request(method, path, json=body, headers=client.auth(token))
            assert_error(response, 503, path)
        health = await http.get("/actuator/health")
    assert health.status_code == 503
    assert health.json()["components"]["db"] == {"status": "DOWN"}


async def test_an_idempotency_key_answer_is_replayed_while_the_database_turns_connections_away(
    client: Client, backends: Backends, settings: Settings
) -> None:
    # The replay asks the database whether the user still exists; one that cannot say does
    # not stop the replay (the answer was true when it was kept).
    if backends.kind == "memory":
        pytest.skip("SQLite has no server to refuse a connection")
    token = await client.register()
    keyed = {**client.auth(token), "Idempotency-Key": "kept"}
    first = await client.http.post("/jobs", json={"type": "echo"}, headers=keyed)
    assert first.status_code == 201
    async with _on_a_database_that_refuses(backends, settings) as (app, http):
        # An api process that saw this user within the last minute, as the one that answered.
        claims = jwt.decode(token, options={"verify_signature": False})
        app.state.context.known_users.add(uuid.UUID(claims["sub"]))
        replay = await http.post("/jobs", json={"type": "echo"}, headers=keyed)
    assert (replay.status_code, replay.json()) == (201, first.json())
    assert replay.headers["Idempotent-Replayed"] == "true"


async def test_health_reports_a_closed_broker(backends: Backends, settings: Settings) -> None:
    broker = MemoryBroker()
    app = create_app(settings, db=backends.db, broker=broker, kv=backends.kv)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://t"
    ) as http:
        response = await http.get("/actuator/health")
    assert response.status_code == 503
    assert response.json()["components"]["broker"] == {"status": "DOWN"}


async def test_prometheus_counts_requests_by_route_and_jobs_by_type(client: Client) -> None:
    token = await client.register()
    await client.create_job(token, type="echo")
    await client.http.get("/jobs/not-a-job", headers=client.auth(token))
    await client.http.get("/openapi.json")
    await client.http.get("/no/such/path/42")
    response = await client.http.get("/actuator/prometheus")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'cloudtask_jobs_created_total{type="echo"} 1.0' in text
    assert 'route="/jobs/{job_id}",status="404"' in text
    assert (
        'cloudtask_http_request_duration_seconds_bucket{le="0.001",method="POST",route="/jobs"}'
        in text
    )
    assert "not-a-job" not in text
    assert 'method="GET",route="/openapi.json",status="200"' in text
    assert 'method="GET",route="unmatched",status="404"' in text
    assert "/no/such/path" not in text


async def test_openapi_documents_every_route_with_the_error_body(client: Client) -> None:
    response = await client.http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = document["paths"]
    expected = {
        ("/auth/register", "post"), ("/auth/login", "post"), ("/jobs", "post"),
        ("/jobs", "get"), ("/jobs/batch", "post"), ("/jobs/{job_id}", "get"),
        ("/jobs/{job_id}/cancel", "post"), ("/jobs/{job_id}/retry", "post"),
        ("/actuator/health", "get"), ("/actuator/prometheus", "get"),
    }  # fmt: skip
    assert expected <= {(path, method) for path, item in paths.items() for method in item}
    schemas = document["components"]["schemas"]
    assert {"Job", "JobCreate", "ErrorBody", "AuthResponse", "Registration"} <= set(schemas)
    assert "HTTPValidationError" not in schemas
    for path, item in paths.items():
        for method, operation in item.items():
            responses = operation["responses"]
            # Only where an Idempotency-Key may be reused with another body.
            keyed = method == "post" and path in ("/jobs", "/jobs/batch", "/schedules")
            assert "422" not in responses or keyed, (path, method)
            # Any request may be refused by the HTTP parser (400) or for its size (413).
            for code in ("400", "413", "500"):
                assert responses[code]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"
                }, (path, method, code)
            assert "503" in responses, (path, method)  # health's is its own body
    create = paths["/jobs"]["post"]
    assert "Idempotency-Key" in [p["name"] for p in create["parameters"]]
    assert set(create["responses"]) >= {"201", "400", "401", "409", "413", "422", "500"}
    # The headers the contract promises are in the document too.
    for path in ("/jobs", "/schedules"):
        headers = paths[path]["post"]["responses"]["201"]["headers"]
        assert set(headers) == {"Idempotent-Replayed", "Location"}
    assert set(paths["/jobs/{job_id}/retry"]["post"]["responses"]["201"]["headers"]) == {"Location"}
    assert set(paths["/jobs/batch"]["post"]["responses"]["201"]["headers"]) == {
        "Idempotent-Replayed"
    }
    assert set(paths["/jobs"]["get"]["responses"]["200"]["headers"]) == {"Link"}
    assert set(paths["/auth/login"]["post"]["responses"]["429"]["headers"]) == {"Retry-After"}
    # Logging in is refused for its credentials, not for a token it does not take.
    assert "Invalid credentials" in paths["/auth/login"]["post"]["responses"]["401"]["description"]
    assert "token" in create["responses"]["401"]["description"]
    for path, item in paths.items():
        for method, operation in item.items():
            if "401" in operation["responses"]:
                headers = operation["responses"]["401"]["headers"]
                assert headers["WWW-Authenticate"]["schema"]["enum"] == ["Bearer"], (path, method)
    assert_error(await client.http.get("/openapi.yaml"), 404)


async def test_openapi_gives_the_documented_defaults_and_required_fields(client: Client) -> None:
    document = (await client.http.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    defaults = {
        name: {
            field: schemas[name]["properties"][field].get("default", "(none)") for field in fields
        }
        for name, fields in {
            "JobCreate": ("payload", "priority", "maxAttempts", "timeoutSeconds"),
            "ScheduleCreate": ("payload", "timezone"),
        }.items()
    }
    assert defaults == {
        "JobCreate": {"payload": None, "priority": 5, "maxAttempts": 3, "timeoutSeconds": 300},
        "ScheduleCreate": {"payload": None, "timezone": "UTC"},
    }
    assert set(schemas["AuthResponse"]["required"]) == {
        "token", "accessToken", "tokenType", "expiresIn"
    }  # fmt: skip
    limit = next(p for p in document["paths"]["/jobs"]["get"]["parameters"] if p["name"] == "limit")
    assert limit["schema"]["default"] == 50


async def test_a_batch_counts_each_of_its_jobs_by_type(client: Client) -> None:
    token = await client.register()
    jobs = [{"type": "echo"}, {"type": "sleep", "payload": {"seconds": 0.01}}, {"type": "echo"}]
    response = await client.http.post(
        "/jobs/batch", json={"jobs": jobs}, headers=client.auth(token)
    )
    assert response.status_code == 201
    text = (await client.http.get("/actuator/prometheus")).text
    assert 'cloudtask_jobs_created_total{type="echo"} 2.0' in text
    assert 'cloudtask_jobs_created_total{type="sleep"} 1.0' in text
