"""Routes that read request bodies with CloudTask's strict JSON parser.

FastAPI parses bodies with ``json.loads``, which accepts ``NaN`` and ``Infinity``; these routes
use :func:`cloudtask.contracts.jsoncodec.loads` instead, so such bodies are a 400 like any
malformed JSON.
A body is read as JSON when its ``Content-Type`` is ``application/json`` or another
``application/*+json`` type, or when the header is absent, as FastAPI reads it; a body declared as
anything else (``text/plain``, a form, ``curl -d`` without ``-H``) is a 400 naming the header.
"""

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import request_params_to_args
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.types import Receive, Scope

from cloudtask.api.deps import authenticated
from cloudtask.contracts import jsoncodec

E = TypeVar("E", bound=Callable[..., Any])


def is_json_media_type(content_type: str) -> bool:
    """``application/json`` or ``application/*+json``, parameters (a charset) aside."""
    media_type = content_type.partition(";")[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


class StrictJSONRequest(Request):
    max_depth = jsoncodec.MAX_DEPTH

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            try:
                self._json = jsoncodec.loads(await self.body(), max_depth=self.max_depth)
            except jsoncodec.TooDeep:
                if self.max_depth == jsoncodec.MAX_DEPTH:
                    raise
                # A body holding other bodies (see nests_bodies): its limit is theirs, moved
                # down; said as theirs, the limit a client knows.
                raise jsoncodec.TooDeep(
                    f"a body in it is nested more than {jsoncodec.MAX_DEPTH} levels deep"
                ) from None
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

        takes_body = self.body_field is not None
        header_params = self.dependant.header_params
        needs_token = _depends_on(self.dependant, authenticated)
        max_depth = jsoncodec.MAX_DEPTH + getattr(self.endpoint, "body_nesting", 0)

        async def strict_handler(request: Request) -> Response:
            scope = request.scope
            declared = request.headers.getlist("content-type")
            # FastAPI would hand a body of another type to validation as bytes; the parser it
            # is given here reads JSON only, so the header is checked first.
            scope["headers"] = [
                (name, value) for name, value in scope["headers"] if name != b"content-type"
            ] + [(b"content-type", b"application/json")]
            strict = StrictJSONRequest(scope, request.receive)
            strict.max_depth = max_depth

            async def unread(errors: list[Any], body: Any) -> RequestValidationError:
                # FastAPI stops at a body it cannot read, before the token and the parameters:
                # the token is checked first (a 401 before a 400, as for any other bad body),
                # and the 400 names the route's bad headers too (an Idempotency-Key out of its
                # range).
                if needs_token:
                    await authenticated(strict)
                _, header_errors = request_params_to_args(header_params, strict.headers)
                return RequestValidationError([*errors, *header_errors], body=body)

            # Sent twice, either could be the one meant: both must be JSON.
            foreign = any(not is_json_media_type(value) for value in declared)
            if takes_body and foreign and await strict.body():
                raise await unread([_CONTENT_TYPE_ERROR], None)
            try:
                return await handler(strict)
            except RequestValidationError as exc:
                errors = list(exc.errors())
                if not any(error.get("type") == "json_invalid" for error in errors):
                    raise
                raise await unread(errors, exc.body) from None

        return strict_handler


def _depends_on(dependant: Dependant, call: Callable[..., Any]) -> bool:
    return any(sub.call is call or _depends_on(sub, call) for sub in dependant.dependencies)


def nests_bodies(levels: int) -> Callable[[E], E]:
    """Mark an endpoint whose body holds other routes' bodies ``levels`` deeper (a batch's
    ``{"jobs": [...]}``): its nesting limit is as much higher, so that what one route accepts
    inside its body, the other accepts inside each of its own."""

    def mark(endpoint: E) -> E:
        endpoint.body_nesting = levels  # type: ignore[attr-defined]
        return endpoint

    return mark


_CONTENT_TYPE_ERROR = {
    "type": "content_type",
    "loc": ("header", "content-type"),
    "msg": "must be application/json",
}
