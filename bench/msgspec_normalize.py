"""Candidate batch normalizer for Binance frames built on msgspec (issue #14, part 5): the maintained-library path
measured against `k2.sources.binance.normalize_columnar` (numpy over Binance's canonical byte shapes).

`normalize_frames` here returns what the product's `normalize_frames` returns (same `FrameBatch`: same tables,
schema, values, message ids, frame indexes, rejects, control count). It gets there two ways:

* a combined-stream aggTrade, trade or bookTicker frame (`{"stream":"...@<channel>","data":{...}}`) is decoded by
  msgspec into typed Structs, all frames of a channel in one `decode` call; the Structs are strict (every key
  required, no other key, ints are ints within int64, prices and quantities strings), and the rows whose values
  are plain (decimal strings of 1-10 digits '.' 8 digits, positive trade prices and quantities, known symbols,
  times that fit µs) become Arrow columns;
* every other frame, and every frame msgspec refuses or a check clears, goes through `normalize_frame` itself, so
  odd frames are identical by construction, as in the template path.

Frames that carry a backslash or a bracket also go per frame: canonical Binance frames have neither, and without
them joining the frames of a channel into one JSON array cannot merge or split frames (see `_decode_all`).
It stays a candidate in bench/ (bench_binance_parse.py and tests/sources/test_binance_msgspec_normalize.py import
it from here): it ran at 0.59-0.71x the template path on the 1,996 captured frames as one batch and was never
faster at 20-500 frames a batch (bench/RESULTS.md, 2026-12-07). Decoding into Structs and reading them back costs
nearly what the template path spends matching, cutting and parsing every value from the bytes; the candidate then
still builds Arrow columns from Python values, and the rest (message ids, vendor_data) is the same on both paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from msgspec.structs import astuple

from k2.core.batch import Reject
from k2.schema.arrow import arrow_schema, records_to_arrow
from k2.schema.fields import PRICE_SCALE, QUOTES_V2, TRADES_V2, DataType, RecordSpec, Side
from k2.schema.ids_columnar import join_names, message_ids_column
from k2.sources.binance.normalize import CRYPTO, EXCHANGE, TimeUnit, normalize_frame
from k2.sources.binance.normalize_columnar import FrameBatch
from k2.sources.binance.symbols import QuoteResolver, UnknownSymbolError

_INT64_MAX = (1 << 63) - 1
# Ids fit source_sequence (int64); normalize_frame takes a negative id too, but those go per frame (same record).
Id = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
# Times after 1970 (normalize_frame refuses 0 and below); the µs overflow check needs the time unit, see _times_fit.
Time = Annotated[int, msgspec.Meta(gt=0, le=_INT64_MAX)]


# Structs of strings and ints hold no cycles: untracked by the garbage collector they decode ~40% faster (a batch
# of 2,000 no longer triggers collections).
_GC = False


class AggTrade(msgspec.Struct, tag_field="e", tag="aggTrade", forbid_unknown_fields=True, gc=_GC):
    E: Time
    s: str
    a: Id
    p: str
    q: str
    f: Id  # a negative first/last id marks an invalidated aggTrade: per frame, normalize_frame rejects it
    l: Id  # noqa: E741 (Binance's key)
    T: Time
    m: bool
    M: bool


class Trade(msgspec.Struct, tag_field="e", tag="trade", forbid_unknown_fields=True, gc=_GC):
    # Without the pre-2023-12 buyer/seller order ids: their vendor_data keys follow the frame's key order, which a
    # Struct does not keep, so such frames go per frame.
    E: Time
    s: str
    t: Id
    p: str
    q: str
    T: Time
    m: bool
    M: bool


class BookTicker(msgspec.Struct, forbid_unknown_fields=True, gc=_GC):
    u: Id
    s: str
    b: str
    B: str
    a: str
    A: str


class AggTradeFrame(msgspec.Struct, forbid_unknown_fields=True, gc=_GC):
    stream: str
    data: AggTrade


class TradeFrame(msgspec.Struct, forbid_unknown_fields=True, gc=_GC):
    stream: str
    data: Trade


class BookTickerFrame(msgspec.Struct, forbid_unknown_fields=True, gc=_GC):
    stream: str
    data: BookTicker


# The channel after the stream name's first '@' (what normalize_frame reads for bookTicker; for trades the payload's
# "e" decides, which the Struct tag checks) → the Struct the channel's frames decode into.
_DECODERS = {
    b"aggTrade": msgspec.json.Decoder(list[AggTradeFrame]),
    b"trade": msgspec.json.Decoder(list[TradeFrame]),
    b"bookTicker": msgspec.json.Decoder(list[BookTickerFrame]),
}
_ONE = {
    b"aggTrade": msgspec.json.Decoder(AggTradeFrame),
    b"trade": msgspec.json.Decoder(TradeFrame),
    b"bookTicker": msgspec.json.Decoder(BookTickerFrame),
}
_PREFIX = b'{"stream":"'
_DECIMAL = pa.decimal128(18, PRICE_SCALE)
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_MAP = pa.map_(pa.string(), pa.string())
# What parse_decimal reads exactly and the columns take as they are: 1-10 digits, '.', 8 digits.
_PLAIN_DECIMAL = r"^[0-9]{1,10}\.[0-9]{8}$"


def normalize_frames(
    frames: Sequence[tuple[bytes, int]],
    symbols: QuoteResolver,
    time_unit: TimeUnit = TimeUnit.MILLISECOND,
    *,
    origin: str = "binance-ws",
    first_position: int = 1,
) -> FrameBatch:
    """(raw frame, receive time in µs) pairs → `FrameBatch`, as `k2.sources.binance.normalize_columnar` makes it."""
    scale = 1 if time_unit == TimeUnit.MICROSECOND else 1_000
    groups: dict[bytes, list[int]] = {channel: [] for channel in _DECODERS}
    per_frame: list[int] = []
    for index, (raw, _) in enumerate(frames):
        group = None
        if raw.startswith(_PREFIX):
            end = raw.find(b'"', len(_PREFIX))
            group = groups.get(raw[raw.find(b"@", len(_PREFIX), end) + 1 : end])
        (per_frame if group is None else group).append(index)
    parts: dict[str, list[tuple[pa.Table, np.ndarray]]] = {"trades": [], "quotes": []}
    for channel, rows in groups.items():
        decoded, rest = _decode_all(channel, [frames[i][0] for i in rows])
        per_frame += [rows[i] for i in rest]
        if decoded:
            indexes = np.array([rows[i] for i, _ in decoded], dtype=np.int64)
            received = np.array([frames[i][1] for i in indexes.tolist()], dtype=np.int64)
            build = _quotes if channel == b"bookTicker" else _trades
            table, ok = build(channel.decode(), [value for _, value in decoded], received, symbols, scale)
            per_frame += indexes[~ok].tolist()
            if table.num_rows:
                sequence = pa.array(first_position + indexes[ok])  # platform_sequence: the frame's number
                table = table.set_column(
                    table.schema.get_field_index("platform_sequence"), table.schema.field("platform_sequence"), sequence
                )
                parts["quotes" if channel == b"bookTicker" else "trades"].append((table, indexes[ok]))
    records: dict[str, tuple[list[dict[str, Any]], list[int]]] = {"trades": ([], []), "quotes": ([], [])}
    rejects: list[Reject] = []
    control = 0
    for index in sorted(per_frame):
        raw, receive_us = frames[index]
        result = normalize_frame(raw, symbols, receive_us, time_unit, origin=origin, position=first_position + index)
        if result is None:
            control += 1
        elif isinstance(result, Reject):
            rejects.append(result)
        else:
            kind_records, kind_frames = records["quotes" if "quote_id" in result else "trades"]
            kind_records.append(result)
            kind_frames.append(index)
    trades, trade_frames = _merge(TRADES_V2, parts["trades"], *records["trades"])
    quotes, quote_frames = _merge(QUOTES_V2, parts["quotes"], *records["quotes"])
    return FrameBatch(trades, quotes, trade_frames, quote_frames, rejects, control)


def _decode_all(channel: bytes, raws: list[bytes]) -> tuple[list[tuple[int, Any]], list[int]]:
    """The frames msgspec decodes into the channel's Struct, as (position in `raws`, Struct), and the positions of
    the rest (per frame).

    All frames in one call, as the JSON array "[" + ",".join(raws) + "]". That array has exactly one element per
    frame when it decodes to len(raws) Structs and no frame holds '[', ']' or '\\': every frame starts with
    '{"stream":"', so a frame ending inside a string would be followed by '{"stream' (a bare word after the
    string closes: invalid), and one ending inside an object by ',{' (invalid); with no arrays inside the frames,
    each frame ends outside any value, and since each gives at least one element, each gives exactly one. Anything
    else (a frame msgspec refuses, or one with a bracket or backslash) sorts itself out frame by frame.
    """
    if not raws:
        return [], []
    body = b",".join(raws)
    if b"[" not in body and b"]" not in body and b"\\" not in body:
        try:
            values = _DECODERS[channel].decode(b"[" + body + b"]")
        except msgspec.DecodeError:  # ValidationError included: one odd frame; find it below
            pass
        else:
            if len(values) == len(raws):
                return list(enumerate(values)), []
    decoded, rest = [], []
    one = _ONE[channel]
    for i, raw in enumerate(raws):
        if b"[" in raw or b"]" in raw or b"\\" in raw:
            rest.append(i)
            continue
        try:
            decoded.append((i, one.decode(raw)))
        except msgspec.DecodeError:
            rest.append(i)
    return decoded, rest


def _merge(
    spec: RecordSpec, parts: list[tuple[pa.Table, np.ndarray]], records: list[dict[str, Any]], frames: list[int]
) -> tuple[pa.Table, np.ndarray]:
    """The fast tables and the per-frame records as one table in frame order, with each row's frame index."""
    if records:
        parts = [*parts, (records_to_arrow(spec, records), np.array(frames, dtype=np.int64))]
    if not parts:
        return arrow_schema(spec).empty_table(), np.zeros(0, dtype=np.int64)
    if len(parts) == 1:
        return parts[0]
    table = pa.concat_tables([table for table, _ in parts])
    index = np.concatenate([rows for _, rows in parts])
    order = np.argsort(index, kind="stable")
    return table.take(order), index[order]


# --- columns ----------------------------------------------------------------------------------------------------


def _decimals(texts: tuple[str, ...]) -> tuple[pa.Array, np.ndarray]:
    """Price or quantity strings → decimal128(18,8) (Arrow's exact string cast, never float), and per row whether
    the text was plain; the rows that were not hold 0 and go per frame."""
    column = pa.array(texts, pa.string())
    plain = pc.match_substring_regex(column, _PLAIN_DECIMAL)
    ok = np.asarray(plain)
    if not ok.all():
        column = pc.if_else(plain, column, "0.00000000")
    return column.cast(_DECIMAL), ok


def _currencies(names: tuple[str, ...], symbols: QuoteResolver) -> tuple[list[str], np.ndarray]:
    """Each row's quote asset (asked once per distinct symbol); rows of an unknown symbol go per frame."""
    quote_of: dict[str, str] = {}
    for name in set(names):
        with contextlib.suppress(UnknownSymbolError):
            quote_of[name] = symbols.quote_asset(name)
    known = np.fromiter((name in quote_of for name in names), dtype=bool, count=len(names))
    return [quote_of.get(name, "") for name in names], known


def _times_fit(values: np.ndarray, scale: int) -> np.ndarray:
    return values <= _INT64_MAX // scale  # > 0 is the Struct's constraint


def _vendor_map(items: dict[str, pa.Array | str], n: int) -> pa.MapArray:
    """vendor_data with the same keys on every row, in the given order (normalize_frame's insertion order)."""
    width = len(items)
    values = pa.concat_arrays([pa.repeat(v, n) if isinstance(v, str) else v for v in items.values()])
    cells = np.arange(width * n, dtype=np.int64).reshape(width, n).T.reshape(-1)  # key by key → row by row
    keys = pa.array(list(items), pa.string()).take(np.tile(np.arange(width), n))
    offsets = pa.array(np.arange(0, width * (n + 1), width, dtype=np.int32))
    return pa.MapArray.from_arrays(offsets, keys, values.take(cells), type=_MAP)


def _texts(array: pa.Array) -> pa.Array:
    """Ints as str(int) gives them, bools as JSON's true/false (what normalize_frame writes into vendor_data)."""
    if pa.types.is_boolean(array.type):
        return _BOOL_TEXT.take(pc.cast(array, pa.int8()))
    return array.cast(pa.string())


_BOOL_TEXT = pa.array(["false", "true"])
_SIDES = pa.array([Side.BUY.value, Side.SELL.value])  # indexed by m: the buyer was the maker, so the taker sold


def _trades(
    channel: str, frames: list[Any], received: np.ndarray, symbols: QuoteResolver, scale: int
) -> tuple[pa.Table, np.ndarray]:
    """normalize_agg_trade / normalize_trade for every decoded frame whose values are plain; per row, whether it
    was (the others go per frame)."""
    agg = channel == "aggTrade"
    # astuple + zip is 5x faster than reading the fields one by one; field order is the Structs' (above)
    if agg:
        E, s, a, p, q, f, l, T, m, M = zip(*[astuple(frame.data) for frame in frames], strict=True)  # noqa: E741
        id_lists = (a, f, l)
    else:
        E, s, t, p, q, T, m, M = zip(*[astuple(frame.data) for frame in frames], strict=True)
        id_lists = (t,)
    price, ok = _decimals(p)
    quantity, plain = _decimals(q)
    currency, known = _currencies(s, symbols)
    event, trade_time = np.array(E, dtype=np.int64), np.array(T, dtype=np.int64)
    ok &= plain & known & _times_fit(event, scale) & _times_fit(trade_time, scale)
    # Zero price or quantity is a reject (both zero: an invalidated aggTrade): normalize_frame says which.
    ok &= np.asarray(pc.greater(price, 0)) & np.asarray(pc.greater(quantity, 0))
    columns: dict[str, pa.Array] = {
        "symbol": pa.array(s, pa.string()),
        "currency": pa.array(currency, pa.string()),
        "price": price,
        "quantity": quantity,
        "timestamp": pa.array(trade_time * scale, _TIMESTAMP),
        "event_us": pa.array(event * scale),
        "maker": pa.array(m, pa.bool_()),
        "best_match": pa.array(M, pa.bool_()),
        "received": pa.array(received),
    }
    for name, values in zip(("source_sequence", "first", "last"), id_lists, strict=False):  # first/last: aggTrade only
        columns[name] = pa.array(np.array(values, dtype=np.int64))
    if not ok.all():
        keep = np.flatnonzero(ok)
        columns = {key: value.take(keep) for key, value in columns.items()}
    n = len(columns["symbol"])
    trade_id = columns["source_sequence"].cast(pa.string())
    vendor: dict[str, pa.Array | str] = {"channel": channel, "receive_time_us": _texts(columns["received"])}
    if agg:
        vendor |= {"first_trade_id": _texts(columns["first"]), "last_trade_id": _texts(columns["last"])}
    vendor["is_buyer_maker"] = _texts(columns["maker"])
    vendor["event_time_us"] = _texts(columns["event_us"])
    vendor["is_best_match"] = _texts(columns["best_match"])
    columns |= {
        "message_id": message_ids_column(
            join_names(columns["symbol"], f"|{channel}:", trade_id), prefix=f"{EXCHANGE}|{_TRADES}|"
        ),
        "trade_id": trade_id,
        "exchange": pa.repeat(EXCHANGE, n),
        "asset_class": pa.repeat(CRYPTO, n),
        "ingestion_timestamp": columns["received"].cast(_TIMESTAMP),
        "platform_sequence": pa.nulls(n, pa.int64()),
        # m = "is the buyer the market maker?": if so the seller took liquidity, i.e. the aggressor sold.
        "side": _SIDES.take(pc.cast(columns["maker"], pa.int8())),
        "trade_conditions": pa.ListArray.from_arrays(np.zeros(n + 1, dtype=np.int32), _NO_STRINGS, _TRADE_CONDITIONS),
        "vendor_data": _vendor_map(vendor, n),
    }
    return _table(TRADES_V2, columns), ok


def _quotes(
    channel: str, frames: list[Any], received: np.ndarray, symbols: QuoteResolver, scale: int
) -> tuple[pa.Table, np.ndarray]:
    """normalize_book_ticker for every decoded frame whose values are plain: a side priced 0 (no order) is null."""
    stream = [frame.stream for frame in frames]
    u, s, b, B, a, A = zip(*[astuple(frame.data) for frame in frames], strict=True)
    # normalize_frame reads the channel after the stream name's first '@': "x@y@bookTicker" is not a bookTicker.
    ok = np.fromiter((name.partition("@")[2] == "bookTicker" for name in stream), dtype=bool, count=len(stream))
    currency, known = _currencies(s, symbols)
    ok &= known
    prices = {}
    for key, texts in (("bid_price", b), ("bid_quantity", B), ("ask_price", a), ("ask_quantity", A)):
        prices[key], plain = _decimals(texts)
        ok &= plain
    columns: dict[str, Any] = {"symbol": pa.array(s, pa.string()), "currency": pa.array(currency, pa.string())}
    columns |= {"source_sequence": pa.array(np.array(u, dtype=np.int64)), "received": pa.array(received), **prices}
    if not ok.all():
        keep = np.flatnonzero(ok)
        columns = {key: value.take(keep) for key, value in columns.items()}
    n = len(columns["symbol"])
    for side in ("bid", "ask"):
        has = pc.greater(columns[f"{side}_price"], 0)
        for key in (f"{side}_price", f"{side}_quantity"):
            columns[key] = pc.if_else(has, columns[key], pa.scalar(None, _DECIMAL))
    vendor: dict[str, pa.Array | str] = {
        "channel": channel,
        "receive_time_us": columns["received"].cast(pa.string()),
        "timestamp_source": "receive_time",  # spot bookTicker has no event time (see normalize_book_ticker)
    }
    quote_id = columns["source_sequence"].cast(pa.string())
    table = {
        "message_id": message_ids_column(
            join_names(columns["symbol"], f"|{channel}:", quote_id), prefix=f"{EXCHANGE}|{_QUOTES}|"
        ),
        "quote_id": quote_id,
        "exchange": pa.repeat(EXCHANGE, n),
        "asset_class": pa.repeat(CRYPTO, n),
        "timestamp": columns["received"].cast(_TIMESTAMP),
        "ingestion_timestamp": columns["received"].cast(_TIMESTAMP),
        "platform_sequence": pa.nulls(n, pa.int64()),
        "vendor_data": _vendor_map(vendor, n),
    }
    return _table(QUOTES_V2, columns | table), ok


def _table(spec: RecordSpec, columns: dict[str, pa.Array]) -> pa.Table:
    schema = arrow_schema(spec)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


_TRADES = DataType.TRADES.value
_QUOTES = DataType.QUOTES.value
_TRADE_CONDITIONS = arrow_schema(TRADES_V2).field("trade_conditions").type
_NO_STRINGS = pa.array([], pa.string())
