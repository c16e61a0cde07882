"""An outbox row's id is never given again, on SQLite too (``cloudtask dev``).

SQLite gives a new row of an ``INTEGER PRIMARY KEY`` table the highest id plus one, so the id of
a row just deleted (its messages relayed) came back for the next one: a publisher still holding
the old row's id then deleted the new row as its own, and the new row's messages were never sent.
``AUTOINCREMENT`` never gives an id twice. PostgreSQL's identity never did.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rebuild_outbox(*, autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # SQLite cannot alter a table's key: the table is built again with its rows (batch mode).
    with op.batch_alter_table(
        "outbox", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass


def upgrade() -> None:
    _rebuild_outbox(autoincrement=True)


def downgrade() -> None:
    _rebuild_outbox(autoincrement=False)
