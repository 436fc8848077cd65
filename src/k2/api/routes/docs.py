"""The API's own documentation pages, `/docs` (Swagger UI) and `/redoc` (ReDoc), served with no network access.

FastAPI's built-in pages load their scripts and styles from a CDN (and ReDoc's fonts from Google), so on a machine
without internet they render blank. These pages load the same libraries from `api/static/` instead (vendored from
npm, versions and hashes in each folder's README.md), so they work wherever the API itself is reachable.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

from k2.api.routes.static_files import StaticFilesWithHeaders

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = f"{DOCS_PATH}/assets"

# The pages may load only from this server: nothing reaches the internet even where it could. This also stops the
# one request the vendored ReDoc makes on its own (its "API docs by Redocly" logo from cdn.redoc.ly; the link
# stays, the image hides itself when it fails). 'unsafe-inline': FastAPI writes Swagger UI's start-up script into
# the page, and both libraries set inline styles; ReDoc starts a web worker from a blob: URL.
_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)

router = APIRouter(include_in_schema=False)


_HEADERS = {"Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff"}


def _own_assets_only(page: HTMLResponse) -> HTMLResponse:
    page.headers.update(_HEADERS)
    return page


def _prefix(request: Request) -> str:
    """The path the app is mounted under (behind a proxy that strips a prefix), as FastAPI's own pages use it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def _openapi_url(request: Request) -> str:
    app: FastAPI = request.app
    if app.openapi_url is None:  # create_app always serves the description; a bare router user might not
        raise RuntimeError("the docs pages need the OpenAPI description: keep FastAPI(openapi_url=...) set")
    return _prefix(request) + app.openapi_url


@router.get(DOCS_PATH)
async def swagger_ui(request: Request) -> HTMLResponse:
    assets = f"{_prefix(request)}{ASSETS_PATH}/swagger-ui"
    page = get_swagger_ui_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
        # No OAuth2 redirect page: the API's schemes are an API key header and a bearer token, which Swagger UI's
        # Authorize dialog takes as typed text; only OAuth2 flows need the redirect.
        oauth2_redirect_url=None,
        # Swagger UI otherwise sends the description to validator.swagger.io for a badge whenever the page is not on
        # localhost: a request to the internet, and the description with it.
        swagger_ui_parameters={"validatorUrl": None},
    )
    return _own_assets_only(page)


@router.get(REDOC_PATH)
async def redoc(request: Request) -> HTMLResponse:
    assets = f"{_prefix(request)}{ASSETS_PATH}"
    page = get_redoc_html(
        openapi_url=_openapi_url(request),
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{assets}/redoc/redoc.standalone.js",
        redoc_favicon_url=f"{assets}/swagger-ui/favicon-32x32.png",
        with_google_fonts=False,  # fonts.googleapis.com is a network request; the browser's sans-serif will do
    )
    return _own_assets_only(page)


def install(app: FastAPI) -> None:
    """Serve /docs and /redoc and their vendored assets on `app` (made with docs_url=None, redoc_url=None)."""
    app.include_router(router)
    assets = StaticFilesWithHeaders(directory=STATIC_DIR, check_dir=True, headers=_HEADERS)
    app.mount(ASSETS_PATH, assets, name="docs-assets")
