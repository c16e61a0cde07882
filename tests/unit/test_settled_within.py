"""execution.settled_within: asyncio.wait for one future, cheaper, and never cancelling it."""

import asyncio

from cloudtask.worker.execution import settled_within


async def test_a_future_already_done_is_settled_without_waiting() -> None:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    done.set_result(1)
    assert await asyncio.wait_for(settled_within(done, 60), timeout=1)


async def test_a_future_ending_in_time_is_settled_as_it_ends() -> None:
    run = asyncio.ensure_future(asyncio.sleep(0.01, result="x"))
    assert await asyncio.wait_for(settled_within(run, 60), timeout=1)
    assert run.result() == "x"


async def test_a_future_still_running_at_the_timeout_is_left_running() -> None:
    gate = asyncio.Event()

    async def held() -> str:
        await gate.wait()
        return "ended"

    run = asyncio.ensure_future(held())
    assert not await settled_within(run, 0.01)
    assert not run.done()  # not cancelled: the caller decides
    gate.set()
    assert await run == "ended"


async def test_a_cancelled_future_counts_as_settled() -> None:
    run = asyncio.ensure_future(asyncio.sleep(60))
    asyncio.get_running_loop().call_soon(run.cancel)
    assert await settled_within(run, 60)
    assert run.cancelled()
