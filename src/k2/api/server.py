"""Run the API with uvicorn: `serve(settings)` binds 127.0.0.1:8000 unless told otherwise."""

from __future__ import annotations

import uvicorn

from k2.api.app import create_app
from k2.config import ApiSettings, Settings


def serve(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    api: ApiSettings | None = None,
    log_level: str = "info",
) -> None:
    """Serve until interrupted. Binding another host than 127.0.0.1 (e.g. 0.0.0.0) exposes the API to the network:
    put TLS in front of it, since API keys travel in headers.
    """
    app = create_app(settings, api=api)
    # One worker: the engine is one DuckDB session and the rate limits live in this process.
    uvicorn.run(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False)
