"""Hostile text in every string parameter is only ever data: no 5xx, and the tables are unchanged afterwards."""

from __future__ import annotations

import contextlib

import httpx
import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.api.conftest import Server

PAYLOADS = (
    "'; DROP TABLE market_data.trades_v2; --",
    "BHP' OR '1'='1",
    'BHP") UNION SELECT * FROM duckdb_settings() --',
    "1; ATTACH '/tmp/evil.db' AS evil",
    "read_csv('/etc/passwd')",
    "\x00\x01\x7f",
    "../../../../etc/passwd",
    "%s%n%x{0}${jndi:ldap://x}",
    "\u202e\U0001f4a5ＢＨＰ",
    "A" * 2000,
)


def string_parameters(spec: dict) -> dict[str, list[str]]:
    """Route -> the names of its query parameters whose schema accepts a string, from the OpenAPI description."""
    found: dict[str, list[str]] = {}
    for path, methods in spec["paths"].items():
        for parameter in methods.get("get", {}).get("parameters", []):
            schema = parameter["schema"]
            types = {s.get("type") for s in schema.get("anyOf", [schema])} | {schema.get("items", {}).get("type")}
            if parameter["in"] == "query" and ("string" in types or "array" in types):
                found.setdefault(path, []).append(parameter["name"])
    return found


def table_state(http: httpx.Client) -> list[dict]:
    return [
        {k: row[k] for k in ("table", "snapshot_id", "rows", "data_files")}
        for row in http.get("/v1/stats").json()["data"]
    ]


def test_hostile_strings_in_every_parameter_are_harmless(client: httpx.Client) -> None:
    before = table_state(client)
    trades_before = client.get("/v1/trades", params={"limit": 10_000}).json()["data"]
    targets = string_parameters(client.get("/openapi.json").json())
    assert len(targets) >= 11
    assert "symbols" in targets["/v1/trades"] and "exchange" in targets["/v1/trades"]
    statuses = set()
    for path, names in targets.items():
        for name in names:
            for payload in PAYLOADS:
                response = client.get(
                    path, params={name: payload, "speed": 0} if path == "/v1/replay" else {name: payload}
                )
                assert response.status_code < 500, (path, name, payload, response.text)
                assert "Traceback" not in response.text
                statuses.add(response.status_code)
    assert statuses <= {200, 400, 404, 406, 414, 422}
    assert table_state(client) == before
    assert client.get("/v1/trades", params={"limit": 10_000}).json()["data"] == trades_before


def test_injected_symbols_match_nothing_rather_than_everything(client: httpx.Client) -> None:
    for payload in PAYLOADS[:3]:
        assert client.get("/v1/trades", params={"symbols": payload}).json()["data"] == []


def test_hostile_strings_over_the_websocket_are_harmless(server: Server, api_key: str, client: httpx.Client) -> None:
    before = table_state(client)
    url = server.url.replace("http", "ws") + "/v1/replay/ws"
    for name in ("symbols", "exchange", "cursor", "as_of", "kind", "start"):
        for payload in PAYLOADS[:4]:
            messages = []
            query = httpx.QueryParams({name: payload})
            with (
                connect(f"{url}?{query}", additional_headers={"X-API-Key": api_key}) as ws,
                contextlib.suppress(ConnectionClosed),
            ):
                messages.extend(orjson.loads(message) for message in ws)
            last = messages[-1]
            assert "end_of_replay" in last or last["error"]["code"] in {"invalid_query", "not_found"}, last
    assert table_state(client) == before
