"""The OpenAPI document: every route's error answers are the contract's error body.

FastAPI documents validation failures as 422 with its own schema; CloudTask answers them with a 400
in the error body, so the document is rewritten to say so.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from cloudtask.contracts.api import ErrorBody

_DESCRIPTIONS = {
    400: "Malformed JSON, or a field, parameter or header that fails its rule (see `details`).",
    401: "Missing, malformed, forged or expired token, or one whose user no longer exists.",
    404: "Unknown, malformed or another user's id (the same answer for all three).",
    409: "The request conflicts with the resource's current state.",
    413: "The body is larger than 1 MiB.",
    422: "The Idempotency-Key was already used with a different body.",
    429: "Too many failed attempts; see Retry-After.",
    500: "Unexpected error.",
    503: "A dependency is unavailable.",
}


# The headers the contract gives some answers, by status code, for every operation answering it.
_HEADERS_BY_STATUS = {
    "401": {
        "WWW-Authenticate": {
            "description": "`Bearer`: the route takes a JWT as a Bearer token.",
            "schema": {"type": "string", "enum": ["Bearer"]},
        }
    },
    "429": {
        "Retry-After": {
            "description": "Seconds until fewer than 10 failed logins fall within the last "
            "15 minutes.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
}
_REPLAYED: dict[str, dict[str, Any]] = {
    "Idempotent-Replayed": {
        "description": "`true` on the first answer replayed for a repeated Idempotency-Key and "
        "body; absent otherwise.",
        "schema": {"type": "string", "enum": ["true"]},
    }
}
_LOCATION: dict[str, dict[str, Any]] = {
    "Location": {
        "description": "The new resource's path, such as `/jobs/{id}`.",
        "required": True,
        "schema": {"type": "string"},
    }
}
# And the headers of some operations' own answers: (path, method, status) -> headers.
_OPERATION_HEADERS: dict[tuple[str, str, str], dict[str, dict[str, Any]]] = {
    ("/jobs", "get", "200"): {
        "Link": {
            "description": 'The next page, `<…>; rel="next"`, when more jobs remain.',
            "schema": {"type": "string"},
        }
    },
    ("/jobs", "post", "201"): _REPLAYED | _LOCATION,
    ("/jobs/batch", "post", "201"): _REPLAYED,
    ("/jobs/{job_id}/retry", "post", "201"): _LOCATION,
    ("/schedules", "post", "201"): _REPLAYED | _LOCATION,
}


def error_responses(
    *codes: int, described: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """The error answers ``codes``, in the error body; ``described`` words some for the route."""
    words = _DESCRIPTIONS | (described or {})
    return {code: {"model": ErrorBody, "description": words[code]} for code in codes}


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _rewrite(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _rewrite(document: dict[str, Any]) -> dict[str, Any]:
    error_ref = {"$ref": "#/components/schemas/ErrorBody"}
    error = {"description": "", "content": {"application/json": {"schema": error_ref}}}
    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            if _is_fastapi_validation(responses.get("422")):
                del responses["422"]
                responses.setdefault("400", {**error, "description": _DESCRIPTIONS[400]})
            # Any route: a request with a malformed header (Content-Length: abc) is refused
            # before routing, so is a declared body over the limit, and any route that reaches
            # PostgreSQL, RabbitMQ or Redis answers 503 while one is down.
            for code in (400, 413, 500, 503):
                responses.setdefault(str(code), {**error, "description": _DESCRIPTIONS[code]})
    _document_headers(document)
    components = document.setdefault("components", {})
    components["securitySchemes"] = {
        "HTTPBearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "The JWT from /auth/register or /auth/login.",
        }
    }
    for path, path_item in document.get("paths", {}).items():
        if path.startswith(("/jobs", "/schedules")):
            for operation in path_item.values():
                operation["security"] = [{"HTTPBearer": []}]
    schemas = components.get("schemas", {})
    for name, schema in schemas.items():
        if name.startswith(("JobCreate", "Registration", "Credentials", "JobBatchCreate")):
            schema.setdefault("additionalProperties", True)
    for name in ("JobCreate", "ScheduleCreate"):
        # FastAPI leaves out a default of null; the payload's is one, as the API docs say.
        if name in schemas:
            schemas[name]["properties"]["payload"]["default"] = None
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return document


def _document_headers(document: dict[str, Any]) -> None:
    for path, path_item in document.get("paths", {}).items():
        for method, operation in path_item.items():
            for status, response in operation.get("responses", {}).items():
                headers = {
                    **_HEADERS_BY_STATUS.get(status, {}),
                    **_OPERATION_HEADERS.get((path, method, status), {}),
                }
                if headers:
                    response.setdefault("headers", {}).update(headers)


def _is_fastapi_validation(response: dict[str, Any] | None) -> bool:
    if response is None:
        return False
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))
