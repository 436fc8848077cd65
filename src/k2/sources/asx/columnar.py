"""Columnar fast path for ASX tick files: trades/<company_id>.csv and quotes/<company_id>.csv → Arrow tables.

For a file in the plain common shape (every vendor file we have seen), `plain_tick_chunks` gives, chunk for chunk,
exactly what the row parser (`rows.row_batches`) gives once its records go through `records_to_arrow`: same rows,
same order, same chunk boundaries. It gets there with vectorised numpy/pyarrow work: each distinct date, price and
volume text is parsed ONCE with the rules the row parser applies (`rules.Day`, `rules.parse_price`,
`rules.parse_quantity`) and gathered back with `take`; the message ids (a SHA-1 per row over exactly the bytes the
row parser hashes) are computed for the whole column at once by `k2.schema.ids_columnar`.

Any file that is not plain in every row (a blank or bad line, non-ASCII bytes, a day that reappears, a DST change
day, a zero trade price, an unknown company, ...) gets None, and `AsxSource` hands it whole to the row parser. Odd
files are thus identical by construction, and only normal files need the columnar code to be right; the tests
compare both paths on every sample file and on odd files.

"Plain" is checked strictly and up front, before anything is built: the columnar code never has to produce a
reject, so it never has to reproduce the row parser's order of checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from k2.core.batch import Reject
from k2.schema.arrow import arrow_schema
from k2.schema.codecs import now_micros
from k2.schema.fields import QUOTES_V2, TRADES_V2, RecordSpec
from k2.schema.ids_columnar import fixed_width, message_ids_column, string_offsets
from k2.sources.asx.reference import Company
from k2.sources.asx.rules import (
    BOOK_STATE,
    BOOK_STATES,
    COMPANY_ID,
    CURRENCY,
    EQUITIES,
    EXCHANGE,
    EXTRA,
    LOCAL_TIME,
    LOCAL_TIME_SEPARATOR,
    PRICES,
    QUALIFIER,
    QUANTITIES,
    UNKNOWN_SIDE,
    VENUE,
    Day,
    RowError,
    id_day,
    id_ordinal,
    id_prefix,
    parse_price,
    parse_quantity,
)

# Files above this size take the (streaming) row parser: the columnar path holds the whole file and its columns
# in memory, and Arrow's 32-bit string offsets cap one column's text at 2 GiB.
MAX_COLUMNAR_BYTES = 1 << 30

_DECIMAL = pa.decimal128(18, 8)
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_CR, _LF = 13, 10
# Positions of the time digits in "HH:MM:SS.mmm", and the separators the row parser's fast shape demands.
_TIME_SEPARATORS = {2: ord(":"), 5: ord(":"), 8: ord(".")}
_TIME_DIGITS = [0, 1, 3, 4, 6, 7, 9, 10, 11]
_BOOK_STATES = pa.array(list(BOOK_STATES))
_MAP = pa.map_(pa.string(), pa.string())


@dataclass(frozen=True)
class TickChunk:
    """One chunk of a tick file: the rows of one row-parser batch, in Arrow form.

    `rows_read == table.num_rows + len(rejects)`; `bytes_read` is the part of the file this chunk consumed, so the
    chunks' `bytes_read` add up to the file size (for a progress bar).
    """

    table: pa.Table
    rejects: list[Reject]
    rows_read: int
    bytes_read: int


def plain_tick_chunks(
    path: Path,
    company: Company | None,
    spec: RecordSpec,
    chunk_rows: int = 50_000,
    ingested: Callable[[], int] = now_micros,
) -> Iterator[TickChunk] | None:
    """A plain file's chunks (`chunk_rows` rows each; `ingested` is called once per chunk for its
    `ingestion_timestamp`); None for any other file (read it with the row parser). What `source.AsxSource` calls."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if spec is not TRADES_V2 and spec is not QUOTES_V2:
        raise ValueError(f"ASX tick files hold trades or quotes, not {spec.name}")
    if company is None or path.stat().st_size > MAX_COLUMNAR_BYTES:
        return None
    plain = _plain_file(path.read_bytes(), spec)
    if plain is None:
        return None
    table = _build_table(plain, company, spec)
    return _slice_chunks(table, plain.line_ends, plain.size, chunk_rows, ingested)


# --- is the file plain? -----------------------------------------------------------------------------------------


@dataclass
class _Decimals:
    """The distinct texts of one or more columns, each parsed once: values, and per column each cell's index."""

    values: list[Decimal]
    indices: list[np.ndarray]

    @cached_property
    def _arrow(self) -> pa.Array:
        return pa.array(self.values, type=_DECIMAL)  # as records_to_arrow converts a Decimal

    def column(self, which: int, null: np.ndarray | None = None) -> pa.Array:
        """Decimal column `which` (in the order the columns were given), null where `null` is set."""
        return self._arrow.take(pa.array(self.indices[which], mask=null))


@dataclass(frozen=True)
class _PlainFile:
    """A tick file that passed every shape check: its lines, text columns and parsed dates, times and numbers."""

    size: int  # bytes in the file
    line_ends: np.ndarray  # per line: offset just past its line end (or the end of the file); int64
    lines: pa.StringArray  # per line: its text without the line end (what the row parser decodes)
    columns: list[pa.StringArray]  # the CSV cells, one array per column
    days: list[Day]  # distinct trading dates, in file order
    day_index: np.ndarray  # per line: index into `days`
    local_micros: np.ndarray  # per line: microseconds after local midnight
    prices: _Decimals  # trades: price; quotes: bid, ask
    volumes: _Decimals  # trades: volume; quotes: bid volume, ask volume

    def __len__(self) -> int:
        return len(self.line_ends)


def _plain_file(data: bytes, spec: RecordSpec) -> _PlainFile | None:
    """The file split and parsed if every line is in the plain shape, else None (→ the row parser).

    Plain means: ASCII only (so UTF-8 decoding cannot fail), every line ended by CRLF (the last may have no line
    end) and none blank, the right number of columns, HH:MM:SS.mmm times, valid dates with one UTC offset all day,
    each trading day's rows contiguous, and every price and volume text accepted by `parse_price` / `parse_quantity`
    (and, for a trade, not zero). Every row of a plain file becomes a record: the columnar path makes no rejects.
    """
    trades = spec is TRADES_V2
    split = _split_lines(data)
    if split is None:
        return None
    line_ends, lines = split
    columns = _csv_columns(data, 7 if trades else 6, len(lines))
    if columns is None:
        return None
    day_parts = _trading_days(columns[0])
    local_micros = _local_micros(columns[1])
    if day_parts is None or local_micros is None:
        return None
    prices = _parse_distinct(columns[2:3] if trades else columns[2:4], parse_price, PRICES)
    volumes = _parse_distinct(columns[3:4] if trades else columns[4:6], parse_quantity, QUANTITIES)
    if prices is None or volumes is None:
        return None
    if trades and not (all(prices.values) and all(volumes.values)):
        return None  # a zero-priced or zero-volume trade is a reject
    return _PlainFile(len(data), line_ends, lines, columns, *day_parts, local_micros, prices, volumes)


def _split_lines(data: bytes) -> tuple[np.ndarray, pa.StringArray] | None:
    """Offsets just past each line, and the lines' texts (without CRLF); None unless the bytes are ASCII lines
    ended by CRLF (the last may have no line end), none of them blank.

    A lone CR or LF, a byte ≥ 0x80 or an empty line sends the file to the row parser, which has rules for them
    (and for trailing blank lines, which are not rows there).
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0 or buf.max() >= 0x80:
        return None
    is_lf = buf == _LF
    lf = np.flatnonzero(is_lf)
    cr = np.flatnonzero(buf == _CR)
    if cr.size != lf.size or not np.array_equal(cr + 1, lf):
        return None
    ends = lf + 1
    if buf[-1] != _LF:  # a last line without a line end is still a row
        ends = np.append(ends, buf.size)
    starts = np.concatenate(([0], ends[:-1]))
    length = ends - starts - 2 * is_lf[ends - 1]
    if np.any(length == 0):
        return None
    # Every CR and LF is part of a line end here, so dropping them all leaves the lines back to back.
    text = buf[~is_lf & (buf != _CR)]
    offsets = np.concatenate(([0], np.cumsum(length))).astype(np.int32)
    lines = pa.StringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(text))
    return ends.astype(np.int64), lines


def _csv_columns(data: bytes, width: int, lines: int) -> list[pa.StringArray] | None:
    """The cells as text columns, or None unless every line has exactly `width` columns.

    No quoting or escaping: the row parser splits on every comma, and so does this.
    """
    names = [f"c{i}" for i in range(width)]
    read = pacsv.ReadOptions(column_names=names, block_size=1 << 20)
    parse = pacsv.ParseOptions(quote_char=False, double_quote=False, escape_char=False, ignore_empty_lines=False)
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False)
    try:
        table = pacsv.read_csv(pa.BufferReader(data), read, parse, convert)
    except pa.ArrowInvalid:  # a line with another column count
        return None
    if table.num_rows != lines:
        return None
    return [column.combine_chunks() for column in table.columns]


def _local_micros(times: pa.StringArray) -> np.ndarray | None:
    """HH:MM:SS.mmm → microseconds after local midnight, or None unless every time is in exactly that shape.

    That is the shape `rules.time_of_day` hands to `time.fromisoformat`, which accepts every such text with ASCII
    digits and hours, minutes and seconds in range; so the values agree, and anything else goes to it.
    """
    chars = fixed_width(times, 12)
    if chars is None:
        return None
    for position, separator in _TIME_SEPARATORS.items():
        if not np.all(chars[:, position] == separator):
            return None
    digits = chars[:, _TIME_DIGITS].astype(np.int64) - ord("0")
    if np.any((digits < 0) | (digits > 9)):
        return None
    hours, minutes, seconds = (digits[:, i] * 10 + digits[:, i + 1] for i in (0, 2, 4))
    if np.any(hours > 23) or np.any(minutes > 59) or np.any(seconds > 59):
        return None
    millis = digits[:, 6] * 100 + digits[:, 7] * 10 + digits[:, 8]
    return ((hours * 60 + minutes) * 60 + seconds) * 1_000_000 + millis * 1_000


def _trading_days(dates: pa.StringArray) -> tuple[list[Day], np.ndarray] | None:
    """The distinct dates parsed once by `Day`, and each row's index among them; None unless every date is valid,
    has one UTC offset all day (not a DST change day) and all its rows are contiguous.

    The row parser numbers rows and counts identical rows per open day; a day that reappears later in the file
    gets "@n"-suffixed ids there, so such a file goes to it.
    """
    encoded = dates.dictionary_encode()
    try:
        days = [Day(text) for text in encoded.dictionary.to_pylist()]
    except RowError:
        return None
    if any(day.base is None for day in days) or len({day.compact for day in days}) != len(days):
        return None
    index = np.asarray(encoded.indices, dtype=np.int64)
    if 1 + np.count_nonzero(index[1:] != index[:-1]) != len(days):
        return None  # some day's rows are not in one stretch
    return days, index


def _parse_distinct(
    columns: list[pa.StringArray], parse: Callable[[str], Decimal], known: dict[str, Decimal]
) -> _Decimals | None:
    """Each distinct text of the columns parsed once with the row parser's `parse`; None if any is refused.

    Prices and volumes repeat heavily (BHP's 91,631 trades have 299 distinct prices), so this is a few thousand
    calls at most; `known` is the row parser's own cache of parsed texts, looked up the way it does. Bid and ask
    (or both volumes) share one dictionary, so one rank order compares them.
    """
    encoded = pa.concat_arrays(columns).dictionary_encode()
    try:
        values = [known.get(text) or parse(text) for text in encoded.dictionary.to_pylist()]
    except RowError:
        return None
    index = np.asarray(encoded.indices, dtype=np.int64)
    n = len(columns[0])
    return _Decimals(values, [index[i * n : (i + 1) * n] for i in range(len(columns))])


# --- building the table -----------------------------------------------------------------------------------------


def _build_table(plain: _PlainFile, company: Company, spec: RecordSpec) -> pa.Table:
    """The whole file's records as one table; ingestion_timestamp is set per chunk by `_slice_chunks`."""
    n = len(plain)
    sequence = _day_sequence(plain.day_index)
    compact = pa.array([day.compact for day in plain.days]).take(plain.day_index)
    base = np.array([day.base for day in plain.days], dtype=np.int64)
    local_time = pc.binary_join_element_wise(plain.columns[0], plain.columns[1], LOCAL_TIME_SEPARATOR)
    trades = spec is TRADES_V2
    columns = {
        "message_id": _message_ids(plain, spec.data_type.value, company.symbol),
        "trade_id" if trades else "quote_id": pc.binary_join_element_wise(compact, sequence.cast(pa.string()), "-"),
        "symbol": pa.repeat(company.symbol, n),
        "exchange": pa.repeat(EXCHANGE, n),
        "asset_class": pa.repeat(EQUITIES, n),
        "timestamp": pa.array(base[plain.day_index] + plain.local_micros).cast(_TIMESTAMP),
        **(_trade_columns(plain, company, local_time) if trades else _quote_columns(plain, company, local_time)),
        "source_sequence": sequence,
        "ingestion_timestamp": pa.repeat(pa.scalar(0, _TIMESTAMP), n),
        "platform_sequence": pa.array(np.arange(1, n + 1, dtype=np.int64)),  # line numbers: no blank lines here
    }
    schema = arrow_schema(spec)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def _day_sequence(day_index: np.ndarray) -> pa.Array:
    """source_sequence: 1, 2, … within each trading day (days are contiguous and every row is a record)."""
    n = len(day_index)
    starts = np.flatnonzero(np.concatenate(([True], day_index[1:] != day_index[:-1])))
    run_start = np.repeat(starts, np.diff(np.append(starts, n)))
    return pa.array(np.arange(n, dtype=np.int64) - run_start + 1)


def _non_empty(column: pa.StringArray) -> np.ndarray:
    return np.diff(string_offsets(column)) > 0


def _trade_columns(plain: _PlainFile, company: Company, local_time: pa.Array) -> dict[str, pa.Array]:
    """price … trade_conditions, and vendor_data {qualifier, company_id, local_time[, venue][, extra]}."""
    n = len(plain)
    qualifier, venue, extra = plain.columns[4:7]
    has_qualifier = _non_empty(qualifier)
    conditions_offsets = np.concatenate(([0], np.cumsum(has_qualifier))).astype(np.int32)
    conditions = pa.ListArray.from_arrays(
        conditions_offsets,
        qualifier.filter(pa.array(has_qualifier)),
        type=arrow_schema(TRADES_V2).field("trade_conditions").type,
    )
    ones = np.ones(n, dtype=bool)
    vendor = _vendor_map(
        [QUALIFIER, COMPANY_ID, LOCAL_TIME, VENUE, EXTRA],
        [qualifier, pa.repeat(company.company_id, n), local_time, venue, extra],
        np.column_stack([ones, ones, ones, _non_empty(venue), _non_empty(extra)]),
    )
    return {
        "price": plain.prices.column(0),
        "quantity": plain.volumes.column(0),
        "currency": pa.repeat(CURRENCY, n),
        "side": pa.repeat(UNKNOWN_SIDE, n),
        "trade_conditions": conditions,
        "vendor_data": vendor,
    }


def _quote_columns(plain: _PlainFile, company: Company, local_time: pa.Array) -> dict[str, pa.Array]:
    """Bid and ask (null, with their quantity, where the price is 0: no order), and vendor_data with book_state."""
    n = len(plain)
    prices = plain.prices
    zero = np.array([not value for value in prices.values], dtype=bool)
    rank_of = {value: rank for rank, value in enumerate(sorted(set(prices.values)))}
    rank = np.array([rank_of[value] for value in prices.values], dtype=np.int64)
    bid, ask = prices.indices
    no_bid, no_ask = zero[bid], zero[ask]
    # indices into BOOK_STATES: normal, crossed, locked, one_sided, empty
    state = np.where(rank[bid] > rank[ask], 1, np.where(rank[bid] == rank[ask], 2, 0))
    state = np.where(no_bid | no_ask, np.where(no_bid & no_ask, 4, 3), state)
    ones = np.ones((n, 3), dtype=bool)
    vendor = _vendor_map(
        [BOOK_STATE, COMPANY_ID, LOCAL_TIME],
        [_BOOK_STATES.take(state), pa.repeat(company.company_id, n), local_time],
        ones,
    )
    return {
        "bid_price": prices.column(0, no_bid),
        "bid_quantity": plain.volumes.column(0, no_bid),
        "ask_price": prices.column(1, no_ask),
        "ask_quantity": plain.volumes.column(1, no_ask),
        "currency": pa.repeat(CURRENCY, n),
        "vendor_data": vendor,
    }


def _vendor_map(keys: list[str], values: list[pa.Array], present: np.ndarray) -> pa.MapArray:
    """vendor_data: per row, the keys whose `present` flag is set, in the given order (the row parser's order).

    `present` is (rows, keys); entries are laid out row-major, which is each row's keys in order.
    """
    n, width = present.shape
    cell = np.arange(n, dtype=np.int64)[:, None] + (np.arange(width, dtype=np.int64) * n)[None, :]
    key = np.broadcast_to(np.arange(width, dtype=np.int64), (n, width))
    items = pa.concat_arrays([value.cast(pa.string()) for value in values]).take(cell[present])
    offsets = np.concatenate(([0], np.cumsum(present.sum(axis=1)))).astype(np.int32)
    return pa.MapArray.from_arrays(offsets, pa.array(keys).take(key[present]), items, type=_MAP)


# --- message ids ------------------------------------------------------------------------------------------------


def _message_ids(plain: _PlainFile, data_type: str, symbol: str) -> pa.StringArray:
    """The row parser's ids: UUIDv5 of "{exchange}|{data_type}|{symbol}|" + "{yyyymmdd}|{row text}#{ordinal}".

    This is `message_ids_for(...)(rules.source_id(...))` for every row at once (`k2.schema.ids_columnar`: the
    same bytes go through SHA-1 for the whole column, where a Python loop over `message_id` costs ~1.7 us a row).
    """
    day = pa.array([id_day(day.compact) for day in plain.days]).take(plain.day_index)
    ordinal = _ordinals(plain.lines)
    suffix = pa.array([id_ordinal(k) for k in range(int(ordinal.max(initial=0)) + 1)]).take(ordinal)
    names = pc.binary_join_element_wise(day, plain.lines, suffix, "")
    return message_ids_column(names, prefix=id_prefix(data_type, symbol))


def _ordinals(lines: pa.StringArray) -> np.ndarray:
    """Per row: how many identical rows came before it (the row parser's ordinal).

    Identical rows share their date, and days are contiguous here, so counting over the whole file equals the row
    parser's count over the open day. Dictionary indices are given in order of first appearance, so a row repeats
    an earlier one iff its index is not above every earlier index; only those (BHP: 3,193 of 91,631) are counted.
    """
    index = np.asarray(lines.dictionary_encode().indices, dtype=np.int64)
    repeat = np.zeros(len(index), dtype=bool)
    repeat[1:] = index[1:] <= np.maximum.accumulate(index)[:-1]
    rows = np.flatnonzero(repeat)
    texts = index[rows]
    order = np.argsort(texts, kind="stable")
    sorted_texts = texts[order]
    group = np.flatnonzero(np.concatenate(([True], sorted_texts[1:] != sorted_texts[:-1])))
    group_start = np.repeat(group, np.diff(np.append(group, len(rows))))
    ordinal = np.zeros(len(index), dtype=np.int64)
    ordinal[rows[order]] = np.arange(len(rows)) - group_start + 1
    return ordinal


# --- chunks -----------------------------------------------------------------------------------------------------


def _slice_chunks(
    table: pa.Table, line_ends: np.ndarray, size: int, chunk_rows: int, ingested: Callable[[], int]
) -> Iterator[TickChunk]:
    """The table cut where the row parser cuts its batches (every `chunk_rows` rows: here every row is a record),
    each with its own ingestion_timestamp and the bytes up to its last line end (the file's end for the last)."""
    column = table.schema.get_field_index("ingestion_timestamp")
    field = table.schema.field(column)
    n = table.num_rows
    done = 0
    for start in range(0, n, chunk_rows):
        stop = min(start + chunk_rows, n)
        end = size if stop == n else int(line_ends[stop - 1])
        stamp = pa.repeat(pa.scalar(ingested(), _TIMESTAMP), stop - start)
        yield TickChunk(table.slice(start, stop - start).set_column(column, field, stamp), [], stop - start, end - done)
        done = end
