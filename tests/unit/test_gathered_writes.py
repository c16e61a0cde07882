"""The services' HTTP connections gather a response's writes into one system call.

The answers themselves are checked over a real loopback socket against the server as the
services run it; how writes are gathered, against a transport that records them.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from cloudtask import serving
from tests.helpers import served

Scope = dict[str, Any]


async def _app(scope: Scope, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/chunks":  # a streamed body, with pauses between its parts
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one,", b"two,", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
        return
    status, body = (204, b"") if path == "/empty" else (200, path.encode() * 1000)
    headers = [(b"content-length", str(len(body)).encode())] if status != 204 else []
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def address() -> AsyncIterator[tuple[str, int]]:
    async with served(_app) as address:
        yield address


async def _read_response(
    reader: asyncio.StreamReader, method: str = "GET"
) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *lines = head.strip().split("\r\n")
    headers = {n.lower(): v.strip() for n, _, v in (line.partition(":") for line in lines)}
    if method == "HEAD":
        return status_line, headers, b""
    if "content-length" in headers:
        return status_line, headers, await reader.readexactly(int(headers["content-length"]))
    body = b""
    if headers.get("transfer-encoding") == "chunked":
        while size := int((await reader.readline()).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readexactly(2)
    return status_line, headers, body


async def test_answers_on_one_kept_alive_connection_arrive_whole_and_in_order(
    address: tuple[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(*address)
    requests = ["GET /a", "HEAD /b", "GET /empty", "GET /chunks", "GET /c"]
    writer.write(b"".join(f"{r} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for r in requests))
    answers = [await _read_response(reader, request.split()[0]) for request in requests]
    writer.close()
    assert [(status, body) for status, _, body in answers] == [
        ("HTTP/1.1 200 OK", b"/a" * 1000),
        ("HTTP/1.1 200 OK", b""),  # HEAD: the length of /b's body, and no body
        ("HTTP/1.1 204 No Content", b""),
        ("HTTP/1.1 200 OK", b"one,two,three"),
        ("HTTP/1.1 200 OK", b"/c" * 1000),
    ]
    assert answers[1][1]["content-length"] == "2000"


async def test_connection_close_gets_the_whole_answer_before_the_connection_ends(
    address: tuple[str, int],
) -> None:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    status, headers, body = await _read_response(reader)
    assert (status, headers["connection"], body) == ("HTTP/1.1 200 OK", "close", b"/last" * 1000)
    assert await reader.read() == b""  # closed by the server, nothing after the answer
    writer.close()


class _Recording:
    """Stands for a connection's transport: what was written, in which calls."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        assert not self.closing, "written after close"
        self.calls.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def write_eof(self) -> None:
        self.calls.append(b"<eof>")

    def get_write_buffer_size(self) -> int:
        return 7


async def _next_turn() -> None:
    await asyncio.sleep(0)


async def test_writes_within_one_turn_leave_in_one_call_and_later_ones_in_another() -> None:
    recording = _Recording()
    gathered: Any = serving.GatheredWrites(recording)  # type: ignore[arg-type]
    gathered.write(b"HTTP/1.1 200 OK\r\n\r\n")
    gathered.write(b"body")
    assert recording.calls == []
    await _next_turn()
    gathered.write(b"next")
    await _next_turn()
    assert recording.calls == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next"]
    assert gathered.get_write_buffer_size() == 7  # everything else is the transport's


async def test_close_and_write_eof_send_what_waits_first() -> None:
    recording = _Recording()
    gathered: Any = serving.GatheredWrites(recording)  # type: ignore[arg-type]
    gathered.write(b"a")
    gathered.write_eof()
    gathered.write(b"b")
    gathered.close()
    await _next_turn()
    assert recording.calls == [b"a", b"<eof>", b"b"]
    assert recording.closing


async def test_nothing_is_written_to_a_connection_aborted_meanwhile() -> None:
    recording = _Recording()
    gathered: Any = serving.GatheredWrites(recording)  # type: ignore[arg-type]
    gathered.write(b"lost")
    gathered.abort()
    await _next_turn()
    assert recording.calls == []
