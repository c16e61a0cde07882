"""The schema's migrations, up and down, on both databases."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text

from cloudtask.backends import NOT_MIGRATED, require_migrated
from cloudtask.db.engine import create_engine
from cloudtask.db.migrate import alembic_config, upgrade
from cloudtask.db.revisions import HEAD, REVISIONS
from cloudtask.settings import SettingsError
from tests import infra


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrations.db'}"
        return
    with infra.pg_database("template0") as url:
        yield url


def _sql(url: str, statement: str) -> Any:
    async def run() -> Any:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(statement))
                return result.all() if result.returns_rows else None
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _outbox_columns(url: str) -> set[str]:
    if url.startswith("sqlite"):
        return {row[1] for row in _sql(url, "PRAGMA table_info(outbox)")}
    query = "SELECT column_name FROM information_schema.columns WHERE table_name = 'outbox'"
    return {row[0] for row in _sql(url, query)}


def test_downgrading_waits_until_no_outbox_row_holds_several_messages(empty_database: str) -> None:
    url = empty_database
    upgrade(url)
    assert "messages" in _outbox_columns(url)
    _sql(
        url,
        "INSERT INTO outbox (queue, body, priority, created_at, messages)"
        " VALUES ('jobs.created', '{}' || char(10) || '{}', 5, '2026-11-29 00:00:00', 2)"
        if url.startswith("sqlite")
        else "INSERT INTO outbox (queue, body, priority, created_at, messages)"
        " VALUES ('jobs.created', E'{}\\n{}', 5, now(), 2)",
    )
    with pytest.raises(RuntimeError, match="1 outbox rows hold several messages"):
        command.downgrade(alembic_config(url), "0002")
    assert "messages" in _outbox_columns(url)  # the failed downgrade changed nothing

    _sql(url, "DELETE FROM outbox")
    command.downgrade(alembic_config(url), "0002")
    assert "messages" not in _outbox_columns(url)
    _sql(
        url,
        "INSERT INTO outbox (queue, body, priority, created_at)"
        " VALUES ('jobs.created', '{}', 5, '2026-11-29 00:00:00')",
    )
    upgrade(url)
    assert _sql(url, "SELECT messages FROM outbox") == [(1,)]  # an older row holds one
    command.downgrade(alembic_config(url), "base")
    upgrade(url)


def test_an_outbox_rows_id_is_never_given_again(empty_database: str) -> None:
    url = empty_database
    row = (
        "INSERT INTO outbox (queue, body, priority, created_at)"
        " VALUES ('jobs.created', '{}', 5, '2026-11-29 00:00:00')"
    )
    command.upgrade(alembic_config(url), "0004")
    _sql(url, row)  # a row waiting when the upgrade runs keeps its id
    upgrade(url)
    [(kept,)] = _sql(url, "SELECT id FROM outbox")
    _sql(url, "DELETE FROM outbox")  # relayed
    _sql(url, row)
    [(new,)] = _sql(url, "SELECT id FROM outbox")
    assert new > kept
    command.downgrade(alembic_config(url), "0004")
    assert _sql(url, "SELECT id FROM outbox") == [(new,)]


def test_the_revisions_services_know_are_the_migrations() -> None:
    # Services check a database against these constants without importing Alembic.
    scripts = ScriptDirectory.from_config(alembic_config("sqlite://"))
    chain = [script.revision for script in scripts.walk_revisions()]
    assert tuple(reversed(chain)) == REVISIONS
    assert scripts.get_current_head() == HEAD


def _required(url: str) -> str | None:
    """What a service starting on ``url`` says: its refusal, or None when it starts."""

    async def run() -> str | None:
        engine = create_engine(url)
        try:
            await require_migrated(engine)
        except SettingsError as exc:
            return str(exc)
        finally:
            await engine.dispose()
        return None

    return asyncio.run(run())


def test_a_service_starts_only_on_a_database_migrated_to_its_revision_or_later(
    empty_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = empty_database
    assert _required(url) == NOT_MIGRATED
    command.upgrade(alembic_config(url), "0004")
    assert _required(url) == (
        f"CLOUDTASK_DATABASE_URL: the database's schema is at revision 0004, this version needs "
        f"{HEAD}; run `cloudtask migrate` first"
    )
    upgrade(url)
    assert _required(url) is None
    assert not caplog.records
    # A later version's revision (a service rolled back after migrating): started, and logged.
    _sql(url, "UPDATE alembic_version SET version_num = '9001'")
    assert _required(url) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"the database's schema is at revision 9001, newer than this version's {HEAD}: "
        "a later version migrated it"
    ]
    _sql(url, "DELETE FROM alembic_version")  # migrated, then downgraded to nothing
    assert _required(url) == NOT_MIGRATED
