"""The /v1 reads answer what the query library answers: pages, latest, bars, as-of joins, summaries, time travel."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pyarrow as pa

from k2.api import create_key
from k2.api.formats import records
from k2.api.params import AS_OF_PATTERN, SYMBOLS_PATTERN
from k2.query import market
from k2.query.asof import trades_with_quotes
from k2.query.bars import bars
from k2.query.engine import QueryEngine
from k2.query.summary import daily_summary
from tests.api.conftest import SYMBOLS, build_lake, lake_trades, serving
from tests.query.records import append_trades

START, END = datetime(2024, 3, 4, tzinfo=UTC), datetime(2024, 3, 6, tzinfo=UTC)
RANGE = {"start": "2024-03-04T00:00:00Z", "end": "2024-03-06T00:00:00Z"}


def test_keyset_pages_visit_every_row_once(client: httpx.Client, engine: QueryEngine) -> None:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 7, **RANGE} | ({"cursor": cursor} if cursor else {})
        body = client.get("/v1/trades", params=params).json()
        seen += [row["message_id"] for row in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    everything = market.trades(engine, None, START, END).column("message_id").to_pylist()
    assert seen == everything
    assert len(set(seen)) == len(seen)
    assert pages >= len(everything) // 7


def test_symbols_may_be_a_comma_list_or_repeated(client: httpx.Client) -> None:
    listed = client.get("/v1/trades", params={"symbols": "BHP,RIO", **RANGE}).json()["data"]
    repeated = client.get("/v1/trades", params=[("symbols", "BHP"), ("symbol", "RIO"), *RANGE.items()]).json()["data"]
    assert listed == repeated
    assert {row["symbol"] for row in listed} == {"BHP", "RIO"}


def test_exchange_filters(client: httpx.Client) -> None:
    rows = client.get("/v1/trades", params={"exchange": "binance", **RANGE}).json()["data"]
    assert rows
    assert {row["exchange"] for row in rows} == {"binance"}


def test_bars_equal_the_library_bars(client: httpx.Client, engine: QueryEngine) -> None:
    for interval, gap_fill, tz in (("1m", False, "UTC"), ("15m", True, "Australia/Sydney"), ("1d", False, "UTC")):
        params = {"symbols": "BHP,CBA", "interval": interval, "gap_fill": gap_fill, "tz": tz, **RANGE}
        got = client.get("/v1/bars", params=params).json()["data"]
        expected = bars(engine, ["BHP", "CBA"], interval, START, END, gap_fill=gap_fill, tz=tz)
        assert got == records(expected)
        assert got


def test_bars_default_to_each_exchanges_trading_day_and_flag_cut_bars(
    client: httpx.Client, engine: QueryEngine
) -> None:
    params = {"symbols": "BHP,BTCUSDT", "interval": "1d", **RANGE}
    got = client.get("/v1/bars", params=params).json()["data"]

    assert got == records(bars(engine, ["BHP", "BTCUSDT"], "1d", START, END))
    # asx: Sydney days (the range starts 11 h into Monday's); binance: UTC days, both whole.
    assert [(r["symbol"], r["timestamp"], r["partial"]) for r in got] == [
        ("BHP", "2024-03-03T13:00:00.000000Z", True),
        ("BHP", "2024-03-04T13:00:00.000000Z", False),
        ("BTCUSDT", "2024-03-04T00:00:00.000000Z", False),
        ("BTCUSDT", "2024-03-05T00:00:00.000000Z", False),
    ]


def test_bars_take_condition_and_venue_filters(client: httpx.Client, engine: QueryEngine) -> None:
    params = [("symbols", "BHP"), ("interval", "1h"), ("tz", "UTC"), *RANGE.items()]
    every = client.get("/v1/bars", params=[*params, ("exclude_conditions", "none")]).json()["data"]
    assert every == records(bars(engine, "BHP", "1h", START, END, tz="UTC", exclude_conditions=()))
    listed = [("exclude_conditions", "1,3"), ("exclude_conditions", "9"), ("exclude_venues", "X")]
    filtered = client.get("/v1/bars", params=[*params, *listed]).json()["data"]
    library = bars(engine, "BHP", "1h", START, END, tz="UTC", exclude_conditions=["1", "3", "9"], exclude_venues=["X"])
    assert filtered == records(library)
    bad = client.get("/v1/bars", params=[*params, ("exclude_conditions", "1,,3")])  # breaks the stated pattern
    assert bad.status_code == 422
    assert bad.json()["error"]["message"] == (
        "invalid value for exclude_conditions: give codes separated by commas, e.g. 1,3,9, or none to leave nothing out"
    )
    mixed = client.get("/v1/bars", params=[*params, ("exclude_conditions", "1,none")])  # a rule the schema cannot state
    assert mixed.status_code == 400
    assert "invalid exclude_conditions" in mixed.json()["error"]["message"]


def test_openapi_describes_the_bars_defaults_filters_and_partial_flag(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    described = {p["name"]: p["description"] for p in spec["paths"]["/v1/bars"]["get"]["parameters"]}
    assert "Omit for each exchange's trading day (asx: Australia/Sydney" in described["tz"]
    assert "`none` counts every trade" in described["exclude_conditions"]
    assert "vendor_data venue" in described["exclude_venues"]
    bar_row = spec["components"]["schemas"]["BarRow"]["properties"]
    assert bar_row["partial"]["type"] == "boolean"
    assert "the requested range cuts the bar" in bar_row["partial"]["description"]


def test_asof_joins_each_trade_to_its_prevailing_quote(client: httpx.Client, engine: QueryEngine) -> None:
    got = client.get("/v1/asof", params={"symbols": "BHP", **RANGE}).json()["data"]
    assert got == records(trades_with_quotes(engine, ["BHP"], START, END))
    assert got[0]["bid_price"] == "36.00000000"
    assert got[0]["mid"] == "36.010000000"


def test_latest_summary_symbols_stats_snapshots(client: httpx.Client, engine: QueryEngine) -> None:
    latest = client.get("/v1/trades/latest", params={"symbols": "BHP", "n": 2}).json()["data"]
    assert latest == records(market.latest(engine, "trades", ["BHP"], 2))
    daily = client.get("/v1/summary/daily", params={"tz": "Australia/Sydney"}).json()["data"]
    assert daily == records(daily_summary(engine, None, None, None, tz="Australia/Sydney"))
    listed = client.get("/v1/symbols").json()["data"]
    assert {(row["symbol"], row["exchange"]) for row in listed} == {
        *((s, "asx") for s in SYMBOLS),
        ("BTCUSDT", "binance"),
    }
    stats = {row["table"]: row for row in client.get("/v1/stats").json()["data"]}
    assert stats["market_data.trades_v2"]["rows"] == 2 * len(lake_trades())
    snapshots = client.get("/v1/snapshots", params={"table": "trades"}).json()["data"]
    assert len(snapshots) == 2
    assert client.get("/v1/quotes/latest").json()["data"]


def test_as_of_returns_earlier_data_after_a_later_append(tmp_path: Path) -> None:
    lake = build_lake(tmp_path / "k2home")
    key = create_key(lake.settings, "time-travel")
    with serving(lake.settings) as server, httpx.Client(base_url=server.url, headers={"X-API-Key": key}) as http:
        before = http.get("/v1/trades", params={"limit": 10_000}).json()
        committed = datetime.now(UTC)
        append_trades(lake.tables["trades_v2"], lake_trades(day=2))
        after = http.get("/v1/trades", params={"limit": 10_000}).json()
        assert len(after["data"]) == len(before["data"]) + len(lake_trades())
        assert after["snapshot_id"] != before["snapshot_id"]
        by_id = http.get("/v1/trades", params={"limit": 10_000, "as_of": before["snapshot_id"]}).json()
        by_time = http.get("/v1/trades", params={"limit": 10_000, "as_of": committed.isoformat()}).json()
        assert by_id["data"] == by_time["data"] == before["data"]
        for path in ("/v1/bars", "/v1/stats", "/v1/symbols", "/v1/summary/daily", "/v1/snapshots"):
            old = http.get(path, params={"as_of": before["snapshot_id"]}).json()["data"]
            new = http.get(path).json()["data"]
            assert old != new, path


def test_pages_keep_reading_their_first_snapshot(tmp_path: Path) -> None:
    lake = build_lake(tmp_path / "k2home")
    key = create_key(lake.settings, "paging")
    with serving(lake.settings) as server, httpx.Client(base_url=server.url, headers={"X-API-Key": key}) as http:
        first = http.get("/v1/trades", params={"limit": 50}).json()
        append_trades(lake.tables["trades_v2"], lake_trades(day=2))
        seen = [row["message_id"] for row in first["data"]]
        cursor = first["next_cursor"]
        while cursor:
            body = http.get("/v1/trades", params={"limit": 50, "cursor": cursor}).json()
            assert body["snapshot_id"] == first["snapshot_id"]
            seen += [row["message_id"] for row in body["data"]]
            cursor = body["next_cursor"]
        assert len(seen) == len(set(seen)) == 2 * len(lake_trades())


def test_bad_arguments_answer_400_or_422_saying_what_to_do(client: httpx.Client) -> None:
    cases = [
        ({"start": "2024-03-04T10:00:00"}, 422),  # no zone
        ({"start": "2024-03-05T00:00:00Z", "end": "2024-03-04T00:00:00Z"}, 400),
        ({"limit": 0}, 422),
        ({"cursor": "not-a-cursor"}, 400),
        ({"as_of": "2024-13-45T10:00:00Z"}, 400),  # the form the schema states, but no such day
        ({"symbols": ","}, 422),
        ({"symbols": ""}, 422),
        ({"as_of": "yesterday"}, 422),
        ({"start": "1709546400"}, 422),  # seconds since 1970 are not an instant here
    ]
    for params, status in cases:
        response = client.get("/v1/trades", params=params)
        assert response.status_code == status, (params, response.text)
        assert response.json()["error"]["message"]
    assert client.get("/v1/bars", params={"interval": "7m"}).status_code == 400
    assert client.get("/v1/bars", params={"tz": "Mars/Olympus"}).status_code == 400
    assert client.get("/v1/asof").status_code == 422  # start and end are required
    for path in ("/v1/trades", "/v1/bars", "/v1/stats", "/v1/snapshots", "/v1/trades/latest", "/v1/symbols"):
        missing = client.get(path, params={"as_of": "123"})
        assert missing.status_code == 404, path
        assert missing.json()["error"]["code"] == "snapshot_not_found"


def test_refusals_name_the_parameter_and_what_to_pass(client: httpx.Client) -> None:
    empty = client.get("/v1/trades", params={"symbols": ""})
    assert empty.status_code == 422
    assert empty.json()["error"]["message"] == (
        "invalid value for symbols: name 1 to 64 characters per symbol, comma-separated, e.g. symbols=BHP,CBA;"
        " omit it for all"
    )
    too_long = client.get("/v1/trades", params={"symbols": "BHP," + "X" * 65})
    assert too_long.status_code == 422
    twice = client.get("/v1/trades", params=[("exchange", "asx"), ("exchange", "nonsense"), ("limit", "5")])
    assert twice.status_code == 422
    assert twice.json()["error"] == {
        "code": "invalid_parameters",
        "message": "exchange given more than once: pass each parameter once (only exclude_conditions, exclude_venues,"
        " symbol, symbols may repeat)",
        "details": [{"loc": ["query", "exchange"], "msg": "repeated", "type": "repeated_parameter"}],
    }
    spaced = client.get("/v1/trades", params=[("symbols", " BHP , CBA"), ("symbol", "BHP"), ("limit", "1000")])
    assert {row["symbol"] for row in spaced.json()["data"]} == {"BHP", "CBA"}


def test_the_description_states_the_rules_it_enforces(client: httpx.Client) -> None:
    spec = client.get("/openapi.json").json()
    parameters = {p["name"]: p["schema"] for p in spec["paths"]["/v1/trades"]["get"]["parameters"]}
    assert parameters["symbols"]["anyOf"][0]["items"]["pattern"] == SYMBOLS_PATTERN
    assert parameters["as_of"]["anyOf"][0]["pattern"] == AS_OF_PATTERN
    for path, methods in spec["paths"].items():
        responses = methods["get"]["responses"]
        assert {"413", "414", "500"} <= responses.keys(), path
        if path.startswith("/v1/"):
            assert {"401", "422", "429", "503", "504"} <= responses.keys(), path
            assert "Retry-After" in responses["429"]["headers"]
        for status, response in responses.items():
            assert response.get("content"), (path, status)  # each with its media type


def test_fresh_reads_say_what_they_need(client: httpx.Client) -> None:
    # This server's home has no Kafka (no `k2 stack`, no K2_KAFKA_BOOTSTRAP): fresh reads cannot see a tail.
    for path in ("/v1/trades", "/v1/quotes/latest"):
        response = client.get(path, params={"fresh": "true"})
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "kafka_unavailable"
        assert "k2 stack" in response.json()["error"]["message"]
    for params in ({"fresh": "true", "as_of": "123"}, {"fresh": "true", "cursor": "abc"}):
        response = client.get("/v1/trades", params=params)
        assert response.status_code == 400, params
        assert "drop `cursor` and `as_of`" in response.json()["error"]["message"]


def test_empty_result_is_an_empty_page(client: httpx.Client) -> None:
    body = client.get("/v1/trades", params={"symbols": "NOPE"}).json()
    assert body["data"] == []
    assert body["next_cursor"] is None
    table = pa.ipc.open_stream(client.get("/v1/trades", params={"symbols": "NOPE", "format": "arrow"}).content)
    assert table.read_all().num_rows == 0
