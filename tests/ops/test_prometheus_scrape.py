"""A real Prometheus (Debian's `prometheus`) scrapes a running K2 API on loopback: the series it stores equal what
K2 reports, and every alert rule evaluates against them without error."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from k2.api import create_key
from tests.api.conftest import Server, build_lake, serving
from tests.ops.test_alerts import RULES
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def prometheus(tmp_path: Path, api: Server) -> Iterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus not found: install Debian's prometheus package (make test does)")
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: k2\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{api.port}']\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Server]:
    lake = build_lake(tmp_path / "k2home")
    with serving(lake.settings) as server:
        key = create_key(lake.settings, "scrape-test")
        with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=30) as http:
            for _ in range(3):
                assert http.get("/v1/trades", params={"symbols": "BHP"}).status_code == 200
            assert http.get("/v1/trades", params={"limit": 0}).status_code == 422
        yield server


def _k2_reports(api: Server) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{api.url}/metrics").text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _query(prometheus: str, expr: str) -> list[dict]:
    """The instant vector of `expr`; empty while Prometheus is still starting (connection refused, 503)."""
    try:
        response = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    except httpx.TransportError:
        return []
    if response.status_code == 503:
        return []
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_stores_what_k2_reports_and_the_rules_evaluate(prometheus: str, api: Server) -> None:
    wait_until(lambda: _query(prometheus, 'up{job="k2"} == 1'), 60, "Prometheus to scrape K2")
    files = 'k2_lake_data_files{table="market_data.trades_v2"}'
    stored = wait_until(lambda: _query(prometheus, files), 30, "the data-file gauge")
    reported = _k2_reports(api)
    assert (
        float(stored[0]["value"][1])
        == reported[("k2_lake_data_files", frozenset({("table", "market_data.trades_v2")}))]
    )
    assert float(stored[0]["value"][1]) == 4  # build_lake: two trade commits x two exchanges (asx, binance)

    ok = frozenset({("route", "/v1/trades"), ("status", "2xx")})
    refused = frozenset({("route", "/v1/trades"), ("status", "4xx")})
    assert reported[("k2_api_request_seconds_count", ok)] >= 3
    assert reported[("k2_api_request_seconds_count", refused)] >= 1
    series = 'k2_api_request_seconds_count{route="/v1/trades",status="2xx"}'
    scraped = wait_until(lambda: _query(prometheus, series), 30, "the request counter")
    assert float(scraped[0]["value"][1]) == reported[("k2_api_request_seconds_count", ok)]

    def evaluated() -> list[dict] | None:
        groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules) else None

    rules = wait_until(evaluated, 30, "every rule to be evaluated")
    assert len(rules) == 11
    assert {rule["name"]: rule["health"] for rule in rules} == {rule["name"]: "ok" for rule in rules}
