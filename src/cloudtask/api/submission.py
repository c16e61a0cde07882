"""Turning validated ``POST /jobs`` bodies into stored jobs, and the Idempotency-Key flow."""

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from cloudtask.api.context import ApiContext
from cloudtask.api.errors import ApiError, bad_request, invalid_request, validation_details
from cloudtask.api.idempotency import Created, Intent, fingerprint
from cloudtask.api.responses import JSONBytesResponse, created
from cloudtask.api.security import Principal
from cloudtask.api.serialize import job_json
from cloudtask.contracts import jsoncodec
from cloudtask.contracts.api import JobCreate, ScheduleCreate
from cloudtask.contracts.job_types import BUILTIN_PAYLOADS
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.ids import new_job_id
from cloudtask.db.queries import jobs as jobs_q
from cloudtask.db.queries import schedules as schedules_q
from cloudtask.db.queries import users as users_q
from cloudtask.errors import DatabaseUnavailable, KVUnavailable, UnknownUser

log = logging.getLogger(__name__)


def check_payload(
    body: JobCreate | ScheduleCreate, loc: tuple[str | int, ...]
) -> list[dict[str, str]]:
    """Problems with a built-in type's payload, as 400 details (custom types take any JSON)."""
    return payload_details(body.type, body.payload, loc)


def payload_details(
    job_type: object, payload: Any, loc: tuple[str | int, ...]
) -> list[dict[str, str]]:
    """:func:`check_payload` on a body's raw values, which its model may have refused."""
    model = BUILTIN_PAYLOADS.get(job_type) if isinstance(job_type, str) else None
    if model is None:
        return []
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        return validation_details(
            [{**error, "loc": ("body", *loc, *error["loc"])} for error in exc.errors()]
        )
    return []


def job_body_details(raw: Any) -> list[dict[str, str]]:
    """The payload checks of ``POST /jobs`` on a raw body (see ``errors.with_body_checks``)."""
    if not isinstance(raw, dict):
        return []
    return payload_details(raw.get("type"), raw.get("payload"), ("payload",))


def batch_body_details(raw: Any) -> list[dict[str, str]]:
    """The payload checks of ``POST /jobs/batch`` on a raw body, job by job."""
    jobs = raw.get("jobs") if isinstance(raw, dict) else None
    if not isinstance(jobs, list):
        return []
    details = []
    for index, job in enumerate(jobs):
        if isinstance(job, dict):
            details += payload_details(
                job.get("type"), job.get("payload"), ("jobs", index, "payload")
            )
    return details


def new_job(body: JobCreate, user_id: uuid.UUID, now: datetime) -> jobs_q.NewJob:
    if body.run_at is not None:
        run_at = body.run_at
    elif body.delay_seconds is not None:
        run_at = now + timedelta(seconds=body.delay_seconds)
    else:
        run_at = now
    return jobs_q.NewJob(
        id=new_job_id(),
        user_id=user_id,
        type=body.type,
        payload=jsoncodec.dumps_str(body.payload),
        priority=body.priority,
        max_attempts=body.max_attempts,
        timeout_seconds=float(body.timeout_seconds),
        run_at=run_at,
        created_at=now,
    )


async def store(context: ApiContext, new_jobs: Sequence[jobs_q.NewJob]) -> None:
    """Commit the jobs and their outbox messages, then hand the messages to the publisher."""
    if len(new_jobs) == 1:
        await context.group_commit.store(new_jobs[0])  # grouped with its neighbours' jobs
    else:
        await context.group_commit.write(new_jobs)  # a batch is a group of its own
    # Counted per type and logged only when INFO is on: a batch's thousand jobs mostly share
    # one type, and the log line's fields cost more than the check.
    for job_type, count in Counter(job.type for job in new_jobs).items():
        context.metrics.jobs_created.labels(context.metrics.job_type(job_type)).inc(count)
    if log.isEnabledFor(logging.INFO):
        for job in new_jobs:
            log.info(
                "job created",
                extra={"action": "job.created", "jobId": str(job.id), "type": job.type},
            )


async def submit_one(
    context: ApiContext, request: Request, user: Principal, body: JobCreate, key: str | None
) -> Response:
    """``POST /jobs`` once its request is valid: the job stored, or the key's answer replayed."""
    job = new_job(body, user.user_id, utcnow())
    answer = created(job_json(job.record()), job_location(job.id))
    prepared = Prepared(Created("job", str(job.id)), answer, lambda: store(context, [job]))
    return await idempotent(context, request, user, key, prepared, location=_location_of_job)


def job_location(job_id: uuid.UUID) -> str:
    """The path of a job, as a 201 creating it names it in ``Location``."""
    return f"/jobs/{job_id}"


def _location_of_job(body: bytes) -> str:
    return job_location(jsoncodec.loads(body)["id"])


@dataclass(frozen=True)
class Prepared:
    """A request ready to write: what it stores (``made``, for a retry to look for), its
    answer, and the write itself."""

    made: Created
    answer: Response
    write: Callable[[], Awaitable[None]]


async def idempotent(
    context: ApiContext,
    request: Request,
    user: Principal,
    key: str | None,
    prepared: Prepared,
    *,
    location: Callable[[bytes], str] | None = None,
) -> Response:
    """Write ``prepared`` once per Idempotency-Key; replay its answer for the same key and
    body, with the ``Location`` that ``location`` reads from a 201's body (the answer is kept
    without its headers)."""
    if key is None:
        await prepared.write()
        return prepared.answer
    if len(request.headers.getlist("idempotency-key")) > 1:
        # Which one would the retry send? Refused rather than one of them picked.
        raise bad_request("Idempotency-Key", "header", "must be sent once, not repeated")
    body: Any = await request.json()
    print_ = fingerprint(request.method, request.url.path, body)
    answer = prepared.answer
    intent = Intent(prepared.made, answer.status_code, bytes(answer.body))
    begun = await context.idempotency.begin(user.user_id, key, print_, intent)
    if isinstance(begun, bytes):
        return await _written_once(context, user, key, print_, prepared, begun)
    replay = begun
    if replay.unsure is not None:
        # The first request's commit failed without the database saying whether it was made
        # (its answer lost with the connection, say), or its process died: replayed if it
        # was, else made now. Found, it is the user's: their row exists too.
        async with session.reading(context.db) as conn:
            stored = await _was_stored(conn, replay.unsure, user.user_id)
        if not stored:
            claim = await context.idempotency.take_over(user.user_id, key, print_, replay, intent)
            if claim is None:
                raise ApiError(409, "A request with this Idempotency-Key is still in progress")
            return await _written_once(context, user, key, print_, prepared, claim)
        with contextlib.suppress(KVUnavailable):
            await context.idempotency.finish(user.user_id, key, print_, replay.status, replay.body)
    else:
        # As the request it replays would be: refused if the user was removed since (and
        # their jobs with them). A replay is rare; the lookup costs nothing on the usual path.
        # A database that cannot say does not stop the replay: the answer was true when kept.
        with contextlib.suppress(DatabaseUnavailable):
            async with session.reading(context.db) as conn:
                if not await users_q.exists(conn, user.user_id):
                    raise UnknownUser
    headers = {"Idempotent-Replayed": "true"}
    if location is not None and replay.status == 201:
        headers["Location"] = location(replay.body)
    return JSONBytesResponse(replay.body, status_code=replay.status, headers=headers)


async def _was_stored(conn: AsyncConnection, made: Created, user_id: uuid.UUID) -> bool:
    if made.kind == "schedule":
        return await schedules_q.get(conn, uuid.UUID(made.id), user_id) is not None
    return await jobs_q.get(conn, uuid.UUID(made.id), user_id) is not None


async def _written_once(
    context: ApiContext,
    user: Principal,
    key: str,
    print_: str,
    prepared: Prepared,
    claim: bytes,
) -> Response:
    """``prepared`` written under the key this request claimed, its answer then kept."""
    holding = asyncio.ensure_future(context.idempotency.hold(user.user_id, key, claim))
    answer = prepared.answer
    try:
        await prepared.write()
    except BaseException as exc:
        await _stopped(holding)
        if isinstance(exc, UnknownUser):
            await _release(context, user, key)  # nothing stored: the user is gone
        else:
            # Stored or not (a connection lost at the commit; the request cancelled while the
            # group commit it joined goes on): the retry looks. Released, a retry made it twice.
            await _keep_unsure(context, user, key, print_, prepared)
        raise
    await _stopped(holding)  # a renewal on its way would land over the answer
    try:
        await context.idempotency.finish(
            user.user_id, key, print_, answer.status_code, bytes(answer.body)
        )
    except KVUnavailable:
        # The job is committed: answering an error now would invite a duplicate. The claim,
        # once it lapses, names it: a retry then finds it stored and replays it.
        log.warning("could not record an Idempotency-Key answer; a retry will look it up")
    return answer


async def _keep_unsure(
    context: ApiContext, user: Principal, key: str, print_: str, prepared: Prepared
) -> None:
    answer = prepared.answer
    try:
        await context.idempotency.finish(
            user.user_id,
            key,
            print_,
            answer.status_code,
            bytes(answer.body),
            unsure=prepared.made,
        )
    except KVUnavailable:
        # The claim, once it lapses, names what it wrote: a retry looks for it then.
        log.warning("could not keep an Idempotency-Key answer whose commit is unknown")


async def _release(context: ApiContext, user: Principal, key: str) -> None:
    try:
        await context.idempotency.release(user.user_id, key)
    except KVUnavailable:
        log.warning("could not release an Idempotency-Key after a failed request")


async def _stopped(task: "asyncio.Future[None]") -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def raise_if_invalid(details: list[dict[str, str]]) -> None:
    if details:
        raise ApiError(400, invalid_request(details), details=details)
