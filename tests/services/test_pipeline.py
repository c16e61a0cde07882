"""The worker's pipeline end to end on each back end: built-in types, unknown types, messages that
cannot be parsed, and putting a running job back on the queue when the worker stops."""

import asyncio
import json
from typing import Any

import pytest

from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_CREATED
from cloudtask.worker import pipeline
from cloudtask.worker.handlers import builtin_handlers
from cloudtask.worker.registry import HandlerRegistry
from tests.helpers import eventually, wait_for_status
from tests.services.conftest import Stack
from tests.services.support import (
    finished_by_a_second_worker,
    metric,
    next_dead_letter,
    wait_for_metric,
    wait_until_set,
)


class Interruptible:
    """Waits a long time on its first call (until cancelled); returns at once on later calls."""

    def __init__(self) -> None:
        self.calls = 0
        self.first_started = asyncio.Event()
        self.first_cancelled = False

    async def __call__(self, payload: Any) -> Any:
        self.calls += 1
        if self.calls > 1:
            return {"finished": payload}
        self.first_started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.first_cancelled = True
            raise
        return "not cancelled"


@pytest.fixture
def interruptible() -> Interruptible:
    return Interruptible()


@pytest.fixture
def stack_handlers(interruptible: Interruptible) -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register("interruptible", interruptible)
    return registry


async def test_an_echo_job_completes_with_its_payload(stack: Stack) -> None:
    token = await stack.client.register()
    payload = {"text": "héllo", "items": [1, 2.5, None, True], "nested": {"a": []}}
    job = await stack.client.create_job(token, type="echo", payload=payload)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED"
    assert done["result"] == payload
    assert done["error"] is None
    assert done["attempts"] == 1


async def test_a_sleep_job_reports_how_long_it_slept(stack: Stack) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="sleep", payload={"seconds": 0.2})
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED"
    assert done["result"] == "Slept for 0.2 seconds"


async def test_a_job_of_an_unknown_type_fails_after_one_attempt_without_retry(
    stack: Stack,
) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="no-such-type", payload={}, maxAttempts=3)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED", "SCHEDULED")
    assert done["status"] == "FAILED"
    assert done["error"] == "unknown job type: no-such-type"
    assert done["attempts"] == 1
    assert done["finishedAt"] is not None


async def test_an_unparseable_job_message_is_dead_lettered_and_the_worker_keeps_working(
    stack: Stack,
) -> None:
    body = b'{"jobId": "not a uuid", "type": 7'
    await stack.backends.broker.publish(JOBS_CREATED, body, headers={"trace-id": "abc"})
    dead = await next_dead_letter(stack.backends.broker)
    assert dead.body == body
    assert str(dead.headers["x-death-reason"]).startswith("unparseable message")
    assert dead.headers["x-original-queue"] == JOBS_CREATED
    assert dead.headers["trace-id"] == "abc"
    await wait_for_metric(
        stack.worker.metrics.registry,
        "cloudtask_worker_dead_lettered_total",
        1,
        reason="unparseable",
    )

    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", payload="still alive")
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["result"] == "still alive"


async def test_a_job_message_of_the_wrong_shape_is_dead_lettered_naming_the_bad_field(
    stack: Stack,
) -> None:
    body = b'{"jobId": "8d1c1f3e-5a8f-4c89-9d25-bb3f1f0b8d4e", "type": "echo"}'
    await stack.backends.broker.publish(JOBS_CREATED, body)
    dead = await next_dead_letter(stack.backends.broker)
    assert dead.body == body
    assert "userId" in str(dead.headers["x-death-reason"])


def _with(fields: dict[str, Any], name: str, raw: bytes) -> bytes:
    """``fields`` as a JSON body, ``name``'s value written as ``raw``."""
    return json.dumps({**fields, name: "@"}).encode().replace(b'"@"', raw)


_CREATED = {
    "jobId": "8d1c1f3e-5a8f-4c89-9d25-bb3f1f0b8d4e",
    "userId": "0b6f7a0e-2f0c-4f57-9a53-0d2f6a3c8e11",
    "type": "echo",
    "payload": 1,
    "priority": 5,
    "attempt": 1,
    "timeoutSeconds": 30,
    "enqueuedAt": "2026-11-29T10:00:00Z",
}
_FINISHED = {
    "jobId": "8d1c1f3e-5a8f-4c89-9d25-bb3f1f0b8d4e",
    "attempt": 1,
    "status": "COMPLETED",
    "result": 1,
    "error": None,
    "retryable": False,
    "workerId": "peer",
    "startedAt": "2026-11-29T10:00:00Z",
    "finishedAt": "2026-11-29T10:00:01Z",
}


@pytest.mark.parametrize(
    ("queue", "body", "field"),
    [
        (JOBS_CREATED, _with(_CREATED, "payload", b"NaN"), "payload"),
        (JOBS_CREATED, _with(_CREATED, "payload", b'{"n": [1e400]}'), "payload"),
        (JOBS_CREATED, _with(_CREATED, "priority", b"true"), "priority"),
        (JOBS_CREATED, _with(_CREATED, "attempt", b'"1"'), "attempt"),
        (JOBS_CREATED, _with(_CREATED, "timeoutSeconds", b'"Infinity"'), "timeoutSeconds"),
        (JOBS_COMPLETED, _with(_FINISHED, "result", b"-Infinity"), "result"),
        (JOBS_COMPLETED, _with(_FINISHED, "result", b'{"a": NaN}'), "result"),
        (JOBS_COMPLETED, _with(_FINISHED, "attempt", b"1.0"), "attempt"),
        (JOBS_COMPLETED, _with(_FINISHED, "retryable", b'"true"'), "retryable"),
    ],
)  # fmt: skip
async def test_a_message_that_is_not_strict_json_of_its_types_is_dead_lettered_naming_the_field(
    stack: Stack, queue: str, body: bytes, field: str
) -> None:
    # Read leniently, these were stored as null (a NaN, an infinity) or taken for what they
    # might mean (true for priority 1, "Infinity" for a timeout that never comes).
    await stack.backends.broker.publish(queue, body)
    dead = await next_dead_letter(stack.backends.broker)
    assert dead.body == body
    assert dead.headers["x-original-queue"] == queue
    reason = str(dead.headers["x-death-reason"])
    assert reason.startswith("unparseable message"), reason
    assert field in reason, reason


async def test_an_unparseable_completion_is_dead_lettered_and_results_keep_being_written(
    stack: Stack,
) -> None:
    # Its own short headers are kept, for whoever looks into it; a long one or a float (which
    # could not go out as it came) is not, and does not keep the message from moving.
    headers = {"trace-id": "abc", "hops": 2, "ratio": 0.5, "blob": "y" * 5000}
    await stack.backends.broker.publish(
        JOBS_COMPLETED, b"garbage, not JSON", priority=3, headers=headers
    )
    dead = await next_dead_letter(stack.backends.broker)
    assert dead.body == b"garbage, not JSON"
    assert str(dead.headers["x-death-reason"]).startswith("unparseable message")
    assert dead.headers["x-original-queue"] == JOBS_COMPLETED
    assert (dead.headers["trace-id"], dead.headers["hops"]) == ("abc", 2)
    assert "ratio" not in dead.headers and "blob" not in dead.headers
    assert dead.priority == 3
    await wait_for_metric(
        stack.results.metrics.registry, "cloudtask_results_dead_lettered_total", 1
    )

    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", payload=[1])
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["result"] == [1]


@pytest.mark.parametrize("announced", [True, False], ids=["announced", "not-yet-announced"])
async def test_stopping_the_worker_puts_a_running_job_back_for_another_worker(
    stack: Stack,
    stack_handlers: HandlerRegistry,
    interruptible: Interruptible,
    monkeypatch: pytest.MonkeyPatch,
    announced: bool,
) -> None:
    if not announced:
        # Still in the moment before jobs.started, when the delivery is not yet acknowledged:
        # the job must go back once, not once as a copy and again as the delivery.
        monkeypatch.setattr(pipeline, "ANNOUNCE_AFTER", 60)
    status = "RUNNING" if announced else "PENDING"
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="interruptible", payload={"n": 1})
    await wait_until_set(interruptible.first_started)
    if announced:
        await wait_for_status(stack.client, token, job["id"], "RUNNING")
    assert (await stack.client.get_job(token, job["id"]))["status"] == status

    await stack.worker.stop(grace=0.2)
    assert interruptible.first_cancelled
    assert metric(stack.worker.metrics.registry, "cloudtask_worker_jobs_requeued_total") == 1

    async def back_in_queue() -> bool:
        return (await stack.backends.broker.stats(JOBS_CREATED)).messages == 1

    await eventually(back_in_queue)
    assert (await stack.client.get_job(token, job["id"]))["status"] == status

    handlers = builtin_handlers(stack.settings).merged(stack_handlers)
    done = await finished_by_a_second_worker(stack, handlers, token, job["id"])
    assert done["status"] == "COMPLETED"
    assert done["result"] == {"finished": {"n": 1}}
    assert done["attempts"] == 1
    assert interruptible.calls == 2
    assert (await stack.backends.broker.stats(JOBS_CREATED)).messages == 0


async def test_a_stop_hurried_puts_running_jobs_back_without_waiting_out_the_grace(
    stack: Stack, interruptible: Interruptible
) -> None:
    # An operator's second Ctrl-C: the grace (a minute here) was waited out in full before.
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="interruptible", payload={"n": 2})
    await wait_until_set(interruptible.first_started)
    stopping = asyncio.create_task(stack.worker.stop(grace=60))
    await asyncio.sleep(0.2)
    assert not stopping.done()  # waiting for the running job, as the grace allows
    stack.worker.hurry()
    await asyncio.wait_for(stopping, 10)
    assert interruptible.first_cancelled
    assert metric(stack.worker.metrics.registry, "cloudtask_worker_jobs_requeued_total") == 1

    async def back_in_queue() -> bool:
        return (await stack.backends.broker.stats(JOBS_CREATED)).messages == 1

    await eventually(back_in_queue)
    assert (await stack.client.get_job(token, job["id"]))["status"] in ("PENDING", "RUNNING")


async def test_a_job_that_ends_at_once_is_reported_by_its_completion_alone(stack: Stack) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", payload={"quick": True})
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED"
    assert done["attempts"] == 1
    assert done["startedAt"] is not None
    assert done["startedAt"] <= done["finishedAt"]
    results = stack.results.metrics.registry
    name = "cloudtask_results_events_total"
    await wait_for_metric(results, name, 1, kind="completed", outcome="applied")
    assert metric(results, name, kind="started", outcome="applied") == 0
    assert metric(results, name, kind="started", outcome="ignored") == 0
