"""Ids in paths: a job's or schedule's id as the API writes it, or nothing.

``uuid.UUID`` also reads ``{…}``, ``urn:uuid:…`` and the 32 digits without hyphens; the API
answers such spellings with the 404 of a malformed id, so that each resource has one address.
"""

import re
import uuid

from cloudtask.api.errors import not_found

_CANONICAL = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def path_id(raw: str, what: str) -> uuid.UUID:
    """The id ``raw`` names, or the 404 of an unknown ``what`` if it is not one."""
    if _CANONICAL.fullmatch(raw) is None:
        raise not_found(what)
    return uuid.UUID(raw)
