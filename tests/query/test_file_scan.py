"""Reading rows straight from the data files (k2.query.file_scan) against DuckDB reading the same snapshot: the same
rows on tables of many small row groups and several files per partition, and no answer (None) where it could not
be exact."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.query.engine import QueryEngine
from k2.query.file_scan import newest_before, scan_files
from k2.query.filters import where
from k2.query.layout import Layout
from tests.query.records import append_quotes, at, quote

COLUMNS = ("symbol", "exchange", "timestamp", "source_sequence", "message_id", "bid_price", "ask_price")
PAIRS = [("BHP", "asx"), ("BHP", "chix"), ("CBA", "asx"), ("WES", "asx")]


@pytest.fixture
def engine(catalog: Catalog, tables: dict[str, Table]) -> Iterator[QueryEngine]:
    """Quotes over three days in three appends (several files per partition), in row groups of 16 rows, with runs
    of quotes sharing an instant: some straddle row groups."""
    table = tables["quotes_v2"]
    with table.transaction() as transaction:
        transaction.set_properties({"write.parquet.row-group-limit": "16"})
    rng = random.Random(20261126)
    rows = []
    for symbol, exchange in PAIRS:
        for seq in range(1, 181):
            moment = at(rng.randrange(0, 24), rng.randrange(0, 60), day=rng.randrange(0, 3))
            for tie in range(rng.choice([1, 1, 1, 4])):  # several quotes in one microsecond
                rows.append(quote(moment, "10.00", "10.05", seq * 10 + tie, symbol=symbol, exchange=exchange))
    rng.shuffle(rows)
    for part in (rows[:300], rows[300:700], rows[700:]):
        append_quotes(table, part)
    with QueryEngine(catalog) as engine:
        yield engine


def in_order(rows: pa.Table) -> pa.Table:
    keys = [("symbol", "ascending"), ("exchange", "ascending"), ("timestamp", "ascending")]
    return rows.sort_by([*keys, ("source_sequence", "ascending"), ("message_id", "ascending")])


def lake(engine: QueryEngine, symbols: list[str], start: datetime, end: datetime, exchange: str | None) -> pa.Table:
    condition, params = where(symbols, start, end, exchange)
    return engine.sql(f"SELECT {', '.join(COLUMNS)} FROM market_data.quotes_v2 WHERE {condition}", params)


def plain(tables: list[pa.Table]) -> pa.Table:
    return pa.concat_tables(pa.Table.from_arrays(t.columns, names=t.column_names) for t in tables)


@pytest.mark.parametrize(
    ("symbols", "start", "end", "exchange"),
    [
        (["BHP"], at(0), at(0, day=3), None),
        (["BHP"], at(7, 30), at(13, 15, day=1), "chix"),
        (["CBA", "WES"], at(12, day=1), at(12, day=2), None),
        (["BHP", "CBA", "WES"], at(22, day=1), at(2, day=2), "asx"),  # across midnight
    ],
)
def test_scan_gives_the_rows_duckdb_gives(
    engine: QueryEngine, symbols: list[str], start: datetime, end: datetime, exchange: str | None
) -> None:
    pieces = scan_files(engine, "quotes_v2", COLUMNS, symbols, start, end, exchange)

    assert pieces is not None
    expected = lake(engine, symbols, start, end, exchange)
    assert expected.num_rows > 0
    assert in_order(plain(pieces)).equals(in_order(expected))
    assert all(p.column_names == list(COLUMNS) for p in pieces)
    for piece in pieces:  # each file's rows come in its write order (symbol, then time)
        assert piece.equals(in_order(piece))


@pytest.mark.parametrize(
    ("symbols", "start", "before", "exchange"),
    [
        (["BHP", "CBA", "WES"], at(0), at(0, day=3), None),
        (["BHP"], at(0), at(9, 30, day=1), None),
        (["BHP", "CBA"], at(6, day=1), at(6, 1, day=1), "asx"),
        (["WES"], at(18, day=2), at(19, day=2), "chix"),  # nothing there
    ],
)
def test_newest_before_gives_each_pairs_rows_of_its_newest_instant(
    engine: QueryEngine, symbols: list[str], start: datetime, before: datetime, exchange: str | None
) -> None:
    found = newest_before(engine, "quotes_v2", COLUMNS, symbols, start, before, exchange)

    condition, params = where(symbols, start, before, exchange)
    expected = engine.sql(
        f"SELECT {', '.join(COLUMNS)} FROM market_data.quotes_v2 WHERE {condition} "
        "QUALIFY timestamp = max(timestamp) OVER (PARTITION BY symbol, exchange)",
        params,
    )
    assert found is not None
    if expected.num_rows == 0:
        assert found == []
        return
    assert in_order(plain(found)).equals(in_order(expected))


def test_newest_before_collects_a_tie_that_straddles_row_groups(engine: QueryEngine) -> None:
    """Twenty quotes in the newest microsecond: more than one 16-row group holds them."""
    table = engine.table("quotes_v2")
    assert table is not None
    moment = at(23, 59, 30, day=2)  # after every random quote (those fall on whole minutes)
    append_quotes(table, [quote(moment, "10.00", "10.01", 10_000 + i, symbol="CBA") for i in range(20)])
    engine.refresh()

    found = newest_before(engine, "quotes_v2", COLUMNS, ["CBA"], at(0), at(0, day=3), "asx")

    assert found is not None
    rows = plain(found)
    assert rows.num_rows == 20
    assert set(rows.column("source_sequence").to_pylist()) == set(range(10_000, 10_020))


def test_a_renamed_column_is_left_to_duckdb(engine: QueryEngine) -> None:
    """The files hold `bid_price` under its field id; after a rename the name no longer matches: no answer."""
    table = engine.table("quotes_v2")
    assert table is not None
    with table.update_schema() as update:
        update.rename_column("bid_price", "best_bid")
    engine.refresh()
    columns = ("symbol", "timestamp", "best_bid")

    assert scan_files(engine, "quotes_v2", columns, ["BHP"], at(0), at(0, day=3)) is None
    assert newest_before(engine, "quotes_v2", columns, ["BHP"], at(0), at(0, day=3)) is None
    # The untouched columns still read directly.
    assert scan_files(engine, "quotes_v2", ("symbol", "timestamp"), ["BHP"], at(0), at(0, day=3))


def test_delete_files_or_no_symbols_are_left_to_duckdb(engine: QueryEngine) -> None:
    class WithDeletes:
        """The engine, but its snapshot has delete files (rows the data files alone would still show)."""

        def __getattr__(self, name: str) -> object:
            return getattr(engine, name)

        def layout(self, name: str) -> Layout:
            real = engine.layout(name)
            return Layout(real.files, True, real.field_ids, real.io)

    reader = WithDeletes()
    assert scan_files(reader, "quotes_v2", COLUMNS, ["BHP"], at(0), at(0, day=3)) is None  # type: ignore[arg-type]
    assert newest_before(reader, "quotes_v2", COLUMNS, ["BHP"], at(0), at(0, day=3)) is None  # type: ignore[arg-type]
    assert scan_files(engine, "quotes_v2", COLUMNS, None, at(0), at(0, day=3)) is None
