"""Render a query result: a rich table for people, CSV and JSON for programs.

Every format shows a value the same way:
- decimals as their exact text at the column's scale (36.66700000); they never pass through float;
- timestamps with a zone as ISO-8601 UTC with microseconds and a Z (2023-11-15T10:00:00.123456Z), nanosecond
  columns with 9 digits; timestamps without a zone the same without the Z (they name no instant);
- dates and times ISO-8601; binary as hex; NaN/Infinity as the strings "NaN", "Infinity", "-Infinity";
- null as an empty CSV cell, JSON null, a dim NULL in the table.
JSON is one array of objects, one object per line; decimals and timestamps are strings so no parser rounds them.
Lists, maps and structs are JSON arrays/objects (inside a CSV cell, their compact JSON text).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TextIO

import pyarrow as pa
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

_BATCH_ROWS = 10_000
_EPOCH = datetime(1970, 1, 1)
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}

Converter = Callable[[Any], Any]


def _timestamp_text(value: int, unit: str, zoned: bool) -> str:
    """Format epoch units exactly (integer arithmetic, so nanoseconds survive, unlike datetime)."""
    per_second = _PER_SECOND[unit]
    seconds, fraction = divmod(value, per_second)
    digits = 9 if unit == "ns" else 6
    moment = (_EPOCH + timedelta(seconds=seconds)).isoformat()
    text = f"{moment}.{fraction * (10**digits // per_second):0{digits}d}"
    return text + "Z" if zoned else text


def _datetime_text(value: datetime) -> str:
    if value.tzinfo is None:
        return value.isoformat(timespec="microseconds")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _interval_text(value: Any) -> str:
    seconds = format(Decimal(value.nanoseconds).scaleb(-9).normalize(), "f")
    return f"P{value.months}M{value.days}DT{seconds}S"


def _skip_null(convert: Converter) -> Converter:
    return lambda v: None if v is None else convert(v)


def _converter(t: pa.DataType) -> Converter:
    """A function from one Python value of Arrow type `t` (as to_pylist gives it) to its JSON-ready form."""
    if pa.types.is_decimal(t):
        # format "f", not str(): str(Decimal("0E-8")) is "0E-8"; both keep every digit of the scale.
        return _skip_null(lambda v: format(v, "f"))
    if pa.types.is_timestamp(t):
        return _skip_null(_datetime_text)
    if pa.types.is_date(t) or pa.types.is_time(t):
        return _skip_null(lambda v: v.isoformat())
    if pa.types.is_floating(t):
        return _skip_null(_float)
    if pa.types.is_interval(t):
        return _skip_null(_interval_text)
    if pa.types.is_duration(t):
        return _skip_null(str)
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return _skip_null(bytes.hex)
    if pa.types.is_map(t):
        key, item = _converter(t.key_type), _converter(t.item_type)
        return _skip_null(lambda v: {str(key(k)): item(x) for k, x in v})
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        element = _converter(t.value_type)
        return _skip_null(lambda v: [element(x) for x in v])
    if pa.types.is_struct(t):
        fields = [(f.name, _converter(f.type)) for f in t]
        return _skip_null(lambda v: {name: c(v[name]) for name, c in fields})
    return lambda v: v  # strings, integers, booleans: already JSON-ready


def column_values(column: pa.Array | pa.ChunkedArray) -> list[Any]:
    """The column's values in JSON-ready form (str/int/float/bool/None/list/dict), as every format prints them."""
    t = column.type
    if pa.types.is_timestamp(t):
        # Through int64, not datetime: exact for every unit and no pandas needed for nanoseconds.
        return [
            None if v is None else _timestamp_text(v, t.unit, t.tz is not None)
            for v in column.cast(pa.int64()).to_pylist()
        ]
    convert = _converter(t)
    return [convert(v) for v in column.to_pylist()]


def cell_text(value: Any) -> str:
    """One JSON-ready value as CSV/table text: null is empty, booleans lower case, nested values compact JSON."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return repr(value) if isinstance(value, float) else str(value)


def _rows(table: pa.Table, limit: int | None = None) -> Iterator[tuple[Any, ...]]:
    """JSON-ready rows, converted a batch at a time so a large result is never doubled in memory."""
    source = table if limit is None else table.slice(0, limit)
    for batch in source.to_batches(max_chunksize=_BATCH_ROWS):
        yield from zip(*(column_values(c) for c in batch.columns), strict=True)


def _unique_names(names: list[str]) -> list[str]:
    """JSON object keys must differ; `SELECT 1 AS a, 2 AS a` is legal SQL."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}_{count}")
    return unique


def write_csv(table: pa.Table, out: TextIO, *, header: bool = True) -> None:
    """Header row (unless `header` is False: more rows of a stream), then one line per row ("\\n" line ends,
    minimal quoting)."""
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(table.column_names)
    for row in _rows(table):
        writer.writerow([cell_text(v) for v in row])


def write_ndjson(table: pa.Table, out: TextIO) -> None:
    """One JSON object per row and line (as write_json's objects)."""
    names = _unique_names(table.column_names)
    for row in _rows(table):
        out.write(json.dumps(dict(zip(names, row, strict=True)), ensure_ascii=False, allow_nan=False))
        out.write("\n")


def write_json(table: pa.Table, out: TextIO) -> None:
    """A JSON array of objects, one per line; `[]` for no rows."""
    names = _unique_names(table.column_names)
    separator = "[\n"
    for row in _rows(table):
        out.write(separator)
        out.write(json.dumps(dict(zip(names, row, strict=True)), ensure_ascii=False, allow_nan=False))
        separator = ",\n"
    out.write("[]\n" if separator == "[\n" else "\n]\n")


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def print_table(table: pa.Table, console: Console, *, max_rows: int | None = None, title: str | None = None) -> None:
    """Print the result as a rich table (numbers right-aligned); `max_rows` caps the rows shown."""
    rows = [
        [Text("NULL", style="dim") if v is None else Text(cell_text(v)) for v in row] for row in _rows(table, max_rows)
    ]
    view = Table(title=title, box=box.SIMPLE_HEAD, header_style="bold")
    for i, field in enumerate(table.schema):
        numeric = _is_numeric(field.type)
        if numeric or pa.types.is_temporal(field.type):
            # Never break a number or a timestamp across lines; free text and nested values fold instead.
            width = max([len(field.name), *(len(row[i]) for row in rows)])
            view.add_column(field.name, justify="right" if numeric else "left", no_wrap=True, min_width=width)
        else:
            # A floor so a narrow terminal folds free text instead of squeezing the column away entirely.
            view.add_column(field.name, overflow="fold", min_width=min(len(field.name), 12))
    natural = sum(max([len(f.name), *(len(row[i]) for row in rows)]) + 3 for i, f in enumerate(table.schema))
    if not console.is_terminal and natural > console.width:
        console.width = natural  # piped output has no screen to fit: never fold or drop columns there
    for row in rows:
        # Text, not str: values like "[bold]" must print as written, not as rich markup.
        view.add_row(*row)
    shown = table.num_rows if max_rows is None else min(max_rows, table.num_rows)
    noun = "row" if table.num_rows == 1 else "rows"
    count = f"{table.num_rows} {noun}" if shown == table.num_rows else f"first {shown} of {table.num_rows} rows"
    console.print(view)
    # Below the table, not as its caption: a caption wraps to the width of a narrow table.
    console.print(Text(count, style="dim"))
