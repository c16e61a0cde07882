"""The worker's gate: attempts run side by side, or one alone."""

import asyncio

import pytest

from cloudtask.worker.gate import RunGate


async def test_an_attempt_alone_waits_for_the_others_and_holds_back_new_ones() -> None:
    gate = RunGate()
    assert gate.try_enter() and gate.try_enter()
    alone = asyncio.create_task(gate.enter(alone=True))
    await asyncio.sleep(0)
    assert not alone.done()
    assert not gate.try_enter()  # waiting to run alone already holds back new attempts
    beside = asyncio.create_task(gate.enter())
    gate.leave()
    await asyncio.sleep(0)
    assert not alone.done()
    gate.leave()
    await alone
    assert gate.running == 1
    await asyncio.sleep(0)
    assert not beside.done()
    gate.leave(alone=True)
    await beside
    assert gate.running == 1


async def test_attempts_alone_take_turns() -> None:
    gate = RunGate()
    await gate.enter(alone=True)
    second = asyncio.create_task(gate.enter(alone=True))
    await asyncio.sleep(0)
    assert not second.done()
    gate.leave(alone=True)
    await second
    assert gate.running == 1
    gate.leave(alone=True)
    assert gate.try_enter()


async def test_an_attempt_cancelled_while_waiting_to_run_alone_opens_the_gate_again() -> None:
    gate = RunGate()
    assert gate.try_enter()
    alone = asyncio.create_task(gate.enter(alone=True))
    await asyncio.sleep(0)
    alone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await alone
    assert gate.try_enter()
    assert gate.running == 2
    gate.leave()
    gate.leave()
    await asyncio.wait_for(gate.enter(alone=True), 1)
