"""The async engine for a ``DATABASE_URL``: PostgreSQL (asyncpg) or SQLite (aiosqlite)."""

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from cloudtask.errors import CloudTaskError

_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def async_url(url: str) -> str:
    """The SQLAlchemy URL, with the async driver, for a ``postgresql://`` or ``sqlite://`` URL."""
    parsed = make_url(url)
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise CloudTaskError(
            f"unsupported database URL scheme {parsed.drivername!r}: use postgresql:// or sqlite://"
        )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def create_engine(url: str, *, pool_size: int = 10, fresh_plans: bool = False) -> AsyncEngine:
    """``fresh_plans``: PostgreSQL plans each prepared statement for the table as it is now.

    By default a connection's prepared statement keeps, from its sixth run on, a generic plan
    made for the tables as they were then, until their statistics change (autovacuum's ANALYZE;
    never where autovacuum is off). The results-processor's first updates run while ``jobs``
    holds a few rows: the plan they keep scans the whole table, and went on doing it for every
    batch, a table of 40,000 jobs later. The services whose statements look jobs up in a table
    that grows (results-processor, scheduler) ask for a plan per run instead: about 0.2 ms of
    PostgreSQL's CPU per batch. Not the api: it would plan each foreign-key check of each
    inserted job too.
    """
    full_url = async_url(url)
    if full_url.startswith("sqlite"):
        return _sqlite_engine(full_url)
    connect_args: dict[str, Any] = {"timeout": 5, "command_timeout": 60}
    if fresh_plans:
        connect_args["server_settings"] = {"plan_cache_mode": "force_custom_plan"}
    # No overflow: an overflow connection is closed as soon as it is returned, so under load
    # every request would open (and TLS-negotiate) a new one; waiting for a pooled connection
    # is far cheaper.
    return create_async_engine(
        full_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=False,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _sqlite_engine(url: str) -> AsyncEngine:
    # One connection: SQLite allows one writer at a time, and queueing in the pool is kinder than
    # "database is locked" errors. `cloudtask dev` is the only user of this back end.
    engine = create_async_engine(url, pool_size=1, max_overflow=0)

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            "busy_timeout=10000",
        ):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    return engine


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"
