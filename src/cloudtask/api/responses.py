"""A JSON response rendered with CloudTask's codec (orjson, exact big integers)."""

from typing import Any

from starlette.responses import Response

from cloudtask.contracts import jsoncodec


class JSONBytesResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return jsoncodec.dumps(content)


def created(content: Any, location: str) -> JSONBytesResponse:
    """A 201 for one new resource, with its path in ``Location``."""
    return JSONBytesResponse(content, status_code=201, headers={"Location": location})
