"""RabbitMQ queue names, kept from the original system so that its clients still work."""

from typing import Final

JOBS_CREATED: Final = "jobs.created"
JOBS_STARTED: Final = "jobs.started"
JOBS_COMPLETED: Final = "jobs.completed"
JOBS_DEAD: Final = "jobs.dead"

ALL_QUEUES: Final = (JOBS_CREATED, JOBS_STARTED, JOBS_COMPLETED, JOBS_DEAD)
MAX_PRIORITY: Final = 9
"""``x-max-priority`` of ``jobs.created``: message priority is the job's priority, 0-9."""
