"""Request and response bodies of the HTTP API, and their rules.

JSON types are strict (a number is not a string), unknown fields are ignored, and times are
RFC 3339.
"""

import re
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    field_validator,
)
from pydantic.alias_generators import to_camel

from cloudtask.contracts import jsoncodec
from cloudtask.contracts.job_types import TYPE_PATTERN
from cloudtask.contracts.statuses import JobStatus
from cloudtask.contracts.timefmt import parse_rfc3339

MAX_PAYLOAD_BYTES = 256 * 1024
MAX_DELAY_SECONDS = 10 * 366 * 24 * 3600
MAX_BATCH = 1000
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}"
    r"@(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)

Rfc3339 = Annotated[datetime, BeforeValidator(parse_rfc3339)]


def _small_payload(value: Any) -> Any:
    if len(jsoncodec.dumps(value)) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"must be at most {MAX_PAYLOAD_BYTES} bytes when serialized")
    return value


Payload = Annotated[Any, AfterValidator(_small_payload)]


class Body(BaseModel):
    model_config = ConfigDict(
        strict=True, alias_generator=to_camel, populate_by_name=True, extra="ignore"
    )


class Credentials(Body):
    email: StrictStr
    password: StrictStr


class Registration(Credentials):
    email: Annotated[StrictStr, Field(max_length=254)]
    password: Annotated[StrictStr, Field(min_length=8, max_length=128)]

    @field_validator("email")
    @classmethod
    def _valid_email(cls, value: str) -> str:
        if not _EMAIL.match(value):
            raise ValueError("must be a valid email address")
        return value


class AuthResponse(Body):
    token: str
    access_token: str
    token_type: Literal["Bearer"] = "Bearer"
    expires_in: int


class JobCreate(Body):
    type: Annotated[StrictStr, Field(pattern=TYPE_PATTERN, examples=["echo"])]
    payload: Payload = None
    priority: Annotated[int, Field(ge=0, le=9)] = 5
    run_at: Rfc3339 | None = None
    delay_seconds: (
        Annotated[float, Field(ge=0, le=MAX_DELAY_SECONDS, allow_inf_nan=False)] | None
    ) = None
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    timeout_seconds: Annotated[float, Field(ge=1, le=3600, allow_inf_nan=False)] = 300

    @field_validator("delay_seconds")
    @classmethod
    def _one_start_time(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and info.data.get("run_at") is not None:
            raise ValueError("cannot be given together with runAt")
        return value


class JobBatchCreate(Body):
    jobs: Annotated[list[JobCreate], Field(min_length=1, max_length=MAX_BATCH)]


class ScheduleCreate(Body):
    name: Annotated[StrictStr, Field(min_length=1, max_length=200)]
    cron: Annotated[StrictStr, Field(min_length=1, max_length=200, examples=["*/5 * * * *"])]
    timezone: Annotated[StrictStr, Field(min_length=1, max_length=64)] = "UTC"
    type: Annotated[StrictStr, Field(pattern=TYPE_PATTERN)]
    payload: Payload = None
    priority: Annotated[int, Field(ge=0, le=9)] = 5
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    timeout_seconds: Annotated[float, Field(ge=1, le=3600, allow_inf_nan=False)] = 300


class Schedule(Body):
    id: UUID
    name: str
    cron: str
    timezone: str
    type: str
    payload: Any
    priority: int
    max_attempts: int
    timeout_seconds: float
    paused: bool
    next_run_at: datetime | None = Field(description="Null while the schedule is paused.")
    last_run_at: datetime | None
    created_at: datetime


class Job(Body):
    id: UUID
    type: str
    payload: Any
    status: JobStatus
    priority: int
    attempts: int
    max_attempts: int
    timeout_seconds: float
    run_at: datetime
    result: Any
    error: str | None
    schedule_id: UUID | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class ErrorDetail(Body):
    field: str = Field(
        description="The bad field (a dotted path in the body), parameter or header."
    )
    location: Literal["body", "query", "path", "header"]
    message: str


class ErrorBody(Body):
    status: int
    error: str = Field(description="The HTTP reason phrase.")
    message: str
    path: str
    timestamp: datetime
    details: list[ErrorDetail] | None = Field(
        default=None, description="Each field, parameter or header that failed its rule (400 only)."
    )


class HealthComponent(Body):
    status: Literal["UP", "DOWN"]


class Health(Body):
    status: Literal["UP", "DOWN"]
    components: dict[str, HealthComponent]
