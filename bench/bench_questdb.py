"""K2 against QuestDB (the open-source time-series database most used for market data) on the same lakegen lake:
bulk ingest rows/s and three queries, each pair measured in the same run, interleaved, medians and ratios.

Data: lakegen.py's lake (10 M trades + 3.3 M quotes, 8 symbols, 5 days; `--quick`: 1 M trades; the environment
variable K2_BENCH_QUESTDB_TRADES picks another size, e.g. 100000 for a smoke run, and K2_BENCH_QUESTDB_RUNS the
number of ingest runs, 3 by default). Its trades and quotes are read once into memory (Arrow, timestamp order) and
both systems get those same rows.

QuestDB: the server jar from Maven Central (questdb_server.py: 9.3.4, Java 17, 127.0.0.1 only, a fresh root under
/tmp, stopped at the end). Tables `trades` / `quotes` with every lake column QuestDB can hold: prices and quantities
as DECIMAL(18,8) (exact, the lake's decimal128(18,8); QuestDB has DECIMAL since 9.2.0), symbol/exchange/asset
class/currency/side as SYMBOL, ids as VARCHAR, trade_conditions as a comma-joined VARCHAR (QuestDB has no string
lists); vendor_data (null in the lake) is left out. Designated timestamp `timestamp`, PARTITION BY DAY, WAL (the
defaults of a table made by SQL).

- bulk ingest, QuestDB, two paths timed in every run, into a freshly created table each time, each timed until
  `SELECT count()` sees every row (WAL applied: readable, as K2's rows are once committed); the faster is the
  baseline. (a) ILP/HTTP with the official `questdb` client's `Sender.dataframe` (the bulk path QuestDB documents
  for Python) from one pandas DataFrame (decimal columns pyarrow decimal128(18,8), strings pyarrow-backed, SYMBOL
  columns categorical), ILP_SENDERS senders in threads each sending a consecutive time slice, ILP_FLUSH_ROWS rows
  per HTTP request; (b) `INSERT INTO trades SELECT * FROM read_parquet(...)` of a flat Parquet file of the same
  rows in QuestDB's import root. The DataFrame and the file are made before the clock starts. K2: the same Arrow
  rows appended to the trades table of a fresh K2 home in 1 M-row commits in the product's write order (lakegen's
  Committer: `in_write_order` + pyiceberg `append`, the sink's commit step without Kafka or dedup). Runs alternate;
  medians of rows/s.
- queries, for the busiest symbol (BTCUSDT) on the newest day, against bench_queries.py's K2 calls:
  last 1000 trades `SELECT * FROM trades WHERE symbol = 'BTCUSDT' LIMIT -1000` vs `latest(...)`;
  1-minute OHLCV bars with SAMPLE BY 1m (first/max/min/last price, sum quantity, sum price*quantity, count) vs
  `bars(..., "1m", day, day_end)`; ASOF JOIN of the day's trades to the quotes of the 4 days before and the day
  (K2's quote look-back), with mid, spread and effective spread, vs `trades_with_quotes(...)`.
  QuestDB's answer is fetched into Python two ways, both timed: PostgreSQL wire with psycopg 3 (binary, fetchall:
  tuples of Decimals) and the REST /exp endpoint with fmt=parquet read by pyarrow (an Arrow table, as K2 returns);
  the faster one is the baseline (also timed, as a diagnostic: the query wrapped in `SELECT sum(...)`, computed
  on the server with one row sent back). Warm: one uncounted call per side, then rounds of one call per side until
  `runs` or `budget` s. The answers are checked against each other (rows, trade ids, sums of the OHLC decimals,
  quote matches) and the check is printed.
Run: `python bench/bench_questdb.py [--quick]`; needs `pip install -e '.[bench]'` (questdb, psycopg), a JDK 17+ and
Maven (the jar is fetched once into ~/.cache/k2).
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bench_queries import DAY, SYMBOL, queries
from common import Row, main_for, progress, rate
from lakegen import Committer, build_lake
from questdb_server import QUESTDB_VERSION, QuestDBServer

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from k2.query.asof import DEFAULT_QUOTE_LOOKBACK
from k2.query.engine import QueryEngine
from k2.schema.fields import QUOTES_V2, TRADES_V2

QUERIES = ("last 1000 trades, 1 symbol", "1m bars, 1 symbol-day", "as-of join, 1 symbol-day")
LABELS = ("last 1000 trades of 1 symbol", "1-min bars of 1 symbol-day", "as-of join of 1 symbol-day")
# One sender per core: the client serializes a DataFrame on one thread (~450k rows/s here) and releases the GIL,
# so two senders in threads loaded 1.7x faster than one on a 100k-trade probe (QuestDB's WAL tables take
# concurrent writers).
ILP_SENDERS = 2
ILP_FLUSH_ROWS = 100_000  # rows per ILP/HTTP request (one QuestDB transaction each); the client's default is 75 000
COMMIT_ROWS = 1_000_000  # K2's commit size: the sink's and lakegen's default
SYMBOL_COLUMNS = ("symbol", "exchange", "asset_class", "currency", "side")
# Diagnostic: each QuestDB query wrapped in SELECT sum(<column>) FROM (...), so the server computes the whole
# answer but sends one row: how much of QuestDB's time is shipping and decoding the rows.
SERVER_SUM = {
    "last 1000 trades, 1 symbol": "price",
    "1m bars, 1 symbol-day": "close",
    "as-of join, 1 symbol-day": "effective_spread",
}
PARQUET_INPUT = "trades-flat.parquet"  # in QuestDB's import root (cairo.sql.copy.root, default <root>/import)

TRADES_DDL = """CREATE TABLE {name} (
  message_id VARCHAR, trade_id VARCHAR, symbol SYMBOL, exchange SYMBOL, asset_class SYMBOL, timestamp TIMESTAMP,
  price DECIMAL(18, 8), quantity DECIMAL(18, 8), currency SYMBOL, side SYMBOL, trade_conditions VARCHAR,
  source_sequence LONG, ingestion_timestamp TIMESTAMP, platform_sequence LONG
) TIMESTAMP(timestamp) PARTITION BY DAY WAL"""
QUOTES_DDL = """CREATE TABLE quotes (
  message_id VARCHAR, quote_id VARCHAR, symbol SYMBOL, exchange SYMBOL, asset_class SYMBOL, timestamp TIMESTAMP,
  bid_price DECIMAL(18, 8), bid_quantity DECIMAL(18, 8), ask_price DECIMAL(18, 8), ask_quantity DECIMAL(18, 8),
  currency SYMBOL, source_sequence LONG, ingestion_timestamp TIMESTAMP, platform_sequence LONG
) TIMESTAMP(timestamp) PARTITION BY DAY WAL"""


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def questdb_sql() -> dict[str, str]:
    day, day_end = _day(DAY), _day(DAY + timedelta(days=1))
    quote_start = _day(DAY - DEFAULT_QUOTE_LOOKBACK)
    in_day = f"symbol = '{SYMBOL}' AND timestamp >= '{day}' AND timestamp < '{day_end}'"
    return {
        QUERIES[0]: f"SELECT * FROM trades WHERE symbol = '{SYMBOL}' LIMIT -1000",
        QUERIES[1]: (
            "SELECT timestamp, symbol, exchange, first(price) open, max(price) high, min(price) low, last(price) close,"
            " sum(quantity) volume, sum(price * quantity) quote_volume, count() trade_count"
            f" FROM trades WHERE {in_day} SAMPLE BY 1m ALIGN TO CALENDAR"
        ),
        QUERIES[2]: (
            "SELECT t.timestamp, t.symbol, t.exchange, t.trade_id, t.message_id, t.source_sequence, t.price,"
            " t.quantity, t.side, q.timestamp quote_timestamp, q.bid_price, q.bid_quantity, q.ask_price,"
            " q.ask_quantity, (q.bid_price + q.ask_price) * 0.5m mid, q.ask_price - q.bid_price spread,"
            " 2m * abs(t.price - (q.bid_price + q.ask_price) * 0.5m) effective_spread"
            f" FROM (SELECT * FROM trades WHERE {in_day}) t"
            f" ASOF JOIN (SELECT * FROM quotes WHERE symbol = '{SYMBOL}' AND timestamp >= '{quote_start}'"
            f" AND timestamp < '{day_end}') q ON (symbol)"
        ),
    }


def lake_home(n_trades: int) -> Path:
    size = f"{n_trades // 1_000_000}m" if n_trades % 1_000_000 == 0 else f"{n_trades // 1000}k"
    return Path(f"/tmp/k2-bench-{size}")


def read_lake(home: Path) -> tuple[pa.Table, pa.Table]:
    catalog = open_catalog(Settings(home=home))
    tables = [catalog.load_table(f"market_data.{spec.name}").scan().to_arrow() for spec in (TRADES_V2, QUOTES_V2)]
    return tables[0].sort_by("timestamp"), tables[1].sort_by("timestamp")


def flat(table: pa.Table) -> pa.Table:
    """`table` with columns QuestDB can hold: the string list joined with commas, the all-null map dropped."""
    table = table.drop_columns([c for c in ("vendor_data",) if c in table.column_names])
    if "trade_conditions" in table.column_names:
        lists = table["trade_conditions"].cast(pa.list_(pa.string()))
        table = table.set_column(
            table.schema.get_field_index("trade_conditions"), "trade_conditions", pc.binary_join(lists, ",")
        )
    return table


def questdb_frame(table: pa.Table) -> Any:
    """`flat(table)` as the DataFrame QuestDB's client takes: decimals stay pyarrow decimal128 (exact), strings
    pyarrow-backed, SYMBOL columns categorical."""
    import pandas as pd

    table = flat(table)
    for name in SYMBOL_COLUMNS:
        if name in table.column_names:
            table = table.set_column(table.schema.get_field_index(name), name, pc.dictionary_encode(table[name]))

    def mapper(arrow_type: pa.DataType) -> Any:
        if pa.types.is_decimal(arrow_type) or pa.types.is_string(arrow_type):
            return pd.ArrowDtype(arrow_type)
        return None

    return table.to_pandas(types_mapper=mapper)


def send_frame(server: QuestDBServer, frame: Any, table: str) -> None:
    from questdb import Sender

    conf = f"http::addr={server.http};auto_flush_rows={ILP_FLUSH_ROWS};auto_flush_interval=off;"
    with Sender.from_conf(conf) as sender:
        sender.dataframe(frame, table_name=table, at="timestamp")
        sender.flush()


def wait_rows(server: QuestDBServer, table: str, n: int, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while server.exec(f"SELECT count() FROM {table}")["dataset"][0][0] < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"QuestDB table {table} did not show {n:,} rows in {timeout:.0f} s")
        time.sleep(0.02)


def _fresh_trades(server: QuestDBServer) -> None:
    server.exec("DROP TABLE IF EXISTS trades")
    server.exec(TRADES_DDL.format(name="trades"))


def questdb_ingest(server: QuestDBServer, frame: Any) -> tuple[float, float]:
    """ILP/HTTP from the DataFrame, cut into ILP_SENDERS consecutive time slices sent at once by one Sender each:
    seconds until the client had every row acknowledged, and until `count()` saw them all (the figure)."""
    _fresh_trades(server)
    size = -(-len(frame) // ILP_SENDERS)
    parts = [frame.iloc[start : start + size] for start in range(0, len(frame), size)]
    started = time.perf_counter()
    with ThreadPoolExecutor(len(parts)) as pool:
        for done in [pool.submit(send_frame, server, part, "trades") for part in parts]:
            done.result()
    acked = time.perf_counter() - started
    wait_rows(server, "trades", len(frame))
    return acked, time.perf_counter() - started


def questdb_ingest_parquet(server: QuestDBServer, n: int) -> float:
    """`INSERT INTO trades SELECT * FROM read_parquet(...)` of a flat Parquet file of the same rows in QuestDB's
    import root (written beforehand, like the DataFrame): seconds until `count()` saw every row."""
    _fresh_trades(server)
    started = time.perf_counter()
    server.exec(f"INSERT INTO trades SELECT * FROM read_parquet('{PARQUET_INPUT}')")
    wait_rows(server, "trades", n)
    return time.perf_counter() - started


def k2_ingest(home: Path, trades: pa.Table) -> float:
    shutil.rmtree(home, ignore_errors=True)
    table = ensure_tables(open_catalog(Settings(home=home)))[TRADES_V2.name]
    started = time.perf_counter()
    committer = Committer(table, COMMIT_ROWS)
    for offset in range(0, trades.num_rows, COMMIT_ROWS):
        committer.add(trades.slice(offset, COMMIT_ROWS))
    committer.flush()
    seconds = time.perf_counter() - started
    shutil.rmtree(home, ignore_errors=True)
    return seconds


class QuestDBReader:
    """QuestDB answers fetched into Python: over PostgreSQL wire (psycopg 3, binary) or /exp as Parquet."""

    def __init__(self, server: QuestDBServer) -> None:
        import psycopg

        self.server = server
        self.conn = psycopg.connect(server.pg_dsn, autocommit=True)

    def pg(self, sql: str) -> list[tuple[Any, ...]]:
        with self.conn.cursor(binary=True) as cur:
            cur.execute(sql)
            return cur.fetchall()

    def parquet(self, sql: str) -> pa.Table:
        url = f"http://{self.server.http}/exp?" + urllib.parse.urlencode({"query": sql, "fmt": "parquet"})
        with urllib.request.urlopen(url, timeout=600) as resp:
            return pq.read_table(io.BytesIO(resp.read()))

    def close(self) -> None:
        self.conn.close()


def timed_rounds(sides: dict[str, Callable[[], Any]], runs: int, budget: float) -> dict[str, list[float]]:
    """One uncounted call per side, then rounds of one call per side (sides alternate within a round) until
    `runs` rounds or until the rounds took `budget` s in all (at least 3 rounds)."""
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    spent = 0.0
    for number in range(runs):
        for name, fn in sides.items():
            started = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - started
            times[name].append(elapsed)
            spent += elapsed
        if spent > budget and number >= 2:
            break
    return times


def _sum(table: pa.Table, column: str) -> Decimal:
    value = pc.sum(table[column]).as_py()
    return Decimal(0) if value is None else Decimal(value)


def check(name: str, k2: pa.Table, questdb: pa.Table, pg_rows: int) -> str:
    """Compare K2's answer with QuestDB's; a one-line verdict (also printed)."""
    same_rows = k2.num_rows == questdb.num_rows == pg_rows
    facts = [f"rows {k2.num_rows:,} / {questdb.num_rows:,} (pg {pg_rows:,})"]
    agree = same_rows
    if name == QUERIES[0]:
        ids_equal = sorted(k2["trade_id"].to_pylist()) == sorted(questdb["trade_id"].to_pylist())
        prices = (_sum(k2, "price"), _sum(questdb, "price"))
        agree = agree and ids_equal and prices[0] == prices[1]
        facts.append(f"same trade ids {ids_equal}, sum(price) {prices[0]} / {prices[1]}")
    elif name == QUERIES[1]:
        for column in ("open", "high", "low", "close", "volume", "quote_volume", "trade_count"):
            pair = (_sum(k2, column), _sum(questdb, column))
            agree = agree and pair[0] == pair[1]
            facts.append(f"sum({column}) {pair[0]}{' =' if pair[0] == pair[1] else ' !='} {pair[1]}")
    else:
        for column in ("bid_price", "ask_price", "spread", "mid", "effective_spread"):
            pair = (_sum(k2, column), _sum(questdb, column))
            agree = agree and pair[0] == pair[1]
            facts.append(f"sum({column}) {pair[0]}{' =' if pair[0] == pair[1] else ' !='} {pair[1]}")
        matched = (k2["quote_timestamp"].null_count, questdb["quote_timestamp"].null_count)
        agree = agree and matched[0] == matched[1]
        facts.append(f"trades without a quote {matched[0]} / {matched[1]}")
    verdict = ("answers agree: " if agree else "ANSWERS DIFFER: ") + "; ".join(facts)
    progress(f"questdb check, {name}: {verdict}")
    return verdict


def _ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def _fmt_ms(value: float) -> str:
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


def rows(quick: bool) -> list[Row]:
    n_trades = int(os.environ.get("K2_BENCH_QUESTDB_TRADES") or (1_000_000 if quick else 10_000_000))
    home = lake_home(n_trades)
    ingest_runs = int(os.environ.get("K2_BENCH_QUESTDB_RUNS") or (1 if quick else 3))
    runs, budget = (5, 2.0) if quick else (20, 20.0)
    progress(f"questdb: lake {home} ({n_trades:,} trades)")
    build_lake(home, n_trades, n_trades // 3, replace_stale=True)
    try:
        import psycopg  # noqa: F401
        import questdb  # noqa: F401
    except ImportError as exc:
        why = f"{exc.name} not installed: pip install -e '.[bench]'"
        return [Row(f"8 QuestDB: {label}", "skipped", "QuestDB", "-", None, "report", None, why) for label in LABELS]
    trades, quotes = read_lake(home)
    started = time.perf_counter()
    trades_frame, quotes_frame = questdb_frame(trades), questdb_frame(quotes)
    frame_seconds = time.perf_counter() - started
    progress(f"questdb: {trades.num_rows:,} trades / {quotes.num_rows:,} quotes as DataFrames in {frame_seconds:.1f} s")
    engine = QueryEngine(open_catalog(Settings(home=home)))
    out: list[Row] = []
    scratch = Path(tempfile.mkdtemp(prefix="k2-bench-questdb-"))
    server = QuestDBServer(scratch / "questdb")
    try:
        server.start()
        progress(f"questdb: QuestDB {QUESTDB_VERSION} pid {server.pid} on {server.http} (pg {server.pg_port})")
        input_file = server.root / "import" / PARQUET_INPUT
        input_file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(flat(trades), input_file)
        k2_times, ilp_times, ilp_acked, parquet_times = [], [], [], []
        for run in range(ingest_runs):
            acked, visible = questdb_ingest(server, trades_frame)
            ilp_times.append(visible)
            ilp_acked.append(acked)
            parquet_times.append(questdb_ingest_parquet(server, n_trades))
            k2_times.append(k2_ingest(scratch / f"k2-{run}", trades))
            progress(
                f"questdb: ingest run {run + 1}: QuestDB ILP/HTTP {rate(n_trades, visible)} (acked in {acked:.1f} s, "
                f"readable in {visible:.1f} s), QuestDB read_parquet {rate(n_trades, parquet_times[-1])} "
                f"({parquet_times[-1]:.1f} s), K2 {rate(n_trades, k2_times[-1])} ({k2_times[-1]:.1f} s)"
            )
        input_file.unlink()
        stored = server.exec("SELECT count(), sum(price), sum(quantity) FROM trades")["dataset"][0]
        lake = [trades.num_rows, str(pc.sum(trades["price"]).as_py()), str(pc.sum(trades["quantity"]).as_py())]
        ingest_check = f"QuestDB holds count/sum(price)/sum(quantity) {stored}, the lake {lake}"
        ingest_check = ("stored rows agree: " if stored == lake else "STORED ROWS DIFFER: ") + ingest_check
        progress(f"questdb check, ingest: {ingest_check}")
        k2_s, ilp_s, parquet_s = (statistics.median(t) for t in (k2_times, ilp_times, parquet_times))
        qdb_s, path = (ilp_s, "ILP/HTTP DataFrame") if ilp_s <= parquet_s else (parquet_s, "read_parquet INSERT")
        out.append(
            Row(
                f"8 QuestDB bulk ingest, {n_trades / 1e6:g} M trades",
                rate(n_trades, k2_s),
                f"QuestDB {QUESTDB_VERSION} ({path})",
                rate(n_trades, qdb_s),
                qdb_s / k2_s,
                "report",
                None,
                f"{ingest_runs} run(s) each, interleaved; QuestDB timed until count() sees every row: ILP/HTTP from "
                f"a DataFrame ({ILP_SENDERS} senders) {rate(n_trades, ilp_s)} (client acked after a median "
                f"{statistics.median(ilp_acked):.1f} s), INSERT ... SELECT FROM read_parquet of a flat file "
                f"{rate(n_trades, parquet_s)}; prices DECIMAL(18,8); K2 Iceberg appends of {COMMIT_ROWS:,}-row "
                f"commits in write order; DataFrame built beforehand in {frame_seconds:.1f} s; {ingest_check}",
            )
        )
        server.exec(QUOTES_DDL)
        started = time.perf_counter()
        send_frame(server, quotes_frame, "quotes")
        wait_rows(server, "quotes", quotes.num_rows)
        progress(f"questdb: {quotes.num_rows:,} quotes loaded in {time.perf_counter() - started:.1f} s")
        reader = QuestDBReader(server)
        try:
            out += compare_queries(engine, reader, runs, budget)
        finally:
            reader.close()
    finally:
        server.stop()
        engine.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def compare_queries(engine: QueryEngine, reader: QuestDBReader, runs: int, budget: float) -> list[Row]:
    k2_queries = {q.name: q for q in queries(1)}
    sql = questdb_sql()
    out = []
    for name, label in zip(QUERIES, LABELS, strict=True):
        verdict = check(name, k2_queries[name].run(engine), reader.parquet(sql[name]), len(reader.pg(sql[name])))
        times = timed_rounds(
            {
                "k2": lambda name=name: k2_queries[name].run(engine),
                "pg": lambda name=name: reader.pg(sql[name]),
                "parquet": lambda name=name: reader.parquet(sql[name]),
                "server": lambda name=name: reader.pg(f"SELECT sum({SERVER_SUM[name]}) FROM ({sql[name]})"),
            },
            runs,
            budget,
        )
        k2, pg, parquet, server = (_ms(times[side]) for side in ("k2", "pg", "parquet", "server"))
        best, transport = (pg, "PG wire") if pg <= parquet else (parquet, "/exp Parquet")
        progress(
            f"questdb: {name}: k2 {k2:.1f} ms, QuestDB pg {pg:.1f} ms, parquet {parquet:.1f} ms, "
            f"server-side sum {server:.1f} ms"
        )
        out.append(
            Row(
                f"8 QuestDB query: {label}",
                _fmt_ms(k2),
                f"QuestDB {QUESTDB_VERSION} ({transport})",
                _fmt_ms(best),
                best / k2,
                "report",
                None,
                f"medians of {len(times['k2'])} interleaved rounds; QuestDB PG wire {_fmt_ms(pg)}, /exp Parquet "
                f"{_fmt_ms(parquet)}, the same query summed on the server (one row back) {_fmt_ms(server)}; {verdict}",
            )
        )
    return out


if __name__ == "__main__":
    main_for(rows, __doc__)
