"""ASX equities files → V2 trades, quotes and reference-data records.

Layout of the directory handed to `AsxSource` (as the files really are; see data/asx-sample/README.md):

    trades/<company_id>.csv   no header, CRLF; date MM/DD/YYYY, time HH:MM:SS.mmm (Sydney wall clock), price,
                              volume, qualifier code, venue ('X' or empty), extra (mostly empty, sometimes a price)
    quotes/<company_id>.csv   no header; date, time, bid price, ask price, bid volume, ask volume (price 0 = no order)
    reference-data/           company_info.csv (id → symbol), dividends.csv, mergers.csv, stock_splits.csv

Tick files are streamed line by line and yielded in chunks; a row that cannot be used becomes a `Reject` with its
raw bytes, never a silent drop.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from k2.schema.codecs import (
    DecimalError,
    days_from_date,
    message_ids_for,
    micros_from_datetime,
    now_micros,
    parse_decimal,
)
from k2.schema.fields import QUOTES_V2, TRADES_V2, AssetClass, RecordSpec, Side
from k2.sources.asx.reference import (
    EQUITIES,
    EXCHANGE,
    SYDNEY,
    Company,
    CsvFile,
    RowError,
    iter_reference_paths,
    load_companies,
    load_events,
    parse_asx_date,
    reject,
)
from k2.sources.base import SourceBatch

CURRENCY = "AUD"  # ASX trades and quotes are in AUD; only dividends name another currency
_UNKNOWN_SIDE = Side.UNKNOWN.value
_DAY_MICROS = 86_400_000_000
_parse_time = time.fromisoformat
_TIME = re.compile(r"\d\d:\d\d:\d\d(?:\.\d{1,6})?", re.ASCII)

# Prices and volumes repeat heavily (BHP's 91,631 trades: 299 distinct prices, 3,442 distinct volumes), so each
# distinct text is parsed and checked once; rows look the value up (`_PRICES.get(text) or _price(text)`: a miss, or
# a zero, takes the checking path). Decimal is immutable, so sharing the parsed values is safe.
_PRICES: dict[str, Decimal] = {}
_QUANTITIES: dict[str, Decimal] = {}
_CACHE_LIMIT = 1 << 16  # distinct texts kept per kind; later ones are parsed each time


def _time_of_day(text: str) -> int:
    """HH:MM:SS[.f…] → microseconds after local midnight."""
    # The files always write HH:MM:SS.mmm. For exactly that shape the C parser is ~2.5x faster than a regex plus
    # int() calls; the separator checks keep it from accepting the other ISO forms it knows (offsets, "T…").
    if len(text) == 12 and text[2] == ":" and text[5] == ":" and text[8] == ".":
        try:
            t = _parse_time(text)
        except ValueError:
            raise RowError("bad_time", f"time {text!r} is not a valid HH:MM:SS.mmm") from None
        return ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond
    if _TIME.fullmatch(text) is None:
        raise RowError("bad_time", f"time {text!r} is not HH:MM:SS.mmm")
    hours, minutes, seconds = int(text[0:2]), int(text[3:5]), int(text[6:8])
    if hours > 23 or minutes > 59 or seconds > 59:
        raise RowError("bad_time", f"time {text!r} is out of range")
    return ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + int(text[9:].ljust(6, "0"))


def _constant_day_base(day: date) -> int | None:
    """UTC micros of local 00:00 when one UTC offset covers the whole local day, else None (a DST change day).

    Checking both ends of the day, each with fold 0 and 1, catches a change at any hour, including one at
    midnight. Sydney changes at most once a day (first Sunday of April and of October), so the ends suffice.
    """
    start = datetime(day.year, day.month, day.day, tzinfo=SYDNEY)
    end = datetime.combine(day, time.max, tzinfo=SYDNEY)
    offsets = {moment.utcoffset() for moment in (start, start.replace(fold=1), end, end.replace(fold=1))}
    if len(offsets) != 1:
        return None
    (offset,) = offsets
    assert offset is not None  # a ZoneInfo always answers
    return days_from_date(day) * _DAY_MICROS - offset // timedelta(microseconds=1)


class _Day:
    """One trading date: its UTC base precomputed, so the hot loop adds integers instead of calling zoneinfo."""

    __slots__ = ("base", "compact", "date")

    def __init__(self, text: str) -> None:
        self.date = parse_asx_date(text)
        self.compact = f"{self.date.year:04d}{self.date.month:02d}{self.date.day:02d}"
        self.base = _constant_day_base(self.date)

    def utc_micros(self, time_text: str) -> int:
        local = _time_of_day(time_text)
        if self.base is not None:
            return self.base + local
        return self._utc_micros_on_change_day(local)

    def _utc_micros_on_change_day(self, local: int) -> int:
        # On the two change days (both Sundays: ASX does not trade) an hour of wall clock is missing or doubled.
        # A row there cannot be placed in time without guessing, so it is rejected rather than shifted by an hour.
        seconds, micros = divmod(local, 1_000_000)
        minutes, second = divmod(seconds, 60)
        hour, minute = divmod(minutes, 60)
        d = self.date
        moment = datetime(d.year, d.month, d.day, hour, minute, second, micros, tzinfo=SYDNEY)
        if moment.utcoffset() != moment.replace(fold=1).utcoffset():
            back = moment.astimezone(UTC).astimezone(SYDNEY).replace(tzinfo=None)
            if back != moment.replace(tzinfo=None):
                raise RowError("nonexistent_local_time", f"{moment:%Y-%m-%d %H:%M:%S} is skipped by the DST change")
            raise RowError("ambiguous_local_time", f"{moment:%Y-%m-%d %H:%M:%S} occurs twice (DST ends)")
        return micros_from_datetime(moment)


def _price(text: str) -> Decimal:
    try:
        value = parse_decimal(text)
    except DecimalError as exc:
        raise RowError("bad_price", f"price {exc}") from None
    if value < 0:
        raise RowError("bad_price", f"price {text!r} is negative")
    if len(_PRICES) < _CACHE_LIMIT:
        _PRICES[text] = value
    return value


def _quantity(text: str) -> Decimal:
    try:
        value = parse_decimal(text)
    except DecimalError as exc:
        raise RowError("bad_quantity", f"volume {exc}") from None
    if value < 0:
        raise RowError("negative_quantity", f"volume {text!r} is negative")
    if len(_QUANTITIES) < _CACHE_LIMIT:
        _QUANTITIES[text] = value
    return value


class _TickFile:
    """Per-file state: trading-date clocks, per-day sequences and the duplicate ordinals behind message ids."""

    def __init__(self, company: Company, spec: RecordSpec) -> None:
        self.company_id = company.company_id
        self.symbol = company.symbol
        self.data_type = spec.data_type.value
        self._message_id = message_ids_for(EXCHANGE, self.data_type, self.symbol)
        self._days: dict[str, _Day] = {}
        self._sequence: dict[str, int] = {}  # trading day → records so far; a rejected row takes no number
        self._open_day = ""
        self._seen: dict[str, int] = {}  # row text → times seen, for the open day only
        self._closed: set[str] = set()
        self._reopened: dict[str, int] = {}
        self._suffix = ""

    def _new_day(self, text: str) -> _Day:
        day = self._days[text] = _Day(text)
        return day

    def _identify(self, day: _Day, text: str) -> tuple[int, str]:
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
        source_id = f"{day.compact}|{text}#{ordinal}{self._suffix}"
        return sequence, self._message_id(source_id)

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
        price = _PRICES.get(price_text) or _price(price_text)
        if not price:
            raise RowError("bad_price", f"price {price_text!r} is zero: a trade needs a price")
        quantity = _QUANTITIES.get(volume_text) or _quantity(volume_text)
        if not quantity:
            raise RowError("bad_quantity", f"volume {volume_text!r} is zero: a trade needs a quantity")
        sequence, mid = self._identify(day, text)
        vendor = {"qualifier": qualifier, "company_id": self.company_id, "local_time": f"{date_text} {time_text}"}
        if venue:
            vendor["venue"] = venue
        if extra:
            vendor["extra"] = extra
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
            "side": _UNKNOWN_SIDE,
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
        bid = _PRICES.get(bid_text) or _price(bid_text)
        ask = _PRICES.get(ask_text) or _price(ask_text)
        bid_quantity = _QUANTITIES.get(bid_volume) or _quantity(bid_volume)
        ask_quantity = _QUANTITIES.get(ask_volume) or _quantity(ask_volume)
        # A price of 0 ("0.0") is how the files say a side has no order: null, not a zero-priced quote.
        if not bid:
            bid = bid_quantity = None
        if not ask:
            ask = ask_quantity = None
        if bid is not None and ask is not None:
            # Crossed and locked books are real in pre-open auction phases; kept, and flagged for consumers.
            state = "crossed" if bid > ask else "locked" if bid == ask else "normal"
        else:
            state = "empty" if bid is None and ask is None else "one_sided"
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
                "book_state": state,
                "company_id": self.company_id,
                "local_time": f"{date_text} {time_text}",
            },
        }


class AsxSource:
    """ASX equities files in one directory → reference batches first, then trades and quotes, file by file.

    `batches()` yields `SourceBatch`es of at most `chunk_rows` rows each, never mixing files. `progress`, if set
    (also assignable later), is called with the number of bytes consumed since its last call, so it can drive
    `rich.progress.Progress.advance` directly; its calls add up to `total_bytes()`. After a run, `empty_files`
    names the files that said "--- NO RECORDS TO REPORT ---" and `companies` maps company ids to companies.
    Trades and quotes of plain files come as Arrow tables (`SourceBatch.table`), everything else as dicts;
    `SourceBatch.all_records()` gives dicts either way.
    """

    def __init__(
        self,
        directory: Path,
        chunk_rows: int = 50_000,
        progress: Callable[[int], None] | None = None,
        *,
        columnar: bool = True,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.directory = Path(directory)
        self.chunk_rows = chunk_rows
        self.progress = progress
        self.columnar = columnar  # False: every tick file through the row parser (batches of dict records)
        self.empty_files: list[str] = []
        self.companies: dict[str, Company] = {}

    def describe(self) -> str:
        return f"ASX equities files in {self.directory}"

    def total_bytes(self) -> int:
        """Bytes `batches()` will read: every file it loads, reference data included."""
        return sum(path.stat().st_size for path in self._paths())

    def batches(self) -> Iterator[SourceBatch]:
        reference = self.directory / "reference-data"
        company_path = reference / "company_info.csv"
        if not company_path.is_file():
            raise FileNotFoundError(
                f"{company_path} is missing: ASX tick files are named by company id and this file maps ids to"
                " symbols. Point AsxSource at the directory holding trades/, quotes/ and reference-data/."
            )
        self.empty_files = []
        self.companies, batch, file = load_companies(company_path, now_micros())
        yield from self._reference_batches(batch, file)
        for path in iter_reference_paths(reference):
            batch, file = load_events(path, self.companies, now_micros())
            yield from self._reference_batches(batch, file)
        for path in self._tick_paths("trades"):
            yield from self._tick_batches(path, TRADES_V2)
        for path in self._tick_paths("quotes"):
            yield from self._tick_batches(path, QUOTES_V2)

    def _paths(self) -> list[Path]:
        reference = self.directory / "reference-data"
        company_path = reference / "company_info.csv"
        heads = [company_path] if company_path.is_file() else []
        return [*heads, *iter_reference_paths(reference), *self._tick_paths("trades"), *self._tick_paths("quotes")]

    def _tick_paths(self, kind: str) -> list[Path]:
        folder = self.directory / kind
        return sorted(folder.glob("*.csv")) if folder.is_dir() else []

    def _advance(self, nbytes: int) -> None:
        if self.progress is not None and nbytes:
            self.progress(nbytes)

    def _reference_batches(self, batch: SourceBatch, file: CsvFile) -> Iterator[SourceBatch]:
        if file.empty_marker:
            self.empty_files.append(file.path.relative_to(self.directory).as_posix())
        self._advance(file.path.stat().st_size)
        rows: list[tuple[bool, Any]] = [(True, r) for r in batch.records] + [(False, r) for r in batch.rejects]
        for start in range(0, len(rows), self.chunk_rows):
            part = rows[start : start + self.chunk_rows]
            yield SourceBatch(
                batch.spec,
                batch.asset_class,
                batch.exchange,
                records=[r for is_record, r in part if is_record],
                rejects=[r for is_record, r in part if not is_record],
                rows_read=len(part),
            )

    def _tick_batches(self, path: Path, spec: RecordSpec) -> Iterator[SourceBatch]:
        """A tick file's batches: columnar (k2.sources.asx.columnar; ~6x faster, same records) when the file is
        in the plain common shape, else from the row parser, which handles and explains every odd row."""
        company = self.companies.get(path.stem)
        if self.columnar:
            from k2.sources.asx.columnar import plain_tick_chunks  # that module builds on this one

            chunks = plain_tick_chunks(path, company, spec, self.chunk_rows)
            if chunks is not None:
                for chunk in chunks:
                    self._advance(chunk.bytes_read)
                    if chunk.rows_read:
                        yield SourceBatch(
                            spec,
                            AssetClass.EQUITIES,
                            EXCHANGE,
                            rejects=chunk.rejects,
                            rows_read=chunk.rows_read,
                            table=chunk.table,
                        )
                return
        yield from self._row_batches(path, spec, company)

    def _row_batches(self, path: Path, spec: RecordSpec, company: Company | None) -> Iterator[SourceBatch]:
        """The row parser's batches of one tick file (`company` None: not in company_info.csv, every row rejected)."""
        parse = None
        if company is not None:
            tick_file = _TickFile(company, spec)
            parse = tick_file.trade if spec is TRADES_V2 else tick_file.quote
        unknown = (
            f"company id {path.stem!r} (the file name) is not in reference-data/company_info.csv;"
            " add the company there and reload"
        )
        chunk_rows = self.chunk_rows
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
                    self._advance(f.tell() - reported)
                    reported = f.tell()
                    yield batch
                    batch = SourceBatch(spec, AssetClass.EQUITIES, EXCHANGE)
                    ingested = now_micros()
                    records, rejects = batch.records, batch.rejects
            self._advance(f.tell() - reported)
        batch.rows_read = len(records) + len(rejects)
        if batch.rows_read:
            yield batch
