"""Bars as they form (k2.query.bar_stream): exact values against hand-worked figures and against k2.query.bars on
the same trades, when bars close, and resuming from a cursor without losing or doubling a final bar."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.query.bar_stream import BarAggregator, BarPosition, bar_batches, bar_table, subscribe_bars
from k2.query.bars import bar_bounds, bars
from k2.query.engine import QueryEngine
from k2.query.filters import InvalidQueryError
from k2.query.subscribe import Phase, SubscriptionBatch
from k2.schema.arrow import records_to_arrow
from k2.schema.codecs import micros_from_datetime
from k2.schema.fields import TRADES_V2
from tests.query.records import append_trades, at, trade
from tests.query.test_bars import BAR_1000, BAR_1001, BAR_1003, bar, session

US = micros_from_datetime


def table(rows: list[dict]) -> pa.Table:
    return records_to_arrow(TRADES_V2, rows)


def bhp(rows: list[dict]) -> list[dict]:
    """Rows of BHP on asx as test_bars writes bars: minute, values, partial (`final` checked and dropped)."""
    out = []
    for row in rows:
        if (row["symbol"], row["exchange"]) != ("BHP", "asx"):
            continue
        out.append({"minute": row["timestamp"].strftime("%H:%M"), **{k: row[k] for k in BAR_1000 if k != "minute"}})
    return out


def test_final_bars_are_the_hand_worked_bars_whatever_order_trades_arrive_in_a_bar() -> None:
    trades = [t for t in session() if t["timestamp"] < US(at(10, 4)) and t["timestamp"] >= US(at(10, 0))]
    # Trades of one bar shuffled (open/close still by event order), bars in order.
    by_minute: dict[int, list[dict]] = {}
    for t in trades:
        by_minute.setdefault(t["timestamp"] // 60_000_000, []).append(t)
    arrival = [
        t for minute in sorted(by_minute) for t in random.Random(7).sample(by_minute[minute], len(by_minute[minute]))
    ]
    aggregator = BarAggregator("1m")
    finals = []
    for at_row, row in enumerate(arrival):  # one trade per batch: the harshest split
        finals += aggregator.add(table([row]), f"c{at_row}")
    finals += aggregator.close_due(US(at(10, 4)) + 2_000_000, 2_000_000)
    assert all(row["final"] for row in finals)
    assert bhp(finals) == [BAR_1000, BAR_1001, BAR_1003]
    assert str(finals[1]["vwap"]) == "36.80000000" and str(finals[2]["quote_volume"]) == "373.0370366650000000"


@pytest.fixture
def engine(catalog: Catalog, tables: dict[str, Table]) -> Iterator[QueryEngine]:
    append_trades(tables["trades_v2"], session())
    with QueryEngine(catalog) as engine:
        yield engine


@pytest.mark.parametrize("interval", ["1s", "1m", "15m", "1d"])
def test_streamed_bars_equal_the_bars_query_on_the_same_trades(engine: QueryEngine, interval: str) -> None:
    """Every series (BHP and CBA on asx, BHP on chix), event order, in batches of 3: the final bars are the rows
    /v1/bars computes, column for column, schema and all."""
    trades = sorted(session(), key=lambda t: (t["timestamp"], t["source_sequence"]))
    aggregator = BarAggregator(interval)
    rows = []
    for start in range(0, len(trades), 3):
        rows += aggregator.add(table(trades[start : start + 3]), None)
    rows += aggregator.close_due(US(at(0, 0, day=3)), 0)
    streamed = bar_table(sorted(rows, key=lambda r: (r["symbol"], r["exchange"], r["timestamp"])))
    expected = bars(engine, None, interval, None, None)
    assert streamed.drop(["final"]) == expected
    assert streamed.schema.remove(streamed.schema.get_field_index("final")) == expected.schema


def test_forming_bar_is_sent_when_it_changes_then_final_on_the_next_bars_trade() -> None:
    aggregator = BarAggregator("1m")
    first = [trade(at(10, 0, 5), "36.50", "100", 1), trade(at(10, 0, 5), "36.40", "200", 2)]
    assert aggregator.add(table(first), None) == []
    (forming,) = aggregator.forming()
    assert (forming["final"], forming["open"], forming["close"], forming["trade_count"]) == (
        False,
        Decimal("36.50"),
        Decimal("36.40"),
        2,
    )
    assert str(forming["volume"]) == "300.00000000" and str(forming["vwap"]) == "36.43333333"
    assert aggregator.forming() == []  # nothing changed since
    closed = aggregator.add(table([trade(at(10, 1, 0), "36.80", "300", 6)]), "c1")
    assert [(r["timestamp"], r["final"], r["trade_count"], str(r["close"])) for r in closed] == [
        (at(10, 0), True, 2, "36.40000000")
    ]
    assert [(r["timestamp"], r["final"]) for r in aggregator.forming()] == [(at(10, 1), False)]


def test_a_quiet_symbol_gets_its_final_bar_grace_after_the_interval_by_the_clock() -> None:
    aggregator = BarAggregator("1s")
    aggregator.add(table([trade(at(10, 0, 5, 200_000), "36.50", "1", 1)]), None)
    aggregator.forming()
    end = US(at(10, 0, 6))
    assert aggregator.close_due(end + 1_999_999, 2_000_000) == []
    (final,) = aggregator.close_due(end + 2_000_000, 2_000_000)
    assert (final["timestamp"], final["final"], final["trade_count"]) == (at(10, 0, 5), True, 1)
    # A trade of that second arriving now is late: in no streamed bar, counted.
    assert aggregator.add(table([trade(at(10, 0, 5, 900_000), "36.60", "1", 2)]), None) == []
    assert aggregator.forming() == [] and aggregator.late == 1


def test_uncounted_trades_are_in_no_bar_but_close_one() -> None:
    aggregator = BarAggregator("1m")
    aggregator.add(table([trade(at(10, 0, 1), "36.00", "10", 1)]), None)
    # asx condition 1 (pre-open print): not counted, yet it shows 10:00 is over.
    closed = aggregator.add(table([trade(at(10, 1, 1), "42.00", "5", 2, conditions=("1",))]), None)
    assert [(str(r["high"]), r["trade_count"]) for r in closed] == [("36.00000000", 1)]
    assert aggregator.forming() == []


def test_since_inside_a_bar_makes_it_partial_or_drops_it() -> None:
    rows = [trade(at(10, 0, 30), "36.00", "1", 1), trade(at(10, 1, 0), "37.00", "1", 2)]
    partial = BarAggregator("1m", since_us=US(at(10, 0, 20)))
    (cut,) = partial.add(table(rows), None)
    assert (cut["timestamp"], cut["partial"]) == (at(10, 0), True)
    assert [r["partial"] for r in partial.forming()] == [False]
    dropping = BarAggregator("1m", since_us=US(at(10, 0, 20)), drop_cut=True)
    assert dropping.add(table(rows), None) == []
    assert [r["timestamp"] for r in dropping.forming()] == [at(10, 1)]


def test_bar_bounds_follow_each_zone_and_dst() -> None:
    # Sydney's 1d bar of 2024-03-04 10:00Z opens at its local midnight (13:00Z the day before, AEDT).
    assert bar_bounds(US(at(10, 0)), "Australia/Sydney", 86_400_000_000) == (US(at(13, 0, day=-1)), US(at(13, 0)))
    # 4h bars in Sydney open at 00:00 local in summer: 13:00Z, 17:00Z, ...
    assert bar_bounds(US(at(10, 0)), "Australia/Sydney", 14_400_000_000) == (US(at(9, 0)), US(at(13, 0)))
    assert bar_bounds(US(at(10, 0, 1)), "UTC", 60_000_000) == (US(at(10, 0)), US(at(10, 1)))


class Feed:
    """Trades batches served from a list, each cursor its index: what subscribe() would give, restartable."""

    def __init__(self, batches: list[list[dict]], phase: Phase = "live") -> None:
        self.batches = batches
        self.phase = phase
        self.started: list[tuple[datetime | None, str | None]] = []

    def __call__(self, since: datetime | None, cursor: str | None) -> Iterator[SubscriptionBatch]:
        self.started.append((since, cursor))
        first = 0 if cursor is None else int(cursor) + 1
        for at_batch in range(first, len(self.batches)):
            yield SubscriptionBatch(table(self.batches[at_batch]), str(at_batch), self.phase)


def finals(batches: list[SubscriptionBatch]) -> list[tuple[str, datetime, int]]:
    return [
        (r["symbol"], r["timestamp"], r["trade_count"]) for b in batches for r in b.records.to_pylist() if r["final"]
    ]


def test_resuming_from_any_cursor_neither_loses_nor_doubles_a_final_bar() -> None:
    """Two symbols whose bars interleave across batches, so the oldest forming bar holds the resume point back
    while the other's bars close: from every cursor, what was sent plus what the resumed stream sends is each
    final bar exactly once."""
    t = trade
    batches = [
        [t(at(10, 0, 1), "1", "1", 1), t(at(10, 0, 2), "5", "1", 1, symbol="CBA")],
        [t(at(10, 0, 30), "2", "1", 2), t(at(10, 1, 1), "6", "1", 2, symbol="CBA")],  # CBA 10:00 closes
        [t(at(10, 2, 1), "7", "2", 3, symbol="CBA")],  # CBA 10:01 closes; BHP 10:00 still forming
        [t(at(10, 0, 50), "3", "1", 3), t(at(10, 3, 1), "8", "1", 4, symbol="CBA")],
        [t(at(10, 1, 5), "4", "1", 4)],  # BHP 10:00 closes
        [t(at(10, 4, 1), "9", "1", 5, symbol="CBA"), t(at(10, 2, 0), "4", "1", 5)],
    ]
    position = BarPosition("1m", US(at(10, 0)), False, None, {})
    whole = list(bar_batches(Feed(batches, "tail"), position))
    expected = [
        ("CBA", at(10, 0), 1),
        ("CBA", at(10, 1), 1),
        ("CBA", at(10, 2), 1),
        ("BHP", at(10, 0), 3),
        ("CBA", at(10, 3), 1),
        ("BHP", at(10, 1), 1),
    ]
    assert finals(whole) == expected
    # Cursor after batch 2: BHP 10:00 (first trade in batch 0) is forming, so the trades resume from the start.
    assert BarPosition.decode(whole[2].cursor).trades is None
    assert BarPosition.decode(whole[4].cursor).trades == "2"  # CBA 10:03 opened in batch 3, BHP 10:01 in 4
    for cut in range(len(whole)):
        feed = Feed(batches, "tail")
        resumed = list(bar_batches(feed, BarPosition.decode(whole[cut].cursor)))
        assert finals(whole[: cut + 1]) + finals(resumed) == expected, cut
    # The last forming bars close by the clock once live.
    live = list(bar_batches(Feed(batches[:1], "live"), position, clock=lambda: US(at(10, 1, 2)) / 1e6))
    assert finals(live) == [("BHP", at(10, 0), 1), ("CBA", at(10, 0), 1)]


def test_a_cursor_resumes_only_its_interval_and_needs_symbols() -> None:
    cursor = BarPosition("1m", None, True, "x", {("BHP", "asx"): 5}).encode()
    assert BarPosition.decode(cursor).opened == {("BHP", "asx"): 5}
    with pytest.raises(InvalidQueryError, match="interval 1m"):
        next(subscribe_bars(None, None, ["BHP"], "1s", cursor=cursor))  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="1 to 100 symbols"):
        next(subscribe_bars(None, None, None, "1s"))  # type: ignore[arg-type]
    with pytest.raises(InvalidQueryError, match="cursor is not one"):
        BarPosition.decode("bm90IGEgY3Vyc29y")
    with pytest.raises(InvalidQueryError, match="invalid bar interval"):
        next(subscribe_bars(None, None, ["BHP"], "7m"))  # type: ignore[arg-type]


def test_hand_worked_fifteen_minute_bar_forms_then_closes() -> None:
    aggregator = BarAggregator("15m")
    trades = [t for t in session() if (t["symbol"], t["exchange"]) == ("BHP", "asx")]
    rows = aggregator.add(table(trades[:9]), None)
    assert bhp(rows) == [bar("09:45", "36.00", "36.00", "36.00", "36.00", "10", "36.00000000", "360.00", 1)]
    assert bhp(aggregator.forming()) == [
        bar("10:00", "36.50", "36.90", "36.40", "36.85", "811.12345678", "36.65241929", "29729.6370366650", 8)
    ]
