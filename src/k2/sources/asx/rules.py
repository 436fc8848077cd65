"""The ASX file rules both tick parsers follow, written once: the row parser (`rows.py`) applies them row by row,
the columnar parser (`columnar.py`) once per distinct text, and the reference loader (`reference.py`) to its dates.

Dates are MM/DD/YYYY and times Australia/Sydney wall-clock time in every ASX file; prices and volumes are exact
decimals; a row's message id is minted from its own text (see `source_id`); vendor_data keeps what the V2 fields
have no room for, under the keys named here.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

from k2.core.batch import Reject
from k2.schema.codecs import DecimalError, days_from_date, micros_from_datetime, parse_decimal
from k2.schema.fields import AssetClass, Side

EXCHANGE = "asx"
EQUITIES = AssetClass.EQUITIES.value
SYDNEY = ZoneInfo("Australia/Sydney")
CURRENCY = "AUD"  # ASX trades and quotes are in AUD; only dividends name another currency
UNKNOWN_SIDE = Side.UNKNOWN.value  # the files do not say who initiated a trade

_DATE = re.compile(r"(\d\d)/(\d\d)/(\d{4})", re.ASCII)
_DAY_MICROS = 86_400_000_000
_parse_time = time.fromisoformat
_TIME = re.compile(r"\d\d:\d\d:\d\d(?:\.\d{1,6})?", re.ASCII)


class RowError(Exception):
    """A row that cannot become a record; carries the Reject reason code and a human sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def reject(reason: str, detail: str, raw: bytes, path: Path, line_no: int) -> Reject:
    return Reject(
        reason=reason,
        detail=f"{path.name} line {line_no}: {detail}",
        raw=raw,
        origin=str(path),
        position=line_no,
    )


# --- days and times ---------------------------------------------------------------------------------------------


@cache
def parse_asx_date(text: str) -> date:
    """MM/DD/YYYY (the only date form in ASX files) → date; RowError("bad_date") otherwise."""
    match = _DATE.fullmatch(text)
    if match is None:
        raise RowError("bad_date", f"date {text!r} is not MM/DD/YYYY")
    month, day, year = (int(g) for g in match.groups())
    try:
        return date(year, month, day)
    except ValueError as exc:
        raise RowError("bad_date", f"date {text!r} does not exist ({exc})") from None


def sydney_midnight_micros(day: date) -> int:
    """UTC microseconds of 00:00 Sydney time on `day` (Sydney DST changes at 02:00/03:00, so midnight exists)."""
    return micros_from_datetime(datetime(day.year, day.month, day.day, tzinfo=SYDNEY))


def time_of_day(text: str) -> int:
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


class Day:
    """One trading date: its UTC base precomputed, so the hot loop adds integers instead of calling zoneinfo."""

    __slots__ = ("base", "compact", "date")

    def __init__(self, text: str) -> None:
        self.date = parse_asx_date(text)
        self.compact = f"{self.date.year:04d}{self.date.month:02d}{self.date.day:02d}"
        self.base = _constant_day_base(self.date)

    def utc_micros(self, time_text: str) -> int:
        local = time_of_day(time_text)
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


# --- prices and quantities --------------------------------------------------------------------------------------

# Prices and volumes repeat heavily (BHP's 91,631 trades: 299 distinct prices, 3,442 distinct volumes), so each
# distinct text is parsed and checked once; rows look the value up (`PRICES.get(text) or parse_price(text)`: a
# miss, or a zero, takes the checking path). Decimal is immutable, so sharing the parsed values is safe.
PRICES: dict[str, Decimal] = {}
QUANTITIES: dict[str, Decimal] = {}
_CACHE_LIMIT = 1 << 16  # distinct texts kept per kind; later ones are parsed each time


def parse_price(text: str) -> Decimal:
    try:
        value = parse_decimal(text)
    except DecimalError as exc:
        raise RowError("bad_price", f"price {exc}") from None
    if value < 0:
        raise RowError("bad_price", f"price {text!r} is negative")
    if len(PRICES) < _CACHE_LIMIT:
        PRICES[text] = value
    return value


def parse_quantity(text: str) -> Decimal:
    try:
        value = parse_decimal(text)
    except DecimalError as exc:
        raise RowError("bad_quantity", f"volume {exc}") from None
    if value < 0:
        raise RowError("negative_quantity", f"volume {text!r} is negative")
    if len(QUANTITIES) < _CACHE_LIMIT:
        QUANTITIES[text] = value
    return value


# --- message-id text --------------------------------------------------------------------------------------------
# A tick's message id is `message_id(EXCHANGE, data_type, symbol, source_id)`: UUIDv5 of
# "{exchange}|{data_type}|{symbol}|" + "{yyyymmdd}|{row text}#{ordinal}" (+ "@n" where a closed day reopens).


def id_prefix(data_type: str, symbol: str) -> str:
    """What `k2.schema.codecs.message_ids_for(EXCHANGE, data_type, symbol)` puts before every source id."""
    return f"{EXCHANGE}|{data_type}|{symbol}|"


def id_day(compact: str) -> str:
    """The source id's head: the trading date (yyyymmdd) and its separator."""
    return f"{compact}|"


def id_ordinal(ordinal: int, reopened: str = "") -> str:
    """The source id's tail after the row text: how many identical rows came before it (and "@n" on a reopened
    day)."""
    return f"#{ordinal}{reopened}"


def source_id(compact: str, row: str, ordinal: int, reopened: str = "") -> str:
    """The text a tick's message id is minted from (see `rows._TickFile._identify` for why it is the row's text):
    `id_day(compact) + row + id_ordinal(ordinal, reopened)`, written out because the row parser calls it per row."""
    return f"{compact}|{row}#{ordinal}{reopened}"


# --- vendor_data ------------------------------------------------------------------------------------------------

QUALIFIER, COMPANY_ID, LOCAL_TIME, VENUE, EXTRA = "qualifier", "company_id", "local_time", "venue", "extra"
BOOK_STATE = "book_state"
LOCAL_TIME_SEPARATOR = " "  # local_time is the file's own "MM/DD/YYYY HH:MM:SS.mmm"
# A quote's book_state, in this order (the columnar parser indexes it): crossed and locked books are real in
# pre-open auction phases; kept, and flagged for consumers.
BOOK_STATES = ("normal", "crossed", "locked", "one_sided", "empty")
NORMAL, CROSSED, LOCKED, ONE_SIDED, EMPTY = BOOK_STATES
