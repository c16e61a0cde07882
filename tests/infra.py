"""Real infrastructure for tests: a fresh PostgreSQL database (cloned from a migrated template)
per test that needs one to itself, else one per test process emptied before each test; a RabbitMQ
vhost per test run; a Redis database flushed per test.

A service that is not reachable fails the run; nothing is skipped.
"""

import asyncio
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import aio_pika
import asyncpg
import redis

from cloudtask.db.migrate import upgrade

PG_ADMIN = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBIT_HOST = os.environ.get("TEST_RABBITMQ_HOST", "127.0.0.1:5672")
REDIS_BASE = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")
# One Redis database per test process: tests flush it, and pytest-xdist runs several at once.
_XDIST_INDEX = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", str(15 - _XDIST_INDEX)))


def pg_url(database: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + database


async def _admin(*statements: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def admin(*statements: str) -> None:
    asyncio.run(_admin(*statements))


@contextmanager
def pg_template() -> Iterator[str]:
    name = f"ct_tpl_{secrets.token_hex(4)}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        upgrade(pg_url(name))
        yield name
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def pg_database(template: str) -> Iterator[str]:
    name = f"ct_{secrets.token_hex(6)}"
    admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield pg_url(name)
    finally:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT quote_ident(tablename) AS name FROM pg_tables"
        " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
    )
    return [row["name"] for row in rows]


async def _seed(url: str) -> dict[str, str]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        seed = {}
        for table in await _tables(conn):
            rows = await conn.fetchval(f"SELECT json_agg(t) FROM {table} t")  # noqa: S608
            if rows is not None:
                seed[table] = rows
        return seed
    finally:
        await conn.close()


async def _reset(url: str, seed: dict[str, str]) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        # What a test before left connected (a task or connection leaked by a failure) is cut
        # off, as dropping the database did: it must not write into this test's rows.
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        await conn.execute("SET lock_timeout = '10s'")
        async with conn.transaction():
            await conn.execute(f"TRUNCATE {', '.join(await _tables(conn))} RESTART IDENTITY")
            for table, rows in seed.items():
                await conn.execute(
                    f"INSERT INTO {table} SELECT * FROM json_populate_recordset(NULL::{table}, $1)",  # noqa: S608
                    rows,
                )
    finally:
        await conn.close()


class ReusedDatabase:
    """A database cloned from the template once, then reset before each test to the rows the
    migrations left in it: as good as a new clone, for a tenth of the time."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._seed = asyncio.run(_seed(url))

    def reset(self) -> str:
        asyncio.run(_reset(self.url, self._seed))
        return self.url


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


@contextmanager
def rabbit_vhost() -> Iterator[str]:
    vhost = f"ct-test-{secrets.token_hex(4)}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    try:
        yield f"amqp://guest:guest@{RABBIT_HOST}/{vhost}"
    finally:
        subprocess.run(
            ["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60, check=False
        )


def redis_url() -> str:
    url = f"{REDIS_BASE}/{REDIS_DB}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def purge_vhost(url: str) -> None:
    """Empty the contract's queues in the vhost of ``url``, if they exist."""

    async def purge() -> None:
        connection = await aio_pika.connect(url)
        try:
            for name in ("jobs.created", "jobs.started", "jobs.completed", "jobs.dead"):
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(name, passive=True)
                    await queue.purge()
                except aio_pika.exceptions.ChannelClosed:
                    pass
                finally:
                    if not channel.is_closed:
                        await channel.close()
        finally:
            await connection.close()

    asyncio.run(purge())
