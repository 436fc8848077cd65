"""One result, five formats: JSON keeps decimals exact as strings, CSV has a header, Parquet and Arrow round-trip."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from k2.query import market
from k2.query.engine import QueryEngine

DAY_START, DAY_END = datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 5, tzinfo=UTC)
DAY = {"start": "2024-03-04T00:00:00Z", "end": "2024-03-05T00:00:00Z"}


def test_json_decimals_are_exact_strings_and_timestamps_utc_z(client: httpx.Client) -> None:
    body = client.get("/v1/trades", params={"symbols": "BHP", **DAY, "limit": 1}).json()
    first = body["data"][0]
    assert first["price"] == "36.66700000"
    assert first["quantity"] == "250.00000000"
    assert first["timestamp"] == "2024-03-04T09:59:00.000000Z"
    assert isinstance(body["snapshot_id"], int)
    assert body["next_cursor"]


def test_csv_has_a_header_and_one_line_per_row(client: httpx.Client) -> None:
    response = client.get("/v1/trades", params={"symbols": "BHP", **DAY, "format": "csv"})
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:3] == ["message_id", "trade_id", "symbol"]
    assert len(rows) == 1 + 21
    assert rows[1][rows[0].index("price")] == "36.66700000"


@pytest.mark.parametrize("path", ["/v1/trades", "/v1/bars", "/v1/asof", "/v1/stats"])
def test_parquet_and_arrow_round_trip_to_the_same_table(client: httpx.Client, path: str) -> None:
    params = {"symbols": "BHP,CBA", **DAY}
    parquet = pq.read_table(io.BytesIO(client.get(path, params={**params, "format": "parquet"}).content))
    arrow = pa.ipc.open_stream(client.get(path, params={**params, "format": "arrow"}).content).read_all()
    assert parquet.num_rows > 0
    assert parquet.equals(arrow, check_metadata=False)


def test_arrow_keeps_the_library_types_and_values(client: httpx.Client, engine: QueryEngine) -> None:
    got = pa.ipc.open_stream(client.get("/v1/trades", params={**DAY, "format": "arrow"}).content).read_all()
    expected = market.page(engine, "trades", None, DAY_START, DAY_END, limit=1000).rows
    assert got.schema.field("price").type == pa.decimal128(18, 8)
    assert got.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    assert got.equals(expected, check_metadata=False)


def test_accept_header_chooses_the_format(client: httpx.Client) -> None:
    cases = {
        "text/csv": "text/csv",
        "application/vnd.apache.parquet": "application/vnd.apache.parquet",
        "application/vnd.apache.arrow.stream": "application/vnd.apache.arrow.stream",
        "application/x-ndjson": "application/x-ndjson",
        "text/html, */*;q=0.8": "application/json",
        "application/json;q=0.5, text/csv": "text/csv",
    }
    for accept, media in cases.items():
        response = client.get("/v1/trades", params={"limit": 2}, headers={"Accept": accept})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media), accept
    # format= wins over Accept
    response = client.get("/v1/trades", params={"limit": 2, "format": "json"}, headers={"Accept": "text/csv"})
    assert response.headers["content-type"].startswith("application/json")


def test_ndjson_is_one_record_per_line_with_the_cursor_in_a_header(client: httpx.Client) -> None:
    response = client.get("/v1/trades", params={"limit": 5, "format": "ndjson"})
    lines = response.content.splitlines()
    assert len(lines) == 5
    assert all("message_id" in orjson.loads(line) for line in lines)
    assert response.headers["X-K2-Next-Cursor"]
    assert int(response.headers["X-K2-Snapshot-Id"])


def test_unsupported_accept_is_406_and_unknown_format_422(client: httpx.Client) -> None:
    response = client.get("/v1/trades", headers={"Accept": "image/png"})
    assert response.status_code == 406
    assert response.json()["error"]["code"] == "not_acceptable"
    response = client.get("/v1/trades", params={"format": "xml"})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["loc"][-1] == "format"
