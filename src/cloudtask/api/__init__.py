"""The job-service: the REST API (FastAPI), its error mapping, security and routes."""
