"""The book series and trades joined to the book: against an independent replay of the real April capture, against
book_at at the same moments, and against a small hand-made book with a lost update and a second snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import pytest

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from k2.query.book import book_at
from k2.query.book_series import MAX_SERIES_POINTS, SERIES_SCHEMA, book_levels, book_series, trades_with_book
from k2.query.engine import QueryEngine
from k2.query.filters import InvalidQueryError
from k2.samples import BINANCE_EXCHANGE_INFO
from k2.schema.codecs import datetime_from_micros, micros_from_datetime
from k2.sources.binance.capture import ws_frames
from k2.sources.binance.normalize import normalize_frame
from k2.sources.binance.symbols import SymbolDirectory
from tests.query.book_lake import BEFORE_TRADES, SECOND, T0, D, build_hand_book
from tests.query.records import append_trades
from tests.query.test_book_at import _oracle_at, _top
from tests.sources.book_captures import CAPTURES, append_book_events, depth_events
from tests.sources.book_oracle import read_depth


@pytest.fixture(scope="module")
def april(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryEngine]:
    catalog = open_catalog(Settings(home=Path(tmp_path_factory.mktemp("april-book"))))
    append_book_events(catalog, [e for e in depth_events("2021-04-04") if e.symbol == "BTCUSDT"])
    symbols = SymbolDirectory.from_file(BINANCE_EXCHANGE_INFO)
    trades = [
        normalize_frame(frame.raw, symbols, frame.receipt_us, origin=capture.name, position=frame.line_no)
        for capture in CAPTURES["2021-04-04"]
        for frame in ws_frames(capture)
        if b"btcusdt@aggTrade" in frame.raw
    ]
    append_trades(ensure_tables(catalog)["trades_v2"], trades)
    with QueryEngine(catalog) as opened:
        yield opened


def _expected_top(bids: list, asks: list) -> dict[str, object]:
    """The top-of-book columns computed here from plain (price, quantity) lists, best first."""
    bid_depth, ask_depth = sum(q for _, q in bids), sum(q for _, q in asks)
    return {
        "bid_price": bids[0][0],
        "bid_quantity": bids[0][1],
        "ask_price": asks[0][0],
        "ask_quantity": asks[0][1],
        "mid": (bids[0][0] + asks[0][0]) / 2,
        "spread": asks[0][0] - bids[0][0],
        "bid_depth": bid_depth,
        "ask_depth": ask_depth,
        "imbalance": ((bid_depth - ask_depth) / (bid_depth + ask_depth)).quantize(Decimal("1E-10"), ROUND_HALF_EVEN),
    }


def test_btcusdt_every_second_is_the_oracles_book_and_book_ats(april: QueryEngine) -> None:
    diffs, snapshots = read_depth(*CAPTURES["2021-04-04"])
    (snapshot,) = snapshots["BTCUSDT"]
    start = datetime_from_micros(snapshot.received_us)  # 20:03:12.339385: the first boundary is 20:03:13
    end = datetime_from_micros(diffs["BTCUSDT"][-1].event_ms * 1000) + timedelta(seconds=2)
    series = book_series(april, "BTCUSDT", start, end, "1s", 5, exchange="binance")
    assert series.schema == SERIES_SCHEMA
    rows = series.to_pylist()
    times = [micros_from_datetime(row["timestamp"]) for row in rows]
    assert len(rows) == 92 and times[0] == 1_617_566_593 * SECOND and times[-1] == times[0] + 91 * SECOND
    checked = list(zip(times, rows, strict=True))[::3]  # the oracle replays from the snapshot for each moment
    oracle = _oracle_at(snapshot, diffs["BTCUSDT"], [at for at, _ in checked])
    for at, row in checked:
        bids, asks = _top(oracle[at], 5)
        assert {name: row[name] for name in _expected_top(bids, asks)} == _expected_top(bids, asks), at
        assert row["book_exact"] is True
    for at, row in list(zip(times, rows, strict=True))[::23]:
        book = book_at(april, "BTCUSDT", at, 5, exchange="binance")
        assert (row["book_update_id"], row["bid_price"], row["ask_quantity"]) == (
            book.last_update_id, book.bids[0][0], book.asks[0][1]
        )  # fmt: skip
    assert rows[0] | {"timestamp": None} == {
        "timestamp": None, "bid_price": Decimal("58000.27000000"), "bid_quantity": Decimal("2.71724600"),
        "ask_price": Decimal("58000.28000000"), "ask_quantity": Decimal("2.39819000"),
        "mid": Decimal("58000.275000000"), "spread": Decimal("0.01000000"), "bid_depth": Decimal("3.24986900"),
        "ask_depth": Decimal("4.49601500"), "imbalance": Decimal("-0.1608784743"), "book_update_id": 9893033136,
        "book_exact": True,
    }  # fmt: skip
    assert rows[-1]["book_update_id"] == 9893046554  # the last event of the capture


def test_btcusdt_aggtrades_get_the_oracles_book_one_microsecond_before_them(april: QueryEngine) -> None:
    diffs, snapshots = read_depth(*CAPTURES["2021-04-04"])
    (snapshot,) = snapshots["BTCUSDT"]
    start, end = datetime_from_micros(1_617_566_500 * SECOND), datetime_from_micros(1_617_566_700 * SECOND)
    rows = trades_with_book(april, "BTCUSDT", start, end, 5, exchange="binance").to_pylist()
    assert len(rows) == 1227  # every BTCUSDT aggTrade of the capture
    unknown = [row for row in rows if micros_from_datetime(row["timestamp"]) <= snapshot.received_us]
    assert len(unknown) == 15 and all(row["book_update_id"] is None and row["mid"] is None for row in unknown)
    known = rows[15:]
    checked = known[::120]  # the oracle replays from the snapshot for each trade
    before = [micros_from_datetime(row["timestamp"]) - 1 for row in checked]
    oracle = _oracle_at(snapshot, diffs["BTCUSDT"], before)
    for at, row in zip(before, checked, strict=True):
        bids, asks = _top(oracle[at], 5)
        assert {name: row[name] for name in _expected_top(bids, asks)} == _expected_top(bids, asks), at
    for at, row in list(zip(before, checked, strict=True))[::4]:
        assert row["book_update_id"] == book_at(april, "BTCUSDT", at, 1, exchange="binance").last_update_id
    assert (known[0]["trade_id"], known[0]["bid_price"], known[0]["ask_price"], known[0]["book_update_id"]) == (
        "665076775", Decimal("58001.03000000"), Decimal("58001.04000000"), 9893033067
    )  # fmt: skip


def test_a_series_too_long_or_out_of_range_is_refused_in_one_line(april: QueryEngine) -> None:
    start = datetime_from_micros(1_617_566_593 * SECOND)
    with pytest.raises(InvalidQueryError, match=f"would have 100001 books \\(at most {MAX_SERIES_POINTS}\\)"):
        book_series(april, "BTCUSDT", start, start + timedelta(seconds=100_001), "1s", 5, exchange="binance")
    with pytest.raises(InvalidQueryError, match="invalid series interval '7m': use a number and s/m/h/d from 1s to 1d"):
        book_series(april, "BTCUSDT", start, start + timedelta(seconds=1), "7m", 5, exchange="binance")
    with pytest.raises(InvalidQueryError, match="no order-book snapshot of BTCUSDT on binance"):
        book_series(
            april, "BTCUSDT", start - timedelta(hours=1), start - timedelta(minutes=1), "1m", 5, exchange="binance"
        )
    with pytest.raises(InvalidQueryError, match="before 0001-02-01"):
        book_levels(
            april, "BTCUSDT", micros_from_datetime(datetime_from_micros(0).replace(year=1)), 5, exchange="binance"
        )


@pytest.fixture(scope="module")
def hand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryEngine]:
    settings = build_hand_book(Settings(home=Path(tmp_path_factory.mktemp("hand-book"))))
    with QueryEngine(open_catalog(settings)) as opened:
        yield opened


TOP_COLUMNS = [*_expected_top([(D(1), D(1))], [(D(1), D(1))]), "book_update_id", "book_exact"]


def test_each_trade_gets_the_book_strictly_before_it_across_a_hole_and_a_new_snapshot(hand: QueryEngine) -> None:
    start, end = datetime_from_micros(T0 - 2 * SECOND), datetime_from_micros(T0 + 8 * SECOND)
    rows = trades_with_book(hand, "XYZ", start, end, 2, exchange="binance").to_pylist()
    assert [row["trade_id"] for row in rows] == ["1", "2", "3", "4", "5", "6", "7"]
    assert [row["price"] for row in rows] == [D("10.5")] * 7
    for row, expected in zip(rows, BEFORE_TRADES, strict=True):
        got = {name: row[name] for name in TOP_COLUMNS}
        if expected is None:
            assert got == dict.fromkeys(TOP_COLUMNS), row
            continue
        bids, asks, update_id, exact = expected
        assert got == {**_expected_top(bids, asks), "book_update_id": update_id, "book_exact": exact}, row
        book = book_at(hand, "XYZ", micros_from_datetime(row["timestamp"]) - 1, 2, exchange="binance")
        assert (book.bids, book.asks, book.last_update_id, book.exact) == expected
    assert rows[4]["imbalance"] == D("0.4117647059")  # (12 - 5) / 17 and rows[4]["mid"] == D("10.750000000")
    assert trades_with_book(hand, "XYZ", end, end + timedelta(seconds=1), 2, exchange="binance").num_rows == 0
    with pytest.raises(InvalidQueryError) as refused:  # only trade 1, before any snapshot
        trades_with_book(hand, "XYZ", start, datetime_from_micros(T0), 2, exchange="binance")
    assert str(refused.value) == (
        "no order-book snapshot of XYZ on binance at or before 2024-03-04T09:59:58.999999+00:00: the book is unknown"
        " before its first snapshot; ask for a later time"
    )


def test_the_series_restarts_at_a_snapshot_inside_the_range_and_is_null_before_the_first(hand: QueryEngine) -> None:
    start, end = datetime_from_micros(T0 - 1_500_000), datetime_from_micros(T0 + 7 * SECOND)
    rows = book_series(hand, "XYZ", start, end, "1s", 2, exchange="binance").to_pylist()
    assert [micros_from_datetime(row["timestamp"]) - T0 for row in rows] == [s * SECOND for s in range(-1, 7)]
    assert [(row["book_update_id"], row["book_exact"]) for row in rows] == [
        (None, None), (100, True), (102, True), (103, True), (103, True), (106, False), (110, True), (111, True)
    ]  # fmt: skip
    assert (rows[5]["bid_depth"], rows[5]["ask_depth"]) == (D(12), D(5))
    for row in rows[1:]:
        book = book_at(hand, "XYZ", micros_from_datetime(row["timestamp"]), 2, exchange="binance")
        assert {name: row[name] for name in TOP_COLUMNS} == {
            **_expected_top(book.bids, book.asks), "book_update_id": book.last_update_id, "book_exact": book.exact
        }  # fmt: skip


def test_the_levels_table_carries_where_the_book_came_from(hand: QueryEngine) -> None:
    holed = book_levels(hand, "XYZ", T0 + 4 * SECOND, 2, exchange="binance").to_pylist()
    assert [(r["side"], r["level"], r["price"], r["quantity"]) for r in holed] == [
        ("BID", 1, D(10), D(5)), ("BID", 2, D("9.5"), D(7)), ("ASK", 1, D("11.5"), D(1)), ("ASK", 2, D(12), D(4))
    ]  # fmt: skip
    where_from = {key: value for key, value in holed[0].items() if key not in ("side", "level", "price", "quantity")}
    assert where_from == {
        "book_update_id": 106, "snapshot_update_id": 100, "snapshot_timestamp": datetime_from_micros(T0),
        "updates_applied": 3, "book_exact": False, "gap_first_update_id": 104, "gap_last_update_id": 105,
    }  # fmt: skip
