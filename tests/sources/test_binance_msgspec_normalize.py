"""The msgspec candidate (bench/msgspec_normalize.py, issue #14 part 5) against the product's batch normalizer.

Both must give the same `FrameBatch` for any input: the same Arrow tables (schema, every value, message ids,
vendor_data maps in the same key order: `Table.equals`), the same frame indexes, rejects and control count. Checked
on every frame of both real captures, on odd frames mixed among them, and on randomly damaged ones; the per-frame
reference (`normalize_frame`) is checked too, so the two cannot agree on a shared mistake.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from k2.samples import BINANCE_CAPTURE_2021_04_04, BINANCE_CAPTURE_2021_10_12
from k2.samples import BINANCE_EXCHANGE_INFO as EXCHANGE_INFO
from k2.schema.arrow import records_from_arrow
from k2.sources.binance.capture import ws_frames
from k2.sources.binance.normalize import TimeUnit, normalize_frame
from k2.sources.binance.normalize_columnar import FrameBatch, normalize_frames
from k2.sources.binance.symbols import SymbolDirectory
from tests.sources.test_binance_normalize_columnar import ODD_FRAMES, _agg_trade, _book_ticker, _trade

# msgspec is not a product dependency (the candidate lost, bench/RESULTS.md); the dev extra installs it for this test.

CAPTURES = (BINANCE_CAPTURE_2021_04_04, BINANCE_CAPTURE_2021_10_12)
BENCH = Path(__file__).resolve().parents[2] / "bench"
Frames = list[tuple[bytes, int]]


def _candidate() -> ModuleType:
    """bench/msgspec_normalize.py (bench/ is not a package: its scripts run with bench/ on the path)."""
    spec = importlib.util.spec_from_file_location("msgspec_normalize", BENCH / "msgspec_normalize.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec resolves the Structs' annotations through the module
    spec.loader.exec_module(module)
    return module


candidate = _candidate()


@pytest.fixture(scope="module")
def symbols() -> SymbolDirectory:
    return SymbolDirectory.from_file(EXCHANGE_INFO)


@pytest.fixture(scope="module")
def captured() -> Frames:
    return [(f.raw, f.receipt_us) for path in CAPTURES for f in ws_frames(path)]


def _assert_same(
    frames: Frames,
    symbols: SymbolDirectory,
    time_unit: TimeUnit = TimeUnit.MILLISECOND,
    origin: str = "binance-ws",
    first_position: int = 1,
) -> FrameBatch:
    """Both paths give equal batches, and they equal normalize_frame frame by frame; returns the candidate's."""
    kwargs: dict[str, Any] = {"origin": origin, "first_position": first_position}
    got = candidate.normalize_frames(frames, symbols, time_unit, **kwargs)
    want = normalize_frames(frames, symbols, time_unit, **kwargs)
    assert got.trades.schema == want.trades.schema and got.quotes.schema == want.quotes.schema
    assert got.trades.equals(want.trades), _first_difference(got.trades, want.trades)
    assert got.quotes.equals(want.quotes), _first_difference(got.quotes, want.quotes)
    assert got.trade_frames.tolist() == want.trade_frames.tolist()
    assert got.quote_frames.tolist() == want.quote_frames.tolist()
    assert got.rejects == want.rejects
    assert got.control_frames == want.control_frames
    results = [
        normalize_frame(raw, symbols, receive, time_unit, origin=origin, position=first_position + i)
        for i, (raw, receive) in enumerate(frames)
    ]
    records = records_from_arrow(got.trades) + records_from_arrow(got.quotes)
    indexes = got.trade_frames.tolist() + got.quote_frames.tolist()
    assert records == [results[i] for i in indexes]
    assert len(indexes) + len(got.rejects) + got.control_frames == len(frames)
    return got


def _first_difference(got: Any, want: Any) -> str:
    if got.num_rows != want.num_rows:
        return f"{got.num_rows} rows against {want.num_rows}"
    for name in want.column_names:
        for row, (a, b) in enumerate(zip(got.column(name).to_pylist(), want.column(name).to_pylist(), strict=True)):
            if a != b:
                return f"row {row} {name}: {a!r} against {b!r}"
    return "same values, different layout (e.g. map key order)"


def test_every_captured_frame(symbols: SymbolDirectory, captured: Frames) -> None:
    batch = _assert_same(captured, symbols, origin="capture")
    assert (batch.trades.num_rows, batch.quotes.num_rows, batch.control_frames) == (1912, 84, 2985)
    assert not batch.rejects


def test_captured_trades_and_quotes_alone_take_the_msgspec_path(
    symbols: SymbolDirectory, captured: Frames, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bench's input: every aggTrade and bookTicker frame is decoded by msgspec, none goes per frame."""
    calls: list[bytes] = []

    def spy(raw: bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(raw)
        return normalize_frame(raw, *args, **kwargs)

    monkeypatch.setattr(candidate, "normalize_frame", spy)
    frames = [f for f in captured if b"@aggTrade" in f[0] or b"@bookTicker" in f[0]]
    batch = _assert_same(frames, symbols)
    assert batch.trades.num_rows + batch.quotes.num_rows == len(frames) == 1996
    assert calls == []


def test_microsecond_time_unit(symbols: SymbolDirectory, captured: Frames) -> None:
    frames = [f for f in captured if b"@aggTrade" in f[0]]
    _assert_same(frames, symbols, TimeUnit.MICROSECOND)


# What the template path never takes columnar, and the edges of the Structs and of their checks.
EDGE_FRAMES: list[bytes] = [
    # duplicate keys: the last one counts (orjson and msgspec alike)
    _agg_trade().replace(b'"m":true', b'"m":true,"m":false'),
    _agg_trade().replace(b'"stream":"btcusdt@aggTrade"', b'"stream":"x","stream":"btcusdt@aggTrade"'),
    # a lone surrogate, invalid UTF-8, a raw control character, an escaped NUL
    _agg_trade().replace(b'"stream":"btcusdt@aggTrade"', b'"stream":"btc\\ud800usdt@aggTrade"'),
    _agg_trade().replace(b'"stream":"btcusdt@aggTrade"', b'"stream":"btc\xffusdt@aggTrade"'),
    _agg_trade().replace(b'"stream":"btcusdt@aggTrade"', b'"stream":"btc\tusdt@aggTrade"'),
    _agg_trade().replace(b'"s":"BTCUSDT"', b'"s":"BTCUSDT\\u0000"'),
    _agg_trade(a=-5),
    # 2^64: orjson reads it as a float, so bad_field:a (2^63 would be a record neither path can put in int64)
    _agg_trade().replace(b'"a":665076760', b'"a":18446744073709551616'),
    _agg_trade(a=(1 << 63) - 1),
    # the latest ms time that fits int64 µs (one more: a record neither path can hold, unless passed by)
    _agg_trade(T=(1 << 63) // 1000),
    _agg_trade(T=(1 << 63) // 1000 + 1).replace(b"@aggTrade", b"@kline_1m").replace(b'"aggTrade"', b'"kline"'),
    _agg_trade(E=1.5),
    _agg_trade(m=None),
    _agg_trade().replace(b'"a":665076760', b'"a":665076760.0'),
    _agg_trade().replace(b'"a":665076760', b'"a":-0'),
    _agg_trade().replace(b'"E":1617566591315', b'"E":-0'),
    _agg_trade(p="58001.03000000", q="00000.08620500"),
    _agg_trade(p="12345678901.00000000"),
    _agg_trade(p="9999999999.99999999"),
    _agg_trade(p=" 58001.03000000"),
    _agg_trade(p="58001.03000000\n"),
    _agg_trade(p="+58001.03000000"),
    _agg_trade(p="٥٨٠٠١.03000000"),  # Arabic-Indic digits: Decimal() takes them, the regex does not
    _agg_trade(e="trade"),
    _agg_trade().replace(b"@aggTrade", b"@trade"),
    _agg_trade() + b",{}",
    _agg_trade() + b" ",
    b" " + _agg_trade(),
    _agg_trade()[:-1],
    _trade(order_ids=True),
    _trade(x=[1]),
    _book_ticker(u=0),
    _book_ticker(s=["NKNUSDT"]),
    _book_ticker(s="XYZUSDT"),
    _book_ticker().replace(b"nknusdt@bookTicker", b"nknusdt@bookTickerX"),
    _book_ticker().replace(b"nknusdt@bookTicker", b"@bookTicker"),
    _book_ticker(b="0.00000000", B="5.00000000", a="0.00000000", A="0.00000000"),
    _book_ticker(b="0.35210000", B="0.00000000"),
    _book_ticker(b="0.3521000"),
    b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade"}}',
    b'{"stream":"btcusdt@aggTrade","data":[]}',
    b'{"stream":"btcusdt@aggTrade"',
    b'{"stream":"btcusdt@aggTrade"}',
    b"",
]


def test_odd_frames_among_captured_ones(symbols: SymbolDirectory, captured: Frames) -> None:
    plain = [f for f in captured if b"@aggTrade" in f[0] or b"@bookTicker" in f[0]]
    odd = [raw for _, raw, _ in ODD_FRAMES] + EDGE_FRAMES
    frames: Frames = []
    for n, frame in enumerate(plain[:300]):
        frames.append(frame)
        if n % 3 == 0 and odd:
            frames.append((odd.pop(), 1_700_000_000_000_000 + n))
    assert not odd, "not enough plain frames to interleave every odd frame"
    batch = _assert_same(frames, symbols, origin="btcusdt@aggTrade", first_position=101)
    assert len(batch.rejects) > 20


@pytest.mark.parametrize("seed", [20211012, 20210404])
def test_randomly_damaged_frames(symbols: SymbolDirectory, captured: Frames, seed: int) -> None:
    """1-3 byte edits of plain frames (JSON-ish bytes, brackets, backslashes, invalid UTF-8, deletions, insertions):
    whatever each becomes, both paths agree."""
    plain = [f for f in captured if b"@aggTrade" in f[0] or b"@bookTicker" in f[0]]
    rng = random.Random(seed)
    alphabet = b'0123456789.-+"{}[]:,e@\\ atfrulsEMTm\x00\x7f\xff'
    frames: Frames = []
    for raw, receive in rng.sample(plain, 1500):
        damaged = bytearray(raw)
        for _ in range(rng.choice([0, 1, 1, 2, 3])):
            at, op = rng.randrange(len(damaged)), rng.random()
            if op < 0.4:
                damaged[at] = rng.choice(alphabet)
            elif op < 0.7:
                del damaged[at]
            else:
                damaged.insert(at, rng.choice(alphabet))
        frames.append((bytes(damaged), receive))
    batch = _assert_same(frames, symbols)
    assert len(batch.rejects) > 300 and batch.trades.num_rows > 300  # both kinds of outcome are exercised


def test_a_damaged_frame_does_not_change_its_neighbours(symbols: SymbolDirectory, captured: Frames) -> None:
    """Frames that would join into one array element ("{...,"a":"x" then "y",...}") are each taken alone."""
    aggs = [f for f in captured if b"@aggTrade" in f[0]][:200]
    cut = aggs[50][0]
    half = len(cut) // 2
    frames = [*aggs[:50], (cut[:half], 1), (cut[half:], 2), *aggs[51:]]
    _assert_same(frames, symbols)
    joined = [*aggs[:10], (aggs[10][0] + b"," + aggs[11][0], 3), *aggs[12:]]
    _assert_same(joined, symbols)


def test_empty_and_tiny_inputs(symbols: SymbolDirectory, captured: Frames) -> None:
    _assert_same([], symbols)
    _assert_same([(b"", 1)], symbols)
    _assert_same(captured[:1], symbols)
    _assert_same([f for f in captured if b"@bookTicker" in f[0]][:1], symbols)
