"""One-minute partial bars per (data file, symbol): what makes bars of whole minutes fast.

A bars query over raw trades spends most of its time in the ordered `first`/`last` aggregates (a sort per bar):
130 ms for the 600k trades of one busy symbol-day on the bench lake. But data files never change (maintenance
replaces them, never edits them), so a symbol's one-minute aggregates in one file, once computed, stay true. The
engine keeps them (`Reader.file_fact`), and bars of any whole number of minutes over a minute-aligned range are then
aggregates of these partials: a few thousand rows instead of hundreds of thousands.

Partials are of the trades a bars query counts (its condition and venue filter is part of the kept query, so each
filter has its own). Each partial carries what makes the combination exact, not approximate:
- open/close with the event-order key (timestamp, sequence key, message_id) of the trade they came from, so the
  first and last trade of a bar spread over several files are chosen exactly as over the rows;
- high/low, volume, quote_volume (price x quantity summed in DECIMAL(38, 16)) and trade_count, which add up.
Every UTC minute lies inside one bar of every whole-minute interval in every zone (offsets are whole minutes since
1972 in the tz database), so no partial straddles two bars.

One-minute bars need no aggregation at all when no minute of a pair is split across files (each partial is then
a bar): `one_minute_bars` filters and sorts the partials (~2 ms for a symbol-day on the bench lake, where the
aggregation query costs ~6 ms).

Not used (the raw query runs) when: the interval is not whole minutes, start or end is not on a minute, no symbol
is named, the snapshot has delete files (a partial read from a data file alone would count deleted rows), or too
many files would need computing first (a wide first query is cheaper over the rows, with pruning).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from k2.query.engine import Reader
from k2.query.filters import select_rows, sequence_order, utc
from k2.query.market import files_holding
from k2.schema.codecs import micros_from_datetime
from k2.schema.fields import TRADES_V2

MINUTE_US = 60_000_000
# Microseconds from 1900-01-01 to 1970-01-01, added before integer bucketing so instants stay positive and DuckDB's
# % and // (which truncate toward zero) floor.
SHIFT_US = 25_567 * 86_400_000_000
# Totals of a group of trades, the same whether it is a bar or a one-minute partial (quote volume exact).
TRADE_TOTALS = """max(price) AS high, min(price) AS low, sum(quantity) AS volume,
    sum(CAST(price AS DECIMAL(38, 8)) * quantity) AS quote_volume, count(*) AS trade_count"""
# First queries over more files than this read the rows instead (each file's partials cost a scan of its symbol).
MAX_FILES_TO_COMPUTE = 64

# The first/last trade of each minute as one struct, so one ordered aggregate carries price and its order key.
_KEY = f"timestamp, {sequence_order()}, message_id"
_EDGE = f"struct_pack(price := price, ts := timestamp, seq := {sequence_order()}, id := message_id)"


def file_partials_query(counted: str = "TRUE") -> str:
    """The one-minute partials of one symbol (its `?`) in one data file, of the trades `counted` (a SQL condition
    over trades_v2 columns, k2.query.bars.counted_trades) selects: each filter is its own kept fact."""
    return f"""
    SELECT symbol, exchange, timezone('UTC', make_timestamp(minute_us - {SHIFT_US})) AS timestamp,
        first_trade.price AS open, first_trade.ts AS open_timestamp, first_trade.seq AS open_sequence,
        first_trade.id AS open_message_id,
        last_trade.price AS close, last_trade.ts AS close_timestamp, last_trade.seq AS close_sequence,
        last_trade.id AS close_message_id,
        high, low, volume, quote_volume, trade_count
    FROM (
        SELECT symbol, exchange, (epoch_us(timestamp) + {SHIFT_US}) // {MINUTE_US} * {MINUTE_US} AS minute_us,
            first({_EDGE} ORDER BY {_KEY}) AS first_trade, last({_EDGE} ORDER BY {_KEY}) AS last_trade,
            {TRADE_TOTALS}
        FROM read_parquet(?) WHERE symbol = ? AND ({counted}) GROUP BY ALL
    )"""


# Bars from partials: the same columns the row aggregates in k2.query.bars give.
PARTIAL_AGGREGATES = """
    first(open ORDER BY open_timestamp, open_sequence, open_message_id) AS open, max(high) AS high,
    min(low) AS low, last(close ORDER BY close_timestamp, close_sequence, close_message_id) AS close,
    sum(volume) AS volume, sum(quote_volume) AS quote_volume, CAST(sum(trade_count) AS BIGINT) AS trade_count"""


def on_minute(moment: datetime | None) -> bool:
    """True for None (an open end) or an instant on a whole UTC minute."""
    return moment is None or micros_from_datetime(utc(moment, "moment")) % MINUTE_US == 0


def minute_partials(
    reader: Reader,
    symbols: list[str],
    start: datetime | None,
    end: datetime | None,
    exchange: str | None,
    counted: tuple[str, list[Any]] = ("TRUE", []),
    computed_limit: int = MAX_FILES_TO_COMPUTE,
) -> pa.Table | None:
    """The one-minute partials of `symbols`' trades in every data file whose partition may hold [start, end), or
    None when they cannot stand in for the rows (delete files) or would first need more than `computed_limit`
    (file, symbol) scans. `counted`: the SQL condition (and its parameters) selecting the trades bars count.

    Partials outside [start, end) or of another exchange may be in the result: the caller filters them with the
    same condition it would put on the rows (exact, since start and end are on a minute)."""
    if reader.layout(TRADES_V2.name).has_deletes:
        return None
    pairs = [
        (file.path, symbol)
        for file, held in files_holding(reader, TRADES_V2.name, symbols, exchange, start, end)
        for symbol in sorted(held)
    ]
    query = file_partials_query(counted[0])
    queries = [(path, query, [symbol, *counted[1]]) for path, symbol in pairs]
    if len(queries) > computed_limit and sum(not reader.has_file_fact(*query) for query in queries) > computed_limit:
        return None
    parts = [reader.file_fact(*query) for query in queries]
    return pa.concat_tables(parts) if parts else None


_BAR_COLUMNS = [
    "symbol",
    "exchange",
    "timestamp",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "quote_volume",
    "trade_count",
]
_BAR_ORDER = [("symbol", "ascending"), ("exchange", "ascending"), ("timestamp", "ascending")]


def one_minute_bars(
    partials: pa.Table, symbols: list[str], start: datetime | None, end: datetime | None, exchange: str | None
) -> pa.Table | None:
    """One-minute bars (UTC grid: every zone's is the same) of [start, end) straight from the partials, when no
    (symbol, exchange, minute) has partials in two files: each partial is then a whole bar, and the aggregation
    query is not needed. None when some minute is split across files (the caller aggregates)."""
    rows = select_rows(partials, symbols, start, end, exchange).select(_BAR_COLUMNS).sort_by(_BAR_ORDER)
    if rows.num_rows > 1:
        before, after = rows.slice(0, rows.num_rows - 1), rows.slice(1)
        same = [pc.equal(before[name], after[name]) for name in ("symbol", "exchange", "timestamp")]
        if pc.any(pc.and_(pc.and_(same[0], same[1]), same[2])).as_py():
            return None
    return rows
