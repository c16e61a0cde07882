"""Keeping label values bounded: job types are chosen by users, so only so many get their own."""

import threading

from cloudtask.contracts.job_types import BUILTIN_PAYLOADS


class BoundedLabel:
    """The first ``limit`` distinct values pass (built-in types always); later ones: ``other``."""

    def __init__(self, limit: int = 50) -> None:
        self._limit = limit
        self._seen: set[str] = set(BUILTIN_PAYLOADS)
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit + len(BUILTIN_PAYLOADS):
                self._seen.add(value)
                return value
        return "other"
