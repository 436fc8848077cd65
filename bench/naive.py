"""The naive pipeline the suite measures K2 against: what one writes first, one message at a time.

- `naive_produce`: ASX CSV rows → `csv.reader`, `datetime.strptime` + zoneinfo, `Decimal`, `uuid.uuid5` → a V2
  dict → `fastavro.schemaless_writer` behind the 5-byte Confluent header → `Producer.produce`, per row. No reject
  handling or reconciliation (rows that do not parse are skipped), no reference data.
- `naive_sink`: consume → fastavro decode per message → `records_to_arrow` → `table.append` every 100k rows → Kafka
  commit. No dedup, no offsets in the snapshot, no sort.
- `naive_book_at`: an order book at T → pyiceberg scans of the newest venue snapshot in the two hours before T and of
  every update since it, then a replay in Python (dicts of Decimal, updates in update-id order). No checkpoints, no
  continuity check.

Not a benchmark on its own: bench_sink.py, bench_source.py, bench_load.py and bench_book.py time these beside the
product.
"""

from __future__ import annotations

import csv
import threading
import time
import uuid
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import And, EqualTo, GreaterThan, GreaterThanOrEqual, LessThanOrEqual
from pyiceberg.table import Table

from k2.bus.clients import consumer_config, producer_config
from k2.bus.registry_client import RegistryClient
from k2.bus.serde import decode, encode
from k2.bus.stack import Endpoints
from k2.bus.topics import TopicName
from k2.config import Settings
from k2.lake.tables import ensure_tables
from k2.schema.arrow import records_to_arrow
from k2.schema.avro import avro_schema, parsed_schema
from k2.schema.fields import QUOTES_V2, TRADES_V2, AssetClass, DataType, RecordSpec

SYDNEY = ZoneInfo("Australia/Sydney")
TRADES = TopicName(AssetClass.EQUITIES, DataType.TRADES, "asx")
QUOTES = TopicName(AssetClass.EQUITIES, DataType.QUOTES, "asx")
REFERENCE = TopicName(AssetClass.EQUITIES, DataType.REFERENCE_DATA, "asx")
SPECS = {str(TRADES): TRADES_V2, str(QUOTES): QUOTES_V2}
COMMIT_ROWS = Settings().sink_commit_rows  # the product's commit size, so only the per-message work differs
Ends = dict[tuple[str, int], int]


def _micros(day: str, clock: str) -> int:
    local = datetime.strptime(f"{day} {clock}", "%m/%d/%Y %H:%M:%S.%f").replace(tzinfo=SYDNEY)
    return int(local.timestamp() * 1_000_000)


def _decimal(text: str) -> Decimal | None:
    value = Decimal(text)
    return value if value else None


def _trade(symbol: str, cells: list[str], line: int, now: int) -> dict[str, Any]:
    day, clock, price, volume, qualifier, venue, extra = cells
    source_id = f"{day}|{clock}|{line}"
    return {
        "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"asx|trades|{symbol}|{source_id}")),
        "trade_id": source_id,
        "symbol": symbol,
        "exchange": "asx",
        "asset_class": "equities",
        "timestamp": _micros(day, clock),
        "price": Decimal(price),
        "quantity": Decimal(volume),
        "currency": "AUD",
        "side": "UNKNOWN",
        "trade_conditions": [qualifier] if qualifier else [],
        "source_sequence": line,
        "ingestion_timestamp": now,
        "platform_sequence": line,
        "vendor_data": {"qualifier": qualifier, "venue": venue, "extra": extra},
    }


def _quote(symbol: str, cells: list[str], line: int, now: int) -> dict[str, Any]:
    day, clock, bid, ask, bid_volume, ask_volume = cells
    source_id = f"{day}|{clock}|{line}"
    bid_price, ask_price = _decimal(bid), _decimal(ask)
    return {
        "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"asx|quotes|{symbol}|{source_id}")),
        "quote_id": source_id,
        "symbol": symbol,
        "exchange": "asx",
        "asset_class": "equities",
        "timestamp": _micros(day, clock),
        "bid_price": bid_price,
        "bid_quantity": Decimal(bid_volume) if bid_price is not None else None,
        "ask_price": ask_price,
        "ask_quantity": Decimal(ask_volume) if ask_price is not None else None,
        "currency": "AUD",
        "source_sequence": line,
        "ingestion_timestamp": now,
        "platform_sequence": line,
        "vendor_data": {},
    }


def naive_produce(settings: Settings, endpoints: Endpoints, sample: Path) -> tuple[int, Ends]:
    """Every ASX trade and quote row, one at a time, into the topics (which must exist); (records, end offsets)."""
    with (sample / "reference-data" / "company_info.csv").open(newline="") as f:
        symbols = {row["company_id"]: row["symbol"] for row in csv.DictReader(f)}
    registry = RegistryClient(endpoints.registry_url)
    producer = Producer(producer_config(settings, endpoints.bootstrap))
    ends: Ends = {}

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            key = (msg.topic(), msg.partition())
            ends[key] = max(ends.get(key, 0), msg.offset() + 1)

    sent = 0
    for kind, topic, spec, make in (("trades", TRADES, TRADES_V2, _trade), ("quotes", QUOTES, QUOTES_V2, _quote)):
        schema = parsed_schema(spec)
        schema_id = registry.register(topic.subject, avro_schema(spec))
        for path in sorted((sample / kind).glob("*.csv")):
            symbol = symbols[path.stem]
            now = int(time.time() * 1_000_000)
            with path.open(newline="") as f:
                for line, cells in enumerate(csv.reader(f), 1):
                    try:
                        record = make(symbol, cells, line, now)
                    except (ValueError, InvalidOperation):
                        continue
                    value = encode(record, schema, schema_id)
                    while True:
                        try:
                            producer.produce(str(topic), value, symbol.encode(), on_delivery=delivered)
                            break
                        except BufferError:
                            producer.poll(0.05)
                    sent += 1
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("naive produce: messages unacknowledged after 60 s")
    registry.close()
    return sent, ends


def naive_sink(
    settings: Settings,
    endpoints: Endpoints,
    ends: Ends,
    catalog: Catalog,
    group: str,
    *,
    starts: Ends | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Consume every offset in `ends` from the start (or from `starts`), per-message decode, append per 100k rows;
    rows written. With `stop`, runs until it is set instead (the partitions of `ends` from `starts`)."""
    tables = ensure_tables(catalog)
    schemas = {topic: parsed_schema(spec) for topic, spec in SPECS.items()}
    consumer = Consumer(consumer_config(settings, endpoints.bootstrap, group))
    consumer.assign([TopicPartition(t, p, (starts or {}).get((t, p), OFFSET_BEGINNING)) for t, p in ends])
    total = sum(ends.values()) - sum((starts or {}).values())
    rows: dict[str, list[dict[str, Any]]] = {topic: [] for topic in SPECS}
    offsets: dict[tuple[str, int], int] = {}
    done = buffered = written = 0

    def commit() -> int:
        count = 0
        for topic, records in rows.items():
            if records:
                spec: RecordSpec = SPECS[topic]
                tables[spec.name].append(records_to_arrow(spec, records))
                count += len(records)
                records.clear()
        consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
        return count

    try:
        while (done < total) if stop is None else not stop.is_set():
            for msg in consumer.consume(10_000, 0.2):
                if msg.error():
                    continue
                topic = msg.topic()
                rows[topic].append(decode(msg.value(), schemas[topic], None))
                offsets[(topic, msg.partition())] = msg.offset() + 1
                done += 1
                buffered += 1
            if buffered >= COMMIT_ROWS or (stop is None and done >= total and buffered):
                written += commit()
                buffered = 0
    finally:
        consumer.close()
    return written


BOOK_SNAPSHOT_LOOKBACK_US = 2 * 3_600_000_000  # venue snapshots come about hourly
BOOK_BRIDGE_MARGIN_US = 600_000_000  # the update bridging a snapshot may carry an earlier venue time


def _iso_us(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1_000_000, tz=ZoneInfo("UTC")).isoformat()


def naive_book_at(
    snapshots: Table, updates: Table, symbol: str, at_us: int, depth: int
) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
    """The best `depth` bids and asks of `symbol` at `at_us`: newest venue snapshot, then every update after it."""
    found = snapshots.scan(
        row_filter=And(
            EqualTo("symbol", symbol),
            EqualTo("snapshot_type", "full"),
            GreaterThanOrEqual("timestamp", _iso_us(at_us - BOOK_SNAPSHOT_LOOKBACK_US)),
            LessThanOrEqual("timestamp", _iso_us(at_us)),
        ),
        selected_fields=("timestamp", "last_update_id", "side", "price", "quantity"),
    ).to_arrow()
    if not found.num_rows:
        raise ValueError(f"no venue snapshot of {symbol} in the two hours before {_iso_us(at_us)}")
    levels = found.to_pylist()
    taken, snapshot = max((row["timestamp"], row["last_update_id"]) for row in levels)
    book: dict[str, dict[Decimal, Decimal]] = {"BID": {}, "ASK": {}}
    for row in levels:
        if row["last_update_id"] == snapshot:
            book[row["side"]][row["price"]] = row["quantity"]
    since = int(taken.timestamp() * 1_000_000) - BOOK_BRIDGE_MARGIN_US
    rows = (
        updates.scan(
            row_filter=And(
                EqualTo("symbol", symbol),
                GreaterThan("last_update_id", snapshot),
                GreaterThanOrEqual("timestamp", _iso_us(since)),
                LessThanOrEqual("timestamp", _iso_us(at_us)),
            ),
            selected_fields=("last_update_id", "side", "price", "quantity"),
        )
        .to_arrow()
        .to_pylist()
    )
    for row in sorted(rows, key=lambda r: r["last_update_id"]):
        side = book[row["side"]]
        if row["quantity"]:
            side[row["price"]] = row["quantity"]
        else:
            side.pop(row["price"], None)
    bids = sorted(book["BID"].items(), reverse=True)[:depth]
    asks = sorted(book["ASK"].items())[:depth]
    return bids, asks
