"""A request still running when the api's graceful shutdown runs out of time: the server cancels
it, and its answer is still the contract's error body, not the server's plain-text 500.

Over a real socket to the api served as ``cloudtask api`` serves it, since the cancellation and
the server's own answer come from the server."""

import asyncio
import json

import pytest

from cloudtask import serving
from cloudtask.api.app import create_app
from cloudtask.settings import Settings
from tests.conftest import Backends

GRACE = 0.3  # the server's time for running requests once asked to stop (10 s in the services)


async def test_a_request_cut_short_by_the_shutdown_is_answered_in_the_error_body(
    backends: Backends, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings, db=backends.db, broker=backends.broker, kv=backends.kv)
    sock = serving.listening_socket("127.0.0.1", 0)
    server = serving.server(app, "127.0.0.1", 0, handle_signals=False)
    server.config.timeout_graceful_shutdown = GRACE
    serving_task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    try:
        # A client that sends part of its body, then nothing: the route waits for the rest.
        writer.write(
            b"POST /auth/login HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"email": '
        )
        await writer.drain()
        await asyncio.sleep(0.2)
        server.should_exit = True
        raw = await asyncio.wait_for(reader.read(), timeout=5)  # the server closes it
    finally:
        writer.close()
        await serving_task
        sock.close()

    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    assert int(status_line.split()[1]) == 500, raw
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    error = json.loads(body)
    assert set(error) == {"status", "error", "message", "path", "timestamp"}
    assert (error["status"], error["path"]) == (500, "/auth/login")
    # Not "try again": what the request did may have been committed before it was cut short.
    assert "may or may not have taken effect" in error["message"]
    assert "retry-after" not in headers
    # Ended by the app, not raised to the server, which would log it as the app's failure with
    # a traceback (the server says, itself, that it cancelled a request).
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    assert "Exception in ASGI application" not in caplog.text
