"""One symbol-day of order-book rows held in numpy arrays, so a book at any instant of the day is a binary search
for its snapshot and a short apply of the updates after it, with no query.

`DayBook.load` reads, in parameterized queries, the day's book_updates_v2 rows (from BRIDGE_MARGIN_US before
midnight, so an update bridging a snapshot taken just after midnight is held) and the day's book_snapshots_v2 rows
that start a book (venue snapshots and checkpoints). Prices and quantities are decimal128(18, 8): held as their
unscaled int64 values (18 digits fit), turned back into the same Decimals for the levels returned.

A third query asks whether any update before the held rows has an update id above the day's lowest snapshot id
(the tables' column bounds leave it the few files around the day): when none has, an update the margin left out is
held too, as the queries' second read without the margin would find it. `DayBook.book` answers exactly what
k2.query.book's queries answer, or None when the day alone cannot tell (no snapshot at or before T in the day, or
an earlier update that could bridge the snapshot is not held).

Memory: ~25 bytes per update row, ~33 per update event and ~17 per snapshot level (a day of 1 M update rows and
1,440 checkpoints of 2,000 levels: ~90 MB); k2.query.book keeps at most DAYS_KEPT symbol-days per engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa

from k2.query.engine import Reader
from k2.schema.codecs import datetime_from_micros
from k2.schema.fields import PRICE_SCALE, BookSide

DAY_US = 86_400_000_000


@dataclass(frozen=True)
class Book:
    """What book_at needs of one answer (the same fields its queries give)."""

    snapshot_update_id: int
    snapshot_us: int
    last_update_id: int
    events: int
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]
    gap: tuple[int, int] | None


def _ints(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """int64 values of an int64, bool or timestamp column; decimal128(18, 8) as its unscaled integers."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_decimal(array.type):
        # Little-endian 128-bit two's complement: the low 64 bits hold the whole value for 18 digits.
        words = np.frombuffer(array.buffers()[1], dtype="<i8", count=2 * (array.offset + len(array)))
        return words[2 * array.offset :: 2].copy()
    return array.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def _decimal(unscaled: int) -> Decimal:
    return Decimal(unscaled).scaleb(-PRICE_SCALE)


@dataclass(frozen=True)
class _Levels:
    """Price-level rows: side (1 bid, 0 ask), unscaled price and quantity, in groups given by `starts`."""

    bid: np.ndarray
    price: np.ndarray
    quantity: np.ndarray
    starts: np.ndarray  # group i is rows starts[i]..starts[i+1]

    @classmethod
    def grouped(cls, table: pa.Table, keys: list[str]) -> tuple[_Levels, dict[str, np.ndarray]]:
        """Rows sorted by `keys`, grouped where the keys change; the keys' value per group."""
        columns = {key: _ints(table[key]) for key in keys}
        n = table.num_rows
        change = np.zeros(n, dtype=bool)
        if n:
            change[0] = True
            for values in columns.values():
                change[1:] |= values[1:] != values[:-1]
        starts = np.flatnonzero(change)
        levels = cls(_ints(table["bid"]), _ints(table["price"]), _ints(table["quantity"]), np.append(starts, n))
        return levels, {key: values[starts] for key, values in columns.items()}

    def rows(self, groups: np.ndarray) -> np.ndarray:
        """Row indices of the given groups (ascending group numbers), in order."""
        begin, end = self.starts[groups], self.starts[groups + 1]
        counts = end - begin
        if not len(counts):
            return np.zeros(0, dtype=np.int64)
        offsets = np.repeat(begin - np.cumsum(counts) + counts, counts)
        return offsets + np.arange(counts.sum())


class DayBook:
    """The book rows of one symbol on one exchange for one UTC day (see the module doc)."""

    def __init__(self, updates: pa.Table, snapshots: pa.Table, margin_us: int, complete: bool) -> None:
        """`updates` sorted by last_update_id, first_update_id; `snapshots` by last_update_id, is_full, taken_us;
        `complete`: no update before the held ones has an id above a held snapshot's."""
        self.margin_us = margin_us
        self.complete = complete
        self.updates, events = _Levels.grouped(updates, ["last_update_id", "first_update_id"])
        self.event_last = events["last_update_id"]
        self.event_first = events["first_update_id"]
        starts = self.updates.starts[:-1]
        self.event_us = _ints(updates["ts"])[starts] if len(starts) else np.zeros(0, dtype=np.int64)
        # min of the event times from each event on: the events at or before T all come before the first index
        # where it passes T, whatever the order of the venue's clock.
        self.later_min_us = np.minimum.accumulate(self.event_us[::-1])[::-1]
        self.snapshot_levels, kinds = _Levels.grouped(snapshots, ["last_update_id", "is_full"])
        self.kind_id, self.kind_full = kinds["last_update_id"], kinds["is_full"]
        # Each (time, id, kind) a snapshot was taken with, in the order the queries rank them; the levels of a kind
        # are all rows with its id (a snapshot fetched twice is one set of levels).
        taken = _ints(snapshots["ts"])
        kind_of_row = np.repeat(np.arange(len(self.kind_id)), np.diff(self.snapshot_levels.starts))
        # Rows come by kind, then time: one head per run; kinds are numbered in (id, is_full) order, so sorting the
        # heads by (time, kind) ranks them as the queries do.
        first = np.ones(len(taken), dtype=bool)
        first[1:] = (taken[1:] != taken[:-1]) | (kind_of_row[1:] != kind_of_row[:-1])
        taken, kind_of_row = taken[first], kind_of_row[first]
        order = np.lexsort((kind_of_row, taken))
        self.taken_us, self.taken_kind = taken[order], kind_of_row[order]
        self.nbytes = sum(
            a.nbytes
            for a in (
                *vars(self.updates).values(), *vars(self.snapshot_levels).values(), self.event_last,
                self.event_first, self.event_us, self.later_min_us, self.taken_us, self.taken_kind,
            )
        )  # fmt: skip

    @classmethod
    def load(
        cls,
        reader: Reader,
        sql: tuple[str, str, str],
        params: dict[str, Any],
        day_us: int,
        margin_us: int,
    ) -> DayBook:
        """The day starting at `day_us`. `sql`: the updates and the snapshots of a time range ($symbol, $exchange,
        $since, $until), and whether an update before $since has an id above $lowest (one row, column `found`)."""
        updates_sql, snapshots_sql, older_sql = sql
        since, until = datetime_from_micros(day_us - margin_us), datetime_from_micros(day_us + DAY_US)
        updates = reader.sql(updates_sql, params | {"since": since, "until": until})
        snapshots = reader.sql(snapshots_sql, params | {"since": datetime_from_micros(day_us), "until": until})
        complete = True
        if snapshots.num_rows:
            lowest = int(_ints(snapshots["last_update_id"]).min())
            complete = not reader.sql(older_sql, params | {"since": since, "lowest": lowest})["found"][0].as_py()
        return cls(updates, snapshots, margin_us, complete)

    def book(self, at_us: int, depth: int) -> Book | None:
        """The book at `at_us` (within the day), or None when the day's rows cannot answer alone."""
        newest = int(np.searchsorted(self.taken_us, at_us, side="right")) - 1
        if newest < 0:
            return None
        kind = int(self.taken_kind[newest])
        snapshot, taken_us = int(self.kind_id[kind]), int(self.taken_us[newest])
        begin = int(np.searchsorted(self.event_last, snapshot, side="right"))
        end = int(np.searchsorted(self.later_min_us, at_us, side="right"))
        times = self.event_us[begin:end]
        events = begin + np.flatnonzero((times <= at_us) & (times >= taken_us - self.margin_us))
        if not len(events) or self.event_first[events[0]] > snapshot + 1:
            # The bridge may be older than the margin: read again without it, as the queries do.
            if not self.complete:
                return None
            events = begin + np.flatnonzero(times <= at_us)
        if not len(events):
            return Book(snapshot, taken_us, snapshot, 0, *self._levels(kind, snapshot, events, depth), None)
        lasts, firsts = self.event_last[events], self.event_first[events]
        before = np.concatenate(([snapshot], lasts[:-1]))
        holes = np.flatnonzero(firsts > before + 1)
        gap = None if not len(holes) else (int(before[holes[0]]) + 1, int(firsts[holes[0]]) - 1)
        bids, asks = self._levels(kind, snapshot, events, depth)
        return Book(snapshot, taken_us, int(lasts[-1]), len(events), bids, asks, gap)

    def _levels(
        self, kind: int, snapshot: int, events: np.ndarray, depth: int
    ) -> tuple[list[tuple[Decimal, Decimal]], list[tuple[Decimal, Decimal]]]:
        """Per side and price the quantity of the newest update (the snapshot's when none), best `depth` first."""
        start, stop = self.snapshot_levels.starts[kind], self.snapshot_levels.starts[kind + 1]
        rows = self.updates.rows(events)
        seq = np.concatenate(
            (np.full(stop - start, snapshot), np.repeat(self.event_last[events], np.diff(self.updates.starts)[events]))
        )
        bid = np.concatenate((self.snapshot_levels.bid[start:stop], self.updates.bid[rows]))
        price = np.concatenate((self.snapshot_levels.price[start:stop], self.updates.price[rows]))
        quantity = np.concatenate((self.snapshot_levels.quantity[start:stop], self.updates.quantity[rows]))
        order = np.lexsort((seq, price, bid))  # by side, price, then update id: each price's newest is its last
        bid, price, quantity = bid[order], price[order], quantity[order]
        newest = np.ones(len(order), dtype=bool)
        newest[:-1] = (bid[1:] != bid[:-1]) | (price[1:] != price[:-1])
        resting = newest & (quantity > 0)
        sides = {}
        for side, flag in ((BookSide.BID, 1), (BookSide.ASK, 0)):
            picked = np.flatnonzero(resting & (bid == flag))
            picked = picked[::-1][:depth] if side is BookSide.BID else picked[:depth]  # best first
            sides[side] = [(_decimal(int(price[i])), _decimal(int(quantity[i]))) for i in picked]
        return sides[BookSide.BID], sides[BookSide.ASK]
