"""Dependencies of the routes, as ``Annotated`` aliases."""

from typing import Annotated

from fastapi import Depends, Request

from cloudtask.api.context import ApiContext
from cloudtask.api.errors import unauthorized
from cloudtask.api.security import InvalidToken, Principal


async def _context(request: Request) -> ApiContext:
    # async on purpose, as every dependency here: FastAPI runs a plain `def` dependency in its
    # thread pool, a thread hop on every request.
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(_context)]


async def _principal(request: Request) -> Principal:
    # The header is read here rather than through FastAPI's HTTPBearer dependency: one
    # dependency instead of three on every request. The OpenAPI document declares the scheme
    # (see openapi.py).
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("A Bearer token is required")
    context: ApiContext = request.app.state.context
    try:
        return context.tokens.verify(token.strip())
    except InvalidToken:
        raise unauthorized("The token is invalid or expired") from None


CurrentUser = Annotated[Principal, Depends(_principal)]
