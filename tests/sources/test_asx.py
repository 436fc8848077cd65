"""The ASX loader against the real sample files (read-only; mutations happen on copies under tmp_path)."""

from __future__ import annotations

import io
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

from k2.core.batch import Reject, SourceBatch
from k2.samples import ASX_SAMPLE as SAMPLE
from k2.schema.arrow import records_to_arrow
from k2.schema.avro import parsed_schema
from k2.schema.codecs import datetime_from_micros
from k2.schema.fields import QUOTES_V2, REFERENCE_DATA_V2, TRADES_V2
from k2.sources.asx import AsxSource

SYMBOLS = {"3153": "MWR", "7078": "BHP", "7181": "DVN", "7458": "RIO"}
TRADE_ROWS = {"3153": 11, "7078": 91_631, "7181": 232, "7458": 108_671}
QUOTE_ROWS = {"3153": 60, "7078": 77_849, "7181": 549, "7458": 91_171}
# (crossed, locked, normal, one_sided) per quotes file, counted independently with awk over the raw files.
BOOK_STATES = {
    "3153": (1, 2, 52, 5),
    "7078": (323, 1_610, 75_911, 5),
    "7181": (18, 6, 520, 5),
    "7458": (459, 1_820, 88_887, 5),
}
CHUNK = 10_000


def utc(micros: int) -> str:
    return datetime_from_micros(micros).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def load(directory: Path, **kwargs: Any) -> list[SourceBatch]:
    return list(AsxSource(directory, **kwargs).batches())


def records(batches: list[SourceBatch], spec: Any) -> list[dict[str, Any]]:
    return [r for b in batches if b.spec is spec for r in b.all_records()]


def rejects(batches: list[SourceBatch]) -> list[Reject]:
    return [r for b in batches for r in b.rejects]


def copy_sample(tmp_path: Path, *files: str) -> Path:
    """A writable copy of reference-data plus the named sample files (e.g. "trades/7181.csv")."""
    root = tmp_path / "asx"
    for rel in ["reference-data/" + p.name for p in (SAMPLE / "reference-data").iterdir()] + list(files):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((SAMPLE / rel).read_bytes())
    return root


def write_rows(path: Path, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(row.encode() + b"\r\n" for row in rows))


def ids(batches: list[SourceBatch]) -> set[str]:
    return {r["message_id"] for b in batches for r in b.all_records()}


@dataclass
class SampleRun:
    """One pass over the whole sample, summarised (keeping 370k records would cost ~0.5 GB)."""

    spec_order: list[str] = field(default_factory=list)
    max_batch_rows: int = 0
    unbalanced_batches: int = 0
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, company id) → records
    book_states: dict[str, Counter[str]] = field(default_factory=dict)
    first_of_day: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    first_with_extra: dict[str, Any] | None = None
    reference: list[dict[str, Any]] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    message_ids: set[str] = field(default_factory=set)
    record_total: int = 0
    progress_total: int = 0
    total_bytes: int = 0
    empty_files: list[str] = field(default_factory=list)
    seconds: float = 0.0


@pytest.fixture(scope="module")
def sample() -> SampleRun:
    run = SampleRun()
    source = AsxSource(SAMPLE, chunk_rows=CHUNK)
    source.progress = lambda n: setattr(run, "progress_total", run.progress_total + n)
    started = time.perf_counter()
    for batch in source.batches():
        run.spec_order.append(batch.spec.name)
        rows = batch.all_records()
        run.max_batch_rows = max(run.max_batch_rows, len(rows))
        run.unbalanced_batches += batch.rows_read != len(rows) + len(batch.rejects)
        run.rejects.extend(batch.rejects)
        run.record_total += len(rows)
        run.message_ids.update(r["message_id"] for r in rows)
        if batch.spec is REFERENCE_DATA_V2:
            run.reference.extend(rows)
            continue
        kind = "trades" if batch.spec is TRADES_V2 else "quotes"
        for r in rows:
            company = r["vendor_data"]["company_id"]
            run.counts[kind, company] += 1
            run.first_of_day.setdefault((kind, company, r["vendor_data"]["local_time"][:10]), r)
            if kind == "quotes":
                run.book_states.setdefault(company, Counter())[r["vendor_data"]["book_state"]] += 1
            elif run.first_with_extra is None and "extra" in r["vendor_data"]:
                run.first_with_extra = r
    run.seconds = time.perf_counter() - started
    run.total_bytes = source.total_bytes()
    run.empty_files = source.empty_files
    return run


# --- the whole sample -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("company", "rows"), sorted(TRADE_ROWS.items()))
def test_every_trade_row_in_the_sample_becomes_a_record(sample: SampleRun, company: str, rows: int) -> None:
    assert (SAMPLE / "trades" / f"{company}.csv").read_bytes().count(b"\r\n") == rows
    assert sample.counts["trades", company] == rows


@pytest.mark.parametrize(("company", "rows"), sorted(QUOTE_ROWS.items()))
def test_every_quote_row_in_the_sample_becomes_a_record(sample: SampleRun, company: str, rows: int) -> None:
    assert (SAMPLE / "quotes" / f"{company}.csv").read_bytes().count(b"\r\n") == rows
    assert sample.counts["quotes", company] == rows


def test_the_sample_has_no_rejects_and_every_batch_balances(sample: SampleRun) -> None:
    assert sample.rejects == []
    assert sample.unbalanced_batches == 0
    assert sample.record_total == sum(TRADE_ROWS.values()) + sum(QUOTE_ROWS.values()) + 4 + 2


def test_reference_batches_come_first_and_chunks_respect_chunk_rows(sample: SampleRun) -> None:
    kinds = sample.spec_order
    assert kinds[:2] == ["reference_data_v2", "reference_data_v2"]
    assert "reference_data_v2" not in kinds[2:]
    assert kinds.index("quotes_v2") > max(i for i, k in enumerate(kinds) if k == "trades_v2")
    assert sample.max_batch_rows == CHUNK


def test_progress_reports_every_byte_read(sample: SampleRun) -> None:
    on_disk = sum(p.stat().st_size for p in SAMPLE.rglob("*.csv"))
    assert sample.total_bytes == on_disk
    assert sample.progress_total == on_disk


def test_every_message_id_is_unique_even_for_identical_duplicate_ticks(sample: SampleRun) -> None:
    # BHP alone has 3,193 rows byte-identical to an earlier row (same ms, price, volume): distinct trades.
    raw = (SAMPLE / "trades" / "7078.csv").read_bytes().splitlines()
    assert len(raw) - len(set(raw)) == 3_193
    assert len(sample.message_ids) == sample.record_total


def test_parsing_speed_is_recorded(sample: SampleRun) -> None:
    rate = sample.record_total / sample.seconds
    print(f"\nASX sample: {sample.record_total:,} rows in {sample.seconds:.2f} s = {rate:,.0f} rows/s")
    assert rate > 10_000  # a floor against pathological regressions, not a benchmark


# --- trades ---------------------------------------------------------------------------------------------------


def test_first_bhp_trade_is_exact_and_in_utc(sample: SampleRun) -> None:
    trade = sample.first_of_day["trades", "7078", "03/10/2014"]
    assert utc(trade["timestamp"]) == "2014-03-09T20:57:14.754000Z"  # AEDT, UTC+11
    assert trade["price"] == Decimal("36.667")
    assert isinstance(trade["price"], Decimal) and isinstance(trade["quantity"], Decimal)
    assert trade["quantity"] == 20_000
    assert trade["symbol"] == "BHP"
    assert (trade["exchange"], trade["asset_class"], trade["currency"], trade["side"]) == (
        "asx",
        "equities",
        "AUD",
        "UNKNOWN",
    )
    assert trade["trade_conditions"] == ["3"]
    assert trade["vendor_data"] == {
        "qualifier": "3",
        "venue": "X",
        "company_id": "7078",
        "local_time": "03/10/2014 07:57:14.754",
    }
    assert (trade["trade_id"], trade["source_sequence"], trade["platform_sequence"]) == ("20140310-1", 1, 1)


def test_source_sequence_restarts_each_trading_day_while_platform_sequence_runs_on(sample: SampleRun) -> None:
    second_day = sample.first_of_day["trades", "7078", "03/11/2014"]
    assert (second_day["trade_id"], second_day["source_sequence"]) == ("20140311-1", 1)
    assert second_day["platform_sequence"] == 17_001  # BHP traded 17,000 times on 10 March


def test_extra_field_is_kept_verbatim_when_present(sample: SampleRun) -> None:
    trade = sample.first_with_extra
    assert trade is not None
    assert trade["vendor_data"]["local_time"] == "03/10/2014 10:24:23.348"
    assert trade["vendor_data"]["extra"] == "36.79"
    assert "venue" not in trade["vendor_data"]
    assert trade["trade_conditions"] == ["0"]


# --- quotes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("company", sorted(QUOTE_ROWS))
def test_one_sided_quote_has_a_null_ask(sample: SampleRun, company: str) -> None:
    quote = sample.first_of_day["quotes", company, "03/10/2014"]  # each file opens with "…,0.0,<bid vol>,0"
    assert quote["ask_price"] is None and quote["ask_quantity"] is None
    assert quote["bid_price"] > 0 and quote["bid_quantity"] > 0
    assert quote["vendor_data"]["book_state"] == "one_sided"
    assert quote["quote_id"] == "20140310-1"


@pytest.mark.parametrize(("company", "states"), sorted(BOOK_STATES.items()))
def test_crossed_and_locked_quotes_are_kept_and_flagged(
    sample: SampleRun, company: str, states: tuple[int, int, int, int]
) -> None:
    got = sample.book_states[company]
    assert (got["crossed"], got["locked"], got["normal"], got["one_sided"]) == states
    assert sum(got.values()) == QUOTE_ROWS[company]


# --- reference data -------------------------------------------------------------------------------------------


def test_company_info_gives_one_active_record_per_company(sample: SampleRun) -> None:
    companies = {r["company_id"]: r for r in sample.reference if r["vendor_data"]["record_type"] == "company"}
    assert {cid: r["symbol"] for cid, r in companies.items()} == SYMBOLS
    bhp = companies["7078"]
    assert bhp["isin"] == "AU000000BHP4" and bhp["company_name"] == "BHP BILLITON LTD"
    assert (bhp["listing_date"], bhp["delisting_date"]) == (date(2008, 5, 7), date(2014, 3, 31))
    assert utc(bhp["timestamp"]) == "2008-05-06T14:00:00.000000Z"  # midnight AEST (UTC+10)
    assert utc(companies["3153"]["timestamp"]) == "2003-11-05T13:00:00.000000Z"  # midnight AEDT (UTC+11)
    assert all(r["is_active"] for r in companies.values())


def test_dividends_become_reference_records_including_the_usd_one(sample: SampleRun) -> None:
    dividends = {r["symbol"]: r for r in sample.reference if r["vendor_data"]["record_type"] == "dividend"}
    assert set(dividends) == {"BHP", "RIO"}
    bhp = dividends["BHP"]
    assert bhp["vendor_data"] == {
        "record_type": "dividend",
        "declared_date": "2013-09-25",
        "ex_date": "2014-03-03",
        "record_date": "2014-03-07",
        "pay_date": "2014-03-26",
        "net_amount": "0.59",
        "gross_amount": "0.842857",
        "currency": "USD",
    }
    assert (bhp["company_id"], bhp["isin"], bhp["company_name"]) == ("7078", "AU000000BHP4", "BHP BILLITON LTD")
    assert utc(bhp["timestamp"]) == "2014-03-02T13:00:00.000000Z"  # ex-date midnight AEDT
    assert bhp["is_active"] is True
    assert dividends["RIO"]["vendor_data"]["currency"] == "AUD"
    assert dividends["RIO"]["vendor_data"]["gross_amount"] == "1.716286"


def test_no_records_files_are_reported_empty_not_rejected(sample: SampleRun) -> None:
    assert sample.empty_files == ["reference-data/mergers.csv", "reference-data/stock_splits.csv"]
    assert {r["vendor_data"]["record_type"] for r in sample.reference} == {"company", "dividend"}
    assert len(sample.reference) == 6


def test_real_merger_and_split_rows_become_reference_records(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    write_rows(root / "reference-data" / "mergers.csv", ["company id,effective date,ratio", "7078,03/12/2014,1:2"])
    write_rows(
        root / "reference-data" / "stock_splits.csv",
        ["company id,effective date,ratio", "--- NO RECORDS TO REPORT ---", "9999,03/12/2014,2:1"],
    )
    source = AsxSource(root)
    batches = list(source.batches())
    merger = next(r for r in records(batches, REFERENCE_DATA_V2) if r["vendor_data"]["record_type"] == "merger")
    assert merger["symbol"] == "BHP"
    assert merger["vendor_data"] == {"record_type": "merger", "effective_date": "2014-03-12", "ratio": "1:2"}
    assert utc(merger["timestamp"]) == "2014-03-11T13:00:00.000000Z"
    [split_reject] = rejects(batches)
    assert split_reject.reason == "unknown_company"
    assert split_reject.raw == b"9999,03/12/2014,2:1"
    assert split_reject.position == 3
    assert source.empty_files == ["reference-data/stock_splits.csv"]


def test_a_company_that_ended_before_the_coverage_end_is_inactive(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    info = root / "reference-data" / "company_info.csv"
    info.write_bytes(info.read_bytes() + b"9000,OLD,OLD CO LTD,AU000000OLD0,01/04/2000,06/30/2010\r\n")
    companies = {r["symbol"]: r for r in records(load(root), REFERENCE_DATA_V2)}
    assert companies["OLD"]["is_active"] is False
    assert companies["BHP"]["is_active"] is True


# --- rejects --------------------------------------------------------------------------------------------------


def test_malformed_row_and_bad_price_are_rejected_while_the_rest_of_the_chunk_survives(tmp_path: Path) -> None:
    root = copy_sample(tmp_path, "trades/3153.csv")
    path = root / "trades" / "3153.csv"
    lines = path.read_bytes().split(b"\r\n")[:-1]
    lines.insert(2, b"03/10/2014,13:55:41.879,1.11")
    lines.insert(5, b"03/11/2014,10:00:00.000,1.1x,500,0,,")
    path.write_bytes(b"".join(line + b"\r\n" for line in lines))

    [batch] = [b for b in load(root) if b.spec is TRADES_V2]
    assert (batch.rows_read, len(batch.records), len(batch.rejects)) == (13, 11, 2)
    malformed, bad_price = batch.rejects
    assert (malformed.reason, malformed.position, malformed.raw) == (
        "wrong_column_count",
        3,
        b"03/10/2014,13:55:41.879,1.11",
    )
    assert (bad_price.reason, bad_price.position, bad_price.raw) == (
        "bad_price",
        6,
        b"03/11/2014,10:00:00.000,1.1x,500,0,,",
    )
    assert bad_price.origin == str(path)
    assert "1.1x" in bad_price.detail and "line 6" in bad_price.detail
    assert [r["platform_sequence"] for r in batch.records][:3] == [1, 2, 4]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("13/45/2014,10:00:00.000,1.0,1.1,100,100", "bad_date"),
        ("03/10/2014,25:00:00.000,1.0,1.1,100,100", "bad_time"),
        ("03/10/2014,10:00:00,000,1.0,1.1,100,100", "wrong_column_count"),
        ("03/10/2014,10:00:00.000,-1.0,1.1,100,100", "bad_price"),
        ("03/10/2014,10:00:00.000,1.0,1.1,-100,100", "negative_quantity"),
        ("03/10/2014,10:00:00.000,1.0,1.1,1e400,100", "bad_quantity"),
    ],
)
def test_each_kind_of_bad_quote_row_is_rejected_with_its_reason(tmp_path: Path, row: str, reason: str) -> None:
    root = copy_sample(tmp_path)
    write_rows(root / "quotes" / "7078.csv", ["03/10/2014,10:00:00.000,1.0,1.1,100,100", row])
    batches = [b for b in load(root) if b.spec is QUOTES_V2]
    [reject] = rejects(batches)
    assert (reject.reason, reject.raw, reject.position) == (reason, row.encode(), 2)
    assert len(records(batches, QUOTES_V2)) == 1


def test_undecodable_bytes_are_rejected_with_the_bytes_kept(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    path = root / "trades" / "7078.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"03/10/2014,10:00:00.000,36.7,10,0,,\r\n03/10/2014,10:00:00.000,36.7,\xff10,0,,\r\n")
    [reject] = rejects(load(root))
    assert (reject.reason, reject.raw) == ("bad_encoding", b"03/10/2014,10:00:00.000,36.7,\xff10,0,,")


def test_a_file_for_an_unknown_company_rejects_every_row(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    write_rows(root / "trades" / "9999.csv", ["03/10/2014,10:00:00.000,1.0,100,0,,"] * 3)
    [batch] = [b for b in load(root) if b.spec is TRADES_V2]
    assert (batch.rows_read, len(batch.records)) == (3, 0)
    assert [r.reason for r in batch.rejects] == ["unknown_company"] * 3
    assert [r.position for r in batch.rejects] == [1, 2, 3]
    assert "9999" in batch.rejects[0].detail


def test_trailing_blank_lines_are_not_rows_but_a_blank_line_between_rows_is_rejected(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    path = root / "trades" / "7078.csv"
    path.parent.mkdir(parents=True)
    row = b"03/10/2014,10:00:00.000,36.7,10,0,,"
    path.write_bytes(row + b"\r\n\r\n" + row + b"\r\n\r\n\r\n")
    [batch] = [b for b in load(root) if b.spec is TRADES_V2]
    assert (batch.rows_read, len(batch.records)) == (3, 2)
    [blank] = batch.rejects
    assert (blank.reason, blank.position, blank.raw) == ("blank_line", 2, b"")


# --- identity: reloads and edited files -----------------------------------------------------------------------


def test_reloading_the_same_files_yields_identical_records(tmp_path: Path) -> None:
    root = copy_sample(tmp_path, "trades/7181.csv", "quotes/7181.csv")

    def stable(batches: list[SourceBatch]) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "ingestion_timestamp"} for b in batches for r in b.records]

    assert stable(load(root)) == stable(load(root))


@pytest.mark.parametrize(
    "new_row",
    [b"03/14/2014,16:30:00.000,0.63,1000,0,,", b"03/14/2014,15:59:31.631,0.63,341,0,,"],
    ids=["new-trade", "identical-to-last-row"],
)
def test_appending_a_row_adds_exactly_one_new_message_id(tmp_path: Path, new_row: bytes) -> None:
    root = copy_sample(tmp_path, "trades/7181.csv")
    path = root / "trades" / "7181.csv"
    before = ids(load(root))
    path.write_bytes(path.read_bytes() + new_row + b"\r\n")
    after = ids(load(root))
    assert before <= after
    assert len(after - before) == 1


@pytest.mark.parametrize("copy_of_neighbour", [False, True], ids=["new-trade", "duplicate-tick"])
def test_inserting_a_row_mid_file_changes_no_existing_id(tmp_path: Path, copy_of_neighbour: bool) -> None:
    root = copy_sample(tmp_path, "trades/7181.csv", "quotes/7181.csv")
    before = ids(load(root))
    for kind in ("trades", "quotes"):
        path = root / kind / "7181.csv"
        lines = path.read_bytes().split(b"\r\n")[:-1]
        neighbour = lines[100]
        # A new row: the neighbour with "1" appended to its last column (trades: extra, quotes: ask volume).
        lines.insert(101, neighbour if copy_of_neighbour else neighbour + b"1")
        path.write_bytes(b"".join(line + b"\r\n" for line in lines))
    after = ids(load(root))
    assert before <= after
    assert len(after - before) == 2  # one new trade, one new quote


def test_a_day_that_reappears_later_in_a_file_still_gets_unique_ids(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    tick = "03/10/2014,10:00:00.000,36.0,100,0,,"
    write_rows(root / "trades" / "7078.csv", [tick, "03/11/2014,10:00:00.000,36.0,100,0,,", tick])
    trades = records(load(root), TRADES_V2)
    assert len({t["message_id"] for t in trades}) == 3
    assert [t["trade_id"] for t in trades] == ["20140310-1", "20140311-1", "20140310-2"]


# --- time zone ------------------------------------------------------------------------------------------------


def test_sydney_local_time_converts_to_utc_on_each_side_of_both_2014_dst_changes(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    rows = {
        "04/04/2014,10:00:00.000": "2014-04-03T23:00:00.000000Z",  # Fri before DST ends: AEDT, UTC+11
        "04/07/2014,10:00:00.000": "2014-04-07T00:00:00.000000Z",  # Mon after: AEST, UTC+10
        "04/06/2014,01:30:00.000": "2014-04-05T14:30:00.000000Z",  # change day, before 03:00 AEDT → 02:00
        "04/06/2014,03:30:00.000": "2014-04-05T17:30:00.000000Z",  # change day, after
        "10/03/2014,10:00:00.000": "2014-10-03T00:00:00.000000Z",  # Fri before DST starts: AEST
        "10/06/2014,10:00:00.000": "2014-10-05T23:00:00.000000Z",  # Mon after: AEDT
        "10/05/2014,01:30:00.000": "2014-10-04T15:30:00.000000Z",  # change day, before 02:00 AEST → 03:00
        "10/05/2014,03:30:00.000": "2014-10-04T16:30:00.000000Z",  # change day, after
        "04/04/2014,15:59:59.999": "2014-04-04T04:59:59.999000Z",  # back to a cached day: still UTC+11
    }
    write_rows(root / "trades" / "7078.csv", [f"{when},36.0,100,0,," for when in rows])
    trades = records(load(root), TRADES_V2)
    got = {r["vendor_data"]["local_time"].replace(" ", ","): utc(r["timestamp"]) for r in trades}
    assert got == rows


def test_wall_clock_times_the_dst_change_skips_or_repeats_are_rejected(tmp_path: Path) -> None:
    root = copy_sample(tmp_path)
    write_rows(
        root / "trades" / "7078.csv",
        ["04/06/2014,02:30:00.000,36.0,100,0,,", "10/05/2014,02:30:00.000,36.0,100,0,,"],
    )
    assert [r.reason for r in rejects(load(root))] == ["ambiguous_local_time", "nonexistent_local_time"]


# --- schema fit -----------------------------------------------------------------------------------------------


def test_records_fit_the_v2_arrow_and_avro_schemas(tmp_path: Path) -> None:
    root = copy_sample(tmp_path, "trades/3153.csv", "quotes/3153.csv")
    batches = load(root)
    for spec in (TRADES_V2, QUOTES_V2, REFERENCE_DATA_V2):
        rows = records(batches, spec)
        assert rows
        assert [list(r) for r in rows[:1]] == [spec.field_names]
        assert records_to_arrow(spec, rows).num_rows == len(rows)
        for row in rows:
            fastavro.schemaless_writer(io.BytesIO(), parsed_schema(spec), row)
