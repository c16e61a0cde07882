"""Dependencies of the routes, as ``Annotated`` aliases."""

from typing import Annotated

from fastapi import Depends, Request

from cloudtask.api.context import ApiContext
from cloudtask.api.errors import unauthorized
from cloudtask.api.security import InvalidToken, Principal
from cloudtask.db import session
from cloudtask.db.queries import users as users_q
from cloudtask.errors import UnknownUser


async def _context(request: Request) -> ApiContext:
    # async on purpose, as every dependency here: FastAPI runs a plain `def` dependency in its
    # thread pool, a thread hop on every request.
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(_context)]


async def authenticated(request: Request) -> Principal:
    # The header is read here rather than through FastAPI's HTTPBearer dependency: one
    # dependency instead of three on every request. The OpenAPI document declares the scheme
    # (see openapi.py).
    sent = request.headers.getlist("authorization")
    if len(sent) > 1:  # which one would count is anyone's guess: neither does
        raise unauthorized("Send one Authorization header")
    scheme, _, token = (sent[0] if sent else "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("A Bearer token is required")
    context: ApiContext = request.app.state.context
    try:
        principal = context.tokens.verify(token.strip())
    except InvalidToken:
        raise unauthorized("The token is invalid or expired") from None
    # A well-signed token may name a user that no longer exists (removed by an operator). Each
    # process asks the database about a user at most once a minute (see KnownUsers); in between
    # the check is a dictionary lookup.
    if principal.user_id not in context.known_users:
        async with session.reading(context.db) as conn:
            if not await users_q.exists(conn, principal.user_id):
                raise UnknownUser
        context.known_users.add(principal.user_id)
    return principal


CurrentUser = Annotated[Principal, Depends(authenticated)]
