"""Replay: the trades or quotes of chosen symbols and range as record batches in event order, resumable.

Each batch carries the cursor after its last row; handing that cursor back as `after` continues with the next
row, so a client that stops (or is cut off) resumes without a gap or a repeat. Event order is timestamp, then
source_sequence, then message_id, so ties in time replay the way the venue sequenced them. Pacing (real time,
x10, as fast as possible) is the caller's: this module only reads.

A replay reads one snapshot from its first batch to its last — `as_of` if given, else the one the engine reads
when the replay starts — so a commit landing mid-replay cannot slip rows in behind the cursor. To resume later
over exactly the same data, pass the same snapshot id as `as_of`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from k2.query.engine import QueryEngine
from k2.query.filters import EVENT_SPECS, positive, record_spec
from k2.query.market import Symbols, read_page
from k2.query.timetravel import AsOf

DEFAULT_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class ReplayBatch:
    records: pa.RecordBatch
    cursor: str  # resume after the last row of `records`
    snapshot_id: int  # the snapshot every batch of this replay reads


def replay(
    engine: QueryEngine,
    kind: str,
    symbols: Symbols,
    start: datetime | None,
    end: datetime | None,
    *,
    exchange: str | None = None,
    after: str | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    columns: Sequence[str] | None = None,
    as_of: AsOf = None,
) -> Iterator[ReplayBatch]:
    """Batches of at most `batch_rows` rows of `kind` ("trades" or "quotes") in [start, end), in event order,
    starting after the cursor `after` (None: from `start`). Nothing is yielded for a table with no data.

    Arguments are checked and the snapshot chosen when iteration starts; each batch is one keyset query, so memory
    holds one batch, not the range.
    """
    spec = record_spec(kind, EVENT_SPECS)
    positive(batch_rows, "batch_rows")
    snapshot_id = engine.at(as_of).snapshot_ids.get(spec.name)
    if snapshot_id is None:
        return
    # Pin by id even when as_of was None: the engine's views move on refresh(), the id does not.
    reader = engine.at(snapshot_id)
    while True:
        page = read_page(
            reader, kind, symbols, start, end, exchange=exchange, after=after, limit=batch_rows, columns=columns
        )
        if page.cursor is not None:
            yield ReplayBatch(page.rows.combine_chunks().to_batches()[0], page.cursor, snapshot_id)
        if not page.has_more:
            return
        after = page.cursor
