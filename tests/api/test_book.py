"""/v1/book, /v1/book/series, /v1/trades/with-book and their k2.Client methods over a small hand-made book lake:
the library's answers, exact, in every format, and one-line errors."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.csv
import pytest

import k2
from k2.api import create_key
from k2.api.formats import records
from k2.client import K2APIError
from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.query.book_series import book_levels, book_series, trades_with_book
from k2.query.engine import QueryEngine
from k2.schema.codecs import datetime_from_micros
from tests.api.conftest import Server, serving
from tests.query.book_lake import SECOND, T0, build_hand_book

AT = "2024-03-04T10:00:04Z"  # after update 106, with 104-105 missing
RANGE = {"start": "2024-03-04T09:59:58Z", "end": "2024-03-04T10:00:08Z"}
START, END = datetime_from_micros(T0 - 2 * SECOND), datetime_from_micros(T0 + 8 * SECOND)


@pytest.fixture(scope="module")
def books(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, QueryEngine]]:
    settings = build_hand_book(Settings(home=Path(tmp_path_factory.mktemp("book-api")) / "k2home"))
    with serving(settings) as server, QueryEngine(open_catalog(settings)) as engine:
        yield server, create_key(settings, "books"), engine


@pytest.fixture
def http(books: tuple[Server, str, QueryEngine]) -> Iterator[httpx.Client]:
    server, key, _ = books
    with httpx.Client(base_url=server.url, headers={"X-API-Key": key}, timeout=30) as client:
        yield client


def test_the_book_at_a_moment_is_the_librarys_in_json_csv_and_arrow(
    http: httpx.Client, books: tuple[Server, str, QueryEngine]
) -> None:
    engine = books[2]
    want = book_levels(engine, "XYZ", T0 + 4 * SECOND, 2, exchange="binance")
    body = http.get("/v1/book", params={"symbol": "XYZ", "at": AT, "depth": 2}).json()
    assert body["data"] == records(want) and body["snapshot_id"] is not None
    assert body["data"][1] == {
        "side": "BID", "level": 2, "price": "9.50000000", "quantity": "7.00000000", "book_update_id": 106,
        "snapshot_update_id": 100, "snapshot_timestamp": "2024-03-04T10:00:00.000000Z", "updates_applied": 3,
        "book_exact": False, "gap_first_update_id": 104, "gap_last_update_id": 105,
    }  # fmt: skip
    csv = http.get("/v1/book", params={"symbol": "XYZ", "at": AT, "depth": 2, "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    lines = csv.text.splitlines()
    assert lines[0].startswith("side,level,price,quantity,book_update_id") and len(lines) == 5
    assert lines[3].startswith("ASK,1,11.50000000,1.00000000,106,100,")
    arrow = http.get("/v1/book", params={"symbol": "XYZ", "at": AT, "depth": 2, "format": "arrow"})
    assert pa.ipc.open_stream(arrow.content).read_all().equals(want)


def test_no_snapshot_before_the_moment_or_a_bad_symbol_is_one_clear_error(http: httpx.Client) -> None:
    early = http.get("/v1/book", params={"symbol": "XYZ", "at": "2024-03-04T09:00:00Z"})
    assert early.status_code == 400
    assert early.json()["error"] == {
        "code": "invalid_query",
        "message": "no order-book snapshot of XYZ on binance at or before 2024-03-04T09:00:00+00:00: the book is"
        " unknown before its first snapshot; ask for a later time",
        "details": None,
    }
    twice = http.get("/v1/book", params=[("symbol", "XYZ"), ("symbol", "ABC"), ("at", AT)])
    assert twice.status_code == 422 and twice.json()["error"]["message"].startswith("symbol given more than once")
    listed = http.get("/v1/book", params={"symbol": "XYZ,ABC", "at": AT})
    assert listed.status_code == 422 and "exactly one symbol" in listed.json()["error"]["message"]
    assert http.get("/v1/book", params={"symbol": "XYZ"}).status_code == 422  # `at` is required
    ancient = http.get("/v1/book", params={"symbol": "XYZ", "at": "0001-01-01T00:00:00Z"})
    assert ancient.status_code == 400 and "before 0001-02-01" in ancient.json()["error"]["message"]


def test_the_series_and_the_trades_with_the_book_are_the_librarys(
    http: httpx.Client, books: tuple[Server, str, QueryEngine]
) -> None:
    engine = books[2]
    series = http.get("/v1/book/series", params={"symbol": "XYZ", "every": "1s", "depth": 2, **RANGE}).json()
    assert series["data"] == records(book_series(engine, "XYZ", START, END, "1s", 2, exchange="binance"))
    assert len(series["data"]) == 10 and series["data"][0]["bid_price"] is None
    assert series["data"][6] | {"timestamp": ""} == {
        "timestamp": "", "bid_price": "10.00000000", "bid_quantity": "5.00000000", "ask_price": "11.50000000",
        "ask_quantity": "1.00000000", "mid": "10.750000000", "spread": "1.50000000", "bid_depth": "12.00000000",
        "ask_depth": "5.00000000", "imbalance": "0.4117647059", "book_update_id": 106, "book_exact": False,
    }  # fmt: skip
    joined = http.get("/v1/trades/with-book", params={"symbol": "XYZ", "depth": 2, **RANGE}).json()
    assert joined["data"] == records(trades_with_book(engine, "XYZ", START, END, 2, exchange="binance"))
    assert [(row["trade_id"], row["book_update_id"]) for row in joined["data"]] == [
        ("1", None), ("2", 100), ("3", 102), ("4", 103), ("5", 106), ("6", 110), ("7", 111)
    ]  # fmt: skip
    seven = http.get("/v1/book/series", params={"symbol": "XYZ", "every": "7m", **RANGE})
    assert seven.status_code == 400 and "divides a day evenly" in seven.json()["error"]["message"]
    word = http.get("/v1/book/series", params={"symbol": "XYZ", "every": "soon", **RANGE})
    assert word.status_code == 422 and "every: pass a number and s/m/h/d" in word.json()["error"]["message"]
    ndjson = http.get("/v1/trades/with-book", params={"symbol": "XYZ", "format": "ndjson", **RANGE})
    assert len(ndjson.text.splitlines()) == 7


def test_the_client_returns_the_librarys_arrow_tables(books: tuple[Server, str, QueryEngine]) -> None:
    server, key, engine = books
    with k2.Client(server.url, api_key=key) as client:
        book = client.book("XYZ", datetime_from_micros(T0 + 4 * SECOND), 2)
        assert book.to_pylist() == book_levels(engine, "XYZ", T0 + 4 * SECOND, 2, exchange="binance").to_pylist()
        series = client.book_series("XYZ", START, END, "1s", 2)
        assert series.to_pylist() == book_series(engine, "XYZ", START, END, "1s", 2, exchange="binance").to_pylist()
        assert series.schema.field("imbalance").type == pa.decimal128(11, 10)
        joined = client.trades_with_book("XYZ", START, END + timedelta(seconds=1), 1)
        assert (
            joined.to_pylist()
            == trades_with_book(engine, "XYZ", START, END + timedelta(seconds=1), 1, exchange="binance").to_pylist()
        )
        with pytest.raises(K2APIError, match="400 invalid_query: no order-book snapshot of XYZ on binance"):
            client.book("XYZ", "2024-03-04T09:00:00Z")
