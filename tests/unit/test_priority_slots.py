"""The worker's slots: never more held than there are, handed out highest priority first, the
earliest first within a priority, and not lost when a waiter is cancelled."""

import asyncio

from cloudtask.worker.slots import PrioritySlots


async def _hold(
    slots: PrioritySlots, priority: int, name: str, log: list[str], release: asyncio.Event
) -> None:
    await slots.acquire(priority)
    try:
        log.append(name)
        await release.wait()
    finally:
        slots.release()


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_waiters_get_freed_slots_by_priority_then_arrival() -> None:
    slots, log = PrioritySlots(2), list[str]()
    releases = {name: asyncio.Event() for name in ("a", "b", "low", "high1", "high2", "mid")}
    tasks = [asyncio.create_task(_hold(slots, 5, name, log, releases[name])) for name in ("a", "b")]
    await _settle()
    for name, priority in (("low", 0), ("high1", 9), ("mid", 4), ("high2", 9)):
        tasks.append(asyncio.create_task(_hold(slots, priority, name, log, releases[name])))
        await _settle()
    assert log == ["a", "b"]  # both slots taken; four wait

    releases["a"].set()
    await _settle()
    assert log == ["a", "b", "high1"]
    for name in ("b", "high1", "high2", "mid", "low"):
        releases[name].set()
    await asyncio.gather(*tasks)
    assert log == ["a", "b", "high1", "high2", "mid", "low"]


async def test_a_cancelled_waiter_is_skipped_and_no_slot_is_lost() -> None:
    slots, log = PrioritySlots(1), list[str]()
    first, gone, then = asyncio.Event(), asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_hold(slots, 0, "first", log, first))
    await _settle()
    cancelled = asyncio.create_task(_hold(slots, 9, "gone", log, gone))
    waiter = asyncio.create_task(_hold(slots, 0, "then", log, then))
    await _settle()
    cancelled.cancel()
    first.set()
    then.set()
    await asyncio.gather(holder, waiter)
    assert log == ["first", "then"]
    async with asyncio.timeout(1):  # the slot is free again
        await slots.acquire(0)


async def test_a_waiter_cancelled_as_it_is_handed_the_slot_passes_it_on() -> None:
    slots, log = PrioritySlots(1), list[str]()
    late, then = asyncio.Event(), asyncio.Event()
    await slots.acquire(0)
    handed = asyncio.create_task(_hold(slots, 9, "late", log, late))
    waiter = asyncio.create_task(_hold(slots, 0, "then", log, then))
    await _settle()
    slots.release()  # hands the slot to ``handed``, not yet resumed
    handed.cancel()
    then.set()
    await asyncio.wait_for(waiter, 1)
    assert log == ["then"]
    assert handed.cancelled()


async def test_try_acquire_takes_only_a_free_slot() -> None:
    slots = PrioritySlots(1)
    assert slots.try_acquire() is True
    assert slots.try_acquire() is False
    slots.release()
    assert slots.try_acquire() is True
