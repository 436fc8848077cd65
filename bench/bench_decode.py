"""Sink decode speed: batch decoding (k2.bus.batch_decode: the columnar decoder) against per-message fastavro.

Both decode the same framed trades_v2 messages made from the real ASX sample into a V2 Arrow table.
Run: `python bench/bench_decode.py [--messages N] [--repeats R]`; prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

from k2.bus.batch_decode import decode_batch
from k2.bus.serde import decode, encode
from k2.samples import ASX_SAMPLE as SAMPLE
from k2.schema import TRADES_V2
from k2.schema.arrow import records_to_arrow
from k2.schema.avro import parsed_schema
from k2.sources.asx import AsxSource


def _messages(limit: int) -> list[bytes]:
    schema = parsed_schema(TRADES_V2)
    values: list[bytes] = []
    for batch in AsxSource(SAMPLE).batches():
        if batch.spec is TRADES_V2:
            values.extend(encode(r, schema, 1) for r in batch.all_records())
        if len(values) >= limit:
            break
    return values[:limit]


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    values = _messages(args.messages)
    schema = parsed_schema(TRADES_V2)

    def baseline() -> None:
        records_to_arrow(TRADES_V2, [decode(v, schema, None) for v in values])

    def batch() -> None:
        decode_batch(TRADES_V2, values)

    assert decode_batch(TRADES_V2, values).equals(
        records_to_arrow(TRADES_V2, [decode(v, schema, None) for v in values])
    )
    base = _median_seconds(baseline, args.repeats)
    fast = _median_seconds(batch, args.repeats)
    n = len(values)
    print(f"{'path':<42}{'msgs/s (median)':>18}{'ratio':>8}")
    print(f"{'baseline: fastavro per message → Arrow':<42}{n / base:>18,.0f}{1.0:>8.2f}")
    print(f"{'k2 batch decode (columnar) → Arrow':<42}{n / fast:>18,.0f}{base / fast:>8.2f}")
    print(f"({n:,} trades_v2 messages from the ASX sample, {args.repeats} runs each)")


if __name__ == "__main__":
    main()
