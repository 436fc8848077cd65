"""The batch (columnar) Binance normalizer against `normalize_frame`: same records, same rejects, same order.

`normalize_frame`, one frame at a time, is the reference. Canonical frames must take the columnar path (a spy on
the per-frame fallback proves it); odd frames go through `normalize_frame` itself and must come back merged in
frame order. Every comparison is exact: message ids, Decimals, integer µs times, vendor_data maps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pytest

from k2.core.batch import Reject
from k2.samples import BINANCE_CAPTURE_2021_04_04, BINANCE_CAPTURE_2021_10_12
from k2.samples import BINANCE_EXCHANGE_INFO as EXCHANGE_INFO
from k2.schema.arrow import arrow_schema, records_from_arrow
from k2.schema.codecs import message_id
from k2.schema.fields import QUOTES_V2, TRADES_V2
from k2.schema.ids_columnar import DUCKDB_MIN_ROWS, message_ids_column
from k2.sources.binance import normalize_columnar
from k2.sources.binance.capture import ws_frames
from k2.sources.binance.normalize import TimeUnit, normalize_frame, record_spec
from k2.sources.binance.normalize_columnar import FrameBatch, normalize_frames
from k2.sources.binance.symbols import SymbolDirectory

CAPTURES = (
    BINANCE_CAPTURE_2021_04_04,
    BINANCE_CAPTURE_2021_10_12,
)

Frames = list[tuple[bytes, int]]


@pytest.fixture(scope="module")
def symbols() -> SymbolDirectory:
    return SymbolDirectory.from_file(EXCHANGE_INFO)


@pytest.fixture(scope="module")
def captured() -> Frames:
    """Every WebSocket frame of both captures, in receipt order (aggTrade, bookTicker, depth, kline)."""
    return [(f.raw, f.receipt_us) for path in CAPTURES for f in ws_frames(path)]


@pytest.fixture
def per_frame_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The frames the batch normalizer handed to the per-frame fallback; every shape, however few frames it has
    in the batch, takes the columnar path when it can (small groups normally go per frame)."""
    monkeypatch.setattr(normalize_columnar, "MIN_COLUMNAR_ROWS", 1)
    calls: list[bytes] = []

    def spy(raw: bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(raw)
        return normalize_frame(raw, *args, **kwargs)

    monkeypatch.setattr(normalize_columnar, "normalize_frame", spy)
    return calls


def _assert_same_as_per_frame(
    batch: FrameBatch,
    frames: Sequence[tuple[bytes, int]],
    symbols: SymbolDirectory,
    time_unit: TimeUnit = TimeUnit.MILLISECOND,
    origin: str = "binance-ws",
    first_position: int = 1,
) -> list[dict[str, Any] | Reject | None]:
    """The batch equals `normalize_frame` frame by frame; returns the per-frame results."""
    results = [
        normalize_frame(raw, symbols, receive, time_unit, origin=origin, position=first_position + i)
        for i, (raw, receive) in enumerate(frames)
    ]
    trades = [(i, r) for i, r in enumerate(results) if isinstance(r, dict) and record_spec(r) is TRADES_V2]
    quotes = [(i, r) for i, r in enumerate(results) if isinstance(r, dict) and record_spec(r) is QUOTES_V2]
    assert batch.trades.schema == arrow_schema(TRADES_V2)
    assert batch.quotes.schema == arrow_schema(QUOTES_V2)
    assert records_from_arrow(batch.trades) == [r for _, r in trades]
    assert records_from_arrow(batch.quotes) == [r for _, r in quotes]
    assert batch.trade_frames.tolist() == [i for i, _ in trades]
    assert batch.quote_frames.tolist() == [i for i, _ in quotes]
    assert batch.rejects == [r for r in results if isinstance(r, Reject)]
    assert batch.control_frames == results.count(None)
    return results


def _agg_trade(**change: Any) -> bytes:
    data = {"e": "aggTrade", "E": 1617566591315, "s": "BTCUSDT", "a": 665076760, "p": "58001.03000000",
            "q": "0.08620500", "f": 745522877, "l": 745522877, "T": 1617566591314, "m": True, "M": True}  # fmt: skip
    data.update(change)
    return orjson.dumps({"stream": "btcusdt@aggTrade", "data": {k: v for k, v in data.items() if v is not None}})


def _book_ticker(**change: Any) -> bytes:
    data = {"u": 499869768, "s": "NKNUSDT", "b": "0.35210000", "B": "672.00000000", "a": "0.35260000",
            "A": "3199.00000000"}  # fmt: skip
    data.update(change)
    return orjson.dumps({"stream": "nknusdt@bookTicker", "data": data})


def _trade(order_ids: bool = False, **change: Any) -> bytes:
    data: dict[str, Any] = {"e": "trade", "E": 1634942949264, "s": "BTCUSDT", "t": 1111468873,
                            "p": "60650.00000000", "q": "0.02924000"}  # fmt: skip
    if order_ids:
        data |= {"b": 8123456789, "a": 8123456790}
    data |= {"T": 1634942949263, "m": True, "M": True, **change}
    return orjson.dumps({"stream": "btcusdt@trade", "data": data})


# --- the captured frames ----------------------------------------------------------------------------------------


def test_every_captured_frame_comes_out_as_normalize_frame_makes_it(
    symbols: SymbolDirectory, captured: Frames, per_frame_calls: list[bytes]
) -> None:
    batch = normalize_frames(captured, symbols, origin="capture", first_position=1)
    results = _assert_same_as_per_frame(batch, captured, symbols, origin="capture")
    assert (batch.trades.num_rows, batch.quotes.num_rows, batch.control_frames) == (1912, 84, 2985)
    assert not batch.rejects
    # every aggTrade and bookTicker frame took the columnar path; only depth and kline frames went per frame
    assert len(per_frame_calls) == 2985
    assert all(b"@aggTrade" not in raw and b"@bookTicker" not in raw for raw in per_frame_calls)
    assert len(set(batch.trades.column("message_id").to_pylist())) == 1912
    first = records_from_arrow(batch.trades.slice(0, 1))[0]
    assert first == results[int(batch.trade_frames[0])]
    assert first["message_id"] == message_id("binance", "trades", "BTCUSDT", "aggTrade:665076760")
    assert (first["price"], first["quantity"]) == (Decimal("58001.03000000"), Decimal("0.08620500"))
    assert first["timestamp"] == 1617566591314000
    assert first["vendor_data"]["event_time_us"] == "1617566591315000"


def test_trade_and_quote_rows_interleave_back_into_arrival_order(symbols: SymbolDirectory, captured: Frames) -> None:
    frames = [f for f in captured if b"@aggTrade" in f[0] or b"@bookTicker" in f[0]]
    batch = normalize_frames(frames, symbols)
    ids = dict(zip(batch.trade_frames.tolist(), batch.trades.column("message_id").to_pylist(), strict=True))
    ids |= dict(zip(batch.quote_frames.tolist(), batch.quotes.column("message_id").to_pylist(), strict=True))
    expected = [normalize_frame(raw, symbols, receive) for raw, receive in frames]
    assert [ids[i] for i in range(len(frames))] == [r["message_id"] for r in expected if isinstance(r, dict)]


def test_microsecond_time_unit_frames_are_not_scaled_again(
    symbols: SymbolDirectory, captured: Frames, per_frame_calls: list[bytes]
) -> None:
    frames = []
    for raw, receive in captured:
        if b"@aggTrade" in raw:
            message = orjson.loads(raw)
            message["data"]["T"] = message["data"]["T"] * 1000 + 123
            message["data"]["E"] = message["data"]["E"] * 1000 + 456
            frames.append((orjson.dumps(message), receive))
    batch = normalize_frames(frames, symbols, TimeUnit.MICROSECOND)
    _assert_same_as_per_frame(batch, frames, symbols, TimeUnit.MICROSECOND)
    assert not per_frame_calls
    first = records_from_arrow(batch.trades.slice(0, 1))[0]
    assert first["timestamp"] == 1617566591314123
    assert first["vendor_data"]["event_time_us"] == "1617566591315456"


def test_few_frames_of_a_shape_go_per_frame_with_the_same_result(
    symbols: SymbolDirectory, captured: Frames, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[bytes] = []

    def spy(raw: bytes, *args: Any, **kwargs: Any) -> Any:
        calls.append(raw)
        return normalize_frame(raw, *args, **kwargs)

    monkeypatch.setattr(normalize_columnar, "normalize_frame", spy)
    few = normalize_columnar.MIN_COLUMNAR_ROWS - 1
    aggs = [f for f in captured if b"@aggTrade" in f[0]]
    books = [f for f in captured if b"@bookTicker" in f[0]][:few]
    frames = aggs[:500] + books + aggs[500:]
    _assert_same_as_per_frame(normalize_frames(frames, symbols), frames, symbols)
    assert calls == [raw for raw, _ in books]  # the aggTrades (1,912) went columnar


# --- odd frames among plain ones --------------------------------------------------------------------------------

ODD_FRAMES: list[tuple[str, bytes, str | None]] = [
    # (what, frame, reject reason; None: a record or a passed frame, whatever normalize_frame makes of it)
    (
        "malformed JSON",
        b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1617566591315,"s":"BTC',
        "malformed_json",
    ),
    ("not an object", b"[1,2]", "malformed_json"),
    ("zero price", _agg_trade(p="0.00000000"), "bad_price"),
    ("zero quantity", _agg_trade(q="0.00000000"), "bad_quantity"),
    ("negative quantity", _agg_trade(q="-1.00000000"), "bad_quantity"),
    ("invalidated aggTrade", _agg_trade(p="0", q="0", f=-1, l=-1), "invalidated_aggtrade"),
    ("invalidated aggTrade, 8 decimals", _agg_trade(p="0.00000000", q="0.00000000"), "invalidated_aggtrade"),
    ("unknown symbol", _agg_trade(s="XYZUSDT"), "unknown_symbol"),
    ("price as a JSON number", _agg_trade(p=58001.03), "bad_price"),
    ("9 decimals", _agg_trade(p="58001.030000001"), "bad_price"),
    ("id as a string", _agg_trade(a="665076760"), "bad_field:a"),
    ("m as a number", _agg_trade(m=1), "bad_field:m"),
    ("missing key", _agg_trade(q=None), "missing_field:q"),
    ("event time zero", _agg_trade(E=0), "bad_field:E"),
    ("error frame", b'{"error":{"code":2,"msg":"Invalid request"},"id":1}', "error_response"),
    ("unsupported event", b'{"e":"outboundAccountPosition","E":1}', "unsupported_event"),
    ("bookTicker stream with a second @", _book_ticker().replace(b"nknusdt@", b"nkn@usdt@"), "unsupported_event"),
    ("bookTicker negative ask", _book_ticker(a="-0.35260000"), "bad_price"),
    ("negative zero bid quantity", _book_ticker(B="-0.00000000"), None),  # parse_amount keeps -0: it is not < 0
    ("subscription ack", b'{"result":null,"id":1}', None),
    (
        "depth diff",
        b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}}',
        None,
    ),
    ("extra key", _agg_trade(x="extra"), None),
    ("whitespace and newlines", orjson.dumps(orjson.loads(_agg_trade()), option=orjson.OPT_INDENT_2), None),
    ("escaped symbol", _agg_trade().replace(b'"s":"BTCUSDT"', b'"s":"\\u0042TCUSDT"'), None),
    ("7 decimals", _agg_trade(p="58001.0300000"), None),
    ("exponent quantity", _book_ticker(B="1e5"), None),
    ("keys in another order", orjson.dumps({"data": orjson.loads(_agg_trade())["data"], "stream": "x@aggTrade"}), None),
    ("leading zero in a JSON number", _agg_trade().replace(b'"a":665076760', b'"a":0665076760'), "malformed_json"),
    ("duplicate key", _agg_trade().replace(b'"m":true', b'"m":false,"m":true'), None),
    ("trade", _trade(), None),
    ("trade with order ids", _trade(order_ids=True), None),
    ("trade selling", _trade(m=False, M=False), None),
    ("raw aggTrade", orjson.dumps(orjson.loads(_agg_trade())["data"]), None),
    ("raw bookTicker", orjson.dumps(orjson.loads(_book_ticker())["data"]), None),
    ("raw trade", orjson.dumps(orjson.loads(_trade())["data"]), None),
    ("bookTicker without a bid", _book_ticker(b="0.00000000", B="0.00000000"), None),
    ("bookTicker without an ask", _book_ticker(a="0.00000000", A="5.00000000"), None),
    ("bookTicker with event time", _book_ticker(E=1633998513377), None),
]


def _mixed(captured: Frames) -> Frames:
    """Plain captured frames with every odd frame interleaved (one after every third plain frame)."""
    plain = [f for f in captured if b"@aggTrade" in f[0] or b"@bookTicker" in f[0]][:120]
    frames: Frames = []
    odd = iter(ODD_FRAMES)
    for n, frame in enumerate(plain):
        frames.append(frame)
        if n % 3 == 2:
            extra = next(odd, None)
            if extra is not None:
                frames.append((extra[1], 1_700_000_000_000_000 + n))
    assert next(odd, None) is None, "not enough plain frames to interleave every odd frame"
    return frames


def test_odd_frames_go_per_frame_and_merge_back_in_frame_order(
    symbols: SymbolDirectory, captured: Frames, per_frame_calls: list[bytes]
) -> None:
    frames = _mixed(captured)
    batch = normalize_frames(frames, symbols, origin="btcusdt@aggTrade", first_position=101)
    _assert_same_as_per_frame(batch, frames, symbols, origin="btcusdt@aggTrade", first_position=101)
    positions = {raw: 101 + i for i, (raw, _) in enumerate(frames)}
    expected_rejects = [(reason, positions[raw]) for _, raw, reason in ODD_FRAMES if reason is not None]
    assert [(r.reason, r.position) for r in batch.rejects] == expected_rejects
    assert all(r.origin == "btcusdt@aggTrade" and r.raw == frames[r.position - 101][0] for r in batch.rejects)
    assert batch.control_frames == 2  # the subscription ack and the depth diff
    # The plain trade shapes (trade, trade with order ids, raw aggTrade, raw bookTicker, raw trade, a bookTicker
    # with a zero side) took the columnar path too; the rest went per frame.
    columnar = {"trade", "trade with order ids", "trade selling", "raw aggTrade", "raw bookTicker", "raw trade",
                "bookTicker without a bid", "bookTicker without an ask"}  # fmt: skip
    assert set(per_frame_calls) == {raw for what, raw, _ in ODD_FRAMES if what not in columnar}


def test_odd_frames_that_are_records_have_their_exact_values(symbols: SymbolDirectory) -> None:
    odd = {what: raw for what, raw, _ in ODD_FRAMES}
    names = ["trade with order ids", "bookTicker without a bid", "escaped symbol", "trade selling", "raw bookTicker"]
    batch = normalize_frames([(odd[name], 1_700_000_000_000_001 + i) for i, name in enumerate(names)], symbols)
    trades, quotes = records_from_arrow(batch.trades), records_from_arrow(batch.quotes)
    with_ids, escaped, selling = trades
    assert with_ids["message_id"] == message_id("binance", "trades", "BTCUSDT", "trade:1111468873")
    assert (with_ids["trade_id"], with_ids["source_sequence"], with_ids["side"]) == ("1111468873", 1111468873, "SELL")
    assert with_ids["vendor_data"] == {
        "channel": "trade",
        "receive_time_us": "1700000000000001",
        "is_buyer_maker": "true",
        "event_time_us": "1634942949264000",
        "buyer_order_id": "8123456789",
        "seller_order_id": "8123456790",
        "is_best_match": "true",
    }
    assert escaped["symbol"] == "BTCUSDT" and escaped["trade_id"] == "665076760"
    assert selling["side"] == "BUY" and selling["vendor_data"]["is_best_match"] == "false"
    no_bid, raw_book = quotes
    assert (no_bid["bid_price"], no_bid["bid_quantity"]) == (None, None)
    assert (no_bid["ask_price"], no_bid["ask_quantity"]) == (Decimal("0.35260000"), Decimal("3199.00000000"))
    assert no_bid["timestamp"] == no_bid["ingestion_timestamp"] == 1_700_000_000_000_002
    assert no_bid["vendor_data"]["timestamp_source"] == "receive_time"
    assert no_bid["message_id"] == message_id("binance", "quotes", "NKNUSDT", "bookTicker:499869768")
    assert raw_book["currency"] == "USDT" and raw_book["quote_id"] == "499869768"
    assert batch.trade_frames.tolist() == [0, 2, 3] and batch.quote_frames.tolist() == [1, 4]


def test_randomly_damaged_frames_come_out_as_normalize_frame_makes_them(
    symbols: SymbolDirectory, captured: Frames, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1-2 byte edits (flips to JSON-ish or invalid-UTF-8 bytes, deletions, insertions) of plain frames: whatever
    each becomes (a record, a reject, or the same record by another route), the batch agrees with per-frame."""
    monkeypatch.setattr(normalize_columnar, "MIN_COLUMNAR_ROWS", 1)
    plain = [f for f in captured if b"@aggTrade" in f[0] or b"@bookTicker" in f[0]]
    rng = random.Random(20211012)
    alphabet = b'0123456789.-+"{}:,e@\\ atfrulsEMTm\x00\xff'
    frames: Frames = []
    for raw, receive in rng.sample(plain, 1500):
        damaged = bytearray(raw)
        for _ in range(rng.choice([0, 1, 1, 2])):
            at, op = rng.randrange(len(damaged)), rng.random()
            if op < 0.4:
                damaged[at] = rng.choice(alphabet)
            elif op < 0.7:
                del damaged[at]
            else:
                damaged.insert(at, rng.choice(alphabet))
        frames.append((bytes(damaged), receive))
    batch = normalize_frames(frames, symbols)
    _assert_same_as_per_frame(batch, frames, symbols)
    assert len(batch.rejects) > 300 and batch.trades.num_rows > 300  # both kinds of outcome are exercised


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: _agg_trade(p="0.00000000", q="0.00000000", f=-1, l=-1), "invalidated_aggtrade"),
        (lambda: _agg_trade(s="XYZUSDT"), "unknown_symbol"),
        (lambda: _trade(q="0.00000000"), "bad_quantity"),
        (lambda: _book_ticker(B="one"), "bad_quantity"),
    ],
)
def test_a_bad_frame_alone_is_the_same_reject(symbols: SymbolDirectory, make: Callable[[], bytes], reason: str) -> None:
    raw = make()
    batch = normalize_frames([(raw, 5)], symbols, origin="s", first_position=9)
    assert batch.rejects == [normalize_frame(raw, symbols, 5, origin="s", position=9)]
    assert batch.rejects[0].reason == reason and batch.rejects[0].position == 9
    assert batch.trades.num_rows == batch.quotes.num_rows == 0


def test_empty_input_gives_empty_tables(symbols: SymbolDirectory) -> None:
    batch = normalize_frames([], symbols)
    assert batch.trades.schema == arrow_schema(TRADES_V2) and batch.trades.num_rows == 0
    assert batch.quotes.schema == arrow_schema(QUOTES_V2) and batch.quotes.num_rows == 0
    assert (len(batch.trade_frames), len(batch.quote_frames), batch.rejects, batch.control_frames) == (0, 0, [], 0)
    only_empty = normalize_frames([(b"", 1)], symbols)
    assert [r.reason for r in only_empty.rejects] == ["malformed_json"]


# --- the shared id helper ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 7, DUCKDB_MIN_ROWS + 5])  # hashlib below the threshold, DuckDB above
def test_message_ids_column_equals_message_id_row_by_row(rows: int) -> None:
    symbols = [("BTCUSDT", "ETHBTC", "NKNUSDT")[i % 3] for i in range(rows)]
    names = pa.array([f"{symbol}|aggTrade:{665076760 + i}" for i, symbol in enumerate(symbols)])
    ids = message_ids_column(names, prefix="binance|trades|").to_pylist()
    assert ids == [message_id("binance", "trades", s, f"aggTrade:{665076760 + i}") for i, s in enumerate(symbols)]


# Values at and past the int64 edge (ids, and times once in µs) and numbers where Binance sends decimal strings.
AGG = (
    '{{"stream":"btcusdt@aggTrade","data":{{"e":"aggTrade","E":1617566591315,"s":"BTCUSDT","a":{a},'
    '"p":{p},"q":"0.08620500","f":745522877,"l":745522877,"T":{t},"m":true,"M":true}}}}'
)
EDGE_FRAMES = {
    "trade time past int64 µs": (AGG.format(a=1, p='"58001.03000000"', t=9_300_000_000_000_000), "bad_field:T"),
    "last ms that fits": (AGG.format(a=2, p='"58001.03000000"', t=9_223_372_036_854_775), None),
    "first ms that does not": (AGG.format(a=3, p='"58001.03000000"', t=9_223_372_036_854_776), "bad_field:T"),
    "aggregate id 2^63": (AGG.format(a=2**63, p='"58001.03000000"', t=1617566591314), "bad_field:a"),
    "aggregate id 10^23": (AGG.format(a=10**23, p='"58001.03000000"', t=1617566591314), "bad_field:a"),
    "price a JSON number 10^23": (AGG.format(a=4, p=10**23, t=1617566591314), "bad_price"),
    "price a JSON decimal number": (AGG.format(a=5, p="58001.03", t=1617566591314), "bad_price"),
    "trade id 2^63": (
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":1617566591315,"s":"BTCUSDT","t":9223372036854775808,'
        '"p":"1.00000000","q":"1.00000000","T":1617566591314,"m":true,"M":true}}',
        "bad_field:t",
    ),
    "event time past int64 µs": (
        '{"stream":"btcusdt@trade","data":{"e":"trade","E":9300000000000000,"s":"BTCUSDT","t":7,'
        '"p":"1.00000000","q":"1.00000000","T":1617566591314,"m":true,"M":true}}',
        "bad_field:E",
    ),
    "update id 2^63": (
        '{"stream":"btcusdt@bookTicker","data":{"u":9223372036854775808,"s":"BTCUSDT","b":"1.00000000",'
        '"B":"1.00000000","a":"2.00000000","A":"1.00000000"}}',
        "bad_field:u",
    ),
}


@pytest.mark.parametrize("name", list(EDGE_FRAMES))
def test_a_frame_at_the_int64_edge_is_one_reject_and_the_batch_survives(
    symbols: SymbolDirectory, captured: Frames, name: str
) -> None:
    text, reason = EDGE_FRAMES[name]
    good = [frame for frame in captured if b"@aggTrade" in frame[0]][:100]  # canonical: the columnar path
    frames = [*good[:50], (text.encode(), 1617566592000000), *good[50:]]
    batch = normalize_frames(frames, symbols, first_position=1)
    if reason is None:
        assert (batch.trades.num_rows, batch.rejects) == (101, [])
        assert records_from_arrow(batch.trades)[50]["timestamp"] == 9_223_372_036_854_775_000
        return
    assert [(r.reason, r.position) for r in batch.rejects] == [(reason, 51)]
    assert batch.rejects[0].raw == text.encode()
    assert batch.trades.num_rows + batch.quotes.num_rows == 100
    assert batch.trade_frames.tolist() == [*range(50), *range(51, 101)]


def test_a_json_number_price_is_named_as_such() -> None:
    text, _ = EDGE_FRAMES["price a JSON number 10^23"]
    reject = normalize_frame(text.encode(), symbols=SymbolDirectory.from_file(EXCHANGE_INFO), receive_us=1)
    assert isinstance(reject, Reject)
    assert reject.detail == "binance-ws: field 'p' should be a decimal string, got float 1e+23"
