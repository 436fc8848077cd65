"""Trades and quotes as recorded: by symbols, exchange and time range; the latest N per symbol; keyset pages.

Every function returns the table's V2 columns (or the `columns` asked for) as a pyarrow Table: prices
decimal128(18,8), timestamps timestamp[us, tz=UTC]. Rows come in event order — timestamp, then source_sequence
(nulls last), then message_id — so equal timestamps always come back the same way. `as_of` reads an older
snapshot (k2.query.timetravel).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from k2.lake.tables import table_identifier
from k2.query.cursor import KEY_COLUMNS, Cursor
from k2.query.engine import QueryEngine, Reader
from k2.query.filters import EVENT_SPECS, event_order, positive, projection, record_spec, where
from k2.query.timetravel import AsOf

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

    Two passes over one snapshot: the first reads only the time column to find, per (symbol, exchange), the
    timestamp of its n-th newest row; the second reads whole rows from the oldest of those on, so files before it
    are pruned (10x faster than ranking every row of a symbol's history). A `start` narrows the first pass too.
    """
    spec = record_spec(kind, EVENT_SPECS)
    condition, params = where(symbols, start, end, exchange)
    n = positive(n, "n")
    reader = engine.at(as_of)
    table = table_identifier(spec)
    nth_newest = f"SELECT list_min(max(timestamp, ?)) AS t FROM {table} WHERE {condition} GROUP BY symbol, exchange"
    cutoff = reader.sql(f"SELECT min(t) FROM ({nth_newest})", [n, *params]).column(0)[0].as_py()
    # Rows at the cutoff instant are all kept here: the ranking below picks exactly n by the full event order.
    recent, recent_params = (
        (condition, params) if cutoff is None else (f"{condition} AND timestamp >= ?", [*params, cutoff])
    )
    query = (
        f"SELECT {projection(spec, columns, ('symbol', 'exchange', *KEY_COLUMNS))} FROM {table} "
        f"WHERE {recent} "
        f"QUALIFY row_number() OVER (PARTITION BY symbol, exchange ORDER BY {event_order(descending=True)}) <= ? "
        f"ORDER BY symbol, exchange, {event_order()}"
    )
    return reader.sql(query, [*recent_params, n])


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
