"""Object storage: the lake on an S3 endpoint and a durable embedded broker, against s3rver on 127.0.0.1.

These run on S3 whatever K2_TEST_WAREHOUSE says; with K2_TEST_WAREHOUSE=s3 the rest of the integration suite runs
on the same endpoint too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from k2.api import create_key
from k2.bus.broker import EmbeddedBroker
from k2.bus.clients import ensure_topics, topic_ids
from k2.config import Settings
from k2.ingest.pipeline import load
from k2.lake.catalog import open_catalog
from k2.lake.maintenance import maintain
from k2.lake.tables import ensure_table, table_identifier
from k2.query.engine import QueryEngine
from k2.schema import TRADES_V2
from k2.sources.asx import AsxSource
from tests.api.conftest import build_lake, lake_trades, serving
from tests.conftest import broker_incidental, only_on_tansu
from tests.integration.helpers import lake_query
from tests.query.records import append_trades, at, trade
from tests.s3 import S3Server

pytestmark = [pytest.mark.integration, broker_incidental]

TOPIC = "k2.durability.test"


@pytest.fixture
def s3_settings(settings: Settings, s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`settings` with the warehouse in a fresh bucket on the local S3 endpoint, exported for `k2` subprocesses."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("K2_WAREHOUSE", f"s3://{s3.create_bucket()}/lake")
    return Settings(home=settings.home)


def _bucket_files(s3: S3Server, settings: Settings) -> set[str]:
    from pyarrow.fs import FileSelector, FileType

    root = settings.warehouse.removeprefix("s3://")
    infos = s3.filesystem().get_file_info(FileSelector(root, recursive=True))
    return {f"s3://{i.path}" for i in infos if i.type == FileType.File}


def _k2(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "k2.cli", "-v", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_secrets_stay_out_of_reprs(s3_settings: Settings, s3: S3Server) -> None:
    assert s3.secret_access_key not in repr(s3_settings) + str(s3_settings)
    assert s3_settings.s3_properties["s3.secret-access-key"] == s3.secret_access_key  # reaches pyiceberg
    assert s3_settings.catalog_config["warehouse"] == s3_settings.warehouse


def test_lake_on_s3_is_written_queried_and_maintained_by_configuration_alone(
    s3_settings: Settings, s3: S3Server
) -> None:
    table = ensure_table(open_catalog(s3_settings), TRADES_V2)
    assert table.location().startswith(s3_settings.warehouse)
    for i in range(6):  # six small commits over two days: something for compaction to do
        rows = [trade(at(10, i, n, day=i % 2), f"{i + 1}.0000000{n + 1}", "2", i * 10 + n) for n in range(10)]
        append_trades(table, rows)
    table.refresh()
    live = {task.file.file_path for task in table.scan().plan_files()}
    assert len(live) == 6 and all(path.startswith(s3_settings.warehouse) for path in live)
    assert live <= _bucket_files(s3, s3_settings)
    assert not (s3_settings.home_dir / "warehouse").exists()  # nothing fell back to the local directory

    expected_sum = sum(Decimal(f"{i + 1}.0000000{n + 1}") for i in range(6) for n in range(10))
    query = f"SELECT count(*), sum(price) FROM {table_identifier(TRADES_V2)}"
    with QueryEngine(open_catalog(s3_settings)) as engine:
        assert engine.snapshot_ids["trades_v2"] == table.metadata.current_snapshot_id
        by_day = engine.sql(
            f"SELECT CAST(timestamp AS DATE) AS day, count(*) AS n FROM {table_identifier(TRADES_V2)} "
            "WHERE symbol = ? GROUP BY day ORDER BY day",
            ["BHP"],
        )
        assert by_day["n"].to_pylist() == [30, 30]
        # anyone with SQL access sees the secret's settings redacted
        secrets = engine.sql("SELECT name, type, secret_string FROM duckdb_secrets()")
        assert secrets["type"].to_pylist() == ["s3"]
        assert s3.secret_access_key not in secrets["secret_string"][0].as_py()
        assert "127.0.0.1" in secrets["secret_string"][0].as_py()

    # `k2 sql` in a fresh process, configured by the environment alone
    result = _k2("sql", query)
    assert result.returncode == 0, result.stderr
    assert " 60 " in result.stdout and f"{expected_sum:.8f}" in result.stdout
    assert s3.secret_access_key not in result.stdout + result.stderr

    # A stray object under the table's data folder: maintenance must see and delete it through the table's FileIO.
    stray = f"{table.location()}/data/timestamp_day=2024-03-04/exchange=asx/stray.parquet"
    with s3.filesystem().open_output_stream(stray.removeprefix("s3://")) as out:
        out.write(b"PAR1 not referenced by anything PAR1")
    report = maintain(
        s3_settings,
        tables=["trades_v2"],
        min_files=2,
        expire_older_than=timedelta(0),
        retain_last=1,
        orphan_min_age=timedelta(0),
    )
    stats = report.table("trades_v2")
    assert (stats.data_files_before, stats.data_files_after) == (6, 2)  # one file per day partition
    assert stats.orphans_removed > 6  # the stray, the six replaced files, old manifests and metadata
    stored = _bucket_files(s3, s3_settings)
    assert stray not in stored
    table.refresh()
    assert {task.file.file_path for task in table.scan().plan_files()} <= stored
    assert lake_query(s3_settings, query) == [(60, expected_sum)]


def _small_asx_sample(sample: Path, target: Path, lines: int = 300) -> None:
    """The real sample cut to its first `lines` rows per file."""
    for path in sorted(sample.rglob("*.csv")):
        out = target / path.relative_to(sample)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:lines]))


_LAKE_ROWS = (
    "SELECT (SELECT count(*) FROM market_data.trades_v2) + (SELECT count(*) FROM market_data.quotes_v2)"
    " + (SELECT count(*) FROM market_data.reference_data_v2)"
)


def test_k2_load_and_the_sink_write_the_lake_on_s3(
    s3_settings: Settings, s3: S3Server, asx_sample: Path, tmp_path: Path
) -> None:
    small = tmp_path / "asx"
    _small_asx_sample(asx_sample, small)
    records = sum(batch.record_count for batch in AsxSource(small).batches())
    assert records > 1500  # trades and quotes of four instruments, plus the reference records

    recon = load(AsxSource(small), s3_settings)
    assert recon.ok, recon
    assert recon.produced == records
    assert lake_query(s3_settings, _LAKE_ROWS) == [(records,)]
    table = open_catalog(s3_settings).load_table(table_identifier(TRADES_V2))
    assert all(t.file.file_path.startswith(s3_settings.warehouse) for t in table.scan().plan_files())

    # `k2 load` in a fresh process, configured by the environment alone: reloading adds nothing
    result = _k2("load", "asx", str(small))
    assert result.returncode == 0, result.stdout + result.stderr
    assert lake_query(s3_settings, _LAKE_ROWS) == [(records,)]
    logs = [result.stdout, result.stderr, *(p.read_text(errors="replace") for p in s3_settings.home_dir.rglob("*.log"))]
    assert all(s3.secret_access_key not in text for text in logs)


def test_api_serves_the_lake_on_s3_now_and_as_of_an_earlier_snapshot(s3_settings: Settings) -> None:
    lake = build_lake(s3_settings.home)  # reads the exported K2_WAREHOUSE / K2_S3_* like any K2 process
    assert lake.settings.warehouse == s3_settings.warehouse
    assert lake.tables["trades_v2"].location().startswith(s3_settings.warehouse)
    key = create_key(lake.settings, "s3")
    with serving(lake.settings) as server, httpx.Client(base_url=server.url, headers={"X-API-Key": key}) as http:
        before = http.get("/v1/trades", params={"limit": 10_000}).json()
        assert len(before["data"]) == 2 * len(lake_trades())
        append_trades(lake.tables["trades_v2"], lake_trades(day=2))
        after = http.get("/v1/trades", params={"limit": 10_000}).json()
        assert len(after["data"]) == 3 * len(lake_trades())
        old = http.get("/v1/trades", params={"limit": 10_000, "as_of": before["snapshot_id"]}).json()
        assert old["data"] == before["data"]
        bhp = http.get("/v1/trades", params={"symbols": "BHP", "limit": 1}).json()["data"][0]
        assert (bhp["symbol"], bhp["price"]) == ("BHP", "36.66700000")


# --- durable embedded broker --------------------------------------------------------------------------------------


def _produce(bootstrap: str, values: range) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5})
    for v in values:
        producer.produce(TOPIC, key=str(v % 7).encode(), value=str(v).encode())
    assert producer.flush(30) == 0


def _read_all(bootstrap: str, expected: int, partitions: int) -> dict[int, list[tuple[int, int]]]:
    """Every message of every partition from the beginning: partition -> [(offset, value)]."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "reader",
            "enable.auto.commit": False,
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(partitions)])
    got: dict[int, list[tuple[int, int]]] = {p: [] for p in range(partitions)}
    deadline = time.monotonic() + 30
    while sum(map(len, got.values())) < expected and time.monotonic() < deadline:
        for m in consumer.consume(500, 0.5):
            if m.error():
                raise KafkaException(m.error())
            got[m.partition()].append((m.offset(), int(m.value())))
    consumer.close()
    return got


def _commit(bootstrap: str, group: str, offsets: dict[int, int]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(TOPIC, p, o) for p, o in offsets.items()], asynchronous=False)
    consumer.close()


def _committed(bootstrap: str, group: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    tps = consumer.committed([TopicPartition(TOPIC, p) for p in range(partitions)], timeout=10)
    consumer.close()
    return {tp.partition: tp.offset for tp in tps}


@only_on_tansu
def test_broker_on_s3_keeps_its_log_offsets_and_topic_id_across_kill_9(
    settings: Settings, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("K2_BROKER_STORAGE", f"s3://{s3.create_bucket('tansu')}/")
    durable = Settings(home=settings.home)
    broker = EmbeddedBroker.for_settings(durable)
    assert broker.durable
    partitions = durable.topic_partitions
    with broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        ensure_topics(admin, durable, [TOPIC])
        topic_id = topic_ids(admin, [TOPIC])[TOPIC]
        _produce(broker.bootstrap, range(0, 700))
        before = _read_all(broker.bootstrap, 700, partitions)
        ends = {p: len(rows) for p, rows in before.items()}
        _commit(broker.bootstrap, "k2-sink", ends)

        broker.kill()  # SIGKILL: nothing flushed on the way out
        broker.start()

        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        assert topic_ids(admin, [TOPIC])[TOPIC] == topic_id
        assert _committed(broker.bootstrap, "k2-sink", partitions) == ends
        _produce(broker.bootstrap, range(700, 1000))
        after = _read_all(broker.bootstrap, 1000, partitions)

    assert sum(map(len, after.values())) == 1000
    assert sorted(v for rows in after.values() for _, v in rows) == list(range(1000))
    for p, rows in after.items():
        assert [o for o, _ in rows] == list(range(len(rows)))  # continuous offsets, no restart from 0
        assert rows[: ends[p]] == before[p]  # the first life's records, unchanged, at their offsets
    assert s3.secret_access_key not in (durable.home_dir / "logs" / "broker.log").read_text(errors="replace")
    assert os.environ["K2_BROKER_STORAGE"].startswith("s3://")
