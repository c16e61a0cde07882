"""The API's job body: stored JSON written into it as it is, and records read by position."""

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from cloudtask.api.serialize import job_json
from cloudtask.contracts import jsoncodec
from cloudtask.contracts.statuses import JobStatus
from cloudtask.db.queries.jobs import JOB_COLUMNS, JobRecord

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
    parsed = {**job_json(record), "payload": payload, "result": result}
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
