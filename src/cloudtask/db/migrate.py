"""Applying the Alembic migrations (``cloudtask migrate``, and ``cloudtask dev`` on start)."""

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from cloudtask.db.engine import create_engine
from cloudtask.db.session import driver_message
from cloudtask.errors import DatabaseRefused

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision``. Blocking; call it off the event loop.
    Raises :class:`DatabaseRefused` if it cannot be used at all."""
    # Connected to first on its own: a server away, a role refused or a file that is not a
    # database is an operator's one-line answer; an error while migrating keeps its traceback.
    try:
        asyncio.run(_connect(url))
    except (DBAPIError, OSError) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        raise DatabaseRefused(driver_message(cause)) from None
    command.upgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)


async def _connect(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
    finally:
        await engine.dispose()
