"""The research/audit query library against a real catalog and warehouse: market data, as-of join, summaries."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal

import pyarrow as pa
import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.query.asof import trades_with_quotes
from k2.query.engine import QueryEngine
from k2.query.filters import InvalidQueryError
from k2.query.market import events, latest, page, quotes, trades
from k2.query.summary import daily_summary, symbols
from k2.schema.codecs import micros_from_datetime
from tests.query.records import append_quotes, append_trades, at, quote, trade

D = Decimal
HOSTILE = ["BHP'; DROP VIEW market_data.trades_v2; --", "' OR '1'='1", 'BHP" OR 1=1 --', "%", "*"]


def tape() -> list[dict]:
    return [
        trade(at(9, 59, 59, 999_999), "36.00", "10", 0),
        trade(at(10, 0, 5), "36.40", "200", 2),
        trade(at(10, 0, 5), "36.50", "100", 1),
        trade(at(10, 0, 30), "36.90", "50", 3),
        trade(at(10, 0, 59, 999_999), "36.60", "1", 5),
        trade(at(10, 0, 59, 999_999), "36.70", "150", 4),
        trade(at(10, 1, 0), "36.80", "300", 6),
        trade(at(10, 0, 10), "100", "1", 1, symbol="CBA"),
        trade(at(10, 0, 20), "36.55", "7", 1, exchange="chix"),
        # No venue sequence at all (null) and the same microsecond: only message_id orders them.
        trade(at(10, 0, 40), "5", "1", None, symbol="XYZ", mid="xyz-b"),
        trade(at(10, 0, 40), "5", "2", None, symbol="XYZ", mid="xyz-a"),
        trade(at(10, 0, 40), "5", "3", 7, symbol="XYZ", mid="xyz-c"),
    ]


def book() -> list[dict]:
    return [
        quote(at(9, 59), "35.90", "36.10", 1),
        quote(at(10, 0, 5), "36.45", "36.55", 2),
        quote(at(10, 0, 5), "36.46", "36.57", 3),  # same microsecond, later sequence: this one prevails
        quote(at(10, 0, 30, 1), "36.80", "37.00", 4),  # 1 µs after the 10:00:30 trade: must not be used for it
        quote(at(10, 1, 0), None, "36.90", 5),  # no bid
        quote(at(10, 0, 19), "36.50", "36.60", 1, exchange="chix"),
    ]


@pytest.fixture
def engine(catalog: Catalog, tables: dict[str, Table]) -> Iterator[QueryEngine]:
    append_trades(tables["trades_v2"], tape())
    append_quotes(tables["quotes_v2"], book())
    with QueryEngine(catalog) as engine:
        yield engine


def keys(table: pa.Table) -> list[tuple]:
    return list(zip(*(table.column(c).to_pylist() for c in ("symbol", "source_sequence", "message_id")), strict=True))


def test_trades_by_symbol_exchange_and_range_in_event_order(engine: QueryEngine) -> None:
    result = trades(engine, ["BHP"], at(10, 0), at(10, 1), exchange="asx")

    assert result.column("source_sequence").to_pylist() == [1, 2, 3, 4, 5]  # ties at 10:00:05/59.999999 by seq
    assert result.schema.field("price").type == pa.decimal128(18, 8)
    assert result.schema.field("timestamp").type == pa.timestamp("us", tz="UTC")
    # [start, end): the trade at 09:59:59.999999 and the one at exactly 10:01 are outside.
    assert trades(engine, "BHP", at(10, 0), at(10, 1)).num_rows == 6  # plus chix


def test_null_sequences_sort_after_real_ones_then_by_message_id(engine: QueryEngine) -> None:
    result = trades(engine, "XYZ", at(10, 0), at(10, 1), columns=["message_id"])

    assert result.column_names == ["message_id"]
    assert result.column("message_id").to_pylist() == ["xyz-c", "xyz-a", "xyz-b"]


def test_quotes_keep_a_missing_side_as_null(engine: QueryEngine) -> None:
    result = quotes(engine, "BHP", at(10, 1), at(10, 2), exchange="asx")

    assert result.select(["bid_price", "bid_quantity", "ask_price"]).to_pylist() == [
        {"bid_price": None, "bid_quantity": None, "ask_price": D("36.90")}
    ]


def test_latest_n_per_symbol(engine: QueryEngine) -> None:
    result = latest(engine, "trades", ["BHP", "CBA"], n=2, exchange="asx", columns=["price"])

    assert [(r["symbol"], r["source_sequence"], r["price"]) for r in result.to_pylist()] == [
        ("BHP", 5, D("36.60")),
        ("BHP", 6, D("36.80")),
        ("CBA", 1, D("100")),
    ]
    # The newest of two trades in the same microsecond is the later in sequence.
    newest = latest(engine, "trades", "BHP", n=1, exchange="asx", end=at(10, 1))
    assert newest.column("source_sequence").to_pylist() == [5]


def test_latest_keeps_every_tie_at_the_cutoff_instant_and_reads_one_snapshot(
    catalog: Catalog, tables: dict[str, Table]
) -> None:
    # Five trades share the newest microsecond, two more are older: the 3 newest come from the tie, by sequence.
    rows = [trade(at(9, 0), "1", "1", 1), trade(at(9, 1), "2", "1", 2)]
    rows += [trade(at(9, 2), str(10 + seq), "1", seq) for seq in (7, 3, 5, 4, 6)]
    first = append_trades(tables["trades_v2"], rows)
    append_trades(tables["trades_v2"], [trade(at(9, 3), "99", "1", 8)])
    with QueryEngine(catalog) as engine:
        assert latest(engine, "trades", "BHP", n=3).column("source_sequence").to_pylist() == [6, 7, 8]
        then = latest(engine, "trades", "BHP", n=3, as_of=first)
        assert then.column("source_sequence").to_pylist() == [5, 6, 7]
        assert latest(engine, "trades", "BHP", n=50, as_of=first).num_rows == 7


def test_latest_reads_the_newest_day_first_and_still_finds_older_rows_on_other_exchanges(
    catalog: Catalog, tables: dict[str, Table]
) -> None:
    # Five days, one commit each. BHP trades 3 times a day on asx; on chix only on day 0. CBA trades once a day.
    for day in range(5):
        rows = [trade(at(10, minute, day=day), f"{day}.{minute}", "1", 10 * day + minute) for minute in range(3)]
        rows.append(trade(at(11, day=day), f"9{day}", "1", 100 + day, symbol="CBA"))
        if day == 0:
            rows.append(trade(at(12), "36.55", "7", 1, exchange="chix"))
        append_trades(tables["trades_v2"], rows)

    with QueryEngine(catalog) as engine:
        files = engine.layout("trades_v2").files
        assert [(f.day, f.exchange, engine.symbol_counts(f.path)) for f in files] == [
            (date(2024, 3, 8), "asx", {"BHP": 3, "CBA": 1}),
            (date(2024, 3, 7), "asx", {"BHP": 3, "CBA": 1}),
            (date(2024, 3, 6), "asx", {"BHP": 3, "CBA": 1}),
            (date(2024, 3, 5), "asx", {"BHP": 3, "CBA": 1}),
            (date(2024, 3, 4), "chix", {"BHP": 1}),  # its newest trade (12:00) is newer than asx's (11:00)
            (date(2024, 3, 4), "asx", {"BHP": 3, "CBA": 1}),
        ]
        assert (files[0].oldest, files[0].newest) == (
            micros_from_datetime(at(10, day=4)),
            micros_from_datetime(at(11, day=4)),
        )
        # The newest day holds BHP's 2 newest asx trades; its only chix trade is 4 days older and still comes back.
        newest = latest(engine, "trades", "BHP", n=2)
        assert [(r["exchange"], r["source_sequence"]) for r in newest.to_pylist()] == [
            ("asx", 41),
            ("asx", 42),
            ("chix", 1),
        ]
        # On asx alone the newest hour holds both: answered from it (columns as asked, no helper column).
        asx = latest(engine, "trades", "BHP", n=2, exchange="asx", columns=["price"])
        assert asx.column_names == ["price", "symbol", "exchange", "timestamp", "source_sequence", "message_id"]
        assert asx.column("price").to_pylist() == [D("4.1"), D("4.2")]
        # 5 newest asx trades span two days; CBA's 4 span four; an exchange filter leaves chix out.
        five = latest(engine, "trades", "BHP", n=5, exchange="asx")
        assert five.column("source_sequence").to_pylist() == [31, 32, 40, 41, 42]
        assert latest(engine, "trades", "CBA", n=4).column("source_sequence").to_pylist() == [101, 102, 103, 104]
        # More than there is: everything, from every day.
        assert latest(engine, "trades", ["BHP", "CBA"], n=100).num_rows == 15 + 1 + 5
        # A start inside the range bounds the look-back; an end moves the newest day back.
        bounded = latest(engine, "trades", "BHP", n=10, start=at(0, day=3))
        assert bounded.column("source_sequence").to_pylist() == [30, 31, 32, 40, 41, 42]
        before = latest(engine, "trades", "BHP", n=2, end=at(10, 2, day=1))
        assert [(r["exchange"], r["source_sequence"]) for r in before.to_pylist()] == [
            ("asx", 10),
            ("asx", 11),
            ("chix", 1),
        ]
        # A symbol that never traded: nothing, after looking everywhere.
        assert latest(engine, "trades", "NAB", n=3).num_rows == 0


def test_the_quote_prevailing_at_start_comes_from_the_look_back(catalog: Catalog, tables: dict[str, Table]) -> None:
    # Quotes only on Monday; two share the newest instant (the later sequence prevails). Trades on Tuesday.
    append_quotes(
        tables["quotes_v2"],
        [
            quote(at(15), "35.00", "35.20", 1),
            quote(at(15, 59), "35.50", "35.70", 3),
            quote(at(15, 59), "35.40", "35.60", 2),
            quote(at(15, 59), "36.00", "36.20", 1, symbol="CBA"),
        ],
    )
    append_trades(tables["trades_v2"], [trade(at(10, day=1), "35.55", "10", 7)])
    with QueryEngine(catalog) as engine:
        joined = trades_with_quotes(engine, "BHP", at(0, day=1), at(0, day=2))
        assert [(r["source_sequence"], r["bid_price"], r["ask_price"], r["mid"]) for r in joined.to_pylist()] == [
            (7, D("35.50"), D("35.70"), D("35.600000000"))
        ]
        assert joined.column("quote_timestamp").to_pylist()[0] == at(15, 59)
        # A look-back shorter than the quiet spell finds no quote; none at all also works.
        for lookback in (timedelta(hours=2), timedelta(0)):
            short = trades_with_quotes(engine, "BHP", at(0, day=1), at(0, day=2), quote_lookback=lookback)
            assert short.column("bid_price").to_pylist() == [None]


def test_keyset_pages_visit_every_row_once_in_order(engine: QueryEngine) -> None:
    everything = events(engine, "trades", None, at(9), at(11))
    seen: list[tuple] = []
    cursor = None
    for _ in range(20):
        result = page(engine, "trades", None, at(9), at(11), after=cursor, limit=3)
        assert result.rows.num_rows <= 3
        seen.extend(keys(result.rows))
        cursor = result.next_cursor
        if cursor is None:
            break

    assert seen == keys(everything)
    assert len(seen) == len(set(seen)) == len(tape())


def test_page_after_the_last_row_is_empty(engine: QueryEngine) -> None:
    whole = page(engine, "trades", "BHP", at(9), at(11), limit=100)
    assert whole.next_cursor is None and whole.cursor is not None

    rest = page(engine, "trades", "BHP", at(9), at(11), after=whole.cursor, limit=100)

    assert rest.rows.num_rows == 0 and rest.cursor is None and rest.next_cursor is None


@pytest.mark.parametrize("cursor", ["", "not-a-cursor", "W10", "WzEsIjEiLDIsIngiXQ", "bnVsbA"])
def test_a_cursor_k2_did_not_issue_is_refused(engine: QueryEngine, cursor: str) -> None:
    with pytest.raises(InvalidQueryError, match="pass back next_cursor unchanged"):
        page(engine, "trades", "BHP", at(9), at(11), after=cursor)


def test_as_of_join_uses_the_quote_at_or_before_each_trade(engine: QueryEngine) -> None:
    result = trades_with_quotes(engine, ["BHP", "CBA"], at(9, 30), at(10, 2))
    rows = [
        (
            r["symbol"],
            r["exchange"],
            r["source_sequence"],
            r["bid_price"],
            r["ask_price"],
            r["mid"],
            r["spread"],
            r["effective_spread"],
        )
        for r in result.to_pylist()
    ]

    assert rows == [
        ("BHP", "asx", 0, D("35.90"), D("36.10"), D("36.000000000"), D("0.20"), D("0.000000000")),
        # at 10:00:05 exactly: the quote of the same microsecond counts, and of two, the later sequence (36.46/36.57)
        ("BHP", "asx", 1, D("36.46"), D("36.57"), D("36.515"), D("0.11"), D("0.030")),
        ("BHP", "asx", 2, D("36.46"), D("36.57"), D("36.515"), D("0.11"), D("0.230")),
        ("CBA", "asx", 1, None, None, None, None, None),  # no CBA quote at all
        ("BHP", "chix", 1, D("36.50"), D("36.60"), D("36.55"), D("0.10"), D("0.00")),  # chix quote, not asx's
        # 10:00:30: the quote 1 µs later is not yet known
        ("BHP", "asx", 3, D("36.46"), D("36.57"), D("36.515"), D("0.11"), D("0.770")),
        ("BHP", "asx", 4, D("36.80"), D("37.00"), D("36.90"), D("0.20"), D("0.40")),
        ("BHP", "asx", 5, D("36.80"), D("37.00"), D("36.90"), D("0.20"), D("0.60")),
        ("BHP", "asx", 6, None, D("36.90"), None, None, None),  # one-sided quote: no mid, no spread
    ]
    assert result.schema.field("mid").type == pa.decimal128(19, 9)
    assert result.schema.field("spread").type == pa.decimal128(19, 8)
    assert result.schema.field("effective_spread").type == pa.decimal128(20, 9)
    assert str(result.column("mid")[1].as_py()) == "36.515000000"


def test_as_of_join_finds_a_quote_from_before_the_range(engine: QueryEngine) -> None:
    result = trades_with_quotes(engine, "BHP", at(10, 0), at(10, 0, 6), exchange="asx")
    assert result.column("quote_timestamp").to_pylist() == [at(10, 0, 5), at(10, 0, 5)]

    first = trades_with_quotes(engine, "BHP", at(9, 59, 59, 999_999), at(10), exchange="asx")
    assert first.column("quote_timestamp").to_pylist() == [at(9, 59)]  # quoted before `start`


def test_daily_summary_uses_the_venue_day(catalog: Catalog, tables: dict[str, Table]) -> None:
    # 23:30 UTC Monday and 04:00 UTC Tuesday are both Tuesday 5 March in Sydney (AEDT, UTC+11).
    append_trades(
        tables["trades_v2"],
        [trade(at(23, 30), "120.00", "10", 1, symbol="RIO"), trade(at(4, 0, day=1), "121.50", "30", 2, symbol="RIO")],
    )
    with QueryEngine(catalog) as engine:
        sydney = daily_summary(engine, "RIO", at(13), at(13, day=1), tz="Australia/Sydney")
        by_default = daily_summary(engine, "RIO", at(13), at(13, day=1))  # an ASX symbol: Sydney days
        utc = daily_summary(engine, "RIO", at(0), at(0, day=2), tz="UTC")

    assert sydney.column_names[:3] == ["date", "symbol", "exchange"]
    assert sydney.to_pylist() == [
        {
            "date": date(2024, 3, 5),
            "symbol": "RIO",
            "exchange": "asx",
            "open": D("120.00"),
            "high": D("121.50"),
            "low": D("120.00"),
            "close": D("121.50"),
            "volume": D("40"),
            "vwap": D("121.12500000"),  # (1200 + 3645) / 40
            "trade_count": 2,
        }
    ]
    assert by_default == sydney
    assert utc.column("date").to_pylist() == [date(2024, 3, 4), date(2024, 3, 5)]


def test_symbol_list_with_first_and_last_seen(engine: QueryEngine) -> None:
    result = symbols(engine, "trades")

    assert result.to_pylist() == [
        {"symbol": "BHP", "exchange": "asx", "first_seen": at(9, 59, 59, 999_999), "last_seen": at(10, 1), "count": 7},
        {"symbol": "BHP", "exchange": "chix", "first_seen": at(10, 0, 20), "last_seen": at(10, 0, 20), "count": 1},
        {"symbol": "CBA", "exchange": "asx", "first_seen": at(10, 0, 10), "last_seen": at(10, 0, 10), "count": 1},
        {"symbol": "XYZ", "exchange": "asx", "first_seen": at(10, 0, 40), "last_seen": at(10, 0, 40), "count": 3},
    ]
    assert symbols(engine, "quotes", exchange="chix").column("symbol").to_pylist() == ["BHP"]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_injection_strings_are_only_values(engine: QueryEngine, hostile: str) -> None:
    assert trades(engine, [hostile], at(9), at(11)).num_rows == 0
    assert trades(engine, "BHP", at(9), at(11), exchange=hostile).num_rows == 0
    assert latest(engine, "quotes", [hostile, "BHP"], n=1).num_rows == 2  # BHP on asx and chix
    assert trades_with_quotes(engine, hostile, at(9), at(11)).num_rows == 0
    assert page(engine, "trades", hostile, at(9), at(11)).rows.num_rows == 0
    assert events(engine, "trades", None, at(9), at(11)).num_rows == len(tape())  # nothing was dropped


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e: events(e, "trades_v2; DROP VIEW x", None, at(9), at(11)), "unknown table"),
        (lambda e: events(e, "reference_data", None, at(9), at(11)), "unknown table"),
        (lambda e: trades(e, "BHP", at(9), at(11), columns=["price; --"]), "unknown columns"),
        (lambda e: trades(e, "BHP", at(11), at(9)), "must be before end"),
        (lambda e: trades(e, "BHP", at(9).replace(tzinfo=None), at(11)), "has no time zone"),
        (lambda e: trades(e, [], at(9), at(11)), "non-empty list"),
        (lambda e: latest(e, "trades", "BHP", n=0), "positive integer"),
        (lambda e: page(e, "trades", "BHP", at(9), at(11), limit=-1), "positive integer"),
    ],
)
def test_bad_arguments_say_what_to_change(
    engine: QueryEngine, call: Callable[[QueryEngine], object], message: str
) -> None:
    with pytest.raises(InvalidQueryError, match=message):
        call(engine)
