"""Cron firings are found by when they were recorded, to be forgotten a day later.

The leading scheduler deletes firings recorded more than a day ago, a batch at a time; without
this index each batch would read the whole table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_schedule_firings_created_at", "schedule_firings", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_schedule_firings_created_at", "schedule_firings")
