"""GET /metrics: this process's Prometheus metrics (k2.core.metrics), open like /health so a scraper needs no key.

Before answering, the figures that are cheaper read than pushed are refreshed: data files per table, from the
manifests of the snapshot the engine reads.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from k2.api.errors import documented
from k2.api.state import request_state
from k2.core import metrics
from k2.query.summary import table_stats

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    summary="Prometheus metrics of this process",
    response_class=Response,
    responses={
        200: {
            "description": "The Prometheus text exposition format",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **documented(503, 504),
    },
)
async def get_metrics(request: Request) -> Response:
    state = request_state(request)
    if state.engine is not None:

        def read_stats() -> None:
            with state.reading() as engine:
                stats = table_stats(engine)
            for table, files in zip(stats["table"].to_pylist(), stats["data_files"].to_pylist(), strict=True):
                metrics.LAKE_DATA_FILES.labels(table).set(files)

        await state.run(read_stats)
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


class RequestTimer(BaseHTTPMiddleware):
    """k2_api_request_seconds by route template (/v1/trades, not the raw URL: bounded label values) and status
    class. Requests matching no route count under route="unmatched"."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        status = f"{response.status_code // 100}xx"
        metrics.API_REQUEST_SECONDS.labels(_template(request), status).observe(time.perf_counter() - started)
        return response


def _template(request: Request) -> str:
    """The matched route's path template with its router prefix (/v1/trades); FastAPI keeps only the template
    without the prefix on the route, so the prefix is what the request path has before the rendered template."""
    route = request.scope.get("route")
    template = getattr(route, "path", None)
    if template is None:
        return "unmatched"
    try:
        rendered = template.format(**request.path_params)
    except (KeyError, IndexError, ValueError):
        return template
    path = request.url.path
    return path.removesuffix(rendered) + template if path.endswith(rendered) else template
