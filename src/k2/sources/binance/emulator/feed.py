"""The shared, ordered per-stream feed: every connection gets the same frames, and REST answers from what was sent.

``Hub.publish`` is the only way a frame reaches clients. It first records the frame (aggTrades, derived raw trades,
last depth update id, last book ticker) so REST is consistent with the stream, then applies the fault plan, then fans
the frame out to every subscribed connection's queue in publish order.

Books: each captured depth snapshot of a symbol is put in force at load, and every published diff (dropped ones too,
as the venue's book moves whatever a connection loses) moves that book once the replay has reached the snapshot's
lastUpdateId, so ``/api/v3/depth`` answers the book as of the last diff published, as Binance answers its book now.
The partial book streams (``<symbol>@depth5``, ``@depth10``, ``@depth20``, each also ``@100ms``) are served from that
same book: after each diff published, while the book is at the replay position, every subscribed partial stream of
the symbol gets ``{"lastUpdateId", "bids", "asks"}`` with the book's top 5, 10 or 20 levels (the venue pushes them
every 1000 or 100 ms; the replay pushes them at each diff, which a capture's diff streams already space).

A replay runs on one clock (``ReplayClock``). Spot bookTicker frames carry no time, so a client times a quote by
when it receives it, while a trade carries the time it happened: replayed as recorded, a capture's quotes would land
today and its trades years ago. So the replay gives every bookTicker an event time ``E``, the moment the capture
received it, and by default (``NOW``) re-bases each capture to the moment its replay starts: every time field of
every frame (E, T, O, C, kline t/T) and the bookTicker ``E`` move by the same whole-millisecond offset, so the times
differ exactly as they did in the capture. ``RECORDED`` keeps the recorded times (offset 0).
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import orjson
import structlog

from k2.sources.binance.book import BookGap, BookSync, OrderBook, parse_depth_diff, parse_depth_snapshot
from k2.sources.binance.capture import ReplayClock
from k2.sources.binance.emulator.capture import Capture
from k2.sources.binance.emulator.faults import FaultPlan, FrameFault
from k2.sources.binance.normalize import PayloadError
from k2.sources.binance.partial_book import PARTIAL_CHANNELS, partial_stream

# web-socket-streams: "All time and timestamp related fields are milliseconds by default. To receive the information
# in microseconds, please add the parameter timeUnit=MICROSECOND". These are the time fields of the market streams.
_TIME_FIELDS = ("E", "T", "O", "C")
_KLINE_TIME_FIELDS = ("t", "T")

log = structlog.get_logger(__name__)


def _map_times(data: dict[str, Any], change: Callable[[int], int]) -> dict[str, Any]:
    """A copy of ``data`` with ``change`` applied to every time field (the kline's too)."""
    out = dict(data)
    for key in _TIME_FIELDS:
        if type(out.get(key)) is int:
            out[key] = change(out[key])
    kline = out.get("k")
    if isinstance(kline, dict):
        kline = dict(kline)
        for key in _KLINE_TIME_FIELDS:
            if type(kline.get(key)) is int:
                kline[key] = change(kline[key])
        out["k"] = kline
    return out


def to_microseconds(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with every millisecond time field multiplied by 1000."""
    return _map_times(data, lambda ms: ms * 1000)


def shift_times(data: dict[str, Any], offset_ms: int) -> dict[str, Any]:
    """A copy of ``data`` with every (millisecond) time field moved by ``offset_ms``."""
    return _map_times(data, lambda ms: ms + offset_ms)


class Outgoing:
    """One frame on its way out; serialised at most once per (combined, timeUnit) variant for all connections.

    ``event_us`` (a replayed bookTicker's time, see the module doc) is sent as ``E``: exact in microseconds, whole
    milliseconds otherwise."""

    __slots__ = ("_cache", "data", "event_us", "malformed", "stream")

    def __init__(self, stream: str, data: dict[str, Any], malformed: bool = False, event_us: int | None = None) -> None:
        self.stream = stream
        self.data = data
        self.malformed = malformed
        self.event_us = event_us
        self._cache: dict[tuple[bool, bool], str] = {}

    def text(self, combined: bool, micro: bool) -> str:
        """The text frame a connection with these properties receives."""
        key = (combined, micro)
        cached = self._cache.get(key)
        if cached is None:
            data = to_microseconds(self.data) if micro else self.data
            if self.event_us is not None:
                data = {**data, "E": self.event_us if micro else self.event_us // 1000}
            payload = orjson.dumps(data)
            if combined:
                payload = b'{"stream":' + orjson.dumps(self.stream) + b',"data":' + payload + b"}"
            cached = payload.decode()
            if self.malformed:
                cached = cached[: len(cached) // 2]
            self._cache[key] = cached
        return cached


class Sink(Protocol):
    """A connection as the hub sees it."""

    def deliver(self, item: Outgoing) -> None: ...


@dataclass(slots=True)
class TradeBook:
    """Rows in REST shape, ordered by id, with a parallel id list for ``fromId`` lookups."""

    ids: list[int] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, ident: int, row: dict[str, Any]) -> None:
        if self.ids and ident <= self.ids[-1]:
            return  # a replayed duplicate; REST keeps one row per id
        self.ids.append(ident)
        self.rows.append(row)

    def from_id(self, start: int, limit: int) -> list[dict[str, Any]]:
        index = bisect.bisect_left(self.ids, start)
        return self.rows[index : index + limit]

    def recent(self, limit: int) -> list[dict[str, Any]]:
        return self.rows[-limit:] if limit else []


def derive_trades(agg: dict[str, Any]) -> list[dict[str, Any]]:
    """Raw trades (``/api/v3/trades`` shape) for one aggTrade: ids f..l, its price, time and side.

    The capture holds aggregates only, so quantities of multi-trade aggregates are split evenly (the last trade takes
    the rounding remainder); the sum always equals the aggregate's ``q``.
    """
    first, last = int(agg["f"]), int(agg["l"])
    count = last - first + 1
    total = Decimal(agg["q"])
    exponent = total.as_tuple().exponent
    places = Decimal(1).scaleb(exponent if isinstance(exponent, int) else -8)
    share = (total / count).quantize(places) if count > 1 else total
    price = Decimal(agg["p"])
    rows = []
    for offset in range(count):
        qty = share if offset < count - 1 else total - share * (count - 1)
        rows.append(
            {
                "id": first + offset,
                "price": agg["p"],
                "qty": f"{qty:f}",
                "quoteQty": f"{(price * qty).quantize(places):f}",
                "time": agg["T"],
                "isBuyerMaker": agg["m"],
                "isBestMatch": agg.get("M", True),
            }
        )
    return rows


class Hub:
    """Subscriptions, the REST store and fan-out; lives on the emulator's event loop."""

    def __init__(self, faults: FaultPlan) -> None:
        self.faults = faults
        self.subscribers: dict[str, set[Sink]] = {}
        self.connections: set[Any] = set()
        self.first_subscriber = asyncio.Event()
        self.agg_trades: dict[str, TradeBook] = {}
        self.trades: dict[str, TradeBook] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}
        self.last_update_id: dict[str, int] = {}
        self.books: dict[str, BookSync] = {}  # per symbol, its book moved by the diffs published (see the module doc)
        self._later_snapshots: dict[str, list[dict[str, Any]]] = {}  # captured after the one in force, by id
        self._depth_published = asyncio.Event()  # set (and replaced) at each diff published
        self.book_tickers: dict[str, dict[str, Any]] = {}
        self.symbols: set[str] = set()
        # published: frames sent (a fault may still drop one); partial: of them, partial book frames made from a book
        self.counts: dict[str, int] = {
            "published": 0,
            "partial": 0,
            "unusable": 0,
            **{fault.value: 0 for fault in FrameFault},
        }
        self._held: dict[str, Outgoing] = {}

    def subscribe(self, sink: Sink, stream: str) -> None:
        self.subscribers.setdefault(stream, set()).add(sink)
        self.first_subscriber.set()

    def unsubscribe(self, sink: Sink, stream: str) -> None:
        sinks = self.subscribers.get(stream)
        if sinks is not None:
            sinks.discard(sink)

    def drop_sink(self, sink: Sink) -> None:
        for sinks in self.subscribers.values():
            sinks.discard(sink)
        self.connections.discard(sink)

    def publish(self, stream: str, data: dict[str, Any], event_us: int | None = None) -> None:
        """Record ``data`` for REST, then send it (or its fault) to every subscriber of ``stream``; ``event_us``:
        see `Outgoing`. A diff that moved a symbol's book is followed by the book's partial streams."""
        moved = self._record(stream, data)
        self._send(stream, data, event_us)
        if moved is not None:
            self._publish_partials(moved)

    def _send(self, stream: str, data: dict[str, Any], event_us: int | None) -> None:
        self.counts["published"] += 1
        fault = self.faults.decide(stream)
        if fault is FrameFault.REORDER and stream in self._held:
            fault = FrameFault.NONE
        self.counts[fault.value] += 1
        if fault is FrameFault.DROP:
            return
        item = Outgoing(stream, data, malformed=fault is FrameFault.MALFORMED, event_us=event_us)
        if fault is FrameFault.REORDER:
            self._held[stream] = item
            return
        self._fan_out(item)
        if fault is FrameFault.DUPLICATE:
            self._fan_out(item)
        held = self._held.pop(stream, None)
        if held is not None:
            self._fan_out(held)

    def flush_held(self) -> None:
        """Send frames a reorder fault still holds (the stream ended before a later frame overtook them)."""
        while self._held:
            self._fan_out(self._held.pop(next(iter(self._held))))

    def _fan_out(self, item: Outgoing) -> None:
        for sink in tuple(self.subscribers.get(item.stream, ())):
            sink.deliver(item)

    def _record(self, stream: str, data: dict[str, Any]) -> str | None:
        """Keep what REST answers from ``data``; the symbol whose depth diff it is, else None."""
        symbol = data.get("s")
        if not isinstance(symbol, str):
            return None
        self.symbols.add(symbol)
        kind = stream.split("@", 1)[1] if "@" in stream else stream
        if kind == "aggTrade":
            row = {key: data[key] for key in ("a", "p", "q", "f", "l", "T", "m", "M")}
            self.agg_trades.setdefault(symbol, TradeBook()).add(int(data["a"]), row)
            trades = self.trades.setdefault(symbol, TradeBook())
            for trade in derive_trades(data):
                trades.add(trade["id"], trade)
        elif kind.startswith("depth") and "u" in data:
            self.last_update_id[symbol] = int(data["u"])
            self._move_book(symbol, data)
            return symbol
        elif kind == "bookTicker":
            self.book_tickers[symbol] = data
            self.last_update_id.setdefault(symbol, int(data["u"]))
        return None

    def _publish_partials(self, symbol: str) -> None:
        """The symbol's book, top levels only, to each of its partial book streams that has a subscriber."""
        sync = self.books.get(symbol)
        book = None if sync is None else sync.book
        if sync is None or not sync.synced or book is None or book.last_update_id != self.last_update_id.get(symbol):
            return  # no book at the replay position to take the top from
        for channel in PARTIAL_CHANNELS:
            name = f"{symbol.lower()}@{channel}"
            stream = partial_stream(name)
            if stream is None or not self.subscribers.get(name):
                continue
            bids, asks = book.top(stream.levels)
            self.counts["partial"] += 1
            self._send(
                name,
                {
                    "lastUpdateId": book.last_update_id,
                    "bids": [[f"{price:f}", f"{quantity:f}"] for price, quantity in bids],
                    "asks": [[f"{price:f}", f"{quantity:f}"] for price, quantity in asks],
                },
                None,
            )

    def add_snapshot(self, symbol: str, body: dict[str, Any]) -> None:
        """A captured depth snapshot (before the replay starts): the first of a symbol is put in force, later ones
        wait in update-id order to repair its book should the capture itself have lost diffs."""
        self.symbols.add(symbol)
        self.snapshots.setdefault(symbol, body)
        if symbol not in self.books:
            try:
                snapshot = parse_depth_snapshot(body, symbol, 0)
            except PayloadError as exc:  # served as recorded; no book moves from it
                log.warning("emulator.snapshot_unusable", symbol=symbol, error=exc.detail)
                return
            self.books[symbol] = BookSync(symbol)
            self.books[symbol].on_snapshot(snapshot)
        else:
            later = self._later_snapshots.setdefault(symbol, [])
            later.append(body)
            later.sort(key=lambda snapshot: ident if type(ident := snapshot.get("lastUpdateId")) is int else -1)

    def _move_book(self, symbol: str, data: dict[str, Any]) -> None:
        sync = self.books.get(symbol)
        if sync is not None:
            try:
                diff = parse_depth_diff(data, 0)
            except PayloadError:  # sent as recorded; the book notes the lost ids at the next diff and is repaired
                diff = None
            if diff is not None and isinstance(outcome := sync.on_diff(diff), BookGap):
                self._repair(sync, outcome)
        self._depth_published.set()
        self._depth_published = asyncio.Event()

    def _repair(self, sync: BookSync, gap: BookGap) -> None:
        """The capture lost diffs: the next captured snapshot taken after them (if any) takes over."""
        later = self._later_snapshots.get(sync.symbol, [])
        while later:
            body = later.pop(0)
            try:
                snapshot = parse_depth_snapshot(body, sync.symbol, 0)
            except PayloadError:
                continue
            if snapshot.last_update_id >= gap.last_missing:
                sync.on_snapshot(snapshot)
                return

    async def current_book(self, symbol: str, timeout: float) -> OrderBook | None:
        """The symbol's book as of the last diff published, waiting (at most `timeout` seconds) for the replay to
        reach its captured snapshot; None when there is none to answer from (no snapshot, the replay stalled, or the
        book is behind the replay until a captured snapshot repairs it)."""
        sync = self.books.get(symbol)
        if sync is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            book_id = sync.book.last_update_id
            # exactly where the replay is: not before it reached the snapshot, nor behind an unreadable diff
            if sync.synced and book_id is not None and self.last_update_id.get(symbol) == book_id:
                return sync.book
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                await asyncio.wait_for(self._depth_published.wait(), remaining)
            except TimeoutError:
                return None


async def replay(
    hub: Hub,
    captures: Sequence[Capture],
    speed: float,
    wait_for_subscriber: bool,
    clock: ReplayClock = ReplayClock.NOW,
) -> None:
    """Publish every captured frame in receipt order; gaps between receipt times are divided by ``speed``.

    Captures play one after another, each on the ``clock`` (see the module doc) from the moment its replay starts;
    the replayed times keep the capture's spacing whatever the ``speed``. ``speed`` 0 publishes as fast as the loop
    allows (yielding between frames so connections drain). Frames are copied so faults and unit conversion never
    touch the parsed capture.
    """
    loop = asyncio.get_running_loop()
    if wait_for_subscriber:
        await hub.first_subscriber.wait()
    for capture in captures:
        if not capture.frames:
            continue
        origin_us = capture.frames[0].receipt_us
        started = loop.time()
        # whole milliseconds, so that millisecond time fields move exactly
        offset_ms = (time.time_ns() // 1000 - origin_us) // 1000 if clock is ReplayClock.NOW else 0
        for frame in capture.frames:
            if speed > 0:
                delay = started + (frame.receipt_us - origin_us) / 1e6 / speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    await asyncio.sleep(0)
            else:
                await asyncio.sleep(0)
            data = copy.deepcopy(frame.data)
            event_us = None
            if frame.stream.endswith("@bookTicker") and "E" not in data:
                event_us = frame.receipt_us + offset_ms * 1000
            try:
                hub.publish(frame.stream, shift_times(data, offset_ms) if offset_ms else data, event_us)
            except (KeyError, TypeError, ValueError) as exc:
                # A payload missing a field its stream always has: the replay goes on without it, counted and said.
                hub.counts["unusable"] += 1
                log.warning("emulator.frame_skipped", capture=capture.path.name, stream=frame.stream, error=repr(exc))
    hub.flush_held()
