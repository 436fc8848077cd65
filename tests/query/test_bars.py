"""Bars from trades in a real lake, checked against values worked out by hand."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.query.bars import Interval, bars, parse_codes, parse_interval
from k2.query.engine import QueryEngine
from k2.query.filters import InvalidQueryError
from tests.query.records import append_trades, at, trade

D = Decimal
BAR_COLUMNS = [
    "symbol",
    "exchange",
    "timestamp",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "vwap",
    "quote_volume",
    "trade_count",
    "partial",
]


def session() -> list[dict]:
    """BHP on asx around 10:00 UTC, plus noise that must not leak in (CBA, BHP on chix)."""
    return [
        trade(at(9, 59, 59, 999_999), "36.00", "10", 0),
        # Two ties, listed against sequence order so file order cannot pass for event order.
        trade(at(10, 0, 5), "36.40", "200", 2),
        trade(at(10, 0, 5), "36.50", "100", 1),
        trade(at(10, 0, 30), "36.90", "50", 3),
        trade(at(10, 0, 59, 999_999), "36.60", "1", 5),
        trade(at(10, 0, 59, 999_999), "36.70", "150", 4),
        trade(at(10, 1, 0), "36.80", "300", 6),
        # nothing in 10:02
        trade(at(10, 3, 10), "36.75", "0.12345678", 7),
        trade(at(10, 3, 20), "36.85", "10", 8),
        trade(at(10, 15, 0), "37.00", "5", 9),
        trade(at(10, 0, 0, day=1), "38.00", "100", 1),
        trade(at(10, 0, 10), "100", "1", 1, symbol="CBA"),
        trade(at(10, 0, 20), "1", "1", 1, exchange="chix"),
    ]


def bar(
    minute: str, o: str, h: str, lo: str, c: str, vol: str, vwap: str | None, qv: str, n: int, partial: bool = False
) -> dict:
    return {
        "minute": minute,
        "open": D(o),
        "high": D(h),
        "low": D(lo),
        "close": D(c),
        "volume": D(vol),
        "vwap": None if vwap is None else D(vwap),
        "quote_volume": D(qv),
        "trade_count": n,
        "partial": partial,
    }


# 10:00 — open 36.50 (seq 1 beats seq 2 at 10:00:05), close 36.60 (seq 5 after seq 4 at 10:00:59.999999);
# quote volume 36.50x100 + 36.40x200 + 36.90x50 + 36.70x150 + 36.60x1 = 18316.60 over 501 = 36.560079840...
BAR_1000 = bar("10:00", "36.50", "36.90", "36.40", "36.60", "501", "36.56007984", "18316.60", 5)
BAR_1001 = bar("10:01", "36.80", "36.80", "36.80", "36.80", "300", "36.80000000", "11040.00", 1)
# 36.75x0.12345678 + 36.85x10 = 373.0370366650 over 10.12345678 = 36.848780487903... -> 36.84878049 (rounded up)
BAR_1003 = bar("10:03", "36.75", "36.85", "36.75", "36.85", "10.12345678", "36.84878049", "373.0370366650", 2)


def as_rows(table: pa.Table) -> list[dict]:
    rows = table.to_pylist()
    for row in rows:
        row["minute"] = row.pop("timestamp").strftime("%H:%M")
        assert (row.pop("symbol"), row.pop("exchange")) == ("BHP", "asx")
    return rows


@pytest.fixture
def engine(catalog: Catalog, tables: dict[str, Table]) -> Iterator[QueryEngine]:
    append_trades(tables["trades_v2"], session())
    with QueryEngine(catalog) as engine:
        yield engine


def test_one_minute_bars_match_hand_computed_values(engine: QueryEngine) -> None:
    result = bars(engine, "BHP", "1m", at(10, 0), at(10, 4), exchange="asx")

    assert result.column_names == BAR_COLUMNS
    assert as_rows(result) == [BAR_1000, BAR_1001, BAR_1003]
    assert str(result.column("vwap")[1].as_py()) == "36.80000000"  # the scale is kept, not just the value


def test_bar_types_are_exact_decimals_and_utc_timestamps(engine: QueryEngine) -> None:
    schema = bars(engine, "BHP", "1m", at(10, 0), at(10, 4), exchange="asx").schema

    assert schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    for name in ("open", "high", "low", "close", "vwap"):
        assert schema.field(name).type == pa.decimal128(18, 8), name
    assert schema.field("volume").type == pa.decimal128(38, 8)
    assert schema.field("quote_volume").type == pa.decimal128(38, 16)
    assert schema.field("trade_count").type == pa.int64()


def test_fifteen_minute_bars(engine: QueryEngine) -> None:
    result = bars(engine, ["BHP"], "15m", at(9, 45), at(10, 30), exchange="asx")

    # 10:00 bucket: the 1-minute bars above merged; 29729.6370366650 / 811.12345678 = 36.652419293...
    assert as_rows(result) == [
        bar("09:45", "36.00", "36.00", "36.00", "36.00", "10", "36.00000000", "360.00", 1),
        bar("10:00", "36.50", "36.90", "36.40", "36.85", "811.12345678", "36.65241929", "29729.6370366650", 8),
        bar("10:15", "37.00", "37.00", "37.00", "37.00", "5", "37.00000000", "185.00", 1),
    ]


def test_daily_bars_per_symbol_and_exchange_in_each_exchanges_trading_day(engine: QueryEngine) -> None:
    result = bars(engine, None, "1d", at(0, 0), at(0, 0, day=2))

    # No tz: asx days are Sydney days (midnight AEDT = 13:00 UTC the day before), chix (no entry in
    # k2.query.venues) UTC days. The range [Mon 00:00Z, Wed 00:00Z) starts 11 hours into Sydney's Monday, which is
    # partial; Sydney's Tuesday (Mon 13:00Z to Tue 13:00Z) lies wholly inside it.
    days = [(r["symbol"], r["exchange"], r["timestamp"], r["partial"]) for r in result.to_pylist()]
    assert days == [
        ("BHP", "asx", datetime(2024, 3, 3, 13, tzinfo=UTC), True),
        ("BHP", "asx", datetime(2024, 3, 4, 13, tzinfo=UTC), False),
        ("BHP", "chix", datetime(2024, 3, 4, tzinfo=UTC), False),
        ("CBA", "asx", datetime(2024, 3, 3, 13, tzinfo=UTC), True),
    ]
    monday = result.to_pylist()[0]
    # 30274.6370366650 / 826.12345678 = 36.646625620...
    assert (monday["open"], monday["high"], monday["low"], monday["close"]) == (
        D("36.00"),
        D("37.00"),
        D("36.00"),
        D("37.00"),
    )
    assert (monday["volume"], monday["vwap"], monday["trade_count"]) == (D("826.12345678"), D("36.64662562"), 10)
    assert [r["trade_count"] for r in result.to_pylist()[1:]] == [1, 1, 1]


def test_gap_fill_carries_the_previous_close_with_zero_volume(engine: QueryEngine) -> None:
    result = bars(engine, "BHP", "1m", at(10, 0), at(10, 5), exchange="asx", gap_fill=True)

    carried_1001 = bar("10:02", "36.80", "36.80", "36.80", "36.80", "0", None, "0", 0)
    carried_1003 = bar("10:04", "36.85", "36.85", "36.85", "36.85", "0", None, "0", 0)
    assert as_rows(result) == [BAR_1000, BAR_1001, carried_1001, BAR_1003, carried_1003]


def test_gap_fill_without_gaps_changes_nothing(engine: QueryEngine) -> None:
    plain = bars(engine, "BHP", "1m", at(10, 0), at(10, 2), exchange="asx")
    filled = bars(engine, "BHP", "1m", at(10, 0), at(10, 2), exchange="asx", gap_fill=True)

    assert filled.to_pylist() == plain.to_pylist()


def test_bars_of_an_unknown_symbol_are_empty_with_the_same_columns(engine: QueryEngine) -> None:
    result = bars(engine, "NOPE", "1m", at(10, 0), at(10, 5), gap_fill=True)

    assert result.num_rows == 0
    assert result.column_names == BAR_COLUMNS


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("30s", 30), ("1m", 60), ("15m", 900), ("1h", 3600), ("4h", 14_400), ("1d", 86_400)],
)
def test_interval_parsing(text: str, seconds: int) -> None:
    assert parse_interval(text) == Interval(text, seconds)


@pytest.mark.parametrize("text", ["", "0m", "7m", "2d", "1w", "15 m", "1M", "m", "1.5m", "1m; DROP TABLE x", None])
def test_invalid_interval_says_what_is_allowed(text: str) -> None:
    with pytest.raises(InvalidQueryError, match=r"invalid bar interval .*e\.g\. 1s, .*15m.*1d"):
        parse_interval(text)


def test_invalid_interval_or_zone_fails_before_any_query(engine: QueryEngine) -> None:
    with pytest.raises(InvalidQueryError, match="invalid bar interval"):
        bars(engine, "BHP", "1 minute", at(10, 0), at(10, 5))
    with pytest.raises(InvalidQueryError, match="unknown time zone"):
        bars(engine, "BHP", "1m", at(10, 0), at(10, 5), tz="UTC'); DROP VIEW market_data.trades_v2; --")


def test_gap_fill_refuses_an_absurd_number_of_bars(engine: QueryEngine) -> None:
    with pytest.raises(InvalidQueryError, match="gap fill would make"):
        bars(engine, "BHP", "1s", at(0, 0), at(0, 0, day=30), gap_fill=True)


ZONES = ("Australia/Sydney", "Australia/Lord_Howe", "Asia/Kolkata", "America/New_York", "UTC")


def time_bucket_oracle(moments: list[datetime], width: timedelta, tz: str) -> list[tuple[datetime, int]]:
    """(bar open, trades) by DuckDB's own time_bucket(width, ts, tz), which bars reproduce without its per-row cost."""
    oracle = duckdb.connect()
    oracle.execute("SET TimeZone = 'UTC'")
    return oracle.execute(
        "SELECT time_bucket(?, m, ?) AS b, count(*) FROM unnest(?::TIMESTAMPTZ[]) AS u(m) GROUP BY b ORDER BY b",
        [width, tz, moments],
    ).fetchall()


def _moments_through_dst_changes() -> list[datetime]:
    """Every 7 minutes for 3 days from just before each change in 2014 of Sydney (April, October) and New York
    (March, November); Lord Howe shifts by 30 minutes on Sydney's dates."""
    firsts = [datetime(2014, month, day, tzinfo=UTC) for month, day in ((3, 7), (4, 4), (10, 3), (11, 1))]
    return [first + timedelta(minutes=7 * i) for first in firsts for i in range(3 * 24 * 60 // 7)]


@pytest.mark.parametrize("interval", ["1m", "15m", "1h", "4h", "1d"])
def test_zone_bars_equal_duckdb_time_bucket_across_dst_changes(
    catalog: Catalog, tables: dict[str, Table], interval: str
) -> None:
    moments = _moments_through_dst_changes()
    append_trades(tables["trades_v2"], [trade(m, "10", "1", i) for i, m in enumerate(moments)])
    width = parse_interval(interval).width
    with QueryEngine(catalog) as engine:
        for tz in ZONES:
            got = bars(engine, "BHP", interval, None, None, tz=tz)
            pairs = list(zip(got["timestamp"].to_pylist(), got["trade_count"].to_pylist(), strict=True))
            assert pairs == time_bucket_oracle(moments, width, tz), tz


def test_daily_bars_are_local_days_of_23_and_25_hours(catalog: Catalog, tables: dict[str, Table]) -> None:
    moments = _moments_through_dst_changes()
    append_trades(tables["trades_v2"], [trade(m, "10", "1", i) for i, m in enumerate(moments)])
    sydney = ZoneInfo("Australia/Sydney")
    with QueryEngine(catalog) as engine:
        got = bars(engine, "BHP", "1d", None, None, tz="Australia/Sydney")
    opens = [moment.astimezone(sydney) for moment in got["timestamp"].to_pylist()]
    assert all((o.hour, o.minute) == (0, 0) for o in opens)
    expected = Counter(m.astimezone(sydney).date() for m in moments)
    assert dict(zip([o.date() for o in opens], got["trade_count"].to_pylist(), strict=True)) == expected


def test_gap_filled_bars_across_a_dst_change_are_the_time_bucket_grid(
    catalog: Catalog, tables: dict[str, Table]
) -> None:
    # One trade at 10:00 Sydney on each side of the April 2014 change (AEDT +11, then AEST +10).
    before, after = datetime(2014, 4, 4, 23, tzinfo=UTC), datetime(2014, 4, 7, 0, tzinfo=UTC)
    append_trades(tables["trades_v2"], [trade(before, "10", "1", 1), trade(after, "11", "1", 2)])
    with QueryEngine(catalog) as engine:
        for interval, expected_bars in (("4h", 13), ("1d", 3), ("1h", 50)):
            got = bars(engine, "BHP", interval, None, None, tz="Australia/Sydney", gap_fill=True)
            width = parse_interval(interval).width
            step = [before + timedelta(minutes=15 * i) for i in range((after - before) // timedelta(minutes=15) + 1)]
            grid = [opened for opened, _ in time_bucket_oracle(step, width, "Australia/Sydney")]
            assert got["timestamp"].to_pylist() == grid, interval
            assert len(grid) == expected_bars, interval
            assert got["trade_count"].to_pylist() == [1] + [0] * (len(grid) - 2) + [1]
            assert got["close"].to_pylist() == [D("10")] * (len(grid) - 1) + [D("11")]


def test_conditions_and_venues_decide_which_trades_a_bar_counts(catalog: Catalog, tables: dict[str, Table]) -> None:
    append_trades(
        tables["trades_v2"],
        [
            trade(at(10, 0, 1), "36.00", "10", 1),
            trade(at(10, 0, 2), "42.00", "1", 2, conditions=("1",), vendor={"venue": "X"}),  # off-book on asx
            trade(at(10, 0, 3), "36.10", "10", 3, conditions=("2",)),
            trade(at(10, 0, 4), "35.00", "5", 4, conditions=("7",), vendor={"venue": "Y"}),
            trade(at(10, 0, 1), "100", "1", 1, exchange="chix", conditions=("1",)),  # code 1 means nothing here
        ],
    )

    def counted(**options: object) -> list[tuple]:
        whole = bars(engine, None, "1h", at(10), at(11), **options)  # every exchange, from the rows
        asx = bars(engine, ["BHP"], "1h", at(10), at(11), exchange="asx", **options)  # from minute partials
        assert asx.to_pylist() == [r for r in whole.to_pylist() if r["exchange"] == "asx"]
        return [(r["exchange"], r["high"], r["low"], r["trade_count"]) for r in whole.to_pylist()]

    with QueryEngine(catalog) as engine:
        assert counted() == [("asx", D("36.10"), D("35.00"), 3), ("chix", D("100"), D("100"), 1)]
        assert counted(exclude_conditions=()) == [("asx", D("42.00"), D("35.00"), 4), ("chix", D("100"), D("100"), 1)]
        assert counted(exclude_conditions=["2", "7"]) == [
            ("asx", D("42.00"), D("36.00"), 2),
            ("chix", D("100"), D("100"), 1),
        ]
        assert counted(exclude_conditions=(), exclude_venues=["X", "Y"]) == [
            ("asx", D("36.10"), D("36.00"), 2),
            ("chix", D("100"), D("100"), 1),
        ]
        with pytest.raises(InvalidQueryError, match="exclude_conditions must be a list of non-empty strings"):
            bars(engine, None, "1h", at(10), at(11), exclude_conditions="1")


@pytest.mark.parametrize(
    ("given", "codes"),
    [(None, None), ("1,3,9", ("1", "3", "9")), (["1", " 3,9"], ("1", "3", "9")), ("none", ()), (["none"], ())],
)
def test_codes_parse_from_comma_lists_and_none(given: str | list[str] | None, codes: tuple[str, ...] | None) -> None:
    assert parse_codes(given, "--exclude-conditions") == codes


@pytest.mark.parametrize("given", ["", "1,,3", "none,1", []])
def test_malformed_codes_say_how_to_write_them(given: str | list[str]) -> None:
    with pytest.raises(InvalidQueryError, match=r"invalid --exclude-conditions .*e\.g\. 1,3,9, or 'none'"):
        parse_codes(given, "--exclude-conditions")


def test_each_exchange_bars_on_its_own_zones_grid_when_none_is_given(
    catalog: Catalog, tables: dict[str, Table]
) -> None:
    moments = [at(h, 30) for h in range(0, 24, 3)]
    rows = [trade(m, "10", "1", i) for i, m in enumerate(moments)]
    append_trades(
        tables["trades_v2"], rows + [trade(m, "10", "1", i, exchange="binance") for i, m in enumerate(moments)]
    )
    width = parse_interval("4h").width
    with QueryEngine(catalog) as engine:
        got = bars(engine, "BHP", "4h", None, None)
    for exchange, tz in (("asx", "Australia/Sydney"), ("binance", "UTC")):
        series = got.filter(pc.equal(got["exchange"], exchange))
        pairs = list(zip(series["timestamp"].to_pylist(), series["trade_count"].to_pylist(), strict=True))
        assert pairs == time_bucket_oracle(moments, width, tz), exchange
    # 8 trades 3 h apart from 00:30 UTC: UTC's grid pairs 00:30+03:30 and 12:30+15:30 (6 bars), Sydney's (01:00,
    # 05:00, ... UTC in March) pairs only 09:30+12:30 (7 bars).
    assert Counter(got["exchange"].to_pylist()) == {"asx": 7, "binance": 6}


def test_gap_filled_bars_are_flagged_partial_where_the_range_cuts_them(engine: QueryEngine) -> None:
    result = bars(engine, "BHP", "15m", at(10, 5), at(10, 40), exchange="asx", gap_fill=True)

    # From 10:05 the first trade is at 10:15; the empty 10:30 bar is cut at 10:40.
    assert [(r["timestamp"], r["trade_count"], r["partial"]) for r in result.to_pylist()] == [
        (at(10, 15), 1, False),
        (at(10, 30), 0, True),
    ]
