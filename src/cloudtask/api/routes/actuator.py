"""``/actuator``: health and Prometheus metrics, as the original job-service served them."""

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from cloudtask.api.deps import Context
from cloudtask.api.responses import JSONBytesResponse
from cloudtask.contracts.api import Health
from cloudtask.observability import shared_values
from cloudtask.observability.health import health, standard_checks
from cloudtask.observability.metrics import render_all

router = APIRouter(prefix="/actuator", tags=["operations"])


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is down."}},
    summary="Health of the API and each dependency",
)
async def actuator_health(context: Context) -> Response:
    healthy, body = await health(standard_checks(context.db, context.broker, context.kv))
    return JSONBytesResponse(body, status_code=200 if healthy else 503)


@router.get(
    "/prometheus",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
    summary="Metrics in the Prometheus text format",
)
async def actuator_prometheus(request: Request, context: Context) -> Response:
    if shared_values.in_use():  # one of several api processes: all of theirs
        return Response(shared_values.render(), media_type=CONTENT_TYPE_LATEST)
    services = [context.metrics, *request.app.state.extra_metrics]
    return Response(render_all(services), media_type=CONTENT_TYPE_LATEST)
