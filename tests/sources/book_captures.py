"""The depth events of the real Binance captures, read with K2's own parsers, in receipt order."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from pathlib import Path

from pyiceberg.catalog import Catalog

from k2.core.batch import Reject
from k2.lake.tables import ensure_table, in_write_order
from k2.samples import BINANCE_CAPTURE_2021_04_04, BINANCE_CAPTURE_2021_10_12, BINANCE_DEPTH_SNAPSHOTS_2021_10_12
from k2.schema.arrow import records_to_arrow
from k2.schema.fields import BOOK_SNAPSHOTS_V2, BOOK_UPDATES_V2
from k2.sources.binance.book import DepthDiff, DepthSnapshot, parse_depth_frame, parse_depth_snapshot
from k2.sources.binance.book_recorder import BookRecorder, Recorded
from k2.sources.binance.capture import RestResponse, WsFrame, read_capture
from k2.sources.binance.normalize_book import book_snapshot_records, book_update_records

CAPTURES = {
    "2021-04-04": (BINANCE_CAPTURE_2021_04_04,),
    "2021-10-12": (BINANCE_CAPTURE_2021_10_12, BINANCE_DEPTH_SNAPSHOTS_2021_10_12),
}


@cache
def depth_events(capture: str) -> tuple[DepthDiff | DepthSnapshot, ...]:
    """Every depth diff and REST depth snapshot of a capture (its WS and HTTP files merged by receipt time)."""
    timed: list[tuple[int, int, DepthDiff | DepthSnapshot]] = []
    for path in CAPTURES[capture]:
        for entry in read_capture(path):
            if isinstance(entry, WsFrame):
                diff = parse_depth_frame(entry.raw, entry.receipt_us)
                if diff is not None:
                    timed.append((entry.receipt_us, len(timed), diff))
            elif isinstance(entry, RestResponse) and entry.path.endswith("/depth"):
                snapshot = parse_depth_snapshot(entry.body, entry.params["symbol"], entry.receipt_us)
                timed.append((entry.receipt_us, len(timed), snapshot))
    return tuple(event for _, _, event in sorted(timed, key=lambda t: t[:2]))


def capture_entries(*paths: Path) -> list[WsFrame | RestResponse]:
    """The frames and REST responses of capture files, in receipt order."""
    merged = [e for path in paths for e in read_capture(path) if isinstance(e, WsFrame | RestResponse)]
    return sorted(merged, key=lambda e: e.receipt_us)


def record_entries(recorder: BookRecorder, entries: Iterable[WsFrame | RestResponse]) -> Recorded:
    """Every frame and depth snapshot of `entries` through `recorder`, in their order: all the rows it made."""
    total = Recorded()
    for entry in entries:
        if isinstance(entry, WsFrame):
            got = recorder.frame(entry.raw, entry.receipt_us, position=entry.line_no)
        elif entry.path.endswith("/depth"):
            limit = int(entry.params["limit"])
            got = recorder.snapshot(entry.params["symbol"], entry.body, entry.receipt_us, limit=limit)
        else:
            continue
        assert not isinstance(got, Reject), got
        if got is not None:
            total.updates += got.updates
            total.snapshots += got.snapshots
            total.gaps += got.gaps
            total.applied += got.applied
    return total


def record_capture(capture: str, recorder: BookRecorder) -> Recorded:
    """Every frame and depth snapshot of a capture through `recorder`, in receipt order: all the rows it made."""
    return record_entries(recorder, capture_entries(*CAPTURES[capture]))


def append_book_rows(catalog: Catalog, updates: list[dict], snapshots: list[dict]) -> None:
    """book_updates_v2 and book_snapshots_v2 rows appended to the lake in write order, like the sink."""
    for spec, rows in ((BOOK_UPDATES_V2, updates), (BOOK_SNAPSHOTS_V2, snapshots)):
        if rows:
            ensure_table(catalog, spec).append(in_write_order(records_to_arrow(spec, rows)))


def append_book_events(
    catalog: Catalog, events: Iterable[DepthDiff | DepthSnapshot], exchange: str = "binance"
) -> None:
    """The events' book_updates_v2 and book_snapshots_v2 rows appended to the lake in write order, like the sink."""
    updates, snapshots = [], []
    for event in events:
        if isinstance(event, DepthDiff):
            updates += book_update_records(event, exchange=exchange)
        else:
            snapshots += book_snapshot_records(event, limit=1000, exchange=exchange)
    append_book_rows(catalog, updates, snapshots)
