"""ASX equities files → V2 trades, quotes and reference-data records: the source `k2 load asx` runs.

Layout of the directory handed to `AsxSource` (as the files really are; see data/samples/asx/README.md):

    trades/<company_id>.csv   no header, CRLF; date MM/DD/YYYY, time HH:MM:SS.mmm (Sydney wall clock), price,
                              volume, qualifier code, venue ('X' or empty), extra (mostly empty, sometimes a price)
    quotes/<company_id>.csv   no header; date, time, bid price, ask price, bid volume, ask volume (price 0 = no order)
    reference-data/           company_info.csv (id → symbol), dividends.csv, mergers.csv, stock_splits.csv

Reference files are read by `reference.py`; a tick file goes through the columnar parser (`columnar.py`) when it is
in the plain common shape, else through the row parser (`rows.py`). Tick files are yielded in chunks; a row that
cannot be used becomes a `Reject` with its raw bytes, never a silent drop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from k2.core.batch import SourceBatch
from k2.core.errors import UserError
from k2.schema.codecs import now_micros
from k2.schema.fields import QUOTES_V2, TRADES_V2, AssetClass, RecordSpec
from k2.sources.asx.columnar import plain_tick_chunks
from k2.sources.asx.reference import Company, CsvFile, iter_reference_paths, load_companies, load_events
from k2.sources.asx.rows import row_batches
from k2.sources.asx.rules import EXCHANGE


class AsxSource:
    """ASX equities files in one directory → reference batches first, then trades and quotes, file by file.

    `batches()` yields `SourceBatch`es of at most `chunk_rows` rows each, never mixing files. `progress`, if set
    (also assignable later), is called with the number of bytes consumed since its last call, so it can drive
    `rich.progress.Progress.advance` directly; its calls add up to `total_bytes()`. After a run, `empty_files`
    names the files that said "--- NO RECORDS TO REPORT ---" and `companies` maps company ids to companies.
    Trades and quotes of plain files come as Arrow tables (`SourceBatch.table`), everything else as dicts;
    `SourceBatch.all_records()` gives dicts either way.
    """

    def __init__(
        self,
        directory: Path,
        chunk_rows: int = 50_000,
        progress: Callable[[int], None] | None = None,
        *,
        columnar: bool = True,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.directory = Path(directory)
        self.chunk_rows = chunk_rows
        self.progress = progress
        self.columnar = columnar  # False: every tick file through the row parser (batches of dict records)
        self.empty_files: list[str] = []
        self.companies: dict[str, Company] = {}

    def describe(self) -> str:
        return f"ASX equities files in {self.directory}"

    def total_bytes(self) -> int:
        """Bytes `batches()` will read: every file it loads, reference data included."""
        return sum(path.stat().st_size for path in self._paths())

    def check(self) -> None:
        company_path = self.directory / "reference-data" / "company_info.csv"
        if not company_path.is_file():
            raise UserError(
                f"{self.directory} is not an ASX dataset: {company_path.relative_to(self.directory)} is missing (it"
                " maps the company ids naming the tick files to symbols); point at the folder holding trades/,"
                " quotes/ and reference-data/, e.g. data/samples/asx"
            )

    def batches(self) -> Iterator[SourceBatch]:
        self.check()
        reference = self.directory / "reference-data"
        company_path = reference / "company_info.csv"
        self.empty_files = []
        self.companies, batch, file = load_companies(company_path, now_micros())
        yield from self._reference_batches(batch, file)
        for path in iter_reference_paths(reference):
            batch, file = load_events(path, self.companies, now_micros())
            yield from self._reference_batches(batch, file)
        for path in self._tick_paths("trades"):
            yield from self._tick_batches(path, TRADES_V2)
        for path in self._tick_paths("quotes"):
            yield from self._tick_batches(path, QUOTES_V2)

    def _paths(self) -> list[Path]:
        reference = self.directory / "reference-data"
        company_path = reference / "company_info.csv"
        heads = [company_path] if company_path.is_file() else []
        return [*heads, *iter_reference_paths(reference), *self._tick_paths("trades"), *self._tick_paths("quotes")]

    def _tick_paths(self, kind: str) -> list[Path]:
        folder = self.directory / kind
        return sorted(folder.glob("*.csv")) if folder.is_dir() else []

    def _advance(self, nbytes: int) -> None:
        if self.progress is not None and nbytes:
            self.progress(nbytes)

    def _reference_batches(self, batch: SourceBatch, file: CsvFile) -> Iterator[SourceBatch]:
        if file.empty_marker:
            self.empty_files.append(file.path.relative_to(self.directory).as_posix())
        self._advance(file.path.stat().st_size)
        rows: list[tuple[bool, Any]] = [(True, r) for r in batch.records] + [(False, r) for r in batch.rejects]
        for start in range(0, len(rows), self.chunk_rows):
            part = rows[start : start + self.chunk_rows]
            yield SourceBatch(
                batch.spec,
                batch.asset_class,
                batch.exchange,
                records=[r for is_record, r in part if is_record],
                rejects=[r for is_record, r in part if not is_record],
                rows_read=len(part),
            )

    def _tick_batches(self, path: Path, spec: RecordSpec) -> Iterator[SourceBatch]:
        """A tick file's batches: columnar (k2.sources.asx.columnar; ~6x faster, same records) when the file is
        in the plain common shape, else from the row parser, which handles and explains every odd row."""
        company = self.companies.get(path.stem)
        if self.columnar:
            chunks = plain_tick_chunks(path, company, spec, self.chunk_rows)
            if chunks is not None:
                for chunk in chunks:
                    self._advance(chunk.bytes_read)
                    if chunk.rows_read:
                        yield SourceBatch(
                            spec,
                            AssetClass.EQUITIES,
                            EXCHANGE,
                            rejects=chunk.rejects,
                            rows_read=chunk.rows_read,
                            table=chunk.table,
                        )
                return
        yield from self._row_batches(path, spec, company)

    def _row_batches(self, path: Path, spec: RecordSpec, company: Company | None) -> Iterator[SourceBatch]:
        """The row parser's batches of one tick file (`company` None: not in company_info.csv, every row rejected)."""
        return row_batches(path, spec, company, self.chunk_rows, self._advance)
