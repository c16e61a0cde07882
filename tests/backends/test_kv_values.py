"""Keys, expiry and counters, on every key-value store."""

from cloudtask.kv.base import KV
from tests.helpers import eventually

SHORT_TTL = 0.2


async def expired(kv: KV, key: str) -> None:
    async def gone() -> bool:
        return await kv.get(key) is None

    await eventually(gone, timeout=3, interval=0.02)


async def test_a_value_that_was_set_can_be_read_back(kv: KV) -> None:
    assert await kv.set("greeting", b"hello") is True
    assert await kv.get("greeting") == b"hello"
    assert await kv.ttl("greeting") is None


async def test_a_missing_key_reads_as_none(kv: KV) -> None:
    assert await kv.get("nothing-here") is None
    assert await kv.ttl("nothing-here") is None


async def test_setting_again_replaces_the_value(kv: KV) -> None:
    await kv.set("key", b"one")
    await kv.set("key", b"two")
    assert await kv.get("key") == b"two"


async def test_a_value_with_a_ttl_expires(kv: KV) -> None:
    await kv.set("short", b"lived", ttl=SHORT_TTL)
    remaining = await kv.ttl("short")
    assert remaining is not None and 0 < remaining <= SHORT_TTL
    assert await kv.get("short") == b"lived"
    await expired(kv, "short")
    assert await kv.ttl("short") is None


async def test_only_if_absent_does_not_overwrite_a_live_key(kv: KV) -> None:
    assert await kv.set("claim", b"first", only_if_absent=True, ttl=SHORT_TTL) is True
    assert await kv.set("claim", b"second", only_if_absent=True) is False
    assert await kv.get("claim") == b"first"
    await expired(kv, "claim")
    assert await kv.set("claim", b"third", only_if_absent=True) is True
    assert await kv.get("claim") == b"third"


async def test_get_many_answers_in_the_order_asked_with_none_for_missing(kv: KV) -> None:
    await kv.set("a", b"1")
    await kv.set("c", b"3")
    assert await kv.get_many(["c", "b", "a"]) == [b"3", None, b"1"]
    assert await kv.get_many([]) == []


async def test_set_many_stores_every_value_with_the_ttl(kv: KV) -> None:
    await kv.set_many({"x": b"10", "y": b"20"}, ttl=60)
    assert await kv.get_many(["x", "y"]) == [b"10", b"20"]
    for key in ("x", "y"):
        remaining = await kv.ttl(key)
        assert remaining is not None and 59 < remaining <= 60
    await kv.set_many({}, ttl=60)


async def test_set_many_values_expire(kv: KV) -> None:
    await kv.set_many({"p": b"1", "q": b"2"}, ttl=SHORT_TTL)
    await expired(kv, "p")
    await expired(kv, "q")


async def test_forced_writes_are_stored_and_other_keys_read_in_one_call(kv: KV) -> None:
    async def set_many_and_get(items: dict[str, bytes], get_keys: list[str]) -> list[bytes | None]:
        holders, read = await kv.claim_many_and_get(
            {}, ttl=0.3, free=b"x", forced=items, get_keys=get_keys
        )
        assert holders == []
        return read

    await kv.set("flag", b"up")
    leases = {"lease1": b"me", "lease2": b"me"}
    got = await set_many_and_get(leases, get_keys=["flag", "absent", "flag"])
    assert got == [b"up", None, b"up"]
    assert await kv.get_many(["lease1", "lease2"]) == [b"me", b"me"]
    assert await set_many_and_get({}, get_keys=[]) == []
    assert await set_many_and_get({}, get_keys=["lease1"]) == [b"me"]
    # Written before they are read: a key in both reads its new value.
    assert await set_many_and_get({"both": b"new"}, get_keys=["both"]) == [b"new"]

    async def expired() -> bool:
        return await kv.get_many(["lease1", "lease2", "both"]) == [None, None, None]

    await eventually(expired, timeout=5)


async def test_claims_are_stored_where_the_key_is_free_and_forced_writes_anyway(kv: KV) -> None:
    await kv.set("held", b"other")
    await kv.set("marked", b"free-marker")
    await kv.set("flag", b"up")
    holders, read = await kv.claim_many_and_get(
        {"held": b"me", "marked": b"me", "absent": b"me"},
        ttl=60,
        free=b"free-marker",
        forced={"taken-over": b"me"},
        get_keys=["flag", "nothing"],
    )
    assert holders == [b"other", None, None]
    assert read == [b"up", None]
    assert await kv.get_many(["held", "marked", "absent", "taken-over"]) == [
        b"other", b"me", b"me", b"me"
    ]  # fmt: skip
    remaining = await kv.ttl("absent")
    assert remaining is not None and 59 < remaining <= 60
    # A claim on a key this very call forces is decided before the forced write.
    holders, read = await kv.claim_many_and_get(
        {"both": b"me"}, ttl=60, free=b"x", forced={"both": b"them"}, get_keys=["both"]
    )
    assert (holders, read) == ([None], [b"them"])
    assert await kv.claim_many_and_get({}, ttl=60, free=b"x", forced={}, get_keys=[]) == ([], [])
    # A key holding the claim's own value is the claim's: sent twice, it is taken twice.
    for _ in range(2):
        holders, _read = await kv.claim_many_and_get(
            {"mine": b"me/1"}, ttl=60, free=b"x", forced={}, get_keys=[]
        )
        assert holders == [None]


async def test_delete_counts_the_keys_it_removed(kv: KV) -> None:
    await kv.set("one", b"1")
    await kv.set("two", b"2")
    assert await kv.delete("one", "two", "three") == 2
    assert await kv.get_many(["one", "two"]) == [None, None]
    assert await kv.delete("one") == 0
    assert await kv.delete() == 0


async def test_delete_does_not_count_an_expired_key(kv: KV) -> None:
    await kv.set("old", b"1", ttl=SHORT_TTL)
    await expired(kv, "old")
    assert await kv.delete("old") == 0


async def test_incr_counts_up_from_one(kv: KV) -> None:
    assert [await kv.incr("hits", ttl=60) for _ in range(3)] == [1, 2, 3]
    assert await kv.get("hits") == b"3"


async def test_incr_sets_the_window_on_the_first_increment_only(kv: KV) -> None:
    assert await kv.incr("window", ttl=SHORT_TTL) == 1
    assert await kv.incr("window", ttl=600) == 2
    remaining = await kv.ttl("window")
    assert remaining is not None and remaining <= SHORT_TTL
    await expired(kv, "window")
    assert await kv.incr("window", ttl=600) == 1
    remaining = await kv.ttl("window")
    assert remaining is not None and remaining > 599


async def test_decr_takes_one_back_and_keeps_the_window(kv: KV) -> None:
    assert await kv.incr("tries", ttl=SHORT_TTL) == 1
    assert await kv.incr("tries", ttl=SHORT_TTL) == 2
    assert await kv.decr("tries") == 1
    assert await kv.decr("tries") == 0
    remaining = await kv.ttl("tries")
    assert remaining is not None and remaining <= SHORT_TTL
    await expired(kv, "tries")
    assert await kv.decr("tries") is None  # an expired counter is not brought back
    assert await kv.get("tries") is None


async def test_ping_is_true_when_the_store_is_up(kv: KV) -> None:
    assert await kv.ping() is True


async def test_the_stores_instance_names_the_run_and_stays_while_it_runs(kv: KV) -> None:
    first = await kv.instance()
    await kv.set("some-key", b"v")
    assert first and await kv.instance() == first
