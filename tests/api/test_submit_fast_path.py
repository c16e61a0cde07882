"""``POST /jobs`` has a fast path past FastAPI's dependency layers. It must answer exactly what
the declared route answers: it takes the valid requests, and leaves every other one, its body
already read, to the route. Each request here is sent with the fast path on and with it off."""

from typing import Any

import pytest
from sqlalchemy import delete
from starlette.responses import Response

from cloudtask.api.jsonbody import StrictJSONRequest
from cloudtask.api.routes import jobs
from cloudtask.db.tables import jobs as jobs_table
from cloudtask.db.tables import users
from tests.helpers import Client, unique_email

VOLATILE = {"id", "createdAt", "updatedAt", "runAt", "timestamp"}


class CountingFastPath:
    """The real fast path, noting whether it answered, left the request to the route, or raised
    (an error found past validation, such as a reused key, answered by the error handlers)."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    async def __call__(self, request: StrictJSONRequest) -> Response | None:
        try:
            answer = await jobs._submit_fast(request)
        except Exception:
            self.outcomes.append("raised")
            raise
        self.outcomes.append("passed" if answer is None else "answered")
        return answer


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(item) for item in value]
    return value


async def _answer(
    client: Client, headers: dict[str, str], content: bytes, run: str
) -> tuple[Any, ...]:
    """The answer, without what differs between two runs; each run has its own key."""
    if "Idempotency-Key" in headers and headers["Idempotency-Key"] == "KEY":
        headers = {**headers, "Idempotency-Key": f"key-{run}"}
    response = await client.http.post("/jobs", headers=headers, content=content)
    kept = ("content-type", "www-authenticate", "idempotent-replayed")
    return (
        response.status_code,
        _stable(response.json()),
        {name: response.headers.get(name) for name in kept},
    )


@pytest.fixture
async def token(client: Client) -> str:
    return await client.register()


def _cases(token: str, gone: str) -> list[tuple[str, dict[str, str], bytes, str]]:
    """(name, headers, body, what the fast path does with it)."""
    auth = {"Authorization": f"Bearer {token}"}
    ok = b'{"type": "echo", "payload": {"n": 1}, "priority": 7, "maxAttempts": 2}'
    later = b'{"type": "echo", "runAt": "2030-01-01T00:00:00Z", "delaySeconds": 5}'
    return [
        ("valid", auth, ok, "answered"),
        ("valid, delayed", auth, b'{"type": "echo", "delaySeconds": 30}', "answered"),
        ("a key", {**auth, "Idempotency-Key": "KEY"}, ok, "answered"),
        ("the key replayed", {**auth, "Idempotency-Key": "KEY"}, ok, "answered"),
        ("the key, another body", {**auth, "Idempotency-Key": "KEY"}, b'{"type": "x"}', "raised"),
        ("an empty key", {**auth, "Idempotency-Key": ""}, ok, "passed"),
        ("a key too long", {**auth, "Idempotency-Key": "k" * 256}, ok, "passed"),
        ("no token", {}, ok, "passed"),
        ("a forged token", {"Authorization": f"Bearer {token}x"}, ok, "passed"),
        ("not a bearer", {"Authorization": f"Basic {token}"}, ok, "passed"),
        ("a user removed", {"Authorization": f"Bearer {gone}"}, ok, "raised"),
        ("malformed JSON", auth, b'{"type": "echo",', "passed"),
        ("NaN", auth, b'{"type": "echo", "payload": NaN}', "passed"),
        ("an empty body", auth, b"", "passed"),
        ("an array", auth, b'[{"type": "echo"}]', "passed"),
        ("a missing type", auth, b'{"payload": 1}', "passed"),
        ("a string priority", auth, b'{"type": "echo", "priority": "7"}', "passed"),
        ("an unknown field (ignored)", auth, b'{"type": "echo", "colour": "red"}', "answered"),
        ("runAt and delaySeconds", auth, later, "passed"),
        ("a bad email payload", auth, b'{"type": "email", "payload": {"to": "nobody"}}', "passed"),
        ("a bad sleep payload", auth, b'{"type": "sleep", "payload": {"seconds": 0}}', "passed"),
    ]


async def _token_of_a_removed_user(client: Client) -> str:
    """A user this api process has seen (so it trusts the token without asking the database),
    then removed: the write itself finds out."""
    email = unique_email()
    token = await client.register(email)
    await client.create_job(token)
    async with client.backends.db.begin() as conn:
        await conn.execute(delete(jobs_table).where(jobs_table.c.type == "echo"))
        await conn.execute(delete(users).where(users.c.email_key == email))
    return token


async def test_the_fast_path_answers_valid_submissions_as_the_route_does_and_leaves_the_rest(
    client: Client, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = await _token_of_a_removed_user(client)
    cases = _cases(token, gone)

    monkeypatch.setattr(jobs.create_job, "fast_path", None)
    by_route = [await _answer(client, headers, body, "route") for _, headers, body, _ in cases]

    fast = CountingFastPath()
    monkeypatch.setattr(jobs.create_job, "fast_path", fast)
    by_fast_path = [await _answer(client, headers, body, "fast") for _, headers, body, _ in cases]

    for (name, *_), expected, got in zip(cases, by_route, by_fast_path, strict=True):
        assert got == expected, name
    assert fast.outcomes == [outcome for *_, outcome in cases]
    assert by_route[0][0] == 201
    assert by_route[3][2]["idempotent-replayed"] == "true"
