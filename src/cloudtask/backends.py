"""Building the production back ends from settings: PostgreSQL, RabbitMQ and Redis.

Used by ``cli.py`` only; ``dev.py`` builds the embedded ones. Nothing connects at import time.
"""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.broker.base import Broker
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.db.engine import Plans, create_engine
from cloudtask.kv.base import KV
from cloudtask.kv.redis import RedisKV
from cloudtask.settings import Settings


@dataclass
class Backends:
    db: AsyncEngine
    broker: Broker
    kv: KV

    async def close(self) -> None:
        await self.broker.close()
        await self.kv.close()
        await self.db.dispose()


async def open_backends(settings: Settings, *, plans: Plans = Plans.KEPT) -> Backends:
    """Create and start the back ends. A dependency that is down does not stop this: each one
    reconnects, and health checks report it until it is back."""
    engine = create_engine(
        settings.database_url.get_secret_value(),
        pool_size=settings.db_pool_size,
        plans=plans,
    )
    broker = RabbitMQBroker(settings.rabbitmq_url.get_secret_value())
    kv = RedisKV(settings.redis_url.get_secret_value())
    await broker.start()
    await kv.start()
    return Backends(engine, broker, kv)
