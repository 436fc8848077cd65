"""Sink throughput, Kafka → committed Iceberg, msgs/s: K2's IcebergSink against the naive per-message loop.

Setup (not timed): an embedded stack (k2.bus.stack.Stack: Tansu broker + K2 registry on loopback), one topic
`market.equities.trades.asx` (3 partitions, the product default) holding N framed trades_v2 messages made from the
real ASX sample trades (repeated with distinct message ids when N exceeds the sample's ~200k).

Timed, each run into a fresh catalog and warehouse and a new consumer group, so both read the same N messages from
offset 0 and end with every row committed in Iceberg and the offsets committed in Kafka:
- k2: `IcebergSink(..., topics=[topic]).run(until=landed)` (the product's worker: batch decode, dedup against the
  lake, sort, append with offsets in the snapshot, then the Kafka commit), product settings (100k-row commits);
- naive: consume → fastavro decode per message → `records_to_arrow` → `table.append` every 100k rows → commit.

Goal (issue #6): ≥ 500k msgs/s on 2 cores and ≥ 6× naive. Medians of runs interleaved naive/k2.
Run: `python bench/bench_sink.py [--quick]`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from common import ASX_SAMPLE, Row, interleaved, main_for, median, progress, rate, temp_home, timed
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from naive import naive_sink

from k2.bus.clients import base_config, ensure_topics, producer_config
from k2.bus.registry_client import RegistryClient
from k2.bus.serde import decode, encode
from k2.bus.stack import Endpoints, Stack
from k2.bus.topics import TopicName
from k2.config import Settings
from k2.ingest.pipeline import landed_check
from k2.lake.catalog import open_catalog
from k2.lake.sink import IcebergSink
from k2.lake.tables import ensure_tables
from k2.schema.avro import avro_schema, parsed_schema
from k2.schema.fields import TRADES_V2, AssetClass, DataType
from k2.sources.asx import AsxSource

TOPIC = TopicName(AssetClass.EQUITIES, DataType.TRADES, "asx")


def sample_trades(limit: int | None = None) -> list[dict[str, Any]]:
    """The trades_v2 records the product's ASX source makes from the sample (all ~200k, or about the first `limit`;
    trades files come first)."""
    records: list[dict[str, Any]] = []
    for batch in AsxSource(ASX_SAMPLE).batches():
        if batch.spec is TRADES_V2:
            records.extend(batch.all_records())
        elif records:
            break
        if limit is not None and len(records) >= limit:
            break
    return records[:limit]


def framed_messages(records: list[dict[str, Any]], n: int, schema_id: int) -> list[tuple[bytes, bytes]]:
    """n (key, value) pairs; repeats of the sample get new message ids (patched in place: message_id is the first
    field, a 36-character string, so bytes 6..42 of the framed value), else the sink would drop them as duplicates.
    """
    schema = parsed_schema(TRADES_V2)
    base = [(r["symbol"].encode(), encode(r, schema, schema_id)) for r in records[:n]]
    out = list(base[:n])
    repeat = 1
    while len(out) < n:
        for (key, value), record in zip(base[: n - len(out)], records, strict=False):
            mid = str(uuid.UUID(int=uuid.UUID(record["message_id"]).int ^ repeat)).encode()
            out.append((key, value[:6] + mid + value[42:]))
        repeat += 1
    check = decode(out[-1][1], schema, None)
    if len(check["message_id"]) != 36 or (n > len(base) and check["message_id"] == records[-1]["message_id"]):
        raise RuntimeError("message id patch did not take: the trades_v2 layout changed")
    return out


def fill_topic(settings: Settings, endpoints: Endpoints, n: int) -> dict[tuple[str, int], int]:
    """Produce n framed trades to TOPIC; returns the end offset per partition (from delivery reports)."""
    admin = AdminClient(base_config(settings, endpoints.bootstrap))
    ensure_topics(admin, settings, [str(TOPIC), TOPIC.dlq])
    schema_id = RegistryClient(endpoints.registry_url).register(TOPIC.subject, avro_schema(TRADES_V2))
    messages = framed_messages(sample_trades(n), n, schema_id)
    producer = Producer(producer_config(settings, endpoints.bootstrap))
    ends: dict[tuple[str, int], int] = {}

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            key = (msg.topic(), msg.partition())
            ends[key] = max(ends.get(key, 0), msg.offset() + 1)

    for key, value in messages:
        while True:
            try:
                producer.produce(str(TOPIC), value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(60):
        raise RuntimeError("produce did not complete")
    if sum(ends.values()) != n:
        raise RuntimeError(f"produced {sum(ends.values())} of {n}")
    return ends


def run_k2(endpoints: Endpoints, ends: dict[tuple[str, int], int], home: Path, run: int) -> float:
    settings = Settings(
        home=home / f"k2-{run}",
        kafka_bootstrap=endpoints.bootstrap,
        schema_registry_url=endpoints.registry_url,
        sink_group=f"bench-k2-{run}",
    )
    catalog = open_catalog(settings)
    table = ensure_tables(catalog)[TRADES_V2.name]  # table creation is not what is measured
    sink = IcebergSink(settings, endpoints.bootstrap, RegistryClient(endpoints.registry_url), catalog, topics=[])
    sink.add_topics([str(TOPIC)])
    seconds = timed(lambda: sink.run(until=landed_check(dict(ends), 300)))
    table.refresh()
    written = int(table.current_snapshot().summary["total-records"])  # type: ignore[union-attr]
    if written != sum(ends.values()):
        raise RuntimeError(f"k2 sink wrote {written} rows of {sum(ends.values())}")
    return seconds


def run_naive(endpoints: Endpoints, ends: dict[tuple[str, int], int], home: Path, run: int) -> float:
    settings = Settings(home=home / f"naive-{run}")
    catalog = open_catalog(settings)
    ensure_tables(catalog)
    written = 0

    def loop() -> None:
        nonlocal written
        written = naive_sink(settings, endpoints, ends, catalog, f"bench-naive-{run}")

    seconds = timed(loop)
    if written != sum(ends.values()):
        raise RuntimeError(f"naive loop wrote {written} rows of {sum(ends.values())}")
    return seconds


def rows(quick: bool) -> list[Row]:
    n, runs = (50_000, 1) if quick else (1_000_000, 3)
    goal = "≥ 500k/s and ≥ 6x naive"
    with temp_home("sink") as home:
        settings = Settings(home=home / "stack")
        with Stack(settings) as endpoints:
            progress(f"sink: producing {n:,} framed ASX trades")
            ends = fill_topic(settings, endpoints, n)
            counter = iter(range(1000))

            def k2() -> float:
                seconds = run_k2(endpoints, ends, home, next(counter))
                progress(f"sink: k2 {rate(n, seconds)}")
                return seconds

            def naive() -> float:
                seconds = run_naive(endpoints, ends, home, next(counter))
                progress(f"sink: naive {rate(n, seconds)}")
                return seconds

            k2_times, base_times = interleaved(k2, naive, runs)
    k2_s, base_s = median(k2_times), median(base_times)
    k2_rate = n / k2_s
    ratio = base_s / k2_s
    return [
        Row(
            "1 sink Kafka→Iceberg",
            rate(n, k2_s),
            "naive fastavro loop",
            rate(n, base_s),
            ratio,
            goal,
            k2_rate >= 500_000 and ratio >= 6,
            f"{n:,} ASX trades, 3 partitions, {runs} run(s) each, 100k-row commits",
        )
    ]


if __name__ == "__main__":
    main_for(rows, __doc__)
