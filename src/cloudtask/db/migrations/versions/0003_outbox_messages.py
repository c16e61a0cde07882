"""An outbox row may hold several messages: the ones committed together for one queue and priority.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Rows written before hold one message each, as the default says.
    op.add_column(
        "outbox",
        sa.Column("messages", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )


def downgrade() -> None:
    # Older code would publish a row of several messages as one malformed message.
    grouped = op.get_bind().execute(sa.text("SELECT count(*) FROM outbox WHERE messages > 1"))
    if count := grouped.scalar_one():
        raise RuntimeError(
            f"{count} outbox rows hold several messages each: let this version's services "
            "publish them (the outbox drains within seconds) before downgrading"
        )
    with op.batch_alter_table("outbox") as batch:  # SQLite rebuilds the table
        batch.drop_column("messages")
