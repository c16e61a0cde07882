"""``/schedules``: recurring jobs on a cron expression in a time zone."""

import re
import uuid
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Request, status
from starlette.responses import Response

from cloudtask.api import submission
from cloudtask.api.context import ApiContext
from cloudtask.api.deps import Context, CurrentUser
from cloudtask.api.errors import ApiError, not_found, with_body_checks
from cloudtask.api.idempotency import Created, IdempotencyKey
from cloudtask.api.jsonbody import StrictJSONRoute
from cloudtask.api.openapi import error_responses
from cloudtask.api.path_ids import path_id
from cloudtask.api.responses import JSONBytesResponse, created
from cloudtask.api.security import Principal
from cloudtask.api.serialize import schedule_json
from cloudtask.contracts import jsoncodec
from cloudtask.contracts.api import CRON_SHAPE, Schedule, ScheduleCreate
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import schedules as schedules_q
from cloudtask.policies import cron

router = APIRouter(
    prefix="/schedules",
    tags=["schedules"],
    route_class=StrictJSONRoute,
    responses=error_responses(401),
)
ScheduleId = Annotated[str, Path(description="The schedule's id.")]
TIME_RULES = (
    "Cron expressions have five fields (minute hour day-of-month month day-of-week) or are a "
    "macro such as `@hourly`, read in the schedule's IANA time zone. Around clock changes, as "
    "in cron: a schedule whose minute or hour field starts with `*` (`*/15 2 * * *`, `@hourly`) "
    "follows the clock, so a time skipped when clocks go forward does not fire and one repeated "
    "when they go back fires twice; any other schedule fires a skipped time once, when the clock "
    "jumps, and a repeated time once, at its first occurrence. A firing missed while no "
    "scheduler ran fires once, late; missed firings are not replayed one by one."
)


def _schedule_id(raw: str) -> uuid.UUID:
    return path_id(raw, "Schedule")


_CRON_SHAPE = re.compile(CRON_SHAPE)


def _schedule_details(raw: Any) -> list[dict[str, str]]:
    """The checks of a schedule's body that its model cannot make, as 400 details: the cron
    expression, the time zone, and the payload by its job type."""
    if not isinstance(raw, dict):
        return []
    details = []
    expression, zone = raw.get("cron"), raw.get("timezone", "UTC")
    if isinstance(expression, str):
        try:
            # The documented shape first: croniter also reads what it leaves out (@HOURLY,
            # tabs, spaces around or between the fields), and the OpenAPI document says 400.
            if not _CRON_SHAPE.fullmatch(expression):
                raise cron.InvalidSchedule(cron.invalid_cron_message(expression))
            cron.check_cron(expression)
        except cron.InvalidSchedule as exc:
            details.append({"field": "cron", "location": "body", "message": str(exc)})
    if isinstance(zone, str):
        try:
            cron.parse_zone(zone)
        except cron.InvalidSchedule as exc:
            details.append({"field": "timezone", "location": "body", "message": str(exc)})
    return details + submission.payload_details(raw.get("type"), raw.get("payload"), ("payload",))


def _checked_zone(body: ScheduleCreate) -> ZoneInfo:
    """The schedule's zone, once its cron, zone and payload passed; else a 400 naming each."""
    fields = {"cron": body.cron, "timezone": body.timezone, "type": body.type}
    submission.raise_if_invalid(_schedule_details({**fields, "payload": body.payload}))
    return cron.parse_zone(body.timezone)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Schedule,
    responses=error_responses(400, 409, 422),
    summary="Create a recurring schedule",
    description=TIME_RULES,
)
@with_body_checks(_schedule_details)
async def create_schedule(
    body: ScheduleCreate,
    user: CurrentUser,
    context: Context,
    request: Request,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    zone = _checked_zone(body)
    prepared = _prepared(body, zone, user, context)
    # As for a job: a client retrying after a lost answer must not make a second schedule,
    # which would fire beside the first for ever.
    return await submission.idempotent(
        context, request, user, idempotency_key, prepared, location=_location_of_schedule
    )


def _location_of_schedule(body: bytes) -> str:
    return f"/schedules/{jsoncodec.loads(body)['id']}"


def _prepared(
    body: ScheduleCreate, zone: ZoneInfo, user: Principal, context: ApiContext
) -> submission.Prepared:
    now = utcnow()
    record = schedules_q.ScheduleRecord(
        id=uuid.uuid4(),
        user_id=user.user_id,
        name=body.name,
        cron=body.cron,
        timezone=body.timezone,
        type=body.type,
        payload=jsoncodec.dumps_str(body.payload),
        priority=body.priority,
        max_attempts=body.max_attempts,
        timeout_seconds=float(body.timeout_seconds),
        paused=False,
        next_run_at=cron.next_fire(body.cron, zone, now),
        last_run_at=None,
        created_at=now,
        updated_at=now,
    )

    async def write() -> None:
        async with session.transaction(context.db) as conn:
            await schedules_q.create(conn, record)

    answer = created(schedule_json(record), f"/schedules/{record.id}")
    return submission.Prepared(Created("schedule", str(record.id)), answer, write)


@router.get("", response_model=list[Schedule], summary="List your schedules, oldest first")
async def list_schedules(user: CurrentUser, context: Context) -> Response:
    async with session.reading(context.db) as conn:
        records = await schedules_q.list_for_user(conn, user.user_id)
    return JSONBytesResponse([schedule_json(record) for record in records])


@router.get(
    "/{schedule_id}",
    response_model=Schedule,
    responses=error_responses(404),
    summary="Read one schedule",
)
async def get_schedule(schedule_id: ScheduleId, user: CurrentUser, context: Context) -> Response:
    async with session.reading(context.db) as conn:
        record = await schedules_q.get(conn, _schedule_id(schedule_id), user.user_id)
    if record is None:
        raise not_found("Schedule")
    return JSONBytesResponse(schedule_json(record))


@router.delete(
    "/{schedule_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404),
    summary="Delete a schedule (jobs it created are kept)",
)
async def delete_schedule(schedule_id: ScheduleId, user: CurrentUser, context: Context) -> Response:
    async with session.transaction(context.db) as conn:
        removed = await schedules_q.remove(conn, _schedule_id(schedule_id), user.user_id)
    if not removed:
        raise not_found("Schedule")
    return Response(status_code=204)


def _next_run(schedule: schedules_q.ScheduleRecord, now: datetime) -> datetime:
    try:
        return cron.next_fire(schedule.cron, cron.parse_zone(schedule.timezone), now)
    except ValueError as exc:  # InvalidSchedule, or croniter's own on a stored expression
        # Stored under older rules (or its zone left the time-zone database): the scheduler
        # paused it, and it stays paused.
        raise ApiError(409, f"Schedule cannot be resumed: {exc}") from None


async def _set_paused(
    schedule_id: str, user: CurrentUser, context: Context, *, paused: bool
) -> Response:
    target = _schedule_id(schedule_id)
    now = utcnow()
    async with session.transaction(context.db) as conn:
        current = await schedules_q.get(conn, target, user.user_id)
        if current is None:
            raise not_found("Schedule")
        # Resuming starts from now: the firings a paused schedule skipped are not made up.
        next_run_at = None
        if not paused and current.paused:
            next_run_at = _next_run(current, now)
        record = await schedules_q.set_paused(
            conn, target, user.user_id, paused=paused, next_run_at=next_run_at, now=now
        )
    if record is None:
        raise not_found("Schedule")
    return JSONBytesResponse(schedule_json(record))


@router.post(
    "/{schedule_id}/pause",
    response_model=Schedule,
    responses=error_responses(404),
    summary="Pause a schedule: it fires no more until resumed",
)
async def pause_schedule(schedule_id: ScheduleId, user: CurrentUser, context: Context) -> Response:
    return await _set_paused(schedule_id, user, context, paused=True)


@router.post(
    "/{schedule_id}/resume",
    response_model=Schedule,
    responses=error_responses(404, 409),
    summary="Resume a paused schedule from now on",
    description="409 for a schedule its cron expression or time zone no longer allows to run "
    "(the scheduler paused it).",
)
async def resume_schedule(schedule_id: ScheduleId, user: CurrentUser, context: Context) -> Response:
    return await _set_paused(schedule_id, user, context, paused=False)
