"""Static files served with the same security headers as the pages that load them.

Starlette's StaticFiles answers with content headers only; a page's Content-Security-Policy, nosniff and referrer
policy should hold for its scripts and styles too (a script served without nosniff can be read as another type).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from fastapi.staticfiles import StaticFiles
from starlette.responses import Response
from starlette.types import Scope


class StaticFilesWithHeaders(StaticFiles):
    """StaticFiles whose every file response carries `headers`."""

    def __init__(self, *, headers: Mapping[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.headers = dict(headers)

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(self.headers)
        return response
