"""A PostgreSQL that drops its connections (a fast shutdown, or an operator's pg_terminate_backend)
or answers that it is still starting up (SQLSTATE 57P03) is unavailable for now, not a failed
statement: the api answers 503 and the results-processor returns the events to their queue."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from cloudtask.db import session
from cloudtask.db.engine import create_engine
from cloudtask.errors import DatabaseUnavailable

Statement = Callable[[], Awaitable[Any]]


async def _terminate_the_others(pg_url: str) -> None:
    """What a fast shutdown does to every session: end it with 57P01 (admin_shutdown)."""
    connection = await asyncpg.connect(pg_url.replace("+asyncpg", ""))
    try:
        await connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()


async def _cut_mid_statement(pg_url: str, statement: Statement) -> None:
    """Run ``statement`` (a ``pg_sleep``) and end every other session meanwhile."""
    running = asyncio.ensure_future(statement())
    await asyncio.sleep(0.3)
    await _terminate_the_others(pg_url)
    await running


@pytest.mark.parametrize("opening", [session.autocommit, session.reading, session.transaction])
async def test_a_statement_cut_by_an_admin_shutdown_is_database_unavailable(
    pg_url: str, opening: object
) -> None:
    engine = create_engine(pg_url)

    async def cut() -> None:
        async with opening(engine) as conn:  # type: ignore[operator]
            await _cut_mid_statement(pg_url, lambda: conn.execute(text("SELECT pg_sleep(10)")))

    try:
        with pytest.raises(DatabaseUnavailable):
            await cut()
        async with session.reading(engine) as conn:  # a fresh connection works again
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_a_driver_statement_cut_by_an_admin_shutdown_is_database_unavailable(
    pg_url: str,
) -> None:
    engine = create_engine(pg_url)

    async def cut() -> None:
        async with session.autocommit(engine) as conn:
            driver = await session.driver(conn)
            await _cut_mid_statement(pg_url, lambda: driver.execute("SELECT pg_sleep(10)"))

    try:
        with pytest.raises(DatabaseUnavailable):
            await cut()
    finally:
        await engine.dispose()


class StartingUpServer:
    """Answers every PostgreSQL connection as a server still starting up does: the startup
    packet gets ErrorResponse 57P03 ("the database system is starting up"), then the end."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(4), "big")
                code = int.from_bytes((await reader.readexactly(length - 4))[:4], "big")
                if code == 80877103:  # SSLRequest: no TLS here; the startup packet follows
                    writer.write(b"N")
                    continue
                fields = b"SFATAL\0VFATAL\0C57P03\0Mthe database system is starting up\0\0"
                writer.write(b"E" + (len(fields) + 4).to_bytes(4, "big") + fields)
                await writer.drain()
                return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


async def test_a_server_still_starting_up_is_database_unavailable() -> None:
    server = await asyncio.start_server(StartingUpServer().serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    engine = create_engine(f"postgresql://cloudtask@127.0.0.1:{port}/cloudtask")

    async def connect() -> None:
        async with session.autocommit(engine) as conn:
            await conn.execute(text("SELECT 1"))

    try:
        async with server:
            with pytest.raises(DatabaseUnavailable):
                await connect()
    finally:
        await engine.dispose()


async def test_a_server_taking_no_writes_is_database_unavailable(pg_url: str) -> None:
    # As a standby reached after a failover: every transaction is read-only.
    engine = create_engine(pg_url)

    async def write() -> None:
        async with session.transaction(engine) as conn:
            await conn.execute(text("SET TRANSACTION READ ONLY"))
            await conn.execute(text("INSERT INTO written VALUES (1)"))

    try:
        async with session.autocommit(engine) as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS written (n int)"))
        with pytest.raises(DatabaseUnavailable):
            await write()
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        # A role dropped, or renamed (SQLSTATE 28000).
        ({"username": "ct_no_such_role"}, 'role "ct_no_such_role" does not exist'),
        # The database dropped (3D000).
        ({"database": "ct_no_such_database"}, 'database "ct_no_such_database" does not exist'),
    ],
)
async def test_a_server_turning_the_connection_away_is_database_unavailable(
    pg_url: str, change: dict[str, str], reason: str
) -> None:
    # Until an operator acts, every statement fails the same way: a dependency down (a 503, a
    # warning in the services' logs), not an unexpected error with its traceback.
    engine = create_engine(make_url(pg_url).set(**change).render_as_string(hide_password=False))

    async def connect() -> None:
        async with session.reading(engine) as conn:
            await conn.execute(text("SELECT 1"))

    try:
        with pytest.raises(DatabaseUnavailable, match=reason):  # the server's words, logged
            await connect()
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("query", "connects"),
    [
        ("sslmode=disable", True),
        ("sslmode=prefer&application_name=ct-tests&connect_timeout=3", True),
        # This server has no TLS: "require" must not fall back to a plain connection.
        ("sslmode=require", False),
        ("sslmode=verify-full&sslrootcert=/nonexistent/root.crt", False),
    ],
)
async def test_libpq_parameters_in_the_url_are_honoured(
    pg_url: str, query: str, connects: bool
) -> None:
    # The common spelling of connection strings, which SQLAlchemy handed asyncpg as keywords
    # it refused (a TypeError at every connection).
    engine = create_engine(f"{pg_url}?{query}")

    async def application_name() -> object:
        async with session.reading(engine) as conn:
            return (await conn.execute(text("SELECT current_setting('application_name')"))).scalar()

    try:
        if connects:
            expected = "ct-tests" if "application_name" in query else ""
            assert await application_name() == expected
        else:
            with pytest.raises(DatabaseUnavailable):
                await application_name()
    finally:
        await engine.dispose()
