"""The order book of one symbol at a moment, rebuilt from market_data.book_snapshots_v2 and book_updates_v2.

The book at T is the newest snapshot taken at or before T, then every update with a last_update_id above the
snapshot's and an event time at or before T; per side and price the update with the highest last_update_id wins,
quantity 0 removes the level. The updates are checked for continuity as the live book checks them: the first event
must have first_update_id <= snapshot + 1, each next one first_update_id == previous last_update_id + 1. A hole is
returned as `gap` (the book is then not exact: the levels the lost events changed may be wrong) — a later snapshot
is needed for an exact book, and one taken after the hole is what the query picks once T is past it.

Three parameterized DuckDB queries: the snapshot, the events' id chain, the levels. Each reads a bounded time range
so Iceberg's day partitions and file statistics skip the rest of the table: the snapshot is looked for in the hour
before T, then the day, 30 days, and only then in all the table; the updates from BRIDGE_MARGIN before the
snapshot was taken (the event that bridges it may carry an earlier venue time than the snapshot's receipt). Venue
ids grow with venue time, so an update the margin left out could only come before the first one read: when none
was read, or the first one does not bridge the snapshot, the updates are read again without the margin.

Snapshots are the venue's (full) and K2's checkpoints (k2.sources.binance.book_recorder), so with checkpoints on a
book replays at most about K2_BOOK_CHECKPOINT_SECONDS of updates. From the second book asked of one symbol-day on,
the day's rows are held in numpy arrays (k2.query.book_days: three queries once, then a binary search and a short
apply per book, the same answers), keyed by the tables' snapshot ids so a refresh never serves stale rows, at most
DAYS_KEPT symbol-days per engine. Measured on a 1 M-update day (bench/bench_book.py, 2 loaded cores): ~1 ms a book
held, ~220 ms by the queries, ~2 s to load the day.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from decimal import Decimal
from itertools import zip_longest
from typing import Any

import pyarrow as pa
from cachetools import LRUCache

from k2.lake.tables import table_identifier
from k2.query.book_days import DAY_US, DayBook
from k2.query.engine import QueryEngine, Reader
from k2.query.filters import InvalidQueryError, positive
from k2.query.timetravel import AsOf
from k2.schema.codecs import datetime_from_micros
from k2.schema.fields import (
    BOOK_SNAPSHOTS_V2,
    BOOK_UPDATES_V2,
    PRICE_PRECISION,
    PRICE_SCALE,
    BookSide,
    BookSnapshotType,
)

_SNAPSHOTS = table_identifier(BOOK_SNAPSHOTS_V2)
_UPDATES = table_identifier(BOOK_UPDATES_V2)

# Where to look for the snapshot before T, nearest first (None: the whole table).
SNAPSHOT_WINDOWS_US: tuple[int | None, ...] = (3_600_000_000, 86_400_000_000, 30 * 86_400_000_000, None)
BRIDGE_MARGIN_US = 600_000_000  # 10 minutes: clock skew plus the time diffs wait in a buffer for their snapshot
# The lower time bound of a query, or none: a constant clause, never text from a caller.
_SINCE = "AND timestamp >= $since"

# A partial book stream's top levels are no whole book; rows from before snapshot_type existed are full ones.
_STARTS_A_BOOK = f"coalesce(snapshot_type, '{BookSnapshotType.FULL}') <> '{BookSnapshotType.PARTIAL}'"

# A venue snapshot and a checkpoint at the same update id are different rows: the book starts from one of them (the
# venue's when both were taken at the same time).
_IS_FULL = f"coalesce(snapshot_type, '{BookSnapshotType.FULL}') = '{BookSnapshotType.FULL}'"

_SNAPSHOT_SQL = f"""
SELECT last_update_id, epoch_us(timestamp) AS taken_us, {_IS_FULL} AS is_full
FROM {_SNAPSHOTS}
WHERE symbol = $symbol AND exchange = $exchange AND timestamp <= $at {{since}} AND {_STARTS_A_BOOK}
ORDER BY timestamp DESC, last_update_id DESC, is_full DESC
LIMIT 1
"""

# One row per event (its levels share the ids); `before` is the previous event's last id, or the snapshot's.
_CHAIN_SQL = f"""
WITH events AS (
    SELECT DISTINCT first_update_id, last_update_id
    FROM {_UPDATES}
    WHERE symbol = $symbol AND exchange = $exchange AND last_update_id > $snapshot AND timestamp <= $at {{since}}
), chained AS (
    SELECT first_update_id, last_update_id,
           coalesce(lag(last_update_id) OVER (ORDER BY last_update_id), $snapshot) AS before
    FROM events
)
SELECT count(*) AS events,
       max(last_update_id) AS last_update_id,
       arg_min(first_update_id, last_update_id) AS first_update_id,
       min(before + 1) FILTER (WHERE first_update_id > before + 1) AS first_missing,
       arg_min(first_update_id - 1, last_update_id) FILTER (WHERE first_update_id > before + 1) AS last_missing
FROM chained
"""

_LEVELS_SQL = f"""
WITH levels AS (
    SELECT side, price, quantity, last_update_id AS seq
    FROM {_SNAPSHOTS}
    WHERE symbol = $symbol AND exchange = $exchange AND last_update_id = $snapshot AND {_STARTS_A_BOOK}
          AND ({_IS_FULL}) = $full
    UNION ALL
    SELECT side, price, quantity, last_update_id AS seq
    FROM {_UPDATES}
    WHERE symbol = $symbol AND exchange = $exchange AND last_update_id > $snapshot AND timestamp <= $at {{since}}
), latest AS (
    SELECT side, price, arg_max(quantity, seq) AS quantity FROM levels GROUP BY side, price
), ranked AS (
    SELECT side, price, quantity,
           CASE WHEN side = 'BID' THEN row_number() OVER (PARTITION BY side ORDER BY price DESC)
                ELSE row_number() OVER (PARTITION BY side ORDER BY price) END AS level
    FROM latest
    WHERE quantity > 0
)
SELECT side, level, price, quantity FROM ranked WHERE level <= $depth ORDER BY side DESC, level
"""


# A symbol-day's rows for k2.query.book_days, ordered as DayBook wants them.
_DAY_UPDATES_SQL = f"""
SELECT side = 'BID' AS bid, price, quantity, first_update_id, last_update_id, epoch_us(timestamp) AS ts
FROM {_UPDATES}
WHERE symbol = $symbol AND exchange = $exchange AND timestamp >= $since AND timestamp < $until
ORDER BY last_update_id, first_update_id
"""
_DAY_SNAPSHOTS_SQL = f"""
SELECT side = 'BID' AS bid, price, quantity, last_update_id, {_IS_FULL} AS is_full, epoch_us(timestamp) AS ts
FROM {_SNAPSHOTS}
WHERE symbol = $symbol AND exchange = $exchange AND timestamp >= $since AND timestamp < $until AND {_STARTS_A_BOOK}
ORDER BY last_update_id, is_full, ts
"""
_OLDER_UPDATE_SQL = f"""
SELECT count(*) > 0 AS found FROM (
    SELECT 1 FROM {_UPDATES}
    WHERE symbol = $symbol AND exchange = $exchange AND timestamp < $since AND last_update_id > $lowest
    LIMIT 1
)
"""

DAYS_KEPT = 4  # symbol-days held per engine (each up to ~100 MB for a busy day: see k2.query.book_days)


class _DayBooks:
    """Per engine, the symbol-days asked more than once, keyed by the table snapshots read (so never stale)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.days: LRUCache[tuple, DayBook] = LRUCache(maxsize=DAYS_KEPT)
        self.asked: LRUCache[tuple, int] = LRUCache(maxsize=256)


_DAY_BOOKS: weakref.WeakKeyDictionary[QueryEngine, _DayBooks] = weakref.WeakKeyDictionary()
_DAY_BOOKS_LOCK = threading.Lock()


def _day_book(engine: QueryEngine, reader: Reader, symbol: str, exchange: str, at_us: int) -> DayBook | None:
    """The symbol-day of `at_us`, loaded the second time it is asked for (a single book is cheaper by the three
    queries than by reading its whole day); None while it is not held."""
    snapshots = reader.snapshot_ids
    updates_at, snapshots_at = snapshots.get(BOOK_UPDATES_V2.name), snapshots.get(BOOK_SNAPSHOTS_V2.name)
    if updates_at is None or snapshots_at is None:
        return None
    day_us = at_us - at_us % DAY_US
    key = (exchange, symbol, day_us, updates_at, snapshots_at)
    with _DAY_BOOKS_LOCK:
        books = _DAY_BOOKS.get(engine)
        if books is None:
            books = _DAY_BOOKS[engine] = _DayBooks()
    with books.lock:
        if (held := books.days.get(key)) is not None:
            return held
        asked = books.asked[key] = books.asked.get(key, 0) + 1
    if asked < 2:
        return None
    loaded = DayBook.load(
        reader, (_DAY_UPDATES_SQL, _DAY_SNAPSHOTS_SQL, _OLDER_UPDATE_SQL), {"symbol": symbol, "exchange": exchange},
        day_us, BRIDGE_MARGIN_US,
    )  # fmt: skip
    with books.lock:
        books.days[key] = loaded
        books.asked.pop(key, None)
    return loaded


@dataclass(frozen=True)
class BookAt:
    """One symbol's book at `at_us`: the best `depth` levels per side, best first, with where it came from."""

    symbol: str
    exchange: str
    at_us: int
    snapshot_update_id: int  # the snapshot the book starts from
    snapshot_us: int  # when that snapshot was taken
    last_update_id: int  # the book's update id at `at_us` (the snapshot's when no update followed it yet)
    updates_applied: int  # diff events applied over the snapshot
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]
    gap: tuple[int, int] | None  # first and last missing update id of the first hole after the snapshot

    @property
    def exact(self) -> bool:
        return self.gap is None

    def describe(self) -> str:
        """One line on where the book came from, and whether it is exact."""
        text = (
            f"{self.symbol} on {self.exchange}: snapshot {self.snapshot_update_id} taken at"
            f" {datetime_from_micros(self.snapshot_us).isoformat()}, {self.updates_applied} update events after it,"
            f" book at update {self.last_update_id}"
        )
        if self.gap is not None:
            text += (
                f"; NOT EXACT: updates {self.gap[0]}..{self.gap[1]} are missing after the snapshot, so levels they"
                " changed may be wrong until the next snapshot"
            )
        return text


_PRICE = pa.decimal128(PRICE_PRECISION, PRICE_SCALE)
LADDER_SCHEMA = pa.schema(
    [
        pa.field("level", pa.int64(), nullable=False),
        pa.field("bid_quantity", _PRICE),
        pa.field("bid_price", _PRICE),
        pa.field("ask_price", _PRICE),
        pa.field("ask_quantity", _PRICE),
    ]
)


def ladder(book: BookAt) -> pa.Table:
    """The book side by side, best first: level, bid quantity and price, ask price and quantity (null past a side's
    last level)."""
    rows = [
        {
            "level": level,
            "bid_quantity": bid[1] if bid else None,
            "bid_price": bid[0] if bid else None,
            "ask_price": ask[0] if ask else None,
            "ask_quantity": ask[1] if ask else None,
        }
        for level, (bid, ask) in enumerate(zip_longest(book.bids, book.asks), start=1)
    ]
    return pa.Table.from_pylist(rows, schema=LADDER_SCHEMA)


def book_at(
    engine: QueryEngine,
    symbol: str,
    at_us: int,
    depth: int,
    *,
    exchange: str,
    as_of: AsOf = None,
    day_cache: bool = True,
) -> BookAt:
    """The book of `symbol` on `exchange` at `at_us` (integer microseconds UTC), `depth` levels per side.

    From the second book asked of a symbol-day on, the day's rows are held in memory (k2.query.book_days, at most
    DAYS_KEPT symbol-days per engine, keyed by the table snapshots read) and a book costs no query; `day_cache`
    False: always the queries. InvalidQueryError when no snapshot of the symbol was taken at or before `at_us`
    (the book is unknown then).
    """
    if not isinstance(symbol, str) or not symbol:
        raise InvalidQueryError(f"symbol must be a non-empty string, got {symbol!r}")
    if isinstance(at_us, bool) or not isinstance(at_us, int):
        raise InvalidQueryError(f"at_us must be integer microseconds UTC, got {at_us!r}")
    positive(depth, "depth")
    reader = engine.at(as_of)
    day = _day_book(engine, reader, symbol, exchange, at_us) if day_cache else None
    held = day.book(at_us, depth) if day is not None else None
    if held is not None:
        return BookAt(
            symbol=symbol,
            exchange=exchange,
            at_us=at_us,
            snapshot_update_id=held.snapshot_update_id,
            snapshot_us=held.snapshot_us,
            last_update_id=held.last_update_id,
            updates_applied=held.events,
            bids=held.bids,
            asks=held.asks,
            gap=held.gap,
        )
    at = datetime_from_micros(at_us)
    params = {"symbol": symbol, "exchange": exchange, "at": at}
    found = _newest_snapshot(reader, params, at_us)
    if found is None:
        raise InvalidQueryError(
            f"no order-book snapshot of {symbol} on {exchange} at or before {at.isoformat()}: the book is unknown"
            " before its first snapshot; ask for a later time"
        )
    snapshot, taken_us, full = found
    params |= {"snapshot": snapshot, "since": datetime_from_micros(taken_us - BRIDGE_MARGIN_US)}
    since = _SINCE
    chain = reader.sql(_CHAIN_SQL.format(since=since), params).to_pylist()[0]
    if not chain["events"] or chain["first_update_id"] > snapshot + 1:  # the bridge may be older: look again
        since = ""
        chain = reader.sql(_CHAIN_SQL.format(since=since), _without_since(params)).to_pylist()[0]
    levels_params = (params if since else _without_since(params)) | {"depth": depth, "full": full}
    levels = reader.sql(_LEVELS_SQL.format(since=since), levels_params).to_pylist()
    sides: dict[str, list[tuple[Decimal, Decimal]]] = {BookSide.BID.value: [], BookSide.ASK.value: []}
    for row in levels:
        sides[row["side"]].append((row["price"], row["quantity"]))
    gap = None if chain["first_missing"] is None else (chain["first_missing"], chain["last_missing"])
    return BookAt(
        symbol=symbol,
        exchange=exchange,
        at_us=at_us,
        snapshot_update_id=snapshot,
        snapshot_us=taken_us,
        last_update_id=chain["last_update_id"] or snapshot,
        updates_applied=chain["events"],
        bids=sides[BookSide.BID.value],
        asks=sides[BookSide.ASK.value],
        gap=gap,
    )


def _without_since(params: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in params.items() if name != "since"}


def _newest_snapshot(reader: Reader, params: dict[str, Any], at_us: int) -> tuple[int, int, bool] | None:
    """(last_update_id, taken_us, whether the venue's) of the newest snapshot at or before T, looking back further
    only when needed."""
    for window in SNAPSHOT_WINDOWS_US:
        if window is None:
            rows = reader.sql(_SNAPSHOT_SQL.format(since=""), params).to_pylist()
        else:
            since = {"since": datetime_from_micros(at_us - window)}
            rows = reader.sql(_SNAPSHOT_SQL.format(since=_SINCE), params | since).to_pylist()
        if rows:
            return rows[0]["last_update_id"], rows[0]["taken_us"], rows[0]["is_full"]
    return None
