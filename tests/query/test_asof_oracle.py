"""The as-of join (binary searches over Arrow columns) against DuckDB's ASOF JOIN, the SQL it replaced, on random
books: several symbols and exchanges, quotes sharing an instant, one-sided and crossed quotes, trades at the exact
instant of a quote, and a quiet spell the look-back must bridge."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.query.asof import trades_with_quotes
from k2.query.engine import QueryEngine
from k2.query.filters import event_order, sequence_order, utc, where
from tests.query.records import append_quotes, append_trades, at, quote, trade

PAIRS = [("BHP", "asx"), ("BHP", "chix"), ("CBA", "asx"), ("NAB", "asx")]  # NAB trades, never quotes


def duckdb_asof_join(
    engine: QueryEngine, symbols: list[str], start: datetime, end: datetime, lookback: timedelta
) -> pa.Table:
    """The as-of join as one DuckDB query (k2.query.asof before it joined in Arrow): the oracle."""
    trade_condition, trade_params = where(symbols, start, end)
    before_condition, before_params = (
        where(symbols, utc(start, "start") - lookback, start) if lookback else ("FALSE", [])
    )
    quote_columns = (
        "symbol, exchange, timestamp, source_sequence, message_id, bid_price, bid_quantity, ask_price, ask_quantity"
    )
    query = f"""
        WITH t AS (
            SELECT timestamp, symbol, exchange, trade_id, message_id, source_sequence, price, quantity, side
            FROM market_data.trades_v2 WHERE {trade_condition}
        ),
        prior AS (
            SELECT symbol, exchange, max(timestamp) AS timestamp
            FROM market_data.quotes_v2 WHERE {before_condition} GROUP BY symbol, exchange
        ),
        candidates AS (
            SELECT {quote_columns} FROM market_data.quotes_v2 WHERE {trade_condition}
            UNION ALL
            SELECT {quote_columns} FROM market_data.quotes_v2 JOIN prior USING (symbol, exchange, timestamp)
            WHERE {before_condition}
        ),
        q AS (
            SELECT symbol, exchange, timestamp, bid_price, bid_quantity, ask_price, ask_quantity FROM candidates
            QUALIFY row_number() OVER (
                PARTITION BY symbol, exchange, timestamp ORDER BY {sequence_order()} DESC, message_id DESC
            ) = 1
        ),
        joined AS (
            SELECT t.timestamp, t.symbol, t.exchange, t.trade_id, t.message_id, t.source_sequence, t.price,
                t.quantity, t.side, q.timestamp AS quote_timestamp, q.bid_price, q.bid_quantity, q.ask_price,
                q.ask_quantity,
                CAST((CAST(q.bid_price AS DECIMAL(38, 8)) + q.ask_price) * 0.5 AS DECIMAL(19, 9)) AS mid
            FROM t ASOF LEFT JOIN q
                ON t.symbol = q.symbol AND t.exchange = q.exchange AND t.timestamp >= q.timestamp
        )
        SELECT *,
            CAST(CAST(ask_price AS DECIMAL(38, 8)) - bid_price AS DECIMAL(19, 8)) AS spread,
            CAST(2 * abs(CAST(price AS DECIMAL(38, 9)) - mid) AS DECIMAL(20, 9)) AS effective_spread
        FROM joined ORDER BY {event_order()}"""
    return engine.sql(query, [*trade_params, *before_params, *trade_params, *before_params])


def random_book(rng: random.Random) -> tuple[list[dict], list[dict]]:
    trades, quotes = [], []
    for symbol, exchange in PAIRS:
        for seq in range(1, 301):
            # Day 0 09:00 to day 1 11:00, with day 0 after 12:00 quiet: the look-back has to reach back to it.
            moment = at(9, day=rng.choice([0, 1])) + timedelta(seconds=rng.randrange(0, 3 * 3600), microseconds=0)
            price = rng.randrange(9_000, 11_000)
            if symbol != "NAB" and rng.random() < 0.6:
                bid = None if rng.random() < 0.05 else f"{price / 100:.2f}"
                ask = None if rng.random() < 0.05 else f"{(price + rng.randrange(-5, 30)) / 100:.2f}"  # some crossed
                quotes.append(quote(moment, bid, ask, seq, symbol=symbol, exchange=exchange))
                if rng.random() < 0.2:  # a second quote in the same microsecond
                    quotes.append(quote(moment, ask and bid, ask, seq + 1000, symbol=symbol, exchange=exchange))
            else:
                when = quotes[-1]["timestamp"] if quotes and rng.random() < 0.3 else None  # at a quote's instant
                stamp = moment if when is None else datetime.fromtimestamp(when / 1e6, tz=at(0).tzinfo)
                trades.append(trade(stamp, f"{price / 100:.4f}", str(rng.randrange(1, 500)), seq, symbol=symbol,
                                    exchange=exchange))  # fmt: skip
    return trades, quotes


@pytest.fixture(params=["default row groups", "16-row groups"])
def engine(request: pytest.FixtureRequest, catalog: Catalog, tables: dict[str, Table]) -> Iterator[QueryEngine]:
    """The random book in the lake; with 16-row groups, the prevailing quote at `start` and runs of quotes sharing an
    instant fall across row group boundaries, which the direct file reads (k2.query.file_scan) must handle."""
    if request.param == "16-row groups":
        for table in tables.values():
            with table.transaction() as transaction:
                transaction.set_properties({"write.parquet.row-group-limit": "16"})
    trades, quotes = random_book(random.Random(2026_11_26))
    half = len(quotes) // 2  # two appends: quotes spread over more than one file per partition
    append_quotes(tables["quotes_v2"], quotes[:half])
    append_quotes(tables["quotes_v2"], quotes[half:])
    append_trades(tables["trades_v2"], trades)
    with QueryEngine(catalog) as engine:
        yield engine


@pytest.mark.parametrize(
    ("symbols", "start", "end", "lookback"),
    [
        (["BHP", "CBA", "NAB"], at(9, day=1), at(12, day=1), timedelta(days=4)),
        (["BHP"], at(10, day=0), at(11, day=1), timedelta(hours=1)),
        (["CBA", "NAB"], at(0, day=1), at(0, day=2), timedelta(0)),
        (["BHP", "CBA"], at(9, 30, day=0), at(9, 31, day=0), timedelta(minutes=5)),
    ],
)
def test_as_of_join_equals_duckdb_asof_join(
    engine: QueryEngine, symbols: list[str], start: datetime, end: datetime, lookback: timedelta
) -> None:
    joined = trades_with_quotes(engine, symbols, start, end, quote_lookback=lookback)

    oracle = duckdb_asof_join(engine, symbols, start, end, lookback)
    assert joined.num_rows == oracle.num_rows > 0
    assert joined.schema.equals(oracle.schema)
    assert joined.equals(oracle)
    # The random book exercises what matters: unmatched trades, one-sided quotes, crossed books.
    assert joined.column("bid_price").null_count > 0 or lookback == timedelta(minutes=5)
