"""Which message_ids a table already holds, per (day, exchange) partition, for dedup across reloads/restarts.

Records of one partition share a day and an exchange, so only the partitions a batch touches are read (only the
message_id column, with Iceberg partition pruning). The index is per sink worker and is updated with what the
worker commits itself; it is dropped when partition assignment changes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, LessThan
from pyiceberg.table import Table

DAY_MICROS = 86_400_000_000
PartitionKey = tuple[int, str]  # (days since epoch, exchange)


def partition_keys(batch: pa.Table) -> pa.Table:
    """Per-row (day, exchange) as two columns `_day`, `exchange`."""
    micros = pc.cast(batch["timestamp"], pa.int64())
    days = pc.floor(pc.divide(pc.cast(micros, pa.float64()), DAY_MICROS)).cast(pa.int32())
    return pa.table({"_day": days, "exchange": batch["exchange"]})


class LakeIdIndex:
    def __init__(self, table: Table) -> None:
        self._table = table
        self._ids: dict[PartitionKey, set[str]] = {}

    def clear(self) -> None:
        self._ids.clear()

    def _load(self, key: PartitionKey) -> set[str]:
        day, exchange = key
        start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)
        end = start + timedelta(days=1)
        self._table.refresh()
        scan = self._table.scan(
            row_filter=And(
                GreaterThanOrEqual("timestamp", start.isoformat()),
                LessThan("timestamp", end.isoformat()),
                EqualTo("exchange", exchange),
            ),
            selected_fields=("message_id",),
        )
        ids = set(scan.to_arrow()["message_id"].to_pylist())
        self._ids[key] = ids
        return ids

    def new_rows_mask(self, batch: pa.Table) -> list[bool]:
        """True for rows whose message_id is neither in the lake nor earlier in this batch."""
        keys = partition_keys(batch)
        days = keys["_day"].to_pylist()
        exchanges = keys["exchange"].to_pylist()
        message_ids = batch["message_id"].to_pylist()
        mask = []
        seen: set[str] = set()
        for day, exchange, mid in zip(days, exchanges, message_ids, strict=True):
            ids = self._ids.get((day, exchange))
            if ids is None:
                ids = self._load((day, exchange))
            fresh = mid not in ids and mid not in seen
            seen.add(mid)
            mask.append(fresh)
        return mask

    def add_committed(self, batch: pa.Table) -> None:
        keys = partition_keys(batch)
        for day, exchange, mid in zip(
            keys["_day"].to_pylist(),
            keys["exchange"].to_pylist(),
            batch["message_id"].to_pylist(),
            strict=True,
        ):
            ids = self._ids.get((day, exchange))
            if ids is not None:  # a partition not loaded yet will be read from the lake, commit included
                ids.add(mid)
