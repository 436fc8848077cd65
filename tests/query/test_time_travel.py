"""Time travel: every query reads an earlier snapshot when asked, by snapshot id or by instant; snapshot audit."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.query import engine as engine_module
from k2.query.asof import trades_with_quotes
from k2.query.bars import bars
from k2.query.engine import PinnedView, QueryEngine, QueryError
from k2.query.market import latest, page, trades
from k2.query.snapshots import snapshots
from k2.query.summary import daily_summary, symbols, table_stats
from tests.query.records import append_quotes, append_trades, at, quote, trade

D = Decimal
OFFSETS = {"market.equities.trades.asx": {"topic_id": "t-1", "ranges": {"0": [0, 2]}}}


@pytest.fixture
def history(catalog: Catalog, tables: dict[str, Table]) -> dict[str, int]:
    """Two commits of trades (and one of quotes between them), a few milliseconds apart."""
    first = append_trades(
        tables["trades_v2"],
        [trade(at(10, 0), "36.50", "100", 1), trade(at(10, 0, 30), "36.60", "100", 2)],
        summary={"k2.rows": "2", "k2.kafka.offsets": json.dumps(OFFSETS)},
    )
    time.sleep(0.005)  # snapshot times are milliseconds: keep the commits apart
    quotes_snapshot = append_quotes(tables["quotes_v2"], [quote(at(10, 0, 45), "36.40", "36.80", 1)])
    time.sleep(0.005)
    second = append_trades(
        tables["trades_v2"],
        [trade(at(10, 1), "37.00", "50", 3), trade(at(10, 0, 10), "30.00", "1", 9, symbol="NEW")],
    )
    return {"first": first, "quotes": quotes_snapshot, "second": second}


@pytest.fixture
def engine(catalog: Catalog, history: dict[str, int]) -> Iterator[QueryEngine]:
    with QueryEngine(catalog) as engine:
        yield engine


def committed_at(engine: QueryEngine, snapshot_id: int):
    listing = snapshots(engine, "trades").to_pylist()
    return next(row["committed_at"] for row in listing if row["snapshot_id"] == snapshot_id)


def test_trades_as_of_first_snapshot_by_id_and_by_time(engine: QueryEngine, history: dict[str, int]) -> None:
    now = trades(engine, None, at(9), at(11))
    by_id = trades(engine, None, at(9), at(11), as_of=history["first"])
    by_time = trades(engine, None, at(9), at(11), as_of=committed_at(engine, history["first"]))

    assert now.column("source_sequence").to_pylist() == [1, 9, 2, 3]
    assert by_id.column("source_sequence").to_pylist() == [1, 2]
    assert by_time.to_pylist() == by_id.to_pylist()


def test_an_instant_between_commits_reads_the_earlier_one(engine: QueryEngine, history: dict[str, int]) -> None:
    between = committed_at(engine, history["second"]) - timedelta(milliseconds=1)
    before_everything = committed_at(engine, history["first"]) - timedelta(milliseconds=1)

    assert trades(engine, "BHP", at(9), at(11), as_of=between).num_rows == 2
    # Before the first commit nothing existed: an error saying where history starts, not an empty answer.
    first = committed_at(engine, history["first"]).isoformat(timespec="milliseconds")
    with pytest.raises(QueryError, match=re.escape(f"is before the lake's history, which starts at {first}")):
        trades(engine, "BHP", at(9), at(11), as_of=before_everything)


def test_every_query_function_honours_as_of(engine: QueryEngine, history: dict[str, int]) -> None:
    old = history["first"]

    assert bars(engine, "BHP", "1m", at(10), at(11), as_of=old).column("close").to_pylist() == [D("36.60")]
    assert latest(engine, "trades", "BHP", as_of=old).column("source_sequence").to_pylist() == [2]
    assert page(engine, "trades", None, at(9), at(11), as_of=old).rows.num_rows == 2
    assert symbols(engine, as_of=old).column("symbol").to_pylist() == ["BHP"]
    assert daily_summary(engine, None, at(0), at(0, day=1), as_of=old).column("trade_count").to_pylist() == [2]
    assert len(snapshots(engine, "trades", as_of=old)) == 1
    assert table_stats(engine, as_of=old).to_pylist()[0]["rows"] == 2


def test_a_trades_snapshot_pins_quotes_to_the_same_moment(engine: QueryEngine, history: dict[str, int]) -> None:
    # The quotes commit came after the first trades commit: at that commit there were no quotes yet.
    assert engine.at(history["first"]).snapshot_ids == {
        **{name: None for name in engine.snapshot_ids},
        "trades_v2": history["first"],
    }
    joined = trades_with_quotes(engine, "BHP", at(9), at(11), as_of=history["first"])
    assert joined.column("mid").to_pylist() == [None, None]

    later = trades_with_quotes(engine, "BHP", at(9), at(11), as_of=history["quotes"])
    assert later.column("mid").to_pylist() == [None, None]  # both trades precede the 10:00:45 quote
    assert trades_with_quotes(engine, "BHP", at(9), at(11)).column("mid").to_pylist() == [None, None, D("36.60")]


def test_time_travel_sees_commits_made_after_the_engine_opened(catalog: Catalog, tables: dict[str, Table]) -> None:
    with QueryEngine(catalog) as engine:
        assert trades(engine, None, at(9), at(11)).num_rows == 0
        newer = append_trades(tables["trades_v2"], [trade(at(10), "1", "1", 1)])

        assert trades(engine, None, at(9), at(11), as_of=newer).num_rows == 1
        assert trades(engine, None, at(9), at(11)).num_rows == 0  # the engine's own views wait for refresh()


def test_unknown_snapshot_and_naive_instant_are_refused(engine: QueryEngine) -> None:
    with pytest.raises(QueryError, match="no table has snapshot 12345"):
        trades(engine, "BHP", at(9), at(11), as_of=12345)
    with pytest.raises(ValueError, match="has no time zone"):
        trades(engine, "BHP", at(9), at(11), as_of=at(9).replace(tzinfo=None))
    with pytest.raises(TypeError, match="as_of must be"):
        engine.at(True)  # type: ignore[arg-type]


def test_pinned_views_survive_eviction(
    engine: QueryEngine, history: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "_MAX_PINNED", 1)
    view = engine.at(history["first"])
    assert isinstance(view, PinnedView)
    count = "SELECT count(*) AS n FROM market_data.trades_v2"
    assert view.sql(count).to_pylist() == [{"n": 2}]

    assert engine.at(history["second"]).sql(count).to_pylist() == [{"n": 4}]  # evicts the first pinned catalog

    assert view.sql(count).to_pylist() == [{"n": 2}]
    assert engine.sql(count).to_pylist() == [{"n": 4}]


def test_snapshot_list_carries_k2_summary(engine: QueryEngine, history: dict[str, int]) -> None:
    listing = snapshots(engine, "trades_v2").to_pylist()

    assert [row["snapshot_id"] for row in listing] == [history["first"], history["second"]]
    first, second = listing
    assert first["parent_id"] is None and second["parent_id"] == history["first"]
    assert first["operation"] == "append"
    assert first["rows"] == 2 and second["rows"] is None  # the second commit did not come from the sink
    assert json.loads(first["kafka_offsets"]) == OFFSETS
    assert dict(first["summary"])["added-records"] == "2"
    assert first["committed_at"] < second["committed_at"]
    assert first["committed_at"].utcoffset() == timedelta(0)


def test_table_stats(engine: QueryEngine, history: dict[str, int]) -> None:
    stats = {row["table"]: row for row in table_stats(engine).to_pylist()}

    trades_stats = stats["market_data.trades_v2"]
    assert trades_stats["snapshot_id"] == history["second"]
    assert (trades_stats["rows"], trades_stats["data_files"], trades_stats["snapshots"]) == (4, 2, 2)
    assert trades_stats["partitions"] == 1  # all on Monday, all asx
    assert trades_stats["bytes"] > 0
    assert stats["market_data.quotes_v2"]["rows"] == 1
    assert stats["market_data.reference_data_v2"] == {
        "table": "market_data.reference_data_v2",
        "snapshot_id": None,
        "committed_at": None,
        "rows": 0,
        "data_files": 0,
        "bytes": 0,
        "snapshots": 0,
        "partitions": 0,
    }
