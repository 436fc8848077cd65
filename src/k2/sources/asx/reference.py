"""ASX reference data (company_info, dividends, mergers, stock_splits) → reference_data_v2 records, and the
company_info map (`Company`) every tick file depends on. Dates follow `rules.py`, like the tick files'.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from k2.core.batch import Reject, SourceBatch
from k2.schema.codecs import DecimalError, message_id, parse_decimal
from k2.schema.fields import REFERENCE_DATA_V2, AssetClass
from k2.sources.asx.rules import EQUITIES, EXCHANGE, RowError, parse_asx_date, reject, sydney_midnight_micros

# The vendor writes this line under the header of a corporate-action file that has nothing in it. It is an
# explicit "empty" marker, not a row: counting it as read (or rejected) would misreport the file.
NO_RECORDS_MARKER = "--- NO RECORDS TO REPORT ---"

_CURRENCY = re.compile(r"[A-Z]{3}", re.ASCII)


@dataclass(frozen=True)
class Company:
    """One company_info.csv row: the file-name id → symbol mapping every tick file depends on."""

    company_id: str
    symbol: str
    name: str
    isin: str
    listing_date: date
    delisting_date: date | None


@dataclass
class CsvFile:
    """A small header-led reference file, split into rows. Reference files are a few lines, so reading one whole
    is fine (the tick files are streamed)."""

    path: Path
    header: list[str]  # normalised: lower case, spaces → "_"
    rows: list[tuple[int, bytes, list[str]]]  # (1-based line number, raw bytes, cells)
    rejects: list[Reject]  # blank lines between rows, and lines that are not UTF-8 text
    empty_marker: bool  # the file said NO RECORDS TO REPORT


def read_csv_file(path: Path) -> CsvFile:
    lines = path.read_bytes().split(b"\n")
    header: list[str] = []
    rows: list[tuple[int, bytes, list[str]]] = []
    rejects: list[Reject] = []
    blanks: list[tuple[int, bytes]] = []  # held back: blank lines at the end of a file are not rows
    marker = False
    for line_no, line in enumerate(lines, 1):
        raw = line[:-1] if line.endswith(b"\r") else line
        if not raw.strip():
            blanks.append((line_no, raw))
            continue
        rejects.extend(reject("blank_line", "blank line between rows", b, path, n) for n, b in blanks)
        blanks.clear()
        try:
            text = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            rejects.append(reject("bad_encoding", f"not UTF-8 text ({exc.reason})", raw, path, line_no))
            continue
        if not header:
            header = [h.strip().lower().replace(" ", "_") for h in next(csv.reader([text]))]
        elif text.strip() == NO_RECORDS_MARKER:
            marker = True
        else:
            rows.append((line_no, raw, [cell.strip() for cell in next(csv.reader([text]))]))
    return CsvFile(path, header, rows, rejects, marker)


def _cells(file: CsvFile, cells: list[str], required: tuple[str, ...]) -> dict[str, str]:
    missing = [c for c in required if c not in file.header]
    if missing:
        raise RowError("bad_header", f"header lacks column(s) {', '.join(missing)}; cannot read the row")
    if len(cells) != len(file.header):
        raise RowError("wrong_column_count", f"expected {len(file.header)} columns, found {len(cells)}")
    return dict(zip(file.header, cells, strict=True))


def load_companies(path: Path, ingested: int) -> tuple[dict[str, Company], SourceBatch, CsvFile]:
    """company_info.csv → the id → Company map, plus one reference record (record_type "company") per company."""
    file = read_csv_file(path)
    batch = SourceBatch(REFERENCE_DATA_V2, AssetClass.EQUITIES, EXCHANGE, rejects=list(file.rejects))
    required = ("company_id", "symbol", "company_name", "isin", "start_date", "end_date")
    companies: dict[str, Company] = {}
    first_line: dict[str, int] = {}
    for line_no, raw, cells in file.rows:
        try:
            row = _cells(file, cells, required)
            if not row["company_id"] or not row["symbol"]:
                raise RowError("missing_field", "company_id and symbol must both be present")
            if row["company_id"] in companies:
                raise RowError(
                    "duplicate_company",
                    f"company id {row['company_id']} is already mapped on line {first_line[row['company_id']]};"
                    " one id must name one symbol",
                )
            start = parse_asx_date(row["start_date"])
            end = parse_asx_date(row["end_date"]) if row["end_date"] else None
            if end is not None and end < start:
                raise RowError("bad_date", f"end date {row['end_date']} is before start date {row['start_date']}")
        except RowError as exc:
            batch.rejects.append(reject(exc.reason, exc.detail, raw, path, line_no))
            continue
        company = Company(row["company_id"], row["symbol"], row["company_name"], row["isin"], start, end)
        companies[company.company_id] = company
        first_line[company.company_id] = line_no

    # is_active rule: the vendor writes the end of its coverage as end_date for a company still listed when the
    # extract was cut (all four sample rows say 03/31/2014, after the 10-14 March ticks). So a company is active
    # when it has no end date, or its end date reaches the latest end date in the file; an earlier end date is a
    # real delisting. Deterministic (no wall clock), so a reload produces the same record.
    coverage_end = max((c.delisting_date for c in companies.values() if c.delisting_date), default=None)
    for c in companies.values():
        active = c.delisting_date is None or coverage_end is None or c.delisting_date >= coverage_end
        key = f"company:{c.company_id}:{c.listing_date.isoformat()}"
        batch.records.append(
            _reference_record(
                c, key, active, sydney_midnight_micros(c.listing_date), ingested, {"record_type": "company"}
            )
        )
    batch.rows_read = len(batch.records) + len(batch.rejects)
    return companies, batch, file


# Corporate-action files: the column giving the record's effective date, and vendor_data names for columns whose
# file name reads badly downstream.
EVENT_FILES: dict[str, tuple[str, str]] = {
    # file name: (record_type, effective-date column)
    "dividends.csv": ("dividend", "ex_date"),
    "mergers.csv": ("merger", "effective_date"),
    "stock_splits.csv": ("stock_split", "effective_date"),
}
_RENAME = {"currency_type": "currency"}
_AMOUNTS = ("net_amount", "gross_amount")


def load_events(path: Path, companies: dict[str, Company], ingested: int) -> tuple[SourceBatch, CsvFile]:
    """dividends/mergers/stock_splits.csv → one reference record per row, joined to company_info by company id.

    Dates go to vendor_data as ISO yyyy-mm-dd, amounts as their exact text; the currency stays in vendor_data
    (BHP's March 2014 dividend is declared in USD). timestamp = effective date, 00:00 Sydney.
    """
    record_type, effective_column = EVENT_FILES[path.name]
    file = read_csv_file(path)
    batch = SourceBatch(REFERENCE_DATA_V2, AssetClass.EQUITIES, EXCHANGE, rejects=list(file.rejects))
    for line_no, raw, cells in file.rows:
        try:
            row = _cells(file, cells, ("company_id", effective_column))
            company = companies.get(row["company_id"])
            if company is None:
                raise RowError("unknown_company", f"company id {row['company_id']!r} is not in company_info.csv")
            vendor = {"record_type": record_type}
            for column, text in row.items():
                if column == "company_id":
                    continue
                if column.endswith("date") and text:
                    text = parse_asx_date(text).isoformat()
                elif column in _AMOUNTS:
                    try:
                        parse_decimal(text)
                    except DecimalError as exc:
                        raise RowError("bad_amount", f"{column} {exc}") from None
                elif column == "currency_type" and not _CURRENCY.fullmatch(text):
                    raise RowError("bad_currency", f"currency {text!r} is not a 3-letter ISO code")
                vendor[_RENAME.get(column, column)] = text
            effective = parse_asx_date(row[effective_column])
        except RowError as exc:
            batch.rejects.append(reject(exc.reason, exc.detail, raw, path, line_no))
            continue
        # Every column is in the key: a vendor correction (say, a restated amount) is a new record, never
        # silently deduplicated against the old one.
        key = f"{record_type}:{company.company_id}:" + ":".join(v for k, v in vendor.items() if k != "record_type")
        listed = company.listing_date <= effective and (
            company.delisting_date is None or effective <= company.delisting_date
        )
        batch.records.append(
            _reference_record(company, key, listed, sydney_midnight_micros(effective), ingested, vendor)
        )
    batch.rows_read = len(batch.records) + len(batch.rejects)
    return batch, file


def _reference_record(
    company: Company, key: str, active: bool, timestamp: int, ingested: int, vendor: dict[str, str]
) -> dict[str, Any]:
    return {
        "message_id": message_id(EXCHANGE, REFERENCE_DATA_V2.data_type.value, company.symbol, key),
        "company_id": company.company_id,
        "symbol": company.symbol,
        "exchange": EXCHANGE,
        "asset_class": EQUITIES,
        "isin": company.isin or None,
        "company_name": company.name or None,
        "listing_date": company.listing_date,
        "delisting_date": company.delisting_date,
        "is_active": active,
        "timestamp": timestamp,
        "ingestion_timestamp": ingested,
        "vendor_data": vendor,
    }


def iter_reference_paths(reference_dir: Path) -> Iterator[Path]:
    """The corporate-action files present, in a fixed order (a missing one simply has nothing to load)."""
    for name in EVENT_FILES:
        if (reference_dir / name).is_file():
            yield reference_dir / name
