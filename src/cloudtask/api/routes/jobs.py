"""``/jobs``: submit, list, read, cancel and retry a user's jobs."""

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from pydantic import AfterValidator, BeforeValidator
from starlette.responses import Response

from cloudtask.api import submission
from cloudtask.api.deps import Context, CurrentUser
from cloudtask.api.errors import (
    ApiError,
    invalid_request,
    not_found,
    repeated_query_details,
    with_body_checks,
)
from cloudtask.api.idempotency import Created, IdempotencyKey
from cloudtask.api.jsonbody import StrictJSONRoute, nests_bodies
from cloudtask.api.openapi import error_responses
from cloudtask.api.path_ids import path_id
from cloudtask.api.responses import JSONBytesResponse, created
from cloudtask.api.serialize import job_json
from cloudtask.contracts.api import Job, JobBatchCreate, JobCreate
from cloudtask.contracts.job_types import TYPE_PATTERN
from cloudtask.contracts.signals import (
    CANCEL_CHANNEL,
    CANCEL_TTL,
    cancel_key,
)
from cloudtask.contracts.statuses import CANCELLABLE_STATUSES, RETRYABLE_STATUSES, JobStatus
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.ids import new_job_id
from cloudtask.db.queries import jobs as jobs_q
from cloudtask.db.queries import users as users_q
from cloudtask.errors import DatabaseUnavailable, KVUnavailable, UnknownUser

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    route_class=StrictJSONRoute,
    responses=error_responses(401),
)


def _job_id(raw: str) -> uuid.UUID:
    return path_id(raw, "Job")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Job,
    responses=error_responses(400, 409, 422),
    summary="Submit a job",
)
@with_body_checks(submission.job_body_details)
async def create_job(
    body: JobCreate,
    user: CurrentUser,
    context: Context,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    submission.raise_if_invalid(submission.check_payload(body, ("payload",)))
    return await submission.submit_one(context, request, user, body, idempotency_key)


@router.post(
    "/batch",
    status_code=status.HTTP_201_CREATED,
    response_model=list[Job],
    responses=error_responses(400, 409, 422),
    summary="Submit up to 1,000 jobs at once, all or none",
)
@with_body_checks(submission.batch_body_details)
@nests_bodies(2)  # each job's body is in {"jobs": [...]}
async def create_batch(
    body: JobBatchCreate,
    user: CurrentUser,
    context: Context,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    details = []
    for index, job_body in enumerate(body.jobs):
        details += submission.check_payload(job_body, ("jobs", index, "payload"))
    submission.raise_if_invalid(details)

    now = utcnow()
    new_jobs = [submission.new_job(job_body, user.user_id, now) for job_body in body.jobs]
    answer = JSONBytesResponse([job_json(job.record()) for job in new_jobs], status_code=201)
    first = Created("job", str(new_jobs[0].id))  # all or none are stored: the first tells
    prepared = submission.Prepared(first, answer, lambda: submission.store(context, new_jobs))
    return await submission.idempotent(context, request, user, idempotency_key, prepared)


# A cursor names the last job of a page by its place in the listing's order: its creation time
# (microseconds since the epoch) and its insertion sequence.
CURSOR_PATTERN = r"^v2\.[0-9]{1,18}\.[0-9]{1,18}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_LAST_MICROSECOND = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND


def _decimal_digits(value: object) -> object:
    # A query string is text, read as an integer only when it is written as one: not "5.0",
    # "+5", " 5", "1_0" or other scripts' digits, all of which int() would take.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("must be a whole number written in digits, such as 50")
    return value


def _encode_cursor(job: jobs_q.JobRecord) -> str:
    return f"v2.{(job.created_at - _EPOCH) // _MICROSECOND}.{job.seq}"


def _decode_cursor(cursor: str) -> jobs_q.ListPosition:
    # The Query pattern and _issued_cursor already checked the shape and the range.
    _, micros, seq = cursor.split(".")
    return jobs_q.ListPosition(_EPOCH + int(micros) * _MICROSECOND, int(seq))


def _issued_cursor(cursor: str | None) -> str | None:
    # Eighteen digits reach past the last time a datetime holds.
    if cursor is not None and int(cursor.split(".")[1]) > _LAST_MICROSECOND:
        raise ValueError("is not a cursor this API issued (take it from the Link header)")
    return cursor


@router.get(
    "",
    response_model=list[Job],
    responses=error_responses(400),
    summary="List your jobs, newest first",
    description='When more jobs remain, a `Link: <…>; rel="next"` header gives the next page.',
)
async def list_jobs(
    user: CurrentUser,
    context: Context,
    request: Request,
    job_status: Annotated[JobStatus | None, Query(alias="status")] = None,
    job_type: Annotated[str | None, Query(alias="type", pattern=TYPE_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=500), BeforeValidator(_decimal_digits)] = 50,
    cursor: Annotated[
        str | None,
        Query(pattern=CURSOR_PATTERN, description="From the `Link` header of the previous page."),
        AfterValidator(_issued_cursor),
    ] = None,
) -> Response:
    if repeated := repeated_query_details(request):  # each else valid
        raise ApiError(400, invalid_request(repeated), details=repeated)
    after = _decode_cursor(cursor) if cursor is not None else None
    async with session.reading(context.db) as conn:
        records = await jobs_q.list_for_user(
            conn,
            user.user_id,
            limit=limit + 1,
            after=after,
            status=job_status,
            job_type=job_type,
        )
    page = records[:limit]
    headers = {}
    if len(records) > limit:
        next_url = request.url.include_query_params(cursor=_encode_cursor(page[-1]))
        headers["Link"] = f'<{next_url}>; rel="next"'
    return JSONBytesResponse([job_json(job) for job in page], headers=headers)


@router.get(
    "/{job_id}",
    response_model=Job,
    responses=error_responses(404),
    summary="Read one job",
)
async def get_job(job_id: str, user: CurrentUser, context: Context) -> Response:
    async with session.reading(context.db) as conn:
        job = await jobs_q.get(conn, _job_id(job_id), user.user_id)
    if job is None:
        raise not_found()
    return JSONBytesResponse(job_json(job))


@router.post(
    "/{job_id}/cancel",
    response_model=Job,
    responses=error_responses(404, 409),
    summary="Cancel a job",
    description=(
        "A PENDING or SCHEDULED job becomes CANCELLED and never runs (one a worker took that "
        "moment is stopped, and what it reports changes nothing). A RUNNING job is asked to "
        "stop (within about a second) and becomes CANCELLED when it does (if it completed "
        "first, it stays COMPLETED)."
    ),
)
async def cancel_job(job_id: str, user: CurrentUser, context: Context) -> Response:
    target = _job_id(job_id)
    flagged = False
    try:
        async with session.transaction(context.db) as conn:
            current = await jobs_q.to_cancel(conn, target, user.user_id)
            if current is None:
                raise not_found()
            status_now, already_asked = current
            if status_now not in CANCELLABLE_STATUSES:
                raise ApiError(409, f"Job is already {status_now.value}")
            # Before the commit: workers read cancellations from the key-value store alone, so
            # a cancel they cannot hear is not made (503, nothing changed) rather than made in
            # the database while the queued copy runs anyway.
            await context.kv.set(cancel_key(target), b"1", ttl=CANCEL_TTL)
            flagged = not already_asked  # a cancel already made keeps its flag, come what may
            job = await jobs_q.cancel(conn, target, user.user_id, now=utcnow())
            if job is None:  # it finished since it was read
                raise ApiError(409, "Job is already finished")
    except BaseException:
        if flagged:  # the cancel was not made: a flag left behind would stop the job
            await _take_back_flag(context, target)
        raise
    # Once committed: a running handler is stopped. Were the notice lost, the job runs on and
    # its report decides (the cancel stands for the copies still queued).
    try:
        await context.kv.publish(CANCEL_CHANNEL, str(target).encode())
    except KVUnavailable:
        log.warning("could not tell the workers of a cancel", extra={"jobId": str(target)})
    return JSONBytesResponse(job_json(job))


async def _take_back_flag(context: Context, job_id: uuid.UUID) -> None:
    """Delete the flag of a cancel that failed, unless the database says it committed (a commit
    whose answer was lost may have): a flag wrongly kept stops a job, one wrongly taken back lets
    a cancelled job run. A database that cannot say most likely took no commit either."""
    try:
        async with session.reading(context.db) as conn:
            asked = await jobs_q.cancel_asked(conn, job_id)
    except DatabaseUnavailable:
        asked = False
    if asked:
        return
    try:
        await context.kv.delete(cancel_key(job_id))
    except KVUnavailable:
        log.warning("a cancel failed and its flag stays", extra={"jobId": str(job_id)})


@router.post(
    "/{job_id}/retry",
    status_code=status.HTTP_201_CREATED,
    response_model=Job,
    responses=error_responses(404, 409),
    summary="Run a FAILED or CANCELLED job again, as a new job",
)
async def retry_job(job_id: str, user: CurrentUser, context: Context) -> Response:
    async with session.reading(context.db) as conn:
        job = await jobs_q.get(conn, _job_id(job_id), user.user_id)
        # A retry creates a job, and a request that creates something from a user who no
        # longer exists is a 401 at once (their jobs went with them, so it would read 404).
        if job is None and not await users_q.exists(conn, user.user_id):
            raise UnknownUser
    if job is None:
        raise not_found()
    if job.status not in RETRYABLE_STATUSES:
        raise ApiError(
            409, f"Only a FAILED or CANCELLED job can be retried; this one is {job.status.value}"
        )
    now = utcnow()
    new = jobs_q.NewJob(
        id=new_job_id(),
        user_id=user.user_id,
        type=job.type,
        payload=job.payload,
        priority=job.priority,
        max_attempts=job.max_attempts,
        timeout_seconds=job.timeout_seconds,
        run_at=now,
        created_at=now,
    )
    await submission.store(context, [new])
    return created(job_json(new.record()), submission.job_location(new.id))
