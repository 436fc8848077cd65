"""Limits answer with the envelope: 429 + Retry-After, 413/414 for size, 504 for slow queries, 500 without a trace."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import httpx

from k2.api import ApiSettings, create_key
from k2.config import Settings
from tests.api.conftest import Lake, serving
from tests.api.test_auth import assert_envelope
from tests.waiting import wait_until


def test_over_the_rate_limit_is_429_with_retry_after(lake: Lake) -> None:
    key = create_key(lake.settings, "limited")
    slow = create_key(lake.settings, "slower", rate_limit_per_minute=1)
    with (
        serving(lake.settings, ApiSettings(rate_limit_per_minute=3)) as server,
        httpx.Client(base_url=server.url) as http,
    ):
        for _ in range(3):
            assert http.get("/v1/stats", headers={"X-API-Key": key}).status_code == 200
        limited = http.get("/v1/stats", headers={"X-API-Key": key})
        assert_envelope(limited, 429, "rate_limited")
        assert 1 <= int(limited.headers["Retry-After"]) <= 20
        # Buckets are per key, and a key's own limit overrides the default.
        assert http.get("/v1/stats", headers={"X-API-Key": slow}).status_code == 200
        limited = http.get("/v1/stats", headers={"X-API-Key": slow})
        assert_envelope(limited, 429, "rate_limited")
        assert int(limited.headers["Retry-After"]) > 20
        # Unlimited routes stay open.
        assert http.get("/health").status_code == 200


def test_an_address_guessing_keys_is_held_off_whatever_key_it_sends_next(lake: Lake) -> None:
    key = create_key(lake.settings, "guessed-at")
    guesser = httpx.HTTPTransport(local_address="127.0.0.1")
    neighbour = httpx.HTTPTransport(local_address="127.0.0.2")  # another client address on the loopback
    with (
        serving(lake.settings, ApiSettings(auth_failures_per_minute=3)) as server,
        httpx.Client(base_url=server.url, transport=guesser) as http,
        httpx.Client(base_url=server.url, transport=neighbour) as other,
    ):
        guesses = [http.get("/v1/stats", headers={"X-API-Key": f"k2_000000000000_guess{n}"}) for n in range(3)]
        assert [r.status_code for r in guesses] == [401, 401, 401]
        held = http.get("/v1/stats", headers={"X-API-Key": key})  # even the right key, from that address
        error = assert_envelope(held, 429, "rate_limited")
        assert error["message"].startswith("too many unknown API keys from 127.0.0.1: retry after ")
        assert 1 <= int(held.headers["Retry-After"]) <= 20
        assert other.get("/v1/stats", headers={"X-API-Key": key}).status_code == 200
        assert http.get("/health").status_code == 200  # health needs no key and is never held off


def test_oversized_body_is_413_and_long_url_414(client: httpx.Client) -> None:
    body = b"x" * (1024 * 1024 + 1)
    assert_envelope(client.request("GET", "/v1/trades", content=body), 413, "request_too_large")
    assert_envelope(client.post("/v1/trades", content=body), 413, "request_too_large")

    def chunks():
        for _ in range(20):
            yield b"y" * 65536

    assert_envelope(client.post("/v1/trades", content=chunks()), 413, "request_too_large")
    assert_envelope(client.get("/v1/trades", params={"symbols": "A" * 9000}), 414, "url_too_long")
    assert client.post("/v1/trades", content=b"small").status_code == 405


def test_slow_query_is_504(lake: Lake, api_key: str) -> None:
    with (
        serving(lake.settings, ApiSettings(query_timeout_seconds=0.0005)) as server,
        httpx.Client(base_url=server.url, headers={"X-API-Key": api_key}) as http,
    ):
        error = assert_envelope(http.get("/v1/stats"), 504, "query_timeout")
        assert "narrow" in error["message"]


def test_repeated_timeouts_open_the_query_breaker_then_a_trial_runs(lake: Lake, api_key: str) -> None:
    settings = ApiSettings(query_timeout_seconds=0.0005, breaker_timeouts=2, breaker_reset_seconds=1.5)
    with (
        serving(lake.settings, settings) as server,
        httpx.Client(base_url=server.url, headers={"X-API-Key": api_key}) as http,
    ):
        for _ in range(2):
            assert_envelope(http.get("/v1/stats"), 504, "query_timeout")
        refused = http.get("/v1/trades")  # any query now, not only the slow one: the engine is still busy
        error = assert_envelope(refused, 503, "query_breaker_open")
        assert refused.headers["Retry-After"] == "2" and "retry later" in error["message"]
        assert http.get("/health").status_code == 200  # liveness is not a query
        time.sleep(1.6)  # the breaker's own 1.5 s timer: any query sent to find out would be the trial itself
        assert_envelope(http.get("/v1/stats"), 504, "query_timeout")  # half-open: one trial ran (and failed)
        assert_envelope(http.get("/v1/stats"), 503, "query_breaker_open")  # so it is open again


class BrokenEngine:
    """Fails the way a bug would: the message must never reach the client."""

    def refresh(self) -> None:
        raise RuntimeError("secret internal detail /etc/passwd")


def test_unexpected_error_is_500_without_details(lake: Lake, api_key: str) -> None:
    with (
        serving(lake.settings, engine=BrokenEngine()) as server,  # type: ignore[arg-type]
        httpx.Client(base_url=server.url, headers={"X-API-Key": api_key}) as http,
    ):
        response = http.get("/v1/trades")
        assert_envelope(response, 500, "internal_error")
        assert "secret" not in response.text


@contextmanager
def serve_process(settings: Settings, log_level: str, output: IO[bytes] | None = None) -> Iterator[str]:
    """`k2.api.serve` in its own process on a free loopback port (stdout and stderr to `output`); yields its base
    URL once it answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = (
        "import sys; from k2.api import serve; from k2.config import Settings;"
        " serve(Settings(home=sys.argv[1]), port=int(sys.argv[2]), log_level=sys.argv[3])"
    )
    args = [sys.executable, "-c", script, str(settings.home_dir), str(port), log_level]
    process = subprocess.Popen(args, stdout=output, stderr=output)
    url = f"http://127.0.0.1:{port}"

    def listening() -> bool:
        try:
            return httpx.get(f"{url}/health").status_code > 0
        except httpx.ConnectError:
            return False  # not listening yet

    def alive() -> None:
        assert process.poll() is None, "serve() exited"

    try:
        wait_until(listening, 30, "serve() to answer", check=alive)
        yield url
    finally:
        process.terminate()
        process.wait(15)


def test_serve_runs_the_api_on_loopback(lake: Lake, api_key: str) -> None:
    with serve_process(lake.settings, "warning") as url:
        response = httpx.get(f"{url}/v1/stats", headers={"X-API-Key": api_key})
        assert response.status_code == 200
        assert response.json()["data"][0]["table"] == "market_data.trades_v2"


def test_a_key_in_the_query_string_is_refused_and_not_logged(lake: Lake, api_key: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"  # uvicorn's access lines go to stdout, the rest to stderr
    with log.open("wb") as output, serve_process(lake.settings, "info", output) as url:
        refused = httpx.get(f"{url}/v1/trades", params={"symbol": "BHP", "api_key": api_key})
        other = httpx.get(f"{url}/v1/trades", params={"token": "hunter2-token-value"})
    assert (refused.status_code, other.status_code) == (401, 401)
    text = log.read_text()
    assert '"GET /v1/trades?symbol=BHP&api_key=*** HTTP/1.1" 401' in text
    assert '"GET /v1/trades?token=*** HTTP/1.1" 401' in text
    assert api_key not in text and api_key.split("_", 2)[2] not in text and "hunter2" not in text
