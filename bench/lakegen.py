"""Generate a realistic K2 lake for query benchmarks: N trades and matching quotes, 8 symbols, 5 trading days.

Written through the library (Settings, open_catalog, ensure_tables, table.append) into a normal K2 home, so the
files, manifests and partitions (day(timestamp) x exchange) are the ones the sink would make. Everything is built
as numpy/Arrow columns: per-row Python would cap generation near 0.1 M rows/s (docs/stack-notes.md, "Avro and JSON
speed").

- 4 ASX equities (AUD, 1 c ticks, whole shares, session 10:00-16:00 Sydney = 23:00-05:00 UTC, U-shaped activity)
  and 4 Binance pairs (USDT, 0.01 ticks, lot steps of 1e-5..1e-3, 24 h with a European/US-hours hump).
- Prices: a geometric random walk per symbol, carried across days, rounded to whole ticks; decimal128(18,8) is
  built from integer units of 1e-8, never through floats.
- Commits of ~`--commit-rows` rows (default 1 M), each sorted by timestamp (the table's sort order is not applied
  on write). Deterministic for a seed; a home already holding >= N trades is left alone.

Run: `python bench/lakegen.py --home /tmp/k2-bench --trades 10000000` (quotes default to a third of the trades).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import TABLE_PROPERTIES, ensure_tables, in_write_order
from k2.schema.arrow import arrow_schema
from k2.schema.fields import PRICE_SCALE, QUOTES_V2, TRADES_V2
from k2.schema.iceberg import sort_order

UNITS_PER_ONE = 10**PRICE_SCALE  # a decimal(18,8) value as an integer count of 1e-8
US_PER_SECOND = 1_000_000

# Mon-Fri; ASX sessions open the UTC evening before (AEDT = UTC+11 in November).
TRADING_DAYS: tuple[date, ...] = tuple(date(2026, 11, 16) + timedelta(days=i) for i in range(5))


@dataclass(frozen=True)
class Instrument:
    symbol: str
    exchange: str
    asset_class: str
    currency: str
    price: float  # starting price
    tick: int  # price tick in 1e-8 units
    lot: int  # quantity step in 1e-8 units
    median_lots: float  # median trade size in lots
    share: float  # fraction of all trades
    daily_vol: float  # stdev of the daily log return


INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument("BTCUSDT", "binance", "crypto", "USDT", 95_000.0, 10**6, 10**3, 200, 0.30, 0.030),
    Instrument("ETHUSDT", "binance", "crypto", "USDT", 3_400.0, 10**6, 10**4, 150, 0.22, 0.035),
    Instrument("SOLUSDT", "binance", "crypto", "USDT", 240.0, 10**6, 10**5, 300, 0.15, 0.045),
    Instrument("BNBUSDT", "binance", "crypto", "USDT", 620.0, 10**6, 10**5, 200, 0.08, 0.030),
    Instrument("BHP", "asx", "equities", "AUD", 45.0, 10**6, UNITS_PER_ONE, 200, 0.08, 0.015),
    Instrument("CBA", "asx", "equities", "AUD", 160.0, 10**6, UNITS_PER_ONE, 60, 0.07, 0.012),
    Instrument("CSL", "asx", "equities", "AUD", 250.0, 10**6, UNITS_PER_ONE, 40, 0.05, 0.014),
    Instrument("WBC", "asx", "equities", "AUD", 38.0, 10**6, UNITS_PER_ONE, 300, 0.05, 0.013),
)
SYMBOLS = [i.symbol for i in INSTRUMENTS]
EXCHANGES = ["binance", "asx"]
ASSET_CLASSES = ["crypto", "equities"]
CURRENCIES = ["USDT", "AUD"]
SIDES = ["BUY", "SELL", "UNKNOWN"]
ASX_CONDITIONS = ["XT", "LT", "OS"]  # crossings, late trades, off-market: a few % of ASX prints


def session(inst: Instrument, day: date) -> tuple[int, int]:
    """Start (epoch us) and length (s) of the instrument's session on trading day `day`."""
    if inst.exchange == "asx":
        opens = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=1)  # 10:00 AEDT
        return int(opens.timestamp()) * US_PER_SECOND, 6 * 3600
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * US_PER_SECOND, 24 * 3600


def activity(inst: Instrument, seconds: int) -> np.ndarray:
    """Relative trade intensity per second of the session."""
    u = (np.arange(seconds) + 0.5) / seconds
    if inst.exchange == "asx":
        # U shape: busy open and close, quiet lunch; the close is the busiest (auction run-up)
        return 0.5 + 3.0 * (1 - u) ** 6 + 5.0 * u**12
    hours = u * 24
    # crypto: EU + US hours roughly double the Asian night
    return 1.0 + 0.9 * np.exp(-(((hours - 15.0) / 3.5) ** 2)) + 0.3 * np.exp(-(((hours - 8.5) / 2.0) ** 2))


def arrival_times(rng: np.random.Generator, inst: Instrument, day: date, n: int) -> np.ndarray:
    """n sorted event times (epoch us) drawn from the intraday activity curve (inverse CDF per second)."""
    start, seconds = session(inst, day)
    cdf = np.concatenate(([0.0], np.cumsum(activity(inst, seconds))))
    cdf /= cdf[-1]
    offsets = np.interp(rng.random(n), cdf, np.arange(seconds + 1, dtype=np.float64))
    return np.sort(start + (offsets * US_PER_SECOND).astype(np.int64))


def decimals(units: np.ndarray) -> pa.Array:
    """decimal128(18,8) from non-negative int64 counts of 1e-8: the 16-byte little-endian value is (units, 0)."""
    if units.size and units.min() < 0:
        raise ValueError("negative decimal units need sign extension; not produced here")
    words = np.zeros((units.size, 2), dtype=np.int64)
    words[:, 0] = units
    return pa.Array.from_buffers(pa.decimal128(18, PRICE_SCALE), units.size, [None, pa.py_buffer(words)])


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_UUID_LAYOUT = np.array([0, 1, 2, 3, -1, 4, 5, -1, 6, 7, -1, 8, 9, -1, 10, 11, 12, 13, 14, 15])


def uuid_strings(rng: np.random.Generator, n: int) -> pa.Array:
    """n random version-5-shaped UUID strings, built as one 36-byte-per-row buffer.

    The sink's ids are UUIDv5 (SHA-1 over the source id); uuid.uuid5 per row costs ~3 us, 30 s per 10 M rows,
    and the benchmark only needs ids with the same shape and uniqueness.
    """
    raw = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x50  # version 5
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    column = 0
    for byte in _UUID_LAYOUT:
        if byte < 0:
            column += 1
            continue
        text[:, column] = _HEX[raw[:, byte] >> 4]
        text[:, column + 1] = _HEX[raw[:, byte] & 0x0F]
        column += 2
    offsets = np.arange(0, 36 * (n + 1), 36, dtype=np.int32)
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text)])


def labels(values: list[str], codes: np.ndarray) -> pa.Array:
    """A string column from small-integer codes into `values` (one take, no per-row Python)."""
    return pc.take(pa.array(values, pa.string()), pa.array(codes, pa.int32()))


def timestamps(micros: np.ndarray) -> pa.Array:
    return pa.array(micros, pa.timestamp("us", tz="UTC"))


class Walker:
    """Per-symbol state carried across days: the last log price and the next venue sequence numbers."""

    def __init__(self) -> None:
        self.log_price = {i.symbol: float(np.log(i.price)) for i in INSTRUMENTS}
        self.trade_seq = dict.fromkeys(SYMBOLS, 1_000_000)
        self.quote_seq = dict.fromkeys(SYMBOLS, 5_000_000)
        self.platform_seq = 0


def _split(total: int, days: int) -> list[list[int]]:
    """Rows per [day][instrument], summing exactly to `total`."""
    shares = np.array([i.share for i in INSTRUMENTS])
    flat = np.floor(total * np.repeat(shares[None, :], days, axis=0).ravel() / days).astype(np.int64)
    flat[: total - int(flat.sum())] += 1
    return flat.reshape(days, len(INSTRUMENTS)).tolist()


def day_tables(
    rng: np.random.Generator, walker: Walker, day: date, trades_per: list[int], quotes_per: list[int]
) -> tuple[pa.Table, pa.Table]:
    """One trading day of trades and quotes for every instrument (not yet sorted across instruments)."""
    t_cols: dict[str, list[np.ndarray]] = {k: [] for k in ("sym", "ts", "price", "qty", "seq", "side", "cond")}
    q_cols: dict[str, list[np.ndarray]] = {k: [] for k in ("sym", "ts", "bid", "bidq", "ask", "askq", "seq")}
    for code, (inst, n, nq) in enumerate(zip(INSTRUMENTS, trades_per, quotes_per, strict=True)):
        ts = arrival_times(rng, inst, day, n)
        # per-trade log returns scaled so a day's variance matches daily_vol
        steps = rng.normal(0.0, inst.daily_vol / np.sqrt(max(n, 1)), n)
        log_price = walker.log_price[inst.symbol] + np.cumsum(steps)
        if n:
            walker.log_price[inst.symbol] = float(log_price[-1])
        ticks = np.maximum(np.rint(np.exp(log_price) * UNITS_PER_ONE / inst.tick).astype(np.int64), 1)
        lots = np.maximum(np.rint(rng.lognormal(np.log(inst.median_lots), 1.2, n)).astype(np.int64), 1)
        t_cols["sym"].append(np.full(n, code))
        t_cols["ts"].append(ts)
        t_cols["price"].append(ticks * inst.tick)
        t_cols["qty"].append(lots * inst.lot)
        t_cols["seq"].append(walker.trade_seq[inst.symbol] + np.arange(n, dtype=np.int64))
        walker.trade_seq[inst.symbol] += n
        crypto = inst.exchange == "binance"
        t_cols["side"].append(rng.integers(0, 2, n) if crypto else np.full(n, 2))
        # -1: no condition; ASX prints carry one in ~3% of trades
        cond = np.full(n, -1)
        if not crypto:
            flagged = rng.random(n) < 0.03
            cond[flagged] = rng.integers(0, len(ASX_CONDITIONS), int(flagged.sum()))
        t_cols["cond"].append(cond)

        # quotes: the book around the walk at the quote's time, 1-3 ticks wide
        qts = arrival_times(rng, inst, day, nq)
        mid = np.exp(np.interp(qts, ts, log_price)) if n else np.full(nq, inst.price)
        half = rng.integers(1, 4, nq) if not crypto else np.ones(nq, dtype=np.int64)
        bid_ticks = np.maximum(np.floor(mid * UNITS_PER_ONE / inst.tick).astype(np.int64) - (half - 1), 1)
        q_cols["sym"].append(np.full(nq, code))
        q_cols["ts"].append(qts)
        q_cols["bid"].append(bid_ticks * inst.tick)
        q_cols["ask"].append((bid_ticks + half) * inst.tick)
        q_cols["bidq"].append(np.maximum(np.rint(rng.lognormal(np.log(inst.median_lots * 4), 1.0, nq)), 1) * inst.lot)
        q_cols["askq"].append(np.maximum(np.rint(rng.lognormal(np.log(inst.median_lots * 4), 1.0, nq)), 1) * inst.lot)
        q_cols["seq"].append(walker.quote_seq[inst.symbol] + np.arange(nq, dtype=np.int64))
        walker.quote_seq[inst.symbol] += nq

    trades = _trades_table(rng, walker, {k: np.concatenate(v) for k, v in t_cols.items()})
    quotes = _quotes_table(rng, walker, {k: np.concatenate(v) for k, v in q_cols.items()})
    return trades, quotes


def _common(rng: np.random.Generator, walker: Walker, sym: np.ndarray, ts: np.ndarray) -> dict[str, pa.Array]:
    """Columns every event table shares: ids, symbol/exchange/asset class/currency, times, platform sequence."""
    n = sym.size
    venue = np.array([EXCHANGES.index(i.exchange) for i in INSTRUMENTS])[sym]
    # ingestion lags the event by a few ms (lognormal, median 4 ms)
    lag = np.rint(rng.lognormal(np.log(4_000), 0.7, n)).astype(np.int64)
    platform = walker.platform_seq + np.arange(n, dtype=np.int64)
    walker.platform_seq += n
    return {
        "message_id": uuid_strings(rng, n),
        "symbol": labels(SYMBOLS, sym),
        "exchange": labels(EXCHANGES, venue),
        "asset_class": labels(ASSET_CLASSES, venue),
        "currency": labels(CURRENCIES, venue),
        "timestamp": timestamps(ts),
        "ingestion_timestamp": timestamps(ts + lag),
        "platform_sequence": pa.array(platform, pa.int64()),
    }


def _trades_table(rng: np.random.Generator, walker: Walker, c: dict[str, np.ndarray]) -> pa.Table:
    n = c["sym"].size
    common = _common(rng, walker, c["sym"], c["ts"])
    seq = pa.array(c["seq"], pa.int64())
    has = c["cond"] >= 0
    offsets = np.concatenate(([0], np.cumsum(has))).astype(np.int32)
    conditions = pa.ListArray.from_arrays(pa.array(offsets), labels(ASX_CONDITIONS, c["cond"][has]))
    columns = {
        **common,
        "trade_id": pc.cast(seq, pa.string()),
        "price": decimals(c["price"]),
        "quantity": decimals(c["qty"]),
        "side": labels(SIDES, c["side"]),
        "trade_conditions": conditions.cast(arrow_schema(TRADES_V2).field("trade_conditions").type),
        "source_sequence": seq,
        "vendor_data": pa.nulls(n, arrow_schema(TRADES_V2).field("vendor_data").type),
    }
    schema = arrow_schema(TRADES_V2)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


def _quotes_table(rng: np.random.Generator, walker: Walker, c: dict[str, np.ndarray]) -> pa.Table:
    n = c["sym"].size
    common = _common(rng, walker, c["sym"], c["ts"])
    seq = pa.array(c["seq"], pa.int64())
    columns = {
        **common,
        "quote_id": pc.cast(seq, pa.string()),
        "bid_price": decimals(c["bid"]),
        "bid_quantity": decimals(c["bidq"].astype(np.int64)),
        "ask_price": decimals(c["ask"]),
        "ask_quantity": decimals(c["askq"].astype(np.int64)),
        "source_sequence": seq,
        "vendor_data": pa.nulls(n, arrow_schema(QUOTES_V2).field("vendor_data").type),
    }
    schema = arrow_schema(QUOTES_V2)
    return pa.Table.from_arrays([columns[f.name] for f in schema], schema=schema)


class Committer:
    """Buffers generated rows and appends them in commits of `commit_rows`, each in the product's write order."""

    def __init__(self, table: object, commit_rows: int) -> None:
        self.table = table
        self.commit_rows = commit_rows
        self.pending: list[pa.Table] = []
        self.rows = 0
        self.commits = 0
        self.write_seconds = 0.0

    def add(self, part: pa.Table) -> None:
        self.pending.append(part)
        while sum(t.num_rows for t in self.pending) >= self.commit_rows:
            whole = pa.concat_tables(self.pending)
            self._commit(whole.slice(0, self.commit_rows))
            rest = whole.slice(self.commit_rows)
            self.pending = [rest] if rest.num_rows else []

    def flush(self) -> None:
        if self.pending:
            self._commit(pa.concat_tables(self.pending))
            self.pending = []

    def _commit(self, part: pa.Table) -> None:
        part = in_write_order(part)
        started = time.perf_counter()
        self.table.append(part)  # type: ignore[attr-defined]
        self.write_seconds += time.perf_counter() - started
        self.rows += part.num_rows
        self.commits += 1


def generate(rng: np.random.Generator, trades: int, quotes: int) -> Iterator[tuple[pa.Table, pa.Table]]:
    walker = Walker()
    days = len(TRADING_DAYS)
    for day, t_per, q_per in zip(TRADING_DAYS, _split(trades, days), _split(quotes, days), strict=True):
        yield day_tables(rng, walker, day, t_per, q_per)


def total_records(table: object) -> int:
    snapshot = table.current_snapshot()  # type: ignore[attr-defined]
    return int(snapshot.summary["total-records"]) if snapshot is not None else 0


def build_lake(
    home: Path,
    trades: int,
    quotes: int,
    *,
    seed: int = 42,
    commit_rows: int = 1_000_000,
    replace_stale: bool = False,
) -> bool:
    """Write the lake under `home`; False (and nothing written) when it already holds >= `trades` trades.

    A lake written in an older layout (another sort order) is deleted and written again when `replace_stale`
    (for the bench's own /tmp lakes), else refused."""
    catalog = open_catalog(Settings(home=home))
    tables = ensure_tables(catalog)
    table = tables[TRADES_V2.name]
    # "format-version" is a creation option pyiceberg keeps as the metadata's version, not as a property.
    written = {**table.properties, "format-version": str(table.metadata.format_version)}
    if table.sort_order() != sort_order(TRADES_V2) or any(
        written.get(key) != value for key, value in TABLE_PROPERTIES.items()
    ):
        if not replace_stale:
            sys.exit(f"lake at {home} has another layout than the product writes: delete it or pick another --home")
        print(f"lake at {home} was written in an older layout (sort order, row groups): writing it again")
        shutil.rmtree(home)
        return build_lake(home, trades, quotes, seed=seed, commit_rows=commit_rows)
    trades_table, quotes_table = tables[TRADES_V2.name], tables[QUOTES_V2.name]
    have_trades, have_quotes = total_records(trades_table), total_records(quotes_table)
    if have_trades >= trades:
        print(f"lake at {home} already has {have_trades:,} trades and {have_quotes:,} quotes: nothing to do")
        return False
    if have_trades or have_quotes:
        sys.exit(
            f"lake at {home} is partial ({have_trades:,} trades, {have_quotes:,} quotes, asked for {trades:,}):"
            " delete it or pick another --home (appending would duplicate the deterministic rows)"
        )
    rng = np.random.default_rng(seed)
    t_commit, q_commit = Committer(trades_table, commit_rows), Committer(quotes_table, commit_rows)
    started = time.perf_counter()
    for day_trades, day_quotes in generate(rng, trades, quotes):
        t_commit.add(day_trades)
        q_commit.add(day_quotes)
    t_commit.flush()
    q_commit.flush()
    elapsed = time.perf_counter() - started
    rows = t_commit.rows + q_commit.rows
    write = t_commit.write_seconds + q_commit.write_seconds
    print(
        f"wrote {t_commit.rows:,} trades in {t_commit.commits} commits and {q_commit.rows:,} quotes in"
        f" {q_commit.commits} commits to {home}\n"
        f"{elapsed:.1f} s: {rows / elapsed / 1e6:.2f} M rows/s overall;"
        f" Iceberg append {rows / write / 1e6:.2f} M rows/s ({write:.1f} s), generation {elapsed - write:.1f} s"
    )
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="K2_HOME to write the lake under")
    parser.add_argument("--trades", type=int, default=10_000_000)
    parser.add_argument("--quotes", type=int, default=None, help="default: a third of --trades")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--commit-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    quotes = args.trades // 3 if args.quotes is None else args.quotes
    build_lake(args.home, args.trades, quotes, seed=args.seed, commit_rows=args.commit_rows)


if __name__ == "__main__":
    main()
