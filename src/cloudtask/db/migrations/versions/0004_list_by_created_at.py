"""A user's jobs are listed by creation time, then insertion order, not by insertion order alone.

A job's ``createdAt`` is stamped when its request arrives and its ``seq`` when its row is written;
with batches and single submissions written side by side, the two orders differ by a fraction of
a second, and a listing "newest first" must follow the time it shows.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BY_SEQ = {
    "ix_jobs_user_id_seq": ["user_id", "seq"],
    "ix_jobs_user_id_status_seq": ["user_id", "status", "seq"],
    "ix_jobs_user_id_type_seq": ["user_id", "type", "seq"],
}
_BY_CREATED_AT = {
    "ix_jobs_user_id_created_at_seq": ["user_id", "created_at", "seq"],
    "ix_jobs_user_id_status_created_at_seq": ["user_id", "status", "created_at", "seq"],
    "ix_jobs_user_id_type_created_at_seq": ["user_id", "type", "created_at", "seq"],
}


def upgrade() -> None:
    for name, columns in _BY_CREATED_AT.items():
        op.create_index(name, "jobs", columns)
    for name in _BY_SEQ:
        op.drop_index(name, "jobs")


def downgrade() -> None:
    for name, columns in _BY_SEQ.items():
        op.create_index(name, "jobs", columns)
    for name in _BY_CREATED_AT:
        op.drop_index(name, "jobs")
