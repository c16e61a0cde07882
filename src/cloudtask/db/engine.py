"""The async engine for a ``DATABASE_URL``: PostgreSQL (asyncpg) or SQLite (aiosqlite)."""

from enum import Enum
from typing import Any
from urllib.parse import urlencode

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


# The connection string parameters of libpq's that asyncpg reads from a DSN (its own keywords are
# not these: SQLAlchemy passed ?sslmode=require as a keyword, and asyncpg refused it).
_LIBPQ_PARAMETERS = frozenset(
    {
        "sslmode", "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "sslnegotiation",
        "ssl_min_protocol_version", "ssl_max_protocol_version", "target_session_attrs",
        "krbsrvname", "gsslib", "passfile", "service", "application_name",
    }
)  # fmt: skip


def _libpq_parameters(url: str, connect_args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Move the libpq parameters of a PostgreSQL URL's query into a DSN asyncpg parses as libpq
    does, and ``connect_timeout`` into asyncpg's ``timeout``; SQLAlchemy's own (``ssl``,
    ``host``, ...) stay in the URL."""
    parsed = make_url(url)
    libpq = {key: value for key, value in parsed.query.items() if key in _LIBPQ_PARAMETERS}
    timeout = parsed.query.get("connect_timeout")
    if not libpq and timeout is None:
        return url, connect_args
    args = dict(connect_args)
    if libpq:
        args["dsn"] = "postgresql://?" + urlencode(libpq, doseq=True)
    if isinstance(timeout, str) and timeout.isascii() and timeout.isdigit() and int(timeout) > 0:
        args["timeout"] = int(timeout)
    rest = {
        key: value
        for key, value in parsed.query.items()
        if key not in _LIBPQ_PARAMETERS and key != "connect_timeout"
    }
    return parsed.set(query=rest).render_as_string(hide_password=False), args


class Plans(Enum):
    """How long PostgreSQL keeps a plan for a connection's prepared statements.

    By default a prepared statement keeps, from its sixth run on, a generic plan made for the
    tables as they were then, until their statistics change (autovacuum's ANALYZE; never where
    autovacuum is off). ``jobs`` grows from nothing: the results-processor's updates kept the
    plan made while it held a few hundred rows, a sequential scan of the whole table, for every
    batch of a table of 40,000 jobs later, and the api's ``GET /jobs/{id}`` took 40 ms with 300,000.
    """

    KEPT = "kept"
    """PostgreSQL's default."""
    FRESH = "fresh"
    """Every statement planned for each run (``plan_cache_mode = force_custom_plan``): about
    0.2 ms of PostgreSQL's CPU per batch of the results-processor. For the results-processor,
    which inserts no jobs, and the scheduler, which inserts one per firing: a foreign-key check
    is planned per row too."""
    FRESH_SQLALCHEMY = "fresh-sqlalchemy"
    """The statements SQLAlchemy runs are prepared anew for each run, at the cost of a round
    trip; those run on the asyncpg connection itself keep theirs, and so do the foreign-key
    checks of the jobs they insert. For the api, whose submissions are the latter."""


def create_engine(url: str, *, pool_size: int = 10, plans: Plans = Plans.KEPT) -> AsyncEngine:
    full_url = async_url(url)
    if full_url.startswith("sqlite"):
        return _sqlite_engine(full_url)
    connect_args: dict[str, Any] = {"timeout": 5, "command_timeout": 60}
    full_url, connect_args = _libpq_parameters(full_url, connect_args)
    if plans is Plans.FRESH:
        connect_args["server_settings"] = {"plan_cache_mode": "force_custom_plan"}
    elif plans is Plans.FRESH_SQLALCHEMY:
        connect_args["prepared_statement_cache_size"] = 0
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
