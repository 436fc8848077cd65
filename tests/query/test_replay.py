"""Replay yields event order (ties by source_sequence) in batches and resumes from any batch's cursor."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.query.engine import QueryEngine
from k2.query.filters import InvalidQueryError
from k2.query.replay import replay
from tests.query.records import append_quotes, append_trades, at, quote, trade

# (symbol, source_sequence) in the order a replay of BHP+CBA must produce.
EXPECTED = [
    ("BHP", 1),
    ("CBA", 1),  # 10:00:00 as well: same timestamp, same sequence, message_id decides (BHP's id sorts first)
    ("BHP", 2),
    ("BHP", 3),  # three trades in one microsecond, appended out of order
    ("BHP", 4),
    ("BHP", 5),
    ("CBA", 2),
    ("BHP", 6),
]


def tape() -> list[dict]:
    return [
        trade(at(10, 0), "36.50", "1", 1, mid="a-bhp-1"),
        trade(at(10, 0), "99.00", "1", 1, symbol="CBA", mid="b-cba-1"),
        trade(at(10, 0, 1), "36.51", "1", 2),
        trade(at(10, 0, 2, 500), "36.54", "1", 5),
        trade(at(10, 0, 2, 500), "36.52", "1", 3),
        trade(at(10, 0, 2, 500), "36.53", "1", 4),
        trade(at(10, 0, 3), "99.10", "1", 2, symbol="CBA"),
        trade(at(10, 0, 4), "36.55", "1", 6),
        trade(at(10, 0, 4), "10.00", "1", 1, symbol="RIO"),  # not asked for
        trade(at(11, 0), "36.56", "1", 7),  # after the range
    ]


@pytest.fixture
def engine(catalog: Catalog, tables: dict[str, Table]) -> Iterator[QueryEngine]:
    append_trades(tables["trades_v2"], tape())
    append_quotes(tables["quotes_v2"], [quote(at(10, 0), "1", "2", 1)])
    with QueryEngine(catalog) as engine:
        yield engine


def order(batches: list) -> list[tuple]:
    return [(r["symbol"], r["source_sequence"]) for b in batches for r in b.records.to_pylist()]


def test_replay_is_in_event_order_with_ties_by_sequence(engine: QueryEngine) -> None:
    batches = list(replay(engine, "trades", ["BHP", "CBA"], at(10), at(10, 30), batch_rows=3))

    assert [b.records.num_rows for b in batches] == [3, 3, 2]
    assert order(batches) == EXPECTED
    assert all(isinstance(b.records, pa.RecordBatch) for b in batches)
    assert batches[0].records.schema.field("price").type == pa.decimal128(18, 8)


def test_replay_resumes_after_any_batch_without_gap_or_repeat(engine: QueryEngine) -> None:
    batches = list(replay(engine, "trades", ["BHP", "CBA"], at(10), at(10, 30), batch_rows=2))

    for done, batch in enumerate(batches, start=1):
        resumed = list(replay(engine, "trades", ["BHP", "CBA"], at(10), at(10, 30), after=batch.cursor, batch_rows=2))
        assert order(batches[:done]) + order(resumed) == EXPECTED


def test_resuming_from_the_last_cursor_yields_nothing(engine: QueryEngine) -> None:
    *_, last = replay(engine, "trades", ["BHP", "CBA"], at(10), at(10, 30))

    assert list(replay(engine, "trades", ["BHP", "CBA"], at(10), at(10, 30), after=last.cursor)) == []


def test_replay_reads_one_snapshot_even_if_a_commit_lands_mid_replay(
    catalog: Catalog, tables: dict[str, Table], engine: QueryEngine
) -> None:
    stream = replay(engine, "trades", "BHP", at(10), at(10, 30), batch_rows=2)
    first = next(stream)
    append_trades(tables["trades_v2"], [trade(at(10, 0, 3, 999_999), "40", "1", 99)])
    engine.refresh()

    rest = list(stream)

    assert [s for _, s in order([first, *rest])] == [1, 2, 3, 4, 5, 6]
    assert {b.snapshot_id for b in [first, *rest]} == {first.snapshot_id}


def test_replay_of_quotes_and_selected_columns(engine: QueryEngine) -> None:
    (batch,) = replay(engine, "quotes", "BHP", at(10), at(11), columns=["bid_price", "ask_price"])

    assert batch.records.schema.names == ["bid_price", "ask_price", "timestamp", "source_sequence", "message_id"]


def test_replay_of_an_empty_table_yields_nothing(catalog: Catalog, tables: dict[str, Table]) -> None:
    with QueryEngine(catalog) as engine:
        assert list(replay(engine, "trades", "BHP", at(10), at(11))) == []


def test_replay_injection_and_bad_arguments(engine: QueryEngine) -> None:
    assert list(replay(engine, "trades", ["BHP' OR '1'='1"], at(10), at(11))) == []
    with pytest.raises(InvalidQueryError, match="unknown table"):
        next(replay(engine, "trades; DROP VIEW market_data.trades_v2", "BHP", at(10), at(11)))
    with pytest.raises(InvalidQueryError, match="batch_rows must be a positive integer"):
        next(replay(engine, "trades", "BHP", at(10), at(11), batch_rows=0))
