"""``POST /jobs`` at the front door: a valid submission answered before Starlette's middleware,
FastAPI's router and its dependency solving.

Every job arrives this way, and py-spy on the api under wrk found half of its time per job in
the layers between the server and the submission's own work: a dozen ASGI middleware and router
calls, then the dependencies and body validation. The lane runs the route's own checks (a bearer
token that verifies, a user this process knows, at most one Idempotency-Key of 1-255 characters,
a JSON Content-Type if any, a declared length within the body limit, a body that is strict JSON
and a valid job with a valid payload), then the route's own code, ``submission.submit_one``.

Whatever the checks doubt, which is every request that ends in a validation or authentication
error, goes to the full app with its body already read, so those answers still come from one
place, the declared route. An error found past the checks (a key reused with another body, a
database that is down) is answered by the app's own handlers (``errors.response_for``).
"""

import time
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from cloudtask.api import errors, submission
from cloudtask.api.context import ApiContext
from cloudtask.api.idempotency import read_key
from cloudtask.api.jsonbody import StrictJSONRequest, is_json_media_type
from cloudtask.api.middleware import (
    CLIENT_CLOSED_REQUEST,
    MAX_BODY_BYTES,
    ClientGone,
    record,
    replaying,
)
from cloudtask.api.security import InvalidToken, Principal
from cloudtask.contracts import jsoncodec
from cloudtask.contracts.api import JobCreate

PATH = "/jobs"


class SubmitLane:
    def __init__(self, context: ApiContext, app: ASGIApp, limit: int = MAX_BODY_BYTES) -> None:
        self._context = context
        self._app = app  # the full app: everything the lane leaves goes there
        self._limit = limit

    @staticmethod
    def takes(scope: Scope) -> bool:
        return bool(scope["method"] == "POST" and scope["path"] == PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        if not self._length_within_limit(scope):  # chunked or too large: the app's 413 rules
            await self._app(scope, receive, send)
            return
        try:
            body = await _read_body(receive)
        except ClientGone:  # nobody to answer; a truncated body is never taken for a job
            record(self._context.metrics, "POST", PATH, CLIENT_CLOSED_REQUEST, start)
            return
        answer = await self.answer(scope, receive, body) if len(body) <= self._limit else None
        if answer is None:
            await self._app(scope, replaying(body, receive), send)
            return
        try:
            await answer(scope, receive, send)
        finally:
            record(self._context.metrics, "POST", PATH, answer.status_code, start)

    async def answer(self, scope: Scope, receive: Receive, body: bytes) -> Response | None:
        """The answer to a request that passes the route's checks; ``None`` for the others."""
        credentials = self._credentials(scope)
        valid = _valid_job(body) if credentials is not None else None
        if credentials is None or valid is None:
            return None
        user, key = credentials
        parsed, job = valid
        request = StrictJSONRequest.read(scope, receive, body, parsed)
        try:
            return await submission.submit_one(self._context, request, user, job, key)
        except Exception as exc:
            return await errors.response_for(request, exc)

    def _credentials(self, scope: Scope) -> tuple[Principal, str | None] | None:
        """The token's user, known to this process, and the Idempotency-Key if there is one, from
        headers that pass the route's checks (a JSON body, if its type is declared)."""
        authorizations: list[bytes] = []
        keys: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorizations.append(value)
            elif name == b"idempotency-key":
                keys.append(value)
            elif name == b"content-type" and not is_json_media_type(value.decode("latin-1")):
                return None  # a body declared as something else: the route's 400
        if len(authorizations) != 1 or len(keys) > 1:
            return None
        scheme, _, token = authorizations[0].decode("latin-1").partition(" ")
        if scheme.lower() != "bearer":
            return None
        try:
            key = read_key(keys[0].decode("latin-1")) if keys else None
            user = self._context.tokens.verify(token.strip())
        except (ValueError, InvalidToken):  # a key out of its range, a token that fails
            return None
        if user.user_id not in self._context.known_users:
            return None  # the route asks the database about this user
        return user, key

    def _length_within_limit(self, scope: Scope) -> bool:
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding":
                return False
        return declared is not None and declared <= self._limit


def _valid_job(body: bytes) -> tuple[Any, JobCreate] | None:
    """The parsed body and the job it describes, if both it and its payload are valid."""
    try:
        parsed: Any = jsoncodec.loads(body)
        job = JobCreate.model_validate(parsed)
    except Exception:  # not JSON, or not a valid job: the route says how
        return None
    return None if submission.check_payload(job, ("payload",)) else (parsed, job)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
