"""Depth frames and REST depth snapshots of many symbols → the rows to store, with each symbol's book kept in sync.

What a live stream or a capture loader plugs in (pure, no I/O): it hands over every raw depth frame and every
snapshot it fetched, stores the rows that come back, and fetches a snapshot for each symbol `wanting_snapshot`
names. Every diff event is stored, applied or not (the tables keep what the venue sent; `book_at` picks what
applies); every snapshot is stored. A break in a symbol's update ids becomes a stream_gaps row (channel "depth",
the symbol's depth stream, reason "sequence_break", status "unrecoverable": Binance serves no past diff events, so
the book is rebuilt from the next snapshot instead).

Checkpoints (`checkpoint_us`, K2_BOOK_CHECKPOINT_SECONDS): while a symbol's book is in sync, the first diff it applies
in a new interval of venue event time (event time // checkpoint_us; the first interval a book is seen in only starts
the count) also gives a book_snapshots_v2 copy of the whole book, snapshot_type "checkpoint", last_update_id the
book's, timestamp that diff's event time, message ids over "checkpoint:<id>:<side>:<price>" (a venue snapshot's are
"snapshot:...", so both at one update id are distinct rows). So `book_at` never replays more than about one interval
of updates. The rule depends only on the frames and snapshots in their order: a replayed capture writes the same
rows, the same ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from k2.core.batch import Reject
from k2.schema.codecs import message_id
from k2.schema.fields import AssetClass, BookSnapshotType, DataType
from k2.sources.binance.book import (
    BookGap,
    BookSync,
    DepthDiff,
    DepthSnapshot,
    DiffOutcome,
    OrderBook,
    depth_payload,
    parse_depth_diff,
    parse_depth_snapshot,
)
from k2.sources.binance.normalize import EXCHANGE, PayloadError, TimeUnit
from k2.sources.binance.normalize_book import book_snapshot_records, book_update_records, depth_reject

DEPTH_CHANNEL = "depth"
SEQUENCE_BREAK = "sequence_break"  # stream_gaps.reason of a book's lost updates
CHECKPOINT_SOURCE = "checkpoint"  # the first part of a checkpoint level's message id source


@dataclass
class Recorded:
    """What one frame or snapshot gave: rows per table, and how many diff events the book applied."""

    updates: list[dict[str, Any]] = field(default_factory=list)  # book_updates_v2
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # book_snapshots_v2
    gaps: list[dict[str, Any]] = field(default_factory=list)  # stream_gaps
    applied: int = 0


def book_gap_record(
    gap: BookGap, stream: str | None = None, exchange: str = EXCHANGE, asset_class: str = AssetClass.CRYPTO.value
) -> dict:
    """A book's lost updates as a stream_gaps row (the same id rule as the trade channels' gaps). `stream`: the
    depth stream that lost them, as its frames named it (default `<symbol>@depth`, for frames of a raw stream)."""
    return {
        "message_id": message_id(exchange, DataType.GAPS.value, gap.symbol, f"{DEPTH_CHANNEL}:{gap.first_missing}"),
        "symbol": gap.symbol,
        "exchange": exchange,
        "asset_class": asset_class,
        "channel": DEPTH_CHANNEL,
        "first_missing": gap.first_missing,
        "last_missing": gap.last_missing,
        "missing_count": gap.missing_count,
        "filled_count": 0,
        "status": "unrecoverable",
        "timestamp": gap.detected_us,
        "detail": f"{gap.reason}: past depth updates are not served again; the book is rebuilt from a new snapshot",
        "stream": stream or f"{gap.symbol.lower()}@{DEPTH_CHANNEL}",
        "reason": SEQUENCE_BREAK,
    }


class BookRecorder:
    """One `BookSync` per symbol met, fed by raw frames and snapshots; returns the rows to store."""

    def __init__(
        self,
        *,
        exchange: str = EXCHANGE,
        asset_class: str = AssetClass.CRYPTO.value,
        time_unit: TimeUnit = TimeUnit.MILLISECOND,
        max_buffered: int = 10_000,
        checkpoint_us: int | None = None,
    ) -> None:
        """`checkpoint_us`: the venue time between a book's checkpoints (None: none are written)."""
        if checkpoint_us is not None and checkpoint_us <= 0:
            raise ValueError(f"checkpoint_us must be positive or None, got {checkpoint_us}")
        self.checkpoint_us = checkpoint_us
        self.exchange = exchange
        self.asset_class = asset_class
        self.time_unit = time_unit
        self.max_buffered = max_buffered
        self.books: dict[str, BookSync] = {}
        self.streams: dict[str, str] = {}  # per symbol, the stream name its latest diff frame came on
        self.event_us: dict[str, int] = {}  # per symbol, the newest event time of its diffs: the venue's clock
        self._interval: dict[str, int] = {}  # per symbol, the checkpoint interval its book was last seen in

    def _sync(self, symbol: str) -> BookSync:
        sync = self.books.get(symbol)
        if sync is None:
            sync = self.books[symbol] = BookSync(symbol, max_buffered=self.max_buffered)
        return sync

    def book(self, symbol: str) -> OrderBook | None:
        """The symbol's book while it is in sync, else None (no snapshot yet, or updates were lost since)."""
        sync = self.books.get(symbol)
        return sync.book if sync is not None and sync.synced else None

    def wanting_snapshot(self) -> list[str]:
        """Symbols whose book waits for a snapshot: out of sync with diffs buffered (fetch one for each now)."""
        return sorted(symbol for symbol, sync in self.books.items() if not sync.synced and sync.buffered)

    def _gap_rows(self, gap: BookGap | None) -> list[dict[str, Any]]:
        if gap is None:
            return []
        return [book_gap_record(gap, self.streams.get(gap.symbol), self.exchange, self.asset_class)]

    def frame(
        self, raw: bytes, receive_us: int, *, origin: str = "binance-ws", position: int = 0
    ) -> Recorded | Reject | None:
        """One raw WebSocket frame: its rows when it is a depth diff, a Reject when it cannot be, else None."""
        try:
            found = depth_payload(raw)
            if found is None:
                return None
            stream, data = found
            diff = parse_depth_diff(data, receive_us, self.time_unit)
        except PayloadError as exc:
            return depth_reject(exc, raw, origin, position)
        if stream is not None:
            self.streams[diff.symbol] = stream
        self.event_us[diff.symbol] = max(diff.event_us, self.event_us.get(diff.symbol, 0))
        recorded = Recorded(
            updates=book_update_records(diff, stream=stream, exchange=self.exchange, asset_class=self.asset_class)
        )
        outcome = self._sync(diff.symbol).on_diff(diff)
        if outcome is DiffOutcome.APPLIED:
            recorded.applied = 1
            recorded.snapshots = self._checkpoint(diff)
        elif isinstance(outcome, BookGap):
            recorded.gaps = self._gap_rows(outcome)
        return recorded

    def snapshot(
        self,
        symbol: str,
        body: bytes | Mapping[str, Any],
        receive_us: int,
        *,
        limit: int | None = None,
        taken_us: int | None = None,
        origin: str = "binance-rest",
        position: int = 0,
    ) -> Recorded | Reject:
        """A GET /api/v3/depth body fetched for `symbol`: its rows, and the buffered diffs it let the book apply.
        `taken_us`: the venue time it stands for (see `book_snapshot_records`)."""
        try:
            snapshot = parse_depth_snapshot(body, symbol, receive_us)
        except PayloadError as exc:
            raw = body if isinstance(body, bytes) else repr(body).encode()
            return depth_reject(exc, raw, origin, position)
        rows = book_snapshot_records(
            snapshot, limit=limit, taken_us=taken_us, exchange=self.exchange, asset_class=self.asset_class
        )
        resync = self._sync(symbol).on_snapshot(snapshot)
        if resync.applied:
            rows += self._checkpoint(resync.applied[-1])
        return Recorded(snapshots=rows, gaps=self._gap_rows(resync.gap), applied=len(resync.applied))

    def _checkpoint(self, diff: DepthDiff) -> list[dict[str, Any]]:
        """The checkpoint rows of the book `diff` was just applied to, when it opened a new interval, else none."""
        if self.checkpoint_us is None:
            return []
        interval = diff.event_us // self.checkpoint_us
        last = self._interval.get(diff.symbol)
        if last is not None and interval <= last:
            return []
        self._interval[diff.symbol] = interval
        book = self.book(diff.symbol)
        if last is None or book is None:
            return []
        copy = DepthSnapshot(diff.symbol, diff.last_update_id, diff.receive_us, tuple(book.bids.items()),
                             tuple(book.asks.items()))  # fmt: skip
        return book_snapshot_records(
            copy,
            taken_us=diff.event_us,
            snapshot_type=BookSnapshotType.CHECKPOINT,
            source=CHECKPOINT_SOURCE,
            exchange=self.exchange,
            asset_class=self.asset_class,
        )
