"""One error envelope for every failure: `{"error": {"code", "message", "details"}}`, the message saying what to do.

Stack traces never reach a client: unexpected exceptions are logged here and answered with a generic 500.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from k2.query.engine import QueryError
from k2.query.filters import InvalidQueryError

log = logging.getLogger("k2.api")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "request_too_large",
    414: "url_too_long",
    422: "invalid_parameters",
    429: "rate_limited",
    500: "internal_error",
    503: "not_ready",
    504: "query_timeout",
}


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. invalid_query, unauthorized, rate_limited")
    message: str = Field(description="What went wrong and what to do next")
    details: Any = Field(default=None, description="Extra structured context (e.g. which parameters failed)")


class ErrorEnvelope(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An error answered with the envelope; raise it anywhere a request is handled."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.details = details
        self.headers = headers or {}


def error_body(status: int, message: str, *, code: str | None = None, details: Any = None) -> dict[str, Any]:
    """The envelope as a dict (also what the replay streams send as their last message on failure)."""
    return {"error": {"code": code or _CODES.get(status, "error"), "message": message, "details": details}}


def error_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> Response:
    content = orjson.dumps(error_body(status, message, code=code, details=details), default=str)
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def from_exception(exc: Exception) -> ApiError:
    """The ApiError a known exception maps to (anything unknown is a 500 that hides its text)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, InvalidQueryError):
        return ApiError(400, str(exc), code="invalid_query")
    if isinstance(exc, QueryError):
        # The engine's message names the DuckDB error, never the SQL text or a trace.
        return ApiError(400, f"the query could not run: {exc}", code="query_failed")
    if isinstance(exc, OverflowError):
        # Python dates stop at years 1 and 9999: an instant near either end plus an offset or look-back overflows.
        return ApiError(
            400, f"a date is out of range ({exc}): use instants between years 1 and 9999", code="invalid_query"
        )
    log.error("unhandled error in a request", exc_info=exc)
    return ApiError(500, "internal error: retry later; if it persists, report the time and request to the operator")


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only location, message and type: `input` would echo (possibly huge) caller text, `ctx` may not serialise.
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]


def _parameter_name(loc: list[Any]) -> str:
    """The parameter a validation error is about: ["query", "symbols", 0] is about symbols."""
    names = [part for part in loc[1:] if isinstance(part, str)]
    return names[0] if names else str(loc[-1])


def install_error_handlers(app: FastAPI, pattern_hints: Mapping[str, str] | None = None) -> None:
    """Route every failure through the envelope, FastAPI's 422 and Starlette's 404/405 included. `pattern_hints`
    says what to pass instead, by parameter name, when a value does not match the parameter's pattern."""
    hints = dict(pattern_hints or {})

    async def api_error(_request: Request, exc: Exception) -> Response:
        error = from_exception(exc)
        return error_response(
            error.status, error.message, code=error.code, details=error.details, headers=error.headers
        )

    async def validation_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        details = _validation_details(exc)
        names = list(dict.fromkeys(_parameter_name(d["loc"]) for d in details if d["loc"]))
        if any(name in hints for name in names):
            told = "; ".join(f"{name}: {hints.get(name, 'see details')}" for name in names)
            message = f"invalid value for {told}"
        else:
            listed = ", ".join(names) or "the request"
            message = f"invalid value for {listed}: fix the parameters listed in details (see /docs)"
        return error_response(422, message, details=details)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        messages = {
            404: "no such endpoint: see /docs for the routes",
            405: "method not allowed: see /docs for the methods each route takes",
        }
        message = messages.get(exc.status_code, str(exc.detail))
        return error_response(exc.status_code, message, headers=dict(exc.headers or {}))

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(InvalidQueryError, api_error)
    app.add_exception_handler(QueryError, api_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, api_error)


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`: the schemes the API takes", "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}
_DESCRIPTIONS = {
    400: "The query breaks a rule the schema cannot state (code `invalid_query`): start before end, a real date, a"
    " known time zone, a cursor this API issued, fresh without cursor or as_of; the message says which",
    401: "Missing, unknown or revoked API key: send `X-API-Key` or `Authorization: Bearer`",
    404: "The snapshot named by `as_of` does not exist",
    406: "No supported media type in Accept: use format= or one of the documented types",
    413: "Request body too large",
    414: "URL too long",
    422: "A parameter does not match its schema, or a single-valued one was given twice (details lists which)",
    429: "Rate limit exceeded: wait `Retry-After` seconds",
    500: "Internal error (no details are exposed)",
    503: "Not ready: the query engine is not open, the catalog or Kafka is unreachable, or queries are refused for"
    " `Retry-After` seconds after repeated timeouts",
    504: "The query ran past the time limit: narrow symbols or the time range",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for error statuses, each with the envelope schema (and the headers it sends)."""
    return {
        status: {"model": ErrorEnvelope, "description": _DESCRIPTIONS[status]}
        | ({"headers": _HEADERS[status]} if status in _HEADERS else {})
        for status in statuses
    }
