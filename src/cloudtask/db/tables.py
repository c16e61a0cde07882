"""The database tables. The migrations in ``migrations/versions`` create exactly these."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    Uuid,
    text,
)

from cloudtask.db.types import BigIntId, UTCDateTime

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

users = Table(
    "users",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("email", String(254), nullable=False),
    # Emails compare case-insensitively: the lower-cased form is the unique key.
    Column("email_key", String(254), nullable=False, unique=True),
    Column("password_hash", String(100), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    # seq breaks ties between jobs created in the same microsecond (a batch), in insertion order.
    Column("seq", BigIntId, primary_key=True, autoincrement=True),
    Column("id", Uuid, nullable=False, unique=True),
    Column("user_id", Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("type", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # The attempt most recently handed to the workers; events of any other attempt are stale.
    Column("dispatch_attempt", Integer, nullable=False, server_default=text("1")),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout_seconds", Float, nullable=False),
    Column("run_at", UTCDateTime, nullable=False),
    Column("result", Text),
    Column("error", Text),
    Column("schedule_id", Uuid),
    Column("cancel_requested", Boolean, nullable=False, server_default=text("false")),
    # Times this attempt was handed out again because its worker vanished.
    Column("redeliveries", Integer, nullable=False, server_default=text("0")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
)
# A user's jobs are listed newest first by (created_at, seq), the pagination cursor, alone or of
# one status or type.
Index("ix_jobs_user_id_created_at_seq", jobs.c.user_id, jobs.c.created_at, jobs.c.seq)
Index(
    "ix_jobs_user_id_status_created_at_seq",
    jobs.c.user_id,
    jobs.c.status,
    jobs.c.created_at,
    jobs.c.seq,
)
Index(
    "ix_jobs_user_id_type_created_at_seq",
    jobs.c.user_id,
    jobs.c.type,
    jobs.c.created_at,
    jobs.c.seq,
)
Index(
    "ix_jobs_due",
    jobs.c.run_at,
    postgresql_where=jobs.c.status == "SCHEDULED",
    sqlite_where=jobs.c.status == "SCHEDULED",
)
Index(
    "ix_jobs_running",
    jobs.c.started_at,
    postgresql_where=jobs.c.status == "RUNNING",
    sqlite_where=jobs.c.status == "RUNNING",
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigIntId, primary_key=True, autoincrement=True),
    Column("queue", String(64), nullable=False),
    # One message, or several as JSON Lines (see db.queries.outbox.SEPARATOR).
    Column("body", Text, nullable=False),
    Column("priority", SmallInteger, nullable=False, server_default=text("0")),
    Column("created_at", UTCDateTime, nullable=False),
    Column("messages", Integer, nullable=False, server_default=text("1")),
    # Never an id twice (migration 0005): a publisher holding a relayed row's id would take a
    # new row that got it for its own.
    sqlite_autoincrement=True,
)

schedules = Table(
    "schedules",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Uuid, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("cron", String(200), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("type", String(64), nullable=False),
    Column("payload", Text, nullable=False),
    Column("priority", SmallInteger, nullable=False),
    Column("max_attempts", Integer, nullable=False),
    Column("timeout_seconds", Float, nullable=False),
    Column("paused", Boolean, nullable=False, server_default=text("false")),
    Column("next_run_at", UTCDateTime, nullable=False),
    Column("last_run_at", UTCDateTime),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
)
Index("ix_schedules_user_id_created_at", schedules.c.user_id, schedules.c.created_at)
Index(
    "ix_schedules_due",
    schedules.c.next_run_at,
    postgresql_where=~schedules.c.paused,
    sqlite_where=~schedules.c.paused,
)

# One row per firing: the primary key is what makes a firing create its job exactly once, however
# many schedulers try.
schedule_firings = Table(
    "schedule_firings",
    metadata,
    Column(
        "schedule_id",
        Uuid,
        ForeignKey("schedules.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("fire_at", UTCDateTime, primary_key=True),
    Column("job_id", Uuid, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)
# Firings recorded more than a day ago are forgotten, a batch at a time (``forget_firings``).
Index("ix_schedule_firings_created_at", schedule_firings.c.created_at)

# The scheduler's fencing token: a new leader raises it, and a leader's writes check it, so a
# leader that was paused past its lease cannot act after another took over.
leadership = Table(
    "leadership",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("token", BigInteger, nullable=False),
    Column("holder", String(200)),
    Column("updated_at", UTCDateTime),
)
