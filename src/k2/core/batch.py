"""What a source hands on and every later stage passes along: `SourceBatch`es of V2 records, and `Reject`s.

A batch holds records ready for the bus, plus every row the source could not use (`Reject`, kept with its raw
bytes and reason so it can go to the DLQ: the dead-letter record the producer and the sink also write).
`rows_read == len(records) + len(rejects)` for every batch: that is the reconciliation contract. Sources make
them (k2.sources), the producer sends them (k2.bus), the sink writes rejects (k2.lake), the runs count them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from k2.schema.arrow import records_from_arrow
from k2.schema.fields import AssetClass, RecordSpec


@dataclass(frozen=True)
class Reject:
    """One input row or frame a source could not turn into a record."""

    reason: str  # short, stable code for counting, e.g. "bad_price", "unknown_company"
    detail: str  # human sentence: what was wrong and where
    raw: bytes  # the original bytes, untouched
    origin: str  # file path or stream name
    position: int  # 1-based line number or frame number in `origin`


@dataclass
class SourceBatch:
    """Records of one V2 kind for one (asset class, exchange), plus the rejects met while reading them.

    Records come as dicts (`records`) or, from a source with a columnar fast path, as one Arrow table in
    `k2.schema.arrow.arrow_schema(spec)` form (`table`), which the producer encodes column-wise. A batch holds
    one or the other; `record_count` counts either.
    """

    spec: RecordSpec
    asset_class: AssetClass
    exchange: str
    records: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    rows_read: int = 0
    table: pa.Table | None = None

    @property
    def record_count(self) -> int:
        return len(self.records) + (0 if self.table is None else self.table.num_rows)

    def all_records(self) -> list[dict[str, Any]]:
        """Every record as a dict, whichever form the batch holds (converting a table costs ~1 µs a field)."""
        return self.records + ([] if self.table is None else records_from_arrow(self.table))
