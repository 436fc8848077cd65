"""k2.Client against the real API server: the same answers as the library, as Arrow, pandas or polars."""

from __future__ import annotations

import pytest

import k2
from k2.client import K2APIError
from k2.query import bars as bars_lib
from k2.query import market
from k2.query.engine import QueryEngine
from tests.api.conftest import Server


@pytest.fixture
def k2_client(server: Server, api_key: str) -> k2.Client:
    return k2.Client(server.url, api_key=api_key)


def test_client_trades_equal_the_library_rows(k2_client: k2.Client, engine: QueryEngine) -> None:
    got = k2_client.trades("BHP")
    want = market.trades(engine, "BHP", None, None)
    assert got.num_rows == want.num_rows > 0
    assert got.column("message_id").to_pylist() == want.column("message_id").to_pylist()
    assert got.column("price").to_pylist() == want.column("price").to_pylist()  # exact Decimals


def test_client_follows_pages_until_every_row_is_read(k2_client: k2.Client, engine: QueryEngine) -> None:
    everything = k2_client.trades(None)
    assert everything.num_rows == market.trades(engine, None, None, None).num_rows
    assert len(set(everything.column("message_id").to_pylist())) == everything.num_rows


def test_client_bars_and_pandas_output(k2_client: k2.Client, engine: QueryEngine) -> None:
    frame = k2_client.bars("BHP", "1m", output="pandas")
    want = bars_lib.bars(engine, "BHP", "1m", None, None)
    assert len(frame) == want.num_rows
    assert list(frame["close"]) == want.column("close").to_pylist()
    assert list(frame["partial"]) == [False] * want.num_rows


def test_client_raises_the_api_error_envelope(server: Server) -> None:
    with pytest.raises(K2APIError) as caught:
        k2.Client(server.url, api_key="k2_wrong_key").trades("BHP")
    assert caught.value.status == 401
