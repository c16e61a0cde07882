"""Worker events applied by the results-processor are idempotent: duplicates, late arrivals and
events of an older attempt leave the stored job exactly as it was."""

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

import pytest

from cloudtask.contracts import jsoncodec
from cloudtask.contracts.messages import JobFinished, JobStarted, Message
from cloudtask.contracts.queues import JOBS_COMPLETED, JOBS_STARTED
from cloudtask.contracts.timefmt import utcnow
from cloudtask.worker.registry import HandlerRegistry
from tests.helpers import eventually, wait_for_status
from tests.services.conftest import Stack
from tests.services.support import job_row, metric, wait_until_set

EVENTS = "cloudtask_results_events_total"


class FailsThenWaits:
    """Fails its first call; the second waits until released."""

    def __init__(self) -> None:
        self.calls = 0
        self.second_started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, payload: Any) -> Any:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("first attempt fails")
        self.second_started.set()
        await self.release.wait()
        return "second attempt"


@pytest.fixture
def fails_then_waits() -> FailsThenWaits:
    return FailsThenWaits()


@pytest.fixture
def stack_handlers(fails_then_waits: FailsThenWaits) -> HandlerRegistry:
    registry = HandlerRegistry()
    registry.register("fails-then-waits", fails_then_waits)
    return registry


def _events_of(row: dict[str, Any]) -> tuple[JobStarted, JobFinished]:
    """The started and completed events that produced a finished row."""
    started = JobStarted(
        job_id=row["id"],
        attempt=row["attempts"],
        worker_id="test-worker",
        started_at=row["started_at"],
    )
    finished = JobFinished(
        job_id=row["id"],
        attempt=row["attempts"],
        status=row["status"],
        result=jsoncodec.loads(row["result"]) if row["result"] is not None else None,
        error=row["error"],
        worker_id="test-worker",
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )
    return started, finished


async def _replay(stack: Stack, events: Sequence[Message]) -> None:
    """Publish ``events``, wait until the results-processor has read them all, and check that it
    ignored every one."""
    registry = stack.results.metrics.registry

    def counts() -> dict[tuple[str, str], float]:
        return {
            (kind, outcome): metric(registry, EVENTS, kind=kind, outcome=outcome)
            for kind in ("started", "completed")
            for outcome in ("applied", "ignored")
        }

    before = counts()
    for event in events:
        queue = JOBS_STARTED if isinstance(event, JobStarted) else JOBS_COMPLETED
        await stack.backends.broker.publish(queue, event.encode())

    async def all_read() -> dict[tuple[str, str], float] | None:
        delta = {key: value - before[key] for key, value in counts().items()}
        return delta if sum(delta.values()) >= len(events) else None

    delta = await eventually(all_read)
    started = sum(isinstance(event, JobStarted) for event in events)
    assert delta == {
        ("started", "applied"): 0,
        ("started", "ignored"): started,
        ("completed", "applied"): 0,
        ("completed", "ignored"): len(events) - started,
    }
    for queue in (JOBS_STARTED, JOBS_COMPLETED):
        assert (await stack.backends.broker.stats(queue)).messages == 0


async def test_replayed_events_of_a_finished_job_change_nothing(stack: Stack) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", payload={"v": 1})
    await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    before = await job_row(stack.backends, job["id"])
    assert before["status"] == "COMPLETED"

    started, finished = _events_of(before)
    await _replay(stack, [finished, started, finished, started])

    assert await job_row(stack.backends, job["id"]) == before


async def test_a_started_event_arriving_after_completion_changes_nothing(stack: Stack) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", payload="x")
    await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    before = await job_row(stack.backends, job["id"])

    late = JobStarted(
        job_id=before["id"],
        attempt=before["attempts"],
        worker_id="a-slow-worker",
        started_at=utcnow() + timedelta(seconds=1),
    )
    await _replay(stack, [late])

    assert await job_row(stack.backends, job["id"]) == before


async def test_a_completion_with_a_different_outcome_does_not_overwrite_a_finished_job(
    stack: Stack,
) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", payload="kept")
    await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    before = await job_row(stack.backends, job["id"])

    _, finished = _events_of(before)
    contrary = finished.model_copy(
        update={"status": "FAILED", "result": None, "error": "boom", "retryable": True}
    )
    await _replay(stack, [contrary])

    assert await job_row(stack.backends, job["id"]) == before


async def test_events_of_an_older_attempt_do_not_touch_the_running_retry(
    stack: Stack, fails_then_waits: FailsThenWaits
) -> None:
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="fails-then-waits", payload={}, maxAttempts=3)
    try:
        await wait_until_set(fails_then_waits.second_started)

        async def second_attempt_running() -> dict[str, Any] | None:
            row = await job_row(stack.backends, job["id"])
            return row if row["status"] == "RUNNING" and row["attempts"] == 2 else None

        before = await eventually(second_attempt_running)
        now = utcnow()
        old = {"job_id": before["id"], "attempt": 1, "worker_id": "old-worker", "started_at": now}
        await _replay(
            stack,
            [
                JobStarted(**old),
                JobFinished(**old, status="COMPLETED", result="stale", finished_at=now),
                JobFinished(**old, status="FAILED", error="stale", finished_at=now),
            ],
        )
        assert await job_row(stack.backends, job["id"]) == before
    finally:
        fails_then_waits.release.set()

    done = await wait_for_status(stack.client, token, job["id"], "COMPLETED", "FAILED")
    assert done["result"] == "second attempt"
    assert done["attempts"] == 2


async def test_times_from_a_worker_whose_clock_runs_ahead_do_not_put_a_job_out_of_reach(
    stack: Stack,
) -> None:
    # A start stamped in the future would keep the scheduler from judging the attempt hung or
    # lost until then; a retry counted from a future finish would wait as long again.
    await stack.worker.stop(grace=0)
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", payload=1, maxAttempts=2)
    ahead = utcnow() + timedelta(days=365)
    started = JobStarted(job_id=UUID(job["id"]), attempt=1, worker_id="ahead", started_at=ahead)
    await stack.backends.broker.publish(JOBS_STARTED, started.encode())
    running = await wait_for_status(stack.client, token, job["id"], "RUNNING")
    started_at = (await job_row(stack.backends, job["id"]))["started_at"]
    assert started_at <= utcnow()
    assert running["startedAt"] <= running["updatedAt"]
    # Its copies, each taken as a later now, would move it again and again.
    registry = stack.results.metrics.registry
    ignored = metric(registry, EVENTS, kind="started", outcome="ignored")
    for _ in range(2):
        await stack.backends.broker.publish(JOBS_STARTED, started.encode())

    async def both_read() -> bool:
        return metric(registry, EVENTS, kind="started", outcome="ignored") == ignored + 2

    await eventually(both_read)
    assert (await job_row(stack.backends, job["id"]))["started_at"] == started_at
    failed = JobFinished(
        job_id=UUID(job["id"]),
        attempt=1,
        status="FAILED",
        error="boom",
        retryable=True,
        worker_id="ahead",
        started_at=ahead,
        finished_at=ahead + timedelta(seconds=1),
    )
    await stack.backends.broker.publish(JOBS_COMPLETED, failed.encode())
    await eventually(lambda: _attempts_failed(stack, job["id"]))
    row = await job_row(stack.backends, job["id"])
    cap = timedelta(seconds=stack.settings.retry_backoff_cap_seconds)
    assert row["run_at"] <= utcnow() + cap
    assert row["started_at"] <= utcnow()
    assert row["finished_at"] is None  # waiting for its retry


async def _attempts_failed(stack: Stack, job_id: str) -> bool:
    return (await job_row(stack.backends, job_id))["status"] != "RUNNING"


async def test_a_restart_stamped_a_little_ahead_moves_the_start_once(stack: Stack) -> None:
    # A put-back attempt rerun by a worker whose clock is milliseconds ahead of this one (as
    # hosts' clocks are): its timeout must run from the new start, however its copies come.
    await stack.worker.stop(grace=0)
    token = await stack.client.register()
    job = await stack.client.create_job(token, type="echo", payload=1)
    job_id = UUID(job["id"])
    first = JobStarted(job_id=job_id, attempt=1, worker_id="a", started_at=utcnow())
    await stack.backends.broker.publish(JOBS_STARTED, first.encode())
    await wait_for_status(stack.client, token, job["id"], "RUNNING")
    rerun = first.model_copy(
        update={"worker_id": "b", "started_at": utcnow() + timedelta(milliseconds=300)}
    )
    for _ in range(2):
        await stack.backends.broker.publish(JOBS_STARTED, rerun.encode())

    async def moved() -> bool:
        return bool((await job_row(stack.backends, job["id"]))["started_at"] == rerun.started_at)

    await eventually(moved)
