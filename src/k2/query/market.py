"""Trades and quotes as recorded: by symbols, exchange and time range; the latest N per symbol; keyset pages.

Every function returns the table's V2 columns (or the `columns` asked for) as a pyarrow Table: prices
decimal128(18,8), timestamps timestamp[us, tz=UTC]. Rows come in event order — timestamp, then source_sequence
(nulls last), then message_id — so equal timestamps always come back the same way. `as_of` reads an older
snapshot (k2.query.timetravel).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache

import duckdb
import pyarrow as pa

from k2.lake.tables import table_identifier
from k2.query.cursor import KEY_COLUMNS, Cursor
from k2.query.engine import QueryEngine, Reader
from k2.query.filters import (
    EVENT_SPECS,
    event_order,
    positive,
    projected_names,
    projection,
    record_spec,
    select_rows,
    symbol_list,
    utc,
    where,
)
from k2.query.layout import DataFile
from k2.query.timetravel import AsOf
from k2.schema.arrow import empty_rows
from k2.schema.codecs import datetime_from_micros
from k2.schema.fields import RecordSpec

Symbols = str | Sequence[str] | None


@dataclass(frozen=True)
class Page:
    """One page of rows, the cursor after its last row (None for an empty page) and whether more may follow."""

    rows: pa.Table
    cursor: str | None
    has_more: bool

    @property
    def next_cursor(self) -> str | None:
        """What to pass as `after` for the next page; None once a page came back short (nothing more to read)."""
        return self.cursor if self.has_more else None


def events(
    engine: QueryEngine,
    kind: str,
    symbols: Symbols,
    start: datetime | None,
    end: datetime | None,
    *,
    exchange: str | None = None,
    columns: Sequence[str] | None = None,
    limit: int | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """Rows of `kind` ("trades" or "quotes") in [start, end), in event order; at most `limit` of them.

    `symbols` None means every symbol; `start`/`end` None leave that side open (and read every file on it).
    """
    spec = record_spec(kind, EVENT_SPECS)
    condition, params = where(symbols, start, end, exchange)
    query = (
        f"SELECT {projection(spec, columns)} FROM {table_identifier(spec)} WHERE {condition} ORDER BY {event_order()}"
    )
    if limit is not None:
        query += " LIMIT ?"
        params.append(positive(limit, "limit"))
    return engine.at(as_of).sql(query, params)


def trades(
    engine: QueryEngine,
    symbols: Symbols,
    start: datetime | None,
    end: datetime | None,
    *,
    exchange: str | None = None,
    columns: Sequence[str] | None = None,
    limit: int | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """Trades in [start, end) in event order; see `events`."""
    return events(engine, "trades", symbols, start, end, exchange=exchange, columns=columns, limit=limit, as_of=as_of)


def quotes(
    engine: QueryEngine,
    symbols: Symbols,
    start: datetime | None,
    end: datetime | None,
    *,
    exchange: str | None = None,
    columns: Sequence[str] | None = None,
    limit: int | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """Quotes in [start, end) in event order; see `events`."""
    return events(engine, "quotes", symbols, start, end, exchange=exchange, columns=columns, limit=limit, as_of=as_of)


def latest(
    engine: QueryEngine,
    kind: str,
    symbols: Symbols,
    n: int = 1,
    *,
    exchange: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    columns: Sequence[str] | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """The newest `n` rows per (symbol, exchange), ordered by symbol, exchange, then event order (oldest first).

    With named symbols, the data files say (k2.query.layout) which (symbol, exchange) pairs exist in the range
    and how new and frequent their data is, so the newest data is read first: whole rows of the stretch before
    the newest data in which each pair should trade ~1.5 n times, ranked, which is the answer when every pair has
    n rows there (one query: the common case). Otherwise two passes: the first reads only the time column of
    growing windows (`_cutoff`) to find the instant from which every pair has its newest n rows; the second reads
    whole rows from that instant on, so older files and row groups are pruned, and ranks them by the full event
    order.
    """
    spec = record_spec(kind, EVENT_SPECS)
    n = positive(n, "n")
    reader = engine.at(as_of)
    required = ("symbol", "exchange", *KEY_COLUMNS)
    newest = _newest_from_kept_tails(reader, spec, symbols, n, exchange, start, end)
    if newest is not None:
        return newest.select(projected_names(spec, columns, required))
    lake = table_identifier(spec)
    ranked = (
        f"SELECT {projection(spec, columns, required)}{{extra}} FROM {lake} WHERE {{condition}} "
        f"QUALIFY row_number() OVER (PARTITION BY symbol, exchange ORDER BY {event_order(descending=True)}) <= ? "
        f"ORDER BY symbol, exchange, {event_order()}"
    )
    plan = _plan(reader, spec.name, symbols, n, exchange, start, end)
    windows = plan.windows
    if plan.rows_first:
        condition, params = where(symbols, windows[0], end, exchange)
        extra = ", count(*) OVER (PARTITION BY symbol, exchange) >= ? AS _k2_complete"
        rows = reader.sql(ranked.format(extra=extra, condition=condition), [n, *params, n])
        complete = rows.filter(rows.column("_k2_complete"))
        if plan.expected <= set(zip(complete["symbol"].to_pylist(), complete["exchange"].to_pylist(), strict=True)):
            return rows.drop_columns(["_k2_complete"])
        windows = windows[1:]
    cutoff = _cutoff(reader, lake, symbols, n, exchange, end, plan.expected, windows)
    # Rows at the cutoff instant are all kept here: the ranking below picks exactly n by the full event order.
    condition, params = where(symbols, start if cutoff is None else cutoff, end, exchange)
    return reader.sql(ranked.format(extra="", condition=condition), [*params, n])


# The newest rows of one symbol in one data file, kept per (file, symbol, tail size) by the engine: `latest` for
# named symbols and no `end` merges the kept tails of the few newest files holding each pair instead of scanning.
_MIN_TAIL = 1024  # tail sizes are powers of two from this, so nearby n share one kept tail
_MAX_TAIL = 16_384  # a larger n reads the lake
# Event order, newest first, as Arrow sort keys: a null sequence sorts after every real one (sequence_order), so
# first when descending.
_NEWEST_FIRST = [
    ("timestamp", "descending"),
    ("source_sequence", "descending", "at_start"),
    ("message_id", "descending"),
]


def tail_query(spec: RecordSpec) -> str:
    """SQL of one data file's (first `?`) newest rows of one symbol (second), as many as the third `?`."""
    return (
        f"SELECT {projection(spec, None)} FROM read_parquet(?) WHERE symbol = ? "
        f"ORDER BY {event_order(descending=True)} LIMIT ?"
    )


@cache
def _no_rows(spec: RecordSpec) -> pa.Table:
    """No rows of `spec`'s table, typed as the lake's SQL answers them (DuckDB's Arrow: nullable columns)."""
    with duckdb.connect(":memory:") as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("no_rows", empty_rows(spec))
        return con.execute("SELECT * FROM no_rows").to_arrow_table()


def _newest_from_kept_tails(
    reader: Reader,
    spec: RecordSpec,
    symbols: Symbols,
    n: int,
    exchange: str | None,
    start: datetime | None,
    end: datetime | None,
) -> pa.Table | None:
    """`latest`'s answer (all columns) from kept per-file tails, or None when they cannot give it: no symbols or
    too many, an `end`, n too large, files without an exchange partition, delete files.

    Exact: each tail is a file's newest K >= n rows of the symbol, so a row outside its file's tail has n newer
    ones and is not among the newest n; files are taken newest first until the next file's newest timestamp is
    below the nth newest gathered, so no skipped file holds a row that could rank. With no `end`, the newest n
    rows from `start` on are those of the newest n overall that are from `start` on."""
    names = symbol_list(symbols)
    if not names or len(names) > _MAX_WINDOWED_SYMBOLS or end is not None or n > _MAX_TAIL:
        return None
    if reader.layout(spec.name).has_deletes:
        return None
    holders = files_holding(reader, spec.name, names, exchange, start, end)
    if not holders:  # every file's symbols are known, and none holds these: no scan for a symbol the lake lacks
        return _no_rows(spec)
    if any(f.exchange is None or f.newest is None for f, _counts in holders):
        return None
    size = max(_MIN_TAIL, 1 << (n - 1).bit_length())
    query = tail_query(spec)
    by_pair: dict[tuple[str, str], list[DataFile]] = {}
    for file, counts in holders:
        for name in counts:
            by_pair.setdefault((name, str(file.exchange)), []).append(file)
    pieces = []
    for (name, _exchange), files in sorted(by_pair.items()):
        parts: list[pa.Table] = []
        stamps: list[int] = []  # the gathered rows' timestamps, newest first, at most n
        for file in sorted(files, key=lambda f: f.newest or 0, reverse=True):
            if len(stamps) >= n and (file.newest or 0) < stamps[n - 1]:
                break
            parts.append(reader.file_fact(file.path, query, [name, size]))
            stamps = sorted([*stamps, *parts[-1].column("timestamp").cast(pa.int64()).to_pylist()], reverse=True)[:n]
        rows = parts[0] if len(parts) == 1 else pa.concat_tables(parts).sort_by(_NEWEST_FIRST)
        rows = select_rows(rows, None, start, None, None)
        kept = min(n, rows.num_rows)
        pieces.append(rows.take(pa.array(range(kept - 1, -1, -1), pa.int64())))  # oldest first
    return pa.concat_tables(pieces)


# `latest` first reads whole rows of the stretch before the newest data of the symbols asked for in which each
# should trade ~1.5 n times at the pace of its newest data file (at least a minute; tried only up to 6 hours),
# then the time column of the last hour, 6 hours, whole partition days (the newest 1, 4, 16 that hold them),
# then everything: each widening only when some (symbol, exchange) has fewer than n rows in the window.
_ROWS_WINDOW_MARGIN = 1.5
_MIN_ROWS_WINDOW = timedelta(minutes=1)
_MAX_ROWS_WINDOW = timedelta(hours=6)
_RECENT_WINDOWS = (timedelta(hours=1), timedelta(hours=6))
_WINDOW_DAYS = (1, 4, 16)
# Above this many symbols the symbol bookkeeping costs more than one pass over everything.
_MAX_WINDOWED_SYMBOLS = 64


@dataclass(frozen=True)
class _Plan:
    expected: set[tuple[str, str | None]]  # (symbol, exchange) pairs the data files hold in range; empty: unknown
    windows: list[datetime | None]  # lower bounds to read from, newest first; the last is `start` (everything)
    rows_first: bool = False  # read whole rows of the first window, hoping it is the answer


def _plan(
    reader: Reader,
    table_name: str,
    symbols: Symbols,
    n: int,
    exchange: str | None,
    start: datetime | None,
    end: datetime | None,
) -> _Plan:
    names = symbol_list(symbols)
    if names is None or len(names) > _MAX_WINDOWED_SYMBOLS:
        return _Plan(set(), [start])
    holders = files_holding(reader, table_name, names, exchange, start, end)
    expected = {(name, f.exchange) for f, counts in holders for name in counts}
    if not holders or any(f.exchange is None for f, _counts in holders):
        return _Plan(expected, [start])
    first = _rows_window(holders, n)
    windows = [*_windows([f for f, _counts in holders], start, end, first), start]
    return _Plan(expected, windows, rows_first=first is not None and len(windows) > 1)


def _rows_window(holders: list[tuple[DataFile, dict[str, int]]], n: int) -> timedelta | None:
    """How far back the whole-row first read goes: the time in which the slowest named (symbol, exchange) trades
    n times, at the pace it had in its newest data file, x1.5; None when over 6 hours or unknown."""
    needed = timedelta(0)
    paced: set[tuple[str, str | None]] = set()
    for file, counts in holders:  # newest first: each pair is paced by its newest file
        for name, rows in counts.items():
            if (name, file.exchange) in paced:
                continue
            paced.add((name, file.exchange))
            if file.oldest is None or file.newest is None:
                return None
            span = max(file.newest - file.oldest, 1)
            needed = max(needed, timedelta(microseconds=span * n / rows))
    width = max(needed * _ROWS_WINDOW_MARGIN, _MIN_ROWS_WINDOW)
    return width if width <= _MAX_ROWS_WINDOW else None


def _cutoff(
    reader: Reader,
    table: str,
    symbols: Symbols,
    n: int,
    exchange: str | None,
    end: datetime | None,
    expected: set[tuple[str, str | None]],
    windows: list[datetime | None],
) -> datetime | None:
    """The earliest timestamp among the newest `n` rows of every (symbol, exchange) in [the last window, end);
    None when there are no rows. Reads the time column of each window in turn until every expected pair has n
    rows in one (the last window is final whatever it holds)."""
    nth_newest = (
        f"SELECT symbol, exchange, count(*) >= ? AS complete, list_min(max(timestamp, ?)) AS t "
        f"FROM {table} WHERE {{condition}} GROUP BY symbol, exchange"
    )
    for number, lower in enumerate(windows, 1):
        condition, params = where(symbols, lower, end, exchange)
        groups = reader.sql(nth_newest.format(condition=condition), [n, n, *params]).to_pylist()
        if number == len(windows) or expected <= {(g["symbol"], g["exchange"]) for g in groups if g["complete"]}:
            return min((g["t"] for g in groups), default=None)
    raise AssertionError("the last window reads everything")  # pragma: no cover


def files_holding(
    reader: Reader,
    table_name: str,
    names: list[str],
    exchange: str | None,
    start: datetime | None,
    end: datetime | None,
) -> list[tuple[DataFile, dict[str, int]]]:
    """The data files whose partition overlaps [start, end) and that hold some of `names`, newest first, with
    the rows each of those names has in the file."""
    low = None if start is None else utc(start, "start")
    high = None if end is None else utc(end, "end")
    wanted = set(names)
    found = []
    for file in reader.layout(table_name).files:
        if exchange is not None and file.exchange != exchange:
            continue
        if file.day is not None and (
            (high is not None and _midnight(file.day) >= high)
            or (low is not None and _midnight(file.day) + timedelta(days=1) <= low)
        ):
            continue
        counts = reader.symbol_counts(file.path)
        if held := {name: counts[name] for name in wanted if name in counts}:
            found.append((file, held))
    return found


def _windows(
    files: list[DataFile], start: datetime | None, end: datetime | None, first: timedelta | None
) -> Iterator[datetime]:
    """Lower bounds of the windows over `files` (newest first), each older than the last: `first` back from the
    newest data, then the recent windows, then partition days."""
    days = sorted({f.day for f in files if f.day is not None}, reverse=True)
    if not days:
        return
    newest = [f.newest for f in files if f.day == days[0]]
    anchor = (
        _midnight(days[0]) + timedelta(days=1)
        if None in newest
        else datetime_from_micros(max(n for n in newest if n is not None) + 1)
    )
    if end is not None:
        anchor = min(anchor, utc(end, "end"))
    low = None if start is None else utc(start, "start")
    lowers = [anchor - width for width in (*([first] if first else []), *_RECENT_WINDOWS)]
    lowers += [_midnight(days[count - 1]) for count in _WINDOW_DAYS if count < len(days) or count == 1]
    previous = anchor
    for lower in lowers:
        if low is not None and lower <= low:
            return
        if lower < previous:
            yield lower
            previous = lower


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def page(
    engine: QueryEngine,
    kind: str,
    symbols: Symbols,
    start: datetime | None,
    end: datetime | None,
    *,
    exchange: str | None = None,
    after: str | None = None,
    limit: int = 1000,
    columns: Sequence[str] | None = None,
    as_of: AsOf = None,
) -> Page:
    """Up to `limit` rows of [start, end) in event order, starting after the cursor `after` (None: from the start).

    Pages walk a moving table consistently only if they read one snapshot: pass the same `as_of` on every call
    (e.g. the snapshot id from `engine.snapshot_ids`). The key columns (timestamp, source_sequence, message_id)
    are always returned, since the next cursor is built from them.
    """
    reader = engine.at(as_of)
    return read_page(reader, kind, symbols, start, end, exchange=exchange, after=after, limit=limit, columns=columns)


def read_page(
    reader: Reader,
    kind: str,
    symbols: Symbols,
    start: datetime | None,
    end: datetime | None,
    *,
    exchange: str | None = None,
    after: str | None = None,
    limit: int = 1000,
    columns: Sequence[str] | None = None,
) -> Page:
    """`page` on a reader already pinned to its snapshots (so a sequence of pages reads one snapshot)."""
    spec = record_spec(kind, EVENT_SPECS)
    condition, params = where(symbols, start, end, exchange)
    if after is not None:
        position, position_params = Cursor.decode(after).condition()
        condition = f"{condition} AND {position}"
        params.extend(position_params)
    query = (
        f"SELECT {projection(spec, columns, KEY_COLUMNS)} FROM {table_identifier(spec)} "
        f"WHERE {condition} ORDER BY {event_order()} LIMIT ?"
    )
    rows = reader.sql(query, [*params, positive(limit, "limit")])
    cursor = Cursor.after_last_row(rows).encode() if rows.num_rows else None
    return Page(rows, cursor, has_more=rows.num_rows == limit)
