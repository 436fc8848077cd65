"""`k2 maintain`: compaction, snapshot expiry, orphan removal and retention for the lake's tables.

Order matters: compaction first (its snapshot carries the merged Kafka offsets forward), then retention, then
expiry (which can only drop what is no longer current), then orphan removal (which deletes the files expiry
left unreferenced). Every step is safe while sinks append: see k2.lake.maint_compact and k2.lake.maint_cleanup.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pyiceberg.table import Table
from rich.console import Console
from rich.table import Table as RichTable

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.maint_cleanup import drop_old_partitions, expire, leftover_data_files, remove_orphans, stored_files
from k2.lake.maint_compact import candidates, compact
from k2.lake.tables import table_identifier
from k2.schema.fields import ALL_RECORDS, RecordSpec


@dataclass
class Latency:
    """Milliseconds for a full count and for a one-day count over the newest day holding data."""

    count_ms: float
    day_ms: float

    def __str__(self) -> str:
        return f"{self.count_ms:.1f} / {self.day_ms:.1f}"


# Measures one table's query latency as it is now (k2.query.latency.LatencyProbe), or None for an empty table.
Measure = Callable[[RecordSpec, Table], Latency | None]


@dataclass
class TableReport:
    table: str
    data_files_before: int = 0
    data_files_after: int = 0
    data_bytes_before: int = 0
    data_bytes_after: int = 0
    stored_files_before: int = 0  # everything under the table location: data, manifests, metadata
    stored_files_after: int = 0
    stored_bytes_before: int = 0
    stored_bytes_after: int = 0
    partitions_compacted: list[str] = field(default_factory=list)
    partitions_busy: list[str] = field(default_factory=list)
    files_rewritten: int = 0
    files_written: int = 0
    snapshots_expired: int = 0
    orphans_removed: int = 0
    orphan_bytes: int = 0
    partitions_dropped: list[str] = field(default_factory=list)
    latency_before: Latency | None = None
    latency_after: Latency | None = None
    # after the run: what it left, and why
    held_files: int = 0  # data files only older snapshots read (time travel), deleted when those expire
    held_bytes: int = 0
    held_until: datetime | None = None  # when the oldest snapshot holding them is past --expire-days
    unreferenced_files: int = 0  # no snapshot names them; younger than the orphan safety age, so still stored
    unreferenced_bytes: int = 0
    partitions_under_min_files: int = 0  # with 2 .. min_files-1 small files: not compacted by this run


@dataclass
class MaintenanceReport:
    tables: list[TableReport]
    dry_run: bool
    seconds: float
    min_files: int = 4
    retain_last: int = 10
    orphan_min_age: timedelta = timedelta(hours=1)

    def table(self, name: str) -> TableReport:
        return next(t for t in self.tables if name in (t.table, t.table.split(".")[-1]))

    def render(self, console: Console) -> None:
        title = "k2 maintain" + (" (dry run: nothing changed, figures are what would be done)" if self.dry_run else "")
        grid = RichTable(title=f"{title} — {self.seconds:.1f} s")
        for column in (
            "table",
            "data files",
            "data MB",
            "stored files",
            "stored MB",
            "compacted",
            "busy",
            "expired",
            "orphans",
            "dropped",
            "count / day ms",
        ):
            grid.add_column(column, justify="left" if column == "table" else "right")
        for t in self.tables:
            grid.add_row(
                t.table,
                f"{t.data_files_before} → {t.data_files_after}",
                f"{_mb(t.data_bytes_before)} → {_mb(t.data_bytes_after)}",
                f"{t.stored_files_before} → {t.stored_files_after}",
                f"{_mb(t.stored_bytes_before)} → {_mb(t.stored_bytes_after)}",
                str(len(t.partitions_compacted)),
                str(len(t.partitions_busy)),
                str(t.snapshots_expired),
                f"{t.orphans_removed} ({_mb(t.orphan_bytes)} MB)",
                str(len(t.partitions_dropped)),
                f"{t.latency_before or '-'} → {t.latency_after or '-'}",
            )
        console.print(grid)
        for line in self.notes():
            console.print(f"note: {line}", markup=False, soft_wrap=True)

    def notes(self) -> list[str]:
        """What the run left behind and why, one line each: files kept for time travel, partitions not compacted."""
        lines = []
        for t in self.tables:
            if t.held_files:
                until = f"; the oldest is due {t.held_until:%Y-%m-%d %H:%M} UTC" if t.held_until else ""
                lines.append(
                    f"{t.table}: {_mb(t.held_bytes)} MB in {t.held_files} data files the current snapshot no longer"
                    f" reads are kept for time travel until the snapshots holding them expire (older than"
                    f" --expire-days and not among the newest --retain-last {self.retain_last}{until});"
                    " `k2 maintain --expire-days 0 --retain-last 1` frees them now"
                )
            if t.unreferenced_files:
                lines.append(
                    f"{t.table}: {_mb(t.unreferenced_bytes)} MB in {t.unreferenced_files} data files no snapshot"
                    f" names any more are deleted by a later `k2 maintain` once {self.orphan_min_age / _HOUR:g} h"
                    " old (the safety age for commits in flight)"
                )
            if t.partitions_under_min_files:
                lines.append(
                    f"{t.table}: {t.partitions_under_min_files} partitions have 2 to {self.min_files - 1} small"
                    f" files, under --min-files {self.min_files}: `k2 maintain --min-files 2` compacts them"
                )
        return lines


_HOUR = timedelta(hours=1)


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f}"


def _live_files(table: Table) -> tuple[int, int]:
    files = [task.file for task in table.scan().plan_files()]
    return len(files), sum(f.file_size_in_bytes for f in files)


def _stored(table: Table) -> tuple[int, int]:
    files = list(stored_files(table))
    return len(files), sum(f.size for f in files)


def _selected(tables: list[str] | None) -> list[RecordSpec]:
    if tables is None:
        return list(ALL_RECORDS)
    by_name = {spec.name: spec for spec in ALL_RECORDS} | {table_identifier(s): s for s in ALL_RECORDS}
    unknown = [name for name in tables if name not in by_name]
    if unknown:
        known = ", ".join(spec.name for spec in ALL_RECORDS)
        raise ValueError(f"unknown table(s) {', '.join(unknown)}: choose among {known}")
    return list(dict.fromkeys(by_name[name] for name in tables))


def maintain(
    settings: Settings,
    *,
    tables: list[str] | None = None,
    target_file_mb: int = 128,
    min_files: int = 4,
    expire_older_than: timedelta = timedelta(days=7),
    retain_last: int = 10,
    retention_days: int | None = None,
    orphan_min_age: timedelta = timedelta(hours=1),
    dry_run: bool = False,
    measure: Measure | None = None,
    now: datetime | None = None,
) -> MaintenanceReport:
    """Compact, apply retention, expire snapshots and remove orphan files for each table; report what changed.

    `tables`: names like `trades_v2` (default: every K2 table the catalog has). Partitions with at least
    `min_files` data files under `target_file_mb` are rewritten into ~`target_file_mb` files. Snapshots older
    than `expire_older_than` go, except the newest `retain_last` and the current one. Files no metadata names
    and older than `orphan_min_age` are deleted. `retention_days` drops whole day partitions older than that.
    `dry_run` commits and deletes nothing and reports what would be done. `measure` (e.g. a
    `k2.query.latency.LatencyProbe`) gives each table's query latency before and after; none without it.
    """
    started = time.monotonic()

    def clock() -> datetime:  # read when each step runs: "older than" counts this run's own snapshots too
        return now or datetime.now(UTC)

    catalog = open_catalog(settings)
    specs = [spec for spec in _selected(tables) if catalog.table_exists(table_identifier(spec))]
    reports = []
    for spec in specs:
        table = catalog.load_table(table_identifier(spec))
        report = TableReport(table_identifier(spec))
        report.data_files_before, report.data_bytes_before = _live_files(table)
        report.stored_files_before, report.stored_bytes_before = _stored(table)
        if measure is not None:
            report.latency_before = measure(spec, table)

        compaction = compact(table, target_bytes=target_file_mb * 1024 * 1024, min_files=min_files, dry_run=dry_run)
        report.partitions_compacted = compaction.compacted
        report.partitions_busy = compaction.busy
        report.files_rewritten, report.files_written = compaction.files_rewritten, compaction.files_written
        if retention_days is not None:
            report.partitions_dropped = drop_old_partitions(table, retention_days, clock(), dry_run=dry_run)
        report.snapshots_expired = expire(table, clock() - expire_older_than, retain_last, dry_run=dry_run)
        report.orphans_removed, report.orphan_bytes = remove_orphans(table, orphan_min_age, clock(), dry_run=dry_run)

        table.refresh()
        report.data_files_after, report.data_bytes_after = _live_files(table)
        report.stored_files_after, report.stored_bytes_after = _stored(table)
        leftover = leftover_data_files(table)
        report.held_files, report.held_bytes = leftover.held_files, leftover.held_bytes
        report.unreferenced_files, report.unreferenced_bytes = leftover.unreferenced_files, leftover.unreferenced_bytes
        older = [s for s in table.snapshots() if s.snapshot_id != table.metadata.current_snapshot_id]
        if report.held_files and older:
            oldest = datetime.fromtimestamp(min(s.timestamp_ms for s in older) / 1000, UTC)
            report.held_until = oldest + expire_older_than
        if min_files > 2:
            waiting = candidates(table, target_file_mb * 1024 * 1024, 2)
            report.partitions_under_min_files = sum(1 for n in waiting.values() if n < min_files)
        if measure is not None:
            report.latency_after = measure(spec, table)
        reports.append(report)
    return MaintenanceReport(reports, dry_run, time.monotonic() - started, min_files, retain_last, orphan_min_age)
