"""Kafka log ends, the sink group's committed offsets and the lag between them, right on the embedded broker.

The embedded broker (Tansu) answers ListOffsets(LATEST) — and so `get_watermark_offsets()` — with the base offset
of the last batch + 1, not the log end (docs/stack-notes.md, "Embedded broker"; measured: 1507 reported for a partition
ending at 3306). The high watermark in a *fetch* response is right, so each non-empty partition is read from that
reported offset - 1 (the last batch's base) to end-of-partition, and the end is the fetched watermark (or the last
offset seen + 1). On a real Kafka cluster the same steps read one message per partition and give the same answer as
ListOffsets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, TopicPartition

from k2.bus.clients import base_config, fetch_committed
from k2.bus.topics import DLQ_PREFIX, TOPIC_PREFIX
from k2.config import Settings

Partition = tuple[str, int]


@dataclass(frozen=True)
class TopicLag:
    """One topic: its log end, what the group committed, and the difference (summed over partitions)."""

    topic: str
    partitions: int
    end_offset: int
    committed: int
    lag: int


@dataclass(frozen=True)
class LogReport:
    """Market topics with the sink group's lag, and DLQ topics with the messages they hold."""

    bootstrap: str
    group: str
    topics: list[TopicLag]
    dlq: dict[str, int]
    exact: bool  # False when some partition's end could not be fetched within the time budget


def probe_config(settings: Settings, bootstrap: str) -> dict[str, object]:
    # The sink's group id lets committed() read its offsets; a consumer that only assigns never joins the group,
    # so the sink is not disturbed (no rebalance) and nothing is committed from here.
    return {
        **base_config(settings, bootstrap),
        "group.id": settings.sink_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 10,
        # librdkafka's default 1000 ms backoff would stall each probe (docs/stack-notes.md, "Embedded broker")
        "fetch.queue.backoff.ms": 10,
    }


def log_ends(
    consumer: Consumer, partitions: list[Partition], budget_seconds: float = 2.0
) -> tuple[dict[Partition, tuple[int, int]], bool]:
    """(low, end) per partition and whether every end was confirmed by a fetch within `budget_seconds`."""
    bounds: dict[Partition, tuple[int, int]] = {}
    start: list[TopicPartition] = []
    for topic, partition in partitions:
        low, reported = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
        bounds[(topic, partition)] = (max(low, 0), max(reported, 0))
        if reported > 0:
            start.append(TopicPartition(topic, partition, reported - 1))  # base of the last batch: see above
    if not start:
        return bounds, True
    consumer.assign(start)
    pending = {(tp.topic, tp.partition) for tp in start}
    seen: dict[Partition, int] = {}
    deadline = time.monotonic() + budget_seconds
    try:
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(10_000, 0.1):
                key = (msg.topic(), msg.partition())
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(key)
                    continue
                seen[key] = max(seen.get(key, 0), msg.offset() + 1)
    finally:
        consumer.unassign()
    for tp in start:
        key = (tp.topic, tp.partition)
        _low, fetched = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), cached=True)
        low, reported = bounds[key]
        bounds[key] = (low, max(reported, fetched if fetched is not None else 0, seen.get(key, 0)))
    return bounds, not pending


def log_report(settings: Settings, bootstrap: str, budget_seconds: float = 2.0) -> LogReport:
    """Lag of the sink group on every market topic and the size of every DLQ topic, read from the log now."""
    consumer = Consumer(probe_config(settings, bootstrap))
    try:
        metadata = consumer.list_topics(timeout=5)
        names = sorted(t for t in metadata.topics if t.startswith((TOPIC_PREFIX, DLQ_PREFIX)))
        partitions = [(t, p) for t in names for p in sorted(metadata.topics[t].partitions)]
        bounds, exact = log_ends(consumer, partitions, budget_seconds)
        market = [tp for tp in partitions if tp[0].startswith(TOPIC_PREFIX)]
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in (
                fetch_committed(consumer, [TopicPartition(t, p) for t, p in market], patience=5) if market else []
            )
        }
    finally:
        consumer.close()
    topics: list[TopicLag] = []
    dlq: dict[str, int] = {}
    for name in names:
        parts = [tp for tp in partitions if tp[0] == name]
        if name.startswith(DLQ_PREFIX):
            dlq[name] = sum(bounds[tp][1] - bounds[tp][0] for tp in parts)
            continue
        end = sum(bounds[tp][1] for tp in parts)
        # No commit yet (negative offset): the group starts at the log's low watermark.
        done = sum(min(max(committed.get(tp, -1), bounds[tp][0]), bounds[tp][1]) for tp in parts)
        topics.append(TopicLag(name, len(parts), end, done, end - done))
    return LogReport(bootstrap, settings.sink_group, topics, dlq, exact)
