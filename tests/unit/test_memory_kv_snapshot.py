"""The in-process key-value store's state kept across ``cloudtask dev`` restarts."""

import json
from pathlib import Path

from cloudtask import dev
from cloudtask.contracts.signals import SCHEDULER_LEASE
from cloudtask.kv.memory import MemoryKV


async def test_a_snapshot_restores_values_with_the_time_they_have_left() -> None:
    kv = MemoryKV()
    await kv.set("forever", b"\x00binary")
    await kv.set("short", b"s", ttl=5)
    await kv.set("gone", b"g", ttl=0.001)
    await kv.incr("count", ttl=60)
    assert await kv.acquire_lease("leader", "a", ttl=30) == 1
    snapshot = json.loads(json.dumps(kv.snapshot()))  # as written to and read from the file
    snapshot["taken_at"] -= 2  # taken two seconds ago

    again = MemoryKV()
    again.restore(snapshot)
    assert await again.get("forever") == b"\x00binary"
    assert await again.ttl("forever") is None
    short = await again.ttl("short")
    assert short is not None and 2 < short <= 3
    assert await again.get("gone") is None
    assert await again.incr("count", ttl=60) == 2
    # The fencing token goes on from where it was: a new leader's is higher.
    await again.release_lease("leader", "a")
    assert await again.acquire_lease("leader", "b", ttl=30) == 2


async def test_a_value_past_its_ttl_since_the_snapshot_is_dropped() -> None:
    kv = MemoryKV()
    await kv.set("key", b"v", ttl=5)
    snapshot = kv.snapshot()
    snapshot["taken_at"] -= 10
    again = MemoryKV()
    again.restore(snapshot)
    assert await again.get("key") is None


async def test_cloudtask_dev_loads_its_store_without_the_last_processs_scheduler_lead(
    tmp_path: Path,
) -> None:
    # Saved while a process led, then killed: the next one waited for that lead to expire.
    before = MemoryKV()
    fence = await before.acquire_lease(SCHEDULER_LEASE, "killed-process", ttl=10)
    assert fence is not None
    path = tmp_path / "dev.db.kv.json"
    dev._save_kv(before, path)

    after = MemoryKV()
    dev._load_kv(after, path)
    taken = await after.acquire_lease(SCHEDULER_LEASE, "next-process", ttl=10)
    assert taken is not None and taken > fence  # led at once, with a later fencing token
