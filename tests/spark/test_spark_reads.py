"""Spark reads K2's tables through both catalogs and gets exactly DuckDB's rows; its scans prune partitions."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING

import pyarrow as pa
import pytest

from k2.lake.catalog import NAMESPACE, open_catalog
from k2.query.engine import QueryEngine
from tests.spark.conftest import REST, SparkLake, multiset, spark_arrow

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

pytestmark = pytest.mark.spark

TABLES = ("trades_v2", "quotes_v2", "bars_v2")


def _duckdb_rows(lake: SparkLake, table: str, query: str = "SELECT * FROM {}") -> pa.Table:
    """K2's own answer: its DuckDB engine over the same catalog."""
    with QueryEngine(open_catalog(lake.settings)) as engine:
        return engine.sql(query.format(f"{NAMESPACE}.{table}"))


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


# 2014-03-11 UTC in microseconds: the bounds Iceberg's scan shows once Spark pushed the filter down
DAY, NEXT_DAY = 1_394_496_000_000_000, 1_394_582_400_000_000
ONE_DAY_ASX = (
    "SELECT symbol, count(*), sum(price), min(timestamp), max(timestamp) FROM {table} WHERE exchange = 'asx' "
    "AND timestamp >= TIMESTAMP '2014-03-11 00:00:00' AND timestamp < TIMESTAMP '2014-03-12 00:00:00' GROUP BY symbol"
)


def scan_metrics(frame: DataFrame) -> dict[str, int]:
    """The custom metrics of the Iceberg scan that ran for `frame` (after an action on it): resultDataFiles,
    skippedDataFiles, totalDataManifest..."""
    leaves = frame._jdf.queryExecution().executedPlan().collectLeaves()
    scans = [leaves.apply(i) for i in range(leaves.size()) if leaves.apply(i).nodeName().startswith("BatchScan")]
    assert len(scans) == 1, [leaves.apply(i).nodeName() for i in range(leaves.size())]
    metrics, entries = {}, scans[0].metrics().iterator()
    while entries.hasNext():
        entry = entries.next()
        metrics[entry._1()] = entry._2().value()
    return metrics


@pytest.mark.parametrize("via", ["rest", "jdbc"])
def test_a_day_and_exchange_filter_prunes_to_that_partitions_files(spark_lake: SparkLake, via: str) -> None:
    spark = spark_lake.spark
    table = f"{REST if via == 'rest' else spark_lake.jdbc}.{NAMESPACE}.trades_v2"
    files = spark.sql(f"SELECT partition.timestamp_day AS day, partition.exchange AS exchange FROM {table}.files")
    per_partition = Counter((str(r.day), r.exchange) for r in files.collect())
    total, wanted = sum(per_partition.values()), per_partition[("2014-03-11", "asx")]
    assert wanted >= 1 and total > wanted  # several days in the lake, so pruning has something to skip

    query = ONE_DAY_ASX.format(table=table)
    plan = spark.sql(f"EXPLAIN {query}").collect()[0][0]
    assert f"BatchScan {table}" in plan
    # Spark handed both predicates to Iceberg, which plans files from the partition values (day, exchange)
    assert f"[filters=exchange = 'asx', timestamp >= {DAY}, timestamp < {NEXT_DAY}," in plan

    frame = spark.sql(query)
    theirs = spark_arrow(frame)  # Arrow, not Row objects: pyspark would make naive local-time datetimes
    metrics = scan_metrics(frame)
    assert (metrics["resultDataFiles"], metrics["skippedDataFiles"]) == (wanted, total - wanted)

    ours = _duckdb_rows(spark_lake, "trades_v2", ONE_DAY_ASX.format(table="{}"))
    assert multiset(theirs) == multiset(ours)
    assert sorted(theirs.column("symbol").to_pylist()) == ["BHP", "DVN", "MWR", "RIO"]
