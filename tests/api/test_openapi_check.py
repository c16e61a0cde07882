"""The check every API test's answers go through (``tests/openapi_check.py``) rejects what the
document does not allow: without this, a check that passes everything would go unnoticed."""

import json
from typing import Any

import httpx

from tests.helpers import Client
from tests.openapi_check import OpenAPICheck


def _answer(
    method: str, path: str, status: int, body: Any = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    content = b"" if body is None else json.dumps(body).encode()
    return httpx.Response(
        status,
        content=content,
        headers={"content-type": "application/json", **(headers or {})},
        request=httpx.Request(method, f"http://cloudtask.test{path}"),
    )


async def test_the_check_rejects_what_the_document_does_not_allow(client: Client) -> None:
    token = await client.register()
    job = await client.create_job(token, payload={"n": 1})
    error = {"status": 404, "error": "Not Found", "message": "Job not found", "path": "/jobs/x"}
    check = OpenAPICheck((await client.http.get("/openapi.json")).json())

    assert check.problems(_answer("GET", f"/jobs/{job['id']}", 200, job)) == []
    assert check.problems(_answer("POST", "/jobs/batch", 201, [job, job])) == []
    good_error = {**error, "timestamp": "2026-11-29T10:00:00.000Z"}
    assert check.problems(_answer("GET", "/jobs/x", 404, good_error)) == []
    assert check.problems(_answer("GET", "/no/such/path", 404, {})) == []  # not documented

    (undocumented,) = check.problems(_answer("GET", "/jobs/x", 418, good_error))
    assert "status not documented" in undocumented
    assert any(
        "'uuid'" in p for p in check.problems(_answer("GET", "/jobs/x", 200, {**job, "id": "x"}))
    )
    missing = check.problems(_answer("POST", "/jobs/batch", 201, [job, {"id": job["id"]}]))
    assert "body at /1: 'type' is a required property" in missing[0]
    (stamp,) = check.problems(_answer("GET", "/jobs/x", 404, {**error, "timestamp": "today"}))
    assert "'today' is not a 'date-time'" in stamp
    throttled = {**good_error, "status": 429, "error": "Too Many Requests"}
    (retry,) = check.problems(
        _answer("POST", "/auth/login", 429, throttled, {"Retry-After": "soon"})
    )
    assert "Retry-After" in retry
    (media,) = check.problems(_answer("GET", "/jobs/x", 200, job, {"content-type": "text/html"}))
    assert "content type 'text/html'" in media
    (body,) = check.problems(_answer("DELETE", "/schedules/x", 204, {"deleted": True}))
    assert "a body where none is documented" in body
