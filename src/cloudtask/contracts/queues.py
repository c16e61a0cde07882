"""RabbitMQ queue names, kept from the original system so that its clients still work."""

from typing import Final

JOBS_CREATED: Final = "jobs.created"
JOBS_STARTED: Final = "jobs.started"
JOBS_COMPLETED: Final = "jobs.completed"
JOBS_DEAD: Final = "jobs.dead"

ALL_QUEUES: Final = (JOBS_CREATED, JOBS_STARTED, JOBS_COMPLETED, JOBS_DEAD)
MAX_PRIORITY: Final = 9
"""``x-max-priority`` of ``jobs.created``: message priority is the job's priority, 0-9."""
REQUEUED_HEADER: Final = "x-requeued"
"""On a ``jobs.created`` message put back on the queue (a worker stopping, ``cloudtask dev``
starting): the worker takes the attempt's lease whoever held it, as for a redelivery, instead of
skipping the message as a copy (see ``worker.leases``)."""
