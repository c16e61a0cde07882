"""Leases with fencing tokens, on every key-value store."""

from cloudtask.kv.base import KV
from tests.helpers import eventually

SHORT_TTL = 0.2


async def test_acquiring_a_free_lease_returns_a_token(kv: KV) -> None:
    token = await kv.acquire_lease("leader", "alice", 10)
    assert isinstance(token, int)


async def test_renewing_keeps_the_same_token_and_extends_the_lease(kv: KV) -> None:
    token = await kv.acquire_lease("leader", "alice", SHORT_TTL)
    assert await kv.acquire_lease("leader", "alice", 60) == token
    remaining = await kv.ttl("lease:leader")
    assert remaining is not None and remaining > 59


async def test_another_owner_cannot_take_a_held_lease(kv: KV) -> None:
    assert await kv.acquire_lease("leader", "alice", 10) is not None
    assert await kv.acquire_lease("leader", "bob", 10) is None


async def test_after_release_a_new_owner_gets_a_larger_token(kv: KV) -> None:
    first = await kv.acquire_lease("leader", "alice", 10)
    await kv.release_lease("leader", "alice")
    second = await kv.acquire_lease("leader", "bob", 10)
    assert first is not None and second is not None
    assert second > first


async def test_after_expiry_a_new_owner_gets_a_larger_token(kv: KV) -> None:
    first = await kv.acquire_lease("leader", "alice", SHORT_TTL)
    second = await eventually(
        lambda: kv.acquire_lease("leader", "bob", 10), timeout=3, interval=0.02
    )
    assert first is not None
    assert second > first
    assert await kv.acquire_lease("leader", "alice", 10) is None


async def test_the_same_owner_coming_back_after_release_gets_a_larger_token(kv: KV) -> None:
    first = await kv.acquire_lease("leader", "alice", 10)
    await kv.release_lease("leader", "alice")
    second = await kv.acquire_lease("leader", "alice", 10)
    assert first is not None and second is not None
    assert second > first


async def test_release_by_a_non_owner_does_nothing(kv: KV) -> None:
    token = await kv.acquire_lease("leader", "alice", 10)
    await kv.release_lease("leader", "bob")
    assert await kv.acquire_lease("leader", "bob", 10) is None
    assert await kv.acquire_lease("leader", "alice", 10) == token


async def test_leases_with_different_names_are_independent(kv: KV) -> None:
    assert await kv.acquire_lease("one", "alice", 10) is not None
    assert await kv.acquire_lease("two", "bob", 10) is not None
