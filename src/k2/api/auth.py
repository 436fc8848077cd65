"""Who is calling: the API key from `X-API-Key` or `Authorization: Bearer`, checked against the key file, then
charged one token of that key's rate limit.

A browser cannot set headers on a WebSocket handshake, so a WebSocket may carry the key as a subprotocol instead:
`new WebSocket(url, ["k2", "k2.key." + key])`. The server answers with `k2` (never echoing the key). A header, unlike
a query parameter, stays out of access logs and browser history; the key is visible to whatever sees the
handshake's headers, as X-API-Key is.
"""

from __future__ import annotations

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from k2.api.errors import ApiError
from k2.api.keys import ApiKey, verify_key
from k2.api.state import api_state

_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key from `k2 keys create`")
_bearer = HTTPBearer(auto_error=False, description="The same API key as a bearer token")

WEBSOCKET_PROTOCOL = "k2"  # the subprotocol a WebSocket carrying its key that way is answered with
KEY_PROTOCOL_PREFIX = "k2.key."

_MISSING = "no API key: send it in the X-API-Key header (or Authorization: Bearer <key>); `k2 keys create` makes one"
_UNKNOWN = "the API key is unknown or revoked: check it, or ask an operator for a new one (`k2 keys create`)"


def presented_key(connection: HTTPConnection) -> str | None:
    """The key a request or WebSocket handshake carries, if any."""
    key = connection.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for offered in connection.scope.get("subprotocols", ()) if connection.scope["type"] == "websocket" else ():
        if offered.startswith(KEY_PROTOCOL_PREFIX) and len(offered) > len(KEY_PROTOCOL_PREFIX):
            return offered[len(KEY_PROTOCOL_PREFIX) :]
    return None


def authenticate(connection: HTTPConnection) -> ApiKey:
    """The caller's active key after one rate-limit token; 401 without a valid key, 429 over the limit, and 429
    for an address that presented too many unknown keys lately (K2_API_AUTH_FAILURES_PER_MINUTE): guessing keys
    costs a minute per few tries, whatever key comes next."""
    state = api_state(connection)
    address = connection.client.host if connection.client is not None else "unknown"
    wait = state.auth_failures.waiting(address)
    if wait:
        raise ApiError(
            429,
            f"too many unknown API keys from {address}: retry after {wait} s",
            details={"retry_after_seconds": wait},
            headers={"Retry-After": str(wait)},
        )
    presented = presented_key(connection)
    if presented is None:
        raise ApiError(401, _MISSING, headers={"WWW-Authenticate": "Bearer"})
    key = verify_key(state.keys_file, presented)
    if key is None:
        state.auth_failures.acquire(address)
        raise ApiError(401, _UNKNOWN, headers={"WWW-Authenticate": "Bearer"})
    wait = state.limiter.acquire(key.key_id, key.rate_limit_per_minute)
    if wait:
        limit = key.rate_limit_per_minute or state.api.rate_limit_per_minute
        raise ApiError(
            429,
            f"rate limit of {limit} requests per minute exceeded for key {key.key_id}: retry after {wait} s",
            details={"limit_per_minute": limit, "retry_after_seconds": wait},
            headers={"Retry-After": str(wait)},
        )
    return key


def require_key(
    request: Request,
    _header: str | None = Security(_api_key_header),
    _token: HTTPAuthorizationCredentials | None = Security(_bearer),
) -> ApiKey:
    """FastAPI dependency for every /v1 HTTP route (the Security parameters only document the schemes)."""
    return authenticate(request)
