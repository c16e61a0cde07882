"""``Idempotency-Key``: the same key from the same user within 24 hours replays the first answer.

A key is claimed atomically (set-if-absent) while its request runs, then holds the answer. The
request is identified by a fingerprint of its method, path and body (parsed, so whitespace and key
order do not matter): the same key with another body is a 422; the same key while the first request
still runs is a 409. A request is refused (400, 401, 413) before it claims anything; one whose
write finds its user gone releases its key.

The claim already holds what the request is about to store and answer, and says until when it
runs (renewed while it does). A claim past that time was left by a process that died, maybe
after its commit: the retry then looks for what the claim names, and replays the answer if it
is stored, or takes the key over if not. So does a retry after a request whose commit failed
without saying whether it was made (its answer kept as ``unsure``).
"""

import asyncio
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import Header
from pydantic import AfterValidator, WithJsonSchema

from cloudtask.api.errors import ApiError
from cloudtask.contracts import jsoncodec
from cloudtask.errors import KVUnavailable
from cloudtask.kv.base import KV

REPLAY_TTL = 24 * 3600.0
# A claim not renewed for this long was left by a process that died: a retry then looks for what
# it names. A request still running renews it every third of it (see ``hold``).
IN_FLIGHT_TTL = 60.0
MAX_KEY_LENGTH = 255


def read_key(header: str) -> str:
    """The key an ``Idempotency-Key`` header holds, as Starlette gives it (its bytes as Latin-1):
    without the spaces and tabs around it, which HTTP does not count as part of a value (servers
    strip them before it, not always after it, and a retry's client may add or drop one), and
    in UTF-8 where its bytes are, so that its length is counted in characters. Raises
    ``ValueError`` for a key of no character or more than ``MAX_KEY_LENGTH``."""
    # Bytes that are not UTF-8 are kept as they came (surrogate escapes), each one a character,
    # so that no two byte strings read as one key.
    key = header.encode("latin-1").decode("utf-8", "surrogateescape").strip(" \t")
    if not key:
        raise ValueError("String should have at least 1 character")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"String should have at most {MAX_KEY_LENGTH} characters")
    return key


_Key = Annotated[
    str,
    AfterValidator(read_key),  # its length in characters, the spaces around it not counted
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH}),
]
IdempotencyKey = Annotated[
    _Key | None,
    Header(
        alias="Idempotency-Key",
        description="Replays the first answer for the same key and body within 24 hours.",
    ),
]
"""The header, as a route that creates something takes it."""


@dataclass(frozen=True)
class Created:
    """What a request stores, so that a retry can look for it: ``kind`` ``"job"`` (the first of
    a batch: all or none) or ``"schedule"``, and its id."""

    kind: str
    id: str


@dataclass(frozen=True)
class Intent:
    """What a request will store (``made``) and answer, known before it writes."""

    made: Created
    status: int
    body: bytes


@dataclass(frozen=True)
class Replay:
    status: int
    body: bytes
    unsure: Created | None = None
    """Set when the first request's commit may have failed: replayed only if this was stored."""
    record: bytes = b""
    """The record as kept, for :meth:`IdempotencyStore.take_over`."""


def fingerprint(method: str, path: str, body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


class IdempotencyStore:
    def __init__(self, kv: KV) -> None:
        self._kv = kv

    @staticmethod
    def _key(user_id: UUID, key: str) -> str:
        # The key's bytes, hashed as the versions that read them as Latin-1 hashed them, so that
        # an answer they kept is replayed by this one within its 24 hours.
        sent = key.encode("utf-8", "surrogateescape").decode("latin-1")
        digest = hashlib.sha256(sent.encode()).hexdigest()
        return f"idem:{user_id}:{digest}"

    @staticmethod
    def _claim(print_: str, intent: Intent) -> bytes:
        """A claim of this request's, running until ``IN_FLIGHT_TTL`` from now. Each request's
        is its own (``by``): two equal claims would both be taken."""
        record = {
            "state": "running",
            "fingerprint": print_,
            "by": uuid4().hex,
            "until": time.time() + IN_FLIGHT_TTL,
            "unsure": {"kind": intent.made.kind, "id": intent.made.id},
            "status": intent.status,
            "body": intent.body.decode(),
        }
        return jsoncodec.dumps(record)

    async def begin(self, user_id: UUID, key: str, print_: str, intent: Intent) -> Replay | bytes:
        """Claim ``key`` for this request (the claim, to :meth:`hold`), or return the answer
        to replay, maybe unsure; raises 409 or 422."""
        kv_key = self._key(user_id, key)
        claim = self._claim(print_, intent)
        for _ in range(3):
            if await self._kv.set(kv_key, claim, ttl=REPLAY_TTL, only_if_absent=True):
                return claim
            stored = await self._kv.get(kv_key)
            if stored is None:
                continue  # expired between the two calls: claim it again
            record = jsoncodec.loads(stored)
            if record["fingerprint"] != print_:
                raise ApiError(
                    422, "Idempotency-Key was already used with a different request body"
                )
            if record["state"] == "running":
                # A claim without a time is an earlier version's: it lapses with its TTL.
                until = record.get("until")
                if until is None or until > time.time():
                    raise ApiError(409, "A request with this Idempotency-Key is still in progress")
                # Not renewed: its process died, before or after its commit. What it names
                # tells which (see the module's docstring).
            unsure = record.get("unsure")
            return Replay(
                int(record["status"]),
                record["body"].encode(),
                None if unsure is None else Created(unsure["kind"], unsure["id"]),
                stored,
            )
        raise ApiError(409, "A request with this Idempotency-Key is still in progress")

    async def take_over(
        self, user_id: UUID, key: str, print_: str, replay: Replay, intent: Intent
    ) -> bytes | None:
        """Claim ``key`` for this request in place of the unsure answer ``replay`` (what it
        would have stored is not there); the claim, to :meth:`hold`, or None if another retry
        took it first."""
        claim = self._claim(print_, intent)
        kv_key = self._key(user_id, key)
        taken = await self._kv.claim(kv_key, claim, ttl=REPLAY_TTL, free=replay.record)
        return claim if taken is None else None

    async def hold(self, user_id: UUID, key: str, claim: bytes) -> None:
        """Renew this request's claim until cancelled: a request may run longer than the claim
        lives (waiting for a database connection, then for its statement), and a retry must
        still find it in progress rather than take it for a dead one's."""
        kv_key = self._key(user_id, key)
        mine = jsoncodec.loads(claim)["by"]
        while True:
            await asyncio.sleep(IN_FLIGHT_TTL / 3)
            record = jsoncodec.loads(claim)
            renewed = jsoncodec.dumps({**record, "until": time.time() + IN_FLIGHT_TTL})
            with contextlib.suppress(KVUnavailable):  # the next turn tries again
                # Only while it is still this request's claim.
                holder = await self._kv.claim(kv_key, renewed, ttl=REPLAY_TTL, free=claim)
                if holder is None:
                    claim = renewed
                    continue
                held = jsoncodec.loads(holder)
                if held.get("state") != "running" or held.get("by") != mine:
                    return  # taken over (this request was taken for dead), or ended
                # A renewal of this request's whose answer was lost: it landed all the same.
                claim = holder

    async def finish(
        self,
        user_id: UUID,
        key: str,
        print_: str,
        status: int,
        body: bytes,
        *,
        unsure: Created | None = None,
    ) -> None:
        """Keep the answer; ``unsure``: the request's commit failed without saying whether it
        was made, and a retry replays the answer only if what it names was stored."""
        record: dict[str, Any] = {
            "state": "done",
            "fingerprint": print_,
            "status": status,
            "body": body.decode(),
        }
        if unsure is not None:
            record["unsure"] = {"kind": unsure.kind, "id": unsure.id}
        await self._kv.set(self._key(user_id, key), jsoncodec.dumps(record), ttl=REPLAY_TTL)

    async def release(self, user_id: UUID, key: str) -> None:
        await self._kv.delete(self._key(user_id, key))
