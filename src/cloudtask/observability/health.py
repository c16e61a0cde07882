"""Health checks: each dependency answers within a deadline, or counts as down."""

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.broker.base import Broker
from cloudtask.db.revisions import REVISION_QUERY, Schema, schema_of
from cloudtask.kv.base import KV

Check = Callable[[], Awaitable[bool]]


def database_check(engine: AsyncEngine) -> Check:
    # A database that answers but was never migrated, or not to this version's schema, is as
    # unusable as one away: requests would fail on it.
    async def check() -> bool:
        async with engine.connect() as conn:
            revision = (await conn.execute(REVISION_QUERY)).scalar()
        return schema_of(revision) is not Schema.OLDER

    return check


def standard_checks(engine: AsyncEngine, broker: Broker, kv: KV) -> dict[str, Check]:
    return {"db": database_check(engine), "broker": broker.ping, "redis": kv.ping}


async def _run(check: Check, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            return await check()
    except Exception:  # any failure to answer means the component is down
        return False


async def health(
    checks: Mapping[str, Check], timeout: float = 2.0
) -> tuple[bool, dict[str, object]]:
    """The overall status and the body: ``{"status": "UP", "components": {"db": {...}, …}}``."""
    results = await asyncio.gather(*(_run(check, timeout) for check in checks.values()))
    components = {
        name: {"status": "UP" if ok else "DOWN"} for name, ok in zip(checks, results, strict=True)
    }
    healthy = all(results)
    return healthy, {"status": "UP" if healthy else "DOWN", "components": components}
