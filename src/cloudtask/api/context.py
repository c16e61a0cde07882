"""Everything a request may use, built once by the app factory from the injected back ends."""

from dataclasses import dataclass, field
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.api.idempotency import IdempotencyStore
from cloudtask.api.security import PasswordHasher, TokenService
from cloudtask.broker.base import Broker
from cloudtask.kv.base import KV
from cloudtask.observability.metrics import ApiMetrics
from cloudtask.outbox import OutboxPublisher
from cloudtask.policies.login_throttle import LoginThrottle
from cloudtask.settings import Settings


class KnownUsers:
    """User ids this process has seen in the database, at most ``limit`` (then it starts over)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._ids: set[UUID] = set()
        self._limit = limit

    def __contains__(self, user_id: UUID) -> bool:
        return user_id in self._ids

    def add(self, user_id: UUID) -> None:
        if len(self._ids) >= self._limit:
            self._ids.clear()
        self._ids.add(user_id)


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
    known_users: KnownUsers = field(default_factory=KnownUsers)
