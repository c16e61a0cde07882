"""Dependencies of the routes, as ``Annotated`` aliases."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloudtask.api.context import ApiContext
from cloudtask.api.errors import unauthorized
from cloudtask.api.security import InvalidToken, Principal

_bearer = HTTPBearer(auto_error=False, description="The JWT from /auth/register or /auth/login.")


async def _context(request: Request) -> ApiContext:
    # async on purpose, as every dependency here: FastAPI runs a plain `def` dependency in its
    # thread pool, a thread hop on every request.
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(_context)]


async def _principal(
    context: Context,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None:
        raise unauthorized("A Bearer token is required")
    try:
        return context.tokens.verify(credentials.credentials)
    except InvalidToken:
        raise unauthorized("The token is invalid or expired") from None


CurrentUser = Annotated[Principal, Depends(_principal)]
