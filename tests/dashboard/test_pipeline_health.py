"""/v1/pipeline, the dashboard's health panel: real figures from the lake and the log; lag right on Tansu."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from k2.api import create_key
from k2.bus.broker import EmbeddedBroker
from k2.bus.clients import ensure_topics
from k2.config import Settings
from k2.ingest.degradation import Controller, Governor, Spill, Thresholds
from k2.ops.health import ACTIVE_NOTE, IDLE_NOTE
from k2.ops.lag import log_report
from k2.schema.arrow import records_to_arrow
from k2.schema.codecs import micros_from_datetime
from k2.schema.fields import STREAM_GAPS
from tests.api.conftest import build_lake, lake_quotes, lake_trades, serving

pytestmark = pytest.mark.integration

TOPIC = "market.equities.trades.test"


def gap(symbol: str, first: int, last: int, filled: int, status: str) -> dict:
    return {
        "message_id": f"gap-{symbol}-{first}",
        "symbol": symbol,
        "exchange": "binance",
        "asset_class": "crypto",
        "channel": "aggTrade",
        "first_missing": first,
        "last_missing": last,
        "missing_count": last - first + 1,
        "filled_count": filled,
        "status": status,
        "timestamp": micros_from_datetime(datetime.now(UTC)),
        "detail": None if status == "filled" else "REST had no trades for these ids",
    }


def test_lag_and_dlq_counts_use_the_real_log_end_not_the_reported_watermark(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "k2home", topic_partitions=3)
    with EmbeddedBroker(tmp_path / "broker.log") as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        ensure_topics(admin, settings, [TOPIC, f"dlq.{TOPIC}"])
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 10, "batch.size": 1_000_000})
        for i in range(9_000):
            producer.produce(TOPIC, key=str(i).encode(), value=b"x" * 100, partition=i % 3)
        for _ in range(5):
            producer.produce(f"dlq.{TOPIC}", value=b"bad", partition=0)
        producer.flush()
        del producer, admin  # disconnect: the broker stops at once only without clients

        group = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": settings.sink_group})
        try:
            reported = sum(group.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=5)[1] for p in range(3))
            group.commit(offsets=[TopicPartition(TOPIC, 0, 1_000), TopicPartition(TOPIC, 1, 3_000)], asynchronous=False)
        finally:
            group.close()

        report = log_report(settings, broker.bootstrap)
    # The embedded broker reports the last batch's base offset + 1 (docs/stack-notes.md, "Embedded broker"): lag from it
    # would be wrong.
    assert reported < 9_000
    (topic,) = report.topics
    assert (topic.topic, topic.partitions, topic.end_offset) == (TOPIC, 3, 9_000)
    assert topic.committed == 1_000 + 3_000 + 0  # partition 2 has no commit: the group starts at the low watermark
    assert topic.lag == 9_000 - 4_000
    assert report.dlq == {f"dlq.{TOPIC}": 5}
    assert report.exact


def test_pipeline_route_reports_the_lake_and_says_why_kafka_is_missing(tmp_path: Path) -> None:
    lake = build_lake(tmp_path / "k2home")
    gaps = [gap("BTCUSDT", 100, 104, 5, "filled"), gap("ETHUSDT", 7, 8, 0, "unrecoverable")]
    lake.tables["stream_gaps"].append(records_to_arrow(STREAM_GAPS, gaps))
    trades = len(lake_trades(day=0)) + len(lake_trades(day=1))
    key = create_key(lake.settings, "dashboard-test")
    with serving(lake.settings) as server:
        assert httpx.get(f"{server.url}/v1/pipeline").status_code == 401
        body = httpx.get(f"{server.url}/v1/pipeline", headers={"X-API-Key": key}, timeout=30).json()
        # The API serves from this process: sources producing here, as `k2 up` runs them, are what it reports.
        stream = Governor(Controller(), Spill(tmp_path / "spill-stream"))
        load = Governor(Controller(Thresholds(lag=(10, 20, 30, 40))), Spill(tmp_path / "spill-load"))
        load.controller.observe(lag=15, memory=0)
        with stream.running("Binance BTCUSDT aggTrade via ws://127.0.0.1:1/stream"), load.running("ASX files"):
            busy = httpx.get(f"{server.url}/v1/pipeline", headers={"X-API-Key": key}, timeout=30).json()

    tables = {t["table"]: t for t in body["tables"]}
    assert tables["market_data.trades_v2"]["rows"] == trades
    assert tables["market_data.quotes_v2"]["rows"] == len(lake_quotes(day=0))
    # Everything was appended just now: all of it is in the one-minute window.
    assert tables["market_data.trades_v2"]["rows_in_window"] == trades
    assert body["rows_per_second"] == round((trades + len(lake_quotes(day=0)) + 2) / body["window_seconds"], 3)
    assert [c["rows"] for c in body["commits"] if c["table"] == "market_data.trades_v2"] == [
        len(lake_trades(day=0)),
        len(lake_trades(day=1)),
    ]
    assert body["gaps"]["total"] == 2
    assert body["gaps"]["by_status"] == {"filled": 1, "unrecoverable": 1}
    assert (body["gaps"]["missing"], body["gaps"]["filled"]) == (7, 5)
    assert body["kafka"]["available"] is False and "k2 up" in body["kafka"]["reason"]
    assert body["dlq"]["available"] is False
    assert body["degradation"] == {"level": "NORMAL", "controlled": False, "producers": [], "note": IDLE_NOTE}
    assert busy["degradation"] == {
        "level": "SOFT",  # the highest of the producers' levels
        "controlled": True,
        "producers": [
            {"source": "Binance BTCUSDT aggTrade via ws://127.0.0.1:1/stream", "level": "NORMAL"},
            {"source": "ASX files", "level": "SOFT"},
        ],
        "note": ACTIVE_NOTE,
    }
