"""QueryEngine against a real pyiceberg SQLite catalog and warehouse, with real appends."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from k2.query.engine import TABLES, QueryEngine, QueryError
from k2.schema import QUOTES_V2, TRADES_V2
from k2.schema.arrow import records_to_arrow
from k2.schema.codecs import micros_from_datetime

DAY_US = 86_400_000_000
MONDAY = micros_from_datetime(datetime(2024, 3, 4, tzinfo=UTC))
TEN_AM = MONDAY + 10 * 3_600_000_000 + 123_456  # 2024-03-04T10:00:00.123456Z


def trade(seq: int, *, day: int = 0, exchange: str = "asx", symbol: str = "BHP", price: str = "36.66700000") -> dict:
    ts = TEN_AM + day * DAY_US + seq * 1_000_000
    return {
        "message_id": f"{exchange}-{day}-{seq}",
        "trade_id": str(seq),
        "symbol": symbol,
        "exchange": exchange,
        "asset_class": "equities",
        "timestamp": ts,
        "price": Decimal(price),
        "quantity": Decimal("100.00000000"),
        "currency": "AUD",
        "side": "BUY",
        "trade_conditions": ["XT"],
        "source_sequence": seq,
        "ingestion_timestamp": ts + 5_000,
        "platform_sequence": seq,
        "vendor_data": {"venue": exchange},
    }


def append_trades(table: Table, rows: list[dict]) -> None:
    # pyiceberg does not apply the table's sort order on write (docs/stack-notes.md, "Iceberg"): sort first.
    table.append(records_to_arrow(TRADES_V2, sorted(rows, key=lambda r: r["timestamp"])))


def week_of_trades(per_partition: int = 5) -> list[dict]:
    """3 days x 2 exchanges = 6 partitions, so one append writes 6 data files."""
    return [
        trade(seq, day=day, exchange=exchange)
        for day in range(3)
        for exchange in ("asx", "binance")
        for seq in range(per_partition)
    ]


def files_read(engine: QueryEngine, query: str, params: list[Any] | None = None) -> int:
    """Data files the iceberg scan opened, from the profile EXPLAIN ANALYZE prints."""
    plan = engine.sql(f"EXPLAIN ANALYZE {query}", params)
    text = "\n".join(str(v) for column in plan.columns for v in column.to_pylist())
    counts = re.findall(r"Total Files Read: (\d+)", text)
    assert counts, f"no file count in the profile:\n{text}"
    return sum(int(n) for n in counts)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return open_catalog(Settings(home=tmp_path))


@pytest.fixture
def tables(catalog: Catalog) -> dict[str, Table]:
    return ensure_tables(catalog)


def test_count_matches_rows_appended(catalog: Catalog, tables: dict[str, Table]) -> None:
    append_trades(tables["trades_v2"], week_of_trades())

    with QueryEngine(catalog) as engine:
        result = engine.sql("SELECT count(*) AS n FROM market_data.trades_v2")

    assert result.to_pylist() == [{"n": 30}]


def test_decimal_price_round_trips_exactly(catalog: Catalog, tables: dict[str, Table]) -> None:
    append_trades(tables["trades_v2"], [trade(0), trade(1, price="0.00000001")])

    with QueryEngine(catalog) as engine:
        result = engine.sql("SELECT price, sum(price) OVER () AS total FROM market_data.trades_v2 ORDER BY price")

    assert result.schema.field("price").type == pa.decimal128(18, 8)
    prices = result.column("price").to_pylist()
    assert prices == [Decimal("0.00000001"), Decimal("36.66700000")]
    assert str(prices[1]) == "36.66700000"  # the scale survives, not just the value
    assert result.column("total").to_pylist()[0] == Decimal("36.66700001")


def test_timestamps_come_back_in_utc(catalog: Catalog, tables: dict[str, Table]) -> None:
    append_trades(tables["trades_v2"], [trade(0)])

    with QueryEngine(catalog) as engine:
        result = engine.sql("SELECT timestamp, current_setting('TimeZone') AS zone FROM market_data.trades_v2")

    assert result.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    row = result.to_pylist()[0]
    assert row["zone"] == "UTC"
    assert row["timestamp"] == datetime(2024, 3, 4, 10, 0, 0, 123_456, tzinfo=UTC)
    assert row["timestamp"].utcoffset().total_seconds() == 0


def test_parameters_bind_values_and_an_injection_is_only_a_value(catalog: Catalog, tables: dict[str, Table]) -> None:
    append_trades(tables["trades_v2"], [trade(0), trade(1), trade(2, symbol="CBA")])
    count = "SELECT count(*) AS n FROM market_data.trades_v2 WHERE symbol = ?"

    with QueryEngine(catalog) as engine:
        assert engine.sql(count, ["BHP"]).to_pylist() == [{"n": 2}]
        assert engine.sql(
            "SELECT count(*) AS n FROM market_data.trades_v2 WHERE symbol = $sym", {"sym": "CBA"}
        ).to_pylist() == [{"n": 1}]
        for hostile in ("BHP'; DROP VIEW market_data.trades_v2; --", "' OR '1'='1"):
            assert engine.sql(count, [hostile]).to_pylist() == [{"n": 0}]
        assert engine.sql("SELECT count(*) AS n FROM market_data.trades_v2").to_pylist() == [{"n": 3}]


def test_refresh_sees_rows_appended_after_open(catalog: Catalog, tables: dict[str, Table]) -> None:
    append_trades(tables["trades_v2"], [trade(0), trade(1)])
    count = "SELECT count(*) AS n FROM market_data.trades_v2"

    with QueryEngine(catalog) as engine:
        first_snapshot = engine.snapshot_ids["trades_v2"]
        append_trades(tables["trades_v2"], [trade(2), trade(3), trade(4, day=1)])
        assert engine.sql(count).to_pylist() == [{"n": 2}]  # views stay on the snapshot they were opened at

        engine.refresh()

        assert engine.sql(count).to_pylist() == [{"n": 5}]
        assert engine.snapshot_ids["trades_v2"] != first_snapshot


def test_table_without_snapshot_is_queryable_with_its_columns(catalog: Catalog, tables: dict[str, Table]) -> None:
    with QueryEngine(catalog) as engine:
        assert engine.snapshot_ids["quotes_v2"] is None
        result = engine.sql("SELECT * FROM market_data.quotes_v2 WHERE exchange = ?", ["asx"])

    assert result.num_rows == 0
    assert result.column_names == QUOTES_V2.field_names
    assert result.schema.field("bid_price").type == pa.decimal128(18, 8)


def test_table_missing_from_catalog_is_queryable_until_it_appears(catalog: Catalog) -> None:
    with QueryEngine(catalog) as engine:
        empty = engine.sql("SELECT * FROM market_data.trades_v2")
        assert empty.num_rows == 0
        assert empty.column_names == TRADES_V2.field_names
        assert empty.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")

        append_trades(ensure_tables(catalog)["trades_v2"], [trade(0)])
        engine.refresh()

        assert engine.sql("SELECT count(*) AS n FROM market_data.trades_v2").to_pylist() == [{"n": 1}]


@pytest.mark.parametrize(
    "query",
    [
        "SELEC * FROM market_data.trades_v2",  # parser
        "SELECT * FROM market_data.trades",  # catalog: no such table
        "SELECT no_such_column FROM market_data.trades_v2",  # binder
    ],
)
def test_bad_sql_raises_query_error_naming_the_tables(catalog: Catalog, tables: dict[str, Table], query: str) -> None:
    with QueryEngine(catalog) as engine, pytest.raises(QueryError) as caught:
        engine.sql(query)

    message = str(caught.value)
    assert all(name in message for name in TABLES)
    assert "DESCRIBE" in message


def test_missing_parameter_says_how_to_pass_values(catalog: Catalog, tables: dict[str, Table]) -> None:
    with QueryEngine(catalog) as engine, pytest.raises(QueryError, match="placeholder"):
        engine.sql("SELECT count(*) FROM market_data.trades_v2 WHERE symbol = ? AND exchange = ?", ["BHP"])


def test_filter_on_one_day_reads_only_that_days_files(catalog: Catalog, tables: dict[str, Table]) -> None:
    append_trades(tables["trades_v2"], week_of_trades())
    day_two = [datetime(2024, 3, 5, tzinfo=UTC), datetime(2024, 3, 6, tzinfo=UTC)]
    one_day = "SELECT sum(quantity) FROM market_data.trades_v2 WHERE timestamp >= ? AND timestamp < ?"

    with QueryEngine(catalog) as engine:
        assert files_read(engine, "SELECT sum(quantity) FROM market_data.trades_v2") == 6
        assert files_read(engine, one_day, day_two) == 2  # that day, both exchanges
        assert files_read(engine, f"{one_day} AND exchange = ?", [*day_two, "binance"]) == 1
        # Pruning must not change the answer.
        assert engine.sql(one_day.replace("sum(quantity)", "count(*) AS n"), day_two).to_pylist() == [{"n": 10}]
