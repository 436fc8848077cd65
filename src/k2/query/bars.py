"""OHLCV bars computed from trades, at any interval from 1 s to 1 d that tiles a day (1s, 5s, 1m, 15m, 1h, 4h, 1d).

Per (symbol, exchange, bar) — columns named as in the bars_v2 record, so stored and computed bars line up:
- timestamp: bar open, timestamp[us, tz=UTC]. Bars start at midnight of `tz` (default UTC) and tile its day; a
  daily bar of an ASX session needs tz="Australia/Sydney", since the session (10:00-16:00 AEDT) straddles 00:00 UTC.
- open/close: first/last trade in event order (timestamp, then source_sequence, then message_id), so trades in the
  same microsecond resolve the same way every time; high/low: max/min price. decimal128(18,8).
- volume: sum of quantity, decimal128(38,8); quote_volume: sum of price x quantity, exact, decimal128(38,16).
- vwap: quote_volume / volume rounded half-even to 8 places, decimal128(18,8) (it lies between low and high, so
  it always fits). DuckDB divides decimals in floating point, so the division is done here with Python's decimal
  at 100 significant digits: far beyond any tie, so the single rounding to 8 places is exact.
- trade_count: int64.
With `gap_fill`, bars with no trade appear from each series' first bar to the last bar before `end` (or its last
bar when `end` is None): open = high = low = close = the previous close, volume 0, vwap null, trade_count 0. Bars
before a series' first trade in the range are not made: there is no close to carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from functools import cache
from typing import Any
from zoneinfo import available_timezones

import pyarrow as pa

from k2.lake.tables import table_identifier
from k2.query.engine import QueryEngine
from k2.query.filters import InvalidQueryError, event_order, utc, where
from k2.query.market import Symbols
from k2.query.timetravel import AsOf
from k2.schema.fields import PRICE_PRECISION, PRICE_SCALE, TRADES_V2

_DAY_SECONDS = 86_400
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": _DAY_SECONDS}
_INTERVAL = re.compile(r"([1-9][0-9]*)([smhd])")
_EXAMPLES = "1s, 5s, 15s, 30s, 1m, 5m, 15m, 30m, 1h, 4h, 1d"
# A gap-filled series longer than this is almost certainly a mistake (a year of 1 s bars is 31.5 M rows).
MAX_FILLED_BARS = 2_000_000
# The grid of gap-fill candidates steps at most an hour, so a local bar shortened by a DST change is still hit.
_MAX_GRID_STEP = timedelta(hours=1)

_VWAP_TYPE = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
_VWAP_QUANTUM = Decimal(1).scaleb(-PRICE_SCALE)


@dataclass(frozen=True)
class Interval:
    text: str
    seconds: int

    @property
    def width(self) -> timedelta:
        return timedelta(seconds=self.seconds)


def parse_interval(text: str | Interval) -> Interval:
    """Parse e.g. "15m" -> Interval("15m", 900): a whole number of s/m/h/d from 1 s to 1 d that divides a day evenly."""
    if isinstance(text, Interval):
        return text
    match = _INTERVAL.fullmatch(text) if isinstance(text, str) else None
    seconds = int(match[1]) * _UNITS[match[2]] if match else 0
    if not match or seconds > _DAY_SECONDS or _DAY_SECONDS % seconds:
        raise InvalidQueryError(
            f"invalid bar interval {text!r}: use a number and s/m/h/d from 1s to 1d that divides a day evenly,"
            f" e.g. {_EXAMPLES}"
        )
    return Interval(text, seconds)


@cache
def _zones() -> frozenset[str]:
    return frozenset(available_timezones()) | {"UTC"}


def zone(tz: str) -> str:
    """An IANA time zone name, checked against the tz database (so only known names reach DuckDB)."""
    if tz not in _zones():
        raise InvalidQueryError(f"unknown time zone {tz!r}: use an IANA name such as UTC or Australia/Sydney")
    return tz


def bars(
    engine: QueryEngine,
    symbols: Symbols,
    interval: str | Interval,
    start: datetime | None,
    end: datetime | None,
    *,
    exchange: str | None = None,
    gap_fill: bool = False,
    tz: str = "UTC",
    as_of: AsOf = None,
) -> pa.Table:
    """Bars of the trades in [start, end), ordered by symbol, exchange, timestamp; columns in the module doc."""
    width = parse_interval(interval).width
    tz = zone(tz)
    condition, filter_params = where(symbols, start, end, exchange)
    order = event_order()
    params: list[Any] = [width, tz, *filter_params]
    # Inside the aggregates `timestamp` is the trade's own column (a column wins over a SELECT alias in DuckDB).
    aggregated = f"""
        SELECT symbol, exchange, time_bucket(?, timestamp, ?) AS timestamp,
            first(price ORDER BY {order}) AS open, max(price) AS high, min(price) AS low,
            last(price ORDER BY {order}) AS close, sum(quantity) AS volume,
            sum(CAST(price AS DECIMAL(38, 8)) * quantity) AS quote_volume, count(*) AS trade_count
        FROM {table_identifier(TRADES_V2)} WHERE {condition} GROUP BY ALL"""
    if gap_fill:
        query = _gap_filled(aggregated, params, width, tz, start, end)
    else:
        query = f"{aggregated} ORDER BY symbol, exchange, timestamp"
    table = engine.at(as_of).sql(query, params)
    vwap = _vwap(table.column("quote_volume"), table.column("volume"))
    return table.add_column(table.schema.get_field_index("quote_volume"), "vwap", vwap)


def _gap_filled(
    aggregated: str,
    params: list[Any],
    width: timedelta,
    tz: str,
    start: datetime | None,
    end: datetime | None,
) -> str:
    """The bars query with empty bars added; appends the extra parameters to `params`."""
    if start is not None and end is not None:
        bars_per_series = (utc(end, "end") - utc(start, "start")) // width
        if bars_per_series > MAX_FILLED_BARS:
            raise InvalidQueryError(
                f"gap fill would make {bars_per_series} bars per symbol (limit {MAX_FILLED_BARS}):"
                " use a longer interval or a shorter range"
            )
    last_bar = "max(timestamp)"
    if end is not None:
        # The bar holding the last microsecond before `end`, or the last real bar if later in the same bar.
        last_bar = "greatest(max(timestamp), time_bucket(?, ?::TIMESTAMPTZ - INTERVAL 1 MICROSECOND, ?))"
        params.extend([width, utc(end, "end"), tz])
    params.extend([min(width, _MAX_GRID_STEP), width, tz])
    return f"""
        WITH bars AS ({aggregated}),
        spans AS (SELECT symbol, exchange, min(timestamp) AS first_bar, {last_bar} AS last_bar FROM bars GROUP BY ALL),
        steps AS (
            SELECT symbol, exchange, unnest(generate_series(first_bar, last_bar, ?)) AS step FROM spans
        ),
        grid AS (SELECT DISTINCT symbol, exchange, time_bucket(?, step, ?) AS timestamp FROM steps),
        joined AS (
            SELECT g.symbol, g.exchange, g.timestamp, b.open, b.high, b.low, b.close, b.volume, b.quote_volume,
                b.trade_count,
                last_value(b.close IGNORE NULLS) OVER (
                    PARTITION BY g.symbol, g.exchange ORDER BY g.timestamp
                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
                ) AS carried
            FROM grid g LEFT JOIN bars b USING (symbol, exchange, timestamp)
        )
        SELECT symbol, exchange, timestamp,
            coalesce(open, carried) AS open, coalesce(high, carried) AS high, coalesce(low, carried) AS low,
            coalesce(close, carried) AS close, coalesce(volume, 0) AS volume,
            coalesce(quote_volume, 0) AS quote_volume, coalesce(trade_count, 0) AS trade_count
        FROM joined ORDER BY symbol, exchange, timestamp"""


def _vwap(quote_volume: pa.ChunkedArray, volume: pa.ChunkedArray) -> pa.Array:
    with localcontext() as context:
        context.prec = 100
        values = [
            None if not v else (q / v).quantize(_VWAP_QUANTUM, rounding=ROUND_HALF_EVEN)
            for q, v in zip(quote_volume.to_pylist(), volume.to_pylist(), strict=True)
        ]
    return pa.array(values, _VWAP_TYPE)
