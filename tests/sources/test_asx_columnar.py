"""The columnar ASX tick parser against the row parser: same tables, same rejects, same chunks, same bytes.

The row parser (`AsxSource._row_batches`, records through `records_to_arrow`) is the reference. Plain files must
take the columnar path (the fallback is patched to fail there); odd files must come out identical either way.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from k2.core.batch import Reject
from k2.schema.arrow import arrow_schema, records_to_arrow
from k2.schema.codecs import datetime_from_micros, message_id
from k2.schema.fields import QUOTES_V2, TRADES_V2, RecordSpec
from k2.sources.asx import AsxSource
from k2.sources.asx.columnar import TickChunk
from k2.sources.asx.reference import Company, load_companies
from tests.sources import asx_tick_chunks as asx_columnar
from tests.sources.asx_tick_chunks import parse_tick_file

SAMPLE_FILES = [
    f"{kind}/{company}.csv" for kind in ("trades", "quotes") for company in ("3153", "7078", "7181", "7458")
]
ROWS = {
    "trades/3153.csv": 11,
    "trades/7078.csv": 91_631,
    "trades/7181.csv": 232,
    "trades/7458.csv": 108_671,
    "quotes/3153.csv": 60,
    "quotes/7078.csv": 77_849,
    "quotes/7181.csv": 549,
    "quotes/7458.csv": 91_171,
}
STAMP = 1_700_000_000_000_000  # a fixed ingestion clock for both parsers
TRADE = "03/10/2014,10:00:00.000,36.7,100,3,X,"
QUOTE = "03/10/2014,10:00:00.000,36.7,36.71,100,200"


@dataclass(frozen=True)
class Expected:
    """One row-parser batch in the form a TickChunk should have."""

    table: pa.Table
    rejects: list[Reject]
    rows_read: int
    bytes_read: int


@pytest.fixture(scope="module")
def companies(asx_sample: Path) -> dict[str, Company]:
    found, _, _ = load_companies(asx_sample / "reference-data" / "company_info.csv", 0)
    return found


def spec_of(path: Path) -> RecordSpec:
    return TRADES_V2 if path.parent.name == "trades" else QUOTES_V2


def row_parser(path: Path, company: Company | None, chunk_rows: int) -> list[Expected]:
    """The reference: AsxSource's own batches for this file, ingestion time fixed, progress bytes per batch (bytes
    reported after the last batch, i.e. trailing blank lines, belong to the last)."""
    spec = spec_of(path)
    source = AsxSource(path.parent.parent, chunk_rows=chunk_rows)
    reported: list[int] = []
    source.progress = reported.append
    out: list[Expected] = []
    for batch in source._row_batches(path, spec, company):
        for record in batch.records:
            record["ingestion_timestamp"] = STAMP
        out.append(Expected(records_to_arrow(spec, batch.records), batch.rejects, batch.rows_read, sum(reported)))
        reported.clear()
    if out and reported:
        last = out.pop()
        out.append(Expected(last.table, last.rejects, last.rows_read, last.bytes_read + sum(reported)))
    return out


def columnar(path: Path, company: Company | None, chunk_rows: int) -> list[TickChunk]:
    return list(parse_tick_file(path, company, spec_of(path), chunk_rows, ingested=lambda: STAMP))


def assert_same(chunks: list[TickChunk], expected: list[Expected]) -> None:
    assert [c.rows_read for c in chunks] == [e.rows_read for e in expected]
    assert [c.bytes_read for c in chunks] == [e.bytes_read for e in expected]
    for chunk, want in zip(chunks, expected, strict=True):
        assert chunk.table.schema == want.table.schema
        for name in want.table.column_names:  # column by column, so a failure names the column
            assert chunk.table.column(name).equals(want.table.column(name)), name
        assert chunk.table.equals(want.table)
        assert chunk.rejects == want.rejects
        assert chunk.rows_read == chunk.table.num_rows + len(chunk.rejects)


@pytest.fixture
def columnar_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any fallback to the row parser fail: the file under test must take the columnar path."""

    def refuse(*args: Any) -> Iterator[TickChunk]:
        raise AssertionError(f"fell back to the row parser for {args[0]}")

    monkeypatch.setattr(asx_columnar, "_row_parser_chunks", refuse)


def write(tmp_path: Path, name: str, rows: list[str] | bytes) -> Path:
    path = tmp_path / "asx" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(rows if isinstance(rows, bytes) else b"".join(r.encode() + b"\r\n" for r in rows))
    return path


def utc(micros: int) -> str:
    return datetime_from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- the real sample: columnar path, identical to the row parser ------------------------------------------------


@pytest.mark.usefixtures("columnar_only")
@pytest.mark.parametrize("chunk_rows", [1_000, 50_000])
@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_every_sample_file_equals_the_row_parser(
    asx_sample: Path, companies: dict[str, Company], name: str, chunk_rows: int
) -> None:
    path = asx_sample / name
    chunks = columnar(path, companies[path.stem], chunk_rows)
    assert sum(c.rows_read for c in chunks) == ROWS[name]
    assert sum(c.bytes_read for c in chunks) == path.stat().st_size
    assert max(c.rows_read for c in chunks) == min(chunk_rows, ROWS[name])
    assert_same(chunks, row_parser(path, companies[path.stem], chunk_rows))


@pytest.mark.usefixtures("columnar_only")
def test_first_bhp_trade_has_the_row_parsers_values(asx_sample: Path, companies: dict[str, Company]) -> None:
    [first, *_] = columnar(asx_sample / "trades" / "7078.csv", companies["7078"], 50_000)
    row = first.table.slice(0, 1).to_pylist()[0]
    text = "03/10/2014,07:57:14.754,36.667,20000,3,X,"
    assert row["message_id"] == message_id("asx", "trades", "BHP", f"20140310|{text}#0")
    assert row["trade_id"] == "20140310-1"
    assert (row["symbol"], row["exchange"], row["asset_class"], row["currency"], row["side"]) == (
        "BHP",
        "asx",
        "equities",
        "AUD",
        "UNKNOWN",
    )
    assert row["timestamp"].strftime("%Y-%m-%dT%H:%M:%S.%f") == "2014-03-09T20:57:14.754000"  # AEDT, UTC+11
    assert (row["price"], row["quantity"]) == (Decimal("36.667"), Decimal("20000"))
    assert row["trade_conditions"] == ["3"]
    assert (row["source_sequence"], row["platform_sequence"]) == (1, 1)
    assert row["vendor_data"] == [
        ("qualifier", "3"),
        ("company_id", "7078"),
        ("local_time", "03/10/2014 07:57:14.754"),
        ("venue", "X"),
    ]


@pytest.mark.usefixtures("columnar_only")
def test_one_sided_sample_quote_has_a_null_ask(asx_sample: Path, companies: dict[str, Company]) -> None:
    [first, *_] = columnar(asx_sample / "quotes" / "7078.csv", companies["7078"], 50_000)
    row = first.table.slice(0, 1).to_pylist()[0]  # 03/10/2014,05:43:45.676,37.7,0.0,300,0
    assert (row["bid_price"], row["bid_quantity"], row["ask_price"], row["ask_quantity"]) == (
        Decimal("37.7"),
        Decimal("300"),
        None,
        None,
    )
    assert dict(row["vendor_data"])["book_state"] == "one_sided"


@pytest.mark.usefixtures("columnar_only")
def test_parses_in_two_threads_at_once_give_the_same_tables(asx_sample: Path, companies: dict[str, Company]) -> None:
    paths = [asx_sample / "quotes" / "7078.csv", asx_sample / "trades" / "7458.csv"] * 2
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda path: columnar(path, companies[path.stem], 50_000), paths))
    for first, second in (results[0::2], results[1::2]):
        assert [c.table for c in first] == [c.table for c in second]
    assert results[0][0].table.column("symbol")[0].as_py() == "BHP"
    assert results[1][0].table.column("symbol")[0].as_py() == "RIO"


def test_ingested_is_called_once_per_chunk(asx_sample: Path, companies: dict[str, Company]) -> None:
    clock = itertools.count(100)
    chunks = list(
        parse_tick_file(asx_sample / "quotes" / "7181.csv", companies["7181"], QUOTES_V2, 200, clock.__next__)
    )
    assert [c.rows_read for c in chunks] == [200, 200, 149]
    stamps = [set(c.table.column("ingestion_timestamp").cast(pa.int64()).to_pylist()) for c in chunks]
    assert stamps == [{100}, {101}, {102}]


# --- plain but unusual files: still columnar, still identical ---------------------------------------------------


@pytest.mark.usefixtures("columnar_only")
def test_identical_rows_get_ordinals_like_the_row_parser(tmp_path: Path, companies: dict[str, Company]) -> None:
    other = "03/10/2014,10:00:00.000,36.7,200,3,X,"
    rows = [TRADE, other, TRADE, TRADE, other, "03/11/2014,10:00:00.000,36.7,100,3,X,", TRADE.replace("10/", "11/")]
    path = write(tmp_path, "trades/7078.csv", rows)
    chunks = columnar(path, companies["7078"], 3)
    assert_same(chunks, row_parser(path, companies["7078"], 3))
    table = pa.concat_tables(c.table for c in chunks)
    assert len(set(table.column("message_id").to_pylist())) == 7
    assert table.column("message_id")[3].as_py() == message_id("asx", "trades", "BHP", f"20140310|{TRADE}#2")
    assert table.column("trade_id").to_pylist() == [f"20140310-{i}" for i in range(1, 6)] + [
        "20140311-1",
        "20140311-2",
    ]


@pytest.mark.usefixtures("columnar_only")
def test_trades_with_extra_without_qualifier_or_venue_and_no_final_line_end(
    tmp_path: Path, companies: dict[str, Company]
) -> None:
    rows = [TRADE, "03/10/2014,10:00:01.000,36.70,100,,,", "03/10/2014,10:00:02.000,36.7,100.5,0,X,36.71", TRADE]
    path = write(tmp_path, "trades/7078.csv", ("\r\n".join(rows)).encode())  # the last row has no CRLF
    chunks = columnar(path, companies["7078"], 50_000)
    assert_same(chunks, row_parser(path, companies["7078"], 50_000))
    table = chunks[0].table
    assert table.column("trade_conditions").to_pylist() == [["3"], [], ["0"], ["3"]]
    assert [dict(v) for v in table.column("vendor_data").to_pylist()][1:3] == [
        {"qualifier": "", "company_id": "7078", "local_time": "03/10/2014 10:00:01.000"},
        {
            "qualifier": "0",
            "company_id": "7078",
            "local_time": "03/10/2014 10:00:02.000",
            "venue": "X",
            "extra": "36.71",
        },
    ]
    assert table.column("message_id")[3].as_py() == message_id("asx", "trades", "BHP", f"20140310|{TRADE}#1")


@pytest.mark.usefixtures("columnar_only")
def test_every_book_state_and_equal_prices_written_differently(tmp_path: Path, companies: dict[str, Company]) -> None:
    rows = [
        "03/10/2014,10:00:00.000,36.7,36.71,100,200",  # normal
        "03/10/2014,10:00:00.000,36.70,36.7,100,200",  # locked: same value, other text
        "03/10/2014,10:00:00.000,36.72,36.7,100,200",  # crossed
        "03/10/2014,10:00:00.000,0.0,36.7,0,200",  # one sided: no bid
        "03/10/2014,10:00:00.000,0,0.00,0,0",  # empty
        "03/10/2014,10:00:00.000,36.7,36.71,0,200",  # a bid of quantity 0 is still a bid
    ]
    path = write(tmp_path, "quotes/7458.csv", rows)
    [chunk] = columnar(path, companies["7458"], 50_000)
    assert_same([chunk], row_parser(path, companies["7458"], 50_000))
    states = [dict(v)["book_state"] for v in chunk.table.column("vendor_data").to_pylist()]
    assert states == ["normal", "locked", "crossed", "one_sided", "empty", "normal"]
    assert chunk.table.column("bid_quantity").to_pylist() == [100, 100, 100, None, None, 0]
    assert utc(chunk.table.column("timestamp")[0].value) == "2014-03-09T23:00:00.000000Z"


# --- odd files: the row parser's records and rejects, exactly ---------------------------------------------------


ODD_TRADES: dict[str, tuple[list[str] | bytes, list[tuple[str, int]]]] = {
    # name: (file content, expected (reason, line) rejects)
    "blank line in the middle": ([TRADE, "", TRADE], [("blank_line", 2)]),
    "blank lines at the end": ([TRADE, TRADE, "", "  "], []),
    "bad price": ([TRADE, "03/10/2014,10:00:00.000,1.1x,100,3,X,", TRADE], [("bad_price", 2)]),
    "zero price": ([TRADE, "03/10/2014,10:00:00.000,0.0,100,3,X,"], [("bad_price", 2)]),
    "zero volume": (["03/10/2014,10:00:00.000,36.7,0,3,X,", TRADE], [("bad_quantity", 1)]),
    "wrong column count": ([TRADE, "03/10/2014,10:00:00.000,36.7,100", TRADE], [("wrong_column_count", 2)]),
    "non-UTF-8 bytes": (
        (TRADE + "\r\n").encode() + b"03/10/2014,10:00:00.000,36.7,\xff10,0,,\r\n",
        [("bad_encoding", 2)],
    ),
    "valid UTF-8 beyond ASCII": ([TRADE, "03/10/2014,10:00:00.000,36.7,100,3,X,\u00e9"], []),
    "bad date": (["13/45/2014,10:00:00.000,36.7,100,3,X,", TRADE], [("bad_date", 1)]),
    "bad time": ([TRADE, "03/10/2014,25:00:00.000,36.7,100,3,X,"], [("bad_time", 2)]),
    "time without milliseconds": ([TRADE, "03/10/2014,10:00:01,36.7,100,3,X,"], []),
    "reopened trading day": ([TRADE, "03/11/2014,10:00:00.000,36.7,100,3,X,", TRADE], []),
    "DST change day": (
        [TRADE, "04/06/2014,01:30:00.000,36.7,100,3,X,", "04/06/2014,02:30:00.000,36.7,100,3,X,"],
        [("ambiguous_local_time", 3)],
    ),
    "lone line feed": ((TRADE + "\n" + TRADE + "\r\n").encode(), []),
}


@pytest.mark.parametrize("case", list(ODD_TRADES))
@pytest.mark.parametrize("chunk_rows", [1, 2, 50_000])
def test_odd_trade_files_match_the_row_parser(
    tmp_path: Path, companies: dict[str, Company], case: str, chunk_rows: int
) -> None:
    content, rejects = ODD_TRADES[case]
    path = write(tmp_path, "trades/7078.csv", content)
    chunks = columnar(path, companies["7078"], chunk_rows)
    assert_same(chunks, row_parser(path, companies["7078"], chunk_rows))
    assert [(r.reason, r.position) for c in chunks for r in c.rejects] == rejects
    assert all(r.origin == str(path) for c in chunks for r in c.rejects)
    assert sum(c.bytes_read for c in chunks) == path.stat().st_size


def test_rejects_keep_the_raw_bytes_and_the_rest_survives(tmp_path: Path, companies: dict[str, Company]) -> None:
    content, _ = ODD_TRADES["non-UTF-8 bytes"]
    path = write(tmp_path, "trades/7078.csv", content)
    [chunk] = columnar(path, companies["7078"], 50_000)
    [bad] = chunk.rejects
    assert (bad.reason, bad.raw, bad.position) == ("bad_encoding", b"03/10/2014,10:00:00.000,36.7,\xff10,0,,", 2)
    assert (chunk.table.num_rows, chunk.rows_read) == (1, 2)
    assert chunk.table.column("platform_sequence").to_pylist() == [1]


def test_reopened_day_keeps_the_row_parsers_suffixed_ids(tmp_path: Path, companies: dict[str, Company]) -> None:
    content, _ = ODD_TRADES["reopened trading day"]
    path = write(tmp_path, "trades/7078.csv", content)
    [chunk] = columnar(path, companies["7078"], 50_000)
    assert chunk.table.column("trade_id").to_pylist() == ["20140310-1", "20140311-1", "20140310-2"]
    assert chunk.table.column("message_id")[2].as_py() == message_id("asx", "trades", "BHP", f"20140310|{TRADE}#0@1")


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ([QUOTE, "03/10/2014,10:00:00.000,-1.0,36.71,100,200"], "bad_price"),
        ([QUOTE, "03/10/2014,10:00:00.000,36.7,36.71,-100,200"], "negative_quantity"),
        ([QUOTE, "03/10/2014,10:00:00.000,36.7,36.71,1e400,200"], "bad_quantity"),
        ([QUOTE, "03/10/2014,10:00:00.000,36.7,36.71,100"], "wrong_column_count"),
        ([QUOTE, "", QUOTE], "blank_line"),
    ],
)
def test_odd_quote_files_match_the_row_parser(
    tmp_path: Path, companies: dict[str, Company], rows: list[str], reason: str
) -> None:
    path = write(tmp_path, "quotes/7458.csv", rows)
    chunks = columnar(path, companies["7458"], 50_000)
    assert_same(chunks, row_parser(path, companies["7458"], 50_000))
    assert [(r.reason, r.position) for c in chunks for r in c.rejects] == [(reason, 2)]


@pytest.mark.parametrize("chunk_rows", [2, 50_000])
def test_unknown_company_rejects_every_row(tmp_path: Path, chunk_rows: int) -> None:
    path = write(tmp_path, "trades/9999.csv", [TRADE, "", TRADE, TRADE])
    chunks = columnar(path, None, chunk_rows)
    assert_same(chunks, row_parser(path, None, chunk_rows))
    assert [(r.reason, r.position) for c in chunks for r in c.rejects] == [
        ("unknown_company", 1),
        ("blank_line", 2),
        ("unknown_company", 3),
        ("unknown_company", 4),
    ]
    assert all(c.table.num_rows == 0 for c in chunks)


def test_a_file_of_blank_lines_reports_its_bytes_in_one_empty_chunk(
    tmp_path: Path, companies: dict[str, Company]
) -> None:
    path = write(tmp_path, "trades/7078.csv", b"\r\n\r\n")
    assert row_parser(path, companies["7078"], 10) == []
    [chunk] = columnar(path, companies["7078"], 10)
    assert (chunk.rows_read, chunk.bytes_read, chunk.rejects) == (0, 4, [])
    assert chunk.table.schema == arrow_schema(TRADES_V2)
    assert columnar(write(tmp_path, "trades/7181.csv", b""), companies["7181"], 10) == []


def test_chunk_rows_below_one_is_refused(asx_sample: Path, companies: dict[str, Company]) -> None:
    with pytest.raises(ValueError, match="chunk_rows"):
        columnar(asx_sample / "trades" / "3153.csv", companies["3153"], 0)
