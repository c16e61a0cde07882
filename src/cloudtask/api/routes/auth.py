"""``/auth``: register and log in; both answer with a token."""

import logging
import uuid

from fastapi import APIRouter, status

from cloudtask.api.deps import Context
from cloudtask.api.errors import ApiError
from cloudtask.api.jsonbody import StrictJSONRoute
from cloudtask.api.login_gate import LoginThrottled
from cloudtask.api.openapi import error_responses
from cloudtask.api.responses import JSONBytesResponse
from cloudtask.contracts.api import AuthResponse, Credentials, Registration
from cloudtask.contracts.timefmt import utcnow
from cloudtask.db import session
from cloudtask.db.queries import users as users_q
from cloudtask.errors import AlreadyExists

log = logging.getLogger(__name__)
router = APIRouter(prefix="/auth", tags=["auth"], route_class=StrictJSONRoute)


def _auth_response(
    context: Context, user_id: uuid.UUID, email: str, code: int
) -> JSONBytesResponse:
    token = context.tokens.issue(user_id, email)
    context.known_users.add(user_id)  # the user exists: no need to ask on their first request
    body = {
        "token": token,
        "accessToken": token,
        "tokenType": "Bearer",
        "expiresIn": context.tokens.ttl_seconds,
    }
    return JSONBytesResponse(body, status_code=code)


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    response_model=AuthResponse,
    responses=error_responses(400, 409),
    summary="Create an account and get a token",
)
async def register(body: Registration, context: Context) -> JSONBytesResponse:
    password_hash = await context.passwords.hash(body.password)
    user_id = uuid.uuid4()
    try:
        async with session.transaction(context.db) as conn:
            await users_q.create_user(
                conn, user_id=user_id, email=body.email, password_hash=password_hash, now=utcnow()
            )
    except AlreadyExists:
        raise ApiError(409, "Email already registered") from None
    log.info("user registered", extra={"action": "user.registered", "userId": str(user_id)})
    return _auth_response(context, user_id, body.email, status.HTTP_201_CREATED)


@router.post(
    "/login",
    response_model=AuthResponse,
    responses=error_responses(
        400,
        401,
        429,
        described={401: "`Invalid credentials`: an unknown email or a wrong password alike."},
    ),
    summary="Exchange an email and password for a token",
)
async def login(body: Credentials, context: Context) -> JSONBytesResponse:
    try:
        async with context.logins.attempt(users_q.email_key(body.email)) as attempt:
            async with session.reading(context.db) as conn:
                user = await users_q.find_by_email(conn, body.email)
            hashed = user.password_hash if user else None
            attempt.failed = not await context.passwords.verify(body.password, hashed)
    except LoginThrottled as throttled:
        context.metrics.logins.labels("throttled").inc()
        raise ApiError(
            429,
            "Too many failed login attempts; try again later",
            headers={"Retry-After": str(throttled.retry_after)},
        ) from None
    if attempt.failed or user is None:
        context.metrics.logins.labels("invalid").inc()
        raise ApiError(401, "Invalid credentials", headers={"WWW-Authenticate": "Bearer"})
    context.metrics.logins.labels("ok").inc()
    return _auth_response(context, user.id, user.email, status.HTTP_200_OK)
