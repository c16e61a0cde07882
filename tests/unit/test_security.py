"""Access tokens (HS256) and password hashing."""

import time
from types import SimpleNamespace
from uuid import UUID, uuid4

import jwt
import pytest

from cloudtask.api import security
from cloudtask.api.security import InvalidToken, PasswordHasher, TokenService

SECRET = "a-secret-long-enough-for-hs256-and-even-for-hs512-0123456789abcdef"
USER = UUID("6f1c2a9e-0d4b-4c5e-9a7f-1b2c3d4e5f60")


@pytest.fixture
def tokens() -> TokenService:
    return TokenService(SECRET, ttl_seconds=3600)


def claims(**overrides: object) -> dict[str, object]:
    now = int(time.time())
    return {"sub": str(USER), "email": "a@example.com", "iat": now, "exp": now + 60} | overrides


def test_an_issued_token_verifies_to_its_user(tokens: TokenService) -> None:
    token = tokens.issue(USER, "a@example.com")
    principal = tokens.verify(token)
    assert (principal.user_id, principal.email) == (USER, "a@example.com")
    assert tokens.verify(token) == principal


def test_an_issued_token_carries_whole_second_times_one_ttl_apart(tokens: TokenService) -> None:
    decoded = jwt.decode(tokens.issue(USER, "a@example.com"), SECRET, algorithms=["HS256"])
    assert set(decoded) == {"sub", "email", "iat", "exp"}
    assert decoded["sub"] == str(USER)
    assert isinstance(decoded["iat"], int) and isinstance(decoded["exp"], int)
    assert decoded["exp"] - decoded["iat"] == 3600
    assert abs(decoded["iat"] - time.time()) < 5
    assert jwt.get_unverified_header(tokens.issue(USER, "a@example.com"))["alg"] == "HS256"


def test_an_expired_token_is_refused(tokens: TokenService) -> None:
    expired = jwt.encode(claims(iat=int(time.time()) - 120, exp=int(time.time()) - 60), SECRET)
    with pytest.raises(InvalidToken):
        tokens.verify(expired)


def test_a_token_signed_with_another_key_is_refused(tokens: TokenService) -> None:
    forged = jwt.encode(claims(), "another-secret-that-is-long-enough-0123456789")
    with pytest.raises(InvalidToken):
        tokens.verify(forged)


def test_an_unsigned_token_is_refused(tokens: TokenService) -> None:
    unsigned = jwt.encode(claims(), None, algorithm="none")
    with pytest.raises(InvalidToken):
        tokens.verify(unsigned)


def test_a_token_with_another_algorithm_is_refused(tokens: TokenService) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(jwt.encode(claims(), SECRET, algorithm="HS512"))


def test_a_tampered_token_is_refused(tokens: TokenService) -> None:
    header, _, signature = tokens.issue(USER, "a@example.com").split(".")
    other = jwt.encode(claims(sub=str(uuid4())), "x" * 40).split(".")[1]
    with pytest.raises(InvalidToken):
        tokens.verify(f"{header}.{other}.{signature}")


@pytest.mark.parametrize(
    "payload",
    [
        {"sub": str(USER), "email": "a@example.com", "iat": 1},
        {"email": "a@example.com", "iat": 1, "exp": 2**40},
        {"sub": "not-a-uuid", "email": "a@example.com", "iat": 1, "exp": 2**40},
        {"sub": str(USER), "iat": 1, "exp": 2**40},
        {"sub": str(USER), "email": "a@example.com", "exp": 2**40},
        {"sub": str(USER), "email": "a@example.com", "iat": "yesterday", "exp": 2**40},
        {"sub": str(USER), "email": "a@example.com", "iat": 1.5, "exp": 2**40},
    ],
)
def test_a_token_missing_or_garbling_a_claim_is_refused(
    tokens: TokenService, payload: dict[str, object]
) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(jwt.encode(payload, SECRET))


def test_a_token_issued_by_a_host_whose_clock_runs_ahead_is_accepted(tokens: TokenService) -> None:
    # Its iat is a few seconds ahead of this host's clock; its client uses it at once.
    ahead = int(time.time()) + 5
    token = jwt.encode(claims(iat=ahead, exp=ahead + 3600), SECRET)
    assert tokens.verify(token).user_id == USER


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "Bearer x.y.z"])
def test_garbage_is_refused(tokens: TokenService, token: str) -> None:
    with pytest.raises(InvalidToken):
        tokens.verify(token)


def test_a_cached_token_is_refused_once_it_expires(
    tokens: TokenService, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tokens.issue(USER, "a@example.com")
    principal = tokens.verify(token)
    later = SimpleNamespace(time=lambda: principal.expires_at + 1.0)
    monkeypatch.setattr(security, "time", later)
    with pytest.raises(InvalidToken, match="expired"):
        tokens.verify(token)


def test_a_refused_token_is_not_cached_as_valid(tokens: TokenService) -> None:
    forged = jwt.encode(claims(), "another-secret-that-is-long-enough-0123456789")
    for _ in range(2):
        with pytest.raises(InvalidToken):
            tokens.verify(forged)


def test_tokens_still_verify_when_the_cache_is_full() -> None:
    small = TokenService(SECRET, ttl_seconds=3600, cache_size=2)
    users = [uuid4() for _ in range(5)]
    issued = [small.issue(user, f"{user}@example.com") for user in users]
    for _ in range(2):
        assert [small.verify(token).user_id for token in issued] == users


@pytest.fixture
def hasher() -> PasswordHasher:
    return PasswordHasher(rounds=4)


async def test_the_right_password_verifies_and_a_wrong_one_does_not(
    hasher: PasswordHasher,
) -> None:
    hashed = await hasher.hash("correct-horse")
    assert hashed.startswith("$2b$04$")
    assert await hasher.verify("correct-horse", hashed) is True
    assert await hasher.verify("correct-horsf", hashed) is False
    assert await hasher.verify("", hashed) is False


async def test_hashing_the_same_password_twice_gives_different_hashes(
    hasher: PasswordHasher,
) -> None:
    assert await hasher.hash("correct-horse") != await hasher.hash("correct-horse")


async def test_long_four_byte_unicode_passwords_work_and_every_character_counts(
    hasher: PasswordHasher,
) -> None:
    password = "𝄞" * 128
    assert len(password.encode()) == 512
    hashed = await hasher.hash(password)
    assert await hasher.verify(password, hashed) is True
    assert await hasher.verify("𝄞" * 127 + "🎉", hashed) is False
    assert await hasher.verify("𝄞" * 127, hashed) is False


async def test_an_unknown_user_or_a_malformed_hash_never_verifies(hasher: PasswordHasher) -> None:
    assert await hasher.verify("correct-horse", None) is False
    assert await hasher.verify("correct-horse", "not-a-bcrypt-hash") is False
