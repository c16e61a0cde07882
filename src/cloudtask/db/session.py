"""Opening connections and transactions, with driver errors translated into CloudTask's own."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from cloudtask.errors import DatabaseUnavailable

UNAVAILABLE = (OperationalError, InterfaceError, OSError, TimeoutError)


def _is_disconnect(exc: BaseException) -> bool:
    return isinstance(exc, UNAVAILABLE) or (
        isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)
    )


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that commits when the block ends without an exception."""
    try:
        async with engine.begin() as conn:
            yield conn
    except DBAPIError as exc:
        if _is_disconnect(exc):
            raise DatabaseUnavailable(f"database: {type(exc.orig).__name__}") from None
        raise
    except (OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"database: {type(exc).__name__}") from None


@asynccontextmanager
async def reading(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for reads only."""
    try:
        async with engine.connect() as conn:
            yield conn
    except DBAPIError as exc:
        if _is_disconnect(exc):
            raise DatabaseUnavailable(f"database: {type(exc.orig).__name__}") from None
        raise
    except (OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"database: {type(exc).__name__}") from None
