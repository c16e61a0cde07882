"""The schema revisions this version of CloudTask knows, and where a database stands against them.

Services check a database with one query at start and in their health check, without importing
Alembic; a test keeps these constants equal to the migrations.
"""

import enum

from sqlalchemy import text

# Oldest first; the last is the schema this version's queries are written for.
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006")
HEAD = REVISIONS[-1]

# Alembic's own record of the database's revision (one row, absent before the first migration).
REVISION_QUERY = text("SELECT version_num FROM alembic_version")


class Schema(enum.Enum):
    CURRENT = "current"
    # Migrated, but not to this version's revision: queries may need what is missing.
    OLDER = "older"
    # Migrated by a later version. It may have changed what this version reads, but refusing
    # would stop a service rolled back after a migration from starting at all: it starts, and
    # says so in its log.
    NEWER = "newer"


def is_later(revision: str) -> bool:
    """Whether ``revision`` is one a later version of CloudTask would write (they are numbered:
    0001, 0002, ...), rather than another program's."""
    return (
        len(revision) == len(HEAD)
        and revision.isascii()
        and revision.isdigit()
        and (revision > HEAD)
    )


def schema_of(revision: str | None) -> Schema:
    if revision == HEAD:
        return Schema.CURRENT
    if revision is None or revision in REVISIONS:
        return Schema.OLDER
    return Schema.NEWER
