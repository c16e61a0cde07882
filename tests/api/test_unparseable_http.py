"""Requests the HTTP parser refuses before any route sees them: still the contract's error body.

These go over a real socket to the api served as ``cloudtask api`` serves it, since the answer
comes from the server's protocol, not from the application.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloudtask.api.app import create_app
from cloudtask.settings import Settings
from tests.conftest import Backends
from tests.helpers import REASONS, served


@pytest.fixture
async def address(backends: Backends, settings: Settings) -> AsyncIterator[tuple[str, int]]:
    app = create_app(settings, db=backends.db, broker=backends.broker, kv=backends.kv)
    async with served(app) as address:
        yield address


async def _exchange(address: tuple[str, int], request: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)  # the server closes the connection
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "path"),
    [
        (b"POST /jobs HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n{}", "/jobs"),
        (b"POST /jobs?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
         b"Transfer-Encoding: chunked\r\n\r\n{}", "/jobs"),
        (b"POST /auth/login HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"zz\r\n{}\r\n0\r\n\r\n", "/auth/login"),
        (b"GARBAGE\r\n\r\n", None),
    ],
)  # fmt: skip
async def test_a_request_the_parser_refuses_is_a_400_in_the_error_body(
    address: tuple[str, int], request_bytes: bytes, path: str | None
) -> None:
    status, headers, body = await _exchange(address, request_bytes)
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)
    assert set(error) == {"status", "error", "message", "path", "timestamp"}
    assert (error["status"], error["error"]) == (400, REASONS[400])
    assert error["message"] == "Invalid HTTP request received."
    assert error["timestamp"].endswith("Z")
    if path is not None:
        assert error["path"] == path


async def test_a_well_formed_request_on_the_same_server_is_answered_as_usual(
    address: tuple[str, int],
) -> None:
    status, headers, body = await _exchange(
        address, b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert (status, headers["content-type"]) == (404, "application/json")
    assert json.loads(body)["path"] == "/nope"


def _chunked_without_its_end(body: bytes) -> bytes:
    return b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(body), body)


def _chunk_cut(body: bytes) -> bytes:
    return b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s" % (len(body) + 8, body)


def _content_length_cut(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n%s" % (len(body) + 8, body)


async def _sent_and_cut(address: tuple[str, int], head: bytes, cut: bytes) -> bytes:
    """Send a request whose body the client never finishes, then close its side."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(head + b"Content-Type: application/json\r\n" + cut)
    await writer.drain()
    writer.write_eof()
    answer = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    return answer


@pytest.mark.parametrize("cut", [_chunked_without_its_end, _chunk_cut, _content_length_cut])
async def test_a_body_cut_short_by_the_client_going_away_is_never_acted_on(
    address: tuple[str, int], cut: Callable[[bytes], bytes]
) -> None:
    # A client whose upload broke retries it: had the first one been acted on, the retry
    # would meet its own registration (409), or create a second job or schedule.
    account = b'{"email": "cut@example.com", "password": "correct-horse"}'
    head = b"POST /auth/register HTTP/1.1\r\nHost: t\r\n"
    assert await _sent_and_cut(address, head, cut(account)) == b""
    async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}") as http:
        retried = await http.post("/auth/register", content=account)
        assert retried.status_code == 201, retried.text
        token = retried.json()["token"]
        writes = {
            "/jobs": b'{"type": "cut"}',
            "/jobs/batch": b'{"jobs": [{"type": "cut"}]}',
            "/schedules": b'{"name": "cut", "cron": "* * * * *", "type": "cut"}',
        }
        for path, body in writes.items():
            head = f"POST {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n"
            assert await _sent_and_cut(address, head.encode(), cut(body)) == b""
        auth = {"Authorization": f"Bearer {token}"}
        assert (await http.get("/jobs", headers=auth)).json() == []
        assert (await http.get("/schedules", headers=auth)).json() == []
        # Nor counted as a server error: as 499 (client closed request), where it is counted.
        exposition = (await http.get("/actuator/prometheus")).text
    counted = [
        sample
        for family in text_string_to_metric_families(exposition)
        if family.name == "cloudtask_http_requests"
        for sample in family.samples
        if sample.name == "cloudtask_http_requests_total"
    ]
    assert not [s for s in counted if s.labels["status"].startswith("5")], counted
    gone = sum(s.value for s in counted if s.labels["status"] == "499")
    assert gone == (1 if cut is _content_length_cut else 4), counted
