"""The fast ``jobs.created`` body is the model's body, byte for byte (times are UTC, as every
caller passes them)."""

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from cloudtask.contracts import jsoncodec
from cloudtask.contracts.messages import JobCreated, job_created_body


@pytest.mark.parametrize(
    "payload",
    [
        None,
        {"to": "a@example.com", "n": 1.5},
        [1, "é", {"x": None}],
        2**70,
        "\x00",
        True,
        {"text": "two\nlines\r\n", "big": [2**70, "\u2028"]},
    ],
)
@pytest.mark.parametrize(
    "enqueued_at",
    [
        datetime(2026, 11, 28, 10, 0, tzinfo=UTC),
        datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC),
    ],
)
def test_job_created_body_matches_the_model(payload: Any, enqueued_at: datetime) -> None:
    fields: dict[str, Any] = {
        "job_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "type": "echo",
        "priority": 7,
        "attempt": 2,
        "timeout_seconds": 30,
        "enqueued_at": enqueued_at,
    }
    fast = job_created_body(payload_json=jsoncodec.dumps_str(payload), **fields)
    assert fast == JobCreated(payload=payload, **fields).encode()
    assert JobCreated.model_validate_json(fast).payload == payload
    # Outbox rows hold several bodies as JSON Lines (db.queries.outbox.SEPARATOR).
    assert b"\n" not in fast


class _DriverUUID(uuid.UUID):
    """Like asyncpg's UUID: a subclass, which orjson does not write by itself."""


def test_job_created_body_takes_ids_of_a_uuid_subclass() -> None:
    job_id, user_id = uuid.uuid4(), uuid.uuid4()
    fields: dict[str, Any] = {
        "type": "echo",
        "payload_json": "{}",
        "priority": 5,
        "attempt": 1,
        "timeout_seconds": 30,
        "enqueued_at": datetime(2026, 11, 28, 10, 0, tzinfo=UTC),
    }
    assert job_created_body(
        job_id=_DriverUUID(int=job_id.int), user_id=_DriverUUID(int=user_id.int), **fields
    ) == job_created_body(job_id=job_id, user_id=user_id, **fields)


@pytest.mark.parametrize(
    ("stored", "written"), [(300.0, b'"timeoutSeconds":300,'), (1.5, b'"timeoutSeconds":1.5,')]
)
def test_a_whole_timeout_is_written_as_an_integer_as_the_api_writes_it(
    stored: float, written: bytes
) -> None:
    # The column is a float; a reader decoding into an integer (Go's int) refuses 300.0.
    fields: dict[str, Any] = {
        "job_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "type": "echo",
        "priority": 5,
        "attempt": 1,
        "timeout_seconds": stored,
        "enqueued_at": datetime(2026, 11, 28, 10, 0, tzinfo=UTC),
    }
    assert written in job_created_body(payload_json="null", **fields)
    assert written in JobCreated(payload=None, **fields).encode()
