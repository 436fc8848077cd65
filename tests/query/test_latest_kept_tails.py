"""`latest` from kept per-file tails gives exactly what ranking the lake gives, and reads only the files it needs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.query import market
from k2.query.engine import QueryEngine
from k2.query.market import latest, tail_query
from k2.schema.fields import TRADES_V2
from tests.query.records import append_trades, at, trade
from tests.query.test_minute_bars import first_file, second_file


def busy_day(count: int) -> list[dict]:
    """`count` BHP trades on day 2, one a second from 10:00, with every 7th sharing its instant with the next."""
    rows = []
    for k in range(count):
        second = k - (k % 7 == 1)  # k = 1, 8, 15, ... repeat the previous trade's instant: ties for the sequence
        rows.append(trade(at(10, 0, second, day=2), f"{40 + k / 100:.2f}", "1", 10_000 + k))
    return rows


@pytest.fixture
def snapshots(tables: dict[str, Table]) -> list[int]:
    table = tables["trades_v2"]
    return [
        append_trades(table, first_file()),
        append_trades(table, second_file()),
        append_trades(table, busy_day(1500)),
    ]


@pytest.fixture
def engine(catalog: Catalog, snapshots: list[int]) -> Iterator[QueryEngine]:
    with QueryEngine(catalog) as engine:
        yield engine


def from_lake(monkeypatch: pytest.MonkeyPatch, *args: Any, **kwargs: Any) -> pa.Table:
    with monkeypatch.context() as patched:
        patched.setattr(market, "_newest_from_kept_tails", lambda *a, **k: None)
        return latest(*args, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n": 1},
        {"n": 3},
        {"n": 1000},  # from the busy day's file alone
        {"n": 1499},
        {"n": 1600},  # more than the busy file holds: older files complete it (tail size 2048)
        {"n": 5, "start": at(10, 0, 30)},
        {"n": 2000, "start": at(10, 1, day=2)},
        {"n": 4, "exchange": "chix"},
        {"n": 2, "columns": ["price", "quantity"]},
    ],
)
def test_kept_tails_equal_the_lake_ranking(
    engine: QueryEngine, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any]
) -> None:
    fast = latest(engine, "trades", ["BHP", "CBA"], **kwargs)

    assert fast.num_rows > 0
    assert fast.equals(from_lake(monkeypatch, engine, "trades", ["BHP", "CBA"], **kwargs))


def test_newest_rows_with_ties_in_event_order(engine: QueryEngine) -> None:
    result = latest(engine, "trades", "BHP", 3, exchange="asx", start=at(0), columns=["price"])

    # 1,500 busy-day trades, sequences 10000..11499; 11499 (k = 1499, 1499 % 7 = 1) shares 11498's instant.
    assert result.column("source_sequence").to_pylist() == [11_497, 11_498, 11_499]
    assert result.column("timestamp").to_pylist()[1:] == [at(10, 0, 1498, day=2)] * 2
    assert [str(p) for p in result.column("price").to_pylist()] == ["54.97000000", "54.98000000", "54.99000000"]


def test_only_the_needed_files_are_read(engine: QueryEngine) -> None:
    latest(engine, "trades", "BHP", 10, exchange="asx")

    query = tail_query(TRADES_V2)
    read = [f.day for f in engine.layout("trades_v2").files if engine.has_file_fact(f.path, query, ["BHP", 1024])]
    assert read == [at(0, day=2).date()]  # the busy day holds the newest 10: older days' files are not opened


def test_kept_tails_answer_without_the_files(engine: QueryEngine) -> None:
    before = latest(engine, "trades", "BHP", 1200)
    for file in engine.layout("trades_v2").files:
        Path(file.path.removeprefix("file://")).unlink()

    assert latest(engine, "trades", "BHP", 1200).equals(before)


def test_time_travel_uses_the_pinned_snapshot_files(
    engine: QueryEngine, snapshots: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = latest(engine, "trades", "BHP", 2, as_of=snapshots[1])

    # Before the busy day: the newest BHP trades are day 1 on asx (seq 1) and day 0 on chix (seq 1).
    assert [(r["exchange"], r["timestamp"]) for r in old.to_pylist()] == [
        ("asx", at(10, 20, 0)),
        ("asx", at(10, 0, 0, day=1)),
        ("chix", at(10, 0, 20)),
    ]
    assert old.equals(from_lake(monkeypatch, engine, "trades", "BHP", 2, as_of=snapshots[1]))


@pytest.mark.parametrize("kwargs", [{"end": at(10, 5)}, {"n": 20_000}])
def test_an_end_or_a_large_n_reads_the_lake(engine: QueryEngine, kwargs: dict[str, Any]) -> None:
    args: dict[str, Any] = {"n": 2, **kwargs}
    end: datetime | None = args.pop("end", None)

    result = latest(engine, "trades", "BHP", end=end, **args)

    assert result.num_rows > 0
    files = engine.layout("trades_v2").files
    assert not any(engine.has_file_fact(f.path, tail_query(TRADES_V2), ["BHP", 1024]) for f in files)
