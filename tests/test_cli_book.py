"""`k2 book`: the order book at a moment, from a lake holding the 2021-10-12 capture's depth."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.config import Settings
from k2.lake.catalog import open_catalog
from tests.sources.book_captures import CAPTURES, append_book_events, depth_events
from tests.sources.book_oracle import read_depth, replay

runner = CliRunner()


@pytest.fixture
def lake(settings: Settings) -> Settings:
    append_book_events(open_catalog(settings), depth_events("2021-10-12"))
    return settings


def test_k2_book_prints_the_ladder_with_exact_decimals_and_where_it_came_from(lake: Settings) -> None:
    # NKNUSDT's last diff event is at 00:29:02 and its snapshot was received at 00:28:32.320639
    result = runner.invoke(app, ["book", "NKNUSDT", "--at", "2021-10-12T00:30:00Z", "--depth", "3", "-f", "json"])
    assert result.exit_code == 0, result.output
    diffs, snapshots = read_depth(*CAPTURES["2021-10-12"])
    *_, (_, bids, asks) = replay(snapshots["NKNUSDT"][0], diffs["NKNUSDT"])
    best_bids, best_asks = sorted(bids.items(), reverse=True)[:3], sorted(asks.items())[:3]
    assert json.loads(result.stdout) == [
        {"level": level, "bid_quantity": f"{bid[1]:f}", "bid_price": f"{bid[0]:f}",
         "ask_price": f"{ask[0]:f}", "ask_quantity": f"{ask[1]:f}"}
        for level, (bid, ask) in enumerate(zip(best_bids, best_asks, strict=True), start=1)
    ]  # fmt: skip
    assert json.loads(result.stdout)[0] == {
        "level": 1, "bid_quantity": "9602.00000000", "bid_price": "0.35270000",
        "ask_price": "0.35310000", "ask_quantity": "152.00000000",
    }  # fmt: skip
    note = " ".join(result.stderr.split())
    assert note == (
        "note: NKNUSDT on binance: snapshot 499869752 taken at 2021-10-12T00:28:32.320639+00:00,"
        " 149 update events after it, book at update 499870179"
    )


def test_k2_book_before_any_snapshot_is_one_line_and_exit_2(lake: Settings) -> None:
    result = runner.invoke(app, ["book", "NKNUSDT", "--at", "2021-10-12T00:00:00Z"])
    assert result.exit_code == 2
    assert " ".join(result.stderr.split()) == (
        "error: no order-book snapshot of NKNUSDT on binance at or before 2021-10-12T00:00:00+00:00: the book is"
        " unknown before its first snapshot; ask for a later time"
    )
    assert "Traceback" not in result.output
    bad = runner.invoke(app, ["book", "NKNUSDT", "--at", "2021-10-12T00:30:00"])
    assert bad.exit_code == 2 and "has no zone" in bad.stderr
