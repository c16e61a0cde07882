"""The job types built into every worker: ``sleep``, ``echo``, ``email`` and ``http``."""

from pathlib import Path

from cloudtask.contracts import job_types
from cloudtask.settings import Settings
from cloudtask.worker.handlers import echo, email, http, sleep
from cloudtask.worker.registry import HandlerRegistry


def builtin_handlers(settings: Settings, *, mail_dir: Path | None = None) -> HandlerRegistry:
    """The built-in handlers, configured. ``mail_dir`` (``cloudtask dev`` only) is where mail goes
    when no SMTP server is configured."""
    registry = HandlerRegistry()
    registry.register(job_types.SLEEP, sleep.run)
    registry.register(job_types.ECHO, echo.run)
    registry.register(job_types.EMAIL, email.EmailHandler(settings, mail_dir))
    registry.register(job_types.HTTP, http.HttpHandler(settings))
    return registry
