"""Bars as they form: OHLCV bars of a trades subscription (k2.query.subscribe), the forming bar each time it changes
(`final` false) and the bar once closed (`final` true), with the values /v1/bars gives for it.

`BarAggregator` is the pure part: trades in, bar rows out, no I/O and no clock of its own. `subscribe_bars` runs it
over `subscribe(engine, kafka, "trades", ...)`.

Bars are those of k2.query.bars with its defaults: the exchange's trading-day zone, its uncounted trade conditions
left out, open/close the first/last trade in event order (timestamp, source_sequence, message_id) whatever order
they arrive in, volume and quote_volume exact sums, vwap half-even to 8 places, columns named as /v1/bars names them.
`partial` keeps its meaning there: true for a bar that opened before `since` (it holds only the trades from
`since`, as /v1/bars with start=since gives it).

When a bar closes, per (symbol, exchange):
- a trade of that series at or after the bar's close arrives (in the lake's history, in event order, this is
  exact; from Kafka, a symbol's trades come in the order they were produced);
- or, once the subscription is live (caught up with Kafka), the wall clock passes the bar's close plus `grace`:
  a quiet symbol still gets its final bar, `grace` after its interval ends. Not before live: while catching up the
  clock is far ahead of the trades still to come.
A trade timestamped before the series' newest bar's open (a bar sent final, or one that never formed because a
later one did) arrives too late for any streamed bar: it is left out and counted in `late`; /v1/bars counts it.
Such trades are rare: a trade arriving more than `grace` after its interval ended, or out of event order across
a bar's close.

Without `since` the subscription reads the trades from one interval before its start (`since` = start minus the
interval), so the bar forming at its start is whole; bars that opened before that moment are not sent.

The cursor (opaque text): the trades cursor from which every forming bar can be rebuilt (that of the batch before
the one holding the first trade of the oldest forming bar, or the first trades batch's `since` when that was the
first) and, per series, the open of its newest bar: trades before it are in bars already sent final (or late),
and are skipped when the trades are read again. So resuming sends each final bar exactly once; forming updates
already sent may be sent again.
"""

from __future__ import annotations

import binascii
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Context, Decimal

import pyarrow as pa
import structlog

from k2.query.bars import bar_bounds, day_zone, divide_half_even, parse_interval
from k2.query.cursor import pack, unpack
from k2.query.engine import QueryEngine
from k2.query.filters import InvalidQueryError, sequence_key, symbol_list, utc
from k2.query.fresh import Kafka
from k2.query.live_hub import LiveHub
from k2.query.subscribe import SubscribeOptions, SubscriptionBatch, subscribe
from k2.query.venues import venue
from k2.schema.codecs import datetime_from_micros, micros_from_datetime
from k2.schema.fields import PRICE_PRECISION, PRICE_SCALE

log = structlog.get_logger(__name__)

_VERSION = 1
_SCALE = 10**PRICE_SCALE  # prices and quantities are decimal(18, 8)
_EXACT = Context(prec=80)
GRACE_SECONDS = 2.0
MAX_SYMBOLS = 100  # the cursor carries a mark per series

BAR_SCHEMA = pa.schema(
    [
        ("symbol", pa.string()),
        ("exchange", pa.string()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("open", pa.decimal128(PRICE_PRECISION, PRICE_SCALE)),
        ("high", pa.decimal128(PRICE_PRECISION, PRICE_SCALE)),
        ("low", pa.decimal128(PRICE_PRECISION, PRICE_SCALE)),
        ("close", pa.decimal128(PRICE_PRECISION, PRICE_SCALE)),
        ("volume", pa.decimal128(38, PRICE_SCALE)),
        ("vwap", pa.decimal128(PRICE_PRECISION, PRICE_SCALE)),
        ("quote_volume", pa.decimal128(38, 2 * PRICE_SCALE)),
        ("trade_count", pa.int64()),
        ("partial", pa.bool_()),
        ("final", pa.bool_()),
    ]
)

Series = tuple[str, str]  # (symbol, exchange)
OrderKey = tuple[int, int, str]  # event order: timestamp, sequence key, message_id


@dataclass
class _Bar:
    opening: int
    closing: int
    open_key: OrderKey
    open: int  # unscaled prices (scale 8)
    close_key: OrderKey
    close: int
    high: int
    low: int
    volume: int = 0  # scale 8
    quote_volume: int = 0  # scale 16
    trade_count: int = 0
    resume: str | None = None  # the trades cursor before the batch of its first trade


def _decimal(unscaled: int, scale: int) -> Decimal:
    return Decimal(unscaled).scaleb(-scale, _EXACT)


@dataclass
class BarAggregator:
    """Bars of `interval` from batches of trades (V2 columns), per (symbol, exchange).

    `since_us`: bars opening before it are partial (`drop_cut`: not sent at all). `opened`: per series, the open of
    its newest bar (trades before it are late), as a cursor carries it. Call `add` per batch with the trades cursor
    before the batch, then `close_due` with the wall clock (live only), then `forming` for the changed forming bars.
    """

    interval: str
    since_us: int | None = None
    drop_cut: bool = False
    opened: dict[Series, int] = field(default_factory=dict)
    late: int = 0  # trades left out because their bar was closed (or skipped) already
    _width_us: int = field(default=0, init=False, repr=False)
    _bars: dict[Series, _Bar] = field(default_factory=dict, init=False, repr=False)  # forming, in the order opened
    _changed: set[Series] = field(default_factory=set, init=False, repr=False)

    def __post_init__(self) -> None:
        self._width_us = parse_interval(self.interval).seconds * 1_000_000

    def add(self, trades: pa.Table, before: str | None) -> list[dict]:
        """Take a batch of trades (`before`: the trades cursor that resumes right before it); the rows of the bars
        it closed."""
        if not trades.num_rows:
            return []
        closed: list[dict] = []
        names = ("symbol", "exchange", "timestamp", "source_sequence", "message_id", "price", "quantity")
        columns = [trades[name] for name in names]
        columns[2] = columns[2].cast(pa.int64())
        rows = zip(*(c.to_pylist() for c in columns), trades["trade_conditions"].to_pylist(), strict=True)
        for symbol, exchange, ts, sequence, message_id, price, quantity, conditions in rows:
            series = (symbol, exchange)
            if ts < self.opened.get(series, ts):
                self.late += 1
                continue
            bar = self._bars.get(series)
            if bar is not None and ts >= bar.closing:
                closed += self._close(series)
                bar = None
            uncounted = venue(exchange).uncounted_conditions
            if uncounted and conditions and not set(uncounted).isdisjoint(conditions):
                continue  # not in any bar, though it shows time has passed
            key = (ts, sequence_key(sequence), message_id)
            p = int(price.scaleb(PRICE_SCALE, _EXACT))
            q = int(quantity.scaleb(PRICE_SCALE, _EXACT))
            if bar is None:
                opening, closing = bar_bounds(ts, day_zone(None, exchange), self._width_us)
                bar = _Bar(opening, closing, key, p, key, p, p, p, resume=before)
                self._bars[series] = bar
                self.opened[series] = opening
            else:
                if key < bar.open_key:
                    bar.open_key, bar.open = key, p
                if key > bar.close_key:
                    bar.close_key, bar.close = key, p
                bar.high, bar.low = max(bar.high, p), min(bar.low, p)
            bar.volume += q
            bar.quote_volume += p * q
            bar.trade_count += 1
            self._changed.add(series)
        return closed

    def close_due(self, now_us: int, grace_us: int) -> list[dict]:
        """Close every bar whose close plus `grace_us` is at or before `now_us`; their rows."""
        due = [series for series, bar in self._bars.items() if bar.closing + grace_us <= now_us]
        return [row for series in sorted(due) for row in self._close(series)]

    def forming(self) -> list[dict]:
        """The rows of the forming bars changed since the last call, in (symbol, exchange) order."""
        changed, self._changed = sorted(self._changed), set()
        return [row for series in changed if series in self._bars for row in self._rows(series, final=False)]

    def resume(self) -> tuple[bool, str | None]:
        """(True, the trades cursor before the batch of the oldest forming bar's first trade; None: the
        subscription's start), or (False, None) when no bar is forming: the last batch's cursor resumes then."""
        if not self._bars:
            return False, None
        return True, next(iter(self._bars.values())).resume  # bars are kept in the order they opened

    def _close(self, series: Series) -> list[dict]:
        rows = self._rows(series, final=True)
        bar = self._bars.pop(series)
        self.opened[series] = bar.closing
        self._changed.discard(series)
        return rows

    def _rows(self, series: Series, *, final: bool) -> list[dict]:
        bar = self._bars[series]
        cut = self.since_us is not None and bar.opening < self.since_us
        if cut and self.drop_cut:
            return []
        return [
            {
                "symbol": series[0],
                "exchange": series[1],
                "timestamp": datetime_from_micros(bar.opening),
                "open": _decimal(bar.open, PRICE_SCALE),
                "high": _decimal(bar.high, PRICE_SCALE),
                "low": _decimal(bar.low, PRICE_SCALE),
                "close": _decimal(bar.close, PRICE_SCALE),
                "volume": _decimal(bar.volume, PRICE_SCALE),
                "quote_volume": _decimal(bar.quote_volume, 2 * PRICE_SCALE),
                "vwap": _decimal(divide_half_even(bar.quote_volume, bar.volume), PRICE_SCALE) if bar.volume else None,
                "trade_count": bar.trade_count,
                "partial": cut,
                "final": final,
            }
        ]


def bar_table(rows: Sequence[dict]) -> pa.Table:
    """Bar rows as a table with the columns of /v1/bars, and `final`."""
    return pa.Table.from_pylist(list(rows), schema=BAR_SCHEMA)


@dataclass(frozen=True)
class BarPosition:
    """What a bars cursor holds (its text is opaque to callers)."""

    interval: str
    since: int | None
    drop_cut: bool
    trades: str | None  # the trades cursor to read from; None: the trades subscription again from `since`
    opened: dict[Series, int]

    def encode(self) -> str:
        marks = [[s, e, at] for (s, e), at in sorted(self.opened.items())]
        raw = [_VERSION, "bars", self.interval, self.since, self.drop_cut, self.trades, marks]
        return pack(raw)

    @classmethod
    def decode(cls, text: str) -> BarPosition:
        bad = InvalidQueryError("cursor is not one a K2 bars subscription issued: pass back the last cursor unchanged")
        try:
            version, kind, interval, since, drop_cut, trades, marks = unpack(text)
            opened = {(str(s), str(e)): int(at) for s, e, at in marks}
        except (binascii.Error, UnicodeDecodeError, ValueError, TypeError):
            raise bad from None
        typed = (
            version == _VERSION
            and kind == "bars"
            and isinstance(interval, str)
            and (since is None or (isinstance(since, int) and not isinstance(since, bool)))
            and isinstance(drop_cut, bool)
            and (trades is None or isinstance(trades, str))
        )
        if not typed:
            raise bad
        return cls(interval, since, drop_cut, trades, opened)


def bar_batches(
    batches_from: Callable[[datetime | None, str | None], Iterator[SubscriptionBatch]],
    position: BarPosition,
    *,
    grace_seconds: float = GRACE_SECONDS,
    clock: Callable[[], float] = time.time,
) -> Iterator[SubscriptionBatch]:
    """Batches of bar rows (BAR_SCHEMA) from the trades batches `batches_from(since, trades_cursor)` gives,
    starting at `position`; each with the bars cursor that resumes after it and the trades batch's phase. Closing
    by the clock (`clock()`, seconds) happens only in live batches."""
    aggregator = BarAggregator(position.interval, position.since, position.drop_cut, dict(position.opened))
    since = datetime_from_micros(position.since) if position.since is not None else None
    before = position.trades
    grace_us = round(grace_seconds * 1_000_000)
    batches = batches_from(since if before is None else None, before)
    try:
        for batch in batches:
            late = aggregator.late
            rows = aggregator.add(batch.records, before)
            if aggregator.late > late:
                log.info("bars.late_trades", interval=position.interval, late=aggregator.late - late)
            if batch.phase == "live":
                rows += aggregator.close_due(round(clock() * 1_000_000), grace_us)
            rows += aggregator.forming()
            before = batch.cursor
            forming, resume = aggregator.resume()
            cursor = BarPosition(
                position.interval, position.since, position.drop_cut, resume if forming else before, aggregator.opened
            )
            yield SubscriptionBatch(bar_table(rows), cursor.encode(), batch.phase)
    finally:
        batches.close()  # type: ignore[attr-defined]


def subscribe_bars(
    engine: QueryEngine,
    kafka: Kafka,
    symbols: str | Sequence[str] | None,
    interval: str,
    *,
    exchange: str | None = None,
    since: datetime | None = None,
    cursor: str | None = None,
    options: SubscribeOptions = SubscribeOptions(),  # frozen: one shared default is safe
    grace_seconds: float = GRACE_SECONDS,
    live_hub: LiveHub | None = None,
) -> Iterator[SubscriptionBatch]:
    """Batches of bars of `interval` for `symbols` (1 to MAX_SYMBOLS) of `exchange` (None: all), built on the trades
    subscription: from `since` (the lake's trades first), else from the bar forming now; `cursor`: a batch's
    cursor, to resume after it. Never ends: close the iterator to stop. InvalidQueryError for bad arguments, a
    cursor of another interval, or (from the trades subscription) of other symbols or exchange."""
    names = symbol_list(symbols)
    if not names or len(names) > MAX_SYMBOLS:
        raise InvalidQueryError(f"a bars subscription needs 1 to {MAX_SYMBOLS} symbols: name them")
    width = parse_interval(interval)
    if cursor is not None:
        position = BarPosition.decode(cursor)
        if position.interval != width.text:
            raise InvalidQueryError(
                f"this cursor belongs to a bars subscription of interval {position.interval}: resume with that one"
            )
        if since is not None and micros_from_datetime(utc(since, "since")) != position.since:
            raise InvalidQueryError("the cursor carries its own since: leave since out when resuming, or pass the same")
    elif since is not None:
        position = BarPosition(width.text, micros_from_datetime(utc(since, "since")), False, None, {})
    else:  # from one interval back, so the bar forming now is whole; bars cut by that moment are not sent
        start_us = round(time.time() * 1_000_000) - width.seconds * 1_000_000
        position = BarPosition(width.text, start_us, True, None, {})

    def trades(start: datetime | None, trades_cursor: str | None) -> Iterator[SubscriptionBatch]:
        return subscribe(
            engine,
            kafka,
            "trades",
            names,
            exchange=exchange,
            since=start,
            cursor=trades_cursor,
            options=options,
            live_hub=live_hub,
        )

    return bar_batches(trades, position, grace_seconds=grace_seconds)
