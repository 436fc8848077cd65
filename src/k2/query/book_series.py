"""One symbol's top-of-book over time, replayed forward: a series at interval boundaries, and trades joined to the
book that stood strictly before each of them.

`book_series`: at every multiple of `every` (counted from the UTC epoch, so 1m boundaries fall on whole minutes) in
[start, end), the book as `book_at` gives it at that microsecond. `trades_with_book`: each trade of [start, end) with
the book as `book_at` gives it one microsecond before the trade (an update at the trade's own instant may already
reflect it). Columns, per row:
- bid_price, bid_quantity, ask_price, ask_quantity: the best level of each side, decimal(18,8), null for an empty side;
- mid = (bid + ask) / 2, decimal(19,9) (exact: halving an 8-place price needs one more place);
- spread = ask - bid, decimal(19,8);
- bid_depth, ask_depth: the quantity summed over the top `depth` levels of each side, decimal(38,8);
- imbalance = (bid_depth - ask_depth) / (bid_depth + ask_depth), rounded half-even to 10 places, decimal(11,10);
- book_update_id (the update id the book reflects) and book_exact (false after a hole in the update ids, until the
  next snapshot); all of these null where no snapshot precedes the row (the book is unknown there).

How: `book_at` once at the first moment (every level), then the updates of the range read in one parameterized
query and applied forward in (time, update id) order, per side a sorted dict of price levels; a snapshot taken
inside the range starts the book again from `book_at` at its time (what `book_at` itself would pick from then on).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from itertools import islice, pairwise

import pyarrow as pa
from sortedcontainers import SortedDict

from k2.lake.tables import table_identifier
from k2.query.bars import parse_interval
from k2.query.book import BookAt, book_at
from k2.query.engine import QueryEngine, Reader
from k2.query.filters import InvalidQueryError, positive, utc, where
from k2.query.timetravel import AsOf
from k2.schema.codecs import datetime_from_micros, micros_from_datetime
from k2.schema.fields import (
    BOOK_SNAPSHOTS_V2,
    BOOK_UPDATES_V2,
    PRICE_PRECISION,
    PRICE_SCALE,
    TRADES_V2,
    BookSide,
    BookSnapshotType,
)

MAX_SERIES_POINTS = 100_000  # boundaries one series may have: a day of 1 s books
IMBALANCE_SCALE = 10
_WHOLE_BOOK = 2**62  # book_at's depth for "every level"

_PRICE = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
_MID = pa.decimal128(19, 9)
_SPREAD = pa.decimal128(19, 8)
_DEPTH = pa.decimal128(38, 8)
_IMBALANCE = pa.decimal128(IMBALANCE_SCALE + 1, IMBALANCE_SCALE)
_IMBALANCE_STEP = Decimal(1).scaleb(-IMBALANCE_SCALE)
_MID_STEP = Decimal(1).scaleb(-9)

TOP_OF_BOOK_FIELDS = [
    pa.field("bid_price", _PRICE),
    pa.field("bid_quantity", _PRICE),
    pa.field("ask_price", _PRICE),
    pa.field("ask_quantity", _PRICE),
    pa.field("mid", _MID),
    pa.field("spread", _SPREAD),
    pa.field("bid_depth", _DEPTH),
    pa.field("ask_depth", _DEPTH),
    pa.field("imbalance", _IMBALANCE),
    pa.field("book_update_id", pa.int64()),
    pa.field("book_exact", pa.bool_()),
]
LEVELS_SCHEMA = pa.schema(
    [
        pa.field("side", pa.string(), nullable=False),
        pa.field("level", pa.int64(), nullable=False),
        pa.field("price", _PRICE, nullable=False),
        pa.field("quantity", _PRICE, nullable=False),
        pa.field("book_update_id", pa.int64(), nullable=False),
        pa.field("snapshot_update_id", pa.int64(), nullable=False),
        pa.field("snapshot_timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("updates_applied", pa.int64(), nullable=False),
        pa.field("book_exact", pa.bool_(), nullable=False),
        pa.field("gap_first_update_id", pa.int64()),
        pa.field("gap_last_update_id", pa.int64()),
    ]
)
SERIES_SCHEMA = pa.schema([pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False), *TOP_OF_BOOK_FIELDS])

# A partial book stream's top levels are no whole book; rows from before snapshot_type existed are full ones.
_SNAPSHOTS_SQL = f"""
SELECT DISTINCT epoch_us(timestamp) AS taken_us
FROM {table_identifier(BOOK_SNAPSHOTS_V2)}
WHERE symbol = $symbol AND exchange = $exchange AND timestamp > $after AND timestamp <= $until
  AND coalesce(snapshot_type, '{BookSnapshotType.FULL}') <> '{BookSnapshotType.PARTIAL}'
ORDER BY taken_us
"""
_UPDATES_SQL = f"""
SELECT epoch_us(timestamp) AS at_us, first_update_id, last_update_id, side, price, quantity
FROM {table_identifier(BOOK_UPDATES_V2)}
WHERE symbol = $symbol AND exchange = $exchange AND timestamp > $after AND timestamp <= $until
ORDER BY at_us, last_update_id
"""


@dataclass(frozen=True)
class TopOfBook:
    """The top `depth` levels per side, best first, and the update id the book reflects."""

    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]
    last_update_id: int
    exact: bool

    def row(self) -> dict[str, object]:
        """The TOP_OF_BOOK_FIELDS of this book."""
        bid_price, bid_quantity = self.bids[0] if self.bids else (None, None)
        ask_price, ask_quantity = self.asks[0] if self.asks else (None, None)
        bid_depth = sum((quantity for _, quantity in self.bids), Decimal(0))
        ask_depth = sum((quantity for _, quantity in self.asks), Decimal(0))
        total = bid_depth + ask_depth
        quoted = bid_price is not None and ask_price is not None
        return {
            "bid_price": bid_price,
            "bid_quantity": bid_quantity,
            "ask_price": ask_price,
            "ask_quantity": ask_quantity,
            "mid": ((bid_price + ask_price) / 2).quantize(_MID_STEP) if quoted else None,  # exact: one more place
            "spread": ask_price - bid_price if quoted else None,
            "bid_depth": bid_depth,
            "ask_depth": ask_depth,
            "imbalance": ((bid_depth - ask_depth) / total).quantize(_IMBALANCE_STEP, ROUND_HALF_EVEN)
            if total
            else None,
            "book_update_id": self.last_update_id,
            "book_exact": self.exact,
        }


_UNKNOWN = dict.fromkeys(field.name for field in TOP_OF_BOOK_FIELDS)


# book_at looks up to 30 days back for a snapshot: an instant closer than that to year 1 has no date to look from.
_EARLIEST_US = micros_from_datetime(datetime(1, 2, 1, tzinfo=UTC))


def _check_instant(at_us: int) -> None:
    if at_us < _EARLIEST_US:
        raise InvalidQueryError(
            f"{datetime_from_micros(at_us).isoformat()} is before 0001-02-01: no order book is that old, ask for a"
            " later time"
        )


def book_levels(
    engine: QueryEngine, symbol: str, at_us: int, depth: int, *, exchange: str, as_of: AsOf = None
) -> pa.Table:
    """`book_at`'s book as a table of levels (levels_table)."""
    _check_instant(at_us)
    return levels_table(book_at(engine, symbol, at_us, depth, exchange=exchange, as_of=as_of))


def levels_table(book: BookAt) -> pa.Table:
    """A `book_at` book as rows (LEVELS_SCHEMA): side (BID, then ASK), level (1 = best), price, quantity, each with
    where the book came from: its update id, the snapshot it started from, and whether it is exact (else the first
    hole's update ids)."""
    gap_first, gap_last = book.gap or (None, None)
    where_from = {
        "book_update_id": book.last_update_id,
        "snapshot_update_id": book.snapshot_update_id,
        "snapshot_timestamp": book.snapshot_us,
        "updates_applied": book.updates_applied,
        "book_exact": book.exact,
        "gap_first_update_id": gap_first,
        "gap_last_update_id": gap_last,
    }
    rows = [
        {"side": side.value, "level": level, "price": price, "quantity": quantity, **where_from}
        for side, levels in ((BookSide.BID, book.bids), (BookSide.ASK, book.asks))
        for level, (price, quantity) in enumerate(levels, start=1)
    ]
    return pa.Table.from_pylist(rows, schema=LEVELS_SCHEMA)


class _Book:
    """A whole book, changed level by level, that follows the update ids' continuity as book_at checks it."""

    def __init__(self, seed: BookAt) -> None:
        self.snapshot = seed.snapshot_update_id
        self.last_update_id = seed.last_update_id
        self.exact = seed.exact
        self.bids: SortedDict = SortedDict({-price: quantity for price, quantity in seed.bids})
        self.asks: SortedDict = SortedDict(dict(seed.asks))

    def apply(self, first: int, last: int, side: str, price: Decimal, quantity: Decimal) -> None:
        if last <= self.snapshot:
            return  # already in the snapshot
        if last != self.last_update_id:  # a new event: it must follow on from the previous one
            if first > self.last_update_id + 1:
                self.exact = False
            self.last_update_id = max(self.last_update_id, last)
        levels, key = (self.bids, -price) if side == BookSide.BID.value else (self.asks, price)
        if quantity:
            levels[key] = quantity
        else:
            levels.pop(key, None)

    def top(self, depth: int) -> TopOfBook:
        bids = [(-price, quantity) for price, quantity in islice(self.bids.items(), depth)]
        return TopOfBook(bids, list(islice(self.asks.items(), depth)), self.last_update_id, self.exact)


def books_at(
    engine: QueryEngine,
    symbol: str,
    times_us: Sequence[int],
    depth: int,
    *,
    exchange: str,
    as_of: AsOf = None,
) -> Iterator[TopOfBook | None]:
    """The top `depth` levels of the book at each of `times_us` (ascending integer microseconds UTC), each what
    `book_at` gives at that time; None for a time before the symbol's first snapshot. InvalidQueryError when no
    snapshot precedes the last time."""
    where([symbol], exchange=exchange)  # a bad symbol or exchange is refused here, not taken for a missing book
    positive(depth, "depth")
    if not times_us:
        return
    if any(later < earlier for earlier, later in pairwise(times_us)):
        raise InvalidQueryError("times_us must be in ascending order")
    first, last = times_us[0], times_us[-1]
    _check_instant(first)
    reader = engine.at(as_of)
    params = {"symbol": symbol, "exchange": exchange, "after": _moment(first), "until": _moment(last)}
    restarts = [row["taken_us"] for row in reader.sql(_SNAPSHOTS_SQL, params).to_pylist()]
    try:
        book: _Book | None = _Book(book_at(engine, symbol, first, _WHOLE_BOOK, exchange=exchange, as_of=as_of))
    except InvalidQueryError:  # the symbol and exchange were checked: no snapshot at or before the first time
        if not restarts:
            raise InvalidQueryError(
                f"no order-book snapshot of {symbol} on {exchange} at or before {_moment(last).isoformat()}: the book"
                " is unknown before its first snapshot; ask for a later time"
            ) from None
        book = None
    updates = _updates(reader, params)
    at_us, first_ids, last_ids, sides, prices, quantities = updates
    position, count = 0, len(at_us)
    for moment in times_us:
        while restarts and restarts[0] <= moment:  # book_at picks this snapshot from its time on
            taken = restarts.pop(0)
            book = _Book(book_at(engine, symbol, taken, _WHOLE_BOOK, exchange=exchange, as_of=as_of))
            while position < count and at_us[position] <= taken:
                position += 1
        while position < count and at_us[position] <= moment:
            if book is not None:
                book.apply(
                    first_ids[position], last_ids[position], sides[position], prices[position], quantities[position]
                )
            position += 1
        yield None if book is None else book.top(depth)


def _moment(micros: int) -> datetime:
    try:
        return datetime_from_micros(micros)
    except (OverflowError, ValueError):
        raise InvalidQueryError(f"{micros} microseconds is outside years 1-9999: use a real instant") from None


def _updates(reader: Reader, params: dict[str, object]) -> list[list]:
    """The update rows after the first time up to the last, in (time, update id) order, as plain column lists."""
    rows = reader.sql(_UPDATES_SQL, params)
    return [
        rows[name].to_pylist() for name in ("at_us", "first_update_id", "last_update_id", "side", "price", "quantity")
    ]


def book_series(
    engine: QueryEngine,
    symbol: str,
    start: datetime,
    end: datetime,
    every: str,
    depth: int,
    *,
    exchange: str,
    as_of: AsOf = None,
) -> pa.Table:
    """The book of `symbol` at every `every` boundary (1s .. 1d) in [start, end); SERIES_SCHEMA, module doc."""
    where([symbol], start, end, exchange)  # refuses a bad symbol, exchange or range before anything is read
    positive(depth, "depth")
    try:
        width = parse_interval(every).width
    except InvalidQueryError:  # its message speaks of bars
        raise InvalidQueryError(
            f"invalid series interval {every!r}: use a number and s/m/h/d from 1s to 1d that divides a day evenly,"
            " e.g. 1s, 10s, 1m, 1h"
        ) from None
    width_us = int(width.total_seconds()) * 1_000_000
    low, high = micros_from_datetime(utc(start, "start")), micros_from_datetime(utc(end, "end"))
    first = -(-low // width_us) * width_us
    points = max(0, -(-(high - first) // width_us))
    if points > MAX_SERIES_POINTS:
        raise InvalidQueryError(
            f"the series would have {points} books (at most {MAX_SERIES_POINTS}): use a longer interval or a shorter"
            " range"
        )
    times = [first + i * width_us for i in range(points)]
    rows = [
        {"timestamp": moment, **(_UNKNOWN if top is None else top.row())}
        for moment, top in zip(
            times, books_at(engine, symbol, times, depth, exchange=exchange, as_of=as_of), strict=True
        )
    ]
    return pa.Table.from_pylist(rows, schema=SERIES_SCHEMA)


_TRADE_COLUMNS = (
    "timestamp", "symbol", "exchange", "trade_id", "message_id", "source_sequence", "price", "quantity", "side"
)  # fmt: skip


def trades_with_book(
    engine: QueryEngine,
    symbol: str,
    start: datetime,
    end: datetime,
    depth: int,
    *,
    exchange: str,
    as_of: AsOf = None,
) -> pa.Table:
    """Each trade of `symbol` on `exchange` in [start, end), in event order, with the book that stood strictly before
    it: the trade's columns as k2.query.asof gives them, then TOP_OF_BOOK_FIELDS (module doc)."""
    condition, params = where([symbol], start, end, exchange)
    positive(depth, "depth")
    trades = engine.at(as_of).sql(
        f"SELECT {', '.join(_TRADE_COLUMNS)} FROM {table_identifier(TRADES_V2)} WHERE {condition}"
        " ORDER BY timestamp, source_sequence NULLS LAST, message_id",
        params,
    )
    before = [moment - 1 for moment in trades["timestamp"].cast(pa.int64()).to_pylist()]
    tops = books_at(engine, symbol, before, depth, exchange=exchange, as_of=as_of) if before else iter(())
    books = [_UNKNOWN if top is None else top.row() for top in tops]
    columns = {name: trades[name] for name in _TRADE_COLUMNS}
    for field in TOP_OF_BOOK_FIELDS:
        columns[field.name] = pa.array([book[field.name] for book in books], type=field.type)
    return pa.table(columns)
