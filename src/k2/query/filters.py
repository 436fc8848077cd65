"""What a research query selects — table, symbols, exchange, time range, columns — checked and turned into SQL.

Values always travel as `?` parameters. The only text spliced into SQL comes from fixed allow-lists here: table
names from the V2 record specs, column names from their field lists, and the fixed event-order expression.

Time filters are ranges on `timestamp`, half-open [start, end): the Iceberg scan prunes data files from the
day(timestamp) partition and the column bounds only for such ranges (a `timestamp::date = ?` filter reads every
file). Datetimes must carry a time zone: a naive one is ambiguous, and a silently wrong hour is worse than an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.lake.tables import table_identifier
from k2.schema.fields import ALL_RECORDS, QUOTES_V2, REFERENCE_DATA_V2, TRADES_V2, RecordSpec

# Kinds a caller may name, short or full: "trades", "trades_v2" and "market_data.trades_v2" are the same table.
_SPECS: dict[str, RecordSpec] = {
    **{spec.name: spec for spec in ALL_RECORDS},
    **{table_identifier(spec): spec for spec in ALL_RECORDS},
    "trades": TRADES_V2,
    "quotes": QUOTES_V2,
    "reference_data": REFERENCE_DATA_V2,
}
EVENT_SPECS: tuple[RecordSpec, ...] = (TRADES_V2, QUOTES_V2)

# Null sequences sort after every real one. Spelled out (not NULLS LAST) because the keyset cursor compares the same
# expression, and a NULL in a comparison would silently drop rows.
_NO_SEQUENCE = 2**63 - 1


class InvalidQueryError(ValueError):
    """The caller's arguments cannot make a query; the message says which one and what is allowed."""


def record_spec(kind: str, allowed: Sequence[RecordSpec] = ALL_RECORDS) -> RecordSpec:
    """The record spec for a table name, from the allow-list only."""
    spec = _SPECS.get(kind) if isinstance(kind, str) else None
    if spec is None or spec not in allowed:
        names = ", ".join(s.name for s in allowed)
        raise InvalidQueryError(f"unknown table {kind!r}: use one of {names}")
    return spec


def sequence_order(prefix: str = "") -> str:
    """The expression `event_order` sorts source_sequence by (nulls after every real sequence)."""
    return f"coalesce({prefix}source_sequence, {_NO_SEQUENCE})"


def event_order(prefix: str = "", *, descending: bool = False) -> str:
    """ORDER BY keys of event time: timestamp, the source's sequence, then message_id (unique): a total order."""
    keys = (f"{prefix}timestamp", sequence_order(prefix), f"{prefix}message_id")
    return ", ".join(f"{key} DESC" for key in keys) if descending else ", ".join(keys)


def sequence_key(value: int | None) -> int:
    """The value `sequence_order` gives a row's source_sequence."""
    return _NO_SEQUENCE if value is None else value


def utc(moment: datetime, name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise InvalidQueryError(f"{name} must be a datetime, not {type(moment).__name__}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidQueryError(f"{name}={moment.isoformat()} has no time zone: pass e.g. datetime(..., tzinfo=UTC)")
    return moment.astimezone(UTC)


def symbol_list(symbols: str | Sequence[str] | None) -> list[str] | None:
    """None means every symbol; a single string is one symbol (not its letters)."""
    if symbols is None:
        return None
    values = [symbols] if isinstance(symbols, str) else list(symbols)
    if not values or not all(isinstance(s, str) and s for s in values):
        raise InvalidQueryError(f"symbols must be a non-empty list of non-empty strings, got {symbols!r}")
    return values


def positive(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidQueryError(f"{name} must be a positive integer, got {value!r}")
    return value


def projection(spec: RecordSpec, columns: Sequence[str] | None, required: Sequence[str] = ()) -> str:
    """A SELECT list of the spec's fields (all of them when `columns` is None), plus `required` ones if missing."""
    return ", ".join(f'"{name}"' for name in projected_names(spec, columns, required))


def projected_names(spec: RecordSpec, columns: Sequence[str] | None, required: Sequence[str] = ()) -> list[str]:
    """The column names `projection` selects, checked against the spec."""
    if columns is None:
        return list(spec.field_names)
    unknown = [c for c in columns if c not in spec.field_names]
    if unknown or not columns:
        raise InvalidQueryError(f"unknown columns {unknown or columns!r}: {spec.name} has {spec.field_names}")
    return list(dict.fromkeys([*columns, *required]))


def where(
    symbols: str | Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    exchange: str | None = None,
    *,
    prefix: str = "",
) -> tuple[str, list[Any]]:
    """A boolean SQL condition (TRUE when nothing is selected) and its parameters, in placeholder order."""
    conditions: list[str] = []
    params: list[Any] = []
    names = symbol_list(symbols)
    if names is not None:
        placeholders = ", ".join(["?"] * len(names))
        conditions.append(f"{prefix}symbol IN ({placeholders})")
        params.extend(names)
    if exchange is not None:
        if not isinstance(exchange, str) or not exchange:
            raise InvalidQueryError(f"exchange must be a non-empty string, got {exchange!r}")
        conditions.append(f"{prefix}exchange = ?")
        params.append(exchange)
    low = utc(start, "start") if start is not None else None
    high = utc(end, "end") if end is not None else None
    if low is not None and high is not None and low >= high:
        raise InvalidQueryError(f"start {low.isoformat()} must be before end {high.isoformat()}")
    if low is not None:
        conditions.append(f"{prefix}timestamp >= ?")
        params.append(low)
    if high is not None:
        conditions.append(f"{prefix}timestamp < ?")
        params.append(high)
    return (" AND ".join(conditions) or "TRUE"), params


def select_rows(
    rows: pa.Table,
    symbols: str | Sequence[str] | None,
    start: datetime | None,
    end: datetime | None,
    exchange: str | None,
) -> pa.Table:
    """The rows of an Arrow table that `where(symbols, start, end, exchange)` would keep (same half-open
    [start, end) on timestamp): the same selection for rows already in memory."""
    return take_where(rows, row_mask(rows, symbols, start, end, exchange))


def take_where(rows: pa.Table, mask: pa.ChunkedArray | pa.Array) -> pa.Table:
    """The rows where `mask` holds (null: not kept); a zero-copy slice when they are one run, as one symbol's rows
    of a file written sorted by symbol are."""
    keep = np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))
    if len(keep) == rows.num_rows:
        return rows
    if len(keep) and keep[-1] - keep[0] + 1 == len(keep):
        return rows.slice(int(keep[0]), len(keep))
    return rows.take(pa.array(keep))


def row_mask(
    rows: pa.Table,
    symbols: str | Sequence[str] | None,
    start: datetime | None,
    end: datetime | None,
    exchange: str | None,
) -> pa.ChunkedArray | pa.Array:
    """Per row of `rows`, whether `select_rows` keeps it."""
    tests: list[pa.ChunkedArray | pa.Array] = []
    names = symbol_list(symbols)
    if names is not None:
        tests.append(pc.is_in(rows["symbol"], pa.array(names, pa.string())))
    if exchange is not None:
        tests.append(pc.equal(rows["exchange"], exchange))
    ts_type = rows.schema.field("timestamp").type
    if start is not None:
        tests.append(pc.greater_equal(rows["timestamp"], pa.scalar(utc(start, "start"), ts_type)))
    if end is not None:
        tests.append(pc.less(rows["timestamp"], pa.scalar(utc(end, "end"), ts_type)))
    if not tests:
        return pa.array(np.ones(rows.num_rows, dtype=bool))
    mask = tests[0]
    for test in tests[1:]:
        mask = pc.and_(mask, test)
    return mask
