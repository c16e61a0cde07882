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


async def test_waiters_of_one_priority_get_slots_earliest_enqueued_first() -> None:
    # A delivery returned to the queue arrives again, behind later jobs: its enqueuing time, not
    # its arrival, puts it back in line.
    slots, order = PrioritySlots(1), list[str]()
    await slots.acquire(5)
    waiters = [
        asyncio.create_task(_take(slots, priority, enqueued, name, order))
        for name, priority, enqueued in (
            ("second", 5, 2.0), ("third", 5, 3.0), ("first", 5, 1.0), ("high", 9, 9.0)
        )
    ]  # fmt: skip
    await _settle()
    slots.release()
    await asyncio.gather(*waiters)
    assert order == ["high", "first", "second", "third"]


async def test_turned_away_waiters_get_false_and_their_items_in_slot_order() -> None:
    slots: PrioritySlots[str] = PrioritySlots(1)
    await slots.acquire(5)
    waiters = {
        name: asyncio.create_task(slots.acquire(priority, enqueued, name))
        for name, priority, enqueued in (("late", 5, 2.0), ("early", 5, 1.0), ("high", 9, 3.0))
    }
    await _settle()
    assert slots.waiting_since() is not None
    assert slots.turn_away() == ["high", "early", "late"]
    assert [await waiter for waiter in waiters.values()] == [False, False, False]
    assert slots.turn_away() == []
    assert slots.waiting_since() is None
    slots.release()  # no one waits: the slot is free again
    assert slots.try_acquire()
    assert not slots.try_acquire()


async def test_waiting_since_is_when_the_longest_waiter_still_waiting_began() -> None:
    slots: PrioritySlots[str] = PrioritySlots(1)
    await slots.acquire(5)
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(slots.acquire(9))
    await _settle()
    began = loop.time()
    await asyncio.sleep(0.05)
    second = asyncio.create_task(slots.acquire(0))
    await _settle()
    since = slots.waiting_since()
    assert since is not None and since <= began
    slots.release()  # the first (higher priority) takes it: the second is the longest now
    assert await first
    later = slots.waiting_since()
    assert later is not None and later >= began + 0.04
    second.cancel()
    await _settle()
    assert slots.waiting_since() is None


async def _take(
    slots: PrioritySlots, priority: int, enqueued: float, name: str, order: list[str]
) -> None:
    await slots.acquire(priority, enqueued)
    order.append(name)
    slots.release()


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
