"""`k2 cost` against a real lake: every figure equals what the files on disk and their footers say."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table
from typer.testing import CliRunner

from k2.cli import app
from k2.lake.tables import table_identifier
from k2.ops.cost import CPU_KEY, GB, NOT_MEASURED, cost_report
from k2.schema.fields import QUOTES_V2, TRADES_V2
from tests.query.records import append, append_quotes, append_trades, at, quote, trade

TRADES = table_identifier(TRADES_V2)


def _trades(first: int, count: int) -> list[dict]:
    return [trade(at(10, 0, i), f"{40 + i % 7}.{i % 100:02d}", str(100 + i), first + i) for i in range(count)]


def _local_files(table: Table) -> list[Path]:
    table.refresh()
    paths = table.inspect.data_files().column("file_path").to_pylist()
    return [Path(urlparse(p).path) for p in paths]


def _footer_ratio(files: list[Path]) -> float:
    """Independently of k2.ops.cost: pyarrow's own sums over every column chunk of every row group."""
    uncompressed = compressed = 0
    for path in files:
        metadata = pq.ParquetFile(path).metadata
        for g in range(metadata.num_row_groups):
            for c in range(metadata.num_columns):
                chunk = metadata.row_group(g).column(c)
                uncompressed += chunk.total_uncompressed_size
                compressed += chunk.total_compressed_size
    return uncompressed / compressed


def test_records_and_bytes_are_what_the_data_files_hold_on_disk(catalog: Catalog, tables: dict[str, Table]) -> None:
    append_trades(tables["trades_v2"], _trades(0, 300))
    append_trades(tables["trades_v2"], _trades(300, 200))
    append_quotes(tables["quotes_v2"], [quote(at(10, 0, i), "40.10", "40.20", i) for i in range(50)])

    report = cost_report(catalog)
    trades = next(t for t in report.tables if t.table == TRADES)
    files = _local_files(tables["trades_v2"])
    on_disk = sum(f.stat().st_size for f in files)

    assert trades.records == 500
    assert trades.data_files == len(files) == 2
    assert trades.stored_bytes == on_disk
    assert trades.bytes_per_million == on_disk / 500 * 1_000_000
    assert report.total.records == 550
    quote_files = _local_files(tables["quotes_v2"])
    assert report.total.stored_bytes == on_disk + sum(f.stat().st_size for f in quote_files)


def test_compression_ratio_is_what_pyarrow_reads_from_the_same_footers(
    catalog: Catalog, tables: dict[str, Table]
) -> None:
    append_trades(tables["trades_v2"], _trades(0, 1_000))
    append_trades(tables["trades_v2"], _trades(1_000, 1_000))

    trades = next(t for t in cost_report(catalog).tables if t.table == TRADES)

    assert trades.compression_ratio == _footer_ratio(_local_files(tables["trades_v2"]))
    assert trades.compression_ratio is not None and trades.compression_ratio > 1
    assert trades.codecs == ["ZSTD"]


def test_cpu_is_not_measured_when_no_summary_carries_it(catalog: Catalog, tables: dict[str, Table]) -> None:
    append_trades(tables["trades_v2"], _trades(0, 100), {"k2.rows": "100"})

    report = cost_report(catalog)
    trades = next(t for t in report.tables if t.table == TRADES)

    assert trades.cpu_seconds is None
    assert report.cpu_seconds_per_million is None
    assert report.to_dict()["cpu_seconds_per_million"] is None
    assert any(NOT_MEASURED in note and CPU_KEY in note for note in report.assumptions)


def test_cpu_per_million_is_the_measured_seconds_over_the_rows_they_covered(
    catalog: Catalog, tables: dict[str, Table]
) -> None:
    append_trades(tables["trades_v2"], _trades(0, 100))  # before the sink measured: left out, and said so
    append_trades(tables["trades_v2"], _trades(100, 200), {CPU_KEY: "0.250"})
    append_trades(tables["trades_v2"], _trades(300, 300), {CPU_KEY: "0.350"})
    append(tables["quotes_v2"], QUOTES_V2, [quote(at(10, 0, i), "1", "2", i) for i in range(100)], {CPU_KEY: "0.1"})

    report = cost_report(catalog)
    trades = next(t for t in report.tables if t.table == TRADES)

    assert trades.cpu_seconds == pytest.approx(0.6)
    assert (trades.cpu_records, trades.appended_records) == (500, 600)
    assert report.cpu_seconds_per_million == pytest.approx((0.6 + 0.1) / (500 + 100) * 1_000_000)
    assert report.to_dict()["cpu_seconds_per_million"] == report.cpu_seconds_per_million
    assert any("500 of 600" in note for note in report.assumptions)


def test_monthly_storage_cost_is_stored_bytes_at_the_given_price(catalog: Catalog, tables: dict[str, Table]) -> None:
    append_trades(tables["trades_v2"], _trades(0, 100))

    report = cost_report(catalog, price_per_gb_month=0.5)

    assert report.monthly_storage_cost(report.total) == report.total.stored_bytes / GB * 0.5
    assert any("0.5 USD per GB-month" in note for note in report.assumptions)


def test_an_empty_home_reports_zeros_and_nothing_invented(catalog: Catalog) -> None:
    report = cost_report(catalog)

    assert [t.records for t in report.tables] == [0] * len(report.tables)
    assert report.total.bytes_per_million is None
    assert report.total.compression_ratio is None
    assert report.cpu_seconds_per_million is None


def test_k2_cost_prints_the_table_and_its_assumptions(
    tmp_path: Path, tables: dict[str, Table], monkeypatch: pytest.MonkeyPatch
) -> None:
    append_trades(tables["trades_v2"], _trades(0, 100))
    monkeypatch.setenv("K2_HOME", str(tmp_path))

    shown = CliRunner().invoke(app, ["cost", "--price-per-gb-month", "0.1"])
    as_json = CliRunner().invoke(app, ["cost", "--format", "json"])

    assert shown.exit_code == 0, shown.output
    assert TRADES in shown.output and NOT_MEASURED in shown.output and "Assumptions" in shown.output
    assert as_json.exit_code == 0, as_json.output
    document = json.loads(as_json.output)
    trades = next(t for t in document["tables"] if t["table"] == TRADES)
    assert trades["records"] == 100
    assert trades["stored_bytes"] == sum(f.stat().st_size for f in _local_files(tables["trades_v2"]))
    assert document["cpu_seconds_per_million"] is None
    assert document["price_per_gb_month"] == 0.023


def test_k2_cost_prints_measured_cpu_for_the_lake_as_a_whole(
    tmp_path: Path, tables: dict[str, Table], monkeypatch: pytest.MonkeyPatch
) -> None:
    append_trades(tables["trades_v2"], _trades(0, 400), {CPU_KEY: "0.5"})
    monkeypatch.setenv("K2_HOME", str(tmp_path))

    shown = CliRunner().invoke(app, ["cost"])

    assert shown.exit_code == 0, shown.output
    total = next(line for line in shown.output.splitlines() if line.startswith("│ total"))
    assert "1,250.00" in total  # 0.5 s / 400 records x 1e6
    assert "in total" in next(line for line in shown.output.splitlines() if TRADES in line)
