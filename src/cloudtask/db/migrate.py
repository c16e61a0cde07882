"""Applying the Alembic migrations (``cloudtask migrate``, and ``cloudtask dev`` on start)."""

import asyncio
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text
from sqlalchemy.exc import DBAPIError

from cloudtask.db.engine import create_engine
from cloudtask.db.revisions import HEAD, REVISION_QUERY, REVISIONS, Schema, is_later, schema_of
from cloudtask.db.session import driver_message
from cloudtask.errors import DatabaseRefused

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` up to ``revision``. Blocking; call it off the event loop.
    Raises :class:`DatabaseRefused` if it cannot be used at all. A database a later version
    migrated is left as it is, with a warning (a version rolled back still starts on it, as the
    services do)."""
    # Connected to first on its own: a server away, a role refused or a file that is not a
    # database is an operator's one-line answer; an error while migrating keeps its traceback.
    try:
        current = asyncio.run(_current_revision(url))
    except (DBAPIError, OSError) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        raise DatabaseRefused(driver_message(cause)) from None
    if current is not None and current not in REVISIONS and not is_later(current):
        # Another program's Alembic revision: a database given by mistake, not one to use.
        raise DatabaseRefused(f"its schema is at revision {current!r}, which is not CloudTask's")
    if schema_of(current) is Schema.NEWER:
        log.warning(
            "the database's schema is at revision %s, newer than this version's %s: "
            "a later version migrated it; left as it is",
            current,
            HEAD,
        )
        return
    command.upgrade(alembic_config(url), revision)


async def upgrade_async(url: str, revision: str = "head") -> None:
    await asyncio.to_thread(upgrade, url, revision)


async def _current_revision(url: str) -> str | None:
    """The database's revision (``None`` before the first migration); raises what connecting
    raises, and on SQLite what writing raises: a file that cannot take a migration's writes (a
    read-only one) is refused here in one line, rather than part way through one or at the
    first job."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                await conn.execute(text("CREATE TABLE IF NOT EXISTS cloudtask_probe (n INTEGER)"))
                await conn.execute(text("DROP TABLE IF EXISTS cloudtask_probe"))
            tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
            if "alembic_version" not in tables:
                return None
            revision: str | None = (await conn.execute(REVISION_QUERY)).scalar()
            return revision
    finally:
        await engine.dispose()
