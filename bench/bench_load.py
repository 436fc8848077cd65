"""ASX sample end to end, wall time: raw files → every record committed in Iceberg.

- k2: `k2.ingest.pipeline.load(AsxSource(sample), Settings(home=<fresh>))`, what `k2 load asx` runs: starts its own
  embedded stack (Tansu broker + registry), produces (tick files parsed and Avro-encoded column by column) while a sink
  worker commits alongside, returns once the sink group has committed every produced offset (the sink commits
  Kafka only after Iceberg), with the reconciliation;
- naive: on a fresh embedded stack, `naive.naive_produce` then `naive.naive_sink` (per-message parse/encode, then
  per-message decode and 100k-row appends), one after the other.

Each run in a fresh K2 home (catalog, warehouse, broker); runs interleaved, medians reported.
Goal (issue #6): ≤ 2 s. Run: `python bench/bench_load.py [--quick]`.
"""

from __future__ import annotations

import time
from pathlib import Path

from common import Row, asx_sample, interleaved, main_for, median, progress, temp_home
from confluent_kafka.admin import AdminClient
from naive import QUOTES, TRADES, naive_produce, naive_sink
from rich.console import Console

from k2.bus.clients import base_config, ensure_topics
from k2.bus.stack import Stack
from k2.config import Settings
from k2.ingest.pipeline import load
from k2.lake.catalog import open_catalog
from k2.sources.asx import AsxSource


def run_k2(home: Path, sample: Path) -> tuple[float, int]:
    started = time.perf_counter()
    recon = load(AsxSource(sample), Settings(home=home), Console(quiet=True))
    seconds = time.perf_counter() - started
    if not recon.landed:
        raise RuntimeError("k2 load returned without landing everything")
    return seconds, recon.produced


def run_naive(home: Path, sample: Path) -> tuple[float, int]:
    settings = Settings(home=home)
    started = time.perf_counter()
    with Stack(settings) as endpoints:
        admin = AdminClient(base_config(settings, endpoints.bootstrap))
        ensure_topics(admin, settings, [str(TRADES), str(QUOTES)])
        sent, ends = naive_produce(settings, endpoints, sample)
        written = naive_sink(settings, endpoints, ends, open_catalog(settings), "naive-sink")
        del admin
    seconds = time.perf_counter() - started
    if written != sent:
        raise RuntimeError(f"naive load wrote {written} of {sent}")
    return seconds, written


def rows(quick: bool) -> list[Row]:
    runs = 1 if quick else 3
    counts: dict[str, int] = {}
    with temp_home("load") as home, asx_sample(quick) as sample:
        counter = iter(range(100))

        def k2() -> float:
            seconds, counts["k2"] = run_k2(home / f"k2-{next(counter)}", sample)
            progress(f"load: k2 {seconds:.2f} s ({counts['k2']:,} records)")
            return seconds

        def naive() -> float:
            seconds, counts["naive"] = run_naive(home / f"naive-{next(counter)}", sample)
            progress(f"load: naive {seconds:.2f} s ({counts['naive']:,} records)")
            return seconds

        k2_times, base_times = interleaved(k2, naive, runs)
    k2_s, base_s = median(k2_times), median(base_times)
    return [
        Row(
            "3 ASX sample end to end",
            f"{k2_s:.2f} s",
            "naive produce+sink",
            f"{base_s:.2f} s",
            base_s / k2_s,
            "≤ 2 s",
            None if quick else k2_s <= 2.0,
            f"{counts['k2']:,} records into Iceberg (naive {counts['naive']:,}: no reference data), {runs} run(s) each"
            + (" (quick: first 5k rows per file; the goal is judged on the full sample)" if quick else ""),
        )
    ]


if __name__ == "__main__":
    main_for(rows, __doc__)
