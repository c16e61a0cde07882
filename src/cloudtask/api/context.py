"""Everything a request may use, built once by the app factory from the injected back ends."""

import time
from dataclasses import dataclass, field
from uuid import UUID

from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.api.group_commit import GroupCommit
from cloudtask.api.idempotency import IdempotencyStore
from cloudtask.api.login_gate import LoginGate
from cloudtask.api.security import PasswordHasher, TokenService
from cloudtask.broker.base import Broker
from cloudtask.kv.base import KV
from cloudtask.observability.metrics import ApiMetrics
from cloudtask.outbox import OutboxPublisher
from cloudtask.settings import Settings


class KnownUsers:
    """User ids this process found in the database within the last ``ttl`` seconds (at most
    ``limit`` of them), so that a token's user is looked up once a minute, not per request."""

    def __init__(self, ttl: float = 60.0, limit: int = 100_000) -> None:
        self._seen: dict[UUID, float] = {}
        self._ttl = ttl
        self._limit = limit

    def __contains__(self, user_id: UUID) -> bool:
        seen = self._seen.get(user_id)
        return seen is not None and time.monotonic() - seen < self._ttl

    def add(self, user_id: UUID) -> None:
        if len(self._seen) >= self._limit:
            self._seen.clear()
        self._seen[user_id] = time.monotonic()


@dataclass
class ApiContext:
    settings: Settings
    db: AsyncEngine
    broker: Broker
    kv: KV
    outbox: OutboxPublisher
    group_commit: GroupCommit
    tokens: TokenService
    passwords: PasswordHasher
    idempotency: IdempotencyStore
    logins: LoginGate
    metrics: ApiMetrics
    known_users: KnownUsers = field(default_factory=KnownUsers)
