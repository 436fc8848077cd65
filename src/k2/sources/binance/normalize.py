"""Binance spot WebSocket and REST payloads → trades_v2 / quotes_v2 record dicts.

Pure functions, one per payload kind, each returning a record dict ready for the bus or raising `PayloadError`
(reason code + sentence); `normalize_frame` wraps them for one raw WebSocket frame and returns a record, a `Reject`
(raw bytes kept) or None. Built for the live hot path: orjson, plain dicts, no model objects per message.

Field meanings are Binance's (https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams):
  trade       e, E event time, s, t trade id, p, q, T trade time, m buyer is maker, M ignore
  aggTrade    e, E, s, a aggregate id, p, q, f/l first/last trade id, T, m, M   (REST /api/v3/aggTrades: same
              short keys without e/E/s)
  bookTicker  u order book update id, s, b/B best bid price/qty, a/A best ask price/qty (no event time on spot)
Times are milliseconds unless the connection asked for `timeUnit=MICROSECOND` (spot, since 2024-01), in which
case every time field is already in microseconds: pass `TimeUnit.MICROSECOND`.
Ids and times must fit the int64 columns they land in (times once in µs): an id of 2^63 or a trade time past
9,223,372,036,854,775 ms is a `bad_field:<key>` reject, as is an integer orjson could only read as a float
(10^23); a price or quantity that is a JSON number, not a decimal string, is rejected, never taken through float.

Ids: message_id = UUIDv5("binance", data type, symbol, "<channel>:<venue id>"), with channel "trade" or
"aggTrade" whether the payload came from the stream, REST or a data.binance.vision file, so a backfill of the
same trade dedupes against what the live stream already stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from enum import StrEnum
from functools import lru_cache
from typing import Any

import orjson

from k2.core.batch import Reject
from k2.schema.codecs import DecimalError, message_id, parse_decimal
from k2.schema.fields import (
    BOOK_SNAPSHOTS_V2,
    BOOK_UPDATES_V2,
    QUOTES_V2,
    TRADES_V2,
    AssetClass,
    DataType,
    RecordSpec,
    Side,
)
from k2.sources.binance.symbols import QuoteResolver, UnknownSymbolError

EXCHANGE = "binance"
CRYPTO = AssetClass.CRYPTO.value
_TRADES = DataType.TRADES.value
_QUOTES = DataType.QUOTES.value
_BUY, _SELL = Side.BUY.value, Side.SELL.value
_ZERO = Decimal(0)
# Ids and times are int64 columns (times in µs): a JSON integer beyond that is a reject, not an OverflowError later.
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


class TimeUnit(StrEnum):
    """The `timeUnit` a spot connection was opened with; the stream default is milliseconds."""

    MILLISECOND = "MILLISECOND"
    MICROSECOND = "MICROSECOND"


_MICROSECOND = TimeUnit.MICROSECOND

# Event types that are data but not trades or quotes: the order-book builder and bar loaders read them, so
# normalize_frame passes them by (None) instead of rejecting every depth diff.
PASSED_EVENTS = frozenset({"depthUpdate", "kline", "24hrTicker", "24hrMiniTicker", "1hTicker", "4hTicker", "1dTicker"})
_PASSED_CHANNELS = ("depth", "kline", "ticker", "miniTicker", "avgPrice")

# Readable vendor_data names for Binance's one-letter extras; anything else keeps Binance's key.
_EXTRA_NAMES = {"M": "is_best_match", "b": "buyer_order_id", "a": "seller_order_id", "X": "trade_type"}
_TRADE_KEYS = frozenset("eEstpqTm")
_AGG_KEYS = frozenset("eEsapqflTm")
_BOOK_KEYS = frozenset({"e", "E", "s", "u", "b", "B", "a", "A"})

# Prices and quantities repeat heavily within a session (the 2021-04-04 capture: 1,910 aggTrades, 1,081
# distinct price texts), so each distinct text is parsed once; Decimal is immutable, so sharing is safe.
_decimal = lru_cache(maxsize=1 << 16)(parse_decimal)


class PayloadError(Exception):
    """A payload that cannot become a record: `reason` is the Reject code, `detail` the sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _get(data: Mapping[str, Any], key: str) -> Any:
    try:
        return data[key]
    except KeyError:
        raise PayloadError(f"missing_field:{key}", f"field {key!r} is missing") from None


def _int(data: Mapping[str, Any], key: str) -> int:
    value = _get(data, key)
    if type(value) is not int:  # bool is an int subclass; the exact check refuses it too
        # orjson reads an integer beyond 64 bits as a float (10^23 → 1e+23): refused here as not an integer
        raise PayloadError(f"bad_field:{key}", f"field {key!r} should be an integer, got {value!r}")
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise PayloadError(f"bad_field:{key}", f"field {key!r} is {value}, beyond a 64-bit integer")
    return value


def _time(data: Mapping[str, Any], key: str, scale: int) -> int:
    """A time field in µs (`scale` 1000: it was in ms); PayloadError unless after 1970 and within int64 µs."""
    value = _int(data, key)
    if value <= 0:
        raise PayloadError(f"bad_field:{key}", f"time {key!r} is {value}, not a time after 1970")
    if value > _INT64_MAX // scale:
        raise PayloadError(f"bad_field:{key}", f"time {key!r} is {value}, beyond 64-bit microseconds")
    return value * scale


def _bool(data: Mapping[str, Any], key: str) -> bool:
    value = _get(data, key)
    if type(value) is not bool:
        raise PayloadError(f"bad_field:{key}", f"field {key!r} should be true/false, got {value!r}")
    return value


def parse_amount(text: Any, name: str, reason: str) -> Decimal:
    """A price or quantity string → Decimal (scale 8, never via float); PayloadError(reason) if it is not one."""
    # Binance sends every price and quantity as a string; a JSON number would already have been through float.
    if type(text) is not str:  # a JSON number was parsed as a float (10^23 → 1e+23) or an int: never taken
        raise PayloadError(reason, f"field {name!r} should be a decimal string, got {type(text).__name__} {text!r}")
    try:
        value = _decimal(text)
    except DecimalError as exc:
        raise PayloadError(reason, f"field {name!r}: {exc}") from None
    if value < _ZERO:
        raise PayloadError(reason, f"field {name!r} is negative: {text!r}")
    return value


def _decimal_field(data: Mapping[str, Any], key: str, reason: str) -> Decimal:
    return parse_amount(_get(data, key), key, reason)


def _text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value if type(value) is str else orjson.dumps(value).decode()  # numbers, lists: their JSON text


def _keep_extras(data: Mapping[str, Any], consumed: frozenset[str], vendor: dict[str, str]) -> None:
    for key, value in data.items():
        if key not in consumed:
            vendor[_EXTRA_NAMES.get(key, key)] = _text(value)


def _symbol(data: Mapping[str, Any], symbol: str | None) -> str:
    found = data.get("s", symbol)
    if found is None:
        raise PayloadError("missing_field:s", "field 's' (symbol) is missing and the caller named no symbol")
    if type(found) is not str:
        raise PayloadError("bad_field:s", f"symbol should be a string, got {found!r}")
    return found


def _currency(symbols: QuoteResolver, symbol: str) -> str:
    try:
        return symbols.quote_asset(symbol)
    except UnknownSymbolError as exc:
        raise PayloadError(exc.reason, exc.detail) from None


def _trade(
    channel: str,
    symbol: str,
    venue_id: int,
    price: Decimal,
    quantity: Decimal,
    timestamp: int,
    buyer_is_maker: bool,
    vendor: dict[str, str],
    symbols: QuoteResolver,
    receive_us: int,
    exchange: str,
    asset_class: str,
    platform_sequence: int | None,
) -> dict[str, Any]:
    if not price:
        raise PayloadError("bad_price", "price is zero: a trade needs a price")
    if not quantity:
        raise PayloadError("bad_quantity", "quantity is zero: a trade needs a quantity")
    currency = _currency(symbols, symbol)
    return {
        "message_id": message_id(exchange, _TRADES, symbol, f"{channel}:{venue_id}"),
        "trade_id": str(venue_id),
        "symbol": symbol,
        "exchange": exchange,
        "asset_class": asset_class,
        "timestamp": timestamp,
        "price": price,
        "quantity": quantity,
        "currency": currency,
        # m = "is the buyer the market maker?": if so the seller took liquidity, i.e. the aggressor sold.
        "side": _SELL if buyer_is_maker else _BUY,
        "trade_conditions": [],
        "source_sequence": venue_id,
        "ingestion_timestamp": receive_us,
        "platform_sequence": platform_sequence,
        "vendor_data": vendor,
    }


def normalize_trade(
    data: Mapping[str, Any],
    symbols: QuoteResolver,
    receive_us: int,
    time_unit: TimeUnit = TimeUnit.MILLISECOND,
    *,
    exchange: str = EXCHANGE,
    asset_class: str = CRYPTO,
    platform_sequence: int | None = None,
) -> dict[str, Any]:
    """A `<symbol>@trade` payload (e = "trade") → trades_v2 dict; PayloadError if it cannot be one."""
    scale = 1 if time_unit == _MICROSECOND else 1_000
    symbol = _symbol(data, None)
    trade_id = _int(data, "t")
    price = _decimal_field(data, "p", "bad_price")
    qty = _decimal_field(data, "q", "bad_quantity")
    ts = _time(data, "T", scale)
    maker = _bool(data, "m")
    vendor = {"channel": "trade", "receive_time_us": str(receive_us), "is_buyer_maker": _text(maker)}
    if "E" in data:
        vendor["event_time_us"] = str(_time(data, "E", scale))
    _keep_extras(data, _TRADE_KEYS, vendor)
    return _trade(
        "trade", symbol, trade_id, price, qty, ts, maker, vendor, symbols, receive_us,
        exchange, asset_class, platform_sequence,
    )  # fmt: skip


def is_invalidated_agg_trade(data: Mapping[str, Any]) -> bool:
    """True for an aggTrade Binance has voided: zero price and quantity, or no first/last trade id (-1).

    Such a message says "aggregate id N carried no trade"; stored as a trade it would corrupt VWAP and volume, so
    it is rejected as "invalidated_aggtrade" (the id stays visible in the DLQ for gap accounting). Source of the
    rule: the K2 issue; we found no Binance docs page stating the marker (searched developers.binance.com and
    the spot CHANGELOG), so both forms are accepted. A zero quantity at a real price (seen in futures public
    data, binance-public-data issue #342) is not this marker: it is rejected as bad_quantity.
    """
    f, last = data.get("f"), data.get("l")
    if (type(f) is int and f < 0) or (type(last) is int and last < 0):
        return True
    p, q = data.get("p"), data.get("q")
    if type(p) is not str or type(q) is not str:
        return False
    try:
        return not _decimal(p) and not _decimal(q)
    except DecimalError:
        return False


def normalize_agg_trade(
    data: Mapping[str, Any],
    symbols: QuoteResolver,
    receive_us: int,
    time_unit: TimeUnit = TimeUnit.MILLISECOND,
    *,
    symbol: str | None = None,
    exchange: str = EXCHANGE,
    asset_class: str = CRYPTO,
    platform_sequence: int | None = None,
) -> dict[str, Any]:
    """An aggTrade (stream payload, or a REST /api/v3/aggTrades item with `symbol=` given) → trades_v2 dict.

    trade_id and source_sequence are the aggregate id `a`; the raw trade ids it covers are vendor_data
    first_trade_id/last_trade_id. PayloadError("invalidated_aggtrade") for a voided aggregate.
    """
    scale = 1 if time_unit == _MICROSECOND else 1_000
    get = data.get
    found, agg_id, p, q, first, last, ts, maker = (
        get("s", symbol), get("a"), get("p"), get("q"), get("f"), get("l"), get("T"), get("m")
    )  # fmt: skip
    # Fast path for the shape Binance always sends: one type check per field, no helper calls (this function is
    # most of the live hot path). Anything unusual goes through _checked_agg_trade, which finds the same values
    # or raises the PayloadError that names the first fault.
    price = qty = None
    if (
        type(found) is str and type(agg_id) is int and type(p) is str and type(q) is str and type(maker) is bool
        and type(first) is int and type(last) is int and first >= 0 and last >= 0 and type(ts) is int and ts > 0
        and agg_id <= _INT64_MAX and first <= _INT64_MAX and last <= _INT64_MAX and ts <= _INT64_MAX // scale
    ):  # fmt: skip
        try:
            price, qty = _decimal(p), _decimal(q)
        except DecimalError:
            price = None
    if price is None or qty is None or price <= _ZERO or qty <= _ZERO:
        found, agg_id, price, qty, first, last, ts, maker = _checked_agg_trade(data, symbol, scale)
    vendor = {
        "channel": "aggTrade",
        "receive_time_us": str(receive_us),
        "first_trade_id": str(first),
        "last_trade_id": str(last),
        "is_buyer_maker": "true" if maker else "false",
    }
    if "E" in data:
        vendor["event_time_us"] = str(_time(data, "E", scale))
    for key in data.keys() - _AGG_KEYS:
        vendor[_EXTRA_NAMES.get(key, key)] = _text(data[key])
    return _trade(
        "aggTrade", found, agg_id, price, qty, ts * scale, maker, vendor, symbols, receive_us,
        exchange, asset_class, platform_sequence,
    )  # fmt: skip


def _checked_agg_trade(data: Mapping[str, Any], symbol: str | None, scale: int) -> tuple[Any, ...]:
    """The aggTrade fields validated one by one, so the PayloadError names the first fault (T stays unscaled)."""
    symbol = _symbol(data, symbol)
    agg_id = _int(data, "a")
    if is_invalidated_agg_trade(data):
        raise PayloadError(
            "invalidated_aggtrade",
            f"aggregate trade {agg_id} of {symbol} is marked invalid (p={data.get('p')!r} q={data.get('q')!r}"
            f" f={data.get('f')!r} l={data.get('l')!r}): no trade to record",
        )
    price = _decimal_field(data, "p", "bad_price")
    qty = _decimal_field(data, "q", "bad_quantity")
    first, last = _int(data, "f"), _int(data, "l")
    ts = _time(data, "T", scale) // scale
    return symbol, agg_id, price, qty, first, last, ts, _bool(data, "m")


def normalize_rest_trade(
    item: Mapping[str, Any],
    symbol: str,
    symbols: QuoteResolver,
    receive_us: int,
    time_unit: TimeUnit = TimeUnit.MILLISECOND,
    *,
    exchange: str = EXCHANGE,
    asset_class: str = CRYPTO,
    platform_sequence: int | None = None,
) -> dict[str, Any]:
    """One GET /api/v3/trades (or historicalTrades) item → trades_v2 dict; same ids as the `trade` stream.

    Keys: id, price, qty, quoteQty, time, isBuyerMaker, isBestMatch (the long names; the symbol is not in the
    item, so the caller passes the one it asked for). data.binance.vision trades files carry the same columns.
    """
    scale = 1 if time_unit == _MICROSECOND else 1_000
    trade_id = _int(item, "id")
    price = _decimal_field(item, "price", "bad_price")
    qty = _decimal_field(item, "qty", "bad_quantity")
    ts = _time(item, "time", scale)
    maker = _bool(item, "isBuyerMaker")
    vendor = {"channel": "trade", "receive_time_us": str(receive_us), "is_buyer_maker": _text(maker)}
    if "quoteQty" in item:
        vendor["quote_quantity"] = _text(item["quoteQty"])
    if "isBestMatch" in item:
        vendor["is_best_match"] = _text(item["isBestMatch"])
    return _trade(
        "trade", symbol, trade_id, price, qty, ts, maker, vendor, symbols, receive_us,
        exchange, asset_class, platform_sequence,
    )  # fmt: skip


def normalize_book_ticker(
    data: Mapping[str, Any],
    symbols: QuoteResolver,
    receive_us: int,
    time_unit: TimeUnit = TimeUnit.MILLISECOND,
    *,
    exchange: str = EXCHANGE,
    asset_class: str = CRYPTO,
    platform_sequence: int | None = None,
) -> dict[str, Any]:
    """A `<symbol>@bookTicker` payload → quotes_v2 dict; a side whose price is 0 (no order) is null."""
    symbol = _symbol(data, None)
    update_id = _int(data, "u")
    bid, bid_qty = _decimal_field(data, "b", "bad_price"), _decimal_field(data, "B", "bad_quantity")
    ask, ask_qty = _decimal_field(data, "a", "bad_price"), _decimal_field(data, "A", "bad_quantity")
    vendor = {"channel": "bookTicker", "receive_time_us": str(receive_us)}
    # Spot bookTicker carries no event time (the docs' payload has only u,s,b,B,a,A), so the receive time is the
    # best clock we have: it is late by the network latency (E - T was 0-78 ms on aggTrades in the 2021-04-04
    # capture). vendor_data.timestamp_source says which clock a row used, so consumers can tell. Futures
    # bookTicker does carry E, and it wins when present.
    if "E" in data:
        timestamp = _time(data, "E", 1 if time_unit == _MICROSECOND else 1_000)
        vendor["timestamp_source"] = "event_time"
    else:
        timestamp = receive_us
        vendor["timestamp_source"] = "receive_time"
    if not bid:
        bid = bid_qty = None
    if not ask:
        ask = ask_qty = None
    _keep_extras(data, _BOOK_KEYS, vendor)
    currency = _currency(symbols, symbol)
    return {
        "message_id": message_id(exchange, _QUOTES, symbol, f"bookTicker:{update_id}"),
        "quote_id": str(update_id),
        "symbol": symbol,
        "exchange": exchange,
        "asset_class": asset_class,
        "timestamp": timestamp,
        "bid_price": bid,
        "bid_quantity": bid_qty,
        "ask_price": ask,
        "ask_quantity": ask_qty,
        "currency": currency,
        "source_sequence": update_id,
        "ingestion_timestamp": receive_us,
        "platform_sequence": platform_sequence,
        "vendor_data": vendor,
    }


# A diff depth stream's name as a combined frame quotes it: <symbol>@depth or <symbol>@depth@100ms (not the partial
# book streams <symbol>@depth5, @depth20@100ms, ...).
_DEPTH_DIFF_STREAM = re.compile(rb'@depth(?:@\d+ms)?"')
_PARTIAL_DEPTH_STREAM = re.compile(rb'@depth(?:5|10|20)(?:@\d+ms)?"')


def intended_spec(raw: bytes) -> RecordSpec:
    """The table a rejected frame was meant for, as far as its bytes tell, so it goes to that data type's DLQ:
    book updates for a diff depth frame (its stream's name, or a depthUpdate event), book snapshots for a partial
    book frame (its stream's name), quotes for a bookTicker frame
    (a combined stream's name, or a raw payload's update id with best bid and ask), trades otherwise."""
    head = raw[:200]
    if b'"depthUpdate"' in head or _DEPTH_DIFF_STREAM.search(head):
        return BOOK_UPDATES_V2
    if _PARTIAL_DEPTH_STREAM.search(head):
        return BOOK_SNAPSHOTS_V2
    if b"@bookTicker" in head or (b'"u":' in head and b'"b":' in head and b'"e":' not in head):
        return QUOTES_V2
    return TRADES_V2


def record_spec(record: Mapping[str, Any]) -> RecordSpec:
    """Which V2 spec a record from this module belongs to (trades_v2 or quotes_v2)."""
    return QUOTES_V2 if "quote_id" in record else TRADES_V2


def _kind(data: Mapping[str, Any], stream: str | None) -> str | None:
    event = data.get("e")
    if event is not None:
        return event if type(event) is str else ""
    if stream is not None:
        channel = stream.partition("@")[2]
        if channel == "bookTicker":
            return channel
        if channel.startswith(_PASSED_CHANNELS):
            return None
        return channel
    if "u" in data and "b" in data and "a" in data and "s" in data:
        return "bookTicker"  # raw (/ws) bookTicker stream: no wrapper and no "e"
    if "lastUpdateId" in data:
        return None  # partial book depth (<symbol>@depth<levels>) on a raw stream
    return ""


def normalize_frame(
    raw: bytes,
    symbols: QuoteResolver,
    receive_us: int,
    time_unit: TimeUnit = TimeUnit.MILLISECOND,
    *,
    origin: str = "binance-ws",
    position: int = 0,
) -> dict[str, Any] | Reject | None:
    """One raw WebSocket text frame → a trades_v2/quotes_v2 record, a Reject, or None.

    Handles both raw (`/ws/<stream>`) and combined (`/stream?streams=`, `{"stream":..., "data":...}`) frames.
    None means "not a trade or quote, and not an error": subscription acknowledgements (`{"result":null,"id":1}`)
    and depth/kline/ticker events, which other consumers read. Anything else that does not normalize is a
    Reject with its raw bytes; `origin`/`position` (stream name, frame number) locate it, and a record's
    platform_sequence is `position` (None when 0: no place in a stream given).
    """
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _reject("malformed_json", f"frame is not JSON ({exc})", raw, origin, position)
    if type(message) is not dict:
        return _reject("malformed_json", "frame is JSON but not an object", raw, origin, position)
    stream = message.get("stream")
    data = message.get("data") if stream is not None else message
    if type(data) is not dict or (stream is not None and type(stream) is not str):
        return _reject("malformed_frame", "combined-stream frame without a data object", raw, origin, position)
    if stream is None:
        if "result" in message and "id" in message:
            return None
        if "error" in message or ("code" in message and "msg" in message):
            return _reject("error_response", f"Binance error frame: {raw[:200]!r}", raw, origin, position)
    kind = _kind(data, stream)
    sequence = position or None  # the frame's number in its stream is the record's platform_sequence
    try:
        if kind == "aggTrade":
            return normalize_agg_trade(data, symbols, receive_us, time_unit, platform_sequence=sequence)
        if kind == "trade":
            return normalize_trade(data, symbols, receive_us, time_unit, platform_sequence=sequence)
        if kind == "bookTicker":
            return normalize_book_ticker(data, symbols, receive_us, time_unit, platform_sequence=sequence)
    except PayloadError as exc:
        return _reject(exc.reason, exc.detail, raw, origin, position)
    if kind is None or kind in PASSED_EVENTS:
        return None
    return _reject("unsupported_event", f"no normalizer for event {kind or '?'!r}", raw, origin, position)


def _reject(reason: str, detail: str, raw: bytes, origin: str, position: int) -> Reject:
    where = f"{origin} frame {position}: " if position else f"{origin}: "
    return Reject(reason=reason, detail=where + detail, raw=bytes(raw), origin=origin, position=position)
