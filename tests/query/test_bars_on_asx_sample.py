"""1-minute BHP bars for Tuesday 11 March 2014 from the lake equal bars computed here from the raw ASX file.

The oracle reads trades/7078.csv (BHP) with csv, Decimal and zoneinfo only — nothing from k2's parser — so a
mistake in the loader's time zone handling, decimal parsing or tie order shows up as a difference.
"""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

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


def raw_bars(path: Path) -> list[dict]:
    """Bars from the raw rows: minute of the UTC instant, OHLC in time order with ties in file order."""
    trades = []
    with path.open(newline="") as fh:
        for line_no, (day, clock, price, volume, *_rest) in enumerate(csv.reader(fh)):
            if day != DAY:
                continue
            local = datetime.strptime(f"{day} {clock}", "%m/%d/%Y %H:%M:%S.%f").replace(tzinfo=SYDNEY)
            trades.append((local.astimezone(UTC), line_no, Decimal(price), Decimal(volume)))
    trades.sort(key=lambda t: (t[0], t[1]))
    minutes: dict[datetime, list[tuple]] = {}
    for moment, _line, price, volume in trades:
        minutes.setdefault(moment.replace(second=0, microsecond=0), []).append((price, volume))
    result = []
    for minute, rows in minutes.items():
        volume = sum(v for _, v in rows)
        turnover = sum(p * v for p, v in rows)
        with localcontext() as context:
            context.prec = 100
            vwap = (turnover / volume).quantize(Decimal("1e-8"), rounding=ROUND_HALF_EVEN)
        result.append(
            {
                "timestamp": minute,
                "open": rows[0][0],
                "high": max(p for p, _ in rows),
                "low": min(p for p, _ in rows),
                "close": rows[-1][0],
                "volume": volume,
                "vwap": vwap,
                "quote_volume": turnover,
                "trade_count": len(rows),
            }
        )
    return result


def load_trades(sample: Path, table: Table) -> int:
    """Every trade of the sample appended in one commit, sorted by time as the sink does; no Kafka involved."""
    records = [
        record for batch in AsxSource(sample).batches() if batch.spec is TRADES_V2 for record in batch.all_records()
    ]
    arrow = records_to_arrow(TRADES_V2, records)
    table.append(arrow.sort_by([("timestamp", "ascending")]))
    return arrow.num_rows


@pytest.mark.integration
@broker_incidental
def test_one_minute_bhp_bars_equal_bars_from_the_raw_file(
    asx_sample: Path, catalog: Catalog, tables: dict[str, Table]
) -> None:
    expected = raw_bars(asx_sample / "trades" / "7078.csv")
    assert load_trades(asx_sample, tables["trades_v2"]) > sum(bar["trade_count"] for bar in expected)

    with QueryEngine(catalog) as engine:
        result = bars(engine, "BHP", "1m", DAY_START, DAY_END, exchange="asx")

    assert set(result.column("symbol").to_pylist()) == {"BHP"}
    lake = result.drop_columns(["symbol", "exchange"]).to_pylist()
    assert len(lake) == len(expected) > 300  # a whole trading day, pre-open to after the close
    assert sum(bar["trade_count"] for bar in lake) == 21_681  # every BHP row dated 11/03/2014
    for got, want in zip(lake, expected, strict=True):
        assert got == want, f"bar {want['timestamp']:%H:%M}Z differs"
    assert result.schema.field("vwap").type == pa.decimal128(18, 8)
    # The first bar opens in Sydney's pre-open, 07:05 AEDT = 20:05 UTC the day before.
    assert lake[0]["timestamp"] == datetime(2014, 3, 10, 20, 5, tzinfo=UTC)
    assert lake[-1]["timestamp"] - lake[0]["timestamp"] < timedelta(hours=11)
