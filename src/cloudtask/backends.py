"""Building the production back ends from settings: PostgreSQL, RabbitMQ and Redis.

Used by ``cli.py`` only; ``dev.py`` builds the embedded ones. Nothing connects at import time.
"""

import asyncio
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.broker.base import Broker
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.db.engine import Plans, create_engine
from cloudtask.kv.base import KV
from cloudtask.kv.redis import RedisKV
from cloudtask.observability.health import SCHEMA_PROBE
from cloudtask.settings import Settings, SettingsError

UNDEFINED_TABLE = "42P01"


@dataclass
class Backends:
    db: AsyncEngine
    broker: Broker
    kv: KV

    async def close(self) -> None:
        await self.broker.close()
        await self.kv.close()
        await self.db.dispose()


async def open_backends(
    settings: Settings, *, plans: Plans = Plans.KEPT, schema: bool = False
) -> Backends:
    """Create and start the back ends. A dependency that is down does not stop this: each one
    reconnects, and health checks report it until it is back. With ``schema``, for a service
    that uses the database, a database that answers without CloudTask's tables does
    (:func:`require_migrated`)."""
    engine = create_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.db_pool_size,
        plans=plans,
    )
    broker = RabbitMQBroker(settings.rabbitmq_url.get_secret_value())
    kv = RedisKV(settings.redis_url.get_secret_value())
    if schema:
        try:
            await require_migrated(engine)
        except SettingsError:
            await engine.dispose()
            raise
    await broker.start()
    await kv.start()
    return Backends(engine, broker, kv)


async def require_migrated(engine: AsyncEngine, timeout: float = 5) -> None:
    """Refuse, in one line, a database that answers but holds none of CloudTask's tables: the
    service would start, say it is healthy and fail every request. One that does not answer
    (yet) is left to the service's own retries, as :func:`open_backends` leaves it."""
    try:
        async with asyncio.timeout(timeout), engine.connect() as conn:
            await conn.execute(SCHEMA_PROBE)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == UNDEFINED_TABLE:
            raise SettingsError(
                "CLOUDTASK_DATABASE_URL: the database has no CloudTask tables; "
                "run `cloudtask migrate` first"
            ) from None
    except (OSError, TimeoutError):
        pass


async def require_migrated_at(url: str) -> None:
    """:func:`require_migrated` on a connection of its own, closed before it returns."""
    engine = create_engine(url, pool_size=1)
    try:
        await require_migrated(engine)
    finally:
        await engine.dispose()
