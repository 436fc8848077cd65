"""A deterministic trade feed for the fault drills, run as its own process so it can be killed -9 mid-send.

`python -m tests.faults.feed COUNT TARGETS_JSON` produces trades 0..COUNT-1 (8 symbols on exchange `fault`, over
two day-partitions) to the stack serving $K2_HOME, writes the end offset of every partition it wrote to TARGETS_JSON
and exits 0 once the broker has acknowledged every one. Run again after a crash, it sends everything again: the
sink's dedup by message_id is what keeps the lake exact.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

from rich.console import Console

from k2.bus.stack import NO_KAFKA, existing_endpoints
from k2.config import Settings
from k2.core.batch import SourceBatch
from k2.ingest.pipeline import produce
from k2.schema import TRADES_V2
from k2.schema.codecs import message_id
from k2.schema.fields import AssetClass

EXCHANGE = "fault"
SYMBOLS = tuple(f"F{i}" for i in range(8))
BATCH = 20_000
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
    def __init__(self, count: int) -> None:
        self.count = count

    def describe(self) -> str:
        return f"fault feed of {self.count:,} trades"

    def batches(self) -> Iterator[SourceBatch]:
        for first in range(0, self.count, BATCH):
            records = [trade(n) for n in range(first, min(first + BATCH, self.count))]
            yield SourceBatch(TRADES_V2, AssetClass.EQUITIES, EXCHANGE, records=records, rows_read=len(records))


def main(argv: list[str]) -> int:
    count, targets_file = int(argv[0]), Path(argv[1])
    settings = Settings()
    endpoints = existing_endpoints(settings)
    if endpoints is None:
        print(f"feed: {NO_KAFKA}", file=sys.stderr)
        return 2
    recon, stats = produce(Feed(count), settings, endpoints, Console(quiet=True))
    targets = [[topic, partition, end] for (topic, partition), end in stats.end_offsets.items()]
    targets_file.write_text(json.dumps(targets))
    print(f"feed: produced {recon.produced:,} of {count:,}", flush=True)
    return 0 if recon.produced == count else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
