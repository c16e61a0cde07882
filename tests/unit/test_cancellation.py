"""Background tasks are stopped for certain, even when a cancellation is swallowed."""

import asyncio
import contextlib

from cloudtask.cancellation import cancel_and_wait


async def test_a_task_that_swallows_its_first_cancellation_is_cancelled_again() -> None:
    rounds = 0

    async def stubborn() -> None:
        nonlocal rounds
        while True:
            rounds += 1
            with contextlib.suppress(asyncio.CancelledError):  # as a library once did
                await asyncio.sleep(10)
            if rounds == 1:
                continue
            await asyncio.sleep(10)

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await cancel_and_wait([task], every=0.05)
    assert task.cancelled()
    assert rounds == 2


async def test_finished_and_failed_tasks_are_left_as_they_ended() -> None:
    async def fail() -> None:
        raise ValueError("boom")

    done = asyncio.create_task(asyncio.sleep(0))
    failed = asyncio.create_task(fail())
    await asyncio.sleep(0.01)
    await cancel_and_wait(iter([done, failed]))
    assert done.result() is None
    assert isinstance(failed.exception(), ValueError)
