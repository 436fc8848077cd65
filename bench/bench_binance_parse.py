"""Binance hot path speed: parse + normalize of every captured aggTrade/bookTicker frame, against a plain baseline.

Frames are the real ones in data/samples/binance (2021-04-04 and 2021-10-12 cryptofeed captures: 1,912 aggTrade and
84 bookTicker frames). Measured per pass over all frames, repeated to ~1 s of work, median of 5:

- k2 (the product path, the suite row): `normalize_frames`, all frames of a pass as one batch → trades_v2 and
  quotes_v2 Arrow tables (exact decimals, UUIDv5 message ids, vendor_data), equal to `normalize_frame` per frame
- k2 per frame: `normalize_frame` (orjson parse, exact decimals, UUIDv5 message id, vendor_data) → V2 record dict
- baseline: `json.loads` + a dict of the same fields left as JSON gave them (price strings, no ids, no checks)
- msgspec candidate (issue #14 part 5; PyPI `msgspec`, when installed): bench/msgspec_normalize.py, the same
  `FrameBatch` from typed msgspec Structs decoded one call per channel and batch, against the template path
  interleaved round by round (standalone run only, not the suite row)
- cryptofeed (PyPI `cryptofeed`, when installed): its Binance feed's `message_handler` on the same frames (JSON with
  Decimal floats, symbol mapping, Trade/Ticker objects with Decimal price and size, delivered to an async callback),
  one event-loop run per pass; symbols loaded from the same exchangeInfo file, so nothing touches the network

Suite row (issue #6): k2 `normalize_frames` against cryptofeed, goal ≥ 3x cryptofeed and ≥ 600k frames/s.

The decimal cache of the per-frame path is cleared before every pass, so each pass pays what one fresh session
would (the batch path caches nothing between calls).
Run: `python bench/bench_binance_parse.py [--seconds S] [--repeats R] [--quick] [--json]` (`--quick`: shorter
rounds for the suite row and the candidate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from common import JSON_MARK, Row

from k2.samples import BINANCE_CAPTURE_2021_04_04, BINANCE_CAPTURE_2021_10_12
from k2.samples import BINANCE_EXCHANGE_INFO as EXCHANGE_INFO
from k2.sources.binance import normalize
from k2.sources.binance.capture import ws_frames
from k2.sources.binance.normalize import normalize_frame
from k2.sources.binance.normalize_columnar import normalize_frames
from k2.sources.binance.symbols import SymbolDirectory

CAPTURES = (BINANCE_CAPTURE_2021_04_04, BINANCE_CAPTURE_2021_10_12)


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


def cryptofeed_pass(frames: list[tuple[bytes, int]]) -> Callable[[], None]:
    """One pass of cryptofeed's Binance parser over `frames`; raises ImportError when cryptofeed is missing."""
    from cryptofeed.defines import TICKER, TRADES
    from cryptofeed.exchanges import Binance
    from cryptofeed.symbols import Symbols

    Symbols.set(Binance.id, *Binance._parse_symbol_data(json.loads(EXCHANGE_INFO.read_text())))
    delivered: list[object] = []

    async def callback(obj: object, receipt: float) -> None:
        delivered.append(obj)

    feed = Binance(
        symbols=list(Symbols.get(Binance.id)[0]),
        channels=[TRADES, TICKER],
        callbacks={TRADES: callback, TICKER: callback},
    )
    texts = [(raw.decode(), receipt / 1e6) for raw, receipt in frames]
    loop = asyncio.new_event_loop()

    async def run() -> None:
        handler = feed.message_handler
        for text, receipt in texts:
            await handler(text, None, receipt)

    def one_pass() -> None:
        delivered.clear()
        loop.run_until_complete(run())

    one_pass()
    if len(delivered) != len(frames):
        raise RuntimeError(f"cryptofeed delivered {len(delivered)} objects for {len(frames)} frames")
    return one_pass


def candidate_rounds(
    frames: list[tuple[bytes, int]], symbols: SymbolDirectory, seconds: float, repeats: int
) -> tuple[float, float, list[float]]:
    """The template batch path and the msgspec candidate over the same frames, interleaved round by round:
    (template frames/s, msgspec frames/s, median of each; the per-round msgspec / template ratios). ImportError
    when msgspec is missing."""
    from msgspec_normalize import normalize_frames as msgspec_frames

    expected = normalize_frames(frames, symbols)
    got = msgspec_frames(frames, symbols)
    if not (got.trades.equals(expected.trades) and got.quotes.equals(expected.quotes)):
        raise SystemExit("the msgspec candidate's tables differ from normalize_frames: fix that before timing it")

    def template_pass() -> None:
        normalize_frames(frames, symbols)

    def msgspec_pass() -> None:
        msgspec_frames(frames, symbols)

    passes = [_passes(one_pass, seconds) for one_pass in (template_pass, msgspec_pass)]
    rounds = [
        (_rate(template_pass, passes[0], len(frames)), _rate(msgspec_pass, passes[1], len(frames)))
        for _ in range(repeats)
    ]
    return (
        statistics.median(t for t, _ in rounds),
        statistics.median(m for _, m in rounds),
        [m / t for t, m in rounds],
    )


def suite_rows(quick: bool) -> list[Row]:
    """The suite's row: k2 normalize_frames (all frames of a pass as one batch) against cryptofeed, interleaved
    rounds, medians."""
    goal = "≥ 3x cryptofeed, ≥ 600k/s"
    symbols = SymbolDirectory.from_file(EXCHANGE_INFO)
    frames = _frames()

    def k2_pass() -> None:
        normalize._decimal.cache_clear()  # only odd frames take the per-frame path; none of these do
        normalize_frames(frames, symbols)

    try:
        cf_pass = cryptofeed_pass(frames)
    except ImportError as exc:
        note = f"cryptofeed not installed ({exc}): pip install -e '.[bench]'"
        return [Row("4 Binance parse+normalize", "skipped", "cryptofeed", "-", None, goal, None, note)]
    seconds, repeats = (0.3, 3) if quick else (1.0, 7)
    k2_passes, cf_passes = _passes(k2_pass, seconds), _passes(cf_pass, seconds)
    rounds = [(_rate(cf_pass, cf_passes, len(frames)), _rate(k2_pass, k2_passes, len(frames))) for _ in range(repeats)]
    cf = statistics.median(c for c, _ in rounds)
    k2 = statistics.median(k for _, k in rounds)
    ratio = statistics.median(k / c for c, k in rounds)
    return [
        Row(
            "4 Binance parse+normalize",
            f"{k2 / 1e3:.0f}k/s",
            "cryptofeed 2.4 Binance",
            f"{cf / 1e3:.0f}k/s",
            ratio,
            goal,
            ratio >= 3 and k2 >= 600_000,
            f"{len(frames):,} real frames (aggTrade + bookTicker) as one normalize_frames batch per pass,"
            f" median of {repeats} rounds of ~{seconds:g} s",
        )
    ]


rows = suite_rows  # the name bench/run.py calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1.0, help="work per measurement (default 1 s)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements; the median is reported (default 5)")
    parser.add_argument("--quick", action="store_true", help="suite row only, shorter rounds")
    parser.add_argument("--json", action="store_true", help="print the suite row as JSON (for run.py)")
    args = parser.parse_args()
    if args.json:
        print(JSON_MARK + json.dumps([asdict(r) for r in suite_rows(args.quick)]), flush=True)
        return
    symbols = SymbolDirectory.from_file(EXCHANGE_INFO)
    frames = _frames()
    results = [normalize_frame(raw, symbols, receipt) for raw, receipt in frames]
    if not all(isinstance(r, dict) for r in results):
        raise SystemExit("some captured frames did not normalize: fix that before timing it")
    batch = normalize_frames(frames, symbols)
    if batch.trades.num_rows + batch.quotes.num_rows != len(frames):
        raise SystemExit("the batch path did not make one record per captured frame: fix that before timing it")

    def k2_pass() -> None:
        normalize._decimal.cache_clear()
        for raw, receipt in frames:
            normalize_frame(raw, symbols, receipt)

    def baseline_pass() -> None:
        for raw, receipt in frames:
            _baseline(raw, receipt)

    def batch_pass() -> None:
        normalize_frames(frames, symbols)

    # Interleaved (baseline, k2, baseline, k2, ...) so both see the same machine load; on a shared box the ratio
    # per round is steadier than either rate alone.
    passes = [_passes(one_pass, args.seconds) for one_pass in (baseline_pass, k2_pass, batch_pass)]
    rounds = [
        [
            _rate(one_pass, n, len(frames))
            for one_pass, n in zip((baseline_pass, k2_pass, batch_pass), passes, strict=True)
        ]
        for _ in range(args.repeats)
    ]
    baseline, k2, batch = (statistics.median(r[i] for r in rounds) for i in range(3))
    ratio = statistics.median(r[1] / r[0] for r in rounds)
    batch_ratio = statistics.median(r[2] / r[0] for r in rounds)
    print(f"{len(frames):,} frames (aggTrade + bookTicker), median of {args.repeats}, ~{args.seconds:g} s each\n")
    print(f"{'path':<52} {'frames/s':>12} {'us/frame':>9}")
    for name, rate in (
        ("baseline: json.loads + dict", baseline),
        ("k2: normalize_frame (orjson, Decimal, UUIDv5)", k2),
        ("k2: normalize_frames (one batch → Arrow tables)", batch),
    ):
        print(f"{name:<52} {rate:>12,.0f} {1e6 / rate:>9.2f}")
    print(f"\nk2 / baseline, median of per-round ratios: per frame {ratio:.2f}x, batch {batch_ratio:.2f}x")
    seconds, repeats = (0.3, 3) if args.quick else (args.seconds, args.repeats)
    try:
        template, candidate, ratios = candidate_rounds(frames, symbols, seconds, repeats)
    except ImportError as exc:
        print(f"\nmsgspec candidate skipped ({exc}): pip install msgspec")
    else:
        print(f"\nmsgspec candidate vs the template path, interleaved, median of {repeats} rounds of ~{seconds:g} s:")
        print(f"{'k2: normalize_frames (frame templates, numpy)':<52} {template:>12,.0f} {1e6 / template:>9.2f}")
        print(f"{'candidate: msgspec Structs → Arrow':<52} {candidate:>12,.0f} {1e6 / candidate:>9.2f}")
        median, low, high = statistics.median(ratios), min(ratios), max(ratios)
        print(f"msgspec / templates, median of per-round ratios: {median:.2f}x (rounds {low:.2f}-{high:.2f}x)")
    for row in suite_rows(args.quick):
        print(f"\nvs {row.baseline_name}: k2 {row.k2}, cryptofeed {row.baseline}, ratio {row.ratio or 0:.2f}x")


if __name__ == "__main__":
    main()
