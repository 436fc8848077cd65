"""Every /v1 route needs a live API key; keys are stored only as salted digests; health checks are open."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import httpx
import pytest

from k2.api import create_key, list_keys, revoke_key
from k2.api.keys import keys_path
from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_table
from k2.schema import TRADES_V2
from tests.api.conftest import Lake, Server, lake_trades, serving
from tests.query.records import append_trades


def assert_envelope(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert "Traceback" not in response.text
    return error


def test_no_key_is_401_with_the_envelope(anonymous: httpx.Client) -> None:
    error = assert_envelope(anonymous.get("/v1/trades"), 401, "unauthorized")
    assert "X-API-Key" in error["message"]


def test_wrong_key_is_401(anonymous: httpx.Client, api_key: str) -> None:
    tampered = api_key[:-4] + ("AAAA" if not api_key.endswith("AAAA") else "BBBB")
    for key in ("nonsense", tampered, "k2_000000000000_x"):
        assert_envelope(anonymous.get("/v1/trades", headers={"X-API-Key": key}), 401, "unauthorized")


def test_valid_key_in_either_header_is_200(anonymous: httpx.Client, api_key: str) -> None:
    assert anonymous.get("/v1/stats", headers={"X-API-Key": api_key}).status_code == 200
    assert anonymous.get("/v1/stats", headers={"Authorization": f"Bearer {api_key}"}).status_code == 200


def test_revoked_key_stops_working_at_once(lake: Lake, anonymous: httpx.Client) -> None:
    key = create_key(lake.settings, "short-lived")
    assert anonymous.get("/v1/stats", headers={"X-API-Key": key}).status_code == 200
    key_id = key.split("_")[1]
    assert revoke_key(lake.settings, key_id)
    assert not revoke_key(lake.settings, key_id)
    assert_envelope(anonymous.get("/v1/stats", headers={"X-API-Key": key}), 401, "unauthorized")
    listed = {k.key_id: k for k in list_keys(lake.settings)}
    assert listed[key_id].name == "short-lived"
    assert not listed[key_id].active


def test_only_a_salted_digest_is_stored(lake: Lake) -> None:
    first = create_key(lake.settings, "a")
    second = create_key(lake.settings, "b")
    raw = keys_path(lake.settings).read_bytes()
    for key in (first, second):
        assert key.encode() not in raw
        assert key.split("_", 2)[2].encode() not in raw
    with sqlite3.connect(keys_path(lake.settings)) as con:
        salts = [row[0] for row in con.execute("SELECT salt FROM api_keys")]
    assert len(set(salts)) == len(salts)


def test_health_and_ready_need_no_key(anonymous: httpx.Client) -> None:
    assert anonymous.get("/health").json() == {"status": "ok", "tables": None}
    ready = anonymous.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["tables"]["trades_v2"] is not None


def test_unknown_route_is_404_with_the_envelope(client: httpx.Client) -> None:
    assert_envelope(client.get("/v1/nope"), 404, "not_found")


def test_docs_and_openapi_are_served(anonymous: httpx.Client, server: Server) -> None:
    spec = anonymous.get("/openapi.json").json()
    trades = spec["paths"]["/v1/trades"]["get"]
    names = {p["name"] for p in trades["parameters"]}
    assert {"symbols", "exchange", "start", "end", "limit", "cursor", "as_of", "format"} <= names
    assert {"401", "429", "504"} <= set(trades["responses"])
    assert "text/csv" in trades["responses"]["200"]["content"]
    assert anonymous.get("/docs").status_code == 200


def test_ready_on_a_lake_where_only_some_tables_exist(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "k2home")
    catalog = open_catalog(settings)
    snapshot = append_trades(ensure_table(catalog, TRADES_V2), lake_trades(count=1))
    with serving(settings) as server, httpx.Client(base_url=server.url) as http:
        ready = http.get("/ready")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "tables": {"trades_v2": snapshot, "quotes_v2": None, "reference_data_v2": None, "bars_v2": None}
        | {"stream_gaps": None, "book_updates_v2": None, "book_snapshots_v2": None, "book_depth_v2": None},
    }


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard",
        "/dashboard/assets/app.js",
        "/dashboard/assets/style.css",
        "/docs",
        "/docs/assets/swagger-ui/swagger-ui.css",
    ],
)
def test_pages_and_their_assets_carry_the_same_security_headers(anonymous: httpx.Client, path: str) -> None:
    response = anonymous.get(path)
    assert response.status_code == 200
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
