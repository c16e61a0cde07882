"""Metrics (one Prometheus registry per service), health checks and the small HTTP server that
serves them for the services without an API."""
