"""Names in the key-value store that services use to signal each other.

The worker never reads the database, so cancellations reach it here, and its liveness (a lease
per running attempt, renewed by heartbeats) is published here for the scheduler to watch.
"""

from typing import Final
from uuid import UUID

CANCEL_CHANNEL: Final = "cloudtask:cancel"
"""Pub/sub channel: the id of a job whose cancellation was requested."""

CANCEL_TTL: Final = 7 * 24 * 3600.0
"""How long a cancel flag outlives the request, so a copy still queued is skipped."""


def cancel_key(job_id: UUID | str) -> str:
    return f"cloudtask:cancelled:{job_id}"


def lease_key(job_id: UUID | str, attempt: int) -> str:
    """Held by the worker running this attempt, renewed while it runs."""
    return f"cloudtask:running:{job_id}:{attempt}"


REQUEUED: Final = b"requeued"
"""Left in the lease of an attempt put back on the queue: waiting there, not lost, not held."""


HELD_CUT: Final = b"#cut"
"""Ends the value of a lease whose worker lost the connection its delivery came on and still
runs (or reports) the attempt: RabbitMQ hands the delivery out again, and the worker that gets it
waits for this one's report rather than run the attempt a second time."""

HELD_ANNOUNCED: Final = b"#announced"
"""As ``HELD_CUT``, for an attempt whose ``jobs.started`` was confirmed: the job is RUNNING and
the scheduler watches its lease, so the delivery handed out again is a copy."""


def reported_key(job_id: UUID | str, attempt: int) -> str:
    """Set by a worker that reported this attempt but could not acknowledge its delivery (the
    connection went first): RabbitMQ delivers it again, and the worker that gets it drops it
    rather than run a finished attempt again."""
    return f"cloudtask:reported:{job_id}:{attempt}"


REPORTED_MARK_TTL: Final = 3600.0
"""How long a reported mark is kept: a delivery put back by a lost connection goes back to the
head of its queue, and is delivered again within seconds, or once a worker returns."""


def lost_key(job_id: UUID | str, attempt: int) -> str:
    """Set by the scheduler (to ``LOST``) on an attempt it hands out again because its worker
    vanished: the worker that takes it up runs it alone (see ``worker.gate``), and writes its
    own lease's value there, so that a copy of the hand-out is known for one."""
    return f"cloudtask:lost:{job_id}:{attempt}"


LOST: Final = b"1"
"""The scheduler's lost mark, before a worker took the attempt up."""

LOST_MARK_TTL: Final = 24 * 3600.0
"""How long a lost mark is kept: the attempt may wait that long in the queue."""


def handler_key(job_type: str) -> str:
    """Held while some running worker has a handler for ``job_type``, renewed by its heartbeat:
    a worker without one gives such a job back rather than failing it."""
    return f"cloudtask:handlers:{job_type}"


SCHEDULER_LEASE: Final = "cloudtask:scheduler"
"""Leadership lease among schedulers."""

STORE_MARK: Final = "cloudtask:store"
"""Written by the schedulers, without a TTL, holding when it was written: its absence says the
store lost its keys (restarted without persistence, flushed, or failed over to a replica without
them), workers' leases with them, until the workers' heartbeats write them again."""
