"""Overviews: a daily summary per symbol, the symbols a table holds, and each table's size."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from k2.lake.tables import table_identifier
from k2.query.bars import bars, day_zone
from k2.query.engine import QueryEngine
from k2.query.filters import EVENT_SPECS, record_spec, where
from k2.query.market import Symbols
from k2.query.snapshots import lineage, pinned_snapshot
from k2.query.timetravel import AsOf
from k2.schema.fields import ALL_RECORDS

_DAILY_COLUMNS = ("date", "symbol", "exchange", "open", "high", "low", "close", "volume", "vwap", "trade_count")

STATS_SCHEMA = pa.schema(
    [
        pa.field("table", pa.string(), nullable=False),
        pa.field("snapshot_id", pa.int64()),
        pa.field("committed_at", pa.timestamp("us", tz="UTC")),
        pa.field("rows", pa.int64(), nullable=False),
        pa.field("data_files", pa.int64(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("snapshots", pa.int64(), nullable=False),
        pa.field("partitions", pa.int64(), nullable=False),
    ]
)


def daily_summary(
    engine: QueryEngine,
    symbols: Symbols,
    start: datetime | None,
    end: datetime | None,
    *,
    exchange: str | None = None,
    tz: str | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """One row per (date, symbol, exchange) with trades in [start, end), in that order: date, open, high, low,
    close, volume, vwap, trade_count — a 1d bar (k2.query.bars documents each column). Days are each exchange's
    trading days (k2.query.venues: Australia/Sydney for ASX, so a session is one day), or `tz` days when given.
    """
    daily = bars(engine, symbols, "1d", start, end, exchange=exchange, tz=tz, as_of=as_of)
    zones = {name: ZoneInfo(day_zone(tz, name)) for name in set(daily.column("exchange").to_pylist())}
    dates = pa.array(
        [
            moment.astimezone(zones[name]).date()
            for moment, name in zip(
                daily.column("timestamp").to_pylist(), daily.column("exchange").to_pylist(), strict=True
            )
        ],
        pa.date32(),
    )
    by_day = [("date", "ascending"), ("symbol", "ascending"), ("exchange", "ascending")]
    return daily.append_column("date", dates).select(list(_DAILY_COLUMNS)).sort_by(by_day)


def symbols(
    engine: QueryEngine,
    kind: str = "trades",
    *,
    exchange: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    as_of: AsOf = None,
) -> pa.Table:
    """One row per (symbol, exchange) in `kind` ("trades" or "quotes"): first_seen and last_seen (event time, UTC)
    and count (rows), ordered by symbol then exchange. Without start/end every file is read.
    """
    spec = record_spec(kind, EVENT_SPECS)
    condition, params = where(None, start, end, exchange)
    query = (
        "SELECT symbol, exchange, min(timestamp) AS first_seen, max(timestamp) AS last_seen, count(*) AS count "
        f"FROM {table_identifier(spec)} WHERE {condition} GROUP BY symbol, exchange ORDER BY symbol, exchange"
    )
    return engine.at(as_of).sql(query, params)


def table_stats(engine: QueryEngine, *, as_of: AsOf = None) -> pa.Table:
    """One row per table at the snapshot the reader sees: snapshot_id and committed_at (null before the first
    commit), rows and data files and their bytes (from the manifests, so delete files are not counted), snapshots
    (commits in the snapshot's lineage) and partitions (day x exchange) holding data.
    """
    snapshot_ids = engine.at(as_of).snapshot_ids
    rows = []
    for spec in ALL_RECORDS:
        table, snapshot = pinned_snapshot(engine, spec, snapshot_ids)
        row = {"table": table_identifier(spec), "snapshot_id": None, "committed_at": None}
        row |= {"rows": 0, "data_files": 0, "bytes": 0, "snapshots": 0, "partitions": 0}
        if table is not None and snapshot is not None:
            files = table.inspect.data_files(snapshot.snapshot_id)
            row |= {
                "snapshot_id": snapshot.snapshot_id,
                "committed_at": snapshot.timestamp_ms * 1000,
                "rows": pc.sum(files.column("record_count")).as_py() or 0,
                "data_files": files.num_rows,
                "bytes": pc.sum(files.column("file_size_in_bytes")).as_py() or 0,
                "snapshots": len(lineage(table, snapshot)),
                "partitions": table.inspect.partitions(snapshot_id=snapshot.snapshot_id).num_rows,
            }
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=STATS_SCHEMA)
