"""Registry credentials given in K2_SCHEMA_REGISTRY_URL (https://user:password@host) reach the registry as HTTP
basic auth, and never appear in an error message."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from k2.bus.registry_client import RegistryClient, RegistryError

SCHEMA = {"type": "record", "name": "t", "fields": [{"name": "a", "type": "long"}]}


class _Registry(BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        _Registry.seen.append(self.headers.get("Authorization"))
        body = json.dumps({"schema": json.dumps(SCHEMA)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def registry_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_credentials_in_the_url_are_sent_as_basic_auth(registry_port: int) -> None:
    client = RegistryClient(f"http://k2:s3cr3t@127.0.0.1:{registry_port}")
    assert client.schema_by_id(7) == SCHEMA
    client.close()
    assert _Registry.seen[-1] == "Basic " + base64.b64encode(b"k2:s3cr3t").decode()


def test_an_unreachable_registry_error_does_not_show_the_password() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once the probe is closed
    client = RegistryClient(f"http://k2:s3cr3t@127.0.0.1:{port}", timeout=2)
    with pytest.raises(RegistryError) as caught:
        client.schema_by_id(1)
    client.close()
    assert "s3cr3t" not in str(caught.value)
    assert f"http://k2:***@127.0.0.1:{port}" in str(caught.value)
