"""Request and response bodies of the HTTP API, and their rules.

JSON types are strict (a number is not a string), unknown fields are ignored, and times are
RFC 3339.
"""

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
from cloudtask.contracts.job_types import BUILTIN_PAYLOADS, TYPE_PATTERN
from cloudtask.contracts.statuses import JobStatus
from cloudtask.contracts.timefmt import parse_rfc3339

MAX_PAYLOAD_BYTES = 256 * 1024
CRON_SHAPE = (
    r"^(@(annually|yearly|monthly|weekly|daily|midnight|hourly)"
    r"|[0-9*,/-]+ [0-9*,/-]+ [0-9*,/?LW-]+ [0-9A-Za-z*,/-]+ [0-9A-Za-z*,/?L#-]+)$"
)
"""The shape of a cron expression; whether it is valid (and ever fires) is checked beyond it."""
MAX_DELAY_SECONDS = 10 * 366 * 24 * 3600
MAX_BATCH = 1000
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# A dot-atom local part (no leading, trailing or doubled dot) and a domain of two labels or more.
EMAIL_PATTERN = rf"^{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+$"
MAX_LOCAL_PART = 64
# The same with the local part's bound, for the document: ECMA-262 patterns have lookahead,
# pydantic's do not (``_short_local_part`` enforces the bound).
EMAIL_PATTERN_DOC = rf"^(?=[^@]{{1,{MAX_LOCAL_PART}}}@){EMAIL_PATTERN[1:]}"

Rfc3339 = Annotated[datetime, BeforeValidator(parse_rfc3339)]


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold U+0000; refused here on every back end alike.
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


NO_NUL = AfterValidator(_no_nul)
NO_NUL_DOC = Field(json_schema_extra={"pattern": r"^[^\x00]*$"})  # documented; NO_NUL enforces it
Text = Annotated[StrictStr, NO_NUL, NO_NUL_DOC]
"""A string stored in a text column (payloads are JSON text, where U+0000 is escaped)."""


def _integral(value: Any) -> Any:
    # JSON has one number type: 5.0 is the integer 5 (as JSON Schema says), 5.5 is not, and
    # neither true nor "5" is a number at all.
    if isinstance(value, float) and not isinstance(value, bool) and value.is_integer():
        return int(value)
    return value


IntegralFloat = BeforeValidator(_integral)
"""Put it after the ``Field`` constraints, or they are lost from the JSON schema."""


def _small_payload(value: Any) -> Any:
    if len(jsoncodec.dumps(value)) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"must be at most {MAX_PAYLOAD_BYTES} bytes when serialized")
    return value


Payload = Annotated[Any, AfterValidator(_small_payload)]


class Body(BaseModel):
    # Read by their camelCase names only: a snake_case key is an unknown field, ignored like
    # any other, rather than a second spelling the document does not show.
    model_config = ConfigDict(strict=True, alias_generator=to_camel, extra="ignore")


def _short_local_part(email: str) -> str:
    # The pattern's engine has no lookahead to bound the part before the @ itself.
    if len(email.rpartition("@")[0]) > MAX_LOCAL_PART:
        raise ValueError(f"must have at most {MAX_LOCAL_PART} characters before the @")
    return email


class Credentials(Body):
    email: Text
    password: StrictStr


class Registration(Credentials):
    email: Annotated[
        StrictStr,
        Field(max_length=254, pattern=EMAIL_PATTERN, examples=["ada@example.com"]),
        AfterValidator(_short_local_part),
        Field(json_schema_extra={"pattern": EMAIL_PATTERN_DOC}),
    ]
    password: Annotated[StrictStr, Field(min_length=8, max_length=128)]


class AuthResponse(Body):
    token: str
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int


def _payload_rules(schema: dict[str, Any]) -> None:
    """A built-in type's payload has that type's shape, in JSON Schema."""
    schema["allOf"] = [
        {
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {"properties": {"payload": model.model_json_schema()}, "required": ["payload"]},
        }
        for name, model in BUILTIN_PAYLOADS.items()
        if model is not None
    ]


def _job_body_schema(schema: dict[str, Any]) -> None:
    """The rules beyond single fields, in JSON Schema: built-in payloads, and runAt excludes
    delaySeconds."""
    _payload_rules(schema)
    schema["not"] = {
        "required": ["runAt", "delaySeconds"],
        "properties": {"runAt": {"type": "string"}, "delaySeconds": {"type": "number"}},
    }


class JobCreate(Body):
    model_config = ConfigDict(json_schema_extra=_job_body_schema)

    type: Annotated[StrictStr, Field(pattern=TYPE_PATTERN, examples=["echo"])]
    payload: Payload = None
    priority: Annotated[int, Field(ge=0, le=9), IntegralFloat] = 5
    run_at: Rfc3339 | None = None
    delay_seconds: (
        Annotated[float, Field(ge=0, le=MAX_DELAY_SECONDS, allow_inf_nan=False)] | None
    ) = None
    max_attempts: Annotated[int, Field(ge=1, le=20), IntegralFloat] = 3
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
    model_config = ConfigDict(json_schema_extra=_payload_rules)

    # The lengths come before the NUL check, so that a string too short or too long is told
    # so in a string's words ("at least 1 character"), not in a list's.
    name: Annotated[StrictStr, Field(min_length=1, max_length=200), NO_NUL, NO_NUL_DOC]
    cron: Annotated[
        StrictStr,
        Field(min_length=1, max_length=200, examples=["*/5 * * * *"]),
        NO_NUL,
        # Documented, not enforced by the model: the API checks the expression itself and
        # names both a bad cron and a bad time zone in one answer.
        Field(json_schema_extra={"pattern": CRON_SHAPE}),
    ]
    timezone: Annotated[StrictStr, Field(min_length=1, max_length=64), NO_NUL, NO_NUL_DOC] = "UTC"
    type: Annotated[StrictStr, Field(pattern=TYPE_PATTERN)]
    payload: Payload = None
    priority: Annotated[int, Field(ge=0, le=9), IntegralFloat] = 5
    max_attempts: Annotated[int, Field(ge=1, le=20), IntegralFloat] = 3
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
    error: str = Field(description="The reason phrase, as RFC 9110 names it.")
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
