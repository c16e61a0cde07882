"""The API's one error body (``contracts.error_body``), for every 4xx and 5xx, and the mapping
from exceptions to it: ``details`` on 400s naming each bad field, parameter or header, and never
a stack trace.
"""

import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Message, Scope, Send

from cloudtask.api.responses import JSONBytesResponse
from cloudtask.contracts.error_body import error_body, reason
from cloudtask.errors import BrokerUnavailable, DatabaseUnavailable, KVUnavailable, UnknownUser

log = logging.getLogger(__name__)

_LOCATIONS = {"body": "body", "query": "query", "path": "path", "header": "header"}
_PATTERN_HINTS = {
    "email": "must be a valid email address",
    "to": "must be an email address",
    "type": "must be 1-64 characters of a-z 0-9 _ . -",
    "url": "must be an http:// or https:// URL",
    "cursor": "is not a cursor this API issued (take it from the Link header)",
    "cron": "must be a cron expression of five fields (minute hour day-of-month month "
    "day-of-week) or a macro such as @hourly",
    "headers": "is not a header name (letters, digits and !#$%&'*+-.^_`|~)",
}


class ApiError(Exception):
    """An answer other than success, raised anywhere below a route."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        details: Sequence[Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.details = list(details) if details is not None else None


def not_found(what: str = "Job") -> ApiError:
    return ApiError(404, f"{what} not found")


def unauthorized(message: str = "Authentication required") -> ApiError:
    return ApiError(401, message, headers={"WWW-Authenticate": "Bearer"})


def bad_request(field: str, location: str, message: str) -> ApiError:
    detail = {"field": field, "location": location, "message": message}
    return ApiError(400, f"Invalid request: {field}: {message}", details=[detail])


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    headers: Mapping[str, str] | None = None,
    details: Sequence[Mapping[str, str]] | None = None,
) -> Response:
    body = error_body(status, message, request.url.path, details)
    return JSONBytesResponse(body, status_code=status, headers=dict(headers or {}))


def _field_path(parts: Sequence[Any]) -> str:
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _header_name(name: str) -> str:
    return "-".join(word.capitalize() for word in name.split("-"))


_OBJECT_EXPECTED = frozenset({"model_type", "model_attributes_type", "dict_type"})


def validation_details(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    details = []
    for error in errors:
        loc = list(error.get("loc", ()))
        location = _LOCATIONS.get(str(loc[0]), "body") if loc else "body"
        rest = loc[1:]
        key_error = bool(rest) and rest[-1] == "[key]"
        if key_error:  # a mapping's key failed its rule: name the key, and say so by its map
            rest = rest[:-1]
        if error.get("type") == "json_invalid":
            field, message = "body", f"Malformed JSON: {error.get('ctx', {}).get('error', '')}"
        else:
            field = _field_path(rest) or location
            if location == "header":
                field = _header_name(field)
            message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
            if error.get("type") in _OBJECT_EXPECTED:  # in pydantic's words, or its class names
                message = "Input should be a JSON object"
            if error.get("type") == "string_pattern_mismatch":
                last = str(rest[-2] if key_error and len(rest) > 1 else rest[-1]) if rest else field
                message = _PATTERN_HINTS.get(last, "does not have the expected format")
        details.append({"field": field, "location": location, "message": message})
    return details


async def _api_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, ApiError):
        return await _unexpected(request, exc)
    return error_response(
        request, exc.status, exc.message, headers=exc.headers, details=exc.details
    )


BodyChecks = Callable[[Any], list[dict[str, str]]]
E = TypeVar("E", bound=Callable[..., Any])


def with_body_checks(checks: BodyChecks) -> Callable[[E], E]:
    """Give the decorated endpoint the checks of its body that its model cannot make (a payload
    by its job type, a cron expression), as 400 details. The endpoint runs them on a body its
    model accepted; the 400 for a body the model refused runs them on the raw body too, so that
    one answer names every bad field."""

    def mark(endpoint: E) -> E:
        endpoint.body_checks = checks  # type: ignore[attr-defined]
        return endpoint

    return mark


def _body_checks_details(request: Request, body: Any, named: set[str]) -> list[dict[str, str]]:
    """The endpoint's body checks on ``body``, but for the fields already named (or within them)."""
    endpoint = getattr(request.scope.get("route"), "endpoint", None)
    checks: BodyChecks | None = getattr(endpoint, "body_checks", None)
    if checks is None:
        return []
    return [
        detail
        for detail in checks(body)
        if not any(
            detail["field"] == field or detail["field"].startswith((f"{field}.", f"{field}["))
            for field in named
        )
    ]


async def _validation_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestValidationError):
        return await _unexpected(request, exc)
    details = validation_details(exc.errors())
    details += _body_checks_details(request, exc.body, {d["field"] for d in details})
    named = {(d["field"], d["location"]) for d in details}
    details += [d for d in repeated_query_details(request) if (d["field"], "query") not in named]
    return error_response(request, 400, invalid_request(details), details=details)


def repeated_query_details(request: Request) -> list[dict[str, str]]:
    """The query parameters the route reads that were sent more than once, as 400 details:
    FastAPI reads the last and ignores the others, so a bad one passed beside a good one."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    names = [param.alias for param in dependant.query_params] if dependant is not None else []
    query = request.query_params
    return [
        {"field": name, "location": "query", "message": "must be sent once, not repeated"}
        for name in names
        if len(query.getlist(name)) > 1
    ]


def invalid_request(details: list[dict[str, str]]) -> str:
    """A 400's message: the first few of ``details``, and how many more it holds."""
    named = "; ".join(f"{d['field']}: {d['message']}" for d in details[:3])
    more = f"; and {len(details) - 3} more (see details)" if len(details) > 3 else ""
    return f"Invalid request: {named}{more}"


async def _http_error(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, StarletteHTTPException):
        return await _unexpected(request, exc)
    status = exc.status_code
    if status == 404:
        message = f"No such path: {request.url.path}"
    elif status == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
        headers = {**(exc.headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return error_response(request, status, message, headers=headers)
    elif isinstance(exc.detail, str) and exc.detail:
        message = exc.detail
    else:
        message = reason(status)
    return error_response(request, status, message, headers=exc.headers)


def _allowed_methods(request: Request) -> list[str]:
    # Starlette names only the first route that matches the path, and FastAPI has one route per
    # method; the OpenAPI document knows them all.
    # A literal path (/jobs/batch) takes precedence over a template it also fits (/jobs/{job_id}).
    paths = request.app.openapi().get("paths", {})
    if request.url.path in paths:
        return sorted(method.upper() for method in paths[request.url.path])
    methods: set[str] = set()
    for template, operations in paths.items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, request.url.path):
            methods |= {method.upper() for method in operations}
    if not methods:  # a route the document leaves out (the document itself, /docs)
        for route in request.app.routes:
            if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
                methods |= route.methods or set()
    return sorted(methods)


async def _unavailable(request: Request, exc: Exception) -> Response:
    log.warning("dependency unavailable: %s", exc)
    return error_response(request, 503, "A dependency is unavailable; try again shortly")


async def shutting_down(scope: Scope, send: Send) -> None:
    """Answer a request the server stopped before it was answered (its shutdown's time ran out),
    and close its connection. A 500, not a 503 (try again): what the request was doing may have
    been committed, a job stored, and only the answer lost."""
    response = error_response(
        Request(scope),
        500,
        "The server stopped before answering; the request may or may not have taken effect",
        headers={"Connection": "close"},
    )
    await response(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


async def _unknown_user(request: Request, exc: Exception) -> Response:
    del exc  # a well-signed token of a user removed since: as good as no token
    return await _api_error(request, unauthorized("The token's user does not exist"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, "An unexpected error occurred")


Handler = Callable[[Request, Exception], Awaitable[Response]]

HANDLERS: dict[type[Exception], Handler] = {
    ApiError: _api_error,
    RequestValidationError: _validation_error,
    StarletteHTTPException: _http_error,
    UnknownUser: _unknown_user,
    BrokerUnavailable: _unavailable,
    DatabaseUnavailable: _unavailable,
    KVUnavailable: _unavailable,
    Exception: _unexpected,
}


async def response_for(request: Request, exc: Exception) -> Response:
    """The answer to ``exc`` that the app's handlers give, for code that runs before them."""
    for cls in type(exc).__mro__:
        handler = HANDLERS.get(cls)
        if handler is not None:
            return await handler(request, exc)
    return await _unexpected(request, exc)


def install(app: FastAPI) -> None:
    for exc_class, handler in HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
