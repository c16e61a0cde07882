"""Small helpers for talking to the API in tests."""

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from cloudtask import serving

T = TypeVar("T")
ERROR_KEYS = {"status", "error", "message", "path", "timestamp"}


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[tuple[str, int]]:
    """``app`` served on a loopback port as the services serve theirs; yields the address."""
    sock = serving.listening_socket("127.0.0.1", 0)
    server = serving.server(app, "127.0.0.1", 0, handle_signals=False)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[:2]
    finally:
        server.should_exit = True
        await task
        sock.close()


async def fail_on_5xx(response: httpx.Response) -> None:
    if response.status_code >= 500 and response.request.url.path != "/actuator/health":
        await response.aread()
        raise AssertionError(
            f"{response.request.method} {response.request.url.path} answered "
            f"{response.status_code}: {response.text}"
        )


# RFC 9110's reason phrases, written out: the error body's ``error`` must not depend on the
# Python version serving it (3.13 renamed 413 and 422 in its own table).
REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def assert_error(response: httpx.Response, status: int, path: str | None = None) -> dict[str, Any]:
    """The answer is ``status`` with the contract's error body."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) >= ERROR_KEYS, body
    assert body["status"] == status
    assert body["error"] == REASONS[status], body
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in response.text
    if path is not None:
        assert body["path"] == path
    return body


def unique_email() -> str:
    return f"user-{secrets.token_hex(5)}@example.com"


@dataclass
class Client:
    http: httpx.AsyncClient
    backends: Any = None

    async def register(self, email: str | None = None, password: str = "correct-horse") -> str:
        response = await self.http.post(
            "/auth/register", json={"email": email or unique_email(), "password": password}
        )
        assert response.status_code == 201, response.text
        token: str = response.json()["token"]
        return token

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def create_job(self, token: str, **body: Any) -> dict[str, Any]:
        body.setdefault("type", "echo")
        response = await self.http.post("/jobs", json=body, headers=self.auth(token))
        assert response.status_code == 201, response.text
        job: dict[str, Any] = response.json()
        return job

    async def get_job(self, token: str, job_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/jobs/{job_id}", headers=self.auth(token))
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 10, interval: float = 0.05
) -> T:
    """Poll ``probe`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


async def wait_for_status(
    client: Client, token: str, job_id: str, *statuses: str, timeout: float = 15
) -> dict[str, Any]:
    """Poll the job until its status is one of ``statuses``; return it."""

    async def probe() -> dict[str, Any] | None:
        job = await client.get_job(token, job_id)
        return job if job["status"] in statuses else None

    return await eventually(probe, timeout=timeout)
