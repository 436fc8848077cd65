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


def test_k2_book_prints_the_levels_with_exact_decimals_and_where_they_came_from(lake: Settings) -> None:
    # NKNUSDT's last diff event is at 00:29:02 and its snapshot was received at 00:28:32.320639
    result = runner.invoke(app, ["book", "NKNUSDT", "--at", "2021-10-12T00:30:00Z", "--depth", "3", "-f", "json"])
    assert result.exit_code == 0, result.output
    diffs, snapshots = read_depth(*CAPTURES["2021-10-12"])
    *_, (_, bids, asks) = replay(snapshots["NKNUSDT"][0], diffs["NKNUSDT"])
    best = {"BID": sorted(bids.items(), reverse=True)[:3], "ASK": sorted(asks.items())[:3]}
    origin = {
        "book_update_id": 499870179, "snapshot_update_id": 499869752,
        "snapshot_timestamp": "2021-10-12T00:28:32.320639Z", "updates_applied": 149, "book_exact": True,
        "gap_first_update_id": None, "gap_last_update_id": None,
    }  # fmt: skip
    rows = json.loads(result.stdout)
    assert rows == [
        {"side": side, "level": level, "price": f"{price:f}", "quantity": f"{quantity:f}", **origin}
        for side in ("BID", "ASK")
        for level, (price, quantity) in enumerate(best[side], start=1)
    ]
    assert [(r["side"], r["price"], r["quantity"]) for r in rows if r["level"] == 1] == [
        ("BID", "0.35270000", "9602.00000000"),
        ("ASK", "0.35310000", "152.00000000"),
    ]
    note = " ".join(result.stderr.split())
    assert note == (
        "note: NKNUSDT on binance: snapshot 499869752 taken at 2021-10-12T00:28:32.320639+00:00,"
        " 149 update events after it, book at update 499870179"
    )
    # As a table, bids beside asks
    table = runner.invoke(app, ["book", "NKNUSDT", "--at", "2021-10-12T00:30:00Z", "--depth", "3"])
    assert table.exit_code == 0, table.output
    first = next(line.split() for line in table.stdout.splitlines() if line.split()[:1] == ["1"])
    assert first == ["1", "9602.00000000", "0.35270000", "0.35310000", "152.00000000"]


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
