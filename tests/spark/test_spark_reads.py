"""Spark reads K2's tables through both catalogs and gets exactly DuckDB's rows; its scans prune partitions."""

from __future__ import annotations

from decimal import Decimal

import pytest

from k2.lake.catalog import NAMESPACE
from k2.query.engine import QueryEngine
from tests.spark.conftest import REST, SparkLake, multiset, spark_arrow

pytestmark = pytest.mark.spark

TABLES = ("trades_v2", "quotes_v2", "bars_v2")


def _duckdb_rows(lake: SparkLake, table: str):
    from k2.lake.catalog import open_catalog

    with QueryEngine(open_catalog(lake.settings)) as engine:
        return engine.sql(f"SELECT * FROM {NAMESPACE}.{table}")


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("via", ["rest", "jdbc"])
def test_spark_reads_exactly_the_rows_duckdb_reads(spark_lake: SparkLake, via: str, table: str) -> None:
    catalog = REST if via == "rest" else spark_lake.jdbc
    ours = _duckdb_rows(spark_lake, table)
    frame = spark_lake.spark.table(f"{catalog}.{NAMESPACE}.{table}")
    theirs = spark_arrow(frame).select(ours.column_names)

    assert ours.num_rows > 0
    assert theirs.num_rows == ours.num_rows
    assert multiset(theirs) == multiset(ours)
    # Not only equal after conversion: Spark's own types are exact (no double, no millisecond timestamps).
    schema = {f.name: f.dataType.simpleString() for f in frame.schema}
    assert schema["timestamp"] == "timestamp"
    price = {"bars_v2": "close", "quotes_v2": "bid_price", "trades_v2": "price"}[table]
    assert schema[price] == "decimal(18,8)"
    prices = theirs.column(price).drop_null().to_pylist()
    assert prices and all(isinstance(v, Decimal) and v.as_tuple().exponent == -8 for v in prices)
