"""OHLCV bars computed from trades, at any interval from 1 s to 1 d that tiles a day (1s, 5s, 1m, 15m, 1h, 4h, 1d).

Per (symbol, exchange, bar) — columns named as in the bars_v2 record, so stored and computed bars line up:
- timestamp: bar open, timestamp[us, tz=UTC]. Bars start at midnight of `tz` (default UTC) and tile its day; a
  daily bar of an ASX session needs tz="Australia/Sydney", since the session (10:00-16:00 AEDT) straddles 00:00 UTC.
  A daily bar is the whole local day (23 or 25 hours when DST changes) and opens at its local midnight. A shorter
  bar is `interval` of real time, on a grid through the zone's midnight of 3 January 2000 — DuckDB's and pandas'
  rule — so DST never stretches or merges bars: the hour a change repeats gives two 1h bars, and 4h bars in Sydney
  open at 00:00 local in summer, 23:00 in winter (pass tz="Australia/Brisbane", no DST, for a fixed grid).
- open/close: first/last trade in event order (timestamp, then source_sequence, then message_id), so trades in the
  same microsecond resolve the same way every time; high/low: max/min price. decimal128(18,8).
- volume: sum of quantity, decimal128(38,8); quote_volume: sum of price x quantity, exact, decimal128(38,16).
- vwap: quote_volume / volume rounded half-even to 8 places, decimal128(18,8) (it lies between low and high, so
  it always fits). DuckDB divides decimals in floating point, so the division is done here, exactly, on the
  unscaled integers.
- trade_count: int64.
With `gap_fill`, bars with no trade appear from each series' first bar to the last bar before `end` (or its last
bar when `end` is None): open = high = low = close = the previous close, volume 0, vwap null, trade_count 0. Bars
before a series' first trade in the range are not made: there is no close to carry.

Bars of whole minutes over a minute-aligned range are aggregated from one-minute partials the engine keeps per data
file and symbol (k2.query.minute_bars), not from the trades: the same values, ~10x faster once a file's are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import pyarrow as pa

from k2.lake.tables import table_identifier
from k2.query.engine import QueryEngine
from k2.query.filters import InvalidQueryError, event_order, symbol_list, utc, where
from k2.query.market import Symbols
from k2.query.minute_bars import (
    MINUTE_US,
    PARTIAL_AGGREGATES,
    SHIFT_US,
    TRADE_TOTALS,
    minute_partials,
    on_minute,
    one_minute_bars,
)
from k2.query.timetravel import AsOf
from k2.schema.fields import PRICE_PRECISION, PRICE_SCALE, TRADES_V2

_DAY_SECONDS = 86_400
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": _DAY_SECONDS}
_INTERVAL = re.compile(r"([1-9][0-9]*)([smhd])")
_EXAMPLES = "1s, 5s, 15s, 30s, 1m, 5m, 15m, 30m, 1h, 4h, 1d"
# A gap-filled series longer than this is almost certainly a mistake (a year of 1 s bars is 31.5 M rows).
MAX_FILLED_BARS = 2_000_000
# The grid of gap-fill candidates steps at most a quarter hour, so a bar shortened by a DST change is still hit.
_MAX_GRID_STEP = timedelta(minutes=15)

_PARTIALS = "_k2_minute_partials"  # the name the kept partials are registered under for one query
_ROW_AGGREGATES = f"""
    first(price ORDER BY {event_order()}) AS open, last(price ORDER BY {event_order()}) AS close, {TRADE_TOTALS}"""

_VWAP_TYPE = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)


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


_QUARTER_US = 900_000_000  # a quarter hour in microseconds
_DAY_US = 86_400_000_000
_ORIGIN = datetime(2000, 1, 3)  # DuckDB's time_bucket origin for intervals of days or less: a Monday midnight


@dataclass(frozen=True)
class _Buckets:
    ctes: str  # CTEs ending in the named one: the source rows plus `_bar`, an integer naming the row's bar
    params: list[Any]  # of `ctes`, in order
    opened: str  # SQL of the bar's opening instant from `_bar` (once per bar, after grouping)
    opened_params: list[Any]


def _bucketed(name: str, source: str, width_us: int, tz: str) -> _Buckets:
    """The rows of `source` (a query with a TIMESTAMPTZ `timestamp`) with their bar, placed exactly as DuckDB's
    time_bucket(width, timestamp, tz) places it.

    time_bucket with a zone costs ~10 us a row (a time zone lookup each), which made daily summaries ~10 s per
    million trades. Here no row needs one. A bar shorter than a day is `width` of real time on a grid through the
    zone's midnight of 3 January 2000: integer arithmetic on epoch microseconds (so DST neither stretches nor
    merges bars; in Sydney 4h bars open at 00:00 in summer, 23:00 in winter). A daily bar is the local calendar
    day: the zone's UTC offset is looked up once per quarter hour present (every tz database transition falls on
    one) and added before bucketing; the bar opens at the local midnight. Microseconds count from 1900 (a whole
    number of days before 1970) so they stay positive and DuckDB's % and //, which truncate toward zero, floor.
    """
    us = f"(epoch_us(timestamp) + {SHIFT_US})"
    if width_us < _DAY_US:
        origin = _ORIGIN.replace(tzinfo=ZoneInfo(tz)).astimezone(UTC) - datetime(1900, 1, 1, tzinfo=UTC)
        phase = (origin // timedelta(microseconds=1)) % width_us
        ctes = f"{name} AS (SELECT *, {us} - ({us} - {phase}) % {width_us} AS _bar FROM ({source}))"
        return _Buckets(ctes, [], f"timezone('UTC', make_timestamp(_bar - {SHIFT_US}))", [])
    ctes = f"""
        {name}_rows AS ({source}),
        {name}_offsets AS (
            SELECT _q,
                epoch_us(timezone(?, to_timestamp(_q * 900 - {SHIFT_US // 1_000_000})))
                    + {SHIFT_US} - _q * {_QUARTER_US} AS _offset
            FROM (SELECT DISTINCT {us} // {_QUARTER_US} AS _q FROM {name}_rows)
        ),
        {name} AS (
            SELECT r.*, ({us} + _offset) // {_DAY_US} * {_DAY_US} AS _bar
            FROM {name}_rows r JOIN {name}_offsets ON {us} // {_QUARTER_US} = _q
        )"""
    return _Buckets(ctes, [tz], f"timezone(?, make_timestamp(_bar - {SHIFT_US}))", [tz])


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
    width_us = width // timedelta(microseconds=1)
    reader = engine.at(as_of)
    names = symbol_list(symbols)
    partials = None
    if names and width_us % MINUTE_US == 0 and on_minute(start) and on_minute(end):
        partials = minute_partials(reader, names, start, end, exchange)
    if partials is not None and width_us == MINUTE_US and not gap_fill:
        whole = one_minute_bars(partials, names or [], start, end, exchange)
        if whole is not None:
            return _with_vwap(whole)
    if partials is not None:  # k2.query.minute_bars: the same bars from kept one-minute partials
        source, aggregates = f"SELECT * FROM {_PARTIALS} WHERE {condition}", PARTIAL_AGGREGATES
    else:
        source = (
            "SELECT symbol, exchange, timestamp, source_sequence, message_id, price, quantity "
            f"FROM {table_identifier(TRADES_V2)} WHERE {condition}"
        )
        aggregates = _ROW_AGGREGATES
    buckets = _bucketed("t", source, width_us, tz)
    params: list[Any] = [*filter_params, *buckets.params, *buckets.opened_params]
    # Inside the aggregates `timestamp` is the row's own column; the bar's opening instant is worked out per bar.
    aggregated = f"""
        WITH {buckets.ctes},
        per_bar AS (SELECT symbol, exchange, _bar, {aggregates} FROM t GROUP BY symbol, exchange, _bar)
        SELECT symbol, exchange, {buckets.opened} AS timestamp,
            open, high, low, close, volume, quote_volume, trade_count
        FROM per_bar"""
    if gap_fill:
        query = _gap_filled(aggregated, params, width_us, tz, start, end)
    else:
        query = f"{aggregated} ORDER BY symbol, exchange, timestamp"
    table = reader.sql(query, params) if partials is None else reader.sql_over({_PARTIALS: partials}, query, params)
    return _with_vwap(table)


def _with_vwap(table: pa.Table) -> pa.Table:
    vwap = _vwap(table.column("quote_volume"), table.column("volume"))
    return table.add_column(table.schema.get_field_index("quote_volume"), "vwap", vwap)


def _gap_filled(
    aggregated: str,
    params: list[Any],
    width_us: int,
    tz: str,
    start: datetime | None,
    end: datetime | None,
) -> str:
    """The bars query with empty bars added; appends the extra parameters to `params`.

    Candidate bars come from instants stepping through each series' span (at most a quarter hour apart, so no
    bar shortened by a DST change is skipped), bucketed exactly as the trades are."""
    width = timedelta(microseconds=width_us)
    if start is not None and end is not None:
        bars_per_series = (utc(end, "end") - utc(start, "start")) // width
        if bars_per_series > MAX_FILLED_BARS:
            raise InvalidQueryError(
                f"gap fill would make {bars_per_series} bars per symbol (limit {MAX_FILLED_BARS}):"
                " use a longer interval or a shorter range"
            )
    # Up to the last microsecond before `end` (its bar is then among the candidates), else the last real bar.
    last = "max(timestamp)"
    if end is not None:
        last = "greatest(max(timestamp), ?::TIMESTAMPTZ)"
        params.append(utc(end, "end") - timedelta(microseconds=1))
    steps = "SELECT symbol, exchange, unnest(generate_series(first_bar, last_moment, ?)) AS timestamp FROM spans"
    buckets = _bucketed("steps", steps, width_us, tz)
    params.extend([min(width, _MAX_GRID_STEP), *buckets.params, *buckets.opened_params])
    return f"""
        WITH bars AS ({aggregated}),
        spans AS (SELECT symbol, exchange, min(timestamp) AS first_bar, {last} AS last_moment FROM bars GROUP BY ALL),
        {buckets.ctes},
        grid AS (
            SELECT symbol, exchange, {buckets.opened} AS timestamp
            FROM (SELECT DISTINCT symbol, exchange, _bar FROM steps)
        ),
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
    """quote_volume / volume rounded half-even to 8 places, null where volume is 0 or null.

    On the unscaled integers: quote_volume has scale 16 and volume scale 8, so q / v is the VWAP in units of
    1e-8 and one integer division with half-even rounding of its remainder is the exact answer (~1 us a bar,
    where Decimal division took ~3 us)."""
    quotients = [
        None if q is None or not v else _divide_half_even(q, v)
        for q, v in zip(_unscaled(quote_volume), _unscaled(volume), strict=True)
    ]
    data = b"".join((q or 0).to_bytes(16, "little", signed=True) for q in quotients)
    validity = None
    if None in quotients:
        validity = pa.array([q is not None for q in quotients], pa.bool_()).buffers()[1]
    return pa.Array.from_buffers(_VWAP_TYPE, len(quotients), [validity, pa.py_buffer(data)])


def _divide_half_even(dividend: int, divisor: int) -> int:
    if divisor < 0:
        dividend, divisor = -dividend, -divisor
    quotient, remainder = divmod(dividend, divisor)  # floor: 0 <= remainder < divisor
    if 2 * remainder > divisor or (2 * remainder == divisor and quotient % 2):
        quotient += 1
    return quotient


def _unscaled(column: pa.ChunkedArray) -> list[int | None]:
    """A decimal128 column's unscaled integers (None for nulls), read from its 16-byte little-endian values."""
    array = column.combine_chunks()
    raw = memoryview(array.buffers()[1])[array.offset * 16 : (array.offset + len(array)) * 16]
    values: list[int | None] = [int.from_bytes(raw[i : i + 16], "little", signed=True) for i in range(0, len(raw), 16)]
    if array.null_count:
        values = [v if ok else None for v, ok in zip(values, array.is_valid().to_pylist(), strict=True)]
    return values
