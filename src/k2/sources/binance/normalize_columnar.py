"""Columnar fast path for Binance WebSocket frames: many raw frames → trades_v2 and quotes_v2 Arrow tables at once.

`normalize_frames` gives, per kind and in frame order, exactly the records `normalize_frame` gives frame by frame
(`records_from_arrow` of its tables equals the dicts), plus the same Rejects and the count of passed (control,
depth, kline, ...) frames. It gets there two ways:

* a frame in one of the canonical shapes Binance sends (`TEMPLATES` in `k2.sources.binance.frame_templates`:
  the combined-stream and raw aggTrade, trade and spot bookTicker payloads, keys in Binance's order, no
  whitespace, ASCII only, decimal strings with 8 decimals) is read by vectorised numpy/pyarrow work over all such
  frames: the frame bytes (all frames as one `FrameBuffer`) are matched against the template (quote positions,
  every literal byte, value lengths), values are cut out of the buffer in one `take`, integers and decimals are
  parsed from their digits (never through float), message ids are hashed for the whole column
  (`k2.schema.ids_columnar`);
* every other frame (malformed JSON, a missing or extra key, zero or negative price, an invalidated aggTrade, an
  unknown symbol, control and depth frames, ...) goes through `normalize_frame` itself, and its records are
  merged back in frame order. Odd frames are thus identical by construction; only canonical frames need this
  module to be right, and the tests compare both paths on every captured frame and on odd ones.

"Canonical" is decided strictly and up front: the columnar code never produces a reject, so it never has to
reproduce `normalize_frame`'s order of checks. A shape with fewer than `MIN_COLUMNAR_ROWS` frames in the batch
also goes per frame (cheaper below that). Measured on the 1,996 captured aggTrade/bookTicker frames as one batch
(bench/bench_binance_parse.py, 2-core dev box): 290-345k frames/s, ~3x `normalize_frame`; SHA-1 for the ids
(hashlib, ~0.45 us a row) is a third of it, and each shape costs ~1 ms of fixed per-call overhead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.core.batch import Reject
from k2.schema.arrow import arrow_schema, empty_rows, records_to_arrow
from k2.schema.fields import PRICE_SCALE, QUOTES_V2, TRADES_V2, DataType, RecordSpec, Side
from k2.schema.ids_columnar import join_names, message_ids_column, string_offsets
from k2.sources.binance.frame_templates import FALSE_WORD, QUOTE_BYTE, TEMPLATES, TRUE_WORD, FrameBuffer, Template
from k2.sources.binance.normalize import CRYPTO, EXCHANGE, TimeUnit, normalize_frame
from k2.sources.binance.symbols import QuoteResolver, UnknownSymbolError

# A shape with fewer frames than this in a batch goes per frame: the columnar path costs ~1 ms per shape before
# its first frame and ~2 us a frame after, normalize_frame 7-15 us a frame (warm or cold decimal cache), so the
# break-even is 60-150 frames (2-core dev box, the 1,996 captured frames).
MIN_COLUMNAR_ROWS = 64

_DECIMAL = pa.decimal128(18, PRICE_SCALE)
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_MAP = pa.map_(pa.string(), pa.string())
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True)
class FrameBatch:
    """What a list of frames normalizes to.

    `trades` and `quotes` are `arrow_schema(TRADES_V2 / QUOTES_V2)` tables, rows in frame order;
    `trade_frames[i]` / `quote_frames[i]` is the index (into the input list) of the frame row i came from, so a
    caller can interleave both kinds back into arrival order. `rejects` are in frame order, each positioned
    `first_position + index`. Every frame is exactly one of: a trade row, a quote row, a reject, or one of
    `control_frames` (acks, depth, kline, ticker frames: `normalize_frame` gives None).
    """

    trades: pa.Table
    quotes: pa.Table
    trade_frames: np.ndarray
    quote_frames: np.ndarray
    rejects: list[Reject] = field(default_factory=list)
    control_frames: int = 0


def normalize_frames(
    frames: Sequence[tuple[bytes, int]],
    symbols: QuoteResolver,
    time_unit: TimeUnit = TimeUnit.MILLISECOND,
    *,
    origin: str = "binance-ws",
    first_position: int = 1,
    sequences: Sequence[int] | None = None,
) -> FrameBatch:
    """(raw frame, receive time in µs) pairs → `FrameBatch`: for each frame what `normalize_frame(raw, symbols,
    receive_us, time_unit, origin=origin, position=first_position + index)` gives, in columnar form.

    Each record's platform_sequence is its frame's place in the source stream: `sequences[index]` when given (a
    capture's line numbers), else its position (the frame's number in a stream's arrival order)."""
    raws = [frame[0] for frame in frames]
    received = [frame[1] for frame in frames]
    if sequences is not None and len(sequences) != len(raws):
        raise ValueError(f"{len(sequences)} sequences for {len(raws)} frames")
    numbers = (
        np.asarray(sequences, dtype=np.int64)
        if sequences is not None
        else np.arange(first_position, first_position + len(raws), dtype=np.int64)
    )
    scale = 1 if time_unit == TimeUnit.MICROSECOND else 1_000
    parts: dict[str, list[tuple[pa.Table, np.ndarray]]] = {"trades": [], "quotes": []}
    done = np.zeros(len(raws), dtype=bool)
    buffer = FrameBuffer.of(raws, received)
    if buffer is not None:
        counts = set(np.unique(buffer.quote_counts).tolist())
        for template in TEMPLATES:
            if template.quotes not in counts:
                continue
            rows = np.flatnonzero((buffer.quote_counts == template.quotes) & ~done)
            if rows.size < MIN_COLUMNAR_ROWS:
                continue
            match = _match(buffer, template, rows, symbols, scale)
            if match is not None:
                done[match.rows] = True
                kind = "quotes" if template.kind == "bookTicker" else "trades"
                table = _BUILDERS[template.kind](match, buffer.received[match.rows], numbers[match.rows], scale)
                parts[kind].append((table, match.rows))
    records: dict[str, tuple[list[dict[str, Any]], list[int]]] = {"trades": ([], []), "quotes": ([], [])}
    rejects: list[Reject] = []
    control = 0
    for index in np.flatnonzero(~done).tolist():
        result = normalize_frame(
            raws[index], symbols, received[index], time_unit, origin=origin, position=first_position + index
        )
        if result is None:
            control += 1
        elif isinstance(result, Reject):
            rejects.append(result)
        else:
            result["platform_sequence"] = int(numbers[index])  # differs from the position only for `sequences`
            kind_records, kind_frames = records["quotes" if "quote_id" in result else "trades"]
            kind_records.append(result)
            kind_frames.append(index)
    trades, trade_frames = _merge(TRADES_V2, parts["trades"], *records["trades"])
    quotes, quote_frames = _merge(QUOTES_V2, parts["quotes"], *records["quotes"])
    return FrameBatch(trades, quotes, trade_frames, quote_frames, rejects, control)


def _merge(
    spec: RecordSpec, parts: list[tuple[pa.Table, np.ndarray]], records: list[dict[str, Any]], frames: list[int]
) -> tuple[pa.Table, np.ndarray]:
    """The fast tables and the per-frame records as one table in frame order, with each row's frame index."""
    if records:
        parts = [*parts, (records_to_arrow(spec, records), np.array(frames, dtype=np.int64))]
    if not parts:
        return empty_rows(spec), np.zeros(0, dtype=np.int64)
    if len(parts) == 1:
        return parts[0]
    table = pa.concat_tables([table for table, _ in parts])
    index = np.concatenate([rows for _, rows in parts])
    order = np.argsort(index, kind="stable")
    return table.take(order), index[order]


# --- matching ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    """The frames (`rows`) that matched a template and passed every check, with their values."""

    rows: np.ndarray
    texts: dict[str, pa.StringArray]  # int, bool and str values as their JSON text (what str(value) gives)
    ints: dict[str, np.ndarray]
    bools: dict[str, np.ndarray]
    decimals: dict[str, np.ndarray]  # unscaled int64 (value × 10^8)
    currency: pa.StringArray


def _match(
    buffer: FrameBuffer, template: Template, rows: np.ndarray, symbols: QuoteResolver, scale: int
) -> _Match | None:
    """The rows that are plainly in `template`'s shape and normalize without a fault; None if there are none.

    The cuts are placed where the frame's quotes say they are; a row is in the shape when every literal byte
    between them is the template's, and every cut is a value of its kind. A frame that holds exactly the
    template's number of quotes and passes this has all its quotes in the literals, none inside a value.
    """
    words = buffer.words
    starts, ends = buffer.starts[rows], buffer.ends[rows]
    bounds = buffer.quotes[buffer.first_quote[rows][:, None] + template.bound_quote] + template.bound_shift
    bounds[:, template.at_end] = ends[:, None] + template.bound_shift[template.at_end]
    cut_starts, cut_ends = bounds[:, 0::2], bounds[:, 1::2]
    literal_starts = np.concatenate([starts[:, None], cut_ends], axis=1)
    literal_ends = np.concatenate([cut_starts, ends[:, None]], axis=1)
    ok = (literal_ends - literal_starts == template.literal_length).all(axis=1)
    literal = words[literal_starts[:, template.word_literal] + template.word_offset] & template.word_mask
    ok &= (literal == template.word_value).all(axis=1)
    lengths = cut_ends - cut_starts
    ok &= ((lengths >= template.shortest) & (lengths <= template.longest)).all(axis=1)
    bools = template.bools
    flags = words[cut_starts[:, bools]]
    true = (lengths[:, bools] == 4) & ((flags & 0xFFFFFFFF) == TRUE_WORD)
    ok &= (true | ((lengths[:, bools] == 5) & ((flags & 0xFFFFFFFFFF) == FALSE_WORD))).all(axis=1)
    if not ok.all():
        keep = np.flatnonzero(ok)
        if keep.size == 0:
            return None
        rows, bounds, true = rows[keep], bounds[keep], true[keep]
    texts, ints, ok = _values(buffer, template, bounds)
    decimals = {}
    for kind, name in template.cuts:
        if kind == "digits":
            key = name.removesuffix(".int")
            decimals[key] = ints.pop(name) * 10**PRICE_SCALE + ints.pop(key + ".frac")
    ok &= _CHECKS[template.kind](ints, decimals, scale)
    currency, known = _currencies(texts["s"], symbols)
    ok &= known
    flags_of = {template.cuts[c][1]: true[:, i] for i, c in enumerate(bools.tolist())}
    if not ok.all():
        keep = np.flatnonzero(ok)
        if keep.size == 0:
            return None
        mask = pa.array(ok)
        rows = rows[keep]
        texts = {key: value.filter(mask) for key, value in texts.items()}
        ints = {key: value[keep] for key, value in ints.items()}
        flags_of = {key: value[keep] for key, value in flags_of.items()}
        decimals = {key: value[keep] for key, value in decimals.items()}
        currency = currency.filter(mask)
    return _Match(rows, texts, ints, flags_of, decimals, currency)


def _values(
    buffer: FrameBuffer, template: Template, bounds: np.ndarray
) -> tuple[dict[str, pa.StringArray], dict[str, np.ndarray], np.ndarray]:
    """The string and digit cuts as text columns, cut out of the buffer with one `take`; the digit runs parsed as
    int64; and per row whether every string is plain and every digit run a number of its kind.

    `bounds` is (rows, 2 × cuts): each cut's start and end, in order, inside the row's frame.
    """
    n = len(bounds)
    per_row = bounds.shape[1]
    # Offsets s1, e1, s2, e2, ... make a string array whose even elements are the cuts and odd ones the literals
    # between them (the offsets never go down); one take gathers the wanted cuts cut by cut, so each cut's column
    # is a zero-copy slice.
    offsets = bounds.astype(np.int32).reshape(-1)
    pieces = pa.StringArray.from_buffers(len(offsets) - 1, pa.py_buffer(offsets), buffer.frames.buffers()[2])
    order = np.arange(0, n * per_row, per_row, dtype=np.int32)[None, :] + 2 * template.taken[:, None].astype(np.int32)
    values = pieces.take(order.reshape(-1))
    names = [template.cuts[c][1] for c in template.taken.tolist()]
    texts = {name: values.slice(i * n, n) for i, name in enumerate(names)}
    ok = _plain_strings(values.slice(0, template.taken_strings * n), n)
    for i in range(template.taken_strings):
        if template.cuts[template.taken[i]][0] == "name":
            ok &= ~np.asarray(pc.match_substring(texts[names[i]], "@"))
    digits = values.slice(template.taken_texts * n)
    try:
        parsed = np.asarray(digits.cast(pa.int64()))
    except pa.ArrowInvalid:  # not all digits (Arrow's cast takes only -?[0-9]+): clear those rows, parse the rest
        is_digits = pc.ascii_is_decimal(digits)
        ok &= np.asarray(is_digits).reshape(-1, n).all(axis=0)
        parsed = np.asarray(pc.if_else(is_digits, digits, "0").cast(pa.int64()))
    parsed = parsed.reshape(-1, n)
    ints = {name: parsed[i] for i, name in enumerate(names[template.taken_texts :])}
    offsets = string_offsets(digits)
    signed = np.frombuffer(digits.buffers()[2], dtype=np.uint8)[offsets[:-1]] == ord("-")  # "-0" parses as 0
    ok &= ~signed.reshape(-1, n).any(axis=0)
    # JSON integers have no leading zero: an L-digit one is at least 10^(L-1)
    lengths = np.diff(offsets).reshape(-1, n)[template.json_integers]
    smallest = _POWERS_OF_TEN[lengths - 1]
    ok &= ((lengths == 1) | (parsed[template.json_integers] >= smallest)).all(axis=0)
    return texts, ints, ok


_POWERS_OF_TEN = np.array([10**k for k in range(19)], dtype=np.int64)


def _plain_strings(strings: pa.StringArray, n: int) -> np.ndarray:
    """Per row (element i is row i % n): its texts are printable ASCII without a quote or backslash, so JSON
    decoding leaves them as they are."""
    offsets = string_offsets(strings)
    data = np.frombuffer(strings.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    bad = np.flatnonzero(((data - np.uint8(32)) > 94) | (data == ord("\\")) | (data == QUOTE_BYTE))
    ok = np.ones(n, dtype=bool)
    if bad.size:
        ok[(np.searchsorted(offsets, bad + offsets[0], side="right") - 1) % n] = False
    return ok


def _currencies(symbol: pa.StringArray, symbols: QuoteResolver) -> tuple[pa.StringArray, np.ndarray]:
    """Each row's quote asset (asked once per distinct symbol), and whether the resolver knows the symbol."""
    encoded = symbol.dictionary_encode()
    quotes: list[str | None] = []
    for name in encoded.dictionary.cast(pa.binary()).to_pylist():
        try:
            quotes.append(symbols.quote_asset(name.decode("ascii")))
        except (UnicodeDecodeError, UnknownSymbolError):  # not ASCII: the row is not plain anyway
            quotes.append(None)
    index = np.asarray(encoded.indices, dtype=np.int64)
    known = np.array([quote is not None for quote in quotes], dtype=bool)[index]
    return pa.array([quote or "" for quote in quotes], pa.string()).take(index), known


def _times_fit(values: np.ndarray, scale: int) -> np.ndarray:
    """A time field is after 1970 (normalize_frame refuses 0) and still fits int64 once in µs."""
    return (values > 0) & (values <= _INT64_MAX // scale)


def _trade_checks(ints: dict[str, np.ndarray], decimals: dict[str, np.ndarray], scale: int) -> np.ndarray:
    # Zero price or quantity is a reject (both zero: an invalidated aggTrade): normalize_frame says which.
    return _times_fit(ints["E"], scale) & _times_fit(ints["T"], scale) & (decimals["p"] > 0) & (decimals["q"] > 0)


def _book_checks(ints: dict[str, np.ndarray], decimals: dict[str, np.ndarray], scale: int) -> np.ndarray:
    return np.ones(len(ints["u"]), dtype=bool)  # every value is a plain one; a zero price means "no order"


_CHECKS = {"aggTrade": _trade_checks, "trade": _trade_checks, "bookTicker": _book_checks}


# --- building the tables ----------------------------------------------------------------------------------------


def _decimal_column(unscaled: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    """decimal128(18,8) straight from unscaled values (all ≥ 0 and < 10^18: the high 64 bits are zero)."""
    n = len(unscaled)
    words = np.zeros((n, 2), dtype=np.int64)
    words[:, 0] = unscaled
    if valid is None or valid.all():
        return pa.Array.from_buffers(_DECIMAL, n, [None, pa.py_buffer(words)])
    bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(_DECIMAL, n, [bitmap, pa.py_buffer(words)], null_count=int(n - valid.sum()))


def _vendor_map(items: dict[str, pa.Array | str], n: int) -> pa.MapArray:
    """vendor_data with the same keys on every row, in the given order."""
    width = len(items)
    values = [pa.repeat(value, n) if isinstance(value, str) else value for value in items.values()]
    cells = np.arange(width * n, dtype=np.int64).reshape(width, n).T.reshape(-1)  # row by row
    names = [key.encode() for key in items]
    sizes = np.array([0] + [len(key) for key in names], dtype=np.int32)
    row = int(sizes.sum())
    key_offsets = (np.arange(n, dtype=np.int32)[:, None] * row + np.cumsum(sizes)[None, :-1]).reshape(-1)
    key_offsets = np.append(key_offsets, n * row).astype(np.int32)
    keys = pa.StringArray.from_buffers(width * n, pa.py_buffer(key_offsets), pa.py_buffer(b"".join(names) * n))
    offsets = pa.array(np.arange(0, width * (n + 1), width, dtype=np.int32))
    return pa.MapArray.from_arrays(offsets, keys, pa.concat_arrays(values).take(cells), type=_MAP)


def _common(
    match: _Match, data_type: str, channel: str, source_id: str, received: np.ndarray, sequences: np.ndarray
) -> dict[str, Any]:
    n = len(match.rows)
    names = join_names(match.texts["s"], f"|{channel}:", match.texts[source_id])
    return {
        "message_id": message_ids_column(names, prefix=f"{EXCHANGE}|{data_type}|"),
        "symbol": match.texts["s"],
        "exchange": pa.repeat(EXCHANGE, n),
        "asset_class": pa.repeat(CRYPTO, n),
        "currency": match.currency,
        "source_sequence": pa.array(match.ints[source_id]),
        "ingestion_timestamp": pa.array(received, type=_TIMESTAMP),
        "platform_sequence": pa.array(sequences, pa.int64()),  # the frames' places in their stream
    }


def _trades_table(match: _Match, received: np.ndarray, sequences: np.ndarray, scale: int, channel: str) -> pa.Table:
    """normalize_agg_trade / normalize_trade for every matched row."""
    n = len(match.rows)
    trade_id = "a" if channel == "aggTrade" else "t"
    maker = match.bools["m"]
    vendor: dict[str, pa.Array | str] = {"channel": channel, "receive_time_us": pa.array(received).cast(pa.string())}
    if channel == "aggTrade":
        vendor |= {"first_trade_id": match.texts["f"], "last_trade_id": match.texts["l"]}
    vendor["is_buyer_maker"] = match.texts["m"]
    vendor["event_time_us"] = pa.array(match.ints["E"] * scale).cast(pa.string())
    if channel == "trade" and "b" in match.texts:
        vendor |= {"buyer_order_id": match.texts["b"], "seller_order_id": match.texts["a"]}
    vendor["is_best_match"] = match.texts["M"]
    columns = _common(match, DataType.TRADES.value, channel, trade_id, received, sequences) | {
        "trade_id": match.texts[trade_id],
        "timestamp": pa.array(match.ints["T"] * scale, type=_TIMESTAMP),
        "price": _decimal_column(match.decimals["p"]),
        "quantity": _decimal_column(match.decimals["q"]),
        # m = "is the buyer the market maker?": if so the seller took liquidity, i.e. the aggressor sold.
        "side": _SIDES.take(maker.astype(np.int8)),
        "trade_conditions": pa.ListArray.from_arrays(
            np.zeros(n + 1, dtype=np.int32), _NO_STRINGS, type=_TRADE_CONDITIONS
        ),
        "vendor_data": _vendor_map(vendor, n),
    }
    schema = arrow_schema(TRADES_V2)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def _quotes_table(match: _Match, received: np.ndarray, sequences: np.ndarray, scale: int) -> pa.Table:
    """normalize_book_ticker for every matched row: a side priced 0 (no order) is null, price and quantity."""
    n = len(match.rows)
    bid, ask = match.decimals["b"], match.decimals["a"]
    has_bid, has_ask = bid > 0, ask > 0
    vendor: dict[str, pa.Array | str] = {
        "channel": "bookTicker",
        "receive_time_us": pa.array(received).cast(pa.string()),
        "timestamp_source": "receive_time",  # spot bookTicker has no event time (see normalize_book_ticker)
    }
    columns = _common(match, DataType.QUOTES.value, "bookTicker", "u", received, sequences) | {
        "quote_id": match.texts["u"],
        "timestamp": pa.array(received, type=_TIMESTAMP),
        "bid_price": _decimal_column(bid, has_bid),
        "bid_quantity": _decimal_column(match.decimals["B"], has_bid),
        "ask_price": _decimal_column(ask, has_ask),
        "ask_quantity": _decimal_column(match.decimals["A"], has_ask),
        "vendor_data": _vendor_map(vendor, n),
    }
    schema = arrow_schema(QUOTES_V2)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


_TRADE_CONDITIONS = arrow_schema(TRADES_V2).field("trade_conditions").type
_NO_STRINGS = pa.array([], pa.string())
_SIDES = pa.array([Side.BUY.value, Side.SELL.value])  # indexed by m: the buyer was the maker, so the taker sold
_BUILDERS = {
    "aggTrade": lambda match, received, sequences, scale: _trades_table(match, received, sequences, scale, "aggTrade"),
    "trade": lambda match, received, sequences, scale: _trades_table(match, received, sequences, scale, "trade"),
    "bookTicker": _quotes_table,
}
