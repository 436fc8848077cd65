"""Helpers for integration tests: raw-file oracles, lake queries, test trades on Kafka."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from pathlib import Path

from confluent_kafka.admin import AdminClient
from typer.testing import CliRunner

from k2.bus.clients import base_config, ensure_topics, fetch_committed, producer_config
from k2.bus.producer import RecordProducer
from k2.bus.registry_client import RegistryClient
from k2.bus.topics import TopicName
from k2.cli import app
from k2.config import Settings
from k2.core.batch import SourceBatch
from k2.lake.catalog import open_catalog
from k2.query.engine import QueryEngine
from k2.schema import TRADES_V2
from k2.schema.codecs import datetime_from_micros
from k2.schema.fields import AssetClass, DataType
from tests.sources.book_oracle import read_depth, replay

TEST_TOPIC = TopicName(AssetClass.EQUITIES, DataType.TRADES, "test")


def raw_line_count(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def lake_query(settings: Settings, query: str, params: list | None = None) -> list[tuple]:
    with QueryEngine(open_catalog(settings)) as engine:
        table = engine.sql(query, params)
    columns = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return list(zip(*columns, strict=True))


def lake_count(settings: Settings, table: str, where: str = "", params: list | None = None) -> int:
    return lake_query(settings, f"SELECT count(*) FROM market_data.{table} {where}", params)[0][0]


def make_trade(n: int, symbol: str = "TST", price: str = "1.5", day: int = 10) -> dict:
    """A valid trades_v2 record; `n` makes it unique."""
    from decimal import Decimal

    from k2.schema.codecs import message_id

    ts = 1_394_409_600_000_000 + (day - 10) * 86_400_000_000 + n * 1_000  # 2014-03-10T00:00Z + n ms
    return {
        "message_id": message_id("test", "trades", symbol, str(n)),
        "trade_id": str(n),
        "symbol": symbol,
        "exchange": "test",
        "asset_class": "equities",
        "timestamp": ts,
        "price": Decimal(price),
        "quantity": Decimal(n + 1),
        "currency": "AUD",
        "side": "UNKNOWN",
        "trade_conditions": [],
        "source_sequence": n,
        "ingestion_timestamp": ts,
        "platform_sequence": n,
        "vendor_data": None,
    }


def committed_offsets(bootstrap: str, group: str, targets: dict[tuple[str, int], int]) -> dict:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = fetch_committed(consumer, [TopicPartition(t, p) for t, p in targets])
        return {(tp.topic, tp.partition): tp.offset for tp in tps}
    finally:
        consumer.close()


def all_committed(bootstrap: str, group: str, targets: dict[tuple[str, int], int]) -> bool:
    committed = committed_offsets(bootstrap, group, targets)
    return all(committed.get(k, -1) >= end for k, end in targets.items())


def produce_test_trades(settings: Settings, endpoints, count: int, first: int = 0) -> tuple[RegistryClient, dict]:
    """Trades `first`..`first + count - 1` (make_trade) on TEST_TOPIC, acknowledged; the registry client and the
    end offsets to land."""
    admin = AdminClient(base_config(settings, endpoints.bootstrap))
    ensure_topics(admin, settings, [str(TEST_TOPIC), TEST_TOPIC.dlq])
    del admin
    registry = RegistryClient.for_settings(settings, endpoints.registry_url)
    producer = RecordProducer(producer_config(settings, endpoints.bootstrap), registry)
    records = [make_trade(i) for i in range(first, first + count)]
    producer.send(SourceBatch(TRADES_V2, AssetClass.EQUITIES, "test", records=records))
    producer.close()
    return registry, dict(producer.stats.end_offsets)


def assert_k2_book_at_the_last_btcusdt_update_is_the_oracles(capture: Path) -> None:
    """`k2 book BTCUSDT --depth 5 --format csv` at the capture's last BTCUSDT update gives best bid 58005.11 x
    1.486376 and best ask 58005.12 x 0.110252 (the 2021-04-04 capture), and every level as the independent oracle
    rebuilds them from the capture's frames, at that update's id."""
    diffs, snapshots = read_depth(capture)
    *_, (last, bids, asks) = replay(snapshots["BTCUSDT"][0], diffs["BTCUSDT"])
    at = datetime_from_micros(last.event_ms * 1000).isoformat()
    book = CliRunner().invoke(app, ["book", "BTCUSDT", "--at", at, "--depth", "5", "--format", "csv"])
    assert book.exit_code == 0, book.output
    rows = list(csv.DictReader(io.StringIO(book.stdout)))
    top = [(r["side"], r["price"], r["quantity"]) for r in rows if r["level"] == "1"]
    assert top == [("BID", "58005.11000000", "1.48637600"), ("ASK", "58005.12000000", "0.11025200")]
    oracle = [("BID", p, q) for p, q in sorted(bids.items(), reverse=True)[:5]]
    oracle += [("ASK", p, q) for p, q in sorted(asks.items())[:5]]
    assert [(r["side"], Decimal(r["price"]), Decimal(r["quantity"])) for r in rows] == oracle
    assert {int(r["book_update_id"]) for r in rows} == {last.last}
    assert f"book at update {last.last}" in " ".join(book.stderr.split())
