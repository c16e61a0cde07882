"""Ids in paths: a job's or schedule's id as the API writes it, or nothing.

``uuid.UUID`` also reads ``{…}``, ``urn:uuid:…`` and the 32 digits without hyphens; the API
answers such spellings with the 404 of a malformed id, so that each resource has one address.
An id holding a slash sent encoded (``%2F``) is kept whole, to be answered the same way
(``with_encoded_slashes_kept``).
"""

import re
import uuid
from urllib.parse import unquote

from starlette.types import Scope

from cloudtask.api.errors import not_found

_ENCODED_SLASH = re.compile(rb"%2[fF]")
_CANONICAL = re.compile(r"[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def path_id(raw: str, what: str) -> uuid.UUID:
    """The id ``raw`` names, or the 404 of an unknown ``what`` if it is not one."""
    if _CANONICAL.fullmatch(raw) is None:
        raise not_found(what)
    return uuid.UUID(raw)


def with_encoded_slashes_kept(scope: Scope) -> Scope:
    """``scope`` with a slash sent encoded (``%2F``) kept inside its path segment.

    The server decodes it into the path, where it splits the segment: ``/jobs/a%2Fb`` would be
    routed as ``/jobs/a/b``, a path no route takes, and answered as one rather than as the
    malformed id it is. Requests without one, nearly all, are left as they are."""
    raw = scope.get("raw_path")
    if raw is None or _ENCODED_SLASH.search(raw) is None:
        return scope
    raw = raw.split(b"?", 1)[0]  # some clients' raw_path holds the query too
    segments = raw.decode("latin-1").split("/")
    return {**scope, "path": "/".join(unquote(part).replace("/", "%2F") for part in segments)}
