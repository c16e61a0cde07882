"""Outcomes and events that are awkward to store or send: error messages no database or JSON
encoder takes as they are, and an event the database refuses sharing a batch with good ones."""

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest

from cloudtask.broker.base import OutgoingMessage
from cloudtask.contracts.jsoncodec import MAX_DEPTH
from cloudtask.contracts.messages import JobFinished
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_DEAD
from cloudtask.contracts.timefmt import utcnow
from cloudtask.worker.registry import HandlerRegistry
from tests.helpers import eventually, wait_for_status
from tests.services.conftest import Stack
from tests.services.support import next_dead_letter, registry_of, wait_until_set


class Handlers:
    def __init__(self) -> None:
        self.waiting = asyncio.Event()
        self.release = asyncio.Event()

    async def nul(self, payload: Any) -> Any:
        raise ValueError("before\x00after")

    async def surrogate(self, payload: Any) -> Any:
        raise ValueError("half a pair: \ud800")

    async def deep(self, payload: Any) -> Any:
        result: list[Any] = []
        for _ in range(300):  # past what the results-processor can parse
            result = [result]
        return result

    async def nan(self, payload: Any) -> Any:
        return {"ratio": [1.0, float("nan")]}

    async def infinite(self, payload: Any) -> Any:
        return float("-inf")

    async def unserializable(self, payload: Any) -> Any:
        return {"handle": object()}

    async def circular(self, payload: Any) -> Any:
        result: list[Any] = [2**70]
        result.append(result)
        return result

    async def deep_big(self, payload: Any) -> Any:
        result: list[Any] = [2**70]
        for _ in range(300):
            result = [result]
        return result

    async def deep_uuid(self, payload: Any) -> Any:
        result: Any = [uuid4()]
        for _ in range(300):  # deeper than orjson writes
            result = [result]
        return result

    async def deep_tuple(self, payload: Any) -> Any:
        result: Any = ()
        for _ in range(200):  # written as arrays, as deep
            result = (result,)
        return result

    async def nan_key(self, payload: Any) -> Any:
        return {float("nan"): 1}

    async def interrupt(self, payload: Any) -> Any:
        raise KeyboardInterrupt

    async def exit(self, payload: Any) -> Any:
        raise SystemExit(3)

    async def self_cancel(self, payload: Any) -> Any:
        raise asyncio.CancelledError("the library gave up")

    def sync_interrupt(self, payload: Any) -> Any:
        raise KeyboardInterrupt

    async def wait(self, payload: Any) -> Any:
        self.waiting.set()
        await self.release.wait()
        return "from the worker"


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def stack_handlers(handlers: Handlers) -> HandlerRegistry:
    return registry_of(
        handlers, "nul", "surrogate", "deep", "nan", "infinite", "unserializable", "wait",
        "interrupt", "exit", "self_cancel", "sync_interrupt", "circular", "deep_big", "deep_tuple",
        "deep_uuid", "nan_key",
    )  # fmt: skip


# Each failed once: an error escaping the check (a result holding itself) had the delivery run
# again and again, and one the standard library refuses (a UUID deep down) read as another.
@pytest.mark.parametrize("kind", ["deep", "deep_big", "deep_tuple", "deep_uuid", "circular"])
async def test_a_result_nested_deeper_than_json_may_be_fails_the_job_instead_of_losing_it(
    stack: Stack, kind: str
) -> None:
    # Reported as it is, the results-processor could not parse the event and the job would
    # stay RUNNING until its lease ran out, attempt after attempt.
    token = await stack.client.register()
    job = await stack.client.create_job(token, type=kind, payload={}, maxAttempts=1)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "FAILED"
    assert done["error"] == f"the handler's result is nested more than {MAX_DEPTH} levels deep"
    assert done["attempts"] == 1


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("nan", "the handler's result holds a NaN or an infinity"),
        ("infinite", "the handler's result holds a NaN or an infinity"),
        ("unserializable", "the handler's result is not JSON-serializable"),
        ("nan_key", "the handler's result is not JSON-serializable"),
    ],
)
async def test_a_result_json_cannot_carry_fails_the_job_instead_of_being_changed(
    stack: Stack, kind: str, error: str
) -> None:
    # orjson writes a NaN as null: stored as it was written, the result would silently differ
    # from what the handler returned.
    token = await stack.client.register()
    job = await stack.client.create_job(token, type=kind, payload={}, maxAttempts=1)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert (done["status"], done["error"], done["result"]) == ("FAILED", error, None)
    assert done["attempts"] == 1


@pytest.mark.parametrize(
    ("job_type", "error"),
    [("interrupt", "KeyboardInterrupt"), ("exit", "3"), ("self_cancel", "the library gave up"),
     ("sync_interrupt", "KeyboardInterrupt")],
)  # fmt: skip
async def test_a_handler_raising_a_base_exception_fails_its_attempts_and_the_worker_goes_on(
    stack: Stack, job_type: str, error: str
) -> None:
    # On the event loop, KeyboardInterrupt and SystemExit would stop the worker; a CancelledError
    # no one asked for would read as a cancelled job. Each is an exception of the handler's.
    token = await stack.client.register()
    job = await stack.client.create_job(token, type=job_type, payload={}, maxAttempts=2)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED", "CANCELLED")
    assert (done["status"], done["attempts"], done["error"]) == ("FAILED", 2, error)
    after = await stack.client.create_job(token, type="deep", payload={})
    assert (await wait_for_status(stack.client, token, after["id"], "FAILED"))["attempts"] == 1


async def test_an_error_message_holding_a_nul_character_still_fails_the_job(
    stack: Stack,
) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="nul", payload={}, maxAttempts=1)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "FAILED"
    assert done["error"].startswith("before")
    assert done["error"].endswith("after")


async def test_an_error_message_that_is_not_valid_unicode_still_fails_the_job(
    stack: Stack,
) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="surrogate", payload={}, maxAttempts=1)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "FAILED"
    assert done["error"].startswith("half a pair: ")

    async def lease_dropped() -> bool:
        # Dropped once the report is confirmed, which may be after the results-processor wrote it.
        return len(stack.worker.pipeline.deps.running) == 0

    await eventually(lease_dropped, timeout=5)


async def test_an_event_the_database_refuses_does_not_take_the_events_beside_it_down(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="wait", payload={})
    try:
        await wait_until_set(handlers.waiting)
        await wait_for_status(stack.client, token, job["id"], "RUNNING")
        now = utcnow()
        good = JobFinished(
            job_id=UUID(job["id"]),
            attempt=1,
            status="COMPLETED",
            result="from the test",
            worker_id="another-worker",
            started_at=now,
            finished_at=now,
        )
        # Valid JSON and a valid event, but a time no database column can hold.
        ancient = datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))
        poison = good.model_copy(update={"started_at": ancient, "finished_at": ancient})
        await stack.backends.broker.publish_many(
            [
                OutgoingMessage(JOBS_COMPLETED, poison.encode()),
                OutgoingMessage(JOBS_COMPLETED, good.encode()),
            ]
        )
        dead = await next_dead_letter(stack.backends.broker)
        assert dead.body == poison.encode()
        assert "could not be written" in str(dead.headers["x-death-reason"])
        done = await stack.client.get_job(token, job["id"])
        assert (done["status"], done["result"]) == ("COMPLETED", "from the test")
        assert await stack.backends.broker.get(JOBS_DEAD) is None
    finally:
        handlers.release.set()
