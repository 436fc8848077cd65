"""Recorded Binance captures (cryptofeed's raw files, see `k2.sources.binance.capture`) → trades, quotes and books.

`k2 load capture FILE...` reads a capture as data, without replaying it: every aggTrade, trade and bookTicker frame
becomes the record the live client makes of it (its batch normalizer, `normalize_frames`: the same ids), stamped
with the capture's own clock: `ingestion_timestamp` and vendor_data.receive_time_us are the line's receipt time,
exactly as recorded (a bookTicker, which carries no event time, takes it as its timestamp too, like a live quote);
trade times come from the frame. A capture recorded with `timeUnit=MICROSECOND` in its URL is read in microseconds.

Books: every diff depth frame (`<symbol>@depth`, `@depth@100ms`) and every REST depth snapshot line
(`<url>/depth?symbol=... -> <time>: <body>`) goes, in file order with its receipt time, to one `BookRecorder` for
the whole load (so a capture's WS and HTTP files given in that order keep one book per symbol). It gives the
book_updates_v2 and book_snapshots_v2 rows (one per price level; every diff and snapshot is stored) and a
stream_gaps row for each break in a symbol's update ids. A partial book frame (`<symbol>@depth5/10/20[@100ms]`)
is stored as it is live (`partial_book`): book_snapshots_v2 rows of snapshot_type partial, timed by the line's
receipt.

Counting, for the reconciliation (read = written + rejected): a trade or quote frame, a frame that should have been
one but does not normalize, and a line of no known kind are each one row read; a depth frame or snapshot line is
read as the rows it makes, one per price level, or as one row rejected when it cannot be read. A line of no known
kind is rejected as `bad_capture_line`, a bad frame or snapshot with its parser's reason; all go to the DLQ of the
table they were meant for (a depth frame: book_updates, a snapshot: book_snapshots) with their bytes, file and line.
stream_gaps rows are K2's own findings, not rows read. Kline and ticker frames, depth events that change no level,
subscription acknowledgements, the connection and configuration lines and other REST bodies hold no data K2
stores: they are passed by, not read (`passed` counts them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2.core.batch import Reject, SourceBatch
from k2.core.errors import UserError
from k2.schema.fields import (
    BOOK_SNAPSHOTS_V2,
    BOOK_UPDATES_V2,
    QUOTES_V2,
    STREAM_GAPS,
    TRADES_V2,
    AssetClass,
    RecordSpec,
)
from k2.sources.binance.book_recorder import BookRecorder, Recorded
from k2.sources.binance.capture import (
    BadLine,
    CaptureFormatError,
    RestResponse,
    WsConnect,
    WsFrame,
    parse_line,
    read_capture,
)
from k2.sources.binance.normalize import EXCHANGE, TimeUnit, intended_spec, normalize_frame
from k2.sources.binance.normalize_columnar import normalize_frames
from k2.sources.binance.partial_book import is_partial_frame, partial_book_records
from k2.sources.binance.symbols import QuoteResolver, shipped_directory

BAD_LINE = "bad_capture_line"


@dataclass
class _Chunk:
    """A file's lines read since the last batches were made: frames for the trade and quote normalizer, bad lines,
    and the book rows and rejects the recorder already made."""

    frames: list[WsFrame] = field(default_factory=list)
    bad: list[BadLine] = field(default_factory=list)
    books: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # spec name → rows
    book_rejects: list[tuple[RecordSpec, Reject]] = field(default_factory=list)

    def size(self) -> int:
        return len(self.frames) + len(self.bad) + sum(map(len, self.books.values())) + len(self.book_rejects)

    def add(self, recorded: Recorded) -> None:
        for spec, rows in (
            (BOOK_UPDATES_V2, recorded.updates),
            (BOOK_SNAPSHOTS_V2, recorded.snapshots),
            (STREAM_GAPS, recorded.gaps),
        ):
            if rows:
                self.books.setdefault(spec.name, []).extend(rows)


class CaptureSource:
    """Capture files → SourceBatches of trades_v2, quotes_v2, book_updates_v2, book_snapshots_v2 and stream_gaps,
    in file (= receipt) order.

    `symbols` gives each symbol's quote asset (default: the exchangeInfo shipped in data/samples); a symbol it does
    not list is rejected as `unknown_symbol` (trades and quotes; book rows carry no currency).
    A chunk closes once its lines made `chunk_rows` rows (a snapshot's levels are never split) and makes at most one
    batch per table (trades and quotes as Arrow tables); batches never mix files.
    """

    def __init__(
        self,
        paths: list[Path],
        symbols: QuoteResolver | None = None,
        chunk_rows: int = 50_000,
        *,
        book_checkpoint_us: int | None = None,
    ) -> None:
        """`book_checkpoint_us`: the venue time between order-book checkpoints (see `BookRecorder`; None: none)."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.paths = [Path(p) for p in paths]
        self.resolver: QuoteResolver = symbols if symbols is not None else shipped_directory()
        self.chunk_rows = chunk_rows
        self.recorder = BookRecorder(checkpoint_us=book_checkpoint_us)
        self.passed = 0  # lines and frames that hold no data K2 stores (see the module doc)
        self.empty_files: list[str] = []  # captures that held no trade, quote or book data

    def describe(self) -> str:
        names = ", ".join(p.name for p in self.paths[:3]) + (", ..." if len(self.paths) > 3 else "")
        return f"Binance captures ({len(self.paths)}: {names})"

    def check(self) -> None:
        """Each file opens with a capture line (UserError naming the file otherwise): a wrong file costs one line."""
        for path in self.paths:
            if not path.is_file():
                raise UserError(f"{path} is not a file: give the path of a recorded capture, e.g. BINANCE.ws.1.0")
            first = _first_line(path)
            if first is None:
                raise UserError(f"{path} is empty: a capture holds one recorded line per frame")
            line_no, line = first
            try:
                parse_line(line, line_no)
            except (CaptureFormatError, ValueError):
                raise UserError(
                    f"{path} is not a cryptofeed capture: line {line_no} starts {line[:40]!r}; expected lines like"
                    " '<unix time>: <frame>' after an optional '<ws url> <-> <time>' or 'configuration: ...' line"
                ) from None

    def batches(self) -> Iterator[SourceBatch]:
        for path in self.paths:
            yield from self._file_batches(path)

    def _file_batches(self, path: Path) -> Iterator[SourceBatch]:
        origin = str(path)
        time_unit = self.recorder.time_unit = TimeUnit.MILLISECOND
        chunk = _Chunk()
        read = 0
        for entry in read_capture(path, strict=False):
            if isinstance(entry, WsFrame):
                if is_partial_frame(entry.raw):
                    self._partial_frame(path, entry, chunk)
                elif not (intended_spec(entry.raw) is BOOK_UPDATES_V2 and self._depth_frame(path, entry, chunk)):
                    chunk.frames.append(entry)
            elif isinstance(entry, BadLine):
                chunk.bad.append(entry)
            elif isinstance(entry, RestResponse) and entry.path.endswith("/depth"):
                self._depth_snapshot(path, entry, chunk)
            else:
                self.passed += 1
                if isinstance(entry, WsConnect) and "timeunit=microsecond" in entry.url.lower():
                    # frames so far were in the unit of the connection before
                    for batch in self._chunk_batches(path, chunk, time_unit):
                        read += batch.rows_read
                        yield batch
                    chunk = _Chunk()
                    time_unit = self.recorder.time_unit = TimeUnit.MICROSECOND
            if chunk.size() >= self.chunk_rows:
                for batch in self._chunk_batches(path, chunk, time_unit):
                    read += batch.rows_read
                    yield batch
                chunk = _Chunk()
        for batch in self._chunk_batches(path, chunk, time_unit):
            read += batch.rows_read
            yield batch
        if not read:
            self.empty_files.append(origin)

    def _depth_frame(self, path: Path, frame: WsFrame, chunk: _Chunk) -> bool:
        """A diff depth frame to the recorder: False when it turns out to be no depthUpdate event after all."""
        got = self.recorder.frame(frame.raw, frame.receipt_us, origin=f"{path.name} line {frame.line_no}")
        if got is None:
            return False
        if isinstance(got, Reject):
            chunk.book_rejects.append((BOOK_UPDATES_V2, _located(got, path, frame.line_no)))
        else:
            chunk.add(got)
            if not got.updates:
                self.passed += 1  # an event that changed no level: no row to store
        return True

    def _partial_frame(self, path: Path, frame: WsFrame, chunk: _Chunk) -> None:
        got = partial_book_records(frame.raw, frame.receipt_us, origin=f"{path.name} line {frame.line_no}", position=0)
        if isinstance(got, Reject):
            chunk.book_rejects.append((BOOK_SNAPSHOTS_V2, _located(got, path, frame.line_no)))
        elif got:
            chunk.add(Recorded(snapshots=got))
        else:
            self.passed += 1  # both sides empty: no level to store

    def _depth_snapshot(self, path: Path, response: RestResponse, chunk: _Chunk) -> None:
        where = f"{path.name} line {response.line_no}"
        symbol = response.params.get("symbol")
        if not symbol:
            reject = Reject(
                "missing_field:symbol",
                f"{where}: the depth request {response.url} names no symbol",
                response.body,
                str(path),
                response.line_no,
            )
            chunk.book_rejects.append((BOOK_SNAPSHOTS_V2, reject))
            return
        asked = response.params.get("limit", "")
        limit = int(asked) if asked.isdigit() else None
        got = self.recorder.snapshot(symbol.upper(), response.body, response.receipt_us, limit=limit, origin=where)
        if isinstance(got, Reject):
            chunk.book_rejects.append((BOOK_SNAPSHOTS_V2, _located(got, path, response.line_no)))
        else:
            chunk.add(got)

    def _chunk_batches(self, path: Path, chunk: _Chunk, time_unit: TimeUnit) -> Iterator[SourceBatch]:
        """One chunk of a file's lines as a batch per table (trades and quotes as Arrow tables, via the live
        client's batch normalizer), each with the rejects meant for it."""
        name = path.name
        frames = chunk.frames
        normalized = normalize_frames(
            [(f.raw, f.receipt_us) for f in frames],
            self.resolver,
            time_unit,
            sequences=[f.line_no for f in frames],  # platform_sequence: the line in the capture, as for other files
        )
        self.passed += normalized.control_frames
        rejects = [
            Reject(BAD_LINE, f"{name} line {b.line_no}: {b.reason}", b.raw, str(path), b.line_no) for b in chunk.bad
        ]
        for reject in normalized.rejects:
            # the batch normalizer numbers frames; the reject is made again where its line is known
            frame = frames[reject.position - 1]
            located = normalize_frame(
                frame.raw, self.resolver, frame.receipt_us, time_unit, origin=f"{name} line {frame.line_no}"
            )
            assert isinstance(located, Reject)
            rejects.append(_located(located, path, frame.line_no))
        rejects.sort(key=lambda r: r.position)
        for spec, table in ((TRADES_V2, normalized.trades), (QUOTES_V2, normalized.quotes)):
            mine = [r for r in rejects if intended_spec(r.raw) is spec]
            if table.num_rows or mine:
                batch = SourceBatch(spec, AssetClass.CRYPTO, EXCHANGE, rejects=mine, table=table)
                batch.rows_read = table.num_rows + len(mine)
                yield batch
        for spec in (BOOK_SNAPSHOTS_V2, BOOK_UPDATES_V2, STREAM_GAPS):
            rows = chunk.books.get(spec.name, [])
            mine = [r for s, r in chunk.book_rejects if s is spec]
            if rows or mine:
                batch = SourceBatch(spec, AssetClass.CRYPTO, EXCHANGE, records=rows, rejects=mine)
                # stream_gaps rows are K2's findings, not rows read
                batch.rows_read = 0 if spec is STREAM_GAPS else len(rows) + len(mine)
                yield batch


def _located(reject: Reject, path: Path, line_no: int) -> Reject:
    """A reject made with its line in the detail, placed at its file and line for the DLQ."""
    return dataclasses.replace(reject, origin=str(path), position=line_no)


def _first_line(path: Path, most: int = 1 << 20) -> tuple[int, bytes] | None:
    """The first non-blank line (its first `most` bytes: enough to tell its kind) and its number, or None."""
    line_no = 0
    with path.open("rb") as f:
        while line := f.readline(most):
            line_no += 1
            if line := line.rstrip(b"\r\n"):
                return line_no, line
    return None
