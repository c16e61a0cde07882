"""Failed attempts: retried after a backoff while attempts remain, failed at once when the handler
says retrying cannot help, and stopped when they run past their timeout."""

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cloudtask.errors import PermanentFailure
from cloudtask.settings import Settings
from cloudtask.worker.registry import HandlerRegistry
from tests.helpers import eventually, wait_for_status
from tests.services.conftest import Stack
from tests.services.support import registry_of

BACKOFF_CAP = 1.0


class Handlers:
    """Custom handlers, and what happened to them."""

    def __init__(self) -> None:
        self.flaky_failed_at: list[datetime] = []
        self.flaky_calls = 0
        self.slow_cancelled = False
        self.blocking_started = threading.Event()
        self.release = threading.Event()

    async def flaky(self, payload: Any) -> Any:
        self.flaky_calls += 1
        if self.flaky_calls == 1:
            self.flaky_failed_at.append(datetime.now(UTC))
            raise ConnectionError("first try fails")
        return {"second try": payload}

    async def doomed(self, payload: Any) -> Any:
        raise PermanentFailure("this payload can never work")

    async def broken(self, payload: Any) -> Any:
        raise RuntimeError("still broken")

    async def slow(self, payload: Any) -> Any:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.slow_cancelled = True
            raise
        return "finished"

    async def hogging(self, payload: Any) -> Any:
        # Blocks the event loop, so nothing can stop it at its timeout.
        time.sleep(1.3)  # noqa: ASYNC251 - blocking the loop is the point
        return "finished late"

    def blocking(self, payload: Any) -> Any:
        self.blocking_started.set()
        deadline = time.monotonic() + 10
        while not self.release.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)  # a plain blocking call, as sync handlers make
        return "unblocked"


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


@pytest.fixture
def stack_handlers(handlers: Handlers) -> HandlerRegistry:
    return registry_of(handlers, "flaky", "doomed", "broken", "slow", "hogging", "blocking")


@pytest.fixture
def stack_settings(settings: Settings) -> Settings:
    # A retry waits between 0.1 and 1 s: long enough to watch the job wait, short for a test.
    return settings.model_copy(
        update={"retry_backoff_base_seconds": 1.0, "retry_backoff_cap_seconds": BACKOFF_CAP}
    )


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


async def test_a_failed_attempt_waits_as_scheduled_then_the_retry_completes(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="flaky", payload="p", maxAttempts=3)

    async def waiting() -> dict[str, Any] | None:
        current = await stack.client.get_job(token, job["id"])
        return current if current["status"] in {"SCHEDULED", "COMPLETED", "FAILED"} else None

    waiting_job = await eventually(waiting, interval=0.005)
    assert waiting_job["status"] == "SCHEDULED"
    assert waiting_job["attempts"] == 1
    assert waiting_job["error"] == "first try fails"
    assert waiting_job["finishedAt"] is None
    failed_at = handlers.flaky_failed_at[0]
    run_at = _time(waiting_job["runAt"])
    assert failed_at < run_at <= failed_at + timedelta(seconds=BACKOFF_CAP + 0.5)

    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED"
    assert done["attempts"] == 2
    assert done["result"] == {"second try": "p"}
    assert done["error"] is None
    assert handlers.flaky_calls == 2


async def test_a_permanent_failure_fails_the_job_at_once(stack: Stack) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="doomed", payload={}, maxAttempts=5)
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED", "SCHEDULED")
    assert done["status"] == "FAILED"
    assert done["attempts"] == 1
    assert done["error"] == "this payload can never work"


async def test_a_job_failing_every_attempt_ends_failed_after_its_last_attempt(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    token = await stack.client.register()
    with caplog.at_level(logging.INFO, logger="cloudtask.worker"):
        job = await stack.client.create_job(token, type="broken", payload={}, maxAttempts=2)
        done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "FAILED"
    assert done["attempts"] == 2
    # The job says what went wrong; the worker's log also has the exception's class and traceback.
    assert done["error"] == "still broken"
    assert done["finishedAt"] is not None
    logged = [
        record.exc_info
        for record in caplog.records
        if record.getMessage() == "job finished" and getattr(record, "jobId", None) == job["id"]
    ]
    assert [(info[0], str(info[1])) for info in logged if info] == [
        (RuntimeError, "still broken"),
        (RuntimeError, "still broken"),
    ]
    assert all(info and info[2] is not None for info in logged)


async def test_an_async_handler_running_past_its_timeout_is_stopped_and_fails(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(
        token, type="slow", payload={}, timeoutSeconds=1, maxAttempts=1
    )
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "FAILED"
    assert done["error"] == "timed out after 1 second"
    assert done["attempts"] == 1
    assert handlers.slow_cancelled


async def test_a_sleep_as_long_as_its_timeout_completes(stack: Stack) -> None:
    # Timers fire a little late: a handler that waits exactly its timeout ends just past it.
    token = await stack.client.register()
    jobs = [
        await stack.client.create_job(
            token, type="sleep", payload={"seconds": 1}, timeoutSeconds=1, maxAttempts=1
        )
        for _ in range(8)
    ]
    for job in jobs:
        done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
        assert (done["status"], done["result"]) == (
            "COMPLETED",
            "Slept for 1 seconds",
        )  # the contract's words


async def test_an_async_handler_that_blocks_the_loop_past_its_timeout_counts_as_timed_out(
    stack: Stack,
) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(
        token, type="hogging", payload={}, timeoutSeconds=1, maxAttempts=1
    )
    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["status"] == "FAILED"
    assert done["error"] == "timed out after 1 second"
    assert done["result"] is None


async def test_a_blocking_sync_handler_does_not_hold_up_other_jobs(
    stack: Stack, handlers: Handlers
) -> None:
    token = await stack.client.register()
    try:
        blocking = await stack.client.create_job(token, type="blocking", payload={})
        await eventually(lambda: _async(handlers.blocking_started.is_set()))
        echo = await stack.client.create_job(token, type="echo", payload="meanwhile")
        done = await wait_for_status(stack.client, token, echo["id"], "COMPLETED", "FAILED")
        assert done["result"] == "meanwhile"
        # Still held by its handler. Its jobs.started, sent after ANNOUNCE_AFTER on a queue of its
        # own, can be written after the echo's report: RUNNING shows soon, not necessarily first.
        await wait_for_status(stack.client, token, blocking["id"], "RUNNING", timeout=5)
    finally:
        handlers.release.set()
    finished = await wait_for_status(stack.client, token, blocking["id"], "COMPLETED", "FAILED")
    assert finished["result"] == "unblocked"


async def _async(value: bool) -> bool:
    return value
