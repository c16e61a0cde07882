"""The contract's error body, ``{"status", "error", "message", "path", "timestamp"}`` (plus
``details`` on a 400), built the same way by the API's handlers and by the HTTP server itself
(for a request it cannot parse, which never reaches the API)."""

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from cloudtask.contracts.timefmt import format_rfc3339, utcnow

# RFC 9110's names, which Python's own table took in 3.13: the same answer on every interpreter.
_RFC_9110_REASONS = {
    413: "Content Too Large",
    414: "URI Too Long",
    416: "Range Not Satisfiable",
    422: "Unprocessable Content",
}


def reason(status: int) -> str:
    """The reason phrase of ``status``, the error body's ``error``."""
    return _RFC_9110_REASONS.get(status) or HTTPStatus(status).phrase


def error_body(
    status: int, message: str, path: str, details: Sequence[Mapping[str, str]] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": status,
        "error": reason(status),
        "message": message,
        "path": path,
        "timestamp": format_rfc3339(utcnow()),
    }
    if details is not None:
        body["details"] = list(details)
    return body
