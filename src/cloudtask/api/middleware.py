"""Pure ASGI middleware: the request body limit and the HTTP metrics.

Pure ASGI rather than ``BaseHTTPMiddleware``, which costs a task and a queue per request.
"""

import time
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudtask.api.errors import error_response
from cloudtask.observability.metrics import ApiMetrics

MAX_BODY_BYTES = 1024 * 1024
CLIENT_CLOSED_REQUEST = 499
"""The status counted for a request whose client went away before it could be answered (the
code nginx logs for it); never sent."""


class BodyLimitMiddleware:
    """Refuses bodies over ``limit`` bytes with a 413 on every route, whether it reads a body or
    not: at once when ``Content-Length`` says so, and a body without one (chunked) is read here
    first, up to the limit, then handed on."""

    def __init__(self, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if declared is not None and declared > self.limit:
            await self._refuse(scope, receive, send)
            return
        if declared is None and chunked:
            try:
                body = await self._read_up_to_limit(receive)
            except ClientGone:
                return  # nobody to answer, and half a body is never acted on
            if body is None:
                await self._refuse(scope, receive, send)
                return
            receive = replaying(body, receive)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _too_large(self.limit)
            return message

        await self.app(scope, limited_receive, send)

    async def _read_up_to_limit(self, receive: Receive) -> bytes | None:
        """The whole body, or None once it passed the limit; :class:`ClientGone` if the client
        went away before its end."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await error_response(Request(scope), 413, _too_large_message(self.limit))(
            scope, receive, send
        )


class ClientGone(Exception):
    """The client disconnected before the last chunk of its body."""


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` first, then whatever the server sends next."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _too_large_message(limit: int) -> str:
    return f"Request body is larger than {limit // 1024} KiB"


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, _too_large_message(limit))


class MetricsMiddleware:
    """Counts requests and their latency by route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: int | None = None

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        except BaseException:
            status = status or 500
            raise
        finally:
            # An app that returns without answering does so because the client went away
            # before its request was whole: counted apart, not as a server error.
            status = status or CLIENT_CLOSED_REQUEST
            record(self.metrics, scope["method"], _route_template(scope), status, start)


def record(metrics: ApiMetrics, method: str, route: str, status: int, start: float) -> None:
    """Count one answered request; ``start`` is its ``time.perf_counter()`` on arrival."""
    metrics.http_requests.labels(method, route, str(status)).inc()
    metrics.http_duration.labels(method, route).observe(time.perf_counter() - start)


def _route_template(scope: Scope) -> str:
    route: Any = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    # Starlette's own routes (/openapi.json, /docs) name no route but set their endpoint; none
    # of them takes a path parameter, so the path is their template.
    return str(scope["path"]) if "endpoint" in scope else "unmatched"
