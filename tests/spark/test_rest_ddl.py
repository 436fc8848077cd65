"""Spark manages tables of its own through `k2 catalog-serve`: the create, replace, alter, rename and drop requests
of Iceberg's Java REST client, which pyiceberg's client sends differently or not at all."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from k2.lake.catalog import open_catalog
from tests.spark.conftest import REST, SparkLake

pytestmark = pytest.mark.spark

SCRATCH = "spark_scratch"  # not market_data: the read tests count that namespace's files


def test_spark_creates_replaces_alters_renames_and_drops_tables_through_the_rest_catalog(spark_lake: SparkLake) -> None:
    spark, scratch = spark_lake.spark, f"{REST}.{SCRATCH}"
    first_call = len(spark_lake.rest_calls)
    spark.sql(f"CREATE NAMESPACE {scratch}")
    spark.sql(f"CREATE TABLE {scratch}.made (id BIGINT, price DECIMAL(18,8), ts TIMESTAMP) PARTITIONED BY (days(ts))")
    spark.sql(
        f"INSERT INTO {scratch}.made VALUES (1, 1.5, TIMESTAMP '2014-03-11 00:00:00.000001'), "
        "(2, 0.00000001, TIMESTAMP '2014-03-12 23:59:59.999999')"
    )
    spark.sql(f"ALTER TABLE {scratch}.made ADD COLUMN note STRING")  # a schema change: add-schema, set-current-schema
    # CTAS is a stage-create, then one commit asserting `assert-create`; REPLACE is a replace transaction
    spark.sql(f"CREATE TABLE {scratch}.copy AS SELECT * FROM {scratch}.made")
    spark.sql(f"CREATE OR REPLACE TABLE {scratch}.copy AS SELECT id, price FROM {scratch}.made WHERE id = 2")
    spark.sql(f"ALTER TABLE {scratch}.copy RENAME TO {SCRATCH}.renamed")

    # K2's side (pyiceberg on the SQL catalog behind the server) sees exactly what Spark made.
    backend = open_catalog(spark_lake.settings)
    made = backend.load_table((SCRATCH, "made"))
    assert [f.name for f in made.schema().fields] == ["id", "price", "ts", "note"]
    assert sorted(made.scan().to_arrow().to_pylist(), key=lambda r: r["id"]) == [
        {"id": 1, "price": Decimal("1.50000000"), "ts": datetime(2014, 3, 11, 0, 0, 0, 1, UTC), "note": None},
        {"id": 2, "price": Decimal("0.00000001"), "ts": datetime(2014, 3, 12, 23, 59, 59, 999999, UTC), "note": None},
    ]
    renamed = backend.load_table((SCRATCH, "renamed"))
    assert renamed.scan().to_arrow().to_pylist() == [{"id": 2, "price": Decimal("0.00000001")}]
    assert sorted(backend.list_tables(SCRATCH)) == [(SCRATCH, "made"), (SCRATCH, "renamed")]

    spark.sql(f"DROP TABLE {scratch}.renamed PURGE")
    spark.sql(f"DROP TABLE {scratch}.made")
    spark.sql(f"DROP NAMESPACE {scratch}")
    assert backend.list_namespaces() == [("market_data",)]
    calls = spark_lake.rest_calls[first_call:]
    # Only existence probes were answered "no" (a 404 before each create); nothing Spark asked was refused.
    assert [c for c in calls if c[2] >= 400 and not (c[0] == "GET" and c[2] == 404)] == []
    assert ("POST", f"/v1/namespaces/{SCRATCH}/tables/copy", 200) in calls  # the CTAS and REPLACE commits
    assert ("POST", "/v1/tables/rename", 204) in calls
