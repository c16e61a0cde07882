"""The JSON bodies that travel on RabbitMQ, as the original system named their fields."""

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from cloudtask.contracts.jsoncodec import uuid_value
from cloudtask.contracts.timefmt import format_rfc3339


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("must carry a UTC offset")
    return value


AwareDatetime = Annotated[datetime, AfterValidator(_aware)]


class Message(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore"
    )

    def encode(self) -> bytes:
        return self.model_dump_json(by_alias=True).encode()


class JobCreated(Message):
    """On ``jobs.created``: run this attempt of this job."""

    job_id: UUID
    user_id: UUID
    type: str
    payload: Any = None
    priority: Annotated[int, Field(ge=0, le=9)] = 5
    attempt: Annotated[int, Field(ge=1)] = 1
    timeout_seconds: Annotated[float, Field(gt=0)] = 300
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
            "timeoutSeconds": float(timeout_seconds),
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
    result: Any = None
    error: str | None = None
    retryable: bool = False
    worker_id: str
    started_at: AwareDatetime
    finished_at: AwareDatetime
