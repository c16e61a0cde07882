"""The shapes CloudTask's parts agree on: statuses, queue names, messages and API schemas.

Nothing here performs I/O or imports any other part of CloudTask.
"""
