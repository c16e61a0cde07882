"""The scheduler: turns time into work. Due jobs (delayed, or retried after a backoff) and cron
firings become messages on ``jobs.created``; abandoned and hung attempts are recovered."""
