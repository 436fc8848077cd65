"""A small hand-made order-book lake: symbol XYZ on binance with a snapshot, updates, a lost event, a second snapshot,
and seven trades around them; BEFORE_TRADES is the book that stood strictly before each trade, worked out by hand."""

from __future__ import annotations

from decimal import Decimal

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from k2.schema.codecs import datetime_from_micros
from k2.sources.binance.book import DepthDiff, DepthSnapshot
from tests.query.records import append_trades, trade
from tests.sources.book_captures import append_book_events

SECOND = 1_000_000


# A hand-made book: snapshot 100, two events, one lost (104-105), one after the hole, a second snapshot, one more.
T0 = 1_709_546_400 * SECOND  # 2024-03-04T10:00:00Z


def _levels(*pairs: tuple[str, str]) -> tuple[tuple[Decimal, Decimal], ...]:
    return tuple((Decimal(price), Decimal(quantity)) for price, quantity in pairs)


def build_hand_book(settings: Settings) -> Settings:
    """The hand-made book and trades appended to the lake `settings` names; `settings` again."""
    catalog = open_catalog(settings)
    tables = ensure_tables(catalog)
    append_book_events(
        catalog,
        [
            DepthSnapshot("XYZ", 100, T0, _levels(("10", "1"), ("9", "2")), _levels(("11", "3"), ("12", "4"))),
            DepthDiff("XYZ", 101, 102, T0 + SECOND, T0 + SECOND, _levels(("10", "5")), _levels(("11", "0"))),
            DepthDiff("XYZ", 103, 103, T0 + 2 * SECOND, T0 + 2 * SECOND, (), _levels(("11.5", "1"))),
            # 104-105 (at T0 + 3 s) never arrived
            DepthDiff("XYZ", 106, 106, T0 + 4 * SECOND, T0 + 4 * SECOND, _levels(("9.5", "7")), ()),
            DepthSnapshot("XYZ", 110, T0 + 5 * SECOND, _levels(("10", "6")), _levels(("11.5", "2"))),
            DepthDiff("XYZ", 111, 111, T0 + 6 * SECOND, T0 + 6 * SECOND, (), _levels(("11.5", "0"), ("12", "9"))),
        ],
    )
    moments = [-SECOND, SECOND, SECOND + SECOND // 2, 4 * SECOND, 4 * SECOND + 200_000, 5 * SECOND + SECOND // 2]
    append_trades(
        tables["trades_v2"],
        [
            trade(datetime_from_micros(T0 + moment), "10.5", "1", n, symbol="XYZ", exchange="binance")
            for n, moment in enumerate([*moments, 7 * SECOND], start=1)
        ],
    )
    return settings


D = Decimal
# The book (best 2 levels per side) that stood strictly before each trade, worked out by hand from the events above.
BEFORE_TRADES = [
    None,  # before the first snapshot: unknown
    ([(D(10), D(1)), (D(9), D(2))], [(D(11), D(3)), (D(12), D(4))], 100, True),  # an update at the trade's instant
    ([(D(10), D(5)), (D(9), D(2))], [(D(12), D(4))], 102, True),
    ([(D(10), D(5)), (D(9), D(2))], [(D("11.5"), D(1)), (D(12), D(4))], 103, True),  # the hole is not seen yet
    ([(D(10), D(5)), (D("9.5"), D(7))], [(D("11.5"), D(1)), (D(12), D(4))], 106, False),  # 104-105 missing
    ([(D(10), D(6))], [(D("11.5"), D(2))], 110, True),  # the second snapshot starts the book again
    ([(D(10), D(6))], [(D(12), D(9))], 111, True),
]
