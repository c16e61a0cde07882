"""The API's job body: stored JSON written into it as it is, and records read by position."""

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudtask.api.serialize import job_json
from cloudtask.contracts import jsoncodec
from cloudtask.contracts.statuses import JobStatus
from cloudtask.db.queries.jobs import JOB_COLUMNS, JobRecord, NewJob

VALUES = [
    None,
    {"to": "a@example.com", "n": 1.5, "neg": -0.0, "tiny": 1e-300, "big": 1e300},
    [1, "é žluťoučký 🐎", {"x": None, "y": [True, False]}, "\u2028"],
    2**70,
    {"huge": -(2**100), "list": [2**64, 0.1]},
    '\x00 quotes " and \\ backslashes',
]


def _record(payload: str, result: str | None) -> JobRecord:
    now = datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC)
    return JobRecord(
        seq=7,
        id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        type="echo",
        payload=payload,
        status=JobStatus.COMPLETED,
        priority=5,
        attempts=1,
        max_attempts=3,
        timeout_seconds=2.5,
        run_at=now,
        result=result,
        error=None,
        schedule_id=None,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
        started_at=now,
        finished_at=now,
    )


@pytest.mark.parametrize("payload", VALUES)
@pytest.mark.parametrize("result", [None, *VALUES[1:]])
def test_stored_json_is_written_as_parsing_and_writing_it_would(payload: Any, result: Any) -> None:
    record = _record(jsoncodec.dumps_str(payload), jsoncodec.dumps_str(result))
    # Parsed values may need the standard library's writer (big integers), which takes no UUID.
    parsed = {**job_json(record), "id": str(record.id), "payload": payload, "result": result}
    body = jsoncodec.dumps([job_json(record)])
    assert body == jsoncodec.dumps([parsed])
    assert jsoncodec.loads(body)[0]["payload"] == payload


def test_a_job_without_result_writes_null() -> None:
    body = jsoncodec.loads(jsoncodec.dumps(job_json(_record('{"a":1}', None))))
    assert body["payload"] == {"a": 1} and body["result"] is None


def test_records_are_read_in_the_order_the_columns_are_selected() -> None:
    # JobRecord.from_row takes a row of JOB_COLUMNS by position.
    assert [column.name for column in JOB_COLUMNS] == [
        field.name for field in dataclasses.fields(JobRecord)
    ]


@pytest.mark.parametrize("delay", [0, 60])
def test_a_new_job_becomes_the_record_it_is_stored_as(delay: int) -> None:
    # NewJob.record builds the record by position: each field must land where its name says.
    now = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    new = NewJob(
        id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        type="echo",
        payload='{"a":1}',
        priority=7,
        max_attempts=4,
        timeout_seconds=12.5,
        run_at=now + timedelta(seconds=delay),
        created_at=now,
        schedule_id=uuid.uuid4(),
    )
    expected = JobRecord(
        seq=42,
        id=new.id,
        user_id=new.user_id,
        type="echo",
        payload='{"a":1}',
        status=JobStatus.SCHEDULED if delay else JobStatus.PENDING,
        priority=7,
        attempts=0,
        max_attempts=4,
        timeout_seconds=12.5,
        run_at=new.run_at,
        result=None,
        error=None,
        schedule_id=new.schedule_id,
        cancel_requested=False,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
    )
    assert new.record(42) == expected
