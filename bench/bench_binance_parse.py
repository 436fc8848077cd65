"""Binance hot path speed: parse + normalize of every captured aggTrade/bookTicker frame, against a plain baseline.

Frames are the real ones in shared/data/binance (2021-04-04 and 2021-10-12 cryptofeed captures: 1,912 aggTrade and
84 bookTicker frames). Measured per pass over all frames, repeated to ~1 s of work, median of 5:

- k2: `normalize_frame` (orjson parse, exact decimals, UUIDv5 message id, vendor_data) → V2 record dict
- baseline: `json.loads` + a dict of the same fields left as JSON gave them (price strings, no ids, no checks)

The decimal cache is cleared before every pass, so each pass pays what one fresh session would.
Run: `python bench/bench_binance_parse.py [--seconds S] [--repeats R]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from k2.sources.binance import normalize
from k2.sources.binance.capture import ws_frames
from k2.sources.binance.normalize import normalize_frame
from k2.sources.binance.symbols import SymbolDirectory

REPO = Path(__file__).resolve().parents[1]
BINANCE = Path(os.environ.get("K2_SHARED_DIR", REPO.parent / "shared")) / "data" / "binance"
CAPTURES = (
    BINANCE / "cryptofeed-ws-capture-2021-04-04" / "BINANCE-ee25be.0",
    BINANCE / "cryptofeed-ws-capture-2021-10-12" / "BINANCE.ws.1.0",
)
EXCHANGE_INFO = BINANCE / "cryptofeed-ws-capture-2021-10-12" / "exchangeInfo.2021-10-12.excerpt.json"


def _frames() -> list[tuple[bytes, int]]:
    frames = []
    for path in CAPTURES:
        frames.extend(
            (f.raw, f.receipt_us) for f in ws_frames(path) if b"@aggTrade" in f.raw or b"@bookTicker" in f.raw
        )
    return frames


def _baseline(raw: bytes, receipt_us: int) -> dict[str, Any]:
    data = json.loads(raw)["data"]
    if "e" in data:  # aggTrade
        return {
            "trade_id": str(data["a"]),
            "symbol": data["s"],
            "timestamp": data["T"] * 1000,
            "price": data["p"],
            "quantity": data["q"],
            "side": "SELL" if data["m"] else "BUY",
            "source_sequence": data["a"],
            "ingestion_timestamp": receipt_us,
        }
    return {
        "quote_id": str(data["u"]),
        "symbol": data["s"],
        "timestamp": receipt_us,
        "bid_price": data["b"],
        "bid_quantity": data["B"],
        "ask_price": data["a"],
        "ask_quantity": data["A"],
        "source_sequence": data["u"],
    }


def _passes(one_pass: Callable[[], None], seconds: float) -> int:
    started = time.perf_counter()
    one_pass()
    return max(1, round(seconds / (time.perf_counter() - started)))


def _rate(one_pass: Callable[[], None], passes: int, frames: int) -> float:
    started = time.perf_counter()
    for _ in range(passes):
        one_pass()
    return frames * passes / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="work per measurement (default 1 s)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements; the median is reported (default 5)")
    args = parser.parse_args()
    if not EXCHANGE_INFO.exists():
        raise SystemExit(f"Binance data not found under {BINANCE}: set K2_SHARED_DIR to the folder holding data/")
    symbols = SymbolDirectory.from_file(EXCHANGE_INFO)
    frames = _frames()
    results = [normalize_frame(raw, symbols, receipt) for raw, receipt in frames]
    if not all(isinstance(r, dict) for r in results):
        raise SystemExit("some captured frames did not normalize: fix that before timing it")

    def k2_pass() -> None:
        normalize._decimal.cache_clear()
        for raw, receipt in frames:
            normalize_frame(raw, symbols, receipt)

    def baseline_pass() -> None:
        for raw, receipt in frames:
            _baseline(raw, receipt)

    # Interleaved (baseline, k2, baseline, k2, ...) so both see the same machine load; on a shared box the ratio
    # per round is steadier than either rate alone.
    base_passes, k2_passes = _passes(baseline_pass, args.seconds), _passes(k2_pass, args.seconds)
    rounds = [
        (_rate(baseline_pass, base_passes, len(frames)), _rate(k2_pass, k2_passes, len(frames)))
        for _ in range(args.repeats)
    ]
    baseline = statistics.median(b for b, _ in rounds)
    k2 = statistics.median(k for _, k in rounds)
    ratio = statistics.median(k / b for b, k in rounds)
    print(f"{len(frames):,} frames (aggTrade + bookTicker), median of {args.repeats}, ~{args.seconds:g} s each\n")
    print(f"{'path':<44} {'frames/s':>12} {'us/frame':>9}")
    for name, rate in (
        ("baseline: json.loads + dict", baseline),
        ("k2: normalize_frame (orjson, Decimal, UUIDv5)", k2),
    ):
        print(f"{name:<44} {rate:>12,.0f} {1e6 / rate:>9.2f}")
    print(f"\nk2 / baseline, median of per-round ratios: {ratio:.2f}x")


if __name__ == "__main__":
    main()
