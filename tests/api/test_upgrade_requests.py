"""Requests asking for a protocol upgrade (``Upgrade: h2c``, a WebSocket) are answered as plain
HTTP/1.1, their bodies included, and the connection reads on.

Over a real socket to the api served as ``cloudtask api`` serves it: the parser is the server's.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cloudtask.api.app import create_app
from cloudtask.settings import Settings
from tests.conftest import Backends
from tests.helpers import served, unique_email

H2C = (
    b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
)
WEBSOCKET = (
    b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
)


@pytest.fixture
async def address(backends: Backends, settings: Settings) -> AsyncIterator[tuple[str, int]]:
    app = create_app(settings, db=backends.db, broker=backends.broker, kv=backends.kv)
    async with served(app) as address:
        yield address


@pytest.fixture
async def token(address: tuple[str, int]) -> str:
    async with httpx.AsyncClient(base_url=f"http://{address[0]}:{address[1]}") as http:
        account = {"email": unique_email(), "password": "correct-horse"}
        response = await http.post("/auth/register", json=account)
    assert response.status_code == 201, response.text
    return str(response.json()["token"])


async def _answers(address: tuple[str, int], parts: list[bytes], count: int) -> list[bytes]:
    """Send ``parts`` one write at a time, then read ``count`` answers; their bodies."""
    reader, writer = await asyncio.open_connection(*address)
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.05)  # each in its own read, so a body may come after its head
    bodies = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        bodies.append(head.split(b" ", 2)[1] + b" " + await reader.readexactly(length))
    writer.close()
    return bodies


def _post(token: str, framing: bytes) -> bytes:
    return (
        b"POST /jobs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n%s"
        b"Content-Type: application/json\r\n%s\r\n" % (token.encode(), H2C, framing)
    )


def _read(answer: bytes) -> tuple[bytes, Any]:
    """An answer of ``_answers``: its status and its JSON body."""
    status, _, body = answer.partition(b" ")
    return status, json.loads(body)


def _job(answer: bytes) -> dict[str, Any]:
    status, job = _read(answer)
    assert status == b"201", answer
    return dict(job)


async def test_a_body_sent_with_an_upgrade_to_http2_is_read_and_the_connection_reads_on(
    address: tuple[str, int], token: str
) -> None:
    body = b'{"type": "echo", "payload": {"n": 1}}'
    framed = _post(token, b"Content-Length: %d\r\n" % len(body))
    listing = b"GET /jobs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n\r\n" % token.encode()

    # All in one write; then the body in two writes after its head.
    first, listed = await _answers(address, [framed + body + listing], 2)
    second, _ = await _answers(address, [framed, body[:9], body[9:] + listing], 2)

    assert _job(first)["payload"] == _job(second)["payload"] == {"n": 1}
    assert [job["id"] for job in _read(listed)[1]] == [_job(first)["id"]]


async def test_a_chunked_body_sent_with_an_upgrade_is_read_and_so_is_the_next_upgrade(
    address: tuple[str, int], token: str
) -> None:
    body = b'{"type": "echo", "payload": "chunked"}'
    chunked = _post(token, b"Transfer-Encoding: chunked\r\n")
    chunks = b"5\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (body[:5], len(body) - 5, body[5:])

    answers = await _answers(address, [chunked, chunks[:9], chunks[9:] + chunked + chunks], 2)

    assert [_job(answer)["payload"] for answer in answers] == ["chunked", "chunked"]


async def test_a_websocket_upgrade_is_answered_as_the_plain_request(
    address: tuple[str, int],
) -> None:
    health = b"GET /actuator/health HTTP/1.1\r\nHost: t\r\n%s\r\n" % WEBSOCKET
    missing = b"GET /nope HTTP/1.1\r\nHost: t\r\n%s\r\n" % WEBSOCKET

    up, nope = await _answers(address, [health + missing], 2)

    assert _read(up)[0] == b"200" and _read(up)[1]["status"] == "UP"
    assert _read(nope)[0] == b"404" and _read(nope)[1]["path"] == "/nope"


async def test_a_malformed_body_after_an_upgrade_is_a_400_in_the_error_body(
    address: tuple[str, int], token: str
) -> None:
    (answer,) = await _answers(
        address, [_post(token, b"Transfer-Encoding: chunked\r\n") + b"zz\r\n"], 1
    )

    status, error = _read(answer)
    assert status == b"400"
    assert error["path"] == "/jobs"


async def test_hundreds_of_upgrade_requests_in_one_read_are_each_answered(
    address: tuple[str, int], token: str
) -> None:
    # Each taken over by the next parser within one read: a loop, not a call per request.
    body = b'{"type": "echo", "payload": "first"}'
    first = _post(token, b"Content-Length: %d\r\n" % len(body)) + body
    missing = b"GET /nope HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"

    answers = await _answers(address, [first + missing * 600], 601)

    assert _job(answers[0])["payload"] == "first"
    assert {_read(answer)[0] for answer in answers[1:]} == {b"404"}


async def test_connect_is_answered_by_the_app_as_before(address: tuple[str, int]) -> None:
    # httptools takes every CONNECT for an upgrade request; it is not replayed as one.
    (answer,) = await _answers(address, [b"CONNECT /jobs HTTP/1.1\r\nHost: t\r\n\r\n"], 1)

    status, error = _read(answer)
    assert status == b"405"
    assert error["message"] == "Method CONNECT is not allowed on /jobs"


async def test_an_upgrade_request_asking_to_close_closes_as_without_the_upgrade(
    address: tuple[str, int], token: str
) -> None:
    # What follows a request that closes its connection is not read: with the close lost from
    # the replayed head, the garbage after it was, and the created job answered with a 400.
    body = b'{"type": "echo", "payload": "closing"}'
    head = (
        b"POST /jobs HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
        b"Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    ) % (token.encode(), len(body))
    reader, writer = await asyncio.open_connection(*address)
    writer.write(head + body + b"GARBAGE\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), timeout=5)  # to the server's close
    writer.close()

    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 201 Created", raw
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["payload"] == "closing"
