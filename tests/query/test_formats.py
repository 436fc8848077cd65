"""Output formats: exact decimals, UTC timestamps, nulls, in CSV, JSON and the rich table."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
from rich.console import Console

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from k2.query.engine import QueryEngine
from k2.query.formats import print_table, write_csv, write_json
from k2.schema import TRADES_V2
from k2.schema.arrow import records_to_arrow
from k2.schema.codecs import micros_from_datetime

TEN_AM = micros_from_datetime(datetime(2024, 3, 4, 10, 0, 0, 123_456, tzinfo=UTC))

ROW = {
    "message_id": "m-1",
    "trade_id": "1",
    "symbol": "BHP",
    "exchange": "asx",
    "asset_class": "equities",
    "timestamp": TEN_AM,
    "price": Decimal("36.66700000"),
    "quantity": Decimal("0E-8"),
    "currency": "AUD",
    "side": "BUY",
    "trade_conditions": ["XT", "CX"],
    "source_sequence": None,
    "ingestion_timestamp": TEN_AM + 5_000,
    "platform_sequence": 7,
    "vendor_data": {"venue": 'asx, "main"'},
}
COLUMNS = ["symbol", "timestamp", "price", "quantity", "source_sequence", "trade_conditions", "vendor_data"]


def known_trade() -> pa.Table:
    return records_to_arrow(TRADES_V2, [ROW]).select(COLUMNS)


def csv_text(table: pa.Table) -> str:
    out = io.StringIO()
    write_csv(table, out)
    return out.getvalue()


def json_text(table: pa.Table) -> str:
    out = io.StringIO()
    write_json(table, out)
    return out.getvalue()


def test_csv_prints_a_known_row_exactly() -> None:
    assert csv_text(known_trade()) == (
        "symbol,timestamp,price,quantity,source_sequence,trade_conditions,vendor_data\n"
        'BHP,2024-03-04T10:00:00.123456Z,36.66700000,0.00000000,,"[""XT"",""CX""]",'
        '"{""venue"":""asx, \\""main\\""""}"\n'
    )


def test_csv_of_a_query_result_matches_what_was_appended(tmp_path: Path) -> None:
    catalog = open_catalog(Settings(home=tmp_path))
    ensure_tables(catalog)["trades_v2"].append(records_to_arrow(TRADES_V2, [ROW]))

    with QueryEngine(catalog) as engine:
        result = engine.sql("SELECT symbol, timestamp, price, quantity, source_sequence FROM market_data.trades_v2")

    assert csv_text(result) == (
        "symbol,timestamp,price,quantity,source_sequence\nBHP,2024-03-04T10:00:00.123456Z,36.66700000,0.00000000,\n"
    )


def test_json_keeps_decimals_and_timestamps_as_strings() -> None:
    text = json_text(known_trade())

    rows = json.loads(text, parse_float=Decimal)
    assert rows == [
        {
            "symbol": "BHP",
            "timestamp": "2024-03-04T10:00:00.123456Z",
            "price": "36.66700000",
            "quantity": "0.00000000",
            "source_sequence": None,
            "trade_conditions": ["XT", "CX"],
            "vendor_data": {"venue": 'asx, "main"'},
        }
    ]
    assert text.startswith("[\n{") and text.endswith("}\n]\n")  # one object per line


def test_json_of_no_rows_is_an_empty_array() -> None:
    assert json_text(known_trade().slice(0, 0)) == "[]\n"
    assert csv_text(known_trade().slice(0, 0)) == ",".join(COLUMNS) + "\n"


def test_json_gives_repeated_column_names_distinct_keys() -> None:
    table = pa.table([pa.array([1]), pa.array([2])], names=["a", "a"])
    assert json.loads(json_text(table)) == [{"a": 1, "a_1": 2}]


def test_large_decimals_and_nanoseconds_keep_every_digit() -> None:
    table = pa.table(
        {
            "total": pa.array([Decimal("12345678901234567890.12345678")], pa.decimal128(38, 8)),
            "ns": pa.array([1_709_546_400_123_456_789], pa.timestamp("ns", tz="UTC")),
            "naive": pa.array([datetime(2024, 3, 4, 10)], pa.timestamp("us")),
            "ratio": pa.array([float("nan")]),
        }
    )
    assert csv_text(table).splitlines()[1] == (
        "12345678901234567890.12345678,2024-03-04T10:00:00.123456789Z,2024-03-04T10:00:00.000000,NaN"
    )


def test_timestamps_in_another_zone_print_as_utc() -> None:
    table = pa.table({"t": pa.array([TEN_AM], pa.timestamp("us", tz="Australia/Sydney"))})
    nested = pa.table({"t": pa.array([[TEN_AM]], pa.list_(pa.timestamp("us", tz="Australia/Sydney")))})

    assert csv_text(table).splitlines()[1] == "2024-03-04T10:00:00.123456Z"
    assert json.loads(json_text(nested)) == [{"t": ["2024-03-04T10:00:00.123456Z"]}]


def test_table_prints_values_as_written() -> None:
    table = known_trade().append_column("note", pa.array(["[bold]not markup[/bold]"]))
    console = Console(file=io.StringIO(), width=250, color_system=None)

    print_table(table, console)

    text = console.file.getvalue()
    for expected in ("36.66700000", "0.00000000", "2024-03-04T10:00:00.123456Z", "NULL", "[bold]not markup[/bold]"):
        assert expected in text
    assert "1 row" in text


def test_table_caps_rows_and_says_so() -> None:
    table = pa.table({"n": pa.array(range(50))})
    console = Console(file=io.StringIO(), width=80, color_system=None)

    print_table(table, console, max_rows=3)

    assert "first 3 of 50 rows" in console.file.getvalue()
