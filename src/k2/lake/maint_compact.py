"""Compaction: rewrite the small files of a (day, exchange) partition into few large ones, sorted by symbol then time.

File count dominates query latency (300 files ≈ 3-4x slower than 30, docs/stack-notes.md, "DuckDB") and pyiceberg has no
compaction API, so K2 does it: one OVERWRITE snapshot per partition that deletes exactly the data files it read
(by identity, never by filter) and adds their rows back, sorted.

Why by identity: a sink append that lands between the read and the commit adds a file the rewrite never read.
A filter delete (`table.overwrite(df, overwrite_filter=...)`) planned on refreshed metadata drops that file too:
measured here, 10 such compactions racing an appender lost 7 of 21 rows. Deleting only the files read keeps any
newcomer, so a racing append is no conflict at all (Iceberg's RewriteFiles semantics). pyiceberg's own retry
check is serializable by default and fails the rewrite on *any* file added to the partition meanwhile: with an
appender committing every 20 ms in the same partition, 9 of 9 compactions gave up. `_RewriteFiles` checks only
what can go wrong for a rewrite: a file it replaces was removed meanwhile (another compaction, retention) or got
row deletes. Then nothing lands, the written files are deleted and the partition is planned again.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    IsNull,
    LessThan,
)
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import FileScanTask, Table
from pyiceberg.table.snapshots import Operation
from pyiceberg.table.update.snapshot import _OverwriteFiles
from pyiceberg.table.update.validate import _validate_data_files_exist, _validate_no_new_deletes_for_data_files

from k2.lake.offsets import SUMMARY_KEY, merged_offsets
from k2.lake.tables import in_write_order

log = logging.getLogger(__name__)

EPOCH = date(1970, 1, 1)
# Whole-partition attempts when another rewrite or a retention delete removed files this one read.
REWRITE_ATTEMPTS = 4
MAINTENANCE_KEY = "k2.maintenance"


@dataclass(frozen=True, order=True)
class PartitionKey:
    day: int  # days since epoch (the day() transform of `timestamp`)
    exchange: str | None

    def __str__(self) -> str:
        return f"{EPOCH + timedelta(days=self.day)}/{self.exchange}"

    @property
    def start(self) -> datetime:
        return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(days=self.day)

    def row_filter(self) -> BooleanExpression:
        """Rows of exactly this partition; the day() transform projects the range onto one partition value."""
        exchange = IsNull("exchange") if self.exchange is None else EqualTo("exchange", self.exchange)
        return And(
            GreaterThanOrEqual("timestamp", self.start.isoformat()),
            LessThan("timestamp", (self.start + timedelta(days=1)).isoformat()),
            exchange,
        )


class _RewriteFiles(_OverwriteFiles):
    """An overwrite that replaces known files with the same rows; conflicts only over the files it replaces."""

    def _validate_concurrency(self) -> None:
        window = self._commit_window
        if window is None or window.is_empty() or window.head is None:
            return
        table = self._transaction._table
        # Files added meanwhile are not checked: they are kept as they are. `_validate_required_deletes` also
        # refuses, on every attempt, to replace a file the new parent no longer has.
        _validate_data_files_exist(table, window.head, self._deleted_data_files, window.base)
        _validate_no_new_deletes_for_data_files(table, window.head, None, self._deleted_data_files, window.base)


def partition_key(data_file: DataFile) -> PartitionKey:
    return PartitionKey(int(data_file.partition[0]), data_file.partition[1])


@dataclass
class CompactionResult:
    compacted: list[str] = field(default_factory=list)  # partitions rewritten (or that would be, in a dry run)
    busy: list[str] = field(default_factory=list)  # gave up after REWRITE_ATTEMPTS racing commits
    files_rewritten: int = 0
    files_written: int = 0
    seconds: float = 0.0


def candidates(table: Table, target_bytes: int, min_files: int) -> dict[PartitionKey, int]:
    """Partitions holding at least `min_files` data files smaller than the target -> how many."""
    small: dict[PartitionKey, int] = {}
    for task in table.scan().plan_files():
        if task.file.file_size_in_bytes < target_bytes and not task.delete_files:
            key = partition_key(task.file)
            small[key] = small.get(key, 0) + 1
    return {key: n for key, n in sorted(small.items()) if n >= min_files}


def _small_tasks(table: Table, key: PartitionKey, target_bytes: int) -> list[FileScanTask]:
    # Files carrying row deletes are left alone: K2 writes copy-on-write only, and rewriting them would leave
    # the delete files pointing at nothing.
    return [
        task
        for task in table.scan(row_filter=key.row_filter()).plan_files()
        if partition_key(task.file) == key and task.file.file_size_in_bytes < target_bytes and not task.delete_files
    ]


def _sorted_rows(table: Table, tasks: list[FileScanTask]) -> pa.Table:
    return in_write_order(ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue()).to_table(tasks))


def _write(table: Table, rows: pa.Table, input_bytes: int, target_bytes: int) -> list[DataFile]:
    """Parquet files of about `target_bytes` each, sized from the input's bytes per row (same codec, same data)."""
    per_file = max(1, int(target_bytes * rows.num_rows / max(input_bytes, 1)))
    write_uuid, counter = uuid.uuid4(), itertools.count(0)
    files: list[DataFile] = []
    for offset in range(0, rows.num_rows, per_file):
        # The writer pyiceberg's own append/overwrite use: partition values, metrics and file names as they do.
        chunk = rows.slice(offset, per_file)
        files.extend(_dataframe_to_data_files(table.metadata, chunk, table.io, write_uuid=write_uuid, counter=counter))
    return files


def _rewrite_once(table: Table, key: PartitionKey, target_bytes: int, min_files: int) -> tuple[int, int] | None:
    """One attempt: (files replaced, files written), or None when the partition no longer needs it."""
    table.refresh()
    tasks = _small_tasks(table, key, target_bytes)
    if len(tasks) < min_files:
        return None
    rows = _sorted_rows(table, tasks)
    new_files = _write(table, rows, sum(t.file.file_size_in_bytes for t in tasks), target_bytes)
    summary = {MAINTENANCE_KEY: "compaction", "k2.partition": str(key)}
    offsets = merged_offsets(table.metadata.snapshots)
    if offsets is not None:
        summary[SUMMARY_KEY] = offsets  # carried forward: expiring older snapshots never loses the resume point
    # Start the commit from the newest table, not the one read: appends since the read are kept either way (only
    # the files read are deleted), and the commit then rarely has to go through pyiceberg's retries (4, each
    # re-reading the partition's manifests). A file read but removed meanwhile fails `_validate_required_deletes`.
    table.refresh()
    try:
        with (
            table.transaction() as tx,
            _RewriteFiles(Operation.OVERWRITE, tx, table.io, snapshot_properties=summary) as rewrite,
        ):
            for task in tasks:
                rewrite.delete_data_file(task.file)
            for data_file in new_files:
                rewrite.append_data_file(data_file)
    except (CommitFailedException, ValidationException):
        # pyiceberg guarantees these did not land: the files just written are referenced by nothing.
        for data_file in new_files:
            table.io.delete(data_file.file_path)
        raise
    return len(tasks), len(new_files)


def compact(table: Table, *, target_bytes: int, min_files: int, dry_run: bool = False) -> CompactionResult:
    """Rewrite every partition with >= `min_files` small files; safe while sinks append to the same table."""
    started = time.monotonic()
    result = CompactionResult()
    table.refresh()
    for key in candidates(table, target_bytes, min_files):
        if dry_run:
            result.compacted.append(str(key))
            continue
        for attempt in range(REWRITE_ATTEMPTS):
            try:
                done = _rewrite_once(table, key, target_bytes, min_files)
            except (CommitFailedException, ValidationException) as exc:
                log.info("compaction of %s raced a commit (%s), attempt %d", key, exc, attempt + 1)
                time.sleep(0.05 * 2**attempt)
                continue
            if done is not None:
                result.compacted.append(str(key))
                result.files_rewritten += done[0]
                result.files_written += done[1]
            break
        else:
            result.busy.append(str(key))
    result.seconds = time.monotonic() - started
    return result
