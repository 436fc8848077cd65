"""The registry server: `create_registry_app` (the routes over a store) and `EmbeddedRegistry`, which serves it
with uvicorn on a daemon thread of the calling process (k2.bus.stack starts one when no registry is configured).

Optionally as a secured peer: HTTPS with a given certificate and key, and HTTP basic auth for a set of users (what a
Confluent registry behind a real cluster asks of K2; the secured tests use it)."""

from __future__ import annotations

import base64
import binascii
import hmac
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response

from k2.bus.registry.routes import ROUTERS, RegistryResponse, install_error_handlers
from k2.bus.registry.store import DB_FILE, SchemaStore


@dataclass(frozen=True)
class RegistryTls:
    """The certificate (PEM, the server's then its chain) and unencrypted key (PEM) a registry serves HTTPS with."""

    certificate: Path
    key: Path


def _basic_auth_user(header: str | None, users: Mapping[str, str]) -> str | None:
    """The user an `Authorization: Basic ...` header proves, or None."""
    scheme, _, encoded = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    expected = users.get(name)
    # compare_digest: the answer's timing says nothing of how much of a password was right
    if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
        return None
    return name


def create_registry_app(storage_dir: Path, users: Mapping[str, str] | None = None) -> FastAPI:
    """The registry API over the store at `storage_dir`/registry.db (created if missing). With `users` (name ->
    password), every request must carry one's HTTP basic auth, else 401 in Confluent's error envelope."""
    # No /docs or /redoc: clients speak Confluent's protocol, and FastAPI's pages load from a CDN (blank offline).
    app = FastAPI(title="K2 schema registry", default_response_class=RegistryResponse, docs_url=None, redoc_url=None)
    app.state.store = SchemaStore(Path(storage_dir) / DB_FILE)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    if users:
        accounts = dict(users)

        @app.middleware("http")
        async def require_basic_auth(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
            if _basic_auth_user(request.headers.get("authorization"), accounts) is None:
                return RegistryResponse(
                    {"error_code": 40101, "message": "Unauthorized"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="k2-schema-registry"'},
                )
            return await call_next(request)

    return app


class EmbeddedRegistry:
    """The registry served by uvicorn on a daemon thread: `with EmbeddedRegistry(dir) as registry: registry.url`.

    port=0 picks a free port at each start(), so a restarted registry may have a new url; ids and versions live
    in the store and survive restarts.
    """

    def __init__(
        self,
        storage_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: RegistryTls | None = None,
        users: Mapping[str, str] | None = None,
    ) -> None:
        """`tls`: serve HTTPS with that certificate; `users`: require basic auth as one of them (name -> password)."""
        self.storage_dir, self.host, self.port = Path(storage_dir), host, port
        self.tls, self._users = tls, dict(users or {})
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError("schema registry is not running: call start() or use it as a context manager")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self._socket.getsockname()[1]}"

    def start(self, timeout: float = 10.0) -> EmbeddedRegistry:
        """Serve in the background; returns once connections are accepted."""
        if self._thread is not None:
            return self
        # Binding here (not in uvicorn) resolves port 0 and turns a busy port into an error in the caller's thread.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(
                f"schema registry cannot listen on {self.host}:{self.port} ({exc}); "
                f"stop whatever holds the port or use port=0 for a free one"
            ) from exc
        app = create_registry_app(self.storage_dir, self._users)
        tls = {"ssl_certfile": str(self.tls.certificate), "ssl_keyfile": str(self.tls.key)} if self.tls else {}
        # log_config=None: leave the host process's logging setup alone.
        config = uvicorn.Config(
            app, log_config=None, log_level="warning", lifespan="off", timeout_graceful_shutdown=5, **tls
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="k2-registry", daemon=True)
        self._server, self._thread, self._socket = server, thread, sock
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"schema registry did not start within {timeout:g}s; see the log above")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (open requests finish) and join the thread; a no-op when not running."""
        if self._server is None or self._thread is None or self._socket is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()
        alive = self._thread.is_alive()
        self._server = self._thread = self._socket = None
        if alive:
            raise RuntimeError(f"schema registry thread did not stop within {timeout:g}s")

    def __enter__(self) -> EmbeddedRegistry:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
