"""Live Binance: stream client → normalization → gap filling → SourceBatches, in id order, without duplicates.

The caller gets batches through `emit` (called on the event loop thread) and knows nothing of WebSockets; this
module knows nothing of Kafka. Frames are held for up to `flush_seconds` (or `flush_records` frames) and then
normalized together (`normalize_frames`, ~3x `normalize_frame` a frame on batches of hundreds). A batch whose ids
simply continue every stream goes out as Arrow tables; one holding a duplicate or a gap is taken apart into
records and goes id by id, exactly as a frame-by-frame reader would, REST backfill first. Counters (read,
rejected by reason, duplicates dropped, gaps) feed the run's reconciliation: frames read = records emitted +
rejected + duplicates dropped + stale quotes dropped + non-data frames.

Order books (channels `depth`, `depth@100ms`: the diff depth streams): depth frames go, at each drain, to a
`BookRecorder`, which keeps each symbol's book by Binance's procedure; after the drain the client fetches
`GET /api/v3/depth?limit=1000` for each symbol whose book waits with diffs buffered (its first ones, or those after a
break in the update ids, which the recorder lands as a stream_gaps row), through the same REST client as the trade
backfill (429 Retry-After honoured). Every diff and snapshot level is a row (book_updates_v2, book_snapshots_v2); a
snapshot is timed on the venue's clock, by the newest diff event the stream had delivered when it came. A depth
frame or snapshot is read as the rows it makes, or as one row rejected.

Partial book streams (channels `depth5`, `depth10`, `depth20`, each also `@100ms`): each frame, the top levels as of
an update id, is stored whole as book_snapshots_v2 rows of snapshot_type partial (`partial_book`), timed by its
receive time; it keeps no book and asks for no snapshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import structlog

from k2.core import metrics
from k2.core.batch import Reject, SourceBatch
from k2.schema import QUOTES_V2, TRADES_V2, AssetClass, DataType, RecordSpec
from k2.schema.arrow import records_from_arrow
from k2.schema.codecs import message_id
from k2.schema.fields import BOOK_SNAPSHOTS_V2, BOOK_UPDATES_V2, STREAM_GAPS
from k2.sources.binance.book_recorder import BookRecorder, Recorded
from k2.sources.binance.client import BinanceStreamClient, ClientLimits, stream_names
from k2.sources.binance.gaps import CONTIGUOUS_CHANNELS, REST_PAGE_LIMIT, Gap, RestBackfiller, SequenceTracker
from k2.sources.binance.normalize import (
    PayloadError,
    TimeUnit,
    intended_spec,
    normalize_agg_trade,
    normalize_frame,
    normalize_rest_trade,
)
from k2.sources.binance.normalize_columnar import FrameBatch, normalize_frames
from k2.sources.binance.partial_book import PARTIAL_CHANNELS, is_partial_frame, partial_book_records
from k2.sources.binance.symbols import SymbolDirectory, load_saved_exchange_info, save_exchange_info

log = structlog.get_logger(__name__)

EXCHANGE = "binance"
DEPTH_CHANNELS = frozenset({"depth", "depth@100ms"})  # the diff depth streams, every 1000 ms or 100 ms
DEPTH_SNAPSHOT_LIMIT = 1000  # levels a side asked of /api/v3/depth (Binance's procedure uses 1000; weight 50)


def _traded_by(items: list[dict[str, Any]], time_key: str, stop_us: int) -> list[dict[str, Any]]:
    """The REST items (in id order) up to the first one traded after `stop_us`: a contiguous run of ids, never a
    later id kept past an earlier one whose time says "after" (that would leave a hole behind a partial fill)."""
    return list(itertools.takewhile(lambda item: int(item[time_key]) * 1000 <= stop_us, items))


@dataclass
class LiveStats:
    frames: int = 0
    records: int = 0
    backfilled: int = 0
    control_frames: int = 0  # subscription acks, depth/kline events: not data for these tables
    duplicates: int = 0
    stale: int = 0  # bookTicker updates older than one already let through (superseded)
    rejected: Counter[str] = field(default_factory=Counter)
    gaps: list[Gap] = field(default_factory=list)
    book_frames: int = 0  # depth frames that made book_updates rows
    book_rows: int = 0  # rows read from depth frames and snapshots (a rejected snapshot: one)
    snapshots: int = 0  # depth snapshots fetched


async def fetch_symbols(rest_endpoint: str, symbols: list[str], cache: Path | None = None) -> SymbolDirectory:
    """exchangeInfo for the symbols we stream: base/quote assets (currency = quote asset).

    With `cache`, a fetched response is kept there with its fetch time, and used when the venue cannot be reached.
    """
    url = rest_endpoint.rstrip("/") + "/api/v3/exchangeInfo"
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(url)
            response.raise_for_status()
    except httpx.HTTPError as exc:
        if cache is None or not cache.is_file():
            raise
        directory, fetched_at_us = load_saved_exchange_info(cache)
        age_hours = (time.time_ns() // 1000 - fetched_at_us) / 3.6e9
        log.warning("binance.exchange_info_from_cache", error=str(exc), cache=str(cache), age_hours=round(age_hours, 1))
        return directory
    if cache is None:
        return SymbolDirectory.from_json(response.content, source=url)
    return save_exchange_info(cache, response.content, source=url)


def gap_record(gap: Gap) -> dict[str, Any]:
    """A gap as a stream_gaps record: the audit trail that every hole was seen and what became of it."""
    return {
        "message_id": message_id(EXCHANGE, DataType.GAPS.value, gap.symbol, f"{gap.channel}:{gap.first_missing}"),
        "symbol": gap.symbol,
        "exchange": EXCHANGE,
        "asset_class": AssetClass.CRYPTO.value,
        "channel": gap.channel,
        "first_missing": gap.first_missing,
        "last_missing": gap.last_missing,
        "missing_count": gap.size,
        "filled_count": gap.filled,
        "status": gap.status,
        "timestamp": gap.detected_us,
        "detail": gap.detail or None,
        "stream": gap.stream,
        "reason": gap.reason,
        "missing_from": gap.missing_from,
        "missing_to": gap.missing_to,
    }


class BinanceLive:
    def __init__(
        self,
        symbols: list[str],
        channels: list[str],
        ws_endpoint: str,
        rest_endpoint: str,
        emit: Callable[[SourceBatch], None],
        *,
        directory: SymbolDirectory | None = None,
        exchange_info_cache: Path | None = None,
        resume_from: dict[tuple[str, str], int] | None = None,
        limits: ClientLimits | None = None,
        flush_seconds: float = 0.1,
        flush_records: int = 5000,
        book_checkpoint_us: int | None = None,
    ) -> None:
        self.symbols = [s.upper() for s in symbols]
        self.channels = channels
        self._rest_endpoint = rest_endpoint
        self._emit = emit
        self._directory = directory
        self._exchange_info_cache = exchange_info_cache
        # Times in µs straight from the exchange: no ms→µs rounding question (Binance `timeUnit` parameter).
        self._time_unit = TimeUnit.MICROSECOND
        self._client = BinanceStreamClient(
            stream_names(self.symbols, channels),
            self._on_frame,
            ws_endpoint,
            limits,
            query="timeUnit=MICROSECOND",
            on_disconnect=self._on_disconnect,
        )
        self._tracker = SequenceTracker(dict(resume_from or {}))
        self._backfiller = RestBackfiller(rest_endpoint)
        self._buffers: dict[str, SourceBatch] = {}
        self._pending: list[tuple[bytes, int, int, int]] = []  # (raw, receive µs, connection id, frame number)
        self._flush_seconds = flush_seconds
        self._flush_records = flush_records
        self._last_flush = time.monotonic()
        self._lock = asyncio.Lock()  # frames from overlapping connections are queued, and drained, one at a time
        # Quote outages: (frame number of the last frame before a lost connection, its streams), not yet drained;
        # each quoted symbol's last quote time let through; outages waiting for their symbol's next quote.
        self._disconnects: list[tuple[int, list[str]]] = []
        self._last_quote_us: dict[str, int] = {}
        self._quote_outages: dict[str, Gap] = {}
        depth = any(channel in DEPTH_CHANNELS for channel in channels)
        self._books = BookRecorder(time_unit=self._time_unit, checkpoint_us=book_checkpoint_us) if depth else None
        self._partial = any(channel in PARTIAL_CHANNELS for channel in channels)
        self.stats = LiveStats()

    @property
    def client(self) -> BinanceStreamClient:
        return self._client

    @property
    def books(self) -> BookRecorder | None:
        """The local order books (None without a depth channel)."""
        return self._books

    def stop(self) -> None:
        self._client.stop()

    async def run(self) -> None:
        if self._directory is None:
            self._directory = await fetch_symbols(self._rest_endpoint, self.symbols, self._exchange_info_cache)
        flusher = asyncio.ensure_future(self._flush_periodically())
        try:
            await self._client.run()
            await self._last_drain(flusher, snapshots=True)  # the tail check starts from the last id of every frame
            await self._close_tails(time.time_ns() // 1000)
            self._end_open_outages()
        finally:
            try:
                await self._last_drain(flusher)  # after an error too: frames read are still handled (and counted)
            finally:
                self.flush()
                await self._backfiller.close()

    async def _last_drain(self, flusher: asyncio.Future[None], snapshots: bool = False) -> None:
        """Stop the periodic flusher between two drains (never in the middle of a backfill), then drain."""
        async with self._lock:
            flusher.cancel()
            await self._drain(snapshots)

    async def _close_tails(self, stop_us: int) -> None:
        """A frame lost right before we stop has no successor to reveal it: ask REST, once, what followed the
        last id of each contiguous stream up to the stop moment, and land it as a (tail) gap."""
        for (symbol, channel), last in sorted(self._tracker.last.items()):
            if channel not in CONTIGUOUS_CHANNELS:
                continue
            try:
                items = await self._backfiller.fetch(symbol, channel, last + 1, last + REST_PAGE_LIMIT)
            except Exception as exc:  # a stop must not hang on an unreachable REST API; say why
                log.warning("binance.tail_check_failed", symbol=symbol, channel=channel, error=repr(exc))
                continue
            tail = _traded_by(items, "T" if channel == "aggTrade" else "time", stop_us)
            if tail:
                id_key = "a" if channel == "aggTrade" else "id"
                await self._fill(symbol, channel, last + 1, int(tail[-1][id_key]), prefetched=tail)

    # --- per frame ------------------------------------------------------------------------------------------
    async def _on_frame(self, raw: bytes, receive_us: int, conn_id: int) -> None:
        async with self._lock:
            self.stats.frames += 1
            self._pending.append((raw, receive_us, conn_id, self.stats.frames))
            if self._due():
                await self._drain()

    # --- per batch of frames --------------------------------------------------------------------------------
    async def _drain(self, snapshots: bool = True) -> None:
        """Normalize the frames read since the last drain, fill any gap they reveal, fetch the depth snapshots
        books wait for (unless `snapshots` is False), and emit everything. Each run of frames from one connection
        is normalized at once, so a reject keeps its origin (`ws#<conn>`) and position (the frame's number in the
        whole stream)."""
        pending, self._pending = self._pending, []
        marks, self._disconnects = self._disconnects, []
        assert self._directory is not None

        def lost_up_to(frame_number: int) -> None:  # connections lost after this frame or before: outages begin
            while marks and marks[0][0] <= frame_number:
                self._begin_outages(marks.pop(0)[1])

        start = 0
        while start < len(pending):
            lost_up_to(pending[start][3] - 1)
            conn_id = pending[start][2]
            # a run is one connection's frames, ending at the last frame before a lost connection
            cut = marks[0][0] if marks else None
            end = start + 1
            while end < len(pending) and pending[end][2] == conn_id and (cut is None or pending[end - 1][3] < cut):
                end += 1
            run = pending[start:end]
            others = self._record_depth(run) if self._books is not None or self._partial else run
            if others:
                await self._take(self._normalize(others, conn_id, whole=len(others) == len(run)), len(others))
            lost_up_to(pending[end - 1][3])
            start = end
        for _, streams in marks:
            self._begin_outages(streams)
        if snapshots and self._books is not None:
            await self._fetch_snapshots()
        self.flush()

    def _normalize(self, run: list[tuple[bytes, int, int, int]], conn_id: int, whole: bool) -> FrameBatch:
        """One connection's frames (`whole`: every frame of the run, else the run less its depth frames), each
        record and reject numbered by its frame's place in the stream."""
        frames = [(raw, receive_us) for raw, receive_us, _, _ in run]
        origin = f"ws#{conn_id}"
        first = run[0][3]
        if whole:
            return normalize_frames(frames, self._directory, self._time_unit, origin=origin, first_position=first)
        assert self._directory is not None
        numbers = [number for *_, number in run]
        batch = normalize_frames(frames, self._directory, self._time_unit, origin=origin, sequences=numbers)
        placed = []
        for reject in batch.rejects:  # numbered within the frames left: made again at the frame's own number
            raw, receive_us, _, number = run[reject.position - 1]
            again = normalize_frame(raw, self._directory, receive_us, self._time_unit, origin=origin, position=number)
            assert isinstance(again, Reject)
            placed.append(again)
        return dataclasses.replace(batch, rejects=placed)

    # --- order books ------------------------------------------------------------------------------------------
    def _record_depth(self, run: list[tuple[bytes, int, int, int]]) -> list[tuple[bytes, int, int, int]]:
        """The run's depth diff frames to the books, its partial book frames to rows; the other frames are returned,
        in order."""
        others = []
        for frame in run:
            raw, receive_us, conn_id, number = frame
            if self._partial and is_partial_frame(raw):
                self._take_partial(partial_book_records(raw, receive_us, origin=f"ws#{conn_id}", position=number))
                continue
            got = None
            if self._books is not None and intended_spec(raw) is BOOK_UPDATES_V2:
                got = self._books.frame(raw, receive_us, origin=f"ws#{conn_id}", position=number)
            if got is None:
                others.append(frame)  # not a depthUpdate: the normalizer tells what it is
            elif isinstance(got, Reject):
                self._reject(got)
            elif got.updates:
                self.stats.book_frames += 1
                self._take_book(got)
            else:
                self.stats.control_frames += 1  # an event that changed no level: no row to store
                self._take_book(got)
        return others

    def _take_partial(self, got: list[dict[str, Any]] | Reject) -> None:
        if isinstance(got, Reject):
            self._reject(got, BOOK_SNAPSHOTS_V2)
            return
        if not got:
            self.stats.control_frames += 1  # both sides empty: no level to store
            return
        self.stats.book_frames += 1
        self.stats.book_rows += len(got)
        for row in got:
            self._add(row, BOOK_SNAPSHOTS_V2)

    def _take_book(self, recorded: Recorded) -> None:
        for spec, rows in (
            (BOOK_UPDATES_V2, recorded.updates),
            (BOOK_SNAPSHOTS_V2, recorded.snapshots),
            (STREAM_GAPS, recorded.gaps),
        ):
            for row in rows:
                self._add(row, spec)
        self.stats.book_rows += len(recorded.updates) + len(recorded.snapshots)
        for row in recorded.gaps:
            gap = Gap(
                row["symbol"],
                row["channel"],
                row["first_missing"],
                row["last_missing"],
                detected_us=row["timestamp"],
                status=row["status"],
                detail=row["detail"],
                reason=row["reason"],
            )
            log.info("binance.book_gap", symbol=gap.symbol, first=gap.first_missing, last=gap.last_missing)
            self.stats.gaps.append(gap)
            metrics.STREAM_GAPS.labels(gap.symbol, gap.channel, gap.status).inc()

    async def _fetch_snapshots(self) -> None:
        """A depth snapshot for each symbol whose book waits with diffs buffered (Binance's procedure: buffer,
        then fetch); one that cannot be fetched now is asked for again at the next drain."""
        assert self._books is not None
        for symbol in self._books.wanting_snapshot():
            try:
                body = await self._backfiller.depth_snapshot(symbol, DEPTH_SNAPSHOT_LIMIT)
            except Exception as exc:  # the book waits on; said, and tried again at the next drain
                log.warning("binance.depth_snapshot_failed", symbol=symbol, error=repr(exc))
                continue
            self.stats.snapshots += 1
            origin = f"{self._rest_endpoint} depth {symbol}"
            got = self._books.snapshot(
                symbol,
                body,
                time.time_ns() // 1000,
                limit=DEPTH_SNAPSHOT_LIMIT,
                taken_us=self._books.event_us.get(symbol),
                origin=origin,
            )
            if isinstance(got, Reject):
                self.stats.book_rows += 1
                self._reject(got, BOOK_SNAPSHOTS_V2)
            else:
                self._take_book(got)

    async def _take(self, batch: FrameBatch, frames: int) -> None:
        """One connection's run of frames, normalized: as tables when its ids simply continue every stream,
        otherwise record by record in frame order, as `_accept` has always done."""
        self.stats.control_frames += batch.control_frames
        for reject in batch.rejects:
            self._reject(reject)
        # while a quote outage waits for its symbol's next quote, quotes go record by record (`_accept` ends it)
        if not self._quote_outages and self._continues(batch.trades, batch.quotes):
            self.flush()  # records of earlier runs (and their backfills) go first
            self._note_last_quotes(batch.quotes)
            for spec, table in ((TRADES_V2, batch.trades), (QUOTES_V2, batch.quotes)):
                if table.num_rows:
                    self.stats.records += table.num_rows
                    self._emit(SourceBatch(spec, AssetClass.CRYPTO, EXCHANGE, rows_read=table.num_rows, table=table))
            return
        in_order: list[dict[str, Any] | None] = [None] * frames
        for table, rows in ((batch.trades, batch.trade_frames), (batch.quotes, batch.quote_frames)):
            for index, record in zip(rows.tolist(), records_from_arrow(table), strict=True):
                in_order[index] = record
        for record in in_order:
            if record is not None:  # rejects and control frames are counted above
                await self._accept(record)
                if self._size() >= self._flush_records:
                    self.flush()

    def _continues(self, *tables: pa.Table) -> bool:
        """Every row of the tables is "new" to the tracker (no duplicate, no gap): then the tracker has moved past
        them all. Otherwise nothing has moved. (Trades and quotes never share a channel, so which table comes
        first does not matter.)"""
        tables = tuple(table for table in tables if table.num_rows)
        if not tables:
            return True
        channels = [pc.map_lookup(table["vendor_data"], pa.scalar("channel"), "first") for table in tables]
        return self._tracker.advance_if_all_new(
            pa.chunked_array([chunk for table in tables for chunk in table["symbol"].chunks], pa.string()),
            pa.chunked_array([chunk for column in channels for chunk in column.chunks], pa.string()),
            pa.chunked_array([chunk for table in tables for chunk in table["source_sequence"].chunks], pa.int64()),
        )

    async def _accept(self, record: dict[str, Any]) -> None:
        symbol = record["symbol"]
        channel = record["vendor_data"]["channel"]
        seq = record["source_sequence"]
        verdict, first_missing = self._tracker.classify(symbol, channel, seq)
        if verdict == "duplicate":
            self.stats.duplicates += 1
            return
        if verdict == "stale":
            self.stats.stale += 1
            return
        if verdict == "gap" and first_missing is not None:
            await self._fill(symbol, channel, first_missing, seq - 1)
        self._tracker.advance(symbol, channel, seq)
        if channel == "bookTicker":
            if symbol in self._quote_outages:
                self._end_outage(symbol, seq, record["timestamp"])
            self._last_quote_us[symbol] = record["timestamp"]
        self._add(record)

    async def _fill(
        self, symbol: str, channel: str, first: int, last: int, prefetched: list[dict[str, Any]] | None = None
    ) -> None:
        gap = Gap(symbol, channel, first, last, detected_us=time.time_ns() // 1000)
        log.info("binance.gap", symbol=symbol, channel=channel, first=first, last=last)
        try:
            items = prefetched if prefetched is not None else await self._backfiller.fetch(symbol, channel, first, last)
        except Exception as exc:  # the gap is then recorded as unrecoverable, with why
            items = []
            gap.detail = f"{type(exc).__name__}: {exc}"
        assert self._directory is not None
        now = time.time_ns() // 1000
        for item in items:
            try:
                # REST answers in milliseconds: K2 sends no X-MBX-TIME-UNIT header (not every venue mirror honours it)
                if channel == "aggTrade":
                    record = normalize_agg_trade(item, self._directory, now, TimeUnit.MILLISECOND, symbol=symbol)
                else:
                    record = normalize_rest_trade(item, symbol, self._directory, now, TimeUnit.MILLISECOND)
            except PayloadError as exc:  # e.g. an aggTrade Binance has since invalidated: counted, kept in the DLQ
                raw = orjson.dumps(item)
                self._reject(Reject(exc.reason, exc.detail, raw, f"{self._rest_endpoint} {channel}", 0))
                continue
            record["vendor_data"]["backfilled"] = "rest"
            self._tracker.advance(symbol, channel, record["source_sequence"])
            self._add(record)
        gap.filled = len(items)
        gap.status = "filled" if gap.filled == gap.size else ("partial" if gap.filled else "unrecoverable")
        self.stats.backfilled += gap.filled
        self.stats.gaps.append(gap)
        metrics.STREAM_GAPS.labels(gap.symbol, gap.channel, gap.status).inc()
        self._add(gap_record(gap), STREAM_GAPS)

    # --- quote outages -----------------------------------------------------------------------------------------
    def _on_disconnect(self, streams: list[str]) -> None:
        """The client lost the connection of `streams`; its frames so far are queued (up to frame number now)."""
        self._disconnects.append((self.stats.frames, streams))

    def _begin_outages(self, streams: list[str]) -> None:
        """bookTicker streams whose connection was lost: REST cannot backfill quotes, so what was sent meanwhile is
        lost; the outage runs from the symbol's last quote to its next one (`_end_outage`)."""
        for stream in streams:
            name, _, channel = stream.partition("@")
            symbol = name.upper()
            if channel != "bookTicker" or symbol in self._quote_outages:
                continue
            last = self._tracker.last.get((symbol, channel))
            self._quote_outages[symbol] = Gap(
                symbol,
                channel,
                0 if last is None else last + 1,
                -1,
                detected_us=time.time_ns() // 1000,
                status="unrecoverable",
                detail="the connection was lost; bookTicker updates cannot be fetched from REST",
                reason="disconnect",
                missing_from=self._last_quote_us.get(symbol),
            )

    def _end_outage(self, symbol: str, update_id: int | None, quoted_us: int | None) -> None:
        """The symbol quotes again with `update_id` at `quoted_us` (None: the stream stopped first): a stream_gaps
        row, unless the update ids show nothing was missed (the next id followed the last one directly)."""
        gap = self._quote_outages.pop(symbol)
        if update_id is not None:
            if update_id == gap.first_missing:
                return
            gap.last_missing = update_id - 1
        else:  # no later update id bounds it: an empty id range, and the detail says so
            gap.last_missing = gap.first_missing - 1
            gap.detail += "; the stream stopped before the symbol quoted again, so how many were lost is unknown"
        gap.missing_to = quoted_us
        log.info("binance.quote_outage", symbol=symbol, missing_from=gap.missing_from, missing_to=quoted_us)
        self.stats.gaps.append(gap)
        metrics.STREAM_GAPS.labels(gap.symbol, gap.channel, gap.status).inc()
        self._add(gap_record(gap), STREAM_GAPS)

    def _end_open_outages(self) -> None:
        """The stream stops: outages whose symbol has not quoted since lasted to the end (missing_to null)."""
        for symbol in sorted(self._quote_outages):
            self._end_outage(symbol, None, None)

    def _note_last_quotes(self, quotes: pa.Table) -> None:
        """Each symbol's last quote time in a table let through whole (rows of a symbol are in update-id order)."""
        if quotes.num_rows:
            last = quotes.group_by("symbol", use_threads=False).aggregate([("timestamp", "last")])
            times = last["timestamp_last"].cast(pa.int64()).to_pylist()
            self._last_quote_us.update(zip(last["symbol"].to_pylist(), times, strict=True))

    def _reject(self, reject: Reject, spec: RecordSpec | None = None) -> None:
        """Counted and kept for the DLQ of `spec`, or of the table the frame's bytes say it was meant for."""
        self.stats.rejected[reject.reason] += 1
        batch = self._buffer(spec or intended_spec(reject.raw))
        batch.rejects.append(reject)
        batch.rows_read += 1

    def _add(self, record: dict[str, Any], spec: RecordSpec | None = None) -> None:
        spec = spec or (QUOTES_V2 if "quote_id" in record else TRADES_V2)
        batch = self._buffer(spec)
        batch.records.append(record)
        if spec is not STREAM_GAPS:  # gap records are K2's own findings, not frames read
            batch.rows_read += 1
            self.stats.records += 1

    def _buffer(self, spec: RecordSpec) -> SourceBatch:
        batch = self._buffers.get(spec.name)
        if batch is None:
            batch = self._buffers[spec.name] = SourceBatch(spec, AssetClass.CRYPTO, EXCHANGE)
        return batch

    # --- batching ---------------------------------------------------------------------------------------------
    def _size(self) -> int:
        return sum(len(b.records) + len(b.rejects) for b in self._buffers.values())

    def _due(self) -> bool:
        size = self._size() + len(self._pending)
        return size >= self._flush_records or time.monotonic() - self._last_flush >= self._flush_seconds

    def flush(self) -> None:
        """Emit the records, rejects and gap rows handled so far (frames not yet drained wait for `_drain`)."""
        buffers, self._buffers = self._buffers, {}
        self._last_flush = time.monotonic()
        for batch in buffers.values():
            if batch.records or batch.rejects:
                self._emit(batch)

    async def _flush_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._flush_seconds)
            async with self._lock:
                if self._due():
                    await self._drain()
