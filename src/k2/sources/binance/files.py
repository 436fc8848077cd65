"""Binance public-data files (https://data.binance.vision) → trades_v2, bars_v2, quotes_v2 and book_depth_v2 records.

File formats, as published (binance/binance-public-data README and the files themselves):

    trades     id, price, qty, quoteQty, time, isBuyerMaker[, isBestMatch]               (futures: no isBestMatch)
    aggTrades  aggId, price, qty, firstId, lastId, time, isBuyerMaker[, isBestMatch]     (futures: no isBestMatch)
    klines     open_time, open, high, low, close, volume, close_time, quote_volume, count,
               taker_buy_base_volume, taker_buy_quote_volume, ignore                    (12 columns)
    bookTicker update_id, best_bid_price, best_bid_qty, best_ask_price, best_ask_qty,
               transaction_time, event_time                                             (futures only)
    bookDepth  timestamp, percentage, depth, notional                                   (futures only)

- bookTicker rows are the futures `<symbol>@bookTicker` stream, one row per top-of-book change → quotes_v2 with the
  live stream's message ids (`bookTicker:<update_id>`). `timestamp` is event_time, the clock the live normalizer
  uses for a futures bookTicker (its `E`), so a day loaded from files and a day streamed line up on one clock;
  transaction_time (the matching engine's time of the change, at or before event_time) and event_time are kept
  verbatim in vendor_data. COIN-M quotes count contracts (vendor_data.quantity_unit).
- bookDepth rows are not price levels: at each time (text "2023-10-27 00:00:08", UTC) one row per band, the
  cumulative quantity (`depth`) and `notional` from the mid out to `percentage` percent (-5..5; negative: bids)
  → book_depth_v2, exact decimals, message id over the time and the band.

- Spot files have no header row; futures files have one (binance-public-data issue #283): the first line is a
  header when its first cell is not a number.
- Spot timestamps are milliseconds up to 2024-12-31 and MICROSECONDS from 2025-01-01 (issue #386: DOGEUSDT 1s
  open 1735689600000000). Each time value is classified by magnitude: >= 1e14 is microseconds (as milliseconds
  that would be the year 5138; as microseconds, 1e14 is 1973, before Binance existed).
- Booleans are True/False (spot) or true/false (futures).
- Each download may have a sibling `<file>.CHECKSUM` holding `<sha256 hex>  <file name>`; when present it is
  verified before anything is read, and a mismatch loads nothing.

Kind, symbol and interval come from the file name (BTCUSDT-trades-2024-01-01.zip, BTCUSDT-aggTrades-2024-01.zip,
BTCUSDT-1m-2021-11-27.csv, futures-cm-BTCUSD_PERP-1h-2023-10-27.csv); `kind=` overrides the kind. Futures files
go to exchange binance_um / binance_cm (asset class futures): the same symbol (BTCUSDT) trades on spot and on
USD-M futures with independent ids, so sharing "binance" would collide message ids.

Trade ids get the same message ids as the live stream (see k2.sources.binance.normalize), so a backfill over a
stretch the live feed already stored adds nothing.
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from k2.core.batch import Reject, SourceBatch
from k2.core.errors import UserError
from k2.schema.codecs import DecimalError, message_id, micros_from_datetime, now_micros, parse_decimal
from k2.schema.fields import BARS_V2, BOOK_DEPTH_V2, QUOTES_V2, TRADES_V2, AssetClass, DataType, RecordSpec
from k2.sources.binance.normalize import (
    EXCHANGE,
    PayloadError,
    TimeUnit,
    normalize_agg_trade,
    normalize_book_ticker,
    normalize_rest_trade,
    parse_amount,
)
from k2.sources.binance.symbols import QuoteResolver, UnknownSymbolError, shipped_directory

_MICROS_FROM = 10**14  # a time value at or above this is microseconds (see module doc)
_BARS = DataType.BARS.value
_BOOK_DEPTH = DataType.BOOK_DEPTH.value


class FileKind(StrEnum):
    TRADES = "trades"
    AGG_TRADES = "aggTrades"
    KLINES = "klines"
    BOOK_TICKER = "bookTicker"
    BOOK_DEPTH = "bookDepth"


# Published for futures only: a file of these kinds is never spot, header or not.
_FUTURES_ONLY = frozenset({FileKind.BOOK_TICKER, FileKind.BOOK_DEPTH})
_SPECS = {FileKind.KLINES: BARS_V2, FileKind.BOOK_TICKER: QUOTES_V2, FileKind.BOOK_DEPTH: BOOK_DEPTH_V2}


class Market(StrEnum):
    SPOT = "spot"
    USDM = "um"  # USD-M futures
    COINM = "cm"  # COIN-M futures


# (exchange, asset class) per market: see the module doc for why futures get their own venue codes.
_VENUE = {
    Market.SPOT: (EXCHANGE, AssetClass.CRYPTO.value),
    Market.USDM: ("binance_um", AssetClass.FUTURES.value),
    Market.COINM: ("binance_cm", AssetClass.FUTURES.value),
}
_COLUMNS = {
    FileKind.TRADES: (6, 7),
    FileKind.AGG_TRADES: (7, 8),
    FileKind.KLINES: (12,),
    FileKind.BOOK_TICKER: (7,),
    FileKind.BOOK_DEPTH: (4,),
}
_INTERVAL = r"\d+[smhdw]|1mo"
# COIN-M contracts are named <base>USD_PERP or <base>USD_<yymmdd> (binance-public-data, dapi exchangeInfo): every one
# is an inverse contract priced in USD. USD-M perpetuals are named like their spot pair (BTCUSDT), deliveries add
# _<yymmdd>; their prices are in the quote asset of that pair.
_COINM_CONTRACT = re.compile(r"[A-Z0-9]+USD_(?:PERP|\d{6})")
_CONTRACT_SUFFIX = re.compile(r"_(?:PERP|\d{6})$")
_NAME = re.compile(
    rf"(?:(?P<market>spot|futures-um|futures-cm|um|cm)-)?(?P<symbol>[A-Z0-9_]+)-"
    rf"(?P<kind>trades|aggTrades|bookTicker|bookDepth|{_INTERVAL})-(?P<date>\d{{4}}-\d\d(?:-\d\d)?)(?:\.[\w-]+)*"
)


class ChecksumError(UserError):
    """A file whose sha256 differs from its .CHECKSUM: it is corrupt or truncated; download it again."""


@dataclass(frozen=True)
class FileInfo:
    """What a file holds, from its name (and header): kind, symbol, market, kline interval."""

    path: Path
    kind: FileKind
    symbol: str
    market: Market | None  # None: not in the name; decided by the header (futures) when reading
    interval: str | None  # klines only


def describe_file(path: Path, kind: FileKind | str | None = None) -> FileInfo:
    """Parse a data.binance.vision file name; UserError saying what a good name looks like."""
    stem = path.name.removesuffix(".zip").removesuffix(".csv")
    match = _NAME.fullmatch(stem)
    if match is None:
        raise UserError(
            f"{path.name}: cannot tell symbol and kind from the name; expected data.binance.vision names like"
            " BTCUSDT-trades-2024-01-01.zip, BTCUSDT-aggTrades-2024-01.zip, BTCUSDT-1m-2021-11-27.csv,"
            " BTCUSDT-bookTicker-2023-10-27.zip or BTCUSDT-bookDepth-2023-10-27.zip"
        )
    named = match["kind"]
    interval = None if named in ("trades", "aggTrades", "bookTicker", "bookDepth") else named
    found = FileKind(kind) if kind is not None else FileKind.KLINES if interval else FileKind(named)
    if found is FileKind.KLINES and interval is None:
        raise UserError(f"{path.name}: kind klines needs the interval in the name (SYMBOL-1m-DATE)")
    market = match["market"]
    if market is None:
        parts = {p.lower() for p in path.parts}  # the data.binance.vision tree: data/futures/cm/daily/klines/...
        market = next((m for m in ("um", "cm") if "futures" in parts and m in parts), None)
    return FileInfo(path, found, match["symbol"], Market(market.removeprefix("futures-")) if market else None, interval)


def verify_checksum(path: Path) -> bool:
    """True when `<path>.CHECKSUM` exists and matches; False when there is none; ChecksumError on mismatch."""
    sidecar = path.with_name(path.name + ".CHECKSUM")
    if not sidecar.is_file():
        return False
    parts = sidecar.read_text().split()
    if not parts or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
        raise ChecksumError(f"{sidecar}: expected '<sha256 hex>  <file name>', found {sidecar.read_text()[:100]!r}")
    if len(parts) > 1 and parts[1].lstrip("*") != path.name:
        raise ChecksumError(f"{sidecar} is for {parts[1]!r}, not {path.name!r}")
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != parts[0].lower():
        raise ChecksumError(
            f"{path}: sha256 {digest.hexdigest()} does not match {sidecar.name} ({parts[0].lower()}); the file is"
            " corrupt or truncated: download it again. Nothing was loaded."
        )
    return True


@contextmanager
def _open_rows(path: Path) -> Iterator[IO[bytes]]:
    """The CSV bytes of a .csv, or of the one CSV inside a .zip (Binance ships one per archive)."""
    if path.suffix != ".zip":
        with path.open("rb") as f:
            yield f
        return
    with zipfile.ZipFile(path) as archive:
        members = [m for m in archive.namelist() if not m.endswith("/")]
        if len(members) != 1:
            raise ValueError(f"{path}: expected exactly one CSV inside, found {members}")
        with archive.open(members[0]) as f:
            yield f


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise PayloadError(f"bad_field:{name}", f"{name} {text!r} is not an integer") from None


def _time(text: str, name: str) -> tuple[int, TimeUnit]:
    value = _int(text, name)
    return value, TimeUnit.MICROSECOND if value >= _MICROS_FROM else TimeUnit.MILLISECOND


def _micros(text: str, name: str) -> int:
    value, unit = _time(text, name)
    return value if unit is TimeUnit.MICROSECOND else value * 1_000


# Kline columns holding amounts: (column, field, reject reason).
_KLINE_AMOUNTS = (
    *((i, name, "bad_price") for i, name in ((1, "open"), (2, "high"), (3, "low"), (4, "close"))),
    *((i, name, "bad_quantity") for i, name in ((5, "volume"), (7, "quote_volume"), (9, "taker_buy_base_volume"))),
    (10, "taker_buy_quote_volume", "bad_quantity"),
)
_BOOLS = {"true": True, "false": False, "True": True, "False": False, "TRUE": True, "FALSE": False}


def _bool(text: str, name: str) -> bool:
    try:
        return _BOOLS[text]
    except KeyError:
        raise PayloadError(f"bad_field:{name}", f"{name} {text!r} is not True/False") from None


class _FileReader:
    """Turns the rows of one file into records; one instance per file."""

    def __init__(self, info: FileInfo, market: Market, resolver: QuoteResolver) -> None:
        self.info = info
        self.symbol = info.symbol
        self.exchange, self.asset_class = _VENUE[market]
        self.market = market
        self.ingested = now_micros()
        self.currency = ""
        self.unknown: UnknownSymbolError | None = None  # every row rejects with it: metadata lacks the symbol
        try:
            self.currency = _currency(info.symbol, market, resolver)
        except UnknownSymbolError as exc:
            self.unknown = exc
        self.spec: RecordSpec = _SPECS.get(info.kind, TRADES_V2)
        self.parse: Callable[[list[str], int], dict[str, Any]] = {
            FileKind.TRADES: self.trade,
            FileKind.AGG_TRADES: self.agg_trade,
            FileKind.KLINES: self.bar,
            FileKind.BOOK_TICKER: self.book_ticker,
            FileKind.BOOK_DEPTH: self.book_depth,
        }[info.kind]

    def quote_asset(self, symbol: str) -> str:
        """The QuoteResolver the normalisers ask: this file's currency, decided once for its symbol and market."""
        if self.unknown is not None:
            raise self.unknown
        return self.currency

    def _file_vendor(self, record: dict[str, Any]) -> dict[str, Any]:
        vendor = record["vendor_data"]
        del vendor["receive_time_us"]  # a file has no receive time; ingestion_timestamp says when K2 read it
        vendor["source_file"] = self.info.path.name
        return record

    def trade(self, cells: list[str], line_no: int) -> dict[str, Any]:
        time, unit = _time(cells[4], "time")
        item: dict[str, Any] = {
            "id": _int(cells[0], "id"),
            "price": cells[1],
            "qty": cells[2],
            "quoteQty": cells[3],
            "time": time,
            "isBuyerMaker": _bool(cells[5], "isBuyerMaker"),
        }
        if len(cells) == 7:
            item["isBestMatch"] = _bool(cells[6], "isBestMatch")
        record = normalize_rest_trade(
            item,
            self.symbol,
            self,
            self.ingested,
            unit,
            exchange=self.exchange,
            asset_class=self.asset_class,
            platform_sequence=line_no,
        )
        return self._file_vendor(record)

    def agg_trade(self, cells: list[str], line_no: int) -> dict[str, Any]:
        time, unit = _time(cells[5], "time")
        item: dict[str, Any] = {
            "a": _int(cells[0], "aggId"),
            "p": cells[1],
            "q": cells[2],
            "f": _int(cells[3], "firstId"),
            "l": _int(cells[4], "lastId"),
            "T": time,
            "m": _bool(cells[6], "isBuyerMaker"),
        }
        if len(cells) == 8:
            item["M"] = _bool(cells[7], "isBestMatch")
        record = normalize_agg_trade(
            item,
            self,
            self.ingested,
            unit,
            symbol=self.symbol,
            exchange=self.exchange,
            asset_class=self.asset_class,
            platform_sequence=line_no,
        )
        return self._file_vendor(record)

    def bar(self, cells: list[str], line_no: int) -> dict[str, Any]:
        open_us = _micros(cells[0], "open_time")
        close, unit = _time(cells[6], "close_time")
        # Binance's close time is the last unit inside the bar (open + interval - 1 ms, or - 1 us from 2025). As
        # microseconds the last instant inside a millisecond-era bar is ...999 us later, so both eras give
        # close_time = open + interval - 1 us and bars line up across the 2025-01-01 switch.
        close_us = close if unit is TimeUnit.MICROSECOND else close * 1_000 + 999
        if close_us < open_us:
            raise PayloadError("bad_field:close_time", f"close time {cells[6]} is before open time {cells[0]}")
        values = {name: parse_amount(cells[i], name, reason) for i, name, reason in _KLINE_AMOUNTS}
        if self.unknown is not None:
            raise PayloadError(self.unknown.reason, self.unknown.detail)
        interval = self.info.interval
        vendor = {"currency": self.currency, "source_file": self.info.path.name}
        if self.market is Market.COINM:
            # COIN-M klines count contracts in `volume` and base asset in `quote_volume` (binance-public-data).
            vendor["volume_unit"] = "contracts"
        return {
            "message_id": message_id(self.exchange, _BARS, self.symbol, f"kline_{interval}:{open_us}"),
            "symbol": self.symbol,
            "exchange": self.exchange,
            "asset_class": self.asset_class,
            "interval": interval,
            "timestamp": open_us,
            "close_time": close_us,
            **values,
            "trade_count": _int(cells[8], "count"),
            "ingestion_timestamp": self.ingested,
            "vendor_data": vendor,
        }

    def book_ticker(self, cells: list[str], line_no: int) -> dict[str, Any]:
        transaction_time, event_time = cells[5], cells[6]
        time, unit = _time(event_time, "event_time")
        _int(transaction_time, "transaction_time")
        item: dict[str, Any] = {
            "u": _int(cells[0], "update_id"),
            "s": self.symbol,
            "b": cells[1],
            "B": cells[2],
            "a": cells[3],
            "A": cells[4],
            "E": time,
        }
        record = normalize_book_ticker(
            item,
            self,
            self.ingested,
            unit,
            exchange=self.exchange,
            asset_class=self.asset_class,
            platform_sequence=line_no,
        )
        record["vendor_data"] |= {"transaction_time": transaction_time, "event_time": event_time}
        if self.market is Market.COINM:
            record["vendor_data"]["quantity_unit"] = "contracts"  # COIN-M quantities count contracts, as klines do
        return self._file_vendor(record)

    def book_depth(self, cells: list[str], line_no: int) -> dict[str, Any]:
        written, percentage_text = cells[0], cells[1]
        try:
            moment = datetime.strptime(written, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
        except ValueError:
            raise PayloadError("bad_field:timestamp", f"timestamp {written!r} is not YYYY-MM-DD HH:MM:SS") from None
        try:
            percentage = parse_decimal(percentage_text)
        except DecimalError as exc:
            raise PayloadError("bad_field:percentage", f"percentage: {exc}") from None
        depth = parse_amount(cells[2], "depth", "bad_quantity")
        notional = parse_amount(cells[3], "notional", "bad_quantity")
        timestamp = micros_from_datetime(moment)
        return {
            "message_id": message_id(self.exchange, _BOOK_DEPTH, self.symbol, f"bookDepth:{timestamp}:{percentage:f}"),
            "symbol": self.symbol,
            "exchange": self.exchange,
            "asset_class": self.asset_class,
            "timestamp": timestamp,
            "percentage": percentage,
            "depth": depth,
            "notional": notional,
            "ingestion_timestamp": self.ingested,
            "vendor_data": {"timestamp_text": written, "source_file": self.info.path.name},
        }


def _currency(symbol: str, market: Market, resolver: QuoteResolver) -> str:
    """The currency prices of `symbol` are in on `market`: from exchangeInfo, or USD for a COIN-M contract."""
    if market is Market.COINM:
        return "USD"  # inverse contracts: the contract value and every price are in USD
    if market is Market.USDM:
        # The symbol directory is spot exchangeInfo: a USD-M contract quotes in the quote asset of its spot pair.
        return resolver.quote_asset(_CONTRACT_SUFFIX.sub("", symbol))
    return resolver.quote_asset(symbol)


class BinanceFileSource:
    """data.binance.vision CSV / zip files → SourceBatches of trades_v2 (trades, aggTrades) or bars_v2 (klines).

    `symbols` gives each symbol's quote asset (a SymbolDirectory from exchangeInfo; by default the exchangeInfo
    shipped in data/samples). A symbol it does not list rejects every row of its file as `unknown_symbol`. `kind`
    overrides the kind read from every file name; `market` overrides spot/um/cm. All CHECKSUM sidecars are verified
    before the first batch, so a bad download stops the run with nothing loaded. Batches hold at most `chunk_rows`
    rows and never mix files.
    """

    def __init__(
        self,
        paths: list[Path],
        symbols: QuoteResolver | None = None,
        kind: FileKind | str | None = None,
        market: Market | str | None = None,
        chunk_rows: int = 50_000,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
        self.paths = [Path(p) for p in paths]
        self.resolver: QuoteResolver = symbols if symbols is not None else shipped_directory()
        self.kind = FileKind(kind) if kind is not None else None
        self.market = Market(market) if market is not None else None
        self.chunk_rows = chunk_rows
        self.verified: list[Path] = []  # files whose CHECKSUM matched, once check() ran
        self._infos: list[FileInfo] | None = None

    def describe(self) -> str:
        names = ", ".join(p.name for p in self.paths[:3]) + (", ..." if len(self.paths) > 3 else "")
        return f"Binance public-data files ({len(self.paths)}: {names})"

    def check(self) -> None:
        """Every name readable and every CHECKSUM sidecar matching, before any work (UserError otherwise)."""
        self._infos = [describe_file(path, self.kind) for path in self.paths]
        for info in self._infos:
            if info.kind in _FUTURES_ONLY and (self.market or info.market) is Market.SPOT:
                raise UserError(
                    f"{info.path.name}: data.binance.vision publishes {info.kind} files for futures only;"
                    " load it as market um (USD-M) or cm (COIN-M)"
                )
        self.verified = [path for path in self.paths if verify_checksum(path)]

    def batches(self) -> Iterator[SourceBatch]:
        if self._infos is None:
            self.check()
        assert self._infos is not None
        for info in self._infos:
            yield from self._file_batches(info)

    def _file_batches(self, info: FileInfo) -> Iterator[SourceBatch]:
        origin = str(info.path)
        counts = _COLUMNS[info.kind]
        with _open_rows(info.path) as f:
            reader: _FileReader | None = None
            batch: SourceBatch | None = None
            blanks: list[tuple[int, bytes]] = []  # held back: blank lines at the end of a file are not rows
            for line_no, line in enumerate(f, 1):
                raw = line.rstrip(b"\r\n")
                if not raw.strip():
                    blanks.append((line_no, raw))
                    continue
                if reader is None:
                    market = self.market or info.market or self._market_from_header(info, raw)
                    reader = _FileReader(info, market, self.resolver)
                    batch = self._new_batch(reader)
                    if not raw[:1].isdigit():  # a header row (futures files): not data, not counted
                        continue
                assert batch is not None
                for n, blank in blanks:
                    batch.rejects.append(_reject("blank_line", "blank line between rows", blank, origin, n))
                blanks.clear()
                cells = raw.decode("utf-8", "replace").split(",")
                try:
                    if len(cells) not in counts:
                        raise PayloadError(
                            "wrong_column_count",
                            f"{info.kind} rows have {' or '.join(map(str, counts))} columns, found {len(cells)}",
                        )
                    batch.records.append(reader.parse(cells, line_no))
                except PayloadError as exc:
                    batch.rejects.append(_reject(exc.reason, exc.detail, raw, origin, line_no))
                if len(batch.records) + len(batch.rejects) >= self.chunk_rows:
                    batch.rows_read = len(batch.records) + len(batch.rejects)
                    yield batch
                    batch = self._new_batch(reader)
            if batch is not None:
                batch.rows_read = len(batch.records) + len(batch.rejects)
                if batch.rows_read:
                    yield batch

    @staticmethod
    def _market_from_header(info: FileInfo, first_line: bytes) -> Market:
        if first_line[:1].isdigit() and info.kind not in _FUTURES_ONLY:
            return Market.SPOT  # no header: spot
        # A header means futures. Neither path nor name said which kind, so the contract's naming does (see
        # _COINM_CONTRACT): BTCUSD_PERP is COIN-M, BTCUSDT and BTCUSDT_231229 are USD-M.
        return Market.COINM if _COINM_CONTRACT.fullmatch(info.symbol) else Market.USDM

    @staticmethod
    def _new_batch(reader: _FileReader) -> SourceBatch:
        return SourceBatch(reader.spec, AssetClass(reader.asset_class), reader.exchange)


def _reject(reason: str, detail: str, raw: bytes, origin: str, line_no: int) -> Reject:
    return Reject(reason, f"{Path(origin).name} line {line_no}: {detail}", raw, origin, line_no)
