"""Bars from kept one-minute partials (k2.query.minute_bars) are the bars of the rows, exactly, and cost no re-read."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.query import bars as bars_module
from k2.query.bars import bars, counted_trades, divide_half_even
from k2.query.engine import QueryEngine
from k2.query.file_facts import FileFacts
from k2.query.minute_bars import file_partials_query, minute_partials, on_minute
from tests.query.records import append_trades, at, trade
from tests.query.test_bars import BAR_1000, BAR_1001, BAR_1003, as_rows, bar


def first_file() -> list[dict]:
    return [
        trade(at(9, 59, 59, 999_999), "36.00", "10", 0),
        # 10:00:05 holds a tie across files: seq 2 here, seq 1 (the bar's open) in the second file.
        trade(at(10, 0, 5), "36.40", "200", 2),
        trade(at(10, 0, 59, 999_999), "36.70", "150", 4),
        trade(at(10, 3, 10), "36.75", "0.12345678", 7),
        trade(at(10, 0, 10), "100", "1", 1, symbol="CBA"),
    ]


def second_file() -> list[dict]:
    return [
        trade(at(10, 0, 5), "36.50", "100", 1),
        trade(at(10, 0, 30), "36.90", "50", 3),
        # Same instant as seq 4 in the first file, later in sequence: the 10:00 close.
        trade(at(10, 0, 59, 999_999), "36.60", "1", 5),
        trade(at(10, 1, 0), "36.80", "300", 6),
        trade(at(10, 3, 20), "36.85", "10", 8),
        trade(at(10, 15, 0), "37.00", "5", 9),
        # No sequence at all (sorts after every sequence), and the same instant twice: message_id decides.
        trade(at(10, 20, 0), "37.10", "1", None, mid="b"),
        trade(at(10, 20, 0), "37.20", "1", None, mid="a"),
        trade(at(10, 0, 0, day=1), "38.00", "100", 1),
        trade(at(10, 0, 20), "1", "1", 1, exchange="chix"),
    ]


@pytest.fixture
def two_files(tables: dict[str, Table]) -> list[int]:
    return [append_trades(tables["trades_v2"], first_file()), append_trades(tables["trades_v2"], second_file())]


@pytest.fixture
def engine(catalog: Catalog, two_files: list[int]) -> Iterator[QueryEngine]:
    with QueryEngine(catalog) as engine:
        yield engine


def from_rows(monkeypatch: pytest.MonkeyPatch, *args: object, **kwargs: object) -> pa.Table:
    """The bars the raw-trades query gives for the same call."""
    with monkeypatch.context() as patched:
        patched.setattr(bars_module, "minute_partials", lambda *a, **k: None)
        return bars(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("interval", "tz", "gap_fill"),
    [
        ("1m", "UTC", False),
        ("1m", "UTC", True),
        ("5m", "UTC", False),
        ("15m", "Australia/Sydney", True),
        ("1h", "Asia/Kathmandu", False),  # UTC+05:45: bars open at :15 UTC, still whole minutes
        ("1d", "Australia/Sydney", False),
        ("1d", "UTC", True),
    ],
)
def test_bars_from_partials_equal_bars_from_rows(
    engine: QueryEngine, monkeypatch: pytest.MonkeyPatch, interval: str, tz: str, gap_fill: bool
) -> None:
    start, end = at(0, 0), at(0, 0, day=2)

    fast = bars(engine, ["BHP", "CBA"], interval, start, end, tz=tz, gap_fill=gap_fill)

    assert fast.num_rows > 0
    assert fast.equals(from_rows(monkeypatch, engine, ["BHP", "CBA"], interval, start, end, tz=tz, gap_fill=gap_fill))
    layout = engine.layout("trades_v2")
    # Two appends; the second spans two days and two exchanges: the partials of 4 files were combined.
    assert len(layout.files) == 4


def test_ties_across_files_resolve_in_event_order(engine: QueryEngine) -> None:
    result = bars(engine, "BHP", "1m", at(10, 0), at(10, 4), exchange="asx")

    assert as_rows(result) == [BAR_1000, BAR_1001, BAR_1003]  # open seq 1 (file 2) beats seq 2 (file 1)
    late = bars(engine, "BHP", "1m", at(10, 20), at(10, 21), exchange="asx")
    # Null sequences tie; message_id "a" (37.20) comes before "b" (37.10).
    assert as_rows(late) == [bar("10:20", "37.20", "37.20", "37.10", "37.10", "2", "37.15000000", "74.30", 2)]


def test_partials_are_read_once_then_answer_without_the_files(engine: QueryEngine) -> None:
    before = bars(engine, "BHP", "5m", at(10, 0), at(10, 30), exchange="asx")
    for file in engine.layout("trades_v2").files:
        Path(file.path.removeprefix("file://")).unlink()  # gone: only what the engine kept can answer

    after = bars(engine, "BHP", "5m", at(10, 0), at(10, 30), exchange="asx")

    assert after.equals(before)
    assert [r["trade_count"] for r in as_rows(after)] == [8, 1, 2]


def test_a_range_off_the_minute_reads_the_rows(engine: QueryEngine) -> None:
    assert not on_minute(at(10, 0, 30))

    result = bars(engine, "BHP", "1m", at(10, 0, 30), at(10, 2), exchange="asx")

    # Only the 10:00 trades from 10:00:30 on: 36.90 x 50, 36.70 x 150, 36.60 x 1; a partial bar (half its minute).
    assert as_rows(result) == [
        bar("10:00", "36.90", "36.90", "36.60", "36.60", "201", "36.74925373", "7386.60", 3, partial=True),
        BAR_1001,
    ]
    counted, params = counted_trades(None, (), "asx")
    files = engine.layout("trades_v2").files
    assert not any(engine.has_file_fact(f.path, file_partials_query(counted), ["BHP", *params]) for f in files)


def test_time_travel_combines_only_the_pinned_snapshot_files(
    engine: QueryEngine, two_files: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    first_snapshot = two_files[0]

    old = bars(engine, "BHP", "1m", at(10, 0), at(10, 5), as_of=first_snapshot)

    assert [r["trade_count"] for r in as_rows(old)] == [2, 1]  # 10:00 (seq 2, seq 4), 10:03 (seq 7)
    assert old.equals(from_rows(monkeypatch, engine, "BHP", "1m", at(10, 0), at(10, 5), as_of=first_snapshot))


def test_too_many_files_to_compute_first_falls_back_to_the_rows(engine: QueryEngine) -> None:
    assert minute_partials(engine, ["BHP"], at(0, 0), at(0, 0, day=2), None, computed_limit=1) is None
    kept = minute_partials(engine, ["BHP"], at(0, 0), at(0, 0, day=2), None)
    assert kept is not None
    assert kept.num_rows == 10  # BHP asx minutes in the 3 files, plus BHP chix 10:00
    # Once kept, the limit no longer applies: nothing would be read.
    again = minute_partials(engine, ["BHP"], at(0, 0), at(0, 0, day=2), None, computed_limit=0)
    assert again is not None and again.equals(kept)


def test_kept_file_facts_are_bounded_by_bytes(catalog: Catalog, two_files: list[int]) -> None:
    with QueryEngine(catalog, file_facts=FileFacts(max_bytes=100)) as engine:
        paths = [f.path for f in engine.layout("trades_v2").files]
        query = "SELECT symbol FROM read_parquet(?)"

        sizes = [engine.file_fact(path, query).nbytes for path in paths]

        assert sum(sizes) > 100
        assert engine.has_file_fact(paths[-1], query)  # the newest is always kept
        assert not engine.has_file_fact(paths[0], query)  # the oldest went first


@pytest.mark.parametrize(
    ("dividend", "divisor", "quotient"),
    [(5, 2, 2), (7, 2, 4), (-5, 2, -2), (-7, 2, -4), (11, 3, 4), (10, 3, 3), (5, -2, -2), (0, 7, 0)],
)
def test_vwap_division_rounds_half_to_even(dividend: int, divisor: int, quotient: int) -> None:
    assert divide_half_even(dividend, divisor) == quotient


def test_off_minute_check() -> None:
    assert on_minute(None)
    assert on_minute(at(10, 1))
    assert not on_minute(at(10, 1, 0, 1))
    assert not on_minute(at(10, 1) + timedelta(seconds=1))


def test_one_minute_bars_of_unsplit_minutes_are_the_partials_themselves(
    engine: QueryEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    start, end = at(10, 4), at(10, 0, day=2)  # from 10:04: no minute of BHP or CBA has partials in two files
    aggregated: list[str] = []
    real = engine.sql_over
    monkeypatch.setattr(engine, "sql_over", lambda *a: aggregated.append("ran") or real(*a))

    fast = bars(engine, ["BHP", "CBA"], "1m", start, end)

    assert aggregated == []
    assert [(r["exchange"], r["minute"]) for r in as_rows_any(fast)] == [
        ("asx", "10:15"), ("asx", "10:20"), ("asx", "10:00")
    ]  # fmt: skip
    assert fast.equals(from_rows(monkeypatch, engine, ["BHP", "CBA"], "1m", start, end))
    # A minute split across files (10:00 and 10:03 of day 0, from 10:00) needs the aggregation.
    bars(engine, ["BHP", "CBA"], "1m", at(10, 0), end)
    assert aggregated == ["ran"]


def as_rows_any(table: pa.Table) -> list[dict]:
    return [{**r, "minute": r["timestamp"].strftime("%H:%M")} for r in table.to_pylist()]
