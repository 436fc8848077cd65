"""K2's local order books on the real captures, against an independent reconstruction (tests/sources/book_oracle.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from k2.sources.binance.book import BookGap, BookSync, DepthDiff, DepthSnapshot, DiffOutcome
from tests.sources.book_captures import CAPTURES, depth_events
from tests.sources.book_oracle import OracleSnapshot, read_depth, replay

SYMBOLS = {
    "2021-04-04": ("BTCUSDT", "ETHUSDT", "DOTUSDT"),
    "2021-10-12": ("NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"),
}
CASES = [(capture, symbol) for capture, symbols in SYMBOLS.items() for symbol in symbols]


def _feed(sync: BookSync, events: list[DepthDiff | DepthSnapshot]) -> list[DepthDiff]:
    """Every event to the book; the diffs it applied, in order (an unexpected gap fails the test)."""
    applied = []
    for event in events:
        if isinstance(event, DepthSnapshot):
            resync = sync.on_snapshot(event)
            assert resync.gap is None
            applied += resync.applied
        elif (outcome := sync.on_diff(event)) is DiffOutcome.APPLIED:
            applied.append(event)
        else:
            assert not isinstance(outcome, BookGap), outcome
    return applied


def _symbol_events(capture: str, symbol: str) -> list[DepthDiff | DepthSnapshot]:
    return [e for e in depth_events(capture) if e.symbol == symbol]


@pytest.mark.parametrize(("capture", "symbol"), CASES)
def test_the_book_after_every_applied_diff_is_the_oracles(capture: str, symbol: str) -> None:
    diffs, snapshots = read_depth(*CAPTURES[capture])
    (snapshot,) = snapshots[symbol]  # each capture holds one REST snapshot per symbol
    expected = replay(snapshot, diffs[symbol])
    sync = BookSync(symbol)
    applied = 0
    for event in _symbol_events(capture, symbol):
        if isinstance(event, DepthSnapshot):
            steps = sync.on_snapshot(event).applied
        else:
            steps = [event] if sync.on_diff(event) is DiffOutcome.APPLIED else []
        for step in steps:
            diff, bids, asks = next(expected)
            assert (step.first_update_id, step.last_update_id) == (diff.first, diff.last)
            assert sync.book.bids == bids and sync.book.asks == asks, f"after diff u={diff.last}"
            applied += 1
    assert next(expected, None) is None  # the oracle applied no diff K2 did not
    assert sync.synced and not sync.gaps
    # level for level, best first, after the last diff
    assert list(sync.book.bids.items()) == sorted(bids.items(), reverse=True)
    assert list(sync.book.asks.items()) == sorted(asks.items())
    assert applied == sum(1 for d in diffs[symbol] if d.last > snapshot.last_update_id)


def test_btcusdt_on_2021_04_04_bridges_at_the_documented_diff_and_ends_at_the_recorded_top() -> None:
    sync = BookSync("BTCUSDT")
    applied = _feed(sync, _symbol_events("2021-04-04", "BTCUSDT"))
    assert sync.book.last_update_id == applied[-1].last_update_id == 9893046554
    assert (applied[0].first_update_id, applied[0].last_update_id) == (9893033062, 9893033067)
    assert len(applied) == 889  # of 899: the 10 with u <= lastUpdateId are in the snapshot
    assert sync.book.best_bid() == (Decimal("58005.11000000"), Decimal("1.48637600"))
    assert sync.book.best_ask() == (Decimal("58005.12000000"), Decimal("0.11025200"))
    assert (len(sync.book.bids), len(sync.book.asks)) == (1076, 1060)
    assert str(sync.book.best_bid()[0]) == "58005.11000000"  # scale 8 kept


def test_nknusdt_on_2021_10_12_drops_the_diff_the_snapshot_holds_and_starts_at_the_next() -> None:
    sync = BookSync("NKNUSDT")
    events = _symbol_events("2021-10-12", "NKNUSDT")
    snapshot_at = next(i for i, e in enumerate(events) if isinstance(e, DepthSnapshot))
    for event in events[:snapshot_at]:
        assert sync.on_diff(event) is DiffOutcome.BUFFERED
    resync = sync.on_snapshot(events[snapshot_at])
    assert [(d.first_update_id, d.last_update_id) for d in resync.dropped] == [(499869750, 499869752)]
    assert resync.applied == [] and resync.gap is None
    first_live = events[snapshot_at + 1]
    assert (first_live.first_update_id, first_live.last_update_id) == (499869753, 499869754)
    assert sync.on_diff(first_live) is DiffOutcome.APPLIED


@pytest.mark.parametrize(("capture", "symbol"), [("2021-04-04", "BTCUSDT"), ("2021-10-12", "NKNUSDT")])
def test_a_lost_diff_is_a_gap_and_a_later_snapshot_restores_the_oracles_book(capture: str, symbol: str) -> None:
    diffs, snapshots = read_depth(*CAPTURES[capture])
    (snapshot,) = snapshots[symbol]
    events = _symbol_events(capture, symbol)
    live = [i for i, e in enumerate(events) if isinstance(e, DepthDiff) and e.last_update_id > snapshot.last_update_id]
    lost_at = live[len(live) // 2]
    lost, before, after = events[lost_at], events[lost_at - 1], events[lost_at + 1]
    assert isinstance(lost, DepthDiff) and isinstance(before, DepthDiff) and isinstance(after, DepthDiff)
    # The later snapshot: the oracle's whole book five diffs after the lost one (as a REST call then would give).
    resync_at = lost_at + 5
    resync_u = events[resync_at].last_update_id
    for diff, bids, asks in replay(snapshot, diffs[symbol]):
        if diff.last == resync_u:
            later = OracleSnapshot(symbol, resync_u, dict(bids), dict(asks))
            break
    *_, final = replay(snapshot, diffs[symbol])

    sync = BookSync(symbol)
    _feed(sync, events[:lost_at])
    assert sync.synced
    outcome = sync.on_diff(after)
    assert outcome == BookGap(
        symbol, lost.first_update_id, lost.last_update_id, "diff_break",
        last_good_us=before.event_us, next_event_us=after.event_us, detected_us=after.receive_us,
    )  # fmt: skip
    assert outcome.missing_count == lost.last_update_id - lost.first_update_id + 1
    assert not sync.synced and sync.gaps == [outcome]
    for event in events[lost_at + 2 : resync_at + 1]:
        assert sync.on_diff(event) is DiffOutcome.BUFFERED
    resync = sync.on_snapshot(
        DepthSnapshot(symbol, later.last_update_id, 0, tuple(later.bids.items()), tuple(later.asks.items()))
    )
    assert resync.gap is None and resync.applied == []
    assert len(resync.dropped) == 5  # the diff that showed the gap and the four after it: all in the snapshot
    assert sync.synced and sync.book.bids == later.bids and sync.book.asks == later.asks
    _feed(sync, events[resync_at + 1 :])
    _, bids, asks = final
    assert sync.book.bids == bids and sync.book.asks == asks
    assert sync.gaps == [outcome]
