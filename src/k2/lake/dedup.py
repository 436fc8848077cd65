"""Which message_ids a table already holds, per (day, exchange) partition, for dedup across reloads/restarts.

Records of one partition share a day and an exchange, so only the partitions a batch touches are read (only the
message_id column, with Iceberg partition pruning). The index is per sink worker and is updated with what the
worker commits itself; it is dropped when partition assignment changes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
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
    """Per (day, exchange) partition: the message_ids the lake holds, as Arrow string arrays (no Python object per
    id — membership of a whole batch is one hash-table probe in Arrow, ~20x cheaper than a Python set per row)."""

    def __init__(self, table: Table) -> None:
        self._table = table
        self._ids: dict[PartitionKey, list[pa.Array]] = {}

    def clear(self) -> None:
        self._ids.clear()

    def _load(self, key: PartitionKey) -> list[pa.Array]:
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
        ids = self._ids[key] = [scan.to_arrow()["message_id"].combine_chunks().cast(pa.string())]
        return ids

    def new_rows_mask(self, batch: pa.Table) -> pa.BooleanArray:
        """True for rows whose message_id is neither in the lake nor earlier in this batch."""
        message_ids = batch["message_id"].combine_chunks().cast(pa.string())
        known = [chunk for key in _distinct_keys(batch) for chunk in self._ids.get(key) or self._load(key)]
        if known:
            in_lake = pc.is_in(message_ids, value_set=pa.concat_arrays(known)).to_numpy(zero_copy_only=False)
        else:
            in_lake = np.zeros(len(message_ids), dtype=bool)
        # The first row of each message_id in the batch: repeats after it (producer retries, reloads) are dropped.
        positions = pa.table({"id": message_ids, "at": pa.array(np.arange(len(message_ids), dtype=np.int64))})
        first = positions.group_by("id", use_threads=False).aggregate([("at", "min")])["at_min"].to_numpy()
        is_first = np.zeros(len(message_ids), dtype=bool)
        is_first[first] = True
        return pa.array(is_first & ~in_lake)

    def add_committed(self, batch: pa.Table) -> None:
        keys = partition_keys(batch)
        for key in _distinct_keys(batch, keys):
            ids = self._ids.get(key)
            if ids is None:
                continue  # a partition not loaded yet will be read from the lake, commit included
            day, exchange = key
            rows = pc.and_(pc.equal(keys["_day"], day), pc.equal(keys["exchange"], exchange))
            ids.append(batch["message_id"].filter(rows).combine_chunks().cast(pa.string()))


def _distinct_keys(batch: pa.Table, keys: pa.Table | None = None) -> list[PartitionKey]:
    """The (day, exchange) partitions `batch` touches."""
    distinct = (keys if keys is not None else partition_keys(batch)).group_by(["_day", "exchange"]).aggregate([])
    return list(zip(distinct["_day"].to_pylist(), distinct["exchange"].to_pylist(), strict=True))
