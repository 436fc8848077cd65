"""Rows of a few symbols read straight from a table's Parquet data files, for queries that return many whole rows.

DuckDB's iceberg_scan spends most of a 600k-row read of one symbol-day turning its string columns (trade and message
ids) into Arrow: ~230 ms on the bench lake, where pyarrow's Parquet reader, which decodes into Arrow directly on
every core, takes ~90 ms for the same row groups. The snapshot's Layout says which data files hold the symbols
(k2.query.layout); row groups are skipped by their symbol and timestamp statistics, and since files are written
sorted by symbol then time (k2.schema.iceberg.SORT_KEYS) the rows of one symbol are usually one contiguous slice,
kept without a copy.

`newest_before` finds, per (symbol, exchange), the rows of its newest instant before a time (the quote prevailing
then) by reading row groups newest first and stopping as soon as no unread group can hold a newer one: one row
group of the day before, instead of DuckDB grouping days of rows (~45 ms on the bench lake).

Used only where it is exact: both return None, and the caller asks DuckDB instead, when the snapshot has delete
files, when no symbols are named, or when a data file lacks a column or holds it under another Iceberg field id
than the snapshot's schema (a renamed, or dropped and re-added, column); `newest_before` also for a file with no
exchange partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from k2.query.engine import Reader
from k2.query.filters import row_mask, symbol_list, take_where, utc
from k2.query.layout import DataFile, Layout
from k2.query.market import Symbols, files_holding
from k2.schema.codecs import micros_from_datetime

_FIELD_ID = b"PARQUET:field_id"


def scan_files(
    reader: Reader,
    table_name: str,
    columns: Sequence[str],
    symbols: Symbols,
    start: datetime,
    end: datetime,
    exchange: str | None = None,
) -> list[pa.Table] | None:
    """The rows `where(symbols, start, end, exchange)` selects, as one table per data file holding any (files
    newest first, each file's rows in its write order), with exactly `columns`; None when this cannot be exact."""
    if (readable := _readable(reader, table_name, symbols)) is None:
        return None
    names, layout = readable
    low, high = _micros(start, "start"), _micros(end, "end")
    pieces = []
    for file in _files_overlapping(reader, table_name, names, exchange, start, end, low, high):
        opened = _open(layout, file.path, columns)
        if opened is None:
            return None
        rows = opened.read([g for g in range(opened.row_groups) if opened.may_hold(g, names, low, high)])
        rows = take_where(rows, row_mask(rows, names, start, end, exchange))
        if rows.num_rows:
            pieces.append(rows.select(list(columns)))
    return pieces


def newest_before(
    reader: Reader,
    table_name: str,
    columns: Sequence[str],
    symbols: Symbols,
    start: datetime,
    before: datetime,
    exchange: str | None = None,
) -> list[pa.Table] | None:
    """Per (symbol, exchange), its rows with the newest timestamp in [start, before) (several when they share that
    microsecond), with exactly `columns`; None when this cannot be exact."""
    if (readable := _readable(reader, table_name, symbols)) is None:
        return None
    names, layout = readable
    low, high = _micros(start, "start"), _micros(before, "before")
    # Every row group that may hold a wanted row, with the newest time it may hold and the pairs it may hold.
    candidates: list[tuple[int, _Opened, int, list[tuple[str, str]]]] = []
    for file in _files_overlapping(reader, table_name, names, exchange, start, before, low, high):
        if file.exchange is None:
            return None  # its rows' pairs are not known from the layout
        opened = _open(layout, file.path, columns)
        if opened is None:
            return None
        for group in range(opened.row_groups):
            if opened.may_hold(group, names, low, high):
                newest = min(opened.newest(group, high), high - 1)
                pairs = [(name, file.exchange) for name in opened.names_held(group, names)]
                candidates.append((newest, opened, group, pairs))
    candidates.sort(key=lambda candidate: candidate[0], reverse=True)
    found: dict[tuple[str, str], tuple[int, list[pa.Table]]] = {}  # pair -> (its newest time, its rows then)
    for newest, opened, group, pairs in candidates:
        if all(pair in found and found[pair][0] > newest for pair in pairs):
            continue  # nothing here can be as new as what each of its pairs already has
        rows = opened.read([group])
        rows = take_where(rows, row_mask(rows, names, start, before, exchange))
        for name in pc.unique(rows["symbol"]).to_pylist():
            of_name = take_where(rows, pc.equal(rows["symbol"], name))
            time = pc.max(of_name["timestamp"]).cast(pa.int64()).as_py()
            then = take_where(of_name, pc.equal(of_name["timestamp"].cast(pa.int64()), time)).select(list(columns))
            pair = (name, of_name["exchange"][0].as_py())
            if pair not in found or found[pair][0] < time:
                found[pair] = (time, [then])
            elif found[pair][0] == time:
                found[pair][1].append(then)
    return [table for _time, tables in found.values() for table in tables]


def _readable(reader: Reader, table_name: str, symbols: Symbols) -> tuple[list[str], Layout] | None:
    """The named symbols and the snapshot's layout, when the files can be read directly: symbols are named, no
    delete files, and a FileIO to open them (the per-file column checks are `_open`'s)."""
    names = symbol_list(symbols)
    layout = reader.layout(table_name)
    if names is None or layout.has_deletes or layout.io is None:
        return None
    return names, layout


def _micros(moment: datetime, name: str) -> int:
    return micros_from_datetime(utc(moment, name))


def _files_overlapping(
    reader: Reader,
    table_name: str,
    names: list[str],
    exchange: str | None,
    start: datetime,
    end: datetime,
    low: int,
    high: int,
) -> list[DataFile]:
    """The data files that hold some of `names` and whose timestamps may fall in [start, end) (`low`, `high`: the
    same bounds in microseconds)."""
    return [
        file
        for file, _rows in files_holding(reader, table_name, names, exchange, start, end)
        if not ((file.newest is not None and file.newest < low) or (file.oldest is not None and file.oldest >= high))
    ]


class _Opened:
    """A data file opened to read `columns` plus those a selection tests, with its row groups' statistics."""

    def __init__(self, parquet: pq.ParquetFile, columns: Sequence[str]) -> None:
        self._parquet = parquet
        self.columns = list(dict.fromkeys([*columns, *_SELECTED_ON]))
        metadata = parquet.metadata
        self.row_groups = metadata.num_row_groups
        position = {metadata.schema.column(i).path: i for i in range(metadata.num_columns)}
        self._symbols = [metadata.row_group(g).column(position["symbol"]).statistics for g in range(self.row_groups)]
        self._times = [metadata.row_group(g).column(position["timestamp"]).statistics for g in range(self.row_groups)]

    def read(self, groups: list[int]) -> pa.Table:
        return self._parquet.read_row_groups(groups, columns=self.columns)

    def names_held(self, group: int, names: list[str]) -> list[str]:
        """The names the group's symbol statistics allow (all of them when it has none)."""
        symbol = self._symbols[group]
        if symbol is None or not symbol.has_min_max or not isinstance(symbol.min, str):
            return names
        return [name for name in names if symbol.min <= name <= symbol.max]

    def newest(self, group: int, otherwise: int) -> int:
        """The group's largest timestamp by its statistics (microseconds: checked on open), else `otherwise`."""
        time = self._times[group]
        return time.max_raw if time is not None and time.has_min_max else otherwise

    def may_hold(self, group: int, names: list[str], low: int, high: int) -> bool:
        """Whether the statistics allow a row of `names` with a timestamp in [low, high)."""
        time = self._times[group]
        overlaps = time is None or not time.has_min_max or (time.max_raw >= low and time.min_raw < high)
        return overlaps and bool(self.names_held(group, names))


_SELECTED_ON = ("symbol", "exchange", "timestamp")


def _open(layout: Layout, path: str, columns: Sequence[str]) -> _Opened | None:
    """The file, if its columns are the snapshot's (same names, same Iceberg field ids); else None."""
    assert layout.io is not None
    parquet = pq.ParquetFile(layout.io.new_input(path).open(seekable=True))
    schema = parquet.schema_arrow
    for name in dict.fromkeys([*columns, *_SELECTED_ON]):
        if name not in schema.names or name not in layout.field_ids:
            return None
        metadata = schema.field(name).metadata or {}
        if metadata.get(_FIELD_ID) != str(layout.field_ids[name]).encode():
            return None
    if schema.field("timestamp").type != pa.timestamp("us", "UTC"):
        return None  # the statistics are compared as microseconds
    return _Opened(parquet, columns)
