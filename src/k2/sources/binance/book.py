"""Binance spot local order books: the depth payload parsers and the book kept by Binance's documented procedure.

Pure: no I/O. A caller feeds `BookSync` the diff events of `<symbol>@depth` / `<symbol>@depth@100ms` and the REST
snapshots (`GET /api/v3/depth?symbol=...&limit=1000`) it fetched, and gets back what happened to each.

The procedure ("How to manage a local order book correctly", Binance spot WebSocket streams):
  1. buffer the diff events while no snapshot is in force;
  2. take a snapshot: drop buffered events with u <= lastUpdateId;
  3. the first event applied must have U <= lastUpdateId + 1 <= u;
  4. then every event continues the last one applied: U == previous u + 1 (an event with u <= the book's update id
     is a repeat and is ignored; one with U > the book's update id + 1 means updates were lost);
  5. each level carries the absolute quantity at that price; quantity 0 removes the level (removing a level the
     book does not hold is normal).
On a break (step 3 or 4 not met) the book is out of sync: `BookSync` reports the missing update ids as a `BookGap`,
buffers from the event that showed the gap, and waits for a newer snapshot.

Field names are Binance's: depthUpdate  e, E event time, s symbol, U first update id, u final update id,
b bids [[price, qty], ...], a asks; snapshot  lastUpdateId, bids, asks (no symbol, no time).
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

import orjson
from sortedcontainers import SortedDict

from k2.schema.fields import BookSide
from k2.sources.binance.normalize import PayloadError, TimeUnit, parse_amount

Level = tuple[Decimal, Decimal]  # (price, quantity)
# Update ids and times land in int64 columns (times in microseconds): anything beyond is a reject, not an overflow.
_INT64_MAX = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class DepthDiff:
    """One diff depth event: the levels that changed between update ids U and u (both included)."""

    symbol: str
    first_update_id: int  # U
    last_update_id: int  # u
    event_us: int  # E, microseconds UTC
    receive_us: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    """A REST depth snapshot: the whole book (up to the requested limit) as of update id `last_update_id`."""

    symbol: str
    last_update_id: int
    receive_us: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


def _int(data: Mapping[str, Any], key: str) -> int:
    value = data.get(key)
    if value is None:
        raise PayloadError(f"missing_field:{key}", f"field {key!r} is missing")
    if type(value) is not int or not 0 <= value <= _INT64_MAX:
        raise PayloadError(f"bad_field:{key}", f"field {key!r} should be an integer from 0 to 2^63-1, got {value!r}")
    return value


def _levels(data: Mapping[str, Any], key: str) -> tuple[Level, ...]:
    rows = data.get(key)
    if rows is None:
        raise PayloadError(f"missing_field:{key}", f"field {key!r} is missing")
    if type(rows) is not list:
        raise PayloadError(f"bad_field:{key}", f"field {key!r} should be a list of [price, quantity]")
    levels = []
    for row in rows:
        # 2017-era frames carried a third, empty element per level ([price, qty, []]); it is ignored.
        if type(row) is not list or len(row) < 2:
            raise PayloadError(f"bad_field:{key}", f"level {row!r} of {key!r} is not [price, quantity]")
        levels.append((parse_amount(row[0], key, "bad_price"), parse_amount(row[1], key, "bad_quantity")))
    return tuple(levels)


def parse_depth_diff(data: Mapping[str, Any], receive_us: int, time_unit: TimeUnit = TimeUnit.MILLISECOND) -> DepthDiff:
    """A depthUpdate payload (the `data` of a combined frame) → DepthDiff; PayloadError if it is not one."""
    if data.get("e") != "depthUpdate":
        raise PayloadError("bad_field:e", f"not a depthUpdate event: e={data.get('e')!r}")
    symbol = data.get("s")
    if type(symbol) is not str or not symbol:
        raise PayloadError("missing_field:s", "field 's' (symbol) is missing or not a string")
    first, last = _int(data, "U"), _int(data, "u")
    if first > last:
        raise PayloadError("bad_field:U", f"first update id U={first} is after final update id u={last}")
    event = _int(data, "E")
    scale = 1 if time_unit == TimeUnit.MICROSECOND else 1_000
    if event == 0 or event > _INT64_MAX // scale:
        raise PayloadError("bad_field:E", f"event time E is {event}, not a time after 1970 within 64-bit microseconds")
    return DepthDiff(symbol, first, last, event * scale, receive_us, _levels(data, "b"), _levels(data, "a"))


def depth_payload(raw: bytes) -> tuple[str | None, dict[str, Any]] | None:
    """A raw WebSocket frame → (stream name or None, payload) when it is a depthUpdate event, else None.

    Both the combined (`{"stream":..., "data":...}`) and the raw (`/ws/<stream>`) forms; PayloadError for a frame
    that is not JSON.
    """
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise PayloadError("malformed_json", f"frame is not JSON ({exc})") from None
    if type(message) is not dict:
        return None
    stream = message.get("stream")
    data = message.get("data") if stream is not None else message
    if type(data) is not dict or data.get("e") != "depthUpdate":
        return None
    return (stream if type(stream) is str else None), data


def parse_depth_frame(raw: bytes, receive_us: int, time_unit: TimeUnit = TimeUnit.MILLISECOND) -> DepthDiff | None:
    """A raw WebSocket frame → DepthDiff, or None for a frame that is not a depth diff (trades, acks, ...)."""
    found = depth_payload(raw)
    return None if found is None else parse_depth_diff(found[1], receive_us, time_unit)


def parse_depth_snapshot(body: bytes | Mapping[str, Any], symbol: str, receive_us: int) -> DepthSnapshot:
    """A GET /api/v3/depth response body for `symbol` (the body does not name it) → DepthSnapshot."""
    if isinstance(body, bytes | bytearray | memoryview):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError("malformed_json", f"depth snapshot is not JSON ({exc})") from None
    if not isinstance(body, Mapping):
        raise PayloadError("malformed_json", "depth snapshot is JSON but not an object")
    return DepthSnapshot(symbol, _int(body, "lastUpdateId"), receive_us, _levels(body, "bids"), _levels(body, "asks"))


class OrderBook:
    """Price levels per side, exact Decimals, kept sorted: bids best (highest) first, asks best (lowest) first."""

    __slots__ = ("asks", "bids", "last_update_id")

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict(operator.neg)
        self.asks: SortedDict = SortedDict()
        self.last_update_id: int | None = None

    def reset(self, bids: Iterable[Level], asks: Iterable[Level], last_update_id: int) -> None:
        """The whole book replaced (a snapshot); zero quantities are not levels."""
        self.bids.clear()
        self.asks.clear()
        self.update(bids, asks, last_update_id)

    def update(self, bids: Iterable[Level], asks: Iterable[Level], last_update_id: int) -> None:
        """Absolute quantities per price; quantity 0 removes the level."""
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, quantity in levels:
                if quantity:
                    side[price] = quantity
                else:
                    side.pop(price, None)
        self.last_update_id = last_update_id

    def side(self, side: BookSide) -> SortedDict:
        return self.bids if side is BookSide.BID else self.asks

    def best_bid(self) -> Level | None:
        return self.bids.peekitem(0) if self.bids else None

    def best_ask(self) -> Level | None:
        return self.asks.peekitem(0) if self.asks else None

    def top(self, depth: int) -> tuple[list[Level], list[Level]]:
        """The best `depth` levels of each side, best first."""
        return list(_first(self.bids.items(), depth)), list(_first(self.asks.items(), depth))


def _first(items: Iterable[Level], count: int) -> Iterator[Level]:
    for i, item in enumerate(items):
        if i >= count:
            return
        yield item


@dataclass(frozen=True, slots=True)
class BookGap:
    """Update ids `first_missing..last_missing` never reached the book: it is out of sync until a new snapshot.

    `reason`: "diff_break" (a diff did not continue the one before it) or "snapshot_before_diffs" (the snapshot is
    older than every diff still at hand). Times: the event time of the last update the book holds (the diff's E, or
    the snapshot's receive time when no diff was applied since) and the event and receive times of the diff that
    showed the gap.
    """

    symbol: str
    first_missing: int
    last_missing: int
    reason: str
    last_good_us: int
    next_event_us: int
    detected_us: int

    @property
    def missing_count(self) -> int:
        return self.last_missing - self.first_missing + 1


class DiffOutcome(StrEnum):
    APPLIED = "applied"
    BUFFERED = "buffered"  # no snapshot in force: kept for the next one
    STALE = "stale"  # u <= the book's update id: already in the book


@dataclass(slots=True)
class Resync:
    """What a snapshot did: the buffered diffs it dropped (older) and applied, and a gap if one remains.
    `outdated`: the book in sync was already at or past the snapshot's update id, so the snapshot changed nothing."""

    dropped: list[DepthDiff] = field(default_factory=list)
    applied: list[DepthDiff] = field(default_factory=list)
    gap: BookGap | None = None
    outdated: bool = False


class BookSync:
    """One symbol's local book kept in sync by Binance's procedure (see the module doc)."""

    def __init__(self, symbol: str, *, max_buffered: int = 10_000) -> None:
        self.symbol = symbol
        self.book = OrderBook()
        self.synced = False
        self.gaps: list[BookGap] = []
        # While out of sync only the newest diffs matter (a snapshot drops older ones), so the buffer is bounded.
        self._buffer: deque[DepthDiff] = deque(maxlen=max_buffered)
        self._last_good_us = 0

    @property
    def buffered(self) -> Sequence[DepthDiff]:
        return tuple(self._buffer)

    def on_diff(self, diff: DepthDiff) -> DiffOutcome | BookGap:
        """Apply, ignore or buffer one diff event; a BookGap when it shows that updates were lost."""
        if diff.symbol != self.symbol:
            raise ValueError(f"a {diff.symbol} diff fed to the {self.symbol} book")
        if not self.synced:
            self._buffer.append(diff)
            return DiffOutcome.BUFFERED
        return self._continue(diff, "diff_break")

    def on_snapshot(self, snapshot: DepthSnapshot) -> Resync:
        """Put `snapshot` in force and replay the buffered diffs over it (dropping those it already holds)."""
        if snapshot.symbol != self.symbol:
            raise ValueError(f"a {snapshot.symbol} snapshot given to the {self.symbol} book")
        current = self.book.last_update_id
        if self.synced and current is not None and current >= snapshot.last_update_id:
            # A late answer (a second request, a slow one): putting it in force would rewind the book and make
            # the next live diff look like a gap.
            return Resync(outdated=True)
        self.book.reset(snapshot.bids, snapshot.asks, snapshot.last_update_id)
        self.synced = True
        self._last_good_us = snapshot.receive_us
        result = Resync()
        reason = "snapshot_before_diffs"
        while self._buffer:
            diff = self._buffer.popleft()
            outcome = self._continue(diff, reason)
            if outcome is DiffOutcome.STALE:
                result.dropped.append(diff)
            elif outcome is DiffOutcome.APPLIED:
                result.applied.append(diff)
                reason = "diff_break"
            else:
                result.gap = outcome
                break
        return result

    def _continue(self, diff: DepthDiff, reason: str) -> DiffOutcome | BookGap:
        current = self.book.last_update_id
        assert current is not None  # synced implies a snapshot was put in force
        if diff.last_update_id <= current:
            return DiffOutcome.STALE
        if diff.first_update_id > current + 1:
            gap = BookGap(
                self.symbol, current + 1, diff.first_update_id - 1, reason,
                self._last_good_us, diff.event_us, diff.receive_us,
            )  # fmt: skip
            self.gaps.append(gap)
            self.synced = False
            self._buffer.appendleft(diff)
            return gap
        self.book.update(diff.bids, diff.asks, diff.last_update_id)
        self._last_good_us = diff.event_us
        return DiffOutcome.APPLIED
