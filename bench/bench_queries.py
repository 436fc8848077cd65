"""Query latency of the K2 query library (k2.query.*) against the naive lakehouse path, on a generated lake.

For each main query: warm p50/p99 over `--runs` runs through `QueryEngine` (DuckDB iceberg_scan), and the same
library function run over the naive path from docs/stack-notes.md, "Query latency against ArcticDB" — pyiceberg
`table.scan(row_filter=..., selected_fields=...).to_arrow()` then DuckDB on that Arrow table — with the identical SQL,
so the ratio is the scan path alone. The naive path gets the columns its SQL needs (not `*`). Each side of a query stops
after `--budget` seconds (run counts are printed; a call slower than half the budget is timed once). Then a few
diagnostics of where the engine's time goes, and the same queries through HTTP when `k2.api` exists.

Run from the repo root: `python bench/bench_queries.py --quick` (1 M-trade lake, 10 runs, < 1 min) or
`python bench/bench_queries.py --home /tmp/k2-bench-10m` (generates 10 M trades first if the lake is missing).
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from lakegen import INSTRUMENTS, TRADING_DAYS, build_lake
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    EqualTo,
    GreaterThanOrEqual,
    LessThan,
)
from pyiceberg.table import Table

from k2.config import Settings
from k2.lake.catalog import NAMESPACE, open_catalog
from k2.lake.tables import table_identifier
from k2.query.asof import DEFAULT_QUOTE_LOOKBACK, trades_with_quotes
from k2.query.bars import bars
from k2.query.engine import QueryEngine
from k2.query.layout import Layout
from k2.query.market import latest, trades
from k2.query.summary import daily_summary, table_stats
from k2.schema.fields import QUOTES_V2, TRADES_V2

SYMBOL = INSTRUMENTS[0].symbol  # the busiest symbol (30% of trades): the worst case for per-symbol queries
DAY = datetime(TRADING_DAYS[-1].year, TRADING_DAYS[-1].month, TRADING_DAYS[-1].day, tzinfo=UTC)  # the newest day
HOUR = DAY + timedelta(hours=14)  # inside the busiest (European/US) hours of the crypto curve
LAKE_START = DAY - timedelta(days=len(TRADING_DAYS))  # before the first ASX session (UTC evening before day 1)
LAKE_END = DAY + timedelta(days=1)

# Columns each naive scan reads: what the query's SQL touches. "*" where the query returns every column.
ALL = ("*",)
_EVENT_COLUMNS = ("symbol", "exchange", "timestamp", "price", "quantity", "source_sequence", "message_id")
# Bars also read trade_conditions: each exchange's default leaves some condition codes out (k2.query.venues).
BAR_COLUMNS = (*_EVENT_COLUMNS, "trade_conditions")
ASOF_TRADE_COLUMNS = (*_EVENT_COLUMNS, "trade_id", "side")
ASOF_QUOTE_COLUMNS = (
    "symbol",
    "exchange",
    "timestamp",
    "bid_price",
    "bid_quantity",
    "ask_price",
    "ask_quantity",
    "source_sequence",
    "message_id",
)

Scans = dict[str, tuple[BooleanExpression, tuple[str, ...]]]  # table name -> (row filter, selected fields)


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def _filter(symbol: str | None, start: datetime | None, end: datetime | None) -> BooleanExpression:
    parts: list[BooleanExpression] = []
    if symbol is not None:
        parts.append(EqualTo("symbol", symbol))
    if start is not None:
        parts.append(GreaterThanOrEqual("timestamp", _iso(start)))
    if end is not None:
        parts.append(LessThan("timestamp", _iso(end)))
    if not parts:
        return AlwaysTrue()
    return parts[0] if len(parts) == 1 else And(*parts)


@dataclass(frozen=True)
class Query:
    name: str
    run: Callable[[Any], pa.Table]  # takes a QueryEngine or a NaiveReader
    naive: Scans
    http: tuple[str, dict[str, Any]] = ("", {})  # k2.api route and query parameters


def queries(summary_days: int = len(TRADING_DAYS)) -> list[Query]:
    """The benchmark's queries; the daily summary covers the last `summary_days` days (all of them by default)."""
    day_end = DAY + timedelta(days=1)
    hour_end = HOUR + timedelta(hours=1)
    summary_start = LAKE_END - timedelta(days=summary_days)
    day = {"symbols": SYMBOL, "start": _iso(DAY), "end": _iso(day_end)}
    return [
        Query(
            "last 1000 trades, 1 symbol",
            lambda e: latest(e, "trades", SYMBOL, 1000),
            {TRADES_V2.name: (_filter(SYMBOL, None, None), ALL)},
            ("/v1/trades/latest", {"symbols": SYMBOL, "n": 1000}),
        ),
        Query(
            "last 1000 trades, 1 symbol, start=day",
            lambda e: latest(e, "trades", SYMBOL, 1000, start=DAY),
            {TRADES_V2.name: (_filter(SYMBOL, DAY, None), ALL)},
            ("/v1/trades/latest", {"symbols": SYMBOL, "n": 1000, "start": _iso(DAY)}),
        ),
        Query(
            "1m bars, 1 symbol-day",
            lambda e: bars(e, SYMBOL, "1m", DAY, day_end),
            {TRADES_V2.name: (_filter(SYMBOL, DAY, day_end), BAR_COLUMNS)},
            ("/v1/bars", {**day, "interval": "1m"}),
        ),
        Query(
            "as-of join, 1 symbol-day",
            lambda e: trades_with_quotes(e, SYMBOL, DAY, day_end),
            {
                TRADES_V2.name: (_filter(SYMBOL, DAY, day_end), ASOF_TRADE_COLUMNS),
                QUOTES_V2.name: (_filter(SYMBOL, DAY - DEFAULT_QUOTE_LOOKBACK, day_end), ASOF_QUOTE_COLUMNS),
            },
            ("/v1/asof", day),
        ),
        Query(
            "trades, 1 symbol, 1 hour",
            lambda e: trades(e, SYMBOL, HOUR, hour_end),
            {TRADES_V2.name: (_filter(SYMBOL, HOUR, hour_end), ALL)},
            # one page: the API caps a page at 10 000 rows (k2.api.settings.MAX_PAGE_ROWS)
            ("/v1/trades", {"symbols": SYMBOL, "start": _iso(HOUR), "end": _iso(hour_end), "limit": 10_000}),
        ),
        Query(
            f"daily summary, 8 symbols x {summary_days} days",
            lambda e: daily_summary(e, None, summary_start, LAKE_END),
            {TRADES_V2.name: (_filter(None, summary_start, LAKE_END), BAR_COLUMNS)},
            ("/v1/summary/daily", {"start": _iso(summary_start), "end": _iso(LAKE_END)}),
        ),
    ]


class NaiveReader:
    """The naive path behind the library's `engine.at(as_of).sql(...)` calls: each query scans the tables it names
    with pyiceberg (planning, manifest reads and Parquet decode every time, as `scan().to_arrow()` does) and runs
    the same SQL in DuckDB over the Arrow tables.
    """

    def __init__(self, tables: dict[str, Table]) -> None:
        self._tables = tables
        self.scans: Scans = {}
        self._con = duckdb.connect(":memory:")
        self._con.execute("SET TimeZone = 'UTC'")
        self._con.execute(f"CREATE SCHEMA {NAMESPACE}")

    def at(self, as_of: object) -> NaiveReader:
        return self

    def layout(self, name: str) -> Layout:
        """No files known: the naive path plans nothing, so the library takes its plain scans (no pruning by
        symbol counts, no kept per-file partials)."""
        return Layout(())

    def sql(self, query: str, params: list[Any] | dict[str, Any] | None = None) -> pa.Table:
        for name, (row_filter, fields) in self.scans.items():
            if table_identifier_for(name) not in query:
                continue
            arrow = self._tables[name].scan(row_filter=row_filter, selected_fields=fields).to_arrow()
            self._con.register(f"_naive_{name}", arrow)
            self._con.execute(f"CREATE OR REPLACE VIEW {NAMESPACE}.{name} AS SELECT * FROM _naive_{name}")
        return self._con.execute(query, params).to_arrow_table()


def table_identifier_for(name: str) -> str:
    return f"{NAMESPACE}.{name}"


@dataclass
class Timing:
    samples: list[float] = field(default_factory=list)  # seconds
    rows: int = 0
    single: bool = False  # measured by its first call only (see `measure`)

    @property
    def runs(self) -> str:
        return "1 (cold)" if self.single else str(len(self.samples))

    def pct(self, q: float) -> float:
        return float(np.percentile(np.array(self.samples) * 1000, q)) if self.samples else float("nan")


def measure(fn: Callable[[], pa.Table], runs: int, budget: float) -> Timing:
    """One warm-up call (not counted), then up to `runs` timed calls, stopping once `budget` s are spent.

    A query whose warm-up alone takes over half the budget is measured by that one call (marked `single`): at
    tens of seconds a call, warm and cold differ by noise, and 30 runs would not fit a benchmark run.
    """
    started = time.perf_counter()
    timing = Timing(rows=fn().num_rows)
    first = time.perf_counter() - started
    if first > budget / 2:
        timing.samples.append(first)
        timing.single = True
        return timing
    spent = 0.0
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - started
        timing.samples.append(elapsed)
        spent += elapsed
        if spent > budget:
            break
    return timing


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))


def lake_size(engine: QueryEngine) -> None:
    stats = table_stats(engine).to_pylist()
    for row in stats:
        if row["rows"]:
            table = engine.table(row["table"])
            snapshot = table.current_snapshot() if table is not None else None
            manifests = len(snapshot.manifests(table.io)) if snapshot is not None and table is not None else 0
            print(
                f"  {row['table']}: {row['rows']:,} rows, {row['data_files']} data files, {manifests} manifests,"
                f" {row['snapshots']} snapshots, {row['partitions']} partitions, {row['bytes'] / 2**20:.1f} MiB"
            )


def diagnostics(engine: QueryEngine, trades_table: Table, runs: int = 5) -> None:
    """Where the engine's time goes, measured on the same lake (each line: median of `runs`)."""
    hour_end = HOUR + timedelta(hours=1)

    def median_ms(fn: Callable[[], object]) -> float:
        fn()
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        return float(np.median(samples) * 1000)

    ident = table_identifier(TRADES_V2)
    count_hour = f"SELECT count(*) FROM {ident} WHERE symbol = ? AND timestamp >= ? AND timestamp < ?"
    params = [SYMBOL, HOUR, hour_end]
    plan = trades_table.scan(row_filter=_filter(SYMBOL, HOUR, hour_end))
    files = [task.file.file_path for task in plan.plan_files()]
    all_files = [task.file.file_path for task in trades_table.scan().plan_files()]
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    parquet_count = "SELECT count(*) FROM read_parquet(?) WHERE symbol = ? AND timestamp >= ? AND timestamp < ?"
    explain = engine.sql(f"EXPLAIN ANALYZE {count_hour}", params).column(1)[0].as_py()
    files_read = next((ln.strip(" │") for ln in explain.splitlines() if "Files Read" in ln), "?")
    lines = [
        ("engine.refresh(), nothing new", median_ms(engine.refresh)),
        ("engine.sql('SELECT 1') (lock, DuckDB, Arrow)", median_ms(lambda: engine.sql("SELECT 1"))),
        (f"engine count(*) 1 symbol-hour ({files_read.strip()})", median_ms(lambda: engine.sql(count_hour, params))),
        (f"pyiceberg plan_files() for it ({len(files)} of {len(all_files)} files)", median_ms(plan.plan_files)),
        (
            "read_parquet(planned files) count(*) (plan once per snapshot)",
            median_ms(lambda: con.execute(parquet_count, [files, *params]).fetchall()),
        ),
    ]
    # time_bucket with a zone argument (what k2.query.bars always passes) over the same symbol-hour: the 1-day
    # width is the daily summary's; the zone-less TIMESTAMP form is what a UTC day could use instead.
    bucket = f"SELECT count(DISTINCT {{}}) FROM {ident} WHERE symbol = ? AND timestamp >= ? AND timestamp < ?"
    for label, expr in (
        ("time_bucket(1 minute, ts, 'UTC'), 1 symbol-hour", "time_bucket(INTERVAL 1 MINUTE, timestamp, 'UTC')"),
        ("time_bucket(1 day, ts, 'UTC'), 1 symbol-hour", "time_bucket(INTERVAL 1 DAY, timestamp, 'UTC')"),
        ("time_bucket(1 day, ts::TIMESTAMP), 1 symbol-hour", "time_bucket(INTERVAL 1 DAY, timestamp::TIMESTAMP)"),
    ):
        lines.append((label, median_ms(lambda expr=expr: engine.sql(bucket.format(expr), params))))
    for label, value in lines:
        print(f"  {label:<75} {value:8.1f} ms")
    con.close()


def http_bench(settings: Settings, engine: QueryEngine, selected: list[Query], runs: int, budget: float) -> None:
    """The same queries through the HTTP API (uvicorn on loopback, httpx keep-alive client, JSON responses), when
    `k2.api` exists: `create_app(settings, engine, api=ApiSettings(...))` and a key from `create_key(settings, name)`.
    """
    try:
        from k2.api.app import create_app
        from k2.api.keys import create_key
        from k2.config import ApiSettings
    except ImportError as exc:
        print(f"HTTP: skipped (k2.api not available: {exc})")
        return
    import httpx
    import uvicorn

    # No 429s or 504s from the benchmark's own volume: the limits are the API's policy, not its speed.
    api = ApiSettings(rate_limit_per_minute=1_000_000, query_timeout_seconds=600)
    app = create_app(settings, engine, api=api)  # the same engine: the difference is the HTTP layer
    key = create_key(settings, "bench-queries", rate_limit_per_minute=1_000_000)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        paths = set(app.openapi().get("paths", {}))
        rows: list[list[str]] = []
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}, timeout=600) as client:
            for q in selected:
                route, params = q.http
                if route not in paths:
                    rows.append([q.name, "-", "-", "-", "-", f"{route} not in the app"])
                    continue

                def call(route: str = route, params: dict[str, Any] = params) -> pa.Table:
                    response = client.get(route, params=params)
                    response.raise_for_status()
                    return pa.table({"bytes": [len(response.content)]})

                timing = measure(call, runs, budget)
                size = f"{call().column('bytes')[0].as_py() / 1024:.0f}"
                rows.append([q.name, f"{timing.pct(50):.1f}", f"{timing.pct(99):.1f}", timing.runs, size, route])
                print(f"  done over HTTP: {q.name}", flush=True)
        print("\nThrough HTTP (JSON, keep-alive, loopback)")
        print_table(["query", "p50 ms", "p99 ms", "runs", "KiB", "route"], rows)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None, help="K2_HOME of the lake (made by lakegen if missing)")
    parser.add_argument("--runs", type=int, default=None, help="timed runs per query (default 30; quick: 10)")
    parser.add_argument("--quick", action="store_true", help="1 M-trade lake, 10 runs, 1-day summary: ~1 minute")
    parser.add_argument("--trades", type=int, default=None, help="trades to generate when the lake is missing")
    parser.add_argument("--budget", type=float, default=None, help="seconds per query and path (default 40; quick 3)")
    parser.add_argument("--only", default=None, help="comma-separated parts of query names to run")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP section")
    args = parser.parse_args()
    home = args.home or Path("/tmp/k2-bench-1m" if args.quick else "/tmp/k2-bench-10m")
    runs = args.runs or (10 if args.quick else 30)
    budget = args.budget or (3.0 if args.quick else 40.0)
    n_trades = args.trades or (1_000_000 if args.quick else 10_000_000)

    build_lake(home, n_trades, n_trades // 3, replace_stale=True)
    settings = Settings(home=home)
    catalog = open_catalog(settings)
    tables = {spec.name: catalog.load_table(table_identifier(spec)) for spec in (TRADES_V2, QUOTES_V2)}
    started = time.perf_counter()
    engine = QueryEngine(catalog)
    print(f"lake {home} (engine open {(time.perf_counter() - started) * 1000:.0f} ms):")
    lake_size(engine)
    naive = NaiveReader(tables)
    # quick: one day of daily summary; its time_bucket(1 day, ts, tz) costs ~10 s per 1 M rows (see diagnostics)
    summary_days = 1 if args.quick else len(TRADING_DAYS)
    only = [text.strip() for text in args.only.split(",")] if args.only else None
    selected = [q for q in queries(summary_days) if only is None or any(text in q.name for text in only)]

    rows: list[list[str]] = []
    for q in selected:
        fast = measure(lambda q=q: q.run(engine), runs, budget)
        naive.scans = q.naive
        slow = measure(lambda q=q: q.run(naive), runs, budget)
        check = "" if fast.rows == slow.rows else f" (naive rows {slow.rows}!)"
        rows.append(
            [
                q.name,
                f"{fast.rows}{check}",
                f"{fast.pct(50):.1f}",
                f"{fast.pct(99):.1f}",
                fast.runs,
                f"{slow.pct(50):.1f}",
                f"{slow.pct(99):.1f}",
                slow.runs,
                f"{slow.pct(50) / fast.pct(50):.1f}x",
            ]
        )
        print(f"  done: {q.name}", flush=True)
    print(f"\nWarm latency, {SYMBOL} on {DAY.date()} (up to {runs} runs or {budget:.0f} s per query and path)")
    header = ["query", "rows", "p50 ms", "p99 ms", "runs", "naive p50", "naive p99", "naive runs", "naive/engine"]
    print_table(header, rows)
    print("\nWhere the engine's time goes (medians):")
    diagnostics(engine, tables[TRADES_V2.name])
    if args.no_http:
        print("HTTP: skipped (--no-http)")
    else:
        http_bench(settings, engine, selected, runs, budget)
    engine.close()


if __name__ == "__main__":
    main()
