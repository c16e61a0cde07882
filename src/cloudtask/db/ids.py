"""Ids for new jobs: version 7 UUIDs, which begin with their creation time in milliseconds.

Every job is found by its id through a unique index on ``jobs.id``. Random (version 4) ids put
each new entry on a random leaf page of that index: once the table is large, a thousand-job batch
touches leaves all over it, many of them read in from outside PostgreSQL's cache, and after each
checkpoint every leaf it touches is written to the WAL whole. Time-ordered ids land on the
index's right edge, as ``seq`` does. The rest of a version 7 id is random, and a job's id tells
no more than its ``createdAt``.
"""

from uuid import UUID

from uuid_utils.compat import uuid7


def new_job_id() -> UUID:
    """A fresh job id (a standard :class:`uuid.UUID`, as orjson and asyncpg expect)."""
    return uuid7()
