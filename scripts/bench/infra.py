"""Isolated infrastructure for one benchmark run: fresh PostgreSQL databases, a fresh RabbitMQ
vhost and an empty Redis database number, all removed afterwards.

The servers themselves are the local ones (``scripts/services.sh`` starts them where stopped);
``BENCH_POSTGRES_URL``, ``BENCH_RABBITMQ_HOST`` and ``BENCH_REDIS_URL`` point elsewhere.
"""

import asyncio
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import asyncpg
import redis

PG_ADMIN = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBIT_HOST = os.environ.get("BENCH_RABBITMQ_HOST", "127.0.0.1:5672")
REDIS_BASE = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
# Databases 15 and 14 belong to the test suite (one per test process, two at once); the bench
# takes the highest empty one below them.
REDIS_CANDIDATES = range(13, 0, -1)


def pg_url(database: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + database


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def pg_admin(*statements: str) -> None:
    asyncio.run(_admin(*statements))


@contextmanager
def pg_database(prefix: str) -> Iterator[str]:
    """A new, empty database; its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield pg_url(name)
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stdout


@contextmanager
def rabbit_vhost(prefix: str) -> Iterator[str]:
    """A new vhost with the guest user's permissions; its AMQP URL."""
    vhost = f"{prefix}-{secrets.token_hex(4)}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBIT_HOST}/{vhost}"
    finally:
        subprocess.run(
            ["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=120, check=False
        )


@contextmanager
def redis_database() -> Iterator[str]:
    """The URL of a Redis database number that holds no key, flushed again afterwards."""
    for number in REDIS_CANDIDATES:
        url = f"{REDIS_BASE}/{number}"
        client = redis.Redis.from_url(url)
        try:
            if client.dbsize() == 0:
                break
        finally:
            client.close()
    else:
        raise RuntimeError("no empty Redis database number in 1-13")
    try:
        yield url
    finally:
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()


@dataclass(frozen=True)
class Infra:
    database_url: str
    rabbitmq_url: str
    redis_url: str


@contextmanager
def cloudtask_infra() -> Iterator[Infra]:
    with ExitStack() as stack:
        database = stack.enter_context(pg_database("ctbench"))
        vhost = stack.enter_context(rabbit_vhost("ctbench"))
        redis_url = stack.enter_context(redis_database())
        yield Infra(database, vhost, redis_url)


@dataclass(frozen=True)
class CeleryInfra:
    broker_url: str
    backend_url: str
    database_url: str


@contextmanager
def celery_infra() -> Iterator[CeleryInfra]:
    with ExitStack() as stack:
        database = stack.enter_context(pg_database("ctbench_celery"))
        vhost = stack.enter_context(rabbit_vhost("ctbench-celery"))
        backend = "db+" + database.replace("postgresql://", "postgresql+psycopg2://", 1)
        yield CeleryInfra(vhost, backend, database)
