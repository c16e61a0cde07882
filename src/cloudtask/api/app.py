"""The app factory: ``create_app(settings, db=…, broker=…, kv=…)``.

The back ends are built and started by the caller (``cli.py`` or ``dev.py``) and only used here;
the app's lifespan runs the outbox publisher and relay, which belong to the job-service.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import Receive, Scope, Send

from cloudtask.api import errors, openapi
from cloudtask.api.context import ApiContext
from cloudtask.api.group_commit import GroupCommit
from cloudtask.api.idempotency import IdempotencyStore
from cloudtask.api.login_gate import LoginGate
from cloudtask.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from cloudtask.api.path_ids import with_encoded_slashes_kept
from cloudtask.api.routes import actuator, auth, jobs, schedules
from cloudtask.api.security import PasswordHasher, TokenService
from cloudtask.api.submit_lane import SubmitLane
from cloudtask.broker.base import Broker
from cloudtask.kv.base import KV
from cloudtask.observability.metrics import ApiMetrics, ServiceMetrics
from cloudtask.outbox import OutboxPublisher
from cloudtask.policies.login_throttle import LoginThrottle
from cloudtask.settings import Settings

DESCRIPTION = """CloudTask's job-service: register, get a token, submit jobs and follow them.

Every error, 4xx and 5xx, has the body `ErrorBody`. Times are RFC 3339 UTC; JSON types are
strict."""


class CloudTaskApp(FastAPI):
    """FastAPI with ``POST /jobs`` answered at the door when all is well (``submit_lane``), and
    minus one habit: after answering an unexpected error with a 500 (logged by ``errors``),
    Starlette raises it again to the server, which then drops the keep-alive connection, so the
    client's next request on it fails. Here the exception ends with the 500."""

    submit_lane: SubmitLane | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        scope = with_encoded_slashes_kept(scope)
        try:
            with contextlib.suppress(Exception):
                lane = self.submit_lane
                if lane is not None and lane.takes(scope):
                    await lane(scope, receive, send)
                else:
                    await super().__call__(scope, receive, send)
        except asyncio.CancelledError:
            # The server cancels the requests still running when its graceful shutdown ends
            # (a client sending its body slowly, say), then answers them itself with a 500 in
            # plain text and logs a traceback. Answered here, in the error body, unless their
            # answer had begun (the server then refuses a second start): the request ends.
            # (A request cancelled with an Idempotency-Key leaves its answer for a retry to
            # replay if what it stores was committed: see submission.idempotent.)
            try:
                await errors.shutting_down(scope, send)
            except RuntimeError:
                raise asyncio.CancelledError from None

    async def full(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app as FastAPI builds it: every middleware, the router, the routes."""
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    *,
    db: AsyncEngine,
    broker: Broker,
    kv: KV,
    jwt_secret: str | None = None,
    extra_metrics: Sequence[ServiceMetrics] = (),
) -> CloudTaskApp:
    secret = jwt_secret or (settings.jwt_secret.get_secret_value() if settings.jwt_secret else "")
    metrics = ApiMetrics()
    publisher = OutboxPublisher(
        db,
        broker,
        relay_after=settings.outbox_relay_after_seconds,
        on_published=metrics.outbox_published.inc,
    )
    context = ApiContext(
        settings=settings,
        db=db,
        broker=broker,
        kv=kv,
        outbox=publisher,
        group_commit=GroupCommit(db, publisher),
        tokens=TokenService(secret, settings.jwt_ttl_seconds),
        passwords=PasswordHasher(settings.bcrypt_rounds),
        idempotency=IdempotencyStore(kv),
        logins=LoginGate(kv, LoginThrottle()),
        metrics=metrics,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        context.group_commit.start()
        tasks = [
            asyncio.create_task(publisher.run(), name="outbox-publisher"),
            asyncio.create_task(publisher.run_relay(), name="outbox-relay"),
        ]
        try:
            yield
        finally:
            await context.group_commit.stop()
            await publisher.drain()
            publisher.stop()
            _, stuck = await asyncio.wait(tasks, timeout=5)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    app = CloudTaskApp(
        title="CloudTask",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,
    )
    app.state.context = context
    app.state.extra_metrics = list(extra_metrics)
    errors.install(app)
    openapi.install(app)
    for router in (auth.router, jobs.router, schedules.router, actuator.router):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the 413s too
    app.submit_lane = SubmitLane(context, app.full)
    return app
