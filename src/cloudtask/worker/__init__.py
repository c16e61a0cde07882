"""The worker: hears jobs on ``jobs.created``, runs their handlers, reports ``jobs.started`` and
``jobs.completed``. It never touches the database."""
