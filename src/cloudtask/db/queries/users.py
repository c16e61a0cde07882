"""Queries on ``users``."""

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from cloudtask.db.tables import users
from cloudtask.errors import AlreadyExists


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: UUID
    email: str
    password_hash: str


def email_key(email: str) -> str:
    """Emails compare case-insensitively everywhere."""
    return email.lower()


async def create_user(
    conn: AsyncConnection, *, user_id: UUID, email: str, password_hash: str, now: datetime
) -> UserRecord:
    try:
        await conn.execute(
            insert(users).values(
                id=user_id,
                email=email,
                email_key=email_key(email),
                password_hash=password_hash,
                created_at=now,
            )
        )
    except IntegrityError:
        raise AlreadyExists("Email already registered") from None
    return UserRecord(user_id, email, password_hash)


async def find_by_email(conn: AsyncConnection, email: str) -> UserRecord | None:
    row = (
        await conn.execute(
            select(users.c.id, users.c.email, users.c.password_hash).where(
                users.c.email_key == email_key(email)
            )
        )
    ).first()
    return None if row is None else UserRecord(row.id, row.email, row.password_hash)


async def exists(conn: AsyncConnection, user_id: UUID) -> bool:
    row = (await conn.execute(select(users.c.id).where(users.c.id == user_id))).first()
    return row is not None
