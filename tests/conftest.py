"""Fixtures shared by every tier: settings, real infrastructure, and the back ends to test on."""

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from cloudtask.broker.base import Broker
from cloudtask.broker.memory import MemoryBroker
from cloudtask.broker.rabbitmq import RabbitMQBroker
from cloudtask.contracts.queues import ALL_QUEUES
from cloudtask.db.engine import create_engine
from cloudtask.db.migrate import upgrade_async
from cloudtask.kv.base import KV
from cloudtask.kv.memory import MemoryKV
from cloudtask.kv.redis import RedisKV
from cloudtask.settings import Settings, load_settings
from tests import infra

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
BACKEND_KINDS = ["memory", "real"]


@pytest.fixture
def settings() -> Settings:
    return load_settings(
        env_file=None,
        jwt_secret=JWT_SECRET,
        bcrypt_rounds=4,
        retry_backoff_base_seconds=0.2,
        retry_backoff_cap_seconds=1,
    )


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    with infra.pg_template() as name:
        yield name


@pytest.fixture
def pg_url(pg_template: str) -> Iterator[str]:
    with infra.pg_database(pg_template) as url:
        yield url


@pytest.fixture(scope="session")
def pg_process_database(pg_template: str) -> Iterator[infra.ReusedDatabase]:
    with infra.pg_database(pg_template) as url:
        yield infra.ReusedDatabase(url)


@pytest.fixture
def pg_reset_url(pg_process_database: infra.ReusedDatabase) -> str:
    """This test process's database as the migrations left it: for tests that only read and
    write rows (a test that changes more takes ``pg_url``, a database of its own)."""
    return pg_process_database.reset()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "cloudtask.db"
    asyncio.run(upgrade_async(f"sqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def rabbit_url() -> Iterator[str]:
    with infra.rabbit_vhost() as url:
        yield url


@pytest.fixture
def redis_url() -> str:
    return infra.redis_url()


@dataclass
class Backends:
    kind: str
    db: AsyncEngine
    broker: Broker
    kv: KV
    database_url: str
    rabbitmq_url: str | None = None


async def _purge(broker: Broker) -> None:
    for queue in ALL_QUEUES:
        await broker.purge(queue)


@dataclass
class BackendURLs:
    kind: str
    database: str
    rabbitmq: str = ""
    redis: str = ""


@pytest.fixture(params=BACKEND_KINDS)
def backend_urls(request: pytest.FixtureRequest, tmp_path: Path) -> BackendURLs:
    # Synchronous on purpose: preparing PostgreSQL and RabbitMQ runs outside the test's loop.
    if request.param == "memory":
        path = tmp_path / "cloudtask.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return BackendURLs("memory", f"sqlite:///{path}")
    return BackendURLs(
        "real",
        request.getfixturevalue("pg_reset_url"),
        request.getfixturevalue("rabbit_url"),
        request.getfixturevalue("redis_url"),
    )


@pytest.fixture
async def backends(backend_urls: BackendURLs) -> AsyncIterator[Backends]:
    """The same behaviour, tested on PostgreSQL+RabbitMQ+Redis and on SQLite+in-process."""
    broker: Broker
    kv: KV
    url = backend_urls.database
    if backend_urls.kind == "memory":
        broker, kv = MemoryBroker(), MemoryKV()
    else:
        broker, kv = RabbitMQBroker(backend_urls.rabbitmq), RedisKV(backend_urls.redis)
    engine = create_engine(url)
    await broker.start()
    await kv.start()
    if isinstance(broker, RabbitMQBroker):
        await broker.wait_connected(10)
        await _purge(broker)
    try:
        yield Backends(backend_urls.kind, engine, broker, kv, url, backend_urls.rabbitmq or None)
    finally:
        await broker.close()
        await kv.close()
        await engine.dispose()
