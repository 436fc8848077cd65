"""The spine's promises on the real ASX sample, through a real broker, registry, catalog and warehouse."""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from k2.config import Settings
from k2.ingest.pipeline import load
from k2.sources.asx import AsxSource
from tests.integration.helpers import lake_count, lake_query, raw_line_count

pytestmark = pytest.mark.integration

SYMBOLS = {"3153": "MWR", "7078": "BHP", "7181": "DVN", "7458": "RIO"}


def _counts_by_symbol(settings: Settings, table: str) -> dict[str, int]:
    rows = lake_query(settings, f"SELECT symbol, count(*) FROM market_data.{table} GROUP BY symbol")
    return dict(rows)  # type: ignore[arg-type]


def _expected_counts(sample: Path, kind: str) -> dict[str, int]:
    return {SYMBOLS[p.stem]: raw_line_count(p) for p in sorted((sample / kind).glob("*.csv"))}


def test_sample_load_matches_raw_files_and_reloads_add_only_new_rows(
    settings: Settings, asx_sample: Path, tmp_path: Path
) -> None:
    first = load(AsxSource(asx_sample), settings)
    assert first.ok, first
    assert first.read == first.produced == 370_174 + 6  # every trade and quote line + 4 companies + 2 dividends
    assert _counts_by_symbol(settings, "trades_v2") == _expected_counts(asx_sample, "trades")
    assert _counts_by_symbol(settings, "quotes_v2") == _expected_counts(asx_sample, "quotes")
    assert lake_count(settings, "reference_data_v2") == 6
    assert lake_count(settings, "trades_v2", "WHERE message_id IS NULL") == 0
    assert lake_query(settings, "SELECT count(DISTINCT message_id) = count(*) FROM market_data.trades_v2")[0][0]

    # Prices equal the file text exactly; Sydney local time (AEDT, UTC+11 in March 2014) becomes UTC.
    row = lake_query(
        settings,
        "SELECT price, quantity, strftime(timestamp, '%Y-%m-%dT%H:%M:%S.%f') FROM market_data.trades_v2 "
        "WHERE symbol = ? ORDER BY timestamp, source_sequence LIMIT 1",
        ["BHP"],
    )[0]
    assert row == (Decimal("36.667"), Decimal("20000"), "2014-03-09T20:57:14.754000")

    # The same directory again (a new embedded broker: a new log, offsets from 0): nothing changes.
    second = load(AsxSource(asx_sample), settings)
    assert second.ok
    assert sum(second.sink.written.values()) == 0
    assert sum(second.sink.duplicates.values()) == second.produced
    assert _counts_by_symbol(settings, "trades_v2") == _expected_counts(asx_sample, "trades")

    # One row appended to one file: exactly that row is added.
    copy = tmp_path / "asx"
    shutil.copytree(asx_sample, copy)
    (copy / "trades").chmod(0o755)
    target = copy / "trades" / "7181.csv"
    target.chmod(0o644)
    with open(target, "ab") as fh:
        fh.write(b"03/14/2014,15:59:59.999,0.685,4321,0,,\r\n")
    third = load(AsxSource(copy), settings)
    assert third.ok
    assert dict(third.sink.written) == {"trades_v2": 1}
    assert lake_count(settings, "trades_v2", "WHERE symbol = ?", ["DVN"]) == 233
    added = lake_query(
        settings,
        "SELECT price, quantity, strftime(timestamp, '%Y-%m-%dT%H:%M:%S.%f') FROM market_data.trades_v2 "
        "WHERE symbol = 'DVN' AND quantity = 4321",
    )
    assert added == [(Decimal("0.685"), Decimal("4321"), "2014-03-14T04:59:59.999000")]
