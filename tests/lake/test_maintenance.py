"""`k2 maintain` on a real SQLite catalog and file warehouse: compaction, expiry, orphans, retention, dry run."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pyiceberg.table import Table
from rich.console import Console

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.maint_compact import compact
from k2.lake.maintenance import maintain
from k2.lake.offsets import SUMMARY_KEY, encode_ranges, next_offsets
from k2.lake.tables import ensure_table, table_identifier
from k2.query.engine import QueryEngine
from k2.query.latency import LatencyProbe
from k2.schema import TRADES_V2
from tests.query.records import append_trades, at, trade

TOPIC = "market.equities.trades.asx"
LOG = {TOPIC: "log-A"}
# Maintenance that rewrites and expires everything it may: all snapshots are "old", files are "small".
EVERYTHING = {"expire_older_than": timedelta(0)}


def _trades_table(settings: Settings) -> Table:
    return ensure_table(open_catalog(settings), TRADES_V2)


def _fragment(table: Table, appends: int = 40, rows: int = 25) -> None:
    """`appends` small sink-like commits alternating over two days of ASX, offsets in their summaries; partition 1
    of the topic is only written by the first commit, so only an old snapshot knows where it ended."""
    seq = 0
    for i in range(appends):
        batch = []
        for _ in range(rows):
            seq += 1
            batch.append(trade(at(10, 0, 0, seq, day=i % 2), f"{seq}.12345678", f"0.0000000{seq % 9 + 1}", seq))
        ranges = {(TOPIC, 0): (i * rows, (i + 1) * rows)}
        if i == 0:
            ranges[(TOPIC, 1)] = (0, 7)
        append_trades(table, batch, {SUMMARY_KEY: encode_ranges(ranges, LOG)})


def _rows(table: Table) -> dict[str, tuple[Decimal, Decimal]]:
    table.refresh()
    arrow = table.scan().to_arrow()
    return {
        mid: (price, qty)
        for mid, price, qty in zip(
            arrow["message_id"].to_pylist(), arrow["price"].to_pylist(), arrow["quantity"].to_pylist(), strict=True
        )
    }


def _files_by_partition(table: Table) -> dict[str, set[str]]:
    table.refresh()
    result: dict[str, set[str]] = {}
    for task in table.scan().plan_files():
        result.setdefault(f"{task.file.partition[0]}/{task.file.partition[1]}", set()).add(task.file.file_path)
    return result


def _local(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


def test_compaction_leaves_one_sorted_file_per_partition_with_the_same_rows(settings: Settings) -> None:
    table = _trades_table(settings)
    _fragment(table)
    append_trades(table, [trade(at(9, day=0), "1.5", "2", 1, exchange="chix")])
    append_trades(table, [trade(at(9, 5, day=0), "1.6", "2", 2, exchange="chix")])
    rows_before, files_before = _rows(table), _files_by_partition(table)
    assert sorted(len(f) for f in files_before.values()) == [2, 20, 20]

    report = maintain(settings, tables=["trades_v2"])

    files_after = _files_by_partition(table)
    assert _rows(table) == rows_before  # same message ids, exact decimals
    asx = [p for p in files_after if p.endswith("/asx")]
    assert len(asx) == 2 and all(len(files_after[p]) == 1 for p in asx)
    chix = next(p for p in files_after if p.endswith("/chix"))
    assert files_after[chix] == files_before[chix]  # below min_files: untouched
    stats = report.table("trades_v2")
    assert (stats.data_files_before, stats.data_files_after) == (42, 4)
    assert sorted(stats.partitions_compacted) == ["2024-03-04/asx", "2024-03-05/asx"]
    for p in asx:
        written = pq.read_table(_local(next(iter(files_after[p]))))
        assert written["timestamp"].to_pylist() == sorted(written["timestamp"].to_pylist())
    table.refresh()
    assert table.current_snapshot().summary.operation.value == "overwrite"

    # What the run left, and why: the 40 rewritten files stay for time travel; the chix pair waits for --min-files.
    assert stats.held_files == 40 and stats.held_bytes > 0
    oldest = min(s.timestamp_ms for s in table.snapshots()) / 1000
    assert stats.held_until is not None and stats.held_until.timestamp() == pytest.approx(oldest + 7 * 86400)
    assert stats.partitions_under_min_files == 1
    notes = report.notes()
    assert notes[0].startswith(f"market_data.trades_v2: {stats.held_bytes / 1e6:.2f} MB in 40 data files the current")
    assert notes[0].endswith("`k2 maintain --expire-days 0 --retain-last 1` frees them now")
    assert notes[1] == (
        "market_data.trades_v2: 1 partitions have 2 to 3 small files, under --min-files 4: `k2 maintain --min-files 2`"
        " compacts them"
    )
    second = maintain(settings, tables=["trades_v2"], retain_last=1, min_files=2, **EVERYTHING)
    freed = second.table("trades_v2")
    assert (freed.held_files, freed.partitions_under_min_files, freed.data_files_after) == (0, 0, 3)
    assert freed.unreferenced_files == 42  # no snapshot names them now; deleted by a run once an hour old
    assert second.notes() == [
        f"market_data.trades_v2: {freed.unreferenced_bytes / 1e6:.2f} MB in 42 data files no snapshot names any more"
        " are deleted by a later `k2 maintain` once 1 h old (the safety age for commits in flight)"
    ]


def test_resume_offsets_survive_compaction_and_expiry_of_all_but_the_last_snapshot(settings: Settings) -> None:
    table = _trades_table(settings)
    _fragment(table, appends=12)
    expected = next_offsets(table, LOG)
    assert expected == {(TOPIC, 0): 300, (TOPIC, 1): 7}

    report = maintain(settings, retain_last=1, **EVERYTHING)

    table.refresh()
    assert len(table.metadata.snapshots) == 1
    assert report.table("trades_v2").snapshots_expired > 0
    assert next_offsets(table, LOG) == expected
    assert next_offsets(table, {TOPIC: "log-B"}) == {}  # still keyed by the log's identity


def test_expiry_without_compaction_carries_offsets_in_a_snapshot_of_its_own(settings: Settings) -> None:
    table = _trades_table(settings)
    _fragment(table, appends=6)
    expected = next_offsets(table, LOG)

    maintain(settings, retain_last=2, min_files=1000, **EVERYTHING)

    table.refresh()
    assert len(table.metadata.snapshots) == 2  # the carrying snapshot is one of the two kept
    assert next_offsets(table, LOG) == expected
    assert len(_rows(table)) == 6 * 25


def test_expiry_keeps_the_newest_snapshots_and_the_current_one(settings: Settings) -> None:
    table = _trades_table(settings)
    for i in range(8):
        append_trades(table, [trade(at(10, i), "1", "1", i)])
    newest = [s.snapshot_id for s in table.metadata.snapshots[-3:]]

    report = maintain(settings, retain_last=3, min_files=1000, **EVERYTHING)

    table.refresh()
    assert [s.snapshot_id for s in table.metadata.snapshots] == newest
    assert table.current_snapshot().snapshot_id == newest[-1]
    assert report.table("trades_v2").snapshots_expired == 5
    assert len(_rows(table)) == 8


def _stray(table: Table, name: str, age: timedelta | None) -> Path:
    path = _local(table.location()) / "data" / "timestamp_day=2024-03-04" / "exchange=asx" / name
    path.write_bytes(b"PAR1 not referenced by anything PAR1")
    if age is not None:
        then = time.time() - age.total_seconds()
        os.utime(path, (then, then))
    return path


def test_orphans_past_the_safety_age_go_fresh_ones_and_referenced_files_stay(settings: Settings) -> None:
    table = _trades_table(settings)
    _fragment(table, appends=8)
    old = _stray(table, f"{uuid.uuid4()}.parquet", timedelta(hours=2))
    fresh = _stray(table, f"{uuid.uuid4()}.parquet", None)

    report = maintain(settings, retain_last=1, **EVERYTHING)  # default safety age: 1 h

    stats = report.table("trades_v2")
    assert not old.exists() and fresh.exists()
    # The replaced data files and old manifests are only minutes old: kept until they pass the safety age.
    assert stats.orphans_removed == 1
    table.refresh()
    assert all(_local(t.file.file_path).exists() for t in table.scan().plan_files())
    # With no safety age every unreferenced file goes; the current snapshot's never do.
    report = maintain(settings, orphan_min_age=timedelta(0), **EVERYTHING)
    assert report.table("trades_v2").orphans_removed > 16  # the 16 small files compaction replaced, manifests...
    assert not fresh.exists()
    with QueryEngine(open_catalog(settings)) as engine:
        assert engine.sql(f"SELECT count(*) AS n FROM {table_identifier(TRADES_V2)}")["n"][0].as_py() == 8 * 25


def test_compaction_racing_an_appender_loses_and_duplicates_nothing(settings: Settings) -> None:
    table = _trades_table(settings)
    for i in range(8):
        append_trades(table, [trade(at(10, 0, i), "1.00000001", "1", i)])
    initial = set(_rows(table))
    appended: list[str] = []
    compacted = 0
    for round_ in range(3):
        stop = threading.Event()

        def append_same_partition(round_: int = round_, stop: threading.Event = stop) -> None:
            # Its own catalog and table object, like a sink process, committing 25x as often as the sink (5 s).
            writer = ensure_table(open_catalog(settings), TRADES_V2)
            n = 0
            while not stop.is_set():
                n += 1
                mid = f"r{round_}-{n}"
                append_trades(writer, [trade(at(11, round_, 0, n), "2.00000002", "1", n, mid=mid)])
                appended.append(mid)
                time.sleep(0.2)

        thread = threading.Thread(target=append_same_partition)
        thread.start()
        try:
            # At least 1.5 s and 4 appends per round (a loaded machine appends slowly), at most 20 s.
            deadline, hard_deadline = time.monotonic() + 1.5, time.monotonic() + 20
            while time.monotonic() < hard_deadline and (
                time.monotonic() < deadline or len(appended) < 4 * (round_ + 1)
            ):
                compacted += len(compact(table, target_bytes=128 << 20, min_files=2).compacted)
        finally:
            stop.set()
            thread.join()

    table.refresh()
    ids = table.scan().to_arrow()["message_id"].to_pylist()
    assert len(ids) == len(set(ids))  # nothing twice
    assert set(ids) == initial | set(appended)  # nothing lost
    assert compacted >= 3 and len(appended) >= 12
    # Whether a rewrite commit actually lost a race to the appender (and was retried) depends on timing; it
    # usually does (pyiceberg logs "concurrent update"), but only the outcome above is asserted, so this never flakes.


def test_retention_drops_only_partitions_older_than_the_cutoff(settings: Settings) -> None:
    table = _trades_table(settings)
    for day in range(3):
        append_trades(table, [trade(at(10, day=day), "1", "1", day), trade(at(11, day=day), "1", "1", 10 + day)])

    report = maintain(settings, retention_days=1, now=at(12, day=2), min_files=1000)

    assert report.table("trades_v2").partitions_dropped == ["2024-03-04/asx"]
    assert sorted(_files_by_partition(table)) == ["19787/asx", "19788/asx"]
    assert len(_rows(table)) == 4


def test_dry_run_reports_what_would_be_done_and_changes_nothing(settings: Settings) -> None:
    table = _trades_table(settings)
    _fragment(table, appends=10)
    old = _stray(table, "stray.parquet", timedelta(hours=2))
    location, stored = table.metadata_location, sorted(p for p in _local(table.location()).rglob("*") if p.is_file())

    keep_from_second_day = (date.today() - at(0, day=1).date()).days  # cutoff: midnight starting 2024-03-05

    report = maintain(settings, retain_last=1, retention_days=keep_from_second_day, dry_run=True, **EVERYTHING)

    stats = report.table("trades_v2")
    assert len(stats.partitions_compacted) == 2 and stats.snapshots_expired == 9
    assert stats.orphans_removed == 1 and stats.partitions_dropped == ["2024-03-04/asx"]
    table.refresh()
    assert table.metadata_location == location and old.exists()
    assert sorted(p for p in _local(table.location()).rglob("*") if p.is_file()) == stored
    console = Console(record=True, width=200)
    report.render(console)
    assert "dry run" in console.export_text()


def test_report_measures_query_latency_before_and_after(settings: Settings) -> None:
    table = _trades_table(settings)
    _fragment(table, appends=20)

    with LatencyProbe(open_catalog(settings)) as probe:
        report = maintain(
            settings, tables=["market_data.trades_v2"], retain_last=1, expire_older_than=timedelta(0), measure=probe
        )

    stats = report.table("trades_v2")
    assert stats.latency_before is not None and stats.latency_after is not None
    assert stats.data_files_before == 20 and stats.data_files_after == 2
    console = Console(record=True, width=200)
    report.render(console)
    assert "market_data.trades_v2" in console.export_text()


def test_unknown_table_names_say_which_exist(settings: Settings) -> None:
    with pytest.raises(ValueError, match="trades_v2"):
        maintain(settings, tables=["trades"])
