"""A registry that closes a connection without answering (an idle keep-alive connection dropped just as a request
went out on it) costs the client one more attempt, not a failed load."""

from __future__ import annotations

import json
import socket
import struct
import threading

from k2.bus.registry_client import RegistryClient

SCHEMA = {"type": "record", "name": "t", "fields": [{"name": "a", "type": "long"}]}


def test_a_connection_closed_without_an_answer_is_retried_once_on_a_new_one() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def serve() -> None:
        for answer in (False, True):
            conn, _ = listener.accept()
            with conn:
                requests.append(conn.recv(65536))
                if answer:
                    body = json.dumps({"schema": json.dumps(SCHEMA)}).encode()
                    head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    conn.sendall(head.encode() + body)
                # else: close at once, as a server dropping an idle connection does

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with listener, RegistryClient(f"http://127.0.0.1:{listener.getsockname()[1]}") as client:
        assert client.schema_by_id(7) == SCHEMA
    thread.join(5)
    assert [r.split(b"\r\n")[0] for r in requests] == [b"GET /schemas/ids/7 HTTP/1.1"] * 2


def test_a_connection_reset_before_the_answer_is_retried_once_too() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    requests: list[bytes] = []

    def serve() -> None:
        for answer in (False, True):
            conn, _ = listener.accept()
            requests.append(conn.recv(65536))
            if answer:
                body = json.dumps({"schema": json.dumps(SCHEMA)}).encode()
                head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                conn.sendall(head.encode() + body)
            else:  # SO_LINGER 0: close sends a RST, the client's read fails with ECONNRESET
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with listener, RegistryClient(f"http://127.0.0.1:{listener.getsockname()[1]}") as client:
        assert client.schema_by_id(8) == SCHEMA
    thread.join(5)
    assert len(requests) == 2
