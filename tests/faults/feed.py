"""A deterministic trade feed for the fault drills, run as its own process so it can be killed -9 mid-send.

`python -m tests.faults.feed COUNT TARGETS_JSON` produces trades 0..COUNT-1 (8 symbols on exchange `fault`, over
two day-partitions) to the stack serving $K2_HOME, writes the end offset of every partition it wrote to TARGETS_JSON
and exits 0 once the broker has acknowledged every one. Run again after a crash, it sends everything again: the
sink's dedup by message_id is what keeps the lake exact.

`python -m tests.faults.feed COUNT TARGETS_JSON CHECKPOINT` is a source that keeps its place instead, as a stream
does: after every batch it waits until the broker has acknowledged everything sent, then writes the next trade number
to CHECKPOINT (atomically). Run again after a kill -9 it starts from there, so whatever it sent after
its last checkpoint is sent a second time (some of it is in Kafka already: duplicates the sink must drop), and a
drill can kill it many times without paying for the whole feed again each time.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from confluent_kafka.admin import AdminClient
from rich.console import Console

from k2.bus.clients import base_config, ensure_topics, producer_config
from k2.bus.producer import RecordProducer
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import NO_KAFKA, Endpoints, existing_endpoints
from k2.bus.topics import TopicName
from k2.config import Settings
from k2.core.batch import SourceBatch
from k2.ingest.pipeline import produce
from k2.schema import TRADES_V2
from k2.schema.codecs import message_id
from k2.schema.fields import AssetClass, DataType

EXCHANGE = "fault"
TOPIC = TopicName(AssetClass.EQUITIES, DataType.TRADES, EXCHANGE)
SYMBOLS = tuple(f"F{i}" for i in range(8))
BATCH = 20_000
# A checkpoint after every batch: the flush before it drains the pipeline 50 times per million trades (a round trip
# to min.insync.replicas each), and a kill -9 re-sends at most a batch and what was in flight.
CHECKPOINT_EVERY = BATCH
DAY0_US = 1_394_409_600_000_000  # 2014-03-10T00:00Z


def trade_id(n: int) -> str:
    return message_id(EXCHANGE, "trades", SYMBOLS[n % len(SYMBOLS)], str(n))


def expected_ids(count: int) -> set[str]:
    return {trade_id(n) for n in range(count)}


def trade(n: int) -> dict:
    ts = DAY0_US + (n % 2) * 86_400_000_000 + n * 1_000  # even n on day 0, odd on day 1: two day-partitions
    return {
        "message_id": trade_id(n),
        "trade_id": str(n),
        "symbol": SYMBOLS[n % len(SYMBOLS)],
        "exchange": EXCHANGE,
        "asset_class": "equities",
        "timestamp": ts,
        "price": Decimal(100_000 + n % 5_000).scaleb(-3),
        "quantity": Decimal(n % 997 + 1),
        "currency": "AUD",
        "side": "BUY" if n % 2 else "SELL",
        "trade_conditions": [],
        "source_sequence": n,
        "ingestion_timestamp": ts,
        "platform_sequence": n,
        "vendor_data": None,
    }


class Feed:
    def __init__(self, count: int, start: int = 0) -> None:
        self.count = count
        self.start = start

    def describe(self) -> str:
        return f"fault feed of {self.count:,} trades"

    def batches(self) -> Iterator[SourceBatch]:
        for first in range(self.start, self.count, BATCH):
            records = [trade(n) for n in range(first, min(first + BATCH, self.count))]
            yield SourceBatch(TRADES_V2, AssetClass.EQUITIES, EXCHANGE, records=records, rows_read=len(records))


def read_checkpoint(path: Path) -> int:
    """The first trade not yet known to be acknowledged (0 before the first checkpoint)."""
    return int(path.read_text()) if path.exists() else 0


def _write_checkpoint(path: Path, position: int) -> None:
    # A kill -9 may land mid-write: write beside it and rename, so the checkpoint is always a whole number.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(position))
    os.replace(tmp, path)


def produce_from_checkpoint(count: int, checkpoint: Path, settings: Settings, endpoints: Endpoints) -> dict:
    """Send trades from the checkpoint on with K2's producer (acks=all), checkpointing every CHECKPOINT_EVERY once
    all of them are acknowledged; the end offsets acknowledged in this run."""
    admin = AdminClient(base_config(settings, endpoints.bootstrap))
    ensure_topics(admin, settings, [str(TOPIC), TOPIC.dlq])
    producer = RecordProducer(producer_config(settings, endpoints.bootstrap), RegistryClient(endpoints.registry_url))
    start = read_checkpoint(checkpoint)
    for batch in Feed(count, start).batches():
        producer.send(batch)
        start += batch.record_count
        if start % CHECKPOINT_EVERY == 0 or start == count:
            producer.flush()  # raises unless every record so far was acknowledged by min.insync.replicas
            _write_checkpoint(checkpoint, start)
    producer.close()
    return producer.stats.end_offsets


def main(argv: list[str]) -> int:
    count, targets_file = int(argv[0]), Path(argv[1])
    checkpoint = Path(argv[2]) if len(argv) > 2 else None
    settings = Settings()
    endpoints = existing_endpoints(settings)
    if endpoints is None:
        print(f"feed: {NO_KAFKA}", file=sys.stderr)
        return 2
    if checkpoint is not None:
        first = read_checkpoint(checkpoint)
        end_offsets = produce_from_checkpoint(count, checkpoint, settings, endpoints)
        produced, done = count - first, read_checkpoint(checkpoint) == count
    else:
        recon, stats = produce(Feed(count), settings, endpoints, Console(quiet=True))
        end_offsets, produced = stats.end_offsets, recon.produced
        done = produced == count
    targets = [[topic, partition, end] for (topic, partition), end in end_offsets.items()]
    targets_file.write_text(json.dumps(targets))
    print(f"feed: produced {produced:,} of {count:,}", flush=True)
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
