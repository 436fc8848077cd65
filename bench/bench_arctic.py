"""Query latency p50/p99 on a generated lake: K2 (k2.query over Iceberg) against ArcticDB holding the same data.

The lake is lakegen.py's (10 M trades + 3.3 M quotes, 8 symbols, 5 days; quick mode: the 1 M-trade lake). The same
rows are copied into ArcticDB (PyPI `arcticdb`, local LMDB beside the lake, one ArcticDB symbol per instrument and
table, appended a day at a time, timestamp index; prices and quantities as float64 since ArcticDB has no decimal).
Both are kept between runs (the copy is made once per lake).

Queries, for the busiest symbol (BTCUSDT) on the newest day — bench_queries.py's definitions for K2:
- last 1000 trades: K2 `latest(engine, "trades", sym, 1000)`; ArcticDB `lib.tail(sym, 1000)`;
- 1-minute bars for one symbol-day: K2 `bars(engine, sym, "1m", day, day_end)`; ArcticDB QueryBuilder
  `resample("1min")` with first/max/min/last/sum/count over `date_range`;
- as-of join for one symbol-day: K2 `trades_with_quotes` (quotes from 4 days back, mid/spread columns); ArcticDB
  reads the day's trades and the same quote window, then `pandas.merge_asof` (ArcticDB has no join) plus the same
  mid/spread columns.

Warm process, one warm-up call, then up to `runs` calls or `budget` seconds per query and side (bench_queries.measure).
Goal (issue #6): p99 ≤ 25 ms for the first two, and K2 faster than ArcticDB on each (compared on p50).
Run: `python bench/bench_arctic.py [--quick]`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
from bench_queries import DAY, SYMBOL, Timing, measure, queries
from common import Row, main_for, progress
from lakegen import INSTRUMENTS, build_lake

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.query.asof import DEFAULT_QUOTE_LOOKBACK
from k2.query.engine import QueryEngine

QUERIES = ("last 1000 trades, 1 symbol", "1m bars, 1 symbol-day", "as-of join, 1 symbol-day")
P99_GOAL_MS = 25.0
TRADE_COLUMNS = "timestamp, price::DOUBLE AS price, quantity::DOUBLE AS quantity, side, trade_id, message_id"
QUOTE_COLUMNS = (
    "timestamp, bid_price::DOUBLE AS bid_price, bid_quantity::DOUBLE AS bid_quantity, "
    "ask_price::DOUBLE AS ask_price, ask_quantity::DOUBLE AS ask_quantity"
)
DONE = "_k2_copy_complete"  # written last: a copy interrupted half-way is rebuilt


def _frame(table: pa.Table) -> Any:
    frame = table.to_pandas()
    frame["timestamp"] = frame["timestamp"].dt.tz_convert("UTC").dt.tz_localize(None)
    return frame.set_index("timestamp")


def arctic_library(home: Path, engine: QueryEngine) -> Any:
    """The ArcticDB copy of the lake under `home`/arcticdb, made now if missing."""
    from arcticdb import Arctic

    arctic = Arctic(f"lmdb://{home / 'arcticdb'}?map_size=20GB")
    lib = arctic.get_library("k2", create_if_missing=True)
    if lib.has_symbol(DONE):
        return lib
    progress("arcticdb: copying the lake (once per lake)")
    for symbol in lib.list_symbols():
        lib.delete(symbol)
    for inst in INSTRUMENTS:
        for table, columns in (("trades_v2", TRADE_COLUMNS), ("quotes_v2", QUOTE_COLUMNS)):
            data = engine.sql(
                f"SELECT {columns}, CAST(timestamp AS DATE) AS day FROM market_data.{table} WHERE symbol = ? "
                "ORDER BY timestamp",
                [inst.symbol],
            )
            frame = _frame(data)
            name = f"{table}/{inst.symbol}"
            for _day, part in frame.groupby("day", sort=True):
                lib.append(name, part.drop(columns="day"))
    import pandas as pd

    lib.write(DONE, pd.DataFrame({"done": [1]}))
    return lib


def arctic_queries(lib: Any) -> dict[str, Callable[[], Any]]:
    import pandas as pd
    from arcticdb import QueryBuilder

    day = pd.Timestamp(DAY.replace(tzinfo=None))
    day_end = day + pd.Timedelta(days=1)
    quote_start = day - pd.Timedelta(DEFAULT_QUOTE_LOOKBACK)
    trades, quotes = f"trades_v2/{SYMBOL}", f"quotes_v2/{SYMBOL}"

    def last_1000() -> Any:
        return lib.tail(trades, 1000).data

    def bars() -> Any:
        q = (
            QueryBuilder()
            .resample("1min")
            .agg(
                {
                    "open": ("price", "first"),
                    "high": ("price", "max"),
                    "low": ("price", "min"),
                    "close": ("price", "last"),
                    "volume": ("quantity", "sum"),
                    "trades": ("price", "count"),
                }
            )
        )
        return lib.read(trades, date_range=(day, day_end - pd.Timedelta(microseconds=1)), query_builder=q).data

    def asof() -> Any:
        t = lib.read(trades, date_range=(day, day_end - pd.Timedelta(microseconds=1))).data
        qt = lib.read(quotes, date_range=(quote_start, day_end - pd.Timedelta(microseconds=1))).data
        qt = qt[~qt.index.duplicated(keep="last")]
        joined = pd.merge_asof(t, qt, left_index=True, right_index=True, direction="backward")
        joined["mid"] = (joined["bid_price"] + joined["ask_price"]) * 0.5
        joined["spread"] = joined["ask_price"] - joined["bid_price"]
        joined["effective_spread"] = 2 * (joined["price"] - joined["mid"]).abs()
        return joined

    return {QUERIES[0]: last_1000, QUERIES[1]: bars, QUERIES[2]: asof}


def _rows_of(result: Any) -> int:
    return result.num_rows if isinstance(result, pa.Table) else len(result)


def _fmt(t: Timing) -> str:
    p50, p99 = t.pct(50), t.pct(99)
    if t.single:
        return f"{p50:,.0f} ms (1 run)"
    return f"p50 {p50:,.1f} / p99 {p99:,.1f} ms"


def rows(quick: bool) -> list[Row]:
    n_trades = 1_000_000 if quick else 10_000_000
    home = Path(f"/tmp/k2-bench-{n_trades // 1_000_000}m")
    runs, budget = (5, 1.0) if quick else (30, 30.0)
    progress(f"queries: lake {home} ({n_trades:,} trades)")
    build_lake(home, n_trades, n_trades // 3, replace_stale=True)
    engine = QueryEngine(open_catalog(Settings(home=home)))
    try:
        from arcticdb import Arctic  # noqa: F401
    except ImportError as exc:
        arctic = None
        why = f"arcticdb not installed ({exc}): pip install -e '.[bench]'"
    else:
        arctic = arctic_queries(arctic_library(home, engine))
    out: list[Row] = []
    k2_queries = {q.name: q for q in queries(1)}
    for number, name in enumerate(QUERIES):
        goal = f"p99 ≤ {P99_GOAL_MS:.0f} ms, < ArcticDB" if number < 2 else "< ArcticDB"
        k2 = measure(lambda name=name: k2_queries[name].run(engine), runs, budget)
        progress(f"queries: k2 {name}: {_fmt(k2)} ({k2.rows} rows)")
        label = f"5 query: {name.replace(', 1 symbol', ' of 1 symbol').replace('1m bars', '1-min bars')}"
        if arctic is None:
            out.append(Row(label, _fmt(k2), "ArcticDB", "skipped", None, goal, None, why))
            continue
        fn = arctic[name]
        base = measure(lambda fn=fn: pa.table({"n": [_rows_of(fn())]}), runs, budget)
        base_rows = _rows_of(fn())
        progress(f"queries: arcticdb {name}: {_fmt(base)} ({base_rows} rows)")
        ratio = base.pct(50) / k2.pct(50)
        reached = ratio > 1 and (number == 2 or (not k2.single and k2.pct(99) <= P99_GOAL_MS))
        note = f"{k2.rows:,} rows (ArcticDB {base_rows:,}); runs k2 {k2.runs}, ArcticDB {base.runs}; ratio on p50"
        out.append(Row(label, _fmt(k2), "ArcticDB 6.28 (LMDB)", _fmt(base), ratio, goal, reached, note))
    engine.close()
    return out


if __name__ == "__main__":
    main_for(rows, __doc__)
