"""`k2 book --start/--end/--every` and `k2 trades-with-book` over the hand-made book lake."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.config import Settings
from tests.query.book_lake import build_hand_book

runner = CliRunner()


@pytest.fixture
def lake(settings: Settings) -> Settings:
    return build_hand_book(settings)


def test_k2_book_series_prints_the_top_of_the_book_every_interval(lake: Settings) -> None:
    args = ["book", "XYZ", "--start", "2024-03-04T10:00:03Z", "--end", "2024-03-04T10:00:06Z", "--depth", "2"]
    result = runner.invoke(app, [*args, "--every", "1s", "-f", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(row["timestamp"], row["bid_price"], row["ask_price"], row["book_update_id"]) for row in rows] == [
        ("2024-03-04T10:00:03.000000Z", "10.00000000", "11.50000000", 103),
        ("2024-03-04T10:00:04.000000Z", "10.00000000", "11.50000000", 106),
        ("2024-03-04T10:00:05.000000Z", "10.00000000", "11.50000000", 110),
    ]
    # (bids - asks) / (bids + asks) over two levels: (7 - 5) / 12, (12 - 5) / 17, (6 - 2) / 8
    assert [row["imbalance"] for row in rows] == ["0.1666666667", "0.4117647059", "0.5000000000"]
    assert [row["book_exact"] for row in rows] == [True, False, True]


def test_k2_trades_with_book_and_the_one_line_mistakes(lake: Settings) -> None:
    window = ["--start", "2024-03-04T10:00:01Z", "--end", "2024-03-04T10:00:02Z"]
    result = runner.invoke(app, ["trades-with-book", "XYZ", *window, "-f", "csv"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split(",")[9:13] == ["bid_price", "bid_quantity", "ask_price", "ask_quantity"]
    assert [line.split(",")[9:13] for line in lines[1:]] == [
        ["10.00000000", "1.00000000", "11.00000000", "3.00000000"],  # the update at the trade's instant is after it
        ["10.00000000", "5.00000000", "12.00000000", "4.00000000"],
    ]
    both = runner.invoke(app, ["book", "XYZ", "--at", "2024-03-04T10:00:01Z", "--start", "2024-03-04T10:00:01Z"])
    assert both.exit_code == 2 and " ".join(both.stderr.split()) == (
        "error: pass --at for the book at a moment, or --start and --end for a series (not both)"
    )
    half = runner.invoke(app, ["book", "XYZ", "--start", "2024-03-04T10:00:01Z"])
    assert half.exit_code == 2 and " ".join(half.stderr.split()) == "error: a book series needs both --start and --end"
