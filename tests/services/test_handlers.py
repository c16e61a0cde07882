"""The ``email`` and ``http`` job types against real servers on loopback: an SMTP server
(aiosmtpd) and a small HTTP server that records every connection it accepts."""

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pydantic import SecretStr

from cloudtask.contracts.job_types import MAX_RESULT_BYTES
from cloudtask.errors import PermanentFailure
from cloudtask.settings import Settings, load_settings
from cloudtask.worker.handlers.email import EmailHandler
from cloudtask.worker.handlers.http import HttpHandler
from tests.helpers import wait_for_status
from tests.services.conftest import Stack

MAX_RESPONSE_BYTES = 2000


class MailBox:
    """An aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_RCPT(  # noqa: N802
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        # A recipient's name says how the server answers it, as a real one might.
        if address.startswith("deferred@"):
            return "451 4.3.0 Mailbox busy, try again later"
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        if b"Subject: spam" in envelope.content:
            return "554 5.7.1 Message rejected as spam"
        if b"Subject: later" in envelope.content:
            return "452 4.3.1 Insufficient storage, try again later"
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def mailbox() -> Iterator[tuple[MailBox, int]]:
    box = MailBox()
    port = _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    names: list[str]  # every header line's name, lowercased, in order (repeats kept)


@dataclass
class WebServer:
    """Answers ``/big`` with more than ``MAX_RESPONSE_BYTES``, ``/huge`` with more than a job's
    result may hold, ``/drip`` slowly, ``/fail`` with a 502, anything else with JSON."""

    port: int = 0
    connections: int = 0
    requests: list[Request] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, path, _ = head[0].split(" ", 2)
            lines = [line.split(": ", 1) for line in head[1:] if line]
            headers = {name.lower(): value for name, value in lines}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            names = [name.lower() for name, _ in lines]
            self.requests.append(Request(method, path, headers, body, names))
            status = b"201 Created"
            route = path.split("?", 1)[0]
            if route == "/big":
                reply, kind = b"x" * (MAX_RESPONSE_BYTES + 1), b"text/plain"
            elif route == "/huge":
                reply, kind = b"x" * (MAX_RESULT_BYTES + 1), b"text/plain"
            elif route == "/drip":  # a byte every tenth of a second, for two seconds
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n")
                for _ in range(20):
                    await writer.drain()
                    await asyncio.sleep(0.1)
                    writer.write(b"x")
                await writer.drain()
                return
            elif route == "/fail":
                status, reply, kind = b"502 Bad Gateway", b"upstream down", b"text/plain"
            else:
                reply, kind = b'{"greeting": "hello"}', b"application/json"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\n"
                b"Content-Length: " + str(len(reply)).encode() + b"\r\n"
                b"Connection: close\r\n\r\n" + reply
            )
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def web() -> AsyncIterator[WebServer]:
    server = WebServer()
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    async with listener:
        yield server


@pytest.fixture
def stack_settings(settings: Settings, mailbox: tuple[MailBox, int]) -> Settings:
    return settings.model_copy(
        update={
            "smtp_url": SecretStr(f"smtp://127.0.0.1:{mailbox[1]}"),
            "http_allowed_hosts": ["127.0.0.1"],
            "http_max_response_bytes": MAX_RESPONSE_BYTES,
        }
    )


async def test_an_email_job_delivers_one_message_to_the_smtp_server(
    stack: Stack, mailbox: tuple[MailBox, int]
) -> None:
    box, _ = mailbox
    token = await stack.client.register()
    payload = {"to": "alice@example.com", "subject": "Quarterly report", "body": "Numbers inside."}
    job = await stack.client.create_job(token, type="email", payload=payload)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")

    assert done["status"] == "COMPLETED", done["error"]
    assert done["result"]["to"] == "alice@example.com"
    assert len(box.envelopes) == 1
    envelope = box.envelopes[0]
    assert envelope.rcpt_tos == ["alice@example.com"]
    message = message_from_bytes(envelope.content, _class=EmailMessage, policy=policy.default)
    assert message["To"] == "alice@example.com"
    assert message["Subject"] == "Quarterly report"
    assert message.get_content().strip() == "Numbers inside."
    assert message["Date"].datetime.tzinfo is not None  # RFC 5322's origination date


@pytest.mark.parametrize(
    ("to", "subject", "attempts", "words"),
    [("deferred@example.com", "hello", 2, "451"), ("alice@example.com", "later", 2, "452"),
     ("nobody@example.com", "hello", 1, "550"), ("alice@example.com", "spam", 1, "554")],
)  # fmt: skip
async def test_an_smtp_refusal_is_retried_when_temporary_and_final_when_permanent(
    stack: Stack, mailbox: tuple[MailBox, int], to: str, subject: str, attempts: int, words: str
) -> None:
    box, _ = mailbox
    token = await stack.client.register()
    payload = {"to": to, "subject": subject, "body": "x"}
    job = await stack.client.create_job(token, type="email", payload=payload, maxAttempts=2)
    done = await wait_for_status(stack.client, token, job["id"], "FAILED", "COMPLETED")
    assert (done["status"], done["attempts"]) == ("FAILED", attempts), done
    assert words in done["error"]
    assert box.envelopes == []


async def test_an_http_job_completes_with_the_status_code_and_body(
    stack: Stack, web: WebServer
) -> None:
    token = await stack.client.register()
    payload = {
        "url": f"http://127.0.0.1:{web.port}/hook?x=1",
        "method": "POST",
        "headers": {"X-Trace": "abc"},
        "body": {"order": 42},
    }
    job = await stack.client.create_job(token, type="http", payload=payload)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")

    assert done["status"] == "COMPLETED", done["error"]
    assert done["result"]["statusCode"] == 201
    assert done["result"]["body"] == '{"greeting": "hello"}'
    assert len(web.requests) == 1
    request = web.requests[0]
    assert (request.method, request.path) == ("POST", "/hook?x=1")
    assert request.headers["x-trace"] == "abc"
    assert request.body == b'{"order":42}'


@pytest.mark.parametrize("given", ["content-type", "Content-Type", "CONTENT-TYPE"])
async def test_an_http_jobs_own_content_type_is_the_only_one_sent(
    stack: Stack, web: WebServer, given: str
) -> None:
    # Its own in another case went out beside application/json, and servers read either.
    token = await stack.client.register()
    payload = {
        "url": f"http://127.0.0.1:{web.port}/hook",
        "method": "POST",
        "headers": {given: "text/plain"},
        "body": {"a": 1},
    }
    job = await stack.client.create_job(token, type="http", payload=payload)
    await wait_for_status(stack.client, token, job["id"], "COMPLETED")
    [request] = web.requests
    assert [name for name in request.names if name == "content-type"] == ["content-type"]
    assert request.headers["content-type"] == "text/plain"


@pytest.mark.parametrize("userinfo", ["alice:s3cret", "alice@corp.example:s3cret", "a:s3c ret"])
async def test_an_http_job_failing_says_where_without_the_password_of_its_url(
    stack: Stack, web: WebServer, userinfo: str
) -> None:
    token = await stack.client.register()
    payload = {"url": f"http://{userinfo}@127.0.0.1:{web.port}/fail?access_token=t0ken#top"}
    job = await stack.client.create_job(token, type="http", payload=payload, maxAttempts=1)
    done = await wait_for_status(stack.client, token, job["id"], "FAILED", "COMPLETED")
    # Kept with the job, and logged with it: nor the path or the query, which often carry a
    # secret (a webhook's token, an access_token).
    assert done["error"] == f"HTTP 502 from http://127.0.0.1:{web.port}: upstream down"
    assert web.requests[0].path == "/fail?access_token=t0ken"
    assert web.requests[0].headers["authorization"].startswith("Basic ")  # it was sent


async def test_an_http_job_to_a_host_not_allowed_fails_without_connecting(
    stack: Stack, web: WebServer
) -> None:
    token = await stack.client.register()
    payload = {"url": f"http://localhost:{web.port}/hook"}
    job = await stack.client.create_job(token, type="http", payload=payload, maxAttempts=3)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED", "SCHEDULED")

    assert done["status"] == "FAILED"
    assert done["error"] == f"host 'localhost:{web.port}' is not in CLOUDTASK_HTTP_ALLOWED_HOSTS"
    assert done["attempts"] == 1
    assert web.connections == 0


async def test_an_http_response_larger_than_the_limit_fails_the_job(
    stack: Stack, web: WebServer
) -> None:
    token = await stack.client.register()
    payload = {"url": f"http://127.0.0.1:{web.port}/big"}
    job = await stack.client.create_job(token, type="http", payload=payload)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED", "SCHEDULED")

    assert done["status"] == "FAILED"
    assert str(MAX_RESPONSE_BYTES) in done["error"]
    assert done["result"] is None
    assert web.connections == 1


async def test_an_http_body_limit_above_a_results_stops_bodies_at_a_results_size(
    web: WebServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused, the setting stopped every service of an install that had set it; taken as it was,
    # a body over a result's size was read whole and its job failed only afterwards, as a result
    # too large.
    monkeypatch.setenv("CLOUDTASK_HTTP_MAX_RESPONSE_BYTES", str(4 * MAX_RESULT_BYTES))
    monkeypatch.setenv("CLOUDTASK_HTTP_ALLOWED_HOSTS", "127.0.0.1")
    handler = HttpHandler(load_settings(env_file=None))

    with pytest.raises(PermanentFailure, match=f"larger than {MAX_RESULT_BYTES} bytes"):
        await handler({"url": f"http://127.0.0.1:{web.port}/huge"})
    assert web.connections == 1


async def test_an_http_request_taking_longer_than_its_timeout_in_all_fails_the_attempt(
    settings: Settings, web: WebServer
) -> None:
    # Each read waits less than the timeout; the whole request takes four times as long. The
    # client's own timeout bounds each wait alone, and let such a server hold a job for as long
    # as it liked.
    handler = HttpHandler(
        settings.model_copy(
            update={"http_allowed_hosts": ["127.0.0.1"], "http_timeout_seconds": 0.5}
        )
    )
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError, match=r"took longer than 0\.5 s"):
        await handler({"url": f"http://127.0.0.1:{web.port}/drip"})
    assert asyncio.get_running_loop().time() - started < 1.5


async def test_an_address_beyond_ascii_fails_at_once_on_a_server_without_smtputf8(
    settings: Settings,
) -> None:
    box, port = MailBox(), _free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port, enable_SMTPUTF8=False)
    controller.start()
    try:
        url = f"smtp://127.0.0.1:{port}"
        handler = EmailHandler(settings.model_copy(update={"smtp_url": SecretStr(url)}), None)
        for to in ("j\u00f6ran@example.com", "bob@ex\u00e4mple.com"):
            with pytest.raises(PermanentFailure, match="SMTPUTF8"):
                await handler({"to": to, "subject": "hello", "body": "x"})
        await handler({"to": "joran@example.com", "subject": "hello", "body": "x"})
    finally:
        controller.stop()
    assert [envelope.rcpt_tos for envelope in box.envelopes] == [["joran@example.com"]]


@pytest.mark.parametrize("option", ["true", "TRUE", "True"])
async def test_an_email_job_asked_to_use_starttls_sends_nothing_in_clear_to_a_server_without_it(
    settings: Settings, mailbox: tuple[MailBox, int], option: str
) -> None:
    box, port = mailbox  # aiosmtpd here offers no STARTTLS
    url = f"smtp://127.0.0.1:{port}?starttls={option}"
    handler = EmailHandler(settings.model_copy(update={"smtp_url": SecretStr(url)}), None)
    with pytest.raises(ConnectionError, match="STARTTLS"):
        await handler({"to": "alice@example.com", "subject": "private", "body": "x"})
    assert box.envelopes == []
