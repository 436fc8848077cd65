"""Which Iceberg snapshot of each table a time-travel query reads.

`as_of` is either a snapshot id or an instant:
- an instant pins every table to the snapshot that was current then (the table's snapshot log, so a rollback is
  honoured); a table with no snapshot yet at that instant reads as empty;
- a snapshot id belongs to one table: that table is pinned to it and the others to what was current when it was
  committed, so a query joining trades and quotes sees the lake as it stood at that commit.
Snapshot timestamps are milliseconds: an instant is floored to its millisecond, so a snapshot committed within
the same millisecond counts as current.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from pyiceberg.table import Table

from k2.query.filters import utc
from k2.schema.codecs import micros_from_datetime

AsOf = int | datetime | None
"""A snapshot id, a timezone-aware instant, or None for the engine's current snapshots."""

_SNAPSHOTS_HINT = "`k2 snapshots TABLE` (or GET /v1/snapshots) lists each table's snapshot ids and commit times."


class SnapshotNotFoundError(LookupError):
    """No table has the snapshot id asked for (expired, or from another catalog), or the instant asked for is
    before every snapshot the lake keeps."""


def _logged(table: Table | None) -> bool:
    return table is not None and bool(table.metadata.snapshot_log)


def _current_at(table: Table | None, timestamp_ms: int) -> int | None:
    if table is None:
        return None
    snapshot = table.snapshot_as_of_timestamp(timestamp_ms)
    return None if snapshot is None else snapshot.snapshot_id


def resolve_pins(tables: Mapping[str, Table | None], as_of: int | datetime) -> dict[str, int | None]:
    """Table name -> the snapshot id to read (None: the table had no data at that point)."""
    if isinstance(as_of, bool) or not isinstance(as_of, int | datetime):
        raise TypeError(f"as_of must be a snapshot id (int) or a timezone-aware datetime, not {as_of!r}")
    if isinstance(as_of, datetime):
        timestamp_ms = micros_from_datetime(utc(as_of, "as_of")) // 1000
        pins = {name: _current_at(table, timestamp_ms) for name, table in tables.items()}
        firsts = [min(e.timestamp_ms for e in t.metadata.snapshot_log) for t in tables.values() if _logged(t)]
        if firsts and all(pin is None for pin in pins.values()):
            # Reading nothing at all is not what anyone asking for a past instant means: say where history starts.
            first = datetime.fromtimestamp(min(firsts) / 1000, UTC).isoformat(timespec="milliseconds")
            raise SnapshotNotFoundError(
                f"as_of {utc(as_of, 'as_of').isoformat()} is before the lake's history, which starts at {first}"
                f" (the oldest snapshot kept): pass a later time. {_SNAPSHOTS_HINT}"
            )
        return pins
    for name, table in tables.items():
        snapshot = table.snapshot_by_id(as_of) if table is not None else None
        if snapshot is not None:
            pins = {other: _current_at(t, snapshot.timestamp_ms) for other, t in tables.items()}
            pins[name] = as_of  # exact, even if another commit of this table shares the millisecond
            return pins
    raise SnapshotNotFoundError(f"no table has snapshot {as_of} (expired, or from another catalog). {_SNAPSHOTS_HINT}")
