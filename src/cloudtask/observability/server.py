"""The small HTTP app that the worker, results-processor and scheduler serve on their own ports:
``/metrics`` (Prometheus text) and ``/health``."""

from collections.abc import Mapping, Sequence

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloudtask.observability.health import Check, health
from cloudtask.observability.metrics import ServiceMetrics, render_all


def status_app(metrics: Sequence[ServiceMetrics], checks: Mapping[str, Check]) -> Starlette:
    async def metrics_page(_request: Request) -> Response:
        return Response(render_all(metrics), media_type=CONTENT_TYPE_LATEST)

    async def health_page(_request: Request) -> Response:
        healthy, body = await health(checks)
        return JSONResponse(body, status_code=200 if healthy else 503)

    return Starlette(
        routes=[Route("/metrics", metrics_page), Route("/health", health_page)],
    )
