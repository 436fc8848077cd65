"""BHP bars from the lake equal bars computed here from the raw ASX file: 1-minute bars of every trade on
Tuesday 11 March 2014, and the default daily bars (Sydney trading days, off-book prints left out).

The oracle reads trades/7078.csv (BHP) with csv, Decimal and zoneinfo only — nothing from k2's parser — so a
mistake in the loader's time zone handling, decimal parsing, tie order or condition filter shows up as a difference.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from pyiceberg.table import Table

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from k2.query.bars import bars
from k2.query.engine import QueryEngine
from k2.schema.arrow import records_to_arrow
from k2.schema.fields import TRADES_V2
from k2.sources.asx import AsxSource
from tests.conftest import broker_incidental

SYDNEY = ZoneInfo("Australia/Sydney")
DAY = "03/11/2014"  # the files write MM/DD/YYYY, in Sydney wall-clock time
DAY_START = datetime(2014, 3, 11, tzinfo=SYDNEY)
DAY_END = datetime(2014, 3, 12, tzinfo=SYDNEY)
OFF_BOOK = {"1", "3", "9"}  # the codes k2.query.venues leaves out of ASX bars by default

pytestmark = [pytest.mark.integration, broker_incidental]


@dataclass(frozen=True)
class RawTrade:
    moment: datetime  # UTC
    line: int
    day: str  # the file's date text
    price: Decimal
    volume: Decimal
    code: str


@cache
def local_date(text: str) -> date:
    month, day, year = map(int, text.split("/"))
    return date(year, month, day)


def raw_trades(path: Path) -> list[RawTrade]:
    """Every row of a trades file, in time order with ties in file order."""
    trades = []
    with path.open(newline="") as fh:
        for line_no, (day, clock, price, volume, code, *_rest) in enumerate(csv.reader(fh)):
            local = datetime.combine(local_date(day), time.fromisoformat(clock), SYDNEY)
            trades.append(RawTrade(local.astimezone(UTC), line_no, day, Decimal(price), Decimal(volume), code))
    return sorted(trades, key=lambda t: (t.moment, t.line))


def raw_bars(trades: list[RawTrade], bar_of: Callable[[RawTrade], datetime]) -> list[dict]:
    """Bars of `trades` (in time order) by the bar each one falls in: OHLC, volume, exact VWAP, count."""
    bars_by_open: dict[datetime, list[RawTrade]] = {}
    for t in trades:
        bars_by_open.setdefault(bar_of(t), []).append(t)
    result = []
    for opened, rows in bars_by_open.items():
        volume = sum(t.volume for t in rows)
        turnover = sum(t.price * t.volume for t in rows)
        with localcontext() as context:
            context.prec = 100
            vwap = (turnover / volume).quantize(Decimal("1e-8"), rounding=ROUND_HALF_EVEN)
        result.append(
            {
                "timestamp": opened,
                "open": rows[0].price,
                "high": max(t.price for t in rows),
                "low": min(t.price for t in rows),
                "close": rows[-1].price,
                "volume": volume,
                "vwap": vwap,
                "quote_volume": turnover,
                "trade_count": len(rows),
            }
        )
    return result


def utc_minute(t: RawTrade) -> datetime:
    return t.moment.replace(second=0, microsecond=0)


def sydney_midnight(t: RawTrade) -> datetime:
    return datetime.combine(local_date(t.day), time(), SYDNEY).astimezone(UTC)


def load_trades(sample: Path, table: Table) -> int:
    """Every trade of the sample appended in one commit, sorted by time as the sink does; no Kafka involved."""
    records = [
        record for batch in AsxSource(sample).batches() if batch.spec is TRADES_V2 for record in batch.all_records()
    ]
    arrow = records_to_arrow(TRADES_V2, records)
    table.append(arrow.sort_by([("timestamp", "ascending")]))
    return arrow.num_rows


@pytest.fixture(scope="module")
def engine(asx_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[QueryEngine]:
    """One lake holding every trade of the sample (200,545), shared by this module's tests (loading takes ~6 s)."""
    catalog = open_catalog(Settings(home=tmp_path_factory.mktemp("asx-lake")))
    assert load_trades(asx_sample, ensure_tables(catalog)["trades_v2"]) == 200_545
    with QueryEngine(catalog) as engine:
        yield engine


@pytest.fixture(scope="module")
def bhp(asx_sample: Path) -> list[RawTrade]:
    return raw_trades(asx_sample / "trades" / "7078.csv")


def without_columns(table: pa.Table, *names: str) -> list[dict]:
    return table.drop_columns(list(names)).to_pylist()


def test_one_minute_bhp_bars_of_every_trade_equal_bars_from_the_raw_file(
    engine: QueryEngine, bhp: list[RawTrade]
) -> None:
    expected = raw_bars([t for t in bhp if t.day == DAY], utc_minute)

    result = bars(engine, "BHP", "1m", DAY_START, DAY_END, exchange="asx", exclude_conditions=())

    assert set(result.column("symbol").to_pylist()) == {"BHP"}
    assert not any(result.column("partial").to_pylist())  # the range is whole minutes
    lake = without_columns(result, "symbol", "exchange", "partial")
    assert len(lake) == len(expected) > 300  # a whole trading day, pre-open to after the close
    assert sum(bar["trade_count"] for bar in lake) == 21_681  # every BHP row dated 11/03/2014
    for got, want in zip(lake, expected, strict=True):
        assert got == want, f"bar {want['timestamp']:%H:%M}Z differs"
    assert result.schema.field("vwap").type == pa.decimal128(18, 8)
    # The first bar opens in Sydney's pre-open, 07:05 AEDT = 20:05 UTC the day before.
    assert lake[0]["timestamp"] == datetime(2014, 3, 10, 20, 5, tzinfo=UTC)
    assert lake[-1]["timestamp"] - lake[0]["timestamp"] < timedelta(hours=11)


def test_daily_bhp_bars_are_the_five_sydney_trading_days_without_off_book_prints(
    engine: QueryEngine, bhp: list[RawTrade]
) -> None:
    expected = raw_bars([t for t in bhp if t.code not in OFF_BOOK], sydney_midnight)

    result = bars(engine, "BHP", "1d", None, None)  # no tz, no exchange: ASX's own days and conditions

    assert result.column("timestamp").to_pylist() == [
        datetime(2014, 3, day - 1, 13, tzinfo=UTC)
        for day in range(10, 15)  # midnight AEDT (+11)
    ]
    assert result.column("partial").to_pylist() == [False] * 5
    assert without_columns(result, "symbol", "exchange", "partial") == expected
    tuesday = result.to_pylist()[1]
    assert (tuesday["high"], tuesday["low"], tuesday["volume"], tuesday["trade_count"]) == (
        Decimal("36.45"),
        Decimal("35.84"),
        Decimal("6705250"),
        21_653,  # 28 of the day's 21,681 rows carry code 1, 3 or 9
    )


def test_counting_every_trade_lets_the_pre_open_42_print_set_the_high(engine: QueryEngine) -> None:
    every = bars(engine, "BHP", "1d", DAY_START, DAY_END, exclude_conditions=())
    by_venue = bars(engine, "BHP", "1d", DAY_START, DAY_END, exclude_conditions=(), exclude_venues=["X"])
    on_book = bars(engine, "BHP", "1d", DAY_START, DAY_END)

    assert [(r["high"], r["trade_count"]) for r in every.to_pylist()] == [(Decimal("42.00"), 21_681)]
    # The 'X' venue mark and codes 1, 3, 9 pick the same rows in the sample.
    assert without_columns(by_venue, "partial") == without_columns(on_book, "partial")
    assert [(r["high"], r["trade_count"]) for r in on_book.to_pylist()] == [(Decimal("36.45"), 21_653)]


def test_explicit_tz_wins_and_utc_days_split_the_sessions(engine: QueryEngine) -> None:
    result = bars(engine, "BHP", "1d", None, None, tz="UTC")

    # Each 10:00-16:00 AEDT session straddles 00:00 UTC, so five sessions fall into six UTC days.
    assert result.column("timestamp").to_pylist() == [datetime(2014, 3, day, tzinfo=UTC) for day in range(9, 15)]


def test_a_range_inside_the_first_and_last_day_flags_those_bars_partial(
    engine: QueryEngine, bhp: list[RawTrade]
) -> None:
    start, end = datetime(2014, 3, 11, tzinfo=UTC), datetime(2014, 3, 13, 3, tzinfo=UTC)  # 11:00 and 14:00 AEDT
    expected = raw_bars([t for t in bhp if t.code not in OFF_BOOK and start <= t.moment < end], sydney_midnight)

    result = bars(engine, "BHP", "1d", start, end)

    assert result.column("timestamp").to_pylist() == [datetime(2014, 3, day, 13, tzinfo=UTC) for day in (10, 11, 12)]
    assert result.column("partial").to_pylist() == [True, False, True]
    assert without_columns(result, "symbol", "exchange", "partial") == expected
