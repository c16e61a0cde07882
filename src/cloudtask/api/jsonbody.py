"""Routes that read request bodies with CloudTask's strict JSON parser.

FastAPI parses bodies with ``json.loads``, which accepts ``NaN`` and ``Infinity``; these routes
use :func:`cloudtask.contracts.jsoncodec.loads` instead, so such bodies are a 400 like any
malformed JSON.
The API speaks only JSON, so a body is read as JSON whatever its ``Content-Type`` says (``curl -d``
sends ``application/x-www-form-urlencoded``).
"""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope

from cloudtask.contracts import jsoncodec


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = jsoncodec.loads(await self.body())
        return self._json

    @classmethod
    def read(cls, scope: Scope, receive: Receive, body: bytes, parsed: Any) -> "StrictJSONRequest":
        """A request whose body was read and parsed already (by ``submit_lane``)."""
        request = cls(scope, receive)
        request._body = body
        request._json = parsed
        return request


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            scope = request.scope
            scope["headers"] = [
                (name, value) for name, value in scope["headers"] if name != b"content-type"
            ] + [(b"content-type", b"application/json")]
            return await handler(StrictJSONRequest(scope, request.receive))

        return strict_handler
