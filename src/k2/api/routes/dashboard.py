"""The web dashboard: static pages under /dashboard that draw the /v1 routes (bars, trades, quotes, pipeline).

The pages are public; the data is not. The page takes the API key from the URL fragment (`#key=...`, which a
browser never sends to a server, so it stays out of access logs and Referer headers), keeps it in the tab's
sessionStorage and sends it as X-API-Key like any other client. Without one it asks for a key.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse

from k2.api.routes.static_files import StaticFilesWithHeaders

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
DASHBOARD_PATH = "/dashboard"
ASSETS_PATH = f"{DASHBOARD_PATH}/assets"

# Everything the page loads comes from this server; no inline script, no framing.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse(DASHBOARD_PATH)


@router.get(DASHBOARD_PATH)
async def dashboard() -> FileResponse:
    return FileResponse(DASHBOARD_DIR / "index.html", media_type="text/html", headers=_HEADERS)


def install(app: FastAPI) -> None:
    """Serve the dashboard page and its assets (the vendored charting library among them) on `app`."""
    app.include_router(router)
    assets = StaticFilesWithHeaders(directory=DASHBOARD_DIR, check_dir=True, headers=_HEADERS)
    app.mount(ASSETS_PATH, assets, name="dashboard-assets")
