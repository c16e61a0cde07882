"""Fixtures for end-to-end tests: real ``cloudtask`` processes on real infrastructure."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import JWT_SECRET
from tests.e2e.processes import Processes, clean_env, processes
from tests.infra import purge_vhost


@pytest.fixture
def service_env(pg_url: str, rabbit_url: str, redis_url: str) -> dict[str, str]:
    return clean_env(
        database_url=pg_url,
        rabbitmq_url=rabbit_url,
        redis_url=redis_url,
        jwt_secret=JWT_SECRET,
        bcrypt_rounds="4",
        log_format="json",
        outbox_relay_after_seconds="1",
        retry_backoff_base_seconds="0.5",
        retry_backoff_cap_seconds="2",
    )


@pytest.fixture
def procs(service_env: dict[str, str], tmp_path: Path) -> Iterator[Processes]:
    """Processes on PostgreSQL (a fresh database), RabbitMQ (this run's vhost, purged) and Redis."""
    purge_vhost(service_env["CLOUDTASK_RABBITMQ_URL"])
    with processes(service_env, tmp_path) as group:
        yield group
