"""Snapshot expiry, orphan-file removal and partition retention: the storage half of `k2 maintain`.

pyiceberg's `expire_snapshots()` only edits metadata: the files of expired snapshots stay on disk
(docs/stack-notes.md, "Iceberg"), so orphan removal here deletes whatever under the table location no remaining metadata
references, once it is older than a safety age (a writer's files exist before its commit names them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pyarrow.fs as pafs
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import LessThan
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.manifest import ManifestEntryStatus
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from k2.lake.maint_compact import MAINTENANCE_KEY, partition_key
from k2.lake.offsets import SUMMARY_KEY, merged_offsets, resume_points

log = logging.getLogger(__name__)

# Only what Iceberg writes is ever a candidate: data files, manifests / manifest lists, metadata JSON.
_ORPHAN_DIRS = ("data", "metadata")
_ORPHAN_SUFFIXES = (".parquet", ".avro", ".metadata.json", ".puffin")


@dataclass(frozen=True)
class StoredFile:
    uri: str
    size: int
    mtime: datetime | None


def _split(location: str) -> tuple[str, str]:
    """(scheme, path) with the netloc folded into the path, as pyarrow's filesystems name files."""
    scheme, _netloc, path = PyArrowFileIO.parse_location(location)
    return scheme, path


def _filesystem(table: Table, location: str) -> tuple[pafs.FileSystem, str]:
    """The table's own filesystem (its credentials and endpoint) when its FileIO is pyarrow's, else from the URI."""
    if isinstance(table.io, PyArrowFileIO):
        scheme, netloc, path = PyArrowFileIO.parse_location(location)
        return table.io.fs_by_scheme(scheme, netloc), path
    return pafs.FileSystem.from_uri(location)


def stored_files(table: Table) -> Iterator[StoredFile]:
    """Every file under the table location."""
    location = table.location().rstrip("/")
    fs, root = _filesystem(table, location)
    scheme, _ = _split(location)
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in fs.get_file_info(selector):
        if info.type == pafs.FileType.File:
            mtime = info.mtime.astimezone(UTC) if info.mtime is not None else None
            yield StoredFile(f"{scheme}://{info.path}", info.size or 0, mtime)


def referenced_files(table: Table) -> set[str]:
    """(normalised) paths the current metadata can reach: metadata log, manifest lists, manifests, live files."""
    metadata = table.metadata
    paths = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
    paths.update(s.statistics_path for s in metadata.statistics)
    paths.update(s.statistics_path for s in metadata.partition_statistics)
    seen_manifests: set[str] = set()
    for snapshot in metadata.snapshots:
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            if manifest.manifest_path in seen_manifests:
                continue
            seen_manifests.add(manifest.manifest_path)
            paths.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                # A DELETED entry names a file its snapshot dropped: only other snapshots can still need it.
                if entry.status != ManifestEntryStatus.DELETED:
                    paths.add(entry.data_file.file_path)
    return {_split(p)[1] for p in paths}


@dataclass(frozen=True)
class LeftoverFiles:
    """Data files stored but not read by the current snapshot, and why they are still there."""

    held_files: int  # older snapshots still name them (time travel): they go when those snapshots expire
    held_bytes: int
    unreferenced_files: int  # no snapshot names them: a maintenance run deletes them once past the safety age
    unreferenced_bytes: int


def leftover_data_files(table: Table) -> LeftoverFiles:
    table.refresh()
    live = {_split(task.file.file_path)[1] for task in table.scan().plan_files()}
    referenced = referenced_files(table)
    root = _split(table.location().rstrip("/"))[1]
    held, unreferenced = [], []
    for stored in stored_files(table):
        path = _split(stored.uri)[1]
        if not path[len(root) :].lstrip("/").startswith("data/") or not path.endswith(".parquet") or path in live:
            continue
        (held if path in referenced else unreferenced).append(stored)
    return LeftoverFiles(len(held), sum(f.size for f in held), len(unreferenced), sum(f.size for f in unreferenced))


def find_orphans(table: Table, min_age: timedelta, now: datetime) -> list[StoredFile]:
    table.refresh()
    referenced = referenced_files(table)
    root = _split(table.location().rstrip("/"))[1]
    orphans = []
    for stored in stored_files(table):
        path = _split(stored.uri)[1]
        relative = path[len(root) :].lstrip("/")
        if not relative.startswith(_ORPHAN_DIRS) or not relative.endswith(_ORPHAN_SUFFIXES):
            continue
        if path in referenced:
            continue
        # Files younger than the safety age may belong to a commit in flight (written, not yet referenced).
        if stored.mtime is None or now - stored.mtime < min_age:
            continue
        orphans.append(stored)
    return orphans


def remove_orphans(table: Table, min_age: timedelta, now: datetime, *, dry_run: bool) -> tuple[int, int]:
    """Delete unreferenced files older than `min_age`: (files, bytes)."""
    orphans = find_orphans(table, min_age, now)
    if not dry_run:
        for orphan in orphans:
            table.io.delete(orphan.uri)
    return len(orphans), sum(o.size for o in orphans)


def _kept_and_expired(table: Table, older_than: datetime, retain_last: int) -> tuple[list[Snapshot], list[Snapshot]]:
    snapshots = sorted(table.metadata.snapshots, key=lambda s: (s.sequence_number or 0, s.timestamp_ms))
    protected = {ref.snapshot_id for ref in table.metadata.refs.values()}  # current (main) and any tag/branch
    newest = {s.snapshot_id for s in snapshots[-retain_last:]} if retain_last > 0 else set()
    cutoff_ms = int(older_than.timestamp() * 1000)
    expired = [
        s
        for s in snapshots
        if s.timestamp_ms < cutoff_ms and s.snapshot_id not in protected and s.snapshot_id not in newest
    ]
    expired_ids = {s.snapshot_id for s in expired}
    return [s for s in snapshots if s.snapshot_id not in expired_ids], expired


def carry_offsets_forward(table: Table) -> None:
    """Commit an empty append whose summary holds the merged offsets of every snapshot."""
    offsets = merged_offsets(table.metadata.snapshots)
    if offsets is None:
        return
    summary = {SUMMARY_KEY: offsets, MAINTENANCE_KEY: "offsets"}
    with table.transaction() as tx, tx.update_snapshot(snapshot_properties=summary).fast_append():
        pass  # no files: a metadata-only snapshot


def expire(table: Table, older_than: datetime, retain_last: int, *, dry_run: bool) -> int:
    """Expire snapshots older than `older_than`, keeping the newest `retain_last` and every ref head.

    If the snapshots kept would no longer say how far the sink got (an offset range recorded only by an expiring
    snapshot), the merged offsets are first committed in a snapshot of their own, which is kept.
    """
    table.refresh()
    kept, expired = _kept_and_expired(table, older_than, retain_last)
    if not expired or dry_run:
        return len(expired)
    if resume_points(kept) != resume_points(table.metadata.snapshots):
        carry_offsets_forward(table)
        kept, expired = _kept_and_expired(table, older_than, retain_last)
        if resume_points(kept) != resume_points(table.metadata.snapshots):
            raise RuntimeError(f"{table.name()}: carried offsets do not cover the expiring snapshots; not expiring")
    for attempt in range(3):
        try:
            # Not a snapshot producer, so pyiceberg does not retry it: a racing sink commit surfaces here.
            table.maintenance.expire_snapshots().by_ids([s.snapshot_id for s in expired]).commit()
            return len(expired)
        except CommitFailedException:
            log.info("snapshot expiry raced a commit, attempt %d", attempt + 1)
            table.refresh()
            expired = [s for s in expired if table.metadata.snapshot_by_id(s.snapshot_id) is not None]
    raise CommitFailedException(f"{table.name()}: snapshot expiry kept racing other commits")


def day_start(now: datetime, days_back: int) -> datetime:
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days_back)


def drop_old_partitions(table: Table, retention_days: int, now: datetime, *, dry_run: bool) -> list[str]:
    """Delete every day partition older than `retention_days` (day-aligned, so whole files are dropped)."""
    cutoff = day_start(now, retention_days)
    row_filter = LessThan("timestamp", cutoff.isoformat())
    table.refresh()
    dropped = sorted({str(partition_key(t.file)) for t in table.scan(row_filter=row_filter).plan_files()})
    if not dropped or dry_run:
        return dropped
    summary = {MAINTENANCE_KEY: f"retention:{retention_days}d"}
    offsets = merged_offsets(table.metadata.snapshots)
    if offsets is not None:
        summary[SUMMARY_KEY] = offsets
    for attempt in range(3):
        try:
            table.delete(row_filter, snapshot_properties=summary)
            return dropped
        except (CommitFailedException, ValidationException):
            log.info("retention delete raced a commit (late data in an old partition?), attempt %d", attempt + 1)
            table.refresh()
    raise CommitFailedException(f"{table.name()}: retention delete kept racing other commits")
