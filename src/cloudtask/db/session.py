"""Opening connections and transactions, with driver errors translated into CloudTask's own."""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import asyncpg
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloudtask.errors import DatabaseUnavailable


@contextmanager
def _translated() -> Iterator[None]:
    """Connection failures become :class:`DatabaseUnavailable`; other errors pass through."""
    try:
        yield
    except DBAPIError as exc:
        if (
            isinstance(exc, OperationalError | InterfaceError)
            or exc.connection_invalidated
            or _server_unavailable(getattr(exc.orig, "sqlstate", None))
        ):
            raise DatabaseUnavailable(f"database: {_reason(exc.orig)}") from None
        raise
    except (OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"database: {_reason(exc)}") from None
    except (asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
        # From the statements run on the asyncpg connection itself (the submission's hot path);
        # a connection the server dropped mid-statement leaves its state machine mid-way.
        raise DatabaseUnavailable(f"database: {type(exc).__name__}") from None
    except asyncpg.PostgresError as exc:
        if _server_unavailable(exc.sqlstate):
            raise DatabaseUnavailable(f"database: {_reason(exc)}") from None
        raise
    except PoolTimeout:
        # Every pooled connection stayed busy past the pool's timeout: overloaded, for now.
        raise DatabaseUnavailable("database: no connection free in the pool") from None


def driver_message(exc: BaseException) -> str:
    """The driver's own words, first line, for an operator: 'role "x" does not exist',
    'Connect call failed (...)'; the class's name if it has none. The server's messages name
    roles, databases and hosts, never a password."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _reason(exc: BaseException | None) -> str:
    name = type(exc).__name__
    message = name if exc is None else driver_message(exc)
    return name if message == name else f"{name}: {message}"


# SQLSTATE classes of a server going away, coming back or full: 08 connection exception, 53
# insufficient resources (too many connections), 57 operator intervention ("the database system
# is shutting down", "... is starting up"). A restart answers with these, not a refused socket.
# And of a server that turns the connection away: 28 invalid authorization (a role dropped, a
# password rotated, pg_hba.conf changed), 3D invalid catalog name (the database is gone). Every
# statement fails alike until an operator acts; callers see a dependency down, not a bug.
_UNAVAILABLE_CLASSES = frozenset({"08", "28", "3D", "53", "57"})
# And a server that takes no writes: a standby reached after a failover, before the connection
# string points at the new primary (25006 read_only_sql_transaction).
_UNAVAILABLE_STATES = frozenset({"25006"})


def _server_unavailable(sqlstate: object) -> bool:
    return isinstance(sqlstate, str) and (
        sqlstate[:2] in _UNAVAILABLE_CLASSES or sqlstate in _UNAVAILABLE_STATES
    )


async def driver(conn: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under ``conn`` (PostgreSQL only), for the hot paths whose
    statements cost less than SQLAlchemy's execution layer around them."""
    found = (await conn.get_raw_connection()).driver_connection
    if not isinstance(found, asyncpg.Connection):
        raise TypeError(f"not an asyncpg connection: {type(found)!r}")
    return found


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that commits when the block ends without an exception."""
    with _translated():
        async with engine.begin() as conn:
            yield conn


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reads only."""
    with _translated():
        async with engine.connect() as conn:
            yield conn


@asynccontextmanager
async def autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection where each statement commits on its own, for work whose statements are each
    atomic and idempotent: on PostgreSQL no BEGIN and COMMIT round trips. On SQLite, whose
    queries do the same work in several statements, it is one transaction."""
    if engine.dialect.name != "postgresql":
        async with transaction(engine) as conn:
            yield conn
        return
    with _translated():
        async with engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")
