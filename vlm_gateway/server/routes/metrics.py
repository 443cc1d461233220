from fastapi import APIRouter, Request, Response

from vlm_gateway.core.metrics import CONTENT_TYPE
from vlm_gateway.server.scrape import render_metrics
from vlm_gateway.server.state import gateway_state

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text format: every metric is listed in docs/operations.md ("Metrics")."""
    return Response(await render_metrics(gateway_state(request)), media_type=CONTENT_TYPE)
