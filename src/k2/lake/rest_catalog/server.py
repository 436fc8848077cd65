"""The REST catalog server: `rest_catalog_app` (the routes over a backend catalog, every error in the spec's
ErrorModel), `backend_settings` (which catalog a server fronts) and `serve_rest_catalog` (`k2 catalog-serve`)."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest.response import ErrorResponse, ErrorResponseMessage
from starlette.exceptions import HTTPException as StarletteHTTPException

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.rest_catalog.routes import ROUTERS
from k2.lake.rest_catalog.store import ERRORS, CatalogHTTPError
from k2.redact import redact


def _error(status: int, type_: str, message: str) -> JSONResponse:
    body = ErrorResponse(error=ErrorResponseMessage(message=message, type=type_, code=status))
    return JSONResponse(body.model_dump(), status_code=status)


def rest_catalog_app(backend: Catalog) -> FastAPI:
    """The REST catalog API over `backend`. Handlers are plain functions: FastAPI runs them in its thread pool,
    so slow catalog calls (a database round trip per commit) never block the event loop."""
    # No /docs or /redoc: clients speak the Iceberg REST protocol, and FastAPI's pages load from a CDN (blank offline).
    app = FastAPI(
        docs_url=None,
        redoc_url=None,
        title="K2 Iceberg REST catalog",
        description="The Apache Iceberg REST catalog API (namespaces, tables, commits) over K2's catalog.",
        version="1",
    )
    app.state.backend = backend

    @app.exception_handler(CatalogHTTPError)
    async def _catalog_error(_request: Request, exc: CatalogHTTPError) -> JSONResponse:
        return _error(exc.status, exc.type, redact(str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # No such route or method: still the ErrorModel, e.g. {"type": "NotFoundException", "code": 404}
        kind = HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "") + "Exception"
        return _error(exc.status_code, kind, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        return _error(400, "BadRequestException", f"Malformed request: {problems}")

    def _handler(status: int, type_: str) -> Callable[[Request, Exception], Any]:
        async def handle(_request: Request, exc: Exception) -> JSONResponse:
            return _error(status, type_, redact(str(exc)) or type(exc).__name__)

        return handle

    for exc_type, (status, type_) in ERRORS.items():
        app.add_exception_handler(exc_type, _handler(status, type_))
    # Anything else is the server's fault; uvicorn still logs the traceback.
    app.add_exception_handler(Exception, _handler(500, "InternalServerError"))

    for router in ROUTERS:
        app.include_router(router)
    return app


def backend_settings(settings: Settings) -> Settings:
    """The settings of the catalog a server fronts. When K2_CATALOG_PROPERTIES points K2 at a REST catalog (this
    server, most likely), the backend is the SQL catalog of K2_CATALOG_URI / K2_WAREHOUSE instead: the REST
    client's `type` and `uri` are dropped, or the server would call itself."""
    props = settings.catalog_properties
    if props.get("type") != "rest":
        return settings
    sql_props = {k: v for k, v in props.items() if k not in ("type", "uri")}
    return settings.model_copy(update={"catalog_properties": sql_props})


def serve_rest_catalog(
    settings: Settings, host: str = "127.0.0.1", port: int = 8181, *, log_level: str = "info"
) -> None:
    """Serve the REST catalog over K2's configured catalog until interrupted. The API has no authentication:
    binding another host than 127.0.0.1 lets anyone who can reach it change every table."""
    import uvicorn

    app = rest_catalog_app(open_catalog(backend_settings(settings)))
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False)
