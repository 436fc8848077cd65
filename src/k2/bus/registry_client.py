"""A small, cached, synchronous client for K2's (or any Confluent-compatible) schema registry.

K2's producer registers one schema per subject and its sink resolves one writer schema per id; both happen per
message in a hot loop, so every answer that cannot change is cached and the HTTP round-trip happens once.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from k2.config import Settings
from k2.redact import redact

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
# GET .../versions/latest can change when someone registers; a short TTL keeps it cheap and nearly fresh.
LATEST_TTL_SECONDS = 30.0


class RegistryError(RuntimeError):
    """The registry refused a request or could not be reached; `error_code` is Confluent's (e.g. 40401)."""

    def __init__(self, message: str, status: int | None = None, error_code: int | None = None) -> None:
        super().__init__(message)
        self.status, self.error_code = status, error_code


class SchemaIncompatibleError(RegistryError):
    """Registration refused (409): the schema breaks the subject's compatibility level; `messages` say where."""

    def __init__(self, subject: str, message: str, messages: list[str]) -> None:
        super().__init__(message, status=409, error_code=409)
        self.subject, self.messages = subject, messages


def _key(schema: dict[str, Any]) -> str:
    return json.dumps(schema, sort_keys=True, separators=(",", ":"))


class RegistryClient:
    """Register and fetch Avro schemas; thread-safe, with answers cached per process."""

    def __init__(
        self,
        url: str,
        auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        ca_location: Path | None = None,
    ) -> None:
        """`auth`: basic-auth (user, password), else any user:password in `url`; `ca_location`: a PEM file of the
        CA(s) an https:// registry's certificate must be signed by (default: the system's trusted CAs)."""
        self.url = url.rstrip("/")
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_location.expanduser())) if ca_location is not None else True
        )
        # Idle connections are dropped after 2 s, before a server drops them (uvicorn, K2's embedded registry: 5 s,
        # httpx's own default) and a request goes out on a connection being closed.
        self._http = httpx.Client(
            base_url=self.url,
            auth=auth,
            verify=verify,
            timeout=timeout,
            headers={"Accept": CONTENT_TYPE},
            limits=httpx.Limits(keepalive_expiry=2.0),
        )
        self._lock = threading.Lock()
        self._ids: dict[tuple[str, str], int] = {}  # (subject, schema key) -> id
        self._schemas: dict[int, dict[str, Any]] = {}  # id -> schema (ids are immutable)
        self._latest: dict[str, tuple[float, tuple[int, int, dict[str, Any]]]] = {}

    @classmethod
    def for_settings(cls, settings: Settings, url: str) -> RegistryClient:
        """A client of the registry at `url` with K2_SCHEMA_REGISTRY_USERNAME/_PASSWORD/_CA_LOCATION."""
        return cls(url, auth=settings.schema_registry_auth, ca_location=settings.schema_registry_ca_location)

    def check(self) -> None:
        """Raise RegistryError unless the registry answers an authenticated request (GET /config)."""
        self._call("GET", "/config")

    def register(self, subject: str, schema: dict[str, Any]) -> int:
        """The id of `schema` under `subject`, registering it if new (idempotent).

        Raises SchemaIncompatibleError when the subject's compatibility level refuses it.
        """
        key = (subject, _key(schema))
        if (cached := self._ids.get(key)) is not None:
            return cached
        text = json.dumps(schema)
        body = self._call("POST", f"/subjects/{subject}/versions", {"schema": text}, subject=subject)
        schema_id = int(body["id"])
        with self._lock:
            self._ids[key] = schema_id
            self._schemas.setdefault(schema_id, json.loads(text))  # a copy: callers may mutate theirs
        return schema_id

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        """The schema with this id (as a dict); fetched once per process, since an id never changes meaning."""
        if (cached := self._schemas.get(schema_id)) is not None:
            return cached
        schema = json.loads(self._call("GET", f"/schemas/ids/{schema_id}")["schema"])
        with self._lock:
            return self._schemas.setdefault(schema_id, schema)

    def latest(self, subject: str, max_age: float = LATEST_TTL_SECONDS) -> tuple[int, int, dict[str, Any]]:
        """(id, version, schema) of the subject's newest version, at most `max_age` seconds old."""
        now = time.monotonic()
        cached = self._latest.get(subject)
        if cached is not None and now - cached[0] < max_age:
            return cached[1]
        body = self._call("GET", f"/subjects/{subject}/versions/latest")
        schema_id = int(body["id"])
        with self._lock:
            schema = self._schemas.setdefault(schema_id, json.loads(body["schema"]))
            answer = (schema_id, int(body["version"]), schema)
            self._latest[subject] = (now, answer)
        return answer

    def set_compatibility(self, subject: str | None, level: str) -> str:
        """Set the compatibility level of `subject`, or the global default when `subject` is None."""
        path = "/config" if subject is None else f"/config/{subject}"
        return str(self._call("PUT", path, {"compatibility": level.upper()})["compatibility"])

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _send(self, method: str, path: str, body: dict[str, Any] | None) -> httpx.Response:
        content = None if body is None else json.dumps(body)
        try:
            return self._http.request(method, path, content=content, headers=_body_headers(body))
        except (httpx.RemoteProtocolError, httpx.ReadError):
            # The server closed a pooled keep-alive connection as this request went out on it (unanswered, or reset:
            # both seen failing `load` on a machine at load average 50, where a 2 s margin is not enough): every
            # registry call is idempotent (registering a schema again gives its id), so send it once more.
            return self._http.request(method, path, content=content, headers=_body_headers(body))

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None, subject: str = "") -> Any:
        try:
            response = self._send(method, path, body)
        except httpx.ConnectError as exc:
            if _tls_refused(exc):
                raise RegistryError(
                    f"schema registry at {redact(self.url)} failed the TLS handshake ({_tls_reason(exc)}): is its"
                    " certificate signed by a CA in K2_SCHEMA_REGISTRY_CA_LOCATION, and for this host name?"
                ) from None
            raise self._unreachable(exc) from exc
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code in (401, 403):
            raise RegistryError(
                f"schema registry at {redact(self.url)} refused K2's credentials ({response.status_code}): check"
                " K2_SCHEMA_REGISTRY_USERNAME and K2_SCHEMA_REGISTRY_PASSWORD",
                response.status_code,
            )
        if response.is_success:
            return response.json()
        try:
            error = response.json()
        except ValueError:
            error = {"message": response.text}
        message = f"{method} {path} -> {response.status_code}: {error.get('message', response.text)}"
        if response.status_code == 409:
            raise SchemaIncompatibleError(subject, message, list(error.get("messages") or [error.get("message")]))
        raise RegistryError(message, response.status_code, error.get("error_code"))

    def _unreachable(self, exc: httpx.TransportError) -> RegistryError:
        return RegistryError(
            f"schema registry at {redact(self.url)} is unreachable ({exc}); start it (K2 starts its own when "
            f"K2_SCHEMA_REGISTRY_URL is unset) or fix K2_SCHEMA_REGISTRY_URL"
        )


def _tls_refused(exc: BaseException) -> bool:
    return any(isinstance(e, ssl.SSLError) for e in _causes(exc))


def _tls_reason(exc: BaseException) -> str:
    error = next(e for e in _causes(exc) if isinstance(e, ssl.SSLError))
    return str(getattr(error, "verify_message", None) or getattr(error, "reason", None) or error)


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _body_headers(body: dict[str, Any] | None) -> dict[str, str]:
    return {} if body is None else {"Content-Type": CONTENT_TYPE}
