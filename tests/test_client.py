"""The Python client against a fake K2 API that speaks the API's wire contract (httpx.MockTransport).

The fake serves what k2.api documents: Arrow IPC streams for `format=arrow`, the page cursor in `X-K2-Next-Cursor`
and the snapshot in `X-K2-Snapshot-Id`, NDJSON replay ending in an `end_of_replay` trailer (or an error envelope
line), and `{"error": {"code", "message", "details"}}` envelopes with `Retry-After` on 429. It fakes the data, not
the contract. The test against the real server (k2.api.app.create_app over a real lake) comes with the API.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pyarrow as pa
import pytest

import k2.client
from k2.client import (
    Client,
    K2APIError,
    K2ConnectionError,
    MissingDependencyError,
    RateLimitedError,
    snapshot_id,
)

KEY = "k2_test_key"
ROWS = 25
START = datetime(2024, 3, 4, 10, tzinfo=UTC)
ARROW = "application/vnd.apache.arrow.stream"


def _trades(first: int, count: int) -> pa.Table:
    numbers = range(first, first + count)
    return pa.table(
        {
            "timestamp": pa.array([START + timedelta(seconds=n) for n in numbers], pa.timestamp("us", tz="UTC")),
            "symbol": pa.array(["BHP"] * count),
            "price": pa.array([Decimal(f"{n}.12345678") for n in numbers], pa.decimal128(18, 8)),
            "source_sequence": pa.array(list(numbers), pa.int64()),
        }
    )


def _arrow(table: pa.Table, headers: dict[str, str] | None = None) -> httpx.Response:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return httpx.Response(200, content=sink.getvalue().to_pybytes(), headers={"content-type": ARROW, **(headers or {})})


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None, details: Any = None):
    body = {"error": {"code": code, "message": message, "details": details}}
    return httpx.Response(status, json=body, headers=headers)


class FakeApi:
    """Routes of the K2 API with canned data; remembers every request it served."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.rate_limited_left = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("x-api-key") != KEY:
            return _error(401, "unauthorized", "no API key: send it in the X-API-Key header")
        if self.rate_limited_left:
            self.rate_limited_left -= 1
            return _error(429, "rate_limited", "rate limit exceeded: retry after 0 s", {"Retry-After": "0"})
        params = request.url.params
        path = request.url.path
        if path in ("/v1/trades", "/v1/quotes"):
            assert params["format"] == "arrow"
            offset = int(params.get("cursor", "0"))
            limit = int(params["limit"])
            count = max(0, min(limit, ROWS - offset))
            headers = {"X-K2-Snapshot-Id": "42"}
            if count == limit and offset + count < ROWS:
                headers["X-K2-Next-Cursor"] = str(offset + count)
            return _arrow(_trades(offset, count), headers)
        if path in ("/v1/bars", "/v1/symbols", "/v1/snapshots", "/v1/trades/latest", "/v1/asof", "/v1/stats"):
            return _arrow(pa.table({"echo": [json.dumps(dict(params))]}), {"X-K2-Snapshot-Id": "7"})
        if path == "/v1/replay":
            return self._replay(params)
        if path == "/v1/broken":
            return httpx.Response(502, text="<html>Bad Gateway</html>")
        return _error(404, "not_found", "no such endpoint: see /docs for the routes")

    def _replay(self, params: httpx.QueryParams) -> httpx.Response:
        if params.get("symbols") == "NOPE":
            return _error(400, "invalid_query", "unknown symbol NOPE: list them with /v1/symbols")
        lines = [{"symbol": "BHP", "price": f"{n}.00000000", "source_sequence": n} for n in range(3)]
        if params.get("symbols") == "FAIL":
            lines.append({"error": {"code": "query_timeout", "message": "narrow the time range", "details": None}})
        else:
            lines.append({"end_of_replay": {"cursor": "c3", "snapshot_id": 42, "records": 3}})
        body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
        return httpx.Response(200, content=body, headers={"content-type": "application/x-ndjson"})


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def client(api: FakeApi) -> Client:
    return Client("http://k2.test", api_key=KEY, transport=httpx.MockTransport(api))


def test_all_rows_come_back_across_pages_as_one_arrow_table(
    client: Client, api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(k2.client, "MAX_PAGE_ROWS", 10)  # small pages, so the cursor is followed twice
    table = client.trades("BHP", start=START)
    assert table["source_sequence"].to_pylist() == list(range(ROWS))
    assert table.schema.field("price").type == pa.decimal128(18, 8)
    assert table["price"][3].as_py() == Decimal("3.12345678")
    assert str(table.schema.field("timestamp").type.tz) == "UTC"
    assert snapshot_id(table) == 42
    cursors = [r.url.params.get("cursor") for r in api.requests]
    assert cursors == [None, "10", "20"]
    assert api.requests[0].url.params["start"] == "2024-03-04T10:00:00+00:00"
    assert api.requests[0].url.params["symbols"] == "BHP"


def test_limit_caps_rows_and_page_size(client: Client, api: FakeApi) -> None:
    table = client.quotes(["BHP", "CBA"], limit=7)
    assert table.num_rows == 7
    assert len(api.requests) == 1
    assert api.requests[0].url.params["limit"] == "7"
    assert api.requests[0].url.params["symbols"] == "BHP,CBA"


def test_error_envelope_becomes_k2_api_error_with_code_and_advice(api: FakeApi) -> None:
    anonymous = Client("http://k2.test", transport=httpx.MockTransport(api))
    with pytest.raises(K2APIError) as caught:
        anonymous.trades("BHP")
    assert (caught.value.status, caught.value.code) == (401, "unauthorized")
    assert "X-API-Key" in caught.value.message


def test_rate_limit_raises_with_retry_after_or_waits_when_asked(client: Client, api: FakeApi) -> None:
    api.rate_limited_left = 1
    with pytest.raises(RateLimitedError) as caught:
        client.trades("BHP", limit=1)
    assert caught.value.status == 429 and caught.value.retry_after == 0.0

    patient = Client("http://k2.test", api_key=KEY, transport=httpx.MockTransport(api), rate_limit_retries=2)
    api.rate_limited_left = 2
    assert patient.trades("BHP", limit=1).num_rows == 1


def test_a_non_k2_error_page_still_raises_with_its_status(client: Client) -> None:
    with pytest.raises(K2APIError) as caught:
        client._table("/v1/broken", {}, None)
    assert caught.value.status == 502 and caught.value.code == "http_error"
    assert "Bad Gateway" in caught.value.message


def test_unreachable_server_says_what_to_check() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with (
        Client("http://k2.test", transport=httpx.MockTransport(refuse)) as offline,
        pytest.raises(K2ConnectionError) as caught,
    ):
        offline.symbols()
    assert "base_url" in str(caught.value)


def test_bars_condition_and_venue_filters_are_sent_as_the_api_spells_them(client: Client, api: FakeApi) -> None:
    client.bars("BHP", "1d")
    client.bars("BHP", "1d", exclude_conditions=[])
    client.bars("BHP", "1d", exclude_conditions=["1", "3"], exclude_venues=["X"])
    sent = [dict(r.url.params) for r in api.requests]
    assert [{k: v for k, v in p.items() if k.startswith("exclude") or k == "tz"} for p in sent] == [
        {},  # the API's defaults: the exchange's trading day and conditions
        {"exclude_conditions": "none"},
        {"exclude_conditions": "1,3", "exclude_venues": "X"},
    ]
    with pytest.raises(ValueError, match="exclude_conditions must be a list of codes"):
        client.bars("BHP", "1d", exclude_conditions="1,3")


def test_a_subscription_to_an_unreachable_server_fails_at_once() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}") as offline:
        subscription = offline.subscribe("trades", "BHP", reconnects=5)
        began = time.monotonic()
        with pytest.raises(K2ConnectionError, match="cannot reach the K2 API"):
            next(iter(subscription))
        assert time.monotonic() - began < 5  # no reconnect pauses before the first connection
        with pytest.raises(ValueError, match="reconnects"):
            offline.subscribe("trades", reconnects=-1)
        with pytest.raises(ValueError, match="no time zone"):
            offline.subscribe("trades", since=datetime(2024, 3, 4))


def test_parameters_are_sent_as_the_api_spells_them(client: Client, api: FakeApi) -> None:
    end = START + timedelta(hours=1)
    client.bars("BHP", "5m", START, end, gap_fill=True, tz="Australia/Sydney")
    client.asof(["BHP"], START, end, quote_lookback_seconds=30)
    client.latest("trades", "BHP", n=3, as_of=123)
    client.snapshots("quotes", as_of=START)
    client.symbols("quotes", exchange="asx")
    client.trades("BHP", limit=50, fresh=True)
    sent = [(r.url.path, dict(r.url.params)) for r in api.requests]
    assert sent[0] == (
        "/v1/bars",
        {
            "symbols": "BHP",
            "interval": "5m",
            "start": "2024-03-04T10:00:00+00:00",
            "end": "2024-03-04T11:00:00+00:00",
            "gap_fill": "true",
            "tz": "Australia/Sydney",
            "format": "arrow",
        },
    )
    assert sent[1][1]["quote_lookback_seconds"] == "30"
    assert sent[2] == ("/v1/trades/latest", {"symbols": "BHP", "n": "3", "as_of": "123", "format": "arrow"})
    assert sent[3][1] == {"table": "quotes", "as_of": "2024-03-04T10:00:00+00:00", "format": "arrow"}
    assert sent[4][1] == {"kind": "quotes", "exchange": "asx", "format": "arrow"}
    assert sent[5] == ("/v1/trades", {"symbols": "BHP", "fresh": "true", "limit": "50", "format": "arrow"})


def test_naive_datetimes_are_refused_before_any_request(client: Client, api: FakeApi) -> None:
    with pytest.raises(ValueError, match="time zone"):
        client.trades("BHP", start=datetime(2024, 3, 4, 10))
    with pytest.raises(ValueError, match="limit"):
        client.trades("BHP", limit=0)
    assert api.requests == []


def test_replay_yields_records_then_keeps_the_trailer(client: Client) -> None:
    replay = client.replay("trades", "BHP", START, speed=0)
    records = list(replay)
    assert [r["source_sequence"] for r in records] == [0, 1, 2]
    assert records[0]["price"] == "0.00000000"  # exact text, as the API sends it
    assert (replay.cursor, replay.snapshot_id, replay.records, replay.finished) == ("c3", 42, 3, True)


def test_replay_failure_mid_stream_or_up_front_raises(client: Client) -> None:
    seen = []
    with pytest.raises(K2APIError) as caught:
        seen.extend(client.replay("trades", "FAIL"))
    assert len(seen) == 3 and caught.value.code == "query_timeout"
    with pytest.raises(K2APIError) as caught:
        list(client.replay("trades", "NOPE"))
    assert (caught.value.status, caught.value.code) == (400, "invalid_query")


def test_pandas_and_polars_outputs(api: FakeApi) -> None:
    pytest.importorskip("pandas")
    pytest.importorskip("polars")
    frames = Client("http://k2.test", api_key=KEY, transport=httpx.MockTransport(api), output="pandas")
    df = frames.trades("BHP", limit=3)
    assert list(df["source_sequence"]) == [0, 1, 2]
    assert df["price"][1] == Decimal("1.12345678")
    pl_df = frames.trades("BHP", limit=3, output="polars")
    assert pl_df["source_sequence"].to_list() == [0, 1, 2]


def test_missing_dataframe_library_says_how_to_install(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "polars", None)  # import polars now raises ImportError
    with pytest.raises(MissingDependencyError, match="pip install polars"):
        client.trades("BHP", limit=1, output="polars")
