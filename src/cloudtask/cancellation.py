"""Stopping background tasks for certain.

A task's cancellation can be swallowed by a library it is awaiting at that moment (seen with a
database transaction committing while the scheduler stopped: the task went on to its next round
and the process never exited). So a task is cancelled again until it has ended.
"""

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable["asyncio.Future[Any]"], *, every: float = 0.5) -> None:
    """Cancel ``tasks`` and return once all have ended, cancelling again every ``every`` s."""
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=every)
    # Retrieve how each ended, so that none is reported as an exception never retrieved.
    await asyncio.gather(*tasks, return_exceptions=True)
