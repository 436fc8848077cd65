"""Spark commits to a K2 table (a compaction through REST, an append through JDBC); K2 then reads exactly what Spark
reads, and K2's sink goes on exactly once: it resumes from the offsets in K2's own snapshots (the newest snapshots
are Spark's and carry none) and drops the duplicates of rows either writer put in the lake."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy
from confluent_kafka.admin import AdminClient

from k2.bus.clients import topic_ids
from k2.bus.stack import Endpoints, Stack
from k2.config import Settings
from k2.lake.catalog import NAMESPACE, open_catalog
from k2.lake.engines import jdbc_catalog_properties, rest_catalog_properties
from k2.lake.offsets import SUMMARY_KEY, next_offsets
from k2.lake.rest_catalog import rest_catalog_app
from k2.lake.sink import IcebergSink, SinkStats
from k2.query import market
from k2.query.engine import QueryEngine
from k2.schema import TRADES_V2
from tests.api.conftest import Server
from tests.conftest import isolated_settings
from tests.integration.helpers import TEST_TOPIC, all_committed, make_trade, produce_test_trades
from tests.postgres import PostgresServer
from tests.spark.conftest import SparkLake, add_catalog, multiset, recording, spark_arrow

pytestmark = pytest.mark.spark

TRADES = f"{NAMESPACE}.{TRADES_V2.name}"
CATALOG = "k2fw"  # this lake's catalog name: its JDBC rows are keyed by it, so the Spark JDBC catalog is named so too
REST = "k2fw_rest"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Lake:
    settings: Settings
    endpoints: Endpoints
    calls: list[tuple[str, str, int]]


@pytest.fixture
def lake(
    spark_lake: SparkLake,
    postgres: PostgresServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Lake]:
    """Its own lake (this test changes it), one embedded broker for the whole test (same topic ids throughout)."""
    isolated_settings(tmp_path / "k2home", monkeypatch, request)
    monkeypatch.setenv("K2_CATALOG_URI", postgres.create_database())
    monkeypatch.setenv("K2_CATALOG_NAME", CATALOG)
    settings = Settings(home=tmp_path / "k2home")
    calls: list[tuple[str, str, int]] = []
    with Stack(settings) as endpoints, Server(recording(rest_catalog_app(open_catalog(settings)), calls)) as server:
        add_catalog(spark_lake.spark, REST, rest_catalog_properties(server.url))
        add_catalog(spark_lake.spark, CATALOG, jdbc_catalog_properties(settings))
        yield Lake(settings, endpoints, calls)


def sink_trades(lake: Lake, numbers: list[range], group: str | None = None) -> SinkStats:
    """Produce make_trade(n) for each range through Kafka, then run one sink worker until its group committed
    them all; its stats."""
    settings = lake.settings if group is None else lake.settings.model_copy(update={"sink_group": group})
    ends: dict[tuple[str, int], int] = {}
    for part in numbers:
        registry, targets = produce_test_trades(settings, lake.endpoints, len(part), part.start)
        for key, end in targets.items():
            ends[key] = max(ends.get(key, 0), end)
    sink = IcebergSink(settings, lake.endpoints.bootstrap, registry, open_catalog(settings), topics=[str(TEST_TOPIC)])
    return sink.run(until=lambda _s: all_committed(lake.endpoints.bootstrap, settings.sink_group, ends))


def k2_rows(settings: Settings):
    with QueryEngine(open_catalog(settings)) as engine:
        return engine.sql(f"SELECT * FROM {TRADES}")


def test_spark_commits_then_k2_reads_exactly_and_its_sink_goes_on_exactly_once(
    spark_lake: SparkLake, lake: Lake
) -> None:
    spark = spark_lake.spark
    # K2 writes trades 0..119 in three commits: three data files in the (2014-03-10, test) partition.
    for first in (0, 40, 80):
        assert sink_trades(lake, [range(first, first + 40)]).written["trades_v2"] == 40
    table = open_catalog(lake.settings).load_table(TRADES)
    ids = topic_ids(AdminClient({"bootstrap.servers": lake.endpoints.bootstrap}), [str(TEST_TOPIC)])
    k2_offsets = next_offsets(table, ids)
    assert sum(k2_offsets.values()) == 120

    # Spark compacts through the REST catalog: the three files become one (an Iceberg `replace` snapshot).
    rewrite = spark.sql(
        f"CALL {REST}.system.rewrite_data_files(table => '{TRADES}', options => map('min-input-files', '2'))"
    ).collect()[0]
    assert (rewrite.rewritten_data_files_count, rewrite.added_data_files_count) == (3, 1)
    # ... and appends ten new trades (1000..1009, newer than all of K2's) through the JdbcCatalog.
    schema = spark.table(f"{CATALOG}.{TRADES}").schema
    new = [make_trade(n) for n in range(1000, 1010)]
    for row in new:
        row["timestamp"] = row["ingestion_timestamp"] = EPOCH + timedelta(microseconds=row["timestamp"])
    spark.createDataFrame([tuple(r[f.name] for f in schema) for r in new], schema).writeTo(
        f"{CATALOG}.{TRADES}"
    ).append()

    # The lake's newest snapshots are Spark's, without K2's offsets; K2's resume point is unchanged.
    table = open_catalog(lake.settings).load_table(TRADES)
    history = [s.summary for s in table.snapshots()]
    assert [(s.operation.value, SUMMARY_KEY in s.additional_properties) for s in history] == [
        ("append", True),
        ("append", True),
        ("append", True),
        ("replace", False),
        ("append", False),
    ]
    assert history[-1]["spark.app.id"] == spark.sparkContext.applicationId  # Spark wrote them, not a K2 worker
    assert "k2.worker" not in history[-1].additional_properties | history[-2].additional_properties
    assert next_offsets(table, ids) == k2_offsets

    # K2 reads exactly what Spark reads, through its SQL and through its market reads (which go straight to the
    # data files when that is exact: Spark's Parquet files among them).
    ours = k2_rows(lake.settings)
    theirs = spark_arrow(spark.table(f"{REST}.{TRADES}")).select(ours.column_names)
    assert ours.num_rows == 130 and multiset(ours) == multiset(theirs)
    with QueryEngine(open_catalog(lake.settings)) as engine:
        newest = market.latest(engine, "trades", ["TST"], 5, columns=["trade_id", "price", "timestamp"])
        window = market.trades(engine, ["TST"], new[0]["timestamp"], None, columns=["trade_id"])
    assert newest.column("trade_id").to_pylist() == ["1005", "1006", "1007", "1008", "1009"]
    assert window.column("trade_id").to_pylist() == [str(n) for n in range(1000, 1010)]

    # K2's sink goes on, in a new consumer group so that only the lake can say where to resume: 40 duplicates of
    # K2's rows (80..119) and 5 of Spark's (1000..1004) are produced again, with 60 new trades (120..179).
    after = sink_trades(lake, [range(80, 120), range(1000, 1005), range(120, 180)], group="k2-sink-after-spark")
    assert after.consumed == 105  # resumed at K2's last offsets: none of the 120 records already landed re-read
    assert (after.written["trades_v2"], after.duplicates["trades_v2"]) == (60, 45)

    ours = k2_rows(lake.settings)
    expected = {make_trade(n)["message_id"] for n in [*range(180), *range(1000, 1010)]}
    assert ours.num_rows == len(expected) == 190
    assert set(ours.column("message_id").to_pylist()) == expected  # each message_id exactly once
    theirs = spark_arrow(spark.table(f"{CATALOG}.{TRADES}")).select(ours.column_names)
    assert multiset(ours) == multiset(theirs)

    # Java's JdbcCatalog shares pyiceberg's catalog tables as they are: the V1 schema both write, every row a TABLE.
    database = sqlalchemy.create_engine(lake.settings.catalog_config["uri"])
    columns = sqlalchemy.inspect(database).get_columns
    assert [c["name"] for c in columns("iceberg_tables")] == [
        "catalog_name",
        "table_namespace",
        "table_name",
        "metadata_location",
        "previous_metadata_location",
        "iceberg_type",
    ]
    with database.connect() as connection:
        kinds = connection.execute(sqlalchemy.text("SELECT catalog_name, iceberg_type FROM iceberg_tables")).all()
    database.dispose()
    assert sorted(set(kinds)) == [(CATALOG, "TABLE")]
    assert [c["name"] for c in columns("iceberg_namespace_properties")] == [
        "catalog_name",
        "namespace",
        "property_key",
        "property_value",
    ]

    # Iceberg's Java client found every REST endpoint and field it needed: no request was refused.
    assert [c for c in lake.calls if c[2] >= 400] == []
    assert ("POST", f"/v1/namespaces/{NAMESPACE}/tables/trades_v2", 200) in lake.calls  # Spark's commit
