"""The registry server: `create_registry_app` (the routes over a store) and `EmbeddedRegistry`, which serves it
with uvicorn on a daemon thread of the calling process (k2.bus.stack starts one when no registry is configured)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from k2.bus.registry.routes import ROUTERS, RegistryResponse, install_error_handlers
from k2.bus.registry.store import DB_FILE, SchemaStore


def create_registry_app(storage_dir: Path) -> FastAPI:
    """The registry API over the store at `storage_dir`/registry.db (created if missing)."""
    # No /docs or /redoc: clients speak Confluent's protocol, and FastAPI's pages load from a CDN (blank offline).
    app = FastAPI(title="K2 schema registry", default_response_class=RegistryResponse, docs_url=None, redoc_url=None)
    app.state.store = SchemaStore(Path(storage_dir) / DB_FILE)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


class EmbeddedRegistry:
    """The registry served by uvicorn on a daemon thread: `with EmbeddedRegistry(dir) as registry: registry.url`.

    port=0 picks a free port at each start(), so a restarted registry may have a new url; ids and versions live
    in the store and survive restarts.
    """

    def __init__(self, storage_dir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.storage_dir, self.host, self.port = Path(storage_dir), host, port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError("schema registry is not running: call start() or use it as a context manager")
        return f"http://{self.host}:{self._socket.getsockname()[1]}"

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
        app = create_registry_app(self.storage_dir)
        # log_config=None: leave the host process's logging setup alone.
        config = uvicorn.Config(app, log_config=None, log_level="warning", lifespan="off", timeout_graceful_shutdown=5)
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
