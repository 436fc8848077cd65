"""Range queries of the library let the Iceberg scan skip other days' files — also when time travelling."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import duckdb
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.query import engine as engine_module
from k2.query import file_scan
from k2.query.asof import trades_with_quotes
from k2.query.bars import bars, counted_trades
from k2.query.engine import QueryEngine
from k2.query.market import latest, page, tail_query, trades
from k2.query.minute_bars import file_partials_query
from k2.query.summary import daily_summary
from k2.schema.fields import TRADES_V2
from tests.query.records import append_trades, at, trade

DAYS = 5  # one data file per day (one exchange)


@pytest.fixture
def engine(catalog: Catalog, tables: dict[str, Table]) -> Iterator[QueryEngine]:
    append_trades(tables["trades_v2"], [trade(at(10, day=d), "1", "1", d) for d in range(DAYS)])
    with QueryEngine(catalog) as engine:
        yield engine


def files_read_by_each(monkeypatch: pytest.MonkeyPatch, call: Callable[[], Any]) -> list[int]:
    """Run `call`, then EXPLAIN ANALYZE each lake SQL it ran on the same connection; each one's largest scan file
    count. Per-file facts (`QueryEngine.file_fact`: one read_parquet of one file, once) are not lake scans."""
    ran: list[tuple] = []
    real_run = engine_module._run

    def spy(con: duckdb.DuckDBPyConnection, query: str, params: Any) -> Any:
        if "read_parquet(?)" not in query:
            ran.append((con, query, params))
        return real_run(con, query, params)

    monkeypatch.setattr(engine_module, "_run", spy)
    call()
    counts = []
    for con, query, params in ran:
        plan = "\n".join(str(v) for row in con.execute(f"EXPLAIN ANALYZE {query}", params).fetchall() for v in row)
        counts.append(max(int(n) for n in re.findall(r"Total Files Read: (\d+)", plan)))
    return counts


def trades_files_read(monkeypatch: pytest.MonkeyPatch, call: Callable[[], Any]) -> int:
    """The most files any lake SQL of `call` scanned (the as-of join runs two: trades, then quotes)."""
    return max(files_read_by_each(monkeypatch, call))


@pytest.mark.parametrize(
    "call",
    [
        lambda e: trades(e, "BHP", at(0, day=2), at(0, day=3)),
        # Off the minute, so bars come from the rows (on minutes they come from kept partials: test below).
        lambda e: bars(e, "BHP", "1m", at(0, 0, 0, 1, day=2), at(0, day=3), gap_fill=True),
        lambda e: daily_summary(e, None, at(0, day=2), at(0, day=3)),
        lambda e: trades(e, "BHP", at(0, day=2), at(0, day=3), as_of=e.snapshot_ids["trades_v2"]),
    ],
    ids=["trades", "bars", "daily_summary", "time_travel"],
)
def test_one_day_range_reads_one_file(
    engine: QueryEngine, monkeypatch: pytest.MonkeyPatch, call: Callable[[QueryEngine], object]
) -> None:
    assert trades_files_read(monkeypatch, lambda: call(engine)) == 1


def test_as_of_join_reads_only_that_day_file(engine: QueryEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open = file_scan._open

    def spy(layout: Any, path: str, columns: Any) -> Any:
        opened.append(path)
        return real_open(layout, path, columns)

    monkeypatch.setattr(file_scan, "_open", spy)
    joined = trades_with_quotes(engine, "BHP", at(0, day=2), at(0, day=3), quote_lookback=timedelta(0))

    # The trades come straight from the data files (k2.query.file_scan): that day's only.
    day_files = [f.path for f in engine.layout("trades_v2").files if f.day == at(0, day=2).date()]
    assert opened == day_files
    assert joined.column("source_sequence").to_pylist() == [2]


def test_bars_from_partials_read_only_that_day_file(engine: QueryEngine) -> None:
    bars(engine, "BHP", "1m", at(0, day=2), at(0, day=3), gap_fill=True)

    counted, params = counted_trades(None, (), None)
    query = file_partials_query(counted)
    days = [f.day for f in engine.layout("trades_v2").files if engine.has_file_fact(f.path, query, ["BHP", *params])]
    assert days == [at(0, day=2).date()]


def test_a_cursor_skips_the_files_before_it(engine: QueryEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    first = page(engine, "trades", "BHP", at(0), at(0, day=DAYS), limit=3)  # days 0, 1, 2

    files = trades_files_read(
        monkeypatch, lambda: page(engine, "trades", "BHP", at(0), at(0, day=DAYS), after=first.cursor)
    )

    assert files == DAYS - 2  # from the cursor's day on


def tail_of(symbol: str) -> tuple[str, list[object]]:
    """The kept-tail query and parameters `latest` uses for n <= 1024."""
    return tail_query(TRADES_V2), [symbol, 1024]


def test_latest_reads_only_the_newest_day(engine: QueryEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    newest: list[Any] = []

    # With an `end`, latest reads the lake (without one it ranks kept file tails: the test below).
    end = at(0, day=DAYS)
    counts = files_read_by_each(monkeypatch, lambda: newest.append(latest(engine, "trades", "BHP", n=1, end=end)))

    assert newest[0].column("source_sequence").to_pylist() == [DAYS - 1]
    assert counts == [1]  # one query: the ranked rows of the newest 5 minutes; no other day's file is opened


def test_latest_from_kept_tails_reads_only_the_newest_day_file(engine: QueryEngine) -> None:
    newest = latest(engine, "trades", "BHP", n=1)

    assert newest.column("source_sequence").to_pylist() == [DAYS - 1]
    tails = [f.day for f in engine.layout("trades_v2").files if engine.has_file_fact(f.path, *tail_of("BHP"))]
    assert tails == [at(0, day=DAYS - 1).date()]


def test_latest_of_a_symbol_no_file_holds_reads_no_file(engine: QueryEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[Any] = []
    counts = files_read_by_each(monkeypatch, lambda: answers.append(latest(engine, "trades", "NOPE", n=5)))

    assert counts == []  # the files' kept symbols say no file holds it: no query at all
    scanned = latest(engine, "trades", "NOPE", n=5, end=at(0, day=DAYS))  # with an `end`: the ranked lake query
    assert answers[0].num_rows == 0 and scanned.num_rows == 0
    assert answers[0].schema == scanned.schema
