"""Passwords (bcrypt, off the event loop) and access tokens (HS256 JWTs).

bcrypt reads at most 72 bytes, and a password may be 128 characters of up to four bytes each, so
the password is first reduced to a fixed 44-byte SHA-256 digest (base64, so no NUL bytes) and that
is what bcrypt hashes: every character counts and no input is refused.
"""

import asyncio
import base64
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from uuid import UUID

import bcrypt
import jwt


def _prehash(password: str) -> bytes:
    return base64.b64encode(hashlib.sha256(password.encode()).digest())


class PasswordHasher:
    def __init__(self, rounds: int = 12) -> None:
        self._rounds = rounds
        self._dummy: bytes | None = None

    def hash_sync(self, password: str) -> str:
        return bcrypt.hashpw(_prehash(password), bcrypt.gensalt(self._rounds)).decode()

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hash_sync, password)

    async def verify(self, password: str, hashed: str | None) -> bool:
        """Check ``password``; with ``hashed=None`` (no such user) spend the same time and fail,
        so that response times do not tell which emails are registered."""
        if hashed is None:
            if self._dummy is None:
                self._dummy = (await self.hash("not-a-password")).encode()
            await asyncio.to_thread(bcrypt.checkpw, _prehash(password), self._dummy)
            return False
        try:
            return await asyncio.to_thread(bcrypt.checkpw, _prehash(password), hashed.encode())
        except ValueError:
            return False


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for."""

    user_id: UUID
    email: str
    expires_at: int


class InvalidToken(Exception):
    """The token is missing, malformed, forged or expired."""


class TokenService:
    """Issues and verifies HS256 tokens.

    Verified tokens are cached (bounded, until they expire): a client sends the same token on every
    request, and the cache turns the HMAC check and JSON decoding into a dictionary lookup.
    """

    ALGORITHM = "HS256"

    def __init__(self, secret: str, ttl_seconds: int, *, cache_size: int = 10_000) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size

    def issue(self, user_id: UUID, email: str) -> str:
        now = int(time.time())
        claims = {"sub": str(user_id), "email": email, "iat": now, "exp": now + self.ttl_seconds}
        return jwt.encode(claims, self._secret, algorithm=self.ALGORITHM)

    def verify(self, token: str) -> Principal:
        now = time.time()
        principal = self._cache.get(token)
        if principal is None:
            principal = self._decode(token)
            self._cache[token] = principal
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if principal.expires_at <= now:
            self._cache.pop(token, None)
            raise InvalidToken("token expired")
        return principal

    def _decode(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self.ALGORITHM],
                # iat is not checked against this host's clock: another api host, whose clock
                # runs a little ahead, issues tokens "from the future" that its client uses at
                # once, anywhere. exp is what bounds a token, and it is checked.
                options={"require": ["sub", "exp", "iat"], "verify_iat": False},
            )
            user_id = UUID(str(claims["sub"]))
            email = claims.get("email")
            expires_at = claims["exp"]
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            raise InvalidToken("invalid token") from None
        if not (
            isinstance(email, str)
            and isinstance(expires_at, int)
            and isinstance(claims["iat"], int)
        ):
            raise InvalidToken("invalid token")
        return Principal(user_id, email, expires_at)
