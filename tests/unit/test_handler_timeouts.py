"""execution.finish: an attempt's time is the handler's own, not the event loop's delays around it.

Each case blocks the loop on purpose, as a busy worker's loop is, for longer than the timeout's
slack, and leaves the handler itself well inside its timeout.
"""

import asyncio
import time
from typing import Any

import pytest

from cloudtask.worker.execution import finish, start
from cloudtask.worker.registry import Handler
from cloudtask.worker.threads import HandlerThreads

TIMEOUT = 0.3
HANDLER_SECONDS = 0.25


async def _sleeps(payload: Any) -> str:
    await asyncio.sleep(HANDLER_SECONDS)
    return "slept"


def _sleeps_in_its_thread(payload: Any) -> str:
    time.sleep(HANDLER_SECONDS)
    return "slept"


def _block_the_loop(seconds: float) -> None:
    time.sleep(seconds)


@pytest.fixture
def threads() -> HandlerThreads:
    return HandlerThreads(keep_idle=1, name="test-handler")


async def test_a_handler_whose_first_turn_came_late_has_its_whole_timeout(
    threads: HandlerThreads,
) -> None:
    since = time.perf_counter()
    run = start(Handler("sleeps", _sleeps, is_async=True), None, threads)
    _block_the_loop(0.2)  # the handler has not begun yet
    outcome = await finish(run, TIMEOUT, since=since)
    assert (outcome.kind, outcome.result) == ("completed", "slept")


async def test_a_sync_handler_that_returned_in_time_is_not_timed_out_by_a_busy_loop(
    threads: HandlerThreads,
) -> None:
    since = time.perf_counter()
    run = start(Handler("sleeps", _sleeps_in_its_thread, is_async=False), None, threads)
    # Busy from before the handler returns until after the deadline: the result reaches the
    # loop late, in the same turn as the deadline's timer.
    asyncio.get_running_loop().call_later(0.1, _block_the_loop, 0.4)
    outcome = await finish(run, TIMEOUT, since=since)
    assert (outcome.kind, outcome.result) == ("completed", "slept")


async def test_a_handler_that_blocks_the_loop_past_its_timeout_is_timed_out(
    threads: HandlerThreads,
) -> None:
    async def hogs(payload: Any) -> str:
        time.sleep(TIMEOUT + 0.2)  # noqa: ASYNC251 - nothing can stop it at its timeout
        return "finished late"

    run = start(Handler("hogs", hogs, is_async=True), None, threads)
    outcome = await finish(run, TIMEOUT, since=time.perf_counter())
    assert (outcome.kind, outcome.result) == ("timeout", None)


async def test_a_sync_handler_still_running_at_its_timeout_is_timed_out_at_once(
    threads: HandlerThreads,
) -> None:
    def hangs(payload: Any) -> str:
        time.sleep(1.0)
        return "finished late"

    run = start(Handler("hangs", hangs, is_async=False), None, threads)
    begun = time.perf_counter()
    outcome = await finish(run, TIMEOUT, since=begun)
    assert outcome.kind == "timeout"
    assert time.perf_counter() - begun < 0.9  # not after the thread's return
    assert run.still_running


async def test_an_async_handler_stopped_at_its_timeout_is_not_left_running(
    threads: HandlerThreads,
) -> None:
    # It was counted as abandoned (cloudtask_worker_abandoned_handlers_total): its task had
    # been asked to stop and had not had a turn to, yet.
    async def cleans_up(payload: Any) -> str:
        try:
            await asyncio.sleep(10)
        finally:
            await asyncio.sleep(0)  # a finally block that awaits, as closing a client does
        return "finished"

    run = start(Handler("cleans_up", cleans_up, is_async=True), None, threads)
    outcome = await finish(run, TIMEOUT, since=time.perf_counter())
    assert outcome.kind == "timeout"
    assert not run.still_running


async def test_an_async_handler_that_ignores_its_stop_is_left_running(
    threads: HandlerThreads,
) -> None:
    stopped = asyncio.Event()

    async def ignores(payload: Any) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await stopped.wait()  # goes on, as a handler swallowing the cancellation does
        return "finished"

    run = start(Handler("ignores", ignores, is_async=True), None, threads)
    outcome = await finish(run, TIMEOUT, since=time.perf_counter())
    assert outcome.kind == "timeout"
    assert run.still_running
    stopped.set()
    await run.future
