"""Job statuses and which of them are final."""

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
CANCELLABLE_STATUSES = frozenset({JobStatus.PENDING, JobStatus.SCHEDULED, JobStatus.RUNNING})
RETRYABLE_STATUSES = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})
