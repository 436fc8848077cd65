"""The ASX row parser: a tick file (trades/<company_id>.csv or quotes/<company_id>.csv) read line by line into
V2 trade or quote records, and every row it cannot use into a `Reject` with its raw bytes, never a silent drop.

It handles and explains every odd row (blank lines, bad encodings, DST change days, reopened days, ...); the
columnar parser (`columnar.py`) takes the plain files and hands any other file here. Both follow `rules.py`.

Tick files (no header, CRLF; see data/samples/asx/README.md):

    trades/<company_id>.csv   date MM/DD/YYYY, time HH:MM:SS.mmm (Sydney wall clock), price, volume, qualifier
                              code, venue ('X' or empty), extra (mostly empty, sometimes a price)
    quotes/<company_id>.csv   date, time, bid price, ask price, bid volume, ask volume (price 0 = no order)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from k2.core.batch import SourceBatch
from k2.schema.codecs import message_ids_for, now_micros
from k2.schema.fields import TRADES_V2, AssetClass, RecordSpec
from k2.sources.asx.reference import Company
from k2.sources.asx.rules import (
    BOOK_STATE,
    COMPANY_ID,
    CROSSED,
    CURRENCY,
    EMPTY,
    EQUITIES,
    EXCHANGE,
    EXTRA,
    LOCAL_TIME,
    LOCAL_TIME_SEPARATOR,
    LOCKED,
    NORMAL,
    ONE_SIDED,
    PRICES,
    QUALIFIER,
    QUANTITIES,
    UNKNOWN_SIDE,
    VENUE,
    Day,
    RowError,
    parse_price,
    parse_quantity,
    reject,
    source_id,
)


class _TickFile:
    """Per-file state: trading-date clocks, per-day sequences and the duplicate ordinals behind message ids."""

    def __init__(self, company: Company, spec: RecordSpec) -> None:
        self.company_id = company.company_id
        self.symbol = company.symbol
        self.data_type = spec.data_type.value
        self._message_id = message_ids_for(EXCHANGE, self.data_type, self.symbol)
        self._days: dict[str, Day] = {}
        self._sequence: dict[str, int] = {}  # trading day → records so far; a rejected row takes no number
        self._open_day = ""
        self._seen: dict[str, int] = {}  # row text → times seen, for the open day only
        self._closed: set[str] = set()
        self._reopened: dict[str, int] = {}
        self._suffix = ""

    def _new_day(self, text: str) -> Day:
        day = self._days[text] = Day(text)
        return day

    def _identify(self, day: Day, text: str) -> tuple[int, str]:
        """source_sequence and message_id for a row that became a record.

        The files carry no venue id, and a row's position is no identity: a late-reported trade inserted
        mid-file would shift every position after it, so a reload would mint new ids for old trades and the
        lake would hold them twice. The id is therefore built from the content: trading date + the raw row
        text + "#" + how many identical rows of the same symbol-day came before it. The ordinal keeps genuine
        identical ticks apart (BHP has 3,193 rows identical to an earlier one: same ms, price, volume), and
        adding a row anywhere changes no existing id.
        """
        if day.compact != self._open_day:
            self._switch_day(day.compact)
        ordinal = self._seen.get(text, 0)
        self._seen[text] = ordinal + 1
        sequence = self._sequence.get(day.compact, 0) + 1
        self._sequence[day.compact] = sequence
        return sequence, self._message_id(source_id(day.compact, text, ordinal, self._suffix))

    def _switch_day(self, compact: str) -> None:
        # Ordinals are counted for the open day only (identical rows share their date), so memory is one day's
        # rows, not the file's. Files are grouped by day; if a closed day reappears its earlier counts are gone,
        # so that stretch gets an "@n" suffix: ids stay unique, at the price of stability for that stretch only.
        if self._open_day:
            self._closed.add(self._open_day)
        self._open_day = compact
        self._seen = {}
        if compact in self._closed:
            self._reopened[compact] = self._reopened.get(compact, 0) + 1
            self._suffix = f"@{self._reopened[compact]}"
        else:
            self._suffix = ""

    def trade(self, text: str, line_no: int, ingested: int) -> dict[str, Any]:
        cells = text.split(",")
        if len(cells) != 7:
            raise RowError(
                "wrong_column_count",
                f"expected 7 columns (date,time,price,volume,qualifier,venue,extra), found {len(cells)}",
            )
        date_text, time_text, price_text, volume_text, qualifier, venue, extra = cells
        day = self._days.get(date_text) or self._new_day(date_text)
        timestamp = day.utc_micros(time_text)
        price = PRICES.get(price_text) or parse_price(price_text)
        if not price:
            raise RowError("bad_price", f"price {price_text!r} is zero: a trade needs a price")
        quantity = QUANTITIES.get(volume_text) or parse_quantity(volume_text)
        if not quantity:
            raise RowError("bad_quantity", f"volume {volume_text!r} is zero: a trade needs a quantity")
        sequence, mid = self._identify(day, text)
        vendor = {
            QUALIFIER: qualifier,
            COMPANY_ID: self.company_id,
            LOCAL_TIME: f"{date_text}{LOCAL_TIME_SEPARATOR}{time_text}",
        }
        if venue:
            vendor[VENUE] = venue
        if extra:
            vendor[EXTRA] = extra
        return {
            "message_id": mid,
            "trade_id": f"{day.compact}-{sequence}",
            "symbol": self.symbol,
            "exchange": EXCHANGE,
            "asset_class": EQUITIES,
            "timestamp": timestamp,
            "price": price,
            "quantity": quantity,
            "currency": CURRENCY,
            "side": UNKNOWN_SIDE,
            "trade_conditions": [qualifier] if qualifier else [],
            "source_sequence": sequence,
            "ingestion_timestamp": ingested,
            "platform_sequence": line_no,
            "vendor_data": vendor,
        }

    def quote(self, text: str, line_no: int, ingested: int) -> dict[str, Any]:
        cells = text.split(",")
        if len(cells) != 6:
            raise RowError(
                "wrong_column_count",
                f"expected 6 columns (date,time,bid,ask,bid volume,ask volume), found {len(cells)}",
            )
        date_text, time_text, bid_text, ask_text, bid_volume, ask_volume = cells
        day = self._days.get(date_text) or self._new_day(date_text)
        timestamp = day.utc_micros(time_text)
        bid = PRICES.get(bid_text) or parse_price(bid_text)
        ask = PRICES.get(ask_text) or parse_price(ask_text)
        bid_quantity = QUANTITIES.get(bid_volume) or parse_quantity(bid_volume)
        ask_quantity = QUANTITIES.get(ask_volume) or parse_quantity(ask_volume)
        # A price of 0 ("0.0") is how the files say a side has no order: null, not a zero-priced quote.
        if not bid:
            bid = bid_quantity = None
        if not ask:
            ask = ask_quantity = None
        if bid is not None and ask is not None:
            # Crossed and locked books are real in pre-open auction phases; kept, and flagged for consumers.
            state = CROSSED if bid > ask else LOCKED if bid == ask else NORMAL
        else:
            state = EMPTY if bid is None and ask is None else ONE_SIDED
        sequence, mid = self._identify(day, text)
        return {
            "message_id": mid,
            "quote_id": f"{day.compact}-{sequence}",
            "symbol": self.symbol,
            "exchange": EXCHANGE,
            "asset_class": EQUITIES,
            "timestamp": timestamp,
            "bid_price": bid,
            "bid_quantity": bid_quantity,
            "ask_price": ask,
            "ask_quantity": ask_quantity,
            "currency": CURRENCY,
            "source_sequence": sequence,
            "ingestion_timestamp": ingested,
            "platform_sequence": line_no,
            "vendor_data": {
                BOOK_STATE: state,
                COMPANY_ID: self.company_id,
                LOCAL_TIME: f"{date_text}{LOCAL_TIME_SEPARATOR}{time_text}",
            },
        }


def row_batches(
    path: Path, spec: RecordSpec, company: Company | None, chunk_rows: int, advance: Callable[[int], None]
) -> Iterator[SourceBatch]:
    """The row parser's batches of one tick file (`company` None: not in company_info.csv, every row rejected), of
    at most `chunk_rows` rows each; `advance` is called with the bytes consumed before each batch is yielded, and
    with the rest at the end (their sum is the file size)."""
    parse = None
    if company is not None:
        tick_file = _TickFile(company, spec)
        parse = tick_file.trade if spec is TRADES_V2 else tick_file.quote
    unknown = (
        f"company id {path.stem!r} (the file name) is not in reference-data/company_info.csv;"
        " add the company there and reload"
    )
    blanks: list[tuple[int, bytes]] = []  # held back: blank lines at the end of a file are not rows
    reported = 0
    batch = SourceBatch(spec, AssetClass.EQUITIES, EXCHANGE)
    ingested = now_micros()
    records, rejects = batch.records, batch.rejects
    with path.open("rb") as f:
        # platform_sequence is the 1-based line number: the running row index of a header-less file, and
        # the same on every reload.
        for line_no, line in enumerate(f, 1):
            raw = line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n")
            if not raw or raw.isspace():
                blanks.append((line_no, raw))
                continue
            if blanks:
                rejects.extend(reject("blank_line", "blank line between rows", b, path, n) for n, b in blanks)
                blanks.clear()
            if parse is None:
                rejects.append(reject("unknown_company", unknown, raw, path, line_no))
            else:
                try:
                    records.append(parse(raw.decode(), line_no, ingested))
                except RowError as exc:
                    rejects.append(reject(exc.reason, exc.detail, raw, path, line_no))
                except UnicodeDecodeError as exc:
                    rejects.append(reject("bad_encoding", f"not UTF-8 text ({exc.reason})", raw, path, line_no))
            if len(records) + len(rejects) >= chunk_rows:
                batch.rows_read = len(records) + len(rejects)
                advance(f.tell() - reported)
                reported = f.tell()
                yield batch
                batch = SourceBatch(spec, AssetClass.EQUITIES, EXCHANGE)
                ingested = now_micros()
                records, rejects = batch.records, batch.rejects
        advance(f.tell() - reported)
    batch.rows_read = len(records) + len(rejects)
    if batch.rows_read:
        yield batch
