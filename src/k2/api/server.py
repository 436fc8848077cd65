"""Run the API with uvicorn: `serve(settings)` binds 127.0.0.1:8000 unless told otherwise."""

from __future__ import annotations

import logging

import uvicorn

from k2.api.app import create_app
from k2.config import ApiSettings, Settings
from k2.redact import redact


class _RedactedAccessLog(logging.Filter):
    """uvicorn's access line holds the whole query string: a key sent as `?api_key=...` (refused: keys go in the
    X-API-Key header) must not be written to the log with it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in record.args)
        return True


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
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, proxy_headers=False, server_header=False)
    access = logging.getLogger("uvicorn.access")  # configured by uvicorn.Config, before it serves
    if not any(isinstance(f, _RedactedAccessLog) for f in access.filters):
        access.addFilter(_RedactedAccessLog())
    uvicorn.Server(config).run()
