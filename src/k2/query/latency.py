"""Query latency over one table, as `k2 maintain` reports it before and after compaction.

Latency is what compaction is for, so it is measured through the engine users query with. The caller of
`k2.lake.maintenance.maintain` hands it a `LatencyProbe`: the lake itself never imports the query room (or DuckDB).
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime, timedelta
from types import TracebackType

from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.lake.maintenance import Latency
from k2.lake.tables import table_identifier
from k2.query.engine import QueryEngine
from k2.schema.fields import RecordSpec

# Latency is the median of this many runs: the first run after a commit also pays manifest reads.
LATENCY_RUNS = 5


def measure(engine: QueryEngine, spec: RecordSpec, table: Table) -> Latency | None:
    """Median latency of a full count and of a one-day count over the newest day in the table."""
    files = [task.file for task in table.scan().plan_files()]
    if not files:
        return None
    day = max(int(f.partition[0]) for f in files)
    start = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=day)
    view = table_identifier(spec)

    def timed(query: str, params: list[object] | None = None) -> float:
        runs = []
        for _ in range(LATENCY_RUNS):
            started = time.perf_counter()
            engine.sql(query, params)
            runs.append((time.perf_counter() - started) * 1000)
        return statistics.median(runs)

    return Latency(
        count_ms=timed(f"SELECT count(*) FROM {view}"),
        day_ms=timed(
            f"SELECT count(*), min(timestamp), max(timestamp) FROM {view} WHERE timestamp >= ? AND timestamp < ?",
            [start, start + timedelta(days=1)],
        ),
    )


class LatencyProbe:
    """`maintain(..., measure=probe)`: each call measures `table` as it is now (the engine opens on the first call,
    and later calls read the newest snapshots). Close it, or use it as a context manager, when maintenance is done."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._engine: QueryEngine | None = None

    def __call__(self, spec: RecordSpec, table: Table) -> Latency | None:
        if self._engine is None:
            self._engine = QueryEngine(self._catalog)
        else:
            self._engine.refresh()
        return measure(self._engine, spec, table)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self) -> LatencyProbe:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
