"""CloudTask: a distributed job-processing system.

The public API for job authors is :func:`job_handler`, which registers a Python function as the
handler of a job type; ``cloudtask worker --import yourmodule`` loads the module that holds it.
"""

from cloudtask.errors import PermanentFailure
from cloudtask.worker.registry import job_handler

__all__ = ["PermanentFailure", "job_handler"]
__version__ = "0.1.0"
