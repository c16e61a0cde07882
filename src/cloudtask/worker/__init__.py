"""The worker: hears jobs on ``jobs.created``, runs their handlers, reports ``jobs.started`` (for
a job still running after a moment) and ``jobs.completed``. It never touches the database."""
