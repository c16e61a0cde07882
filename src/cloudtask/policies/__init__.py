"""Pure decisions: retry backoff, cron firing, login throttling. No I/O; imports nothing of ours."""
