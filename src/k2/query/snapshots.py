"""A table's snapshots: the commits that made it, with what K2 wrote into each summary (audit and time travel).

`snapshots()` lists the lineage of the snapshot a reader sees — the engine's (call `engine.refresh()` for the
newest) or the one `as_of` pins — oldest first. Any `snapshot_id` or `committed_at` it returns is a valid `as_of`
for every query function.
"""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot, ancestors_of

from k2.lake.offsets import SUMMARY_KEY
from k2.query.engine import QueryEngine
from k2.query.filters import record_spec
from k2.query.timetravel import AsOf
from k2.schema.fields import RecordSpec

# The sink writes the row count of each append here (k2.lake.sink); Iceberg's own added-records counts rows too,
# but k2.rows is what the sink meant to write, so a mismatch between them is worth seeing.
ROWS_KEY = "k2.rows"

SNAPSHOT_SCHEMA = pa.schema(
    [
        pa.field("snapshot_id", pa.int64(), nullable=False),
        pa.field("parent_id", pa.int64()),
        pa.field("committed_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("operation", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("kafka_offsets", pa.string()),
        pa.field("summary", pa.map_(pa.string(), pa.string())),
    ]
)


def pinned_snapshot(
    engine: QueryEngine, spec: RecordSpec, snapshot_ids: Mapping[str, int | None]
) -> tuple[Table | None, Snapshot | None]:
    """The pyiceberg table of `spec` and its snapshot named in `snapshot_ids` (a reader's `snapshot_ids`)."""
    snapshot_id = snapshot_ids.get(spec.name)
    table = engine.table(spec.name)
    snapshot = table.snapshot_by_id(snapshot_id) if table is not None and snapshot_id is not None else None
    return table, snapshot


def lineage(table: Table, snapshot: Snapshot) -> list[Snapshot]:
    """`snapshot` and the snapshots it descends from, oldest first (a rolled-back branch is not among them)."""
    return list(ancestors_of(snapshot, table.metadata))[::-1]


def snapshots(engine: QueryEngine, table: str = "trades", *, as_of: AsOf = None) -> pa.Table:
    """One row per snapshot in the lineage, oldest first: snapshot_id, parent_id, committed_at (UTC), operation,
    rows (the sink's k2.rows, null for commits made elsewhere), kafka_offsets (the sink's k2.kafka.offsets JSON,
    whose ranges say which Kafka records the commit holds) and the whole summary as a string map.
    """
    spec = record_spec(table)
    iceberg_table, pinned = pinned_snapshot(engine, spec, engine.at(as_of).snapshot_ids)
    if iceberg_table is None or pinned is None:
        return SNAPSHOT_SCHEMA.empty_table()
    rows = []
    for snapshot in lineage(iceberg_table, pinned):
        summary = dict(snapshot.summary.additional_properties) if snapshot.summary is not None else {}
        rows_text = summary.get(ROWS_KEY)
        rows.append(
            {
                "snapshot_id": snapshot.snapshot_id,
                "parent_id": snapshot.parent_snapshot_id,
                "committed_at": snapshot.timestamp_ms * 1000,
                "operation": snapshot.summary.operation.value if snapshot.summary is not None else None,
                "rows": int(rows_text) if rows_text is not None and rows_text.isdigit() else None,
                "kafka_offsets": summary.get(SUMMARY_KEY),
                "summary": list(summary.items()),
            }
        )
    return pa.Table.from_pylist(rows, schema=SNAPSHOT_SCHEMA)
