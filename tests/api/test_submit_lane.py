"""``POST /jobs`` is answered at the door (``SubmitLane``), past Starlette's middleware and
FastAPI's router. It must answer exactly what the declared route answers: it takes the valid
requests, and leaves every other one, its body already read, to the full app. Each request here
is sent with the lane on and with it off."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import delete
from starlette.responses import Response
from starlette.types import Receive, Scope

from cloudtask.api.submit_lane import SubmitLane
from cloudtask.db.tables import jobs as jobs_table
from cloudtask.db.tables import users
from tests.helpers import Client, unique_email

VOLATILE = {"id", "createdAt", "updatedAt", "runAt", "timestamp"}


def _count_outcomes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Wraps the real lane's ``answer``, noting whether it answered (an error found past the
    checks, such as a reused key, is answered by the app's handlers) or left the request to the
    app."""
    outcomes: list[str] = []
    real = SubmitLane.answer

    async def answer(
        lane: SubmitLane, scope: Scope, receive: Receive, body: bytes
    ) -> Response | None:
        response = await real(lane, scope, receive, body)
        outcomes.append("passed" if response is None else "answered")
        return response

    monkeypatch.setattr(SubmitLane, "answer", answer)
    return outcomes


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(item) for item in value]
    return value


async def _answer(
    client: Client, headers: httpx.Headers, content: bytes | AsyncIterator[bytes], run: str
) -> tuple[Any, ...]:
    """The answer, without what differs between two runs; each run has its own keys."""
    headers = httpx.Headers(
        [
            (name, f"{value}-{run}" if name.lower() == "idempotency-key" and value else value)
            for name, value in headers.multi_items()
        ]
    )
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


def _cases(token: str, gone: str) -> list[tuple[str, dict[str, str] | httpx.Headers, bytes, str]]:
    """(name, headers, body, what the lane does with it)."""
    auth = {"Authorization": f"Bearer {token}"}
    big = b"x" * (1024 * 1024)
    two_keys = [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]
    bad_auth = [("Authorization", "Bearer not-a-token")]
    ok = b'{"type": "echo", "payload": {"n": 1}, "priority": 7, "maxAttempts": 2}'
    later = b'{"type": "echo", "runAt": "2030-01-01T00:00:00Z", "delaySeconds": 5}'
    return [
        ("valid", auth, ok, "answered"),
        ("valid, delayed", auth, b'{"type": "echo", "delaySeconds": 30}', "answered"),
        ("a key", {**auth, "Idempotency-Key": "KEY"}, ok, "answered"),
        ("the key replayed", {**auth, "Idempotency-Key": "KEY"}, ok, "answered"),
        ("the key, another body", {**auth, "Idempotency-Key": "KEY"}, b'{"type": "x"}', "answered"),
        ("two keys", httpx.Headers([*auth.items(), *two_keys]), ok, "passed"),
        ("two tokens, the first valid", httpx.Headers([*auth.items(), *bad_auth]), ok, "passed"),
        ("an empty key", {**auth, "Idempotency-Key": ""}, ok, "passed"),
        ("a key too long", {**auth, "Idempotency-Key": "k" * 256}, ok, "passed"),
        ("no token", {}, ok, "passed"),
        ("a forged token", {"Authorization": f"Bearer {token}x"}, ok, "passed"),
        ("not a bearer", {"Authorization": f"Basic {token}"}, ok, "passed"),
        ("a user removed", {"Authorization": f"Bearer {gone}"}, ok, "answered"),
        ("malformed JSON", auth, b'{"type": "echo",', "passed"),
        ("NaN", auth, b'{"type": "echo", "payload": NaN}', "passed"),
        ("an empty body", auth, b"", "passed"),
        ("an array", auth, b'[{"type": "echo"}]', "passed"),
        ("a missing type", auth, b'{"payload": 1}', "passed"),
        ("a string priority", auth, b'{"type": "echo", "priority": "7"}', "passed"),
        (
            "a JSON type",
            {**auth, "Content-Type": "application/json; charset=utf-8"},
            ok,
            "answered",
        ),
        ("another +json type", {**auth, "Content-Type": "application/vnd.x+json"}, ok, "answered"),
        ("a text body", {**auth, "Content-Type": "text/plain"}, ok, "passed"),
        ("a form", {**auth, "Content-Type": "application/x-www-form-urlencoded"}, ok, "passed"),
        ("an unknown field (ignored)", auth, b'{"type": "echo", "colour": "red"}', "answered"),
        ("runAt and delaySeconds", auth, later, "passed"),
        ("a bad email payload", auth, b'{"type": "email", "payload": {"to": "nobody"}}', "passed"),
        ("a bad sleep payload", auth, b'{"type": "sleep", "payload": {"seconds": 0}}', "passed"),
        ("a body over the limit", auth, b'{"type": "echo", "payload": "%s"}' % big, "skipped"),
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


async def test_the_lane_answers_valid_submissions_as_the_route_does_and_leaves_the_rest(
    client: Client, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = await _token_of_a_removed_user(client)
    cases = _cases(token, gone)

    with monkeypatch.context() as lane_off:
        lane_off.setattr(SubmitLane, "takes", staticmethod(lambda scope: False))
        by_app = [await _answer(client, httpx.Headers(h), body, "app") for _, h, body, _ in cases]

    outcomes = _count_outcomes(monkeypatch)
    by_lane = [await _answer(client, httpx.Headers(h), body, "lane") for _, h, body, _ in cases]

    for (name, *_), expected, got in zip(cases, by_app, by_lane, strict=True):
        assert got == expected, name
    assert outcomes == [outcome for *_, outcome in cases if outcome != "skipped"]
    assert by_app[0][0] == 201
    assert by_app[3][2]["idempotent-replayed"] == "true"
    assert by_app[-1][0] == 413


async def test_a_chunked_body_is_left_to_the_app_which_reads_it_within_the_limit(
    client: Client, token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcomes = _count_outcomes(monkeypatch)

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type": "echo",'
        yield b' "payload": 1}'

    response = await client.http.post("/jobs", headers=client.auth(token), content=chunks())

    assert response.status_code == 201, response.text
    assert response.json()["payload"] == 1
    assert outcomes == []
