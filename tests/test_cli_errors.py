"""A user's mistake is one line on stderr and exit code 2 before anything starts; `--debug` shows the traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.config import Settings
from k2.core.errors import UserError
from k2.samples import BINANCE_PUBLIC_DATA

runner = CliRunner()
KLINES = BINANCE_PUBLIC_DATA / "ADABTC-1m-2021-11-27.csv"


@pytest.fixture
def no_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting a broker would mean the mistake was found too late."""

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a broker was started for input that could never load")

    monkeypatch.setattr("k2.ingest.pipeline.Stack", refuse)


def one_error_line(result: object) -> str:
    stderr = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(stderr) == 1, result.stderr  # type: ignore[attr-defined]
    assert stderr[0].startswith("error: ")
    return stderr[0]


def test_a_folder_that_is_not_an_asx_dataset(settings: Settings, tmp_path: Path, no_stack: None) -> None:
    (tmp_path / "trades").mkdir()
    result = runner.invoke(app, ["load", "asx", str(tmp_path)])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert f"{tmp_path} is not an ASX dataset: reference-data/company_info.csv is missing" in line
    assert "point at the folder holding trades/, quotes/ and reference-data/" in line


def test_a_binance_file_that_fails_its_checksum_loads_nothing(
    settings: Settings, tmp_path: Path, no_stack: None
) -> None:
    copy = tmp_path / KLINES.name
    shutil.copyfile(KLINES, copy)
    (tmp_path / f"{KLINES.name}.CHECKSUM").write_text(f"{'0' * 64}  {KLINES.name}\n")
    result = runner.invoke(app, ["load", "binance-files", str(copy)])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert f"does not match {KLINES.name}.CHECKSUM ({'0' * 64})" in line
    assert line.endswith("download it again. Nothing was loaded.")


def test_a_binance_file_whose_name_says_nothing(settings: Settings, tmp_path: Path, no_stack: None) -> None:
    copy = tmp_path / "klines.csv"
    shutil.copyfile(KLINES, copy)
    result = runner.invoke(app, ["load", "binance-files", str(copy)])
    assert result.exit_code == 2
    assert one_error_line(result).startswith("error: klines.csv: cannot tell symbol and kind from the name")


def test_an_exchange_info_file_that_is_not_one(settings: Settings, tmp_path: Path, no_stack: None) -> None:
    copy = tmp_path / KLINES.name
    shutil.copyfile(KLINES, copy)
    info = tmp_path / "exchangeInfo.json"
    info.write_text('{"serverTime": 1}')
    result = runner.invoke(app, ["load", "binance-files", "--exchange-info", str(info), str(copy)])
    assert result.exit_code == 2
    assert one_error_line(result) == (
        f"error: --exchange-info: {info}: no 'symbols' list; expected a GET /api/v3/exchangeInfo response body"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", ""], "error: a key needs a name"),
        (["keys", "create", "  "], "error: a key needs a name"),
        (["keys", "create", "research", "--rate-limit", "0"], "error: the rate limit is requests per minute"),
    ],
)
def test_bad_key_requests(settings: Settings, args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert one_error_line(result).startswith(message)
    assert result.stdout == ""  # no key was printed, none was made
    assert runner.invoke(app, ["keys", "list"]).stdout == ""


def test_debug_lets_the_error_through_with_its_traceback(settings: Settings) -> None:
    result = runner.invoke(app, ["--debug", "keys", "create", ""])
    assert isinstance(result.exception, UserError)
    assert result.exit_code == 1


def test_a_file_that_is_not_a_capture_loads_nothing(settings: Settings, no_stack: None) -> None:
    result = runner.invoke(app, ["load", "capture", str(KLINES)])
    assert result.exit_code == 2
    line = one_error_line(result)
    assert line.startswith(f"error: {KLINES} is not a cryptofeed capture: line 1 starts b'1637971200000,0.00002853,")


def test_bars_subscriptions_need_an_interval_and_only_bars_take_one(settings: Settings) -> None:
    result = runner.invoke(app, ["subscribe", "bars", "--symbols", "BHP"])
    assert result.exit_code == 2
    assert one_error_line(result) == "error: --interval goes with bars, and bars need one (e.g. --interval 1m)"
    result = runner.invoke(app, ["subscribe", "trades", "--interval", "1m"])
    assert result.exit_code == 2 and "--interval goes with bars" in one_error_line(result)
