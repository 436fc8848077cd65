"""Any ASX tick file as Arrow `TickChunk`s, whichever parser reads it: what test_asx_columnar.py compares the
columnar parser with the row parser through.

`parse_tick_file` gives, chunk for chunk, exactly what the row parser's batches (`AsxSource._row_batches`) give once
their records go through `records_to_arrow`: a plain file through the columnar path (`plain_tick_chunks`), any other
file through the row parser itself, converted. The product makes the same choice in `AsxSource._tick_batches`, and
keeps the row parser's batches as dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from k2.schema.arrow import arrow_schema, records_to_arrow
from k2.schema.codecs import now_micros
from k2.schema.fields import RecordSpec
from k2.sources.asx.columnar import TickChunk, plain_tick_chunks
from k2.sources.asx.reference import Company
from k2.sources.asx.rows import row_batches


def parse_tick_file(
    path: Path,
    company: Company | None,
    spec: RecordSpec,
    chunk_rows: int = 50_000,
    ingested: Callable[[], int] = now_micros,
) -> Iterator[TickChunk]:
    """An ASX trades (spec TRADES_V2) or quotes (QUOTES_V2) file → chunks of `arrow_schema(spec)` tables.

    `company` is the file's company (None: not in company_info.csv, so every row is rejected, as the row parser
    does). Chunks hold the same rows as `rows.row_batches` batches of `chunk_rows` rows; `ingested` is
    called once per chunk for its `ingestion_timestamp`. A file with bytes but no rows at all (only blank lines)
    gives one empty chunk, so that its bytes are still reported.
    """
    chunks = plain_tick_chunks(path, company, spec, chunk_rows, ingested)
    yield from _row_parser_chunks(path, company, spec, chunk_rows, ingested) if chunks is None else chunks


def _row_parser_chunks(
    path: Path, company: Company | None, spec: RecordSpec, chunk_rows: int, ingested: Callable[[], int]
) -> Iterator[TickChunk]:
    """The row parser's batches for this file, converted to Arrow: identical to it by construction.

    `rows.row_batches` reports bytes through `advance` before it yields each batch; bytes read after the
    last batch (trailing blank lines) are added to the last chunk, which is therefore held back by one step.
    """
    consumed = [0]
    held: TickChunk | None = None
    for batch in row_batches(path, spec, company, chunk_rows, lambda n: consumed.__setitem__(0, consumed[0] + n)):
        if held is not None:
            yield held
        stamp = ingested()
        for record in batch.records:
            record["ingestion_timestamp"] = stamp
        table = records_to_arrow(spec, batch.records)
        held = TickChunk(table, batch.rejects, batch.rows_read, consumed[0])
        consumed[0] = 0
    if held is not None:
        yield TickChunk(held.table, held.rejects, held.rows_read, held.bytes_read + consumed[0])
    elif consumed[0]:
        yield TickChunk(arrow_schema(spec).empty_table(), [], 0, consumed[0])
