"""Looking at a running system from outside: database rows and Prometheus metrics."""

import asyncio
from typing import Any

import asyncpg
import httpx
from prometheus_client.parser import text_string_to_metric_families


def job_row(database_url: str, job_id: str) -> dict[str, Any]:
    async def fetch() -> dict[str, Any]:
        conn = await asyncpg.connect(database_url)
        try:
            row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1::uuid", job_id)
        finally:
            await conn.close()
        assert row is not None
        return dict(row)

    return asyncio.run(fetch())


def execute(database_url: str, statement: str, *args: object) -> str:
    """Run one statement on the database, as an operator's psql would; returns its status."""

    async def run() -> str:
        conn = await asyncpg.connect(database_url)
        try:
            status: str = await conn.execute(statement, *args)
            return status
        finally:
            await conn.close()

    return asyncio.run(run())


def metric(base_url: str, name: str, path: str = "/metrics", **labels: str) -> float:
    """The sum of the samples named ``name`` whose labels include ``labels``."""
    text = httpx.get(base_url + path, timeout=5).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total
