"""Order book at a random instant of a busy day: `k2.query.book.book_at` vs a naive replay from the venue snapshot.

The lake: one symbol-day (BTCUSDT on binance, 2026-11-20) of ~1 M book_updates_v2 rows, made by the product's own
path: synthetic raw depth frames (`<symbol>@depth@100ms` JSON, a 100 ms grid with about 3 in 10 slots carrying an
event of 1-7 levels, update ids jumping 1-20 per event) and venue REST snapshot bodies (at the start, then hourly,
1,000 levels a side at most) go through `BookRecorder` with the checkpoint interval of the product's settings
(K2_BOOK_CHECKPOINT_SECONDS, 60 s), and its rows are appended with `records_to_arrow` + `in_write_order` in 250k-row
commits as the sink would. The book: levels at 1-400 ticks (0.01) from a random-walk mid, 3 in 10 changes remove a
level; it holds ~300-600 levels a side (a venue's is deeper: checkpoints are then larger, the replay the same).
Full mode keeps the lake in /tmp/k2-bench-book-1m (~2 min to write); quick mode writes ~100k rows to a temp home.

Measured: `book_at` (depth 20) at 1,000 instants drawn uniformly over the day (seed 7), in that order, on one engine:
the first call runs the queries, the second loads the day (both in the p99), the rest are served from the held
day. On every 10th instant, interleaved: the naive baseline (`naive.naive_book_at`: pyiceberg scans of the newest
venue snapshot and of every update since it, a replay in Python) and `book_at(day_cache=False)` (the queries alone,
what every call cost before the day was held). All three books are checked equal.
"""

from __future__ import annotations

import shutil
import statistics
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import orjson
from common import Row, main_for, ms, progress, temp_home
from naive import naive_book_at

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_table, in_write_order
from k2.query.book import book_at
from k2.query.engine import QueryEngine
from k2.schema.arrow import records_to_arrow
from k2.schema.fields import BOOK_SNAPSHOTS_V2, BOOK_UPDATES_V2
from k2.sources.binance.book_recorder import BookRecorder

SYMBOL = "BTCUSDT"
EXCHANGE = "binance"
DAY = date(2026, 11, 20)
DAY_US = int(datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC).timestamp()) * 1_000_000
SLOTS = 864_000  # 100 ms slots in a day
LEVELS_PER_EVENT = 4  # the mean of 1-7
COMMIT_ROWS = 250_000
DEPTH = 20
SEED = 7
GOAL_MS = 5.0
FULL_HOME = Path("/tmp/k2-bench-book-1m")


def _price(ticks: int) -> str:
    return f"{ticks // 100}.{ticks % 100:02d}"


def _quantity(units: int) -> str:
    return f"{units // 100_000_000}.{units % 100_000_000:08d}"


class _Writer:
    """Rows appended to one table in commits of COMMIT_ROWS, sorted as the sink sorts them."""

    def __init__(self, catalog: object, spec: object) -> None:
        self.table = ensure_table(catalog, spec)  # type: ignore[arg-type]
        self.spec = spec
        self.rows: list[dict] = []
        self.written = 0

    def add(self, rows: list[dict]) -> None:
        self.rows += rows
        if len(self.rows) >= COMMIT_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            self.table.append(in_write_order(records_to_arrow(self.spec, self.rows)))  # type: ignore[arg-type]
            self.written += len(self.rows)
            self.rows = []


def write_lake(
    home: Path, update_rows: int, seed: int = SEED, checkpoint_seconds: float | None = None
) -> tuple[int, int]:
    """One symbol-day of depth frames and hourly snapshots through BookRecorder into the lake at `home`;
    (update rows, snapshot rows) written. `checkpoint_seconds`: default the product's setting."""
    settings = Settings(home=home)
    if checkpoint_seconds is not None:
        settings = Settings(home=home, book_checkpoint_seconds=checkpoint_seconds)
    catalog = open_catalog(settings)
    updates, snapshots = _Writer(catalog, BOOK_UPDATES_V2), _Writer(catalog, BOOK_SNAPSHOTS_V2)
    recorder = BookRecorder(checkpoint_us=settings.book_checkpoint_us)
    rng = np.random.default_rng(seed)
    slots = np.flatnonzero(rng.random(SLOTS) < update_rows / (LEVELS_PER_EVENT * SLOTS))
    mid = 5_000_000  # 50,000.00 in ticks
    book: dict[str, dict[int, int]] = {"bids": {}, "asks": {}}
    for offset in range(1, 201):
        book["bids"][mid - offset] = int(rng.integers(1, 500)) * 1000
        book["asks"][mid + offset] = int(rng.integers(1, 500)) * 1000
    last_id = 1_000_000_000
    next_snapshot_us = DAY_US

    def snapshot(receive_us: int, taken_us: int | None) -> None:
        body = {
            "lastUpdateId": last_id,
            "bids": [[_price(p), _quantity(q)] for p, q in sorted(book["bids"].items(), reverse=True)[:1000]],
            "asks": [[_price(p), _quantity(q)] for p, q in sorted(book["asks"].items())[:1000]],
        }
        got = recorder.snapshot(SYMBOL, orjson.dumps(body), receive_us, limit=1000, taken_us=taken_us)
        snapshots.add(got.snapshots)  # type: ignore[union-attr]

    for slot in slots.tolist():
        event_ms = DAY_US // 1000 + slot * 100
        if event_ms * 1000 >= next_snapshot_us:
            first = next_snapshot_us == DAY_US
            snapshot(next_snapshot_us + 50_000, None if first else recorder.event_us[SYMBOL])
            next_snapshot_us += 3_600_000_000 + int(rng.integers(0, 60_000_000))
        mid += int(rng.choice((-1, 0, 0, 0, 0, 0, 0, 0, 0, 1)))
        changes: dict[str, list[list[str]]] = {"b": [], "a": []}
        for _ in range(int(rng.integers(1, 8))):
            bid = bool(rng.integers(0, 2))
            distance = min(int(rng.geometric(0.02)), 400)
            ticks = mid - distance if bid else mid + distance
            units = 0 if rng.random() < 0.3 else int(rng.lognormal(5, 1.2)) * 1000 + 1000
            side = book["bids" if bid else "asks"]
            if units:
                side[ticks] = units
            else:
                side.pop(ticks, None)
            changes["b" if bid else "a"].append([_price(ticks), _quantity(units)])
        first_id, last_id = last_id + 1, last_id + int(rng.integers(1, 21))
        data = {"e": "depthUpdate", "E": event_ms, "s": SYMBOL, "U": first_id, "u": last_id, **changes}
        raw = orjson.dumps({"stream": f"{SYMBOL.lower()}@depth@100ms", "data": data})
        got = recorder.frame(raw, event_ms * 1000 + 2_000)
        updates.add(got.updates)  # type: ignore[union-attr]
        snapshots.add(got.snapshots)  # type: ignore[union-attr]
    updates.flush()
    snapshots.flush()
    return updates.written, snapshots.written


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(home: Path, instants: int, naive_every: int) -> dict[str, object]:
    """book_at at `instants` seeded instants of the day; the naive baseline and the query path on every
    `naive_every`-th, interleaved; the books checked equal."""
    catalog = open_catalog(Settings(home=home))
    snapshots_table = catalog.load_table("market_data.book_snapshots_v2")
    updates_table = catalog.load_table("market_data.book_updates_v2")
    rng = np.random.default_rng(SEED)
    times = (DAY_US + 60_000_000 + rng.integers(0, 86_400_000_000 - 60_000_000, instants)).tolist()
    k2, naive, queries, applied = [], [], [], []
    with QueryEngine(catalog) as engine:
        for i, at in enumerate(times):
            started = time.perf_counter()
            book = book_at(engine, SYMBOL, at, DEPTH, exchange=EXCHANGE)
            k2.append(time.perf_counter() - started)
            applied.append(book.updates_applied)
            if i % naive_every:
                continue
            started = time.perf_counter()
            expected = naive_book_at(snapshots_table, updates_table, SYMBOL, at, DEPTH)
            naive.append(time.perf_counter() - started)
            started = time.perf_counter()
            queried = book_at(engine, SYMBOL, at, DEPTH, exchange=EXCHANGE, day_cache=False)
            queries.append(time.perf_counter() - started)
            if queried != book or (book.bids, book.asks) != expected:
                raise AssertionError(
                    f"the books at {at} differ: book_at {book}, query path {queried}, naive {expected}"
                )
    return {"k2": k2, "naive": naive, "queries": queries, "first": k2[0], "load": k2[1], "applied": applied}


def rows(quick: bool) -> list[Row]:
    update_rows, instants, naive_every = (100_000, 200, 10) if quick else (1_000_000, 1_000, 10)
    goal = f"median <= {GOAL_MS:g} ms"
    with temp_home("book") as scratch:
        home = scratch if quick else FULL_HOME
        marker = home / "bench-book-rows"
        if not marker.exists():
            shutil.rmtree(home / "warehouse", ignore_errors=True)  # an interrupted earlier write
            (home / "catalog.db").unlink(missing_ok=True)
            progress(f"writing {update_rows:,} update rows of one symbol-day through BookRecorder into {home}")
            started = time.perf_counter()
            written = write_lake(home, update_rows)
            marker.write_text(f"{written[0]} {written[1]}\n")
            took = time.perf_counter() - started
            progress(f"written {written[0]:,} update rows, {written[1]:,} snapshot rows in {took:.0f} s")
        updates_written, snapshots_written = map(int, marker.read_text().split())
        progress(f"{instants} books, the naive baseline and the query path on every {naive_every}th")
        got = measure(home, instants, naive_every)
    k2, naive, queries = got["k2"], got["naive"], got["queries"]
    p50, p99 = statistics.median(k2), _percentile(k2, 99)
    naive_p50, naive_p99 = statistics.median(naive), _percentile(naive, 99)
    queries_p50, queries_p99 = statistics.median(queries), _percentile(queries, 99)
    note = (
        f"{updates_written:,} update rows, {snapshots_written:,} snapshot rows (hourly venue snapshots + 60 s"
        f" checkpoints); depth {DEPTH}; {len(k2)} instants (seed {SEED}), median"
        f" {statistics.median(got['applied']):.0f} update events replayed; first call (queries) {ms(got['first'])},"
        f" second (loads the day) {ms(got['load'])};"
        f" book_at p99 {ms(p99)}; naive p50 {ms(naive_p50)} / p99 {ms(naive_p99)} on {len(naive)} instants; the"
        f" queries alone (day_cache=False) p50 {ms(queries_p50)} / p99 {ms(queries_p99)}"
    )
    return [
        Row(
            f"10 book at a random instant, 1 symbol-day of {updates_written / 1e6:.1f}M updates",
            f"{ms(p50)} (p99 {ms(p99)})",
            "naive snapshot + Python replay",
            f"{ms(naive_p50)} (p99 {ms(naive_p99)})",
            naive_p50 / p50,
            goal,
            p50 * 1000 <= GOAL_MS,
            note,
        )
    ]


if __name__ == "__main__":
    main_for(rows, __doc__)
