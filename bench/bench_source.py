"""Source → Kafka throughput, msgs/s: the ASX sample parsed, Avro-encoded and produced (every ack received).

- k2: `k2.ingest.pipeline.produce(AsxSource(sample), ...)`, the `k2 load` producing half: the product's ASX parser
  (reference data, trades, quotes, rejects to the DLQ, reconciliation; plain tick files parsed into Arrow by
  k2.sources.asx.columnar), `RecordProducer` (registry ids, Confluent framing with the columnar encoder
  k2.schema.avro_columnar, idempotent acks=all producer, zstd), flushed;
- naive: `naive.naive_produce`, csv.reader + strptime + Decimal + uuid5 + fastavro per row, same producer settings.

Both on one embedded stack (Tansu + K2 registry on loopback), topics created before timing; runs interleaved,
medians reported. Goal (issue #6): ≥ 300k msgs/s. Run: `python bench/bench_source.py [--quick]`.
"""

from __future__ import annotations

import time

from common import Row, asx_sample, interleaved, main_for, median, progress, rate, temp_home
from confluent_kafka.admin import AdminClient
from naive import QUOTES, REFERENCE, TRADES, naive_produce
from rich.console import Console

from k2.bus.clients import base_config, ensure_topics
from k2.bus.stack import Stack
from k2.config import Settings
from k2.ingest.pipeline import produce
from k2.sources.asx import AsxSource


def rows(quick: bool) -> list[Row]:
    runs = 1 if quick else 3
    counts: dict[str, int] = {}
    with temp_home("source") as home, asx_sample(quick) as sample:
        settings = Settings(home=home)
        with Stack(settings) as endpoints:
            admin = AdminClient(base_config(settings, endpoints.bootstrap))
            ensure_topics(
                admin, settings, [t for topic in (TRADES, QUOTES, REFERENCE) for t in (str(topic), topic.dlq)]
            )

            def k2() -> float:
                started = time.perf_counter()
                recon, _stats = produce(AsxSource(sample), settings, endpoints, Console(quiet=True))
                seconds = time.perf_counter() - started
                counts["k2"] = recon.produced
                progress(f"source: k2 {rate(recon.produced, seconds)} ({recon.produced:,} records)")
                return seconds

            def naive() -> float:
                started = time.perf_counter()
                sent, _ends = naive_produce(settings, endpoints, sample)
                seconds = time.perf_counter() - started
                counts["naive"] = sent
                progress(f"source: naive {rate(sent, seconds)} ({sent:,} records)")
                return seconds

            k2_times, base_times = interleaved(k2, naive, runs)
    k2_rate = counts["k2"] / median(k2_times)
    base_rate = counts["naive"] / median(base_times)
    return [
        Row(
            "2 source ASX→Kafka",
            rate(counts["k2"], median(k2_times)),
            "naive csv+fastavro",
            rate(counts["naive"], median(base_times)),
            k2_rate / base_rate,
            "≥ 300k/s",
            k2_rate >= 300_000,
            f"{counts['k2']:,} records ({'first 5k rows per file of ' if quick else ''}ASX sample: trades, quotes,"
            f" reference), {runs} run(s) each, acks=all",
        )
    ]


if __name__ == "__main__":
    main_for(rows, __doc__)
