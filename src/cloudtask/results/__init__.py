"""The results-processor: persists the workers' ``jobs.started`` and ``jobs.completed`` events."""
