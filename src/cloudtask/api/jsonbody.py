"""Routes that read request bodies with CloudTask's strict JSON parser.

FastAPI parses bodies with ``json.loads``, which accepts ``NaN`` and ``Infinity``; these routes
use :func:`cloudtask.contracts.jsoncodec.loads` instead, so such bodies are a 400 like any
malformed JSON.
The API speaks only JSON, so a body is read as JSON whatever its ``Content-Type`` says (``curl -d``
sends ``application/x-www-form-urlencoded``).

An endpoint may carry a fast path (:func:`with_fast_path`): a function that answers the common,
valid request without FastAPI's dependency solving and body validation layers, or returns
``None`` to leave the request, its body already read, to the endpoint as declared. Every error
answer therefore comes from one place, the declared route.
"""

from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute

from cloudtask.contracts import jsoncodec


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = jsoncodec.loads(await self.body())
        return self._json


FastPath = Callable[[StrictJSONRequest], Awaitable[Response | None]]
E = TypeVar("E", bound=Callable[..., Any])


def with_fast_path(fast: FastPath) -> Callable[[E], E]:
    """Give the decorated endpoint ``fast`` as its fast path (see the module's docstring)."""

    def mark(endpoint: E) -> E:
        endpoint.fast_path = fast  # type: ignore[attr-defined]
        return endpoint

    return mark


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        endpoint = self.endpoint

        async def strict_handler(request: Request) -> Response:
            scope = request.scope
            scope["headers"] = [
                (name, value) for name, value in scope["headers"] if name != b"content-type"
            ] + [(b"content-type", b"application/json")]
            strict = StrictJSONRequest(scope, request.receive)
            fast: FastPath | None = getattr(endpoint, "fast_path", None)
            if fast is not None:
                answer = await fast(strict)
                if answer is not None:
                    return answer
            return await handler(strict)  # the body, if read, is kept on ``strict``

        return strict_handler
