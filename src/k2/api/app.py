"""The K2 HTTP API: `create_app(settings)` builds the FastAPI app; `k2.api.server.serve` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from k2.api.auth import require_key
from k2.api.errors import documented, install_error_handlers
from k2.api.keys import keys_path
from k2.api.limits import RequestLimits
from k2.api.params import PATTERN_HINTS, single_valued
from k2.api.ratelimit import RateLimiter
from k2.api.routes import (
    analytics,
    book,
    catalog,
    dashboard,
    docs,
    events,
    health,
    metrics,
    pipeline,
    replay,
    subscribe,
)
from k2.api.state import ApiState
from k2.config import ApiSettings, Settings
from k2.lake.catalog import open_catalog
from k2.query.engine import QueryEngine

_DESCRIPTION = """Market data from the K2 lake: trades, quotes, bars, as-of joins, order books, summaries, snapshots and
replay.

Every /v1 route needs an API key in `X-API-Key` (or `Authorization: Bearer <key>`); `k2 keys create NAME` makes one.
Responses are JSON by default (decimals and timestamps as exact strings); `format=` or Accept picks CSV, Parquet,
Arrow IPC stream or NDJSON. Every read takes `as_of` (a snapshot id or an instant) to read the lake as it was.
`GET /v1/replay` streams NDJSON; the WebSocket `/v1/replay/ws` takes the same query parameters and sends one JSON
message per record, then the same `end_of_replay` trailer.
The WebSocket `/v1/subscribe` delivers history (`since`), then what Kafka holds beyond the lake, then live records,
in NDJSON frames each ending with a resumable `cursor` (close codes in its description below).
Errors always look like `{"error": {"code", "message", "details"}}`. A value that breaks its parameter's schema below
(type, range, pattern), or a parameter other than the lists (`symbols`,
`exclude_conditions`, `exclude_venues`) given twice, answers 422; a query the schema allows but
that cannot be answered as asked (start not before end, no such date or time zone, a cursor this API did not
issue) answers 400 with code `invalid_query`."""


def create_app(settings: Settings, engine: QueryEngine | None = None, *, api: ApiSettings | None = None) -> FastAPI:
    """The API over the lake `settings` names. Without `engine`, one is opened at startup and closed at shutdown;
    a given engine stays the caller's to close. `api` defaults to `settings.api` (environment `K2_API_*`).
    """
    options = api or settings.api
    state = ApiState(
        settings=settings,
        api=options,
        keys_file=keys_path(settings),
        limiter=RateLimiter(options.rate_limit_per_minute),
        auth_failures=RateLimiter(options.auth_failures_per_minute),
        engine=engine,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        owned = state.engine is None
        if owned:
            state.engine = QueryEngine(open_catalog(settings))
        try:
            yield
        finally:
            state.executor.shutdown(wait=False, cancel_futures=True)
            state.close_fresh_reader()
            if owned and state.engine is not None:
                state.engine.close()
                state.engine = None

    # docs_url/redoc_url None: FastAPI's own pages load from a CDN; routes/docs.py serves them from the package.
    app = FastAPI(
        title="K2 market data API",
        version="1",
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        responses=documented(413, 414, 500),  # RequestLimits and the error handler answer these on every route
    )
    app.state.k2 = state
    install_error_handlers(app, PATTERN_HINTS)
    app.add_middleware(RequestLimits, max_body_bytes=options.max_body_bytes, max_url_bytes=options.max_url_bytes)
    app.add_middleware(metrics.RequestTimer)
    app.include_router(health.router)
    app.include_router(metrics.router)
    secured = [Depends(require_key), Depends(single_valued)]
    # What the dependencies (key, rate limit, repeated parameters) and ApiState.run answer on every /v1 route.
    refusals = documented(401, 422, 429, 503, 504)
    for module in (events, analytics, book, catalog, replay, pipeline):
        app.include_router(module.router, prefix="/v1", dependencies=secured, responses=refusals)
    app.include_router(replay.ws_router, prefix="/v1")
    app.include_router(subscribe.ws_router, prefix="/v1")
    docs.install(app)  # /docs and /redoc, no key: like /openapi.json they describe the API, not its data
    dashboard.install(app)  # static pages, no key: they ask /v1 with the key the user gives them
    return app
