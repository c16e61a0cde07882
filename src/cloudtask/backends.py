"""Building the production back ends from settings: PostgreSQL, RabbitMQ and Redis.

Used by ``cli.py`` only; ``dev.py`` builds the embedded ones. Nothing connects at import time.
"""

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.broker.base import Broker
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.db.engine import Plans, create_engine
from cloudtask.db.revisions import HEAD, REVISION_QUERY, Schema, schema_of
from cloudtask.kv.base import KV
from cloudtask.kv.redis import RedisKV
from cloudtask.settings import Settings, SettingsError

UNDEFINED_TABLE = "42P01"
NOT_MIGRATED = (
    "CLOUDTASK_DATABASE_URL: the database has no CloudTask tables; run `cloudtask migrate` first"
)

log = logging.getLogger(__name__)


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
    that uses the database, a database that answers without this version's tables does
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
    """Refuse, in one line, a database that answers but holds none of CloudTask's tables, or
    holds an older version's: the service would start, say it is healthy and fail requests. One
    migrated by a later version is logged and used. One that does not answer (yet) is left to
    the service's own retries, as :func:`open_backends` leaves it."""
    try:
        async with asyncio.timeout(timeout), engine.connect() as conn:
            revision = (await conn.execute(REVISION_QUERY)).scalar()
    except DBAPIError as exc:
        if _no_such_table(exc):
            raise SettingsError(NOT_MIGRATED) from None
        return
    except (OSError, TimeoutError):
        return
    if revision is None:  # migrated, then downgraded to nothing
        raise SettingsError(NOT_MIGRATED)
    schema = schema_of(revision)
    if schema is Schema.OLDER:
        raise SettingsError(
            f"CLOUDTASK_DATABASE_URL: the database's schema is at revision {revision}, "
            f"this version needs {HEAD}; run `cloudtask migrate` first"
        )
    if schema is Schema.NEWER:
        log.warning(
            "the database's schema is at revision %s, newer than this version's %s: "
            "a later version migrated it",
            revision,
            HEAD,
        )


def _no_such_table(exc: DBAPIError) -> bool:
    if getattr(exc.orig, "sqlstate", None) == UNDEFINED_TABLE:  # PostgreSQL
        return True
    return str(exc.orig).startswith("no such table")  # SQLite


async def require_migrated_at(url: str) -> None:
    """:func:`require_migrated` on a connection of its own, closed before it returns."""
    engine = create_engine(url, pool_size=1)
    try:
        await require_migrated(engine)
    finally:
        await engine.dispose()
