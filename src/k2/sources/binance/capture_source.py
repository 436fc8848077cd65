"""Recorded Binance captures (cryptofeed's raw files, see `k2.sources.binance.capture`) → trades_v2 and quotes_v2.

`k2 load capture FILE...` reads a capture as data, without replaying it: every aggTrade, trade and bookTicker frame
becomes the record the live client makes of it (its batch normalizer, `normalize_frames`: the same ids), stamped
with the capture's own clock: `ingestion_timestamp` and vendor_data.receive_time_us are the line's receipt time,
exactly as recorded (a bookTicker, which carries no event time, takes it as its timestamp too, like a live quote);
trade times come from the frame. A capture recorded with `timeUnit=MICROSECOND` in its URL is read in microseconds.

Counting, for the reconciliation (read = written + rejected): a trade or quote frame, a frame that should have been
one but does not normalize, and a line of no known kind are each one row read. A line of no known kind is rejected
as `bad_capture_line` and a bad frame with the normalizer's reason; both go to the DLQ with their bytes, file and
line. Depth, kline and ticker frames, subscription acknowledgements, the connection and configuration lines and
REST bodies are not trade or quote data: they are passed by, not read (`passed` counts them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from k2.core.batch import Reject, SourceBatch
from k2.core.errors import UserError
from k2.schema.fields import QUOTES_V2, TRADES_V2, AssetClass
from k2.sources.binance.capture import (
    BadLine,
    CaptureFormatError,
    WsConnect,
    WsFrame,
    parse_line,
    read_capture,
)
from k2.sources.binance.normalize import EXCHANGE, TimeUnit, intended_spec, normalize_frame
from k2.sources.binance.normalize_columnar import normalize_frames
from k2.sources.binance.symbols import QuoteResolver, shipped_directory

BAD_LINE = "bad_capture_line"


class CaptureSource:
    """Capture files → SourceBatches of trades_v2 and quotes_v2, in file (= receipt) order.

    `symbols` gives each symbol's quote asset (default: the exchangeInfo shipped in data/samples); a symbol it does
    not list is rejected as `unknown_symbol`.
    A chunk of at most `chunk_rows` frames and bad lines makes one trades and one quotes batch
    (Arrow tables); batches never mix files.
    """

    def __init__(self, paths: list[Path], symbols: QuoteResolver | None = None, chunk_rows: int = 50_000) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.paths = [Path(p) for p in paths]
        self.resolver: QuoteResolver = symbols if symbols is not None else shipped_directory()
        self.chunk_rows = chunk_rows
        self.passed = 0  # lines and frames that are not trade or quote data (see the module doc)
        self.empty_files: list[str] = []  # captures that held no trade or quote frame

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
        time_unit = TimeUnit.MILLISECOND
        frames: list[WsFrame] = []
        bad: list[BadLine] = []
        read = 0
        for entry in read_capture(path, strict=False):
            if isinstance(entry, WsFrame):
                frames.append(entry)
            elif isinstance(entry, BadLine):
                bad.append(entry)
            else:
                self.passed += 1
                if isinstance(entry, WsConnect) and "timeunit=microsecond" in entry.url.lower():
                    # frames so far were in the unit of the connection before
                    for batch in self._chunk_batches(path, frames, bad, time_unit):
                        read += batch.rows_read
                        yield batch
                    frames, bad = [], []
                    time_unit = TimeUnit.MICROSECOND
            if len(frames) + len(bad) >= self.chunk_rows:
                for batch in self._chunk_batches(path, frames, bad, time_unit):
                    read += batch.rows_read
                    yield batch
                frames, bad = [], []
        for batch in self._chunk_batches(path, frames, bad, time_unit):
            read += batch.rows_read
            yield batch
        if not read:
            self.empty_files.append(origin)

    def _chunk_batches(
        self, path: Path, frames: list[WsFrame], bad: list[BadLine], time_unit: TimeUnit
    ) -> Iterator[SourceBatch]:
        """One chunk of a file's lines as a trades batch and a quotes batch (Arrow tables, via the live client's
        batch normalizer), each with the rejects meant for it."""
        name = path.name
        normalized = normalize_frames([(f.raw, f.receipt_us) for f in frames], self.resolver, time_unit)
        self.passed += normalized.control_frames
        rejects = [Reject(BAD_LINE, f"{name} line {b.line_no}: {b.reason}", b.raw, str(path), b.line_no) for b in bad]
        for reject in normalized.rejects:
            # the batch normalizer numbers frames; the reject is made again where its line is known
            frame = frames[reject.position - 1]
            located = normalize_frame(
                frame.raw, self.resolver, frame.receipt_us, time_unit, origin=f"{name} line {frame.line_no}"
            )
            assert isinstance(located, Reject)
            rejects.append(dataclasses.replace(located, origin=str(path), position=frame.line_no))
        rejects.sort(key=lambda r: r.position)
        for spec, table in ((TRADES_V2, normalized.trades), (QUOTES_V2, normalized.quotes)):
            mine = [r for r in rejects if intended_spec(r.raw) is spec]
            if table.num_rows or mine:
                batch = SourceBatch(spec, AssetClass.CRYPTO, EXCHANGE, rejects=mine, table=table)
                batch.rows_read = table.num_rows + len(mine)
                yield batch


def _first_line(path: Path, most: int = 1 << 20) -> tuple[int, bytes] | None:
    """The first non-blank line (its first `most` bytes: enough to tell its kind) and its number, or None."""
    line_no = 0
    with path.open("rb") as f:
        while line := f.readline(most):
            line_no += 1
            if line := line.rstrip(b"\r\n"):
                return line_no, line
    return None
