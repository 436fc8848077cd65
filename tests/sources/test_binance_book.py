"""The depth parsers and the local book's rules, on small hand-made events (the captures: test_binance_book_oracle)."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest

from k2.sources.binance.book import (
    BookGap,
    BookSync,
    DepthDiff,
    DepthSnapshot,
    DiffOutcome,
    parse_depth_diff,
    parse_depth_frame,
    parse_depth_snapshot,
)
from k2.sources.binance.normalize import PayloadError, TimeUnit

D = Decimal


def diff(first: int, last: int, bids=(), asks=(), *, event_ms: int = 1_617_566_592_000) -> DepthDiff:
    levels = lambda rows: tuple((D(p), D(q)) for p, q in rows)  # noqa: E731
    return DepthDiff("BTCUSDT", first, last, event_ms * 1000, event_ms * 1000 + 7, levels(bids), levels(asks))


def snapshot(last_update_id: int, bids=(("100", "1"), ("99", "2")), asks=(("101", "3"),)) -> DepthSnapshot:
    levels = lambda rows: tuple((D(p), D(q)) for p, q in rows)  # noqa: E731
    return DepthSnapshot("BTCUSDT", last_update_id, 5, levels(bids), levels(asks))


PAYLOAD = {
    "e": "depthUpdate", "E": 1617566592308, "s": "BTCUSDT", "U": 9893033062, "u": 9893033067,
    "b": [["58001.03000000", "1.60107400"], ["57807.74000000", "0.00000000"]], "a": [["58001.04", "2.5"]],
}  # fmt: skip


def test_a_depth_update_parses_to_exact_decimals_and_microseconds() -> None:
    parsed = parse_depth_diff(PAYLOAD, receive_us=1617566592329000)
    assert parsed == DepthDiff(
        "BTCUSDT", 9893033062, 9893033067, 1617566592308000, 1617566592329000,
        ((D("58001.03"), D("1.601074")), (D("57807.74"), D(0))), ((D("58001.04"), D("2.5")),),
    )  # fmt: skip
    assert str(parsed.bids[1][1]) == "0E-8" and str(parsed.asks[0][0]) == "58001.04000000"
    assert parse_depth_diff(PAYLOAD | {"E": 1617566592308123}, 0, TimeUnit.MICROSECOND).event_us == 1617566592308123


def test_combined_and_raw_frames_parse_and_other_frames_are_none() -> None:
    combined = orjson.dumps({"stream": "btcusdt@depth@100ms", "data": PAYLOAD})
    assert parse_depth_frame(combined, 9) == parse_depth_frame(orjson.dumps(PAYLOAD), 9) == parse_depth_diff(PAYLOAD, 9)
    assert parse_depth_frame(b'{"result":null,"id":1}', 9) is None
    assert parse_depth_frame(orjson.dumps({"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade"}}), 9) is None
    with pytest.raises(PayloadError) as exc:
        parse_depth_frame(b"{not json", 9)
    assert exc.value.reason == "malformed_json"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"U": None}, "missing_field:U"),
        ({"u": "9893033067"}, "bad_field:u"),
        ({"U": 9893033068}, "bad_field:U"),  # U after u
        ({"b": [["58001.03"]]}, "bad_field:b"),
        ({"a": [["58001.041234567", "1"]]}, "bad_price"),  # 9 decimals do not fit decimal(18,8)
        ({"a": [["58001.04", "-1"]]}, "bad_quantity"),
        ({"a": [[58001.04, "1"]]}, "bad_price"),  # a JSON number has been through float
        ({"s": 7}, "missing_field:s"),
        ({"u": 2**63}, "bad_field:u"),  # beyond the int64 column
        ({"E": 2**63 // 1000 + 1}, "bad_field:E"),  # in ms: beyond int64 microseconds
        ({"E": 0}, "bad_field:E"),
        ({"U": True}, "bad_field:U"),
    ],
)
def test_a_bad_depth_update_names_its_fault(change: dict, reason: str) -> None:
    payload = {k: v for k, v in (PAYLOAD | change).items() if v is not None}
    with pytest.raises(PayloadError) as exc:
        parse_depth_diff(payload, 0)
    assert exc.value.reason == reason


def test_a_rest_snapshot_parses_with_the_symbol_the_caller_asked_for() -> None:
    body = b'{"lastUpdateId":499869752,"bids":[["0.35210000","672.00000000"]],"asks":[]}'
    assert parse_depth_snapshot(body, "NKNUSDT", 11) == DepthSnapshot(
        "NKNUSDT", 499869752, 11, ((D("0.3521"), D(672)),), ()
    )
    with pytest.raises(PayloadError) as exc:
        parse_depth_snapshot(b'{"bids":[],"asks":[]}', "NKNUSDT", 11)
    assert exc.value.reason == "missing_field:lastUpdateId"


def test_quantity_zero_removes_a_level_and_removing_an_absent_level_is_harmless() -> None:
    sync = BookSync("BTCUSDT")
    sync.on_snapshot(snapshot(10))
    assert sync.on_diff(diff(11, 12, bids=[("100", "0"), ("98", "0"), ("99.5", "4")], asks=[("101", "0.5")])) == (
        DiffOutcome.APPLIED
    )
    assert list(sync.book.bids.items()) == [(D("99.5"), D(4)), (D(99), D(2))]
    assert sync.book.best_ask() == (D(101), D("0.5")) and sync.book.last_update_id == 12
    assert sync.book.top(1) == ([(D("99.5"), D(4))], [(D(101), D("0.5"))])


def test_diffs_wait_for_a_snapshot_which_drops_what_it_holds_and_applies_the_bridge() -> None:
    sync = BookSync("BTCUSDT")
    for d in (diff(5, 8), diff(9, 11, bids=[("100", "7")]), diff(12, 12, asks=[("102", "1")])):
        assert sync.on_diff(d) is DiffOutcome.BUFFERED
    resync = sync.on_snapshot(snapshot(10))
    assert [d.last_update_id for d in resync.dropped] == [8]
    assert [d.last_update_id for d in resync.applied] == [11, 12]  # 9 <= 10 + 1 <= 11 bridges
    assert resync.gap is None and sync.synced and sync.buffered == ()
    assert sync.book.bids[D(100)] == D(7) and sync.book.asks[D(102)] == D(1)
    assert sync.on_diff(diff(12, 12)) is DiffOutcome.STALE  # a repeat
    assert sync.on_diff(diff(13, 15)) is DiffOutcome.APPLIED


def test_a_snapshot_older_than_every_buffered_diff_is_a_gap_until_a_newer_one() -> None:
    sync = BookSync("BTCUSDT")
    sync.on_diff(diff(20, 22, event_ms=2_000))
    resync = sync.on_snapshot(snapshot(10))
    assert resync.gap == BookGap("BTCUSDT", 11, 19, "snapshot_before_diffs", 5, 2_000_000, 2_000_007)
    assert not sync.synced and [d.first_update_id for d in sync.buffered] == [20]
    resync = sync.on_snapshot(snapshot(21))
    assert resync.gap is None and [d.last_update_id for d in resync.applied] == [22] and sync.synced
    assert sync.gaps == [BookGap("BTCUSDT", 11, 19, "snapshot_before_diffs", 5, 2_000_000, 2_000_007)]


def test_a_break_among_buffered_diffs_keeps_what_came_before_it() -> None:
    sync = BookSync("BTCUSDT")
    for d in (diff(11, 12, event_ms=1_000), diff(14, 15, event_ms=3_000)):
        sync.on_diff(d)
    resync = sync.on_snapshot(snapshot(10))
    assert [d.last_update_id for d in resync.applied] == [12]
    assert resync.gap == BookGap("BTCUSDT", 13, 13, "diff_break", 1_000_000, 3_000_000, 3_000_007)
    assert resync.gap.missing_count == 1 and not sync.synced and len(sync.buffered) == 1


def test_the_buffer_keeps_the_newest_diffs_and_books_refuse_other_symbols() -> None:
    sync = BookSync("BTCUSDT", max_buffered=2)
    for first in (1, 2, 3):
        sync.on_diff(diff(first, first))
    assert [d.first_update_id for d in sync.buffered] == [2, 3]
    with pytest.raises(ValueError, match="ETHUSDT diff fed to the BTCUSDT book"):
        sync.on_diff(DepthDiff("ETHUSDT", 1, 1, 1, 1, (), ()))


def test_a_snapshot_older_than_the_book_in_sync_changes_nothing() -> None:
    sync = BookSync("BTCUSDT")
    sync.on_snapshot(snapshot(10))
    sync.on_diff(diff(11, 14, bids=[("100", "9")]))
    late = sync.on_snapshot(snapshot(12, bids=(("50", "1"),)))
    assert late.outdated and late.applied == [] and late.gap is None
    assert sync.book.last_update_id == 14 and sync.book.best_bid() == (D(100), D(9))
    assert sync.on_diff(diff(15, 15)) is DiffOutcome.APPLIED  # no false gap
    newer = sync.on_snapshot(snapshot(20, bids=(("50", "1"),)))
    assert not newer.outdated and sync.book.best_bid() == (D(50), D(1)) and sync.book.last_update_id == 20
