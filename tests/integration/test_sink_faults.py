"""Exactly once under a killed sink; bad input dead-lettered with its reason, never taking its batch along."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from pyiceberg.exceptions import CommitFailedException
from rich.console import Console

from k2.bus.clients import ensure_topics, producer_config, topic_ids
from k2.bus.producer import H_REASON, H_STAGE, RecordProducer
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Stack
from k2.bus.topics import TopicName
from k2.config import Settings
from k2.core.batch import SourceBatch
from k2.core.breaker import CircuitBreaker
from k2.core.metrics import REGISTRY
from k2.ingest.pipeline import load, produce
from k2.lake.catalog import open_catalog
from k2.lake.offsets import SUMMARY_KEY, encode_ranges
from k2.lake.sink import IcebergSink
from k2.lake.tables import ensure_table
from k2.schema import TRADES_V2
from k2.schema.arrow import records_to_arrow
from k2.schema.avro import avro_schema
from k2.schema.fields import AssetClass, DataType
from k2.sources.asx import AsxSource
from tests.conftest import only_on_tansu
from tests.integration.helpers import TEST_TOPIC, all_committed, lake_count, lake_query, make_trade, produce_test_trades
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

QUIET = Console(quiet=True)


def _start_sink_worker(log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        # -v: the worker's structured log is the first thing to read when this test fails
        return subprocess.Popen([sys.executable, "-m", "k2.cli", "-v", "sink"], stdout=out, stderr=subprocess.STDOUT)


def _dlq_messages(bootstrap: str, topic: str, expected: int) -> list:
    """Read a DLQ topic from the beginning of every partition (no group: nothing to join or commit)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-reader", "enable.auto.commit": False})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    got: list = []
    deadline = time.monotonic() + 20
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(m for m in consumer.consume(100, 0.5) if not m.error())
    consumer.close()
    return got


def _assert_lake_holds_exactly(settings: Settings, sample: Path, produced: int) -> None:
    """The exact set comparison: every message_id the source made is in the lake once (0 lost, 0 duplicated)."""
    source_ids = {r["message_id"] for b in AsxSource(sample).batches() for r in b.all_records()}
    lake_ids = [
        row[0]
        for t in ("trades_v2", "quotes_v2", "reference_data_v2")
        for row in lake_query(settings, f"SELECT message_id FROM market_data.{t}")
    ]
    assert len(lake_ids) == len(source_ids) == produced  # 0 duplicated
    assert set(lake_ids) == source_ids  # 0 lost


def test_sink_killed_mid_load_loses_nothing_and_duplicates_nothing(
    settings: Settings, asx_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K2_SINK_COMMIT_ROWS", "20000")  # many small commits, so the kill lands between two
    with Stack(settings) as endpoints:
        recon, produced = produce(AsxSource(asx_sample), settings, endpoints, QUIET)
        targets = dict(produced.end_offsets)
        worker = _start_sink_worker(tmp_path / "sink1.log")
        wait_until(
            lambda: lake_count(settings, "quotes_v2") + lake_count(settings, "trades_v2") >= 40_000,
            120,
            "the first sink commits",
        )
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        landed_before_restart = lake_count(settings, "quotes_v2") + lake_count(settings, "trades_v2")
        assert 0 < landed_before_restart < recon.produced  # really killed mid-load

        worker = _start_sink_worker(tmp_path / "sink2.log")
        try:
            try:
                wait_until(
                    lambda: all_committed(endpoints.bootstrap, settings.sink_group, targets),
                    300,
                    "the restarted sink to commit everything",
                )
            except AssertionError as exc:
                tail = (tmp_path / "sink2.log").read_text()[-3000:]
                raise AssertionError(f"{exc}\n--- restarted sink's log (tail) ---\n{tail}") from None
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0

    _assert_lake_holds_exactly(settings, asx_sample, recon.produced)


def test_invalid_rows_go_to_the_dlq_with_reason_and_original_bytes(
    settings: Settings, asx_sample: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "asx"
    (copy / "trades").mkdir(parents=True)
    shutil.copytree(asx_sample / "reference-data", copy / "reference-data")
    target = copy / "trades" / "7181.csv"
    shutil.copy(asx_sample / "trades" / "7181.csv", target)
    target.chmod(0o644)
    bad_price = b"03/14/2014,10:00:00.000,abc,100,0,,"
    short_row = b"03/14/2014,10:00:00.000,0.67"
    with open(target, "ab") as fh:
        fh.write(bad_price + b"\r\n" + short_row + b"\r\n")

    with Stack(settings) as endpoints:
        recon = load(AsxSource(copy), settings, QUIET)
        dlq = _dlq_messages(endpoints.bootstrap, "dlq.market.equities.trades.asx", expected=2)

    assert recon.ok
    assert recon.read == 232 + 2 + 6
    assert sum(recon.rejected.values()) == 2
    assert lake_count(settings, "trades_v2") == 232
    by_value = {m.value(): dict(m.headers()) for m in dlq}
    assert set(by_value) == {bad_price, short_row}
    assert by_value[bad_price][H_REASON] == b"bad_price"
    assert all(h[H_STAGE] == b"source" for h in by_value.values())


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_undecodable_messages_are_dead_lettered_alone(settings: Settings) -> None:
    topic = TopicName(AssetClass.EQUITIES, DataType.TRADES, "test")
    before = {
        "undecodable": _sample("k2_rejected_records_total", stage="sink", reason="undecodable"),
        "written": _sample("k2_sink_written_rows_total", table="trades_v2"),
        "commits": _sample("k2_sink_commit_seconds_count"),
    }
    with Stack(settings) as endpoints:
        registry = RegistryClient(endpoints.registry_url)
        producer = RecordProducer(producer_config(settings, endpoints.bootstrap), registry)
        ensure_topics(AdminClient({"bootstrap.servers": endpoints.bootstrap}), settings, [str(topic), topic.dlq])
        good = SourceBatch(TRADES_V2, AssetClass.EQUITIES, "test", records=[make_trade(i) for i in range(5)])
        producer.send(good)
        schema_id = registry.register(topic.subject, avro_schema(TRADES_V2))
        garbage = {
            b"not avro at all": "undecodable",
            b"\x00" + schema_id.to_bytes(4, "big") + b"\x02": "undecodable",  # truncated body
            b"\x00" + (999_999).to_bytes(4, "big") + b"\x00": "unknown_schema",
        }
        for value in garbage:
            producer.produce_raw(str(topic), value, b"TST")
        producer.send(SourceBatch(TRADES_V2, AssetClass.EQUITIES, "test", records=[make_trade(i) for i in range(5, 8)]))
        producer.flush()
        targets = dict(producer.stats.end_offsets)
        producer.close()

        sink = IcebergSink(settings, endpoints.bootstrap, registry, open_catalog(settings), topics=[str(topic)])
        stats = sink.run(until=lambda s: all(s.committed.get(k, -1) >= v for k, v in targets.items()))
        dlq = _dlq_messages(endpoints.bootstrap, topic.dlq, expected=3)

    assert dict(stats.written) == {"trades_v2": 8}
    assert dict(stats.rejected) == {"undecodable": 2, "unknown_schema": 1}
    # The same figures in the Prometheus metrics this process exports.
    assert _sample("k2_rejected_records_total", stage="sink", reason="undecodable") - before["undecodable"] == 2
    assert _sample("k2_sink_written_rows_total", table="trades_v2") - before["written"] == 8
    assert _sample("k2_sink_commit_seconds_count") - before["commits"] == stats.commits
    assert {m.value(): dict(m.headers())[H_REASON].decode() for m in dlq} == garbage
    assert lake_count(settings, "trades_v2", "WHERE exchange = 'test'") == 8


@only_on_tansu
def test_embedded_stack_leaves_no_process_behind(settings: Settings) -> None:
    stack = Stack(settings)
    with stack:
        assert stack.broker is not None
        broker_pid = stack.broker.pid
        assert (settings.run_dir / "stack.json").exists()
    assert broker_pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(broker_pid, 0)
    assert not (settings.run_dir / "stack.json").exists()


def test_two_sink_workers_share_the_topics_exactly_once(
    settings: Settings, asx_sample: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("K2_SINK_COMMIT_ROWS", "30000")
    with Stack(settings) as endpoints:
        workers = [_start_sink_worker(tmp_path / f"worker{i}.log") for i in range(2)]
        try:
            # Both join the group before data arrives; partitions of every market topic are spread over them.
            recon, produced = produce(AsxSource(asx_sample), settings, endpoints, QUIET)
            targets = dict(produced.end_offsets)
            wait_until(
                lambda: all_committed(endpoints.bootstrap, settings.sink_group, targets),
                300,
                "the two workers to commit everything",
            )
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            codes = [worker.wait(60) for worker in workers]
    logs = "\n".join(f"--- worker{i}.log\n" + (tmp_path / f"worker{i}.log").read_text()[-4000:] for i in range(2))
    assert codes == [0, 0], logs
    _assert_lake_holds_exactly(settings, asx_sample, recon.produced)
    # Both workers really wrote: snapshots name the worker that committed them.
    table = open_catalog(settings).load_table("market_data.trades_v2")
    writers = {snap.summary.additional_properties.get("k2.worker") for snap in table.metadata.snapshots}
    quotes = open_catalog(settings).load_table("market_data.quotes_v2")
    writers |= {snap.summary.additional_properties.get("k2.worker") for snap in quotes.metadata.snapshots}
    assert len(writers - {None}) == 2, writers


def test_a_sink_that_died_between_its_iceberg_and_kafka_commits_resumes_from_the_lake(settings: Settings) -> None:
    topic = TopicName(AssetClass.EQUITIES, DataType.TRADES, "test")
    records = [make_trade(i) for i in range(5)]
    with Stack(settings) as endpoints:
        admin = AdminClient({"bootstrap.servers": endpoints.bootstrap})
        ensure_topics(admin, settings, [str(topic), topic.dlq])
        registry = RegistryClient(endpoints.registry_url)
        producer = RecordProducer(producer_config(settings, endpoints.bootstrap), registry)
        producer.send(SourceBatch(TRADES_V2, AssetClass.EQUITIES, "test", records=records))
        producer.close()
        targets = dict(producer.stats.end_offsets)
        # The crash window: rows and their offsets are in an Iceberg snapshot; the group committed nothing.
        table = ensure_table(open_catalog(settings), TRADES_V2)
        ranges = {key: (0, end) for key, end in targets.items()}
        summary = {SUMMARY_KEY: encode_ranges(ranges, topic_ids(admin, [str(topic)]))}
        table.append(records_to_arrow(TRADES_V2, records).sort_by("timestamp"), snapshot_properties=summary)
        del admin
        assert not all_committed(endpoints.bootstrap, settings.sink_group, targets)

        sink = IcebergSink(settings, endpoints.bootstrap, registry, open_catalog(settings), topics=[str(topic)])
        stats = sink.run(until=lambda _s: all_committed(endpoints.bootstrap, settings.sink_group, targets))

    assert stats.consumed == 0  # resumed after what the lake holds: nothing re-read
    assert lake_count(settings, "trades_v2", "WHERE exchange = 'test'") == 5


def _catalog_failing_commits(
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    failures: int,
    why: str,
    on_failure: Callable[[], None] | None = None,
):
    """The catalog, with trades_v2 created, whose next `failures` commits raise CommitFailedException(`why`)
    (calling `on_failure` first); and an iterator that is exhausted once every injected failure was hit."""
    catalog = open_catalog(settings)
    ensure_table(catalog, TRADES_V2)
    real_commit, remaining = catalog.commit_table, iter(range(failures))

    def failing_commit(*args, **kwargs):
        if next(remaining, None) is not None:
            if on_failure is not None:
                on_failure()
            raise CommitFailedException(why)
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(catalog, "commit_table", failing_commit)
    return catalog, remaining


def test_an_append_that_keeps_losing_commit_races_is_retried_and_lands_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Stack(settings) as endpoints:
        registry, targets = produce_test_trades(settings, endpoints, 5)
        # More lost races than pyiceberg's own retries (4) absorb: as if other workers kept committing first.
        catalog, failures = _catalog_failing_commits(
            settings, monkeypatch, 6, "Table has been updated by another process (injected)"
        )
        sink = IcebergSink(settings, endpoints.bootstrap, registry, catalog, topics=[str(TEST_TOPIC)])
        stats = sink.run(until=lambda _s: all_committed(endpoints.bootstrap, settings.sink_group, targets))
    assert next(failures, None) is None  # every injected failure was hit
    assert stats.written["trades_v2"] == 5
    assert lake_count(settings, "trades_v2", "WHERE exchange = 'test'") == 5


def test_a_failing_catalog_opens_the_breaker_the_sink_waits_and_lands_everything_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures_before = _sample("k2_sink_commit_failures_total", part="iceberg")
    with Stack(settings) as endpoints:
        registry, targets = produce_test_trades(settings, endpoints, 7)
        # More failures than pyiceberg's retries (5 tries) times the sink's own (4 appends) absorb in one commit.
        catalog, failures = _catalog_failing_commits(settings, monkeypatch, 25, "catalog unavailable (injected)")
        sink = IcebergSink(settings, endpoints.bootstrap, registry, catalog, topics=[str(TEST_TOPIC)])
        sink.breaker = CircuitBreaker("catalog", threshold=1, reset_seconds=0.3)
        stats = sink.run(until=lambda s: all_committed(endpoints.bootstrap, settings.sink_group, targets))
    assert next(failures, None) is None  # every injected failure was hit
    assert _sample("k2_sink_commit_failures_total", part="iceberg") - failures_before == 1  # one commit deferred
    assert not sink.breaker.open and not sink.breaker.failing  # closed again by the successful retry
    assert stats.written["trades_v2"] == 7
    assert lake_count(settings, "trades_v2", "WHERE exchange = 'test'") == 7


def test_records_that_arrive_while_a_commit_is_deferred_land_too(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deferred commit keeps the Arrow it decoded for the retry; records consumed after it must never have their
    # offsets committed on the strength of that older Arrow.
    with Stack(settings) as endpoints:
        registry, _ = produce_test_trades(settings, endpoints, 7)
        later: dict = {}

        def produce_more_on_first_failure() -> None:
            if not later:  # while the sink is inside its failing commit: the next poll would consume these
                later.update(produce_test_trades(settings, endpoints, 5, first=7)[1])

        catalog, failures = _catalog_failing_commits(
            settings, monkeypatch, 25, "catalog unavailable (injected)", on_failure=produce_more_on_first_failure
        )
        sink = IcebergSink(settings, endpoints.bootstrap, registry, catalog, topics=[str(TEST_TOPIC)])
        sink.breaker = CircuitBreaker("catalog", threshold=1, reset_seconds=0.3)
        stats = sink.run(
            until=lambda _s: bool(later) and all_committed(endpoints.bootstrap, settings.sink_group, later)
        )
    assert next(failures, None) is None
    assert stats.written["trades_v2"] == 12
    rows = lake_query(settings, "SELECT trade_id FROM market_data.trades_v2 WHERE exchange = 'test'")
    assert sorted(int(row[0]) for row in rows) == list(range(12))
