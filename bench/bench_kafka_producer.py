"""Idempotent and transactional producers on a real Apache Kafka: what they cost K2, msgs/s.

Setup (not timed): Apache Kafka from K2's launcher (`ApacheKafkaCluster`, KRaft on 127.0.0.1: three nodes with
replication factor 3 and min.insync.replicas=2; one node with --quick); N framed trades_v2 messages made from the
real ASX sample trades (the first 20,000, repeated by bench_sink.framed_messages with distinct message ids), encoded
once and kept in memory so only producing is timed. Each run writes a fresh topic of 3 partitions (the product
default), key = symbol.

Timed, with K2's producer settings (`k2.bus.clients.producer_config`: acks=all, zstd, linger.ms=10, 1 MB batches)
and one delivery callback per message (as `RecordProducer`), from the first produce() to the return of flush():
- baseline: acks=all, enable.idempotence=false;
- idempotent: acks=all, enable.idempotence=true (K2's setting);
- transactional: idempotent plus a transactional.id, one transaction per 20,000 messages (a source batch), committed.
Then the transactional topic is read from offset 0 to its end by a consumer with K2's consumer settings, with
isolation.level read_committed and read_uncommitted (librdkafka's default is read_committed), msgs/s.

Runs of the three producers are interleaved (median of each); ratios are against the baseline from the same run
(> 1 = faster than the baseline). Not part of `bench/run.py`: it starts JVMs. The decision these figures support is
in docs/architecture.md ("Exactly once", idempotent producers and transactions).
Run: `python bench/bench_kafka_producer.py [--quick]` (quick: 100k messages, one node, one run each;
K2_BENCH_RUNS sets the runs of a full one, default 2).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench_sink import framed_messages, sample_trades
from common import Row, main_for, progress, rate
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from k2.bus.apache_kafka import ApacheKafkaCluster, is_cached
from k2.bus.clients import consumer_config, producer_config
from k2.config import Settings

PARTITIONS = 3
TRANSACTION = 20_000  # messages per transaction: the feed's and the ASX source's batch size
SCHEMA_ID = 1  # the bytes are never decoded here; any id gives the same frame size
WARM_UP = "bench.warm-up"  # one message per producer before the clock starts
START_TIMEOUT = 600.0
BASE = 20_000
RUNS = int(os.environ.get("K2_BENCH_RUNS", "2"))  # interleaved runs of each producer in a full run


@contextmanager
def running(cluster: ApacheKafkaCluster) -> Iterator[ApacheKafkaCluster]:
    # A generous start timeout: on 2 cores shared with other work, three JVMs have taken over 3 minutes.
    cluster.start(timeout=START_TIMEOUT)
    try:
        yield cluster
    finally:
        cluster.stop()


class Variant:
    """One producer configuration; `run` produces every message to a new topic and returns seconds."""

    def __init__(self, name: str, overrides: dict[str, Any], transactional: bool = False) -> None:
        self.name = name
        self.overrides = overrides
        self.transactional = transactional
        self.times: list[float] = []

    def run(self, settings: Settings, bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
        config = {**producer_config(settings, bootstrap), **self.overrides}
        if self.transactional:
            config["transactional.id"] = f"k2-bench-{topic}"
        producer = Producer(config)
        failures: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                failures.append(err)

        # Not timed, once per producer rather than per record: connecting, and the producer id an idempotent
        # producer asks for (on a new cluster the first one waits seconds for the id manager: "coordinator load").
        if self.transactional:
            producer.init_transactions(60)
        else:
            producer.produce(WARM_UP, b"", on_delivery=delivered)
            if producer.flush(60):
                raise RuntimeError(f"{self.name}: the warm-up message was not acknowledged in 60 s")
        started = time.perf_counter()
        for first in range(0, len(messages), TRANSACTION if self.transactional else len(messages)):
            if self.transactional:
                producer.begin_transaction()
            for key, value in messages[first : first + (TRANSACTION if self.transactional else len(messages))]:
                while True:
                    try:
                        producer.produce(topic, value, key, on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.05)  # local queue full: serve delivery reports (backpressure, as K2)
            if self.transactional:
                producer.commit_transaction(120)  # flushes, then writes the commit markers
        if producer.flush(120):
            raise RuntimeError(f"{self.name}: messages unacknowledged after 120 s")
        seconds = time.perf_counter() - started
        if failures:
            raise RuntimeError(f"{self.name}: {len(failures)} delivery failures, first: {failures[0]}")
        self.times.append(seconds)
        return seconds


def consume_all(settings: Settings, bootstrap: str, topic: str, count: int, isolation: str) -> float:
    """Seconds to read `count` messages of `topic` from offset 0 with `isolation`."""
    config = {**consumer_config(settings, bootstrap, f"bench-{isolation}-{topic}"), "isolation.level": isolation}
    consumer = Consumer(config)
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    seen = 0
    started = time.perf_counter()
    deadline = time.monotonic() + 300
    try:
        while seen < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"read {seen} of {count} messages with {isolation} in 300 s")
            seen += sum(1 for m in consumer.consume(10_000, 0.5) if m.error() is None)
        return time.perf_counter() - started
    finally:
        consumer.close()


def measure(nodes: int, n: int, runs: int, messages: list[tuple[bytes, bytes]]) -> list[Row]:
    variants = [
        Variant("acks=all", {"enable.idempotence": False}),
        Variant("acks=all + idempotence", {"enable.idempotence": True}),
        Variant("transactions (20k/txn)", {"enable.idempotence": True}, transactional=True),
    ]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="k2-bench-kafka-") as root:
        settings = Settings(home=Path(root) / "home")
        started = time.monotonic()
        with running(ApacheKafkaCluster(Path(root) / "kafka", nodes=nodes)) as cluster:
            progress(f"kafka producer: {nodes} node(s) ready in {time.monotonic() - started:.0f} s")
            admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
            replication = cluster.replication
            counter = iter(range(1000))
            admin.create_topics([NewTopic(WARM_UP, 1, replication)])[WARM_UP].result()

            def new_topic() -> str:
                name = f"bench.trades.{next(counter)}"
                admin.create_topics([NewTopic(name, PARTITIONS, replication)])[name].result()
                return name

            last_txn_topic = ""
            for run in range(runs):
                for variant in variants:
                    topic = new_topic()
                    seconds = variant.run(settings, cluster.bootstrap, topic, messages)
                    progress(f"kafka producer: {nodes} node(s) run {run + 1} {variant.name}: {rate(n, seconds)}")
                    if variant.transactional:
                        last_txn_topic = topic
            reads: dict[str, list[float]] = {"read_uncommitted": [], "read_committed": []}
            for _ in range(runs):
                for isolation, times in reads.items():
                    times.append(consume_all(settings, cluster.bootstrap, last_txn_topic, n, isolation))
                    progress(f"kafka producer: {nodes} node(s) consume {isolation}: {rate(n, times[-1])}")
    base = statistics.median(variants[0].times)
    where = f"{nodes} node{'s' if nodes > 1 else ''}, RF {replication}"
    for variant in variants:
        seconds = statistics.median(variant.times)
        rows.append(
            Row(
                f"produce {variant.name}, {where}",
                rate(n, seconds),
                "acks=all, no idempotence",
                rate(n, base),
                base / seconds,
                "-",
                None,
                f"{n:,} K2 trades ({len(messages[0][1])} B framed), {PARTITIONS} partitions, {runs} run(s) each,"
                " K2 producer settings",
            )
        )
    committed, uncommitted = statistics.median(reads["read_committed"]), statistics.median(reads["read_uncommitted"])
    rows.append(
        Row(
            f"consume read_committed, {where}",
            rate(n, committed),
            "read_uncommitted",
            rate(n, uncommitted),
            uncommitted / committed,
            "-",
            None,
            f"the transactional topic ({n // TRANSACTION} transactions), K2 consumer settings, {runs} run(s) each",
        )
    )
    return rows


def rows(quick: bool) -> list[Row]:
    # Full: the 3-node cluster (acks=all then waits for min.insync.replicas of 3 replicas: where idempotence and
    # transactions could cost most); quick: one node, to check the script in a minute.
    n, runs, clusters = (100_000, 1, (1,)) if quick else (1_000_000, RUNS, (3,))
    if not is_cached():
        progress("kafka producer: Apache Kafka's jars are fetched with Maven first (once)")
    progress(f"kafka producer: encoding {n:,} framed trades")
    # The first BASE trades of the sample, repeated with distinct message ids: parsing and encoding the whole sample
    # costs minutes of CPU on a busy machine and is not what is measured.
    messages = framed_messages(sample_trades(BASE), n, SCHEMA_ID)
    return [row for nodes in clusters for row in measure(nodes, n, runs, messages)]


if __name__ == "__main__":
    main_for(rows, __doc__)
