"""The Batcher's lingering: items arriving together wait a moment for more, a lone one does not."""

import asyncio
from collections.abc import Sequence

from cloudtask.batching import Batcher

LINGER = 0.2  # long beside a turn of the loop, so that what joins a batch is certain


class Written:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    async def __call__(self, items: Sequence[str]) -> None:
        self.batches.append(list(items))


async def _with_batcher(written: Written, linger: float) -> Batcher[str]:
    batcher: Batcher[str] = Batcher(written, linger=linger)
    batcher.start()
    await asyncio.sleep(0)
    return batcher


async def test_a_lone_item_is_written_without_lingering() -> None:
    written = Written()
    batcher = await _with_batcher(written, LINGER)
    try:
        await asyncio.wait_for(batcher.add("a"), timeout=LINGER / 2)
        await asyncio.wait_for(batcher.add("b"), timeout=LINGER / 2)
    finally:
        await batcher.stop()
    assert written.batches == [["a"], ["b"]]


async def test_items_arriving_together_wait_for_those_arriving_while_they_linger() -> None:
    written = Written()
    batcher = await _with_batcher(written, LINGER)
    try:
        together = [asyncio.ensure_future(batcher.add(item)) for item in ("a", "b")]
        await asyncio.sleep(LINGER / 4)
        assert written.batches == []  # lingering
        late = asyncio.ensure_future(batcher.add("c"))
        await asyncio.gather(*together, late)
    finally:
        await batcher.stop()
    assert written.batches == [["a", "b", "c"]]


async def test_after_a_batch_of_several_the_next_item_lingers_too() -> None:
    # Under load the flusher finds one item at a time as often as several: a batch of more
    # than one says that more are coming.
    written = Written()
    batcher = await _with_batcher(written, LINGER)
    try:
        await asyncio.gather(batcher.add("a"), batcher.add("b"))
        first = asyncio.ensure_future(batcher.add("c"))
        await asyncio.sleep(LINGER / 4)
        second = asyncio.ensure_future(batcher.add("d"))
        await asyncio.gather(first, second)
        await batcher.add("e")  # the last batch held two: this one lingers, alone
    finally:
        await batcher.stop()
    assert written.batches == [["a", "b"], ["c", "d"], ["e"]]


async def test_without_linger_items_go_with_the_next_write() -> None:
    written = Written()
    batcher = await _with_batcher(written, 0)
    try:
        await asyncio.gather(batcher.add("a"), batcher.add("b"))
        await batcher.add("c")
    finally:
        await batcher.stop()
    assert written.batches == [["a", "b"], ["c"]]


async def test_a_full_batch_does_not_linger() -> None:
    written = Written()
    batcher: Batcher[str] = Batcher(written, linger=60, max_size=3)
    batcher.start()
    await asyncio.sleep(0)
    try:
        items = [str(n) for n in range(3)]
        await asyncio.wait_for(asyncio.gather(*(batcher.add(i) for i in items)), timeout=1)
    finally:
        await batcher.stop()
    assert written.batches == [["0", "1", "2"]]
