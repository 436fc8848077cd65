"""The `k2` query commands print exact decimals and UTC times, in every format, and refuse bad input clearly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from tests.query.records import append_trades, at, trade

runner = CliRunner()


@pytest.fixture
def lake(settings: Settings) -> Settings:
    tables = ensure_tables(open_catalog(settings))
    append_trades(
        tables["trades_v2"],
        [
            trade(at(10, 0, 1), "36.667", "100", 1),
            trade(at(10, 0, 30), "36.70", "50", 2),
            trade(at(10, 1, 5), "36.60", "10", 3),
            trade(at(10, 0, 2), "1.11", "7", 1, symbol="MWR"),
        ],
    )
    return settings


def test_k2_trades_csv_prints_exact_decimals_and_utc(lake: Settings) -> None:
    result = runner.invoke(app, ["trades", "BHP", "--format", "csv", "--limit", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    header = lines[0].split(",")
    first = dict(zip(header, lines[1].split(","), strict=False))
    assert len(lines) == 3
    assert first["price"] == "36.66700000"
    assert first["timestamp"] == "2024-03-04T10:00:01.000000Z"


def test_k2_bars_one_minute_json(lake: Settings) -> None:
    result = runner.invoke(
        app,
        [
            "bars",
            "BHP",
            "--interval",
            "1m",
            "--start",
            "2024-03-04T10:00:00Z",
            "--end",
            "2024-03-04T10:02:00Z",
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["open"], r["high"], r["low"], r["close"], r["trade_count"]) for r in rows] == [
        ("36.66700000", "36.70000000", "36.66700000", "36.70000000", 2),
        ("36.60000000", "36.60000000", "36.60000000", "36.60000000", 1),
    ]


def test_k2_bars_count_asx_trades_of_its_trading_day_without_off_book_prints_unless_told(lake: Settings) -> None:
    off_book = trade(at(10, 0, 40), "42.00", "100", 4, conditions=("1",), vendor={"venue": "X"})
    append_trades(ensure_tables(open_catalog(lake))["trades_v2"], [off_book])

    def daily(*options: str) -> list[tuple]:
        result = runner.invoke(app, ["bars", "BHP", "--interval", "1d", "-f", "json", *options])
        assert result.exit_code == 0, result.output
        return [(r["timestamp"], r["high"], r["trade_count"], r["partial"]) for r in json.loads(result.stdout)]

    # Sydney's Monday opens at 13:00 UTC on Sunday; the 42.00 print (condition 1) is left out by default.
    assert daily() == [("2024-03-03T13:00:00.000000Z", "36.70000000", 3, False)]
    assert daily("--exclude-conditions", "none") == [("2024-03-03T13:00:00.000000Z", "42.00000000", 4, False)]
    assert daily("--exclude-conditions", "none", "--exclude-venues", "X") == daily()
    assert daily("--tz", "UTC") == [("2024-03-04T00:00:00.000000Z", "36.70000000", 3, False)]
    assert daily("--start", "2024-03-04T00:00:00Z") == [("2024-03-03T13:00:00.000000Z", "36.70000000", 3, True)]
    csv_lines = runner.invoke(app, ["bars", "BHP", "--interval", "1d", "-f", "csv"]).stdout.splitlines()
    assert csv_lines[0].split(",")[-1] == "partial"
    assert csv_lines[1].split(",")[-1] == "false"


def test_k2_sql_csv_has_a_header_then_rows(lake: Settings) -> None:
    result = runner.invoke(
        app, ["sql", "SELECT symbol, count(*) AS n FROM market_data.trades_v2 GROUP BY 1 ORDER BY 1", "-f", "csv"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["symbol,n", "BHP,3", "MWR,1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bars", "BHP", "--interval", "7m"], "invalid bar interval"),
        (["bars", "BHP", "--exclude-conditions", "1,,3"], "invalid --exclude-conditions '1,,3': give codes"),
        (["trades", "BHP", "--start", "2024-03-04T10:00:00"], "no zone"),
        (["sql", "SELECT * FROM market_data.nope"], "market_data.trades_v2"),
    ],
)
def test_bad_input_exits_nonzero_with_what_to_do(lake: Settings, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert message in result.output


def test_a_cut_answer_says_so_on_stderr_and_keeps_the_data_clean(lake: Settings) -> None:
    cut = runner.invoke(app, ["trades", "BHP", "--format", "csv", "--limit", "2"])
    assert [line.split(",")[1] for line in cut.stdout.splitlines()[1:]] == ["1", "2"]  # trade ids, oldest first
    assert cut.stderr == "note: the first 2 rows (oldest first); more match: raise --limit or narrow --start/--end\n"
    whole = runner.invoke(app, ["trades", "BHP", "--format", "csv", "--limit", "3"])
    assert (len(whole.stdout.splitlines()), whole.stderr) == (4, "")


def test_latest_says_it_prints_the_newest_oldest_first(lake: Settings) -> None:
    result = runner.invoke(app, ["trades", "BHP", "--latest", "--limit", "2", "--format", "json"])
    assert [row["trade_id"] for row in json.loads(result.stdout)] == ["2", "3"]
    assert result.stderr == "note: the newest 2 trades of each symbol, printed oldest first\n"


def test_a_mistyped_k2_home_is_refused_not_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "k2hmoe"
    monkeypatch.setenv("K2_HOME", str(home))
    for command in (["trades", "BHP"], ["sql", "SELECT 1"], ["symbols"]):
        result = runner.invoke(app, command)
        assert (result.exit_code, result.stdout) == (2, "")
        assert result.stderr == (
            f"error: K2_HOME={home} does not exist: check K2_HOME, or load data first (make run; k2 load asx"
            " data/samples/asx)\n"
        )
    assert not home.exists()


def test_no_rows_says_why_and_where_to_look(lake: Settings) -> None:
    result = runner.invoke(app, ["trades", "BHPX", "--format", "csv", "--start", "2024-03-04T00:00:00Z"])
    assert result.exit_code == 0
    assert result.stdout.splitlines()[1:] == []  # the CSV header, no rows
    assert result.stderr == (
        "note: no trades of BHPX in [2024-03-04T00:00:00Z, the last); `k2 symbols` lists what the lake holds\n"
    )
    listed = runner.invoke(app, ["symbols", "--format", "json"])
    assert [(row["symbol"], row["exchange"], row["count"]) for row in json.loads(listed.stdout)] == [
        ("BHP", "asx", 3),
        ("MWR", "asx", 1),
    ]


def test_snapshots_list_what_as_of_accepts(lake: Settings) -> None:
    listed = json.loads(runner.invoke(app, ["snapshots", "trades", "--format", "json"]).stdout)
    assert [row["operation"] for row in listed] == ["append"]
    snapshot_id = listed[0]["snapshot_id"]
    pinned = runner.invoke(app, ["trades", "MWR", "--as-of", str(snapshot_id), "--format", "json"])
    assert [row["price"] for row in json.loads(pinned.stdout)] == ["1.11000000"]
    none = runner.invoke(app, ["snapshots", "quotes"])
    assert none.stderr == "note: quotes has no snapshot yet: nothing was committed to it\n"
