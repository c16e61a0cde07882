"""The JSON bodies that travel on RabbitMQ, as the original system named their fields."""

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from cloudtask.contracts import jsoncodec
from cloudtask.contracts.jsoncodec import uuid_value
from cloudtask.contracts.timefmt import format_rfc3339


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a UTC offset")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


def _finite(value: Any) -> Any:
    # The JSON parser reads NaN, Infinity and 1e400 (out of a float's range) as floats, which
    # would be stored as null: such a body is not JSON, and goes to jobs.dead.
    if not isinstance(value, (str, int, type(None))) and jsoncodec.holds_non_finite(value):
        raise ValueError("holds a NaN or an infinity, which JSON cannot carry")
    return value


AnyJSON = Annotated[Any, AfterValidator(_finite)]


class Message(BaseModel):
    # Strict, as the HTTP API: a number sent as a string, or true for a number, is a message
    # of the wrong shape (jobs.dead), not a guess. Ids and times are JSON strings all the same.
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="ignore",
        strict=True,
        allow_inf_nan=False,
    )

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class JobCreated(Message):
    """On ``jobs.created``: run this attempt of this job."""

    job_id: UUID
    user_id: UUID
    type: str
    payload: AnyJSON = None
    priority: Annotated[int, Field(ge=0, le=9)] = 5
    attempt: Annotated[int, Field(ge=1)] = 1
    timeout_seconds: Annotated[float, Field(gt=0), PlainSerializer(jsoncodec.whole_as_int)] = 300
    enqueued_at: AwareDatetime


def job_created_body(
    *,
    job_id: UUID,
    user_id: UUID,
    type: str,
    payload_json: str,
    priority: int,
    attempt: int,
    timeout_seconds: float,
    enqueued_at: datetime,
) -> bytes:
    """The body of :class:`JobCreated`, with a payload that is already JSON text.

    The same bytes as ``JobCreated(...).encode()`` for a UTC ``enqueued_at`` (another offset is
    written in UTC here, as the contract wants), without parsing and re-serializing the payload
    or building a model: this is on the path of every submitted job.
    """
    return orjson.dumps(
        {
            # The scheduler's dispatches read their ids from the database: asyncpg's UUIDs.
            "jobId": uuid_value(job_id),
            "userId": uuid_value(user_id),
            "type": type,
            "payload": orjson.Fragment(payload_json),
            "priority": priority,
            "attempt": attempt,
            "timeoutSeconds": jsoncodec.whole_as_int(timeout_seconds),
            "enqueuedAt": format_rfc3339(enqueued_at),
        }
    )


class JobStarted(Message):
    """On ``jobs.started``: a worker began this attempt."""

    job_id: UUID
    attempt: Annotated[int, Field(ge=1)]
    worker_id: str
    started_at: AwareDatetime


class JobFinished(Message):
    """On ``jobs.completed``: an attempt ended, well or badly."""

    job_id: UUID
    attempt: Annotated[int, Field(ge=1)]
    status: Literal["COMPLETED", "FAILED"]
    result: AnyJSON = None
    error: str | None = None
    retryable: bool = False
    worker_id: str
    started_at: AwareDatetime
    finished_at: AwareDatetime
