"""Every job endpoint needs a valid token, and a user sees only their own jobs."""

import base64
import json
import time
import uuid

import jwt
import pytest

from tests.conftest import JWT_SECRET
from tests.helpers import Client, assert_error

JOB = "3f2b8c1e-0d4a-4c6e-9b7a-2f1e5d6c7b8a"  # fixed: test ids must be the same in every process
ENDPOINTS = [
    ("POST", "/jobs", {"type": "echo"}),
    ("POST", "/jobs/batch", {"jobs": [{"type": "echo"}]}),
    ("GET", "/jobs", None),
    ("GET", f"/jobs/{JOB}", None),
    ("POST", f"/jobs/{JOB}/cancel", None),
    ("POST", f"/jobs/{JOB}/retry", None),
]


def _forged(claims: dict[str, object], key: str = JWT_SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def _alg_none(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = str(uuid.uuid4())
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"{header}.{forged_payload}.{signature}"


async def _bad_authorizations(client: Client) -> dict[str, dict[str, str]]:
    token = await client.register()
    now = int(time.time())
    claims = {"sub": str(uuid.uuid4()), "email": "x@example.com", "iat": now, "exp": now + 60}
    expired = {**claims, "iat": now - 7200, "exp": now - 3600}
    return {
        "missing": {},
        "garbage": {"Authorization": "Bearer not-a-token"},
        "not bearer": {"Authorization": f"Basic {token}"},
        "alg none": {"Authorization": f"Bearer {_alg_none(claims)}"},
        "wrong key": {"Authorization": f"Bearer {_forged(claims, 'another-key-' * 4)}"},
        "tampered claims": {"Authorization": f"Bearer {_tampered(token)}"},
        "expired": {"Authorization": f"Bearer {_forged(expired)}"},
        "no exp": {"Authorization": f"Bearer {_forged({'sub': claims['sub'], 'iat': now})}"},
    }


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_every_job_endpoint_answers_401_without_a_valid_token(
    client: Client, method: str, path: str, body: dict[str, object] | None
) -> None:
    for name, headers in (await _bad_authorizations(client)).items():
        response = await client.http.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, name
        assert_error(response, 401, path)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), name


@pytest.mark.parametrize("path", ["/jobs", "/jobs/batch", "/schedules"])
async def test_a_body_that_cannot_be_read_is_401_before_400_without_a_valid_token(
    client: Client, path: str
) -> None:
    bad = await _bad_authorizations(client)
    for name in ("missing", "garbage", "expired"):
        for body, content_type in (("{bad", "application/json"), ("type=echo", "text/plain")):
            headers = {**bad[name], "Content-Type": content_type}
            response = await client.http.post(path, content=body, headers=headers)
            assert_error(response, 401, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
    # With a valid token, the body is what is wrong; and the routes that need no token say so.
    token = await client.register()
    headers = {**client.auth(token), "Content-Type": "application/json"}
    assert_error(await client.http.post(path, content="{bad", headers=headers), 400, path)
    register = await client.http.post("/auth/register", content="{bad", headers=headers)
    assert_error(register, 400, "/auth/register")


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_two_authorization_headers_are_401_whichever_comes_first(
    client: Client, method: str, path: str, body: dict[str, object] | None
) -> None:
    valid = f"Bearer {await client.register()}"
    for pair in ((valid, "Bearer garbage"), ("Bearer garbage", valid), (valid, valid)):
        headers = [("Authorization", value) for value in pair]
        response = await client.http.request(method, path, json=body, headers=headers)
        assert_error(response, 401, path)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_a_valid_token_is_accepted(client: Client) -> None:
    token = await client.register()
    response = await client.http.get("/jobs", headers=client.auth(token))
    assert response.status_code == 200


async def test_another_users_job_is_404_exactly_like_an_unknown_one(client: Client) -> None:
    alice, bob = await client.register(), await client.register()
    job = await client.create_job(alice, payload={"secret": 1})
    for method, suffix in (("GET", ""), ("POST", "/cancel"), ("POST", "/retry")):
        theirs = await client.http.request(
            method, f"/jobs/{job['id']}{suffix}", headers=client.auth(bob)
        )
        unknown = await client.http.request(
            method, f"/jobs/{uuid.uuid4()}{suffix}", headers=client.auth(bob)
        )
        malformed = await client.http.request(
            method, f"/jobs/not-a-uuid{suffix}", headers=client.auth(bob)
        )
        bodies = [assert_error(r, 404) for r in (theirs, unknown, malformed)]
        assert len({b["message"] for b in bodies}) == 1
        assert "secret" not in theirs.text
    listing = await client.http.get("/jobs", headers=client.auth(bob))
    assert listing.json() == []
    assert (await client.get_job(alice, job["id"]))["status"] == "PENDING"


async def test_a_job_is_found_only_at_its_id_as_the_api_writes_it(client: Client) -> None:
    token = await client.register()
    job_id = (await client.create_job(token))["id"]
    hex_digits = uuid.UUID(job_id).hex
    slashed = f"{job_id[:8]}%2F{job_id[9:]}"  # an encoded slash: one malformed segment
    spellings = (f"{{{job_id}}}", f"urn:uuid:{job_id}", hex_digits, job_id[:-1], slashed, "a%2fb")
    for spelling in spellings:
        for method, suffix in (("GET", ""), ("POST", "/cancel"), ("POST", "/retry")):
            path = f"/jobs/{spelling}{suffix}"
            response = await client.http.request(method, path, headers=client.auth(token))
            assert assert_error(response, 404)["message"] == "Job not found", path
    assert_error(await client.http.get("/jobs/a%2Fb"), 401)  # the token is asked for first
    upper = await client.http.get(f"/jobs/{job_id.upper()}", headers=client.auth(token))
    assert upper.status_code == 200 and upper.json()["id"] == job_id
    assert (await client.get_job(token, job_id))["status"] == "PENDING"
