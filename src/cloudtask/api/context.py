"""Everything a request may use, built once by the app factory from the injected back ends."""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.api.idempotency import IdempotencyStore
from cloudtask.api.security import PasswordHasher, TokenService
from cloudtask.broker.base import Broker
from cloudtask.kv.base import KV
from cloudtask.observability.metrics import ApiMetrics
from cloudtask.outbox import OutboxPublisher
from cloudtask.policies.login_throttle import LoginThrottle
from cloudtask.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    db: AsyncEngine
    broker: Broker
    kv: KV
    outbox: OutboxPublisher
    tokens: TokenService
    passwords: PasswordHasher
    idempotency: IdempotencyStore
    throttle: LoginThrottle
    metrics: ApiMetrics
