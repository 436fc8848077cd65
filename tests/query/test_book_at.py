"""book_at over a lake holding the real captures' depth, against the independent reconstruction of the book."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.query.book import BRIDGE_MARGIN_US, LADDER_SCHEMA, BookAt, book_at, ladder
from k2.query.engine import QueryEngine
from k2.query.filters import InvalidQueryError
from k2.sources.binance.book import DepthDiff, DepthSnapshot
from k2.sources.binance.book_recorder import BookRecorder, Recorded
from tests.sources.book_captures import CAPTURES, append_book_events, append_book_rows, depth_events, record_capture
from tests.sources.book_oracle import OracleDiff, OracleSnapshot, read_depth, replay

Book = tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]
LOSSY = "lossy"  # an exchange holding NKNUSDT with one diff event lost and a later snapshot
CHECKPOINTED = "checkpointed"  # an exchange holding what the recorder made of the April capture, checkpoints included
CHECKPOINT_US = 10_000_000


@pytest.fixture(scope="module")
def recorded() -> Recorded:
    return record_capture("2021-04-04", BookRecorder(exchange=CHECKPOINTED, checkpoint_us=CHECKPOINT_US))


def _oracle_at(snapshot: OracleSnapshot, diffs: list[OracleDiff], times: list[int]) -> dict[int, Book]:
    """The oracle's book at each time: the snapshot, then the diffs after it whose event time is at or before."""
    books = {}
    for at in sorted(times):
        bids, asks = dict(snapshot.bids), dict(snapshot.asks)
        for _diff, b, a in replay(snapshot, [d for d in diffs if d.event_ms * 1000 <= at]):
            bids, asks = b, a
        books[at] = (dict(bids), dict(asks))
    return books


def _top(book: Book, depth: int) -> tuple[list, list]:
    bids, asks = book
    return sorted(bids.items(), reverse=True)[:depth], sorted(asks.items())[:depth]


def _lost_index(diffs: list[OracleDiff], snapshot: OracleSnapshot) -> int:
    live = [i for i, d in enumerate(diffs) if d.last > snapshot.last_update_id]
    return live[len(live) // 2]


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory, recorded: Recorded) -> Iterator[QueryEngine]:
    catalog = open_catalog(Settings(home=Path(tmp_path_factory.mktemp("book-lake"))))
    append_book_rows(catalog, recorded.updates, recorded.snapshots)
    btc = [e for e in depth_events("2021-04-04") if e.symbol == "BTCUSDT"]
    append_book_events(catalog, btc + list(depth_events("2021-10-12")))
    # LOSSY: NKNUSDT without one diff event, and a snapshot taken five events later (the oracle's book then).
    diffs, oracle_snapshots = read_depth(*CAPTURES["2021-10-12"])
    (snapshot,) = oracle_snapshots["NKNUSDT"]
    nkn = diffs["NKNUSDT"]
    lost = _lost_index(nkn, snapshot)
    later = nkn[lost + 5]
    bids, asks = _oracle_at(snapshot, nkn, [later.event_ms * 1000])[later.event_ms * 1000]
    resync = DepthSnapshot("NKNUSDT", later.last, later.event_ms * 1000 + 1, tuple(bids.items()), tuple(asks.items()))
    lossy = [
        e for e in depth_events("2021-10-12")
        if e.symbol == "NKNUSDT" and not (isinstance(e, DepthDiff) and e.last_update_id == nkn[lost].last)
    ]  # fmt: skip
    append_book_events(catalog, [*lossy, resync], exchange=LOSSY)
    with QueryEngine(catalog) as opened:
        yield opened


def test_btcusdt_at_chosen_moments_is_the_oracles_book_to_depth(engine: QueryEngine) -> None:
    diffs, snapshots = read_depth(*CAPTURES["2021-04-04"])
    (snapshot,) = snapshots["BTCUSDT"]
    live = [d for d in diffs["BTCUSDT"] if d.event_ms * 1000 >= snapshot.received_us]
    times = [
        snapshot.received_us,  # the snapshot and the diffs before it received with an earlier event time
        live[0].event_ms * 1000,
        live[100].event_ms * 1000 + 50_000,  # between two events: the book after the earlier one
        live[len(live) // 2].event_ms * 1000,
        live[-1].event_ms * 1000 - 1,  # one microsecond before the last event
    ]
    expected = _oracle_at(snapshot, diffs["BTCUSDT"], times)
    for at in times:
        book = book_at(engine, "BTCUSDT", at, 10, exchange="binance")
        assert (book.bids, book.asks) == _top(expected[at], 10), at
        assert book.snapshot_update_id == 9893033066 and book.snapshot_us == snapshot.received_us
        assert book.exact
    first = book_at(engine, "BTCUSDT", snapshot.received_us, 1, exchange="binance")
    # at the snapshot's receipt the bridging event (U=9893033062 u=9893033067, E earlier) is already in the book
    assert (first.updates_applied, first.last_update_id) == (1, 9893033067)


def test_btcusdt_after_the_last_event_is_the_whole_oracle_book_and_the_recorded_top(engine: QueryEngine) -> None:
    diffs, snapshots = read_depth(*CAPTURES["2021-04-04"])
    (snapshot,) = snapshots["BTCUSDT"]
    end = diffs["BTCUSDT"][-1].event_ms * 1000
    book = book_at(engine, "BTCUSDT", end, 100_000, exchange="binance")
    assert (book.bids, book.asks) == _top(_oracle_at(snapshot, diffs["BTCUSDT"], [end])[end], 100_000)
    assert (len(book.bids), len(book.asks)) == (1076, 1060)
    assert book.bids[0] == (Decimal("58005.11000000"), Decimal("1.48637600"))
    assert book.asks[0] == (Decimal("58005.12000000"), Decimal("0.11025200"))
    assert (book.last_update_id, book.updates_applied, book.gap) == (9893046554, 889, None)


@pytest.mark.parametrize("symbol", ["NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"])
def test_every_2021_10_12_symbol_at_its_last_event_is_the_whole_oracle_book(engine: QueryEngine, symbol: str) -> None:
    diffs, snapshots = read_depth(*CAPTURES["2021-10-12"])
    (snapshot,) = snapshots[symbol]
    end = max(diffs[symbol][-1].event_ms * 1000, snapshot.received_us)
    book = book_at(engine, symbol, end, 100_000, exchange="binance")
    assert (book.bids, book.asks) == _top(_oracle_at(snapshot, diffs[symbol], [end])[end], 100_000)
    assert book.exact and book.last_update_id == diffs[symbol][-1].last


def test_a_lost_event_is_reported_until_a_later_snapshot_makes_the_book_exact_again(
    engine: QueryEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    diffs, snapshots = read_depth(*CAPTURES["2021-10-12"])
    (snapshot,) = snapshots["NKNUSDT"]
    nkn = diffs["NKNUSDT"]
    lost = _lost_index(nkn, snapshot)
    during = nkn[lost + 2].event_ms * 1000
    holed = book_at(engine, "NKNUSDT", during, 5, exchange=LOSSY)
    assert holed.gap == (nkn[lost].first, nkn[lost].last) and not holed.exact
    assert holed.describe().endswith(
        f"; NOT EXACT: updates {nkn[lost].first}..{nkn[lost].last} are missing after the snapshot, so levels they"
        " changed may be wrong until the next snapshot"
    )
    assert holed.snapshot_update_id == snapshot.last_update_id
    after = nkn[-1].event_ms * 1000
    healed = book_at(engine, "NKNUSDT", after, 100_000, exchange=LOSSY)
    assert healed.exact and healed.snapshot_update_id == nkn[lost + 5].last
    assert healed.snapshot_us == nkn[lost + 5].event_ms * 1000 + 1
    assert (healed.bids, healed.asks) == _top(_oracle_at(snapshot, nkn, [after])[after], 100_000)
    assert healed.updates_applied == len(nkn) - lost - 6
    queries: list[str] = []
    run = engine.sql
    monkeypatch.setattr(engine, "sql", lambda query, params=None: queries.append(query) or run(query, params))
    assert book_at(engine, "NKNUSDT", during, 5, exchange=LOSSY) == holed  # from the held day: the same hole
    assert queries == []


def test_before_the_first_snapshot_the_book_is_unknown_and_bad_arguments_say_so(engine: QueryEngine) -> None:
    with pytest.raises(
        InvalidQueryError, match=r"no order-book snapshot of BTCUSDT on binance at or before 2021-04-04T20:03:12\+00:00"
    ):
        book_at(engine, "BTCUSDT", 1_617_566_592_000_000, 5, exchange="binance")
    with pytest.raises(InvalidQueryError, match="no order-book snapshot of BTCUSDT on kraken"):
        book_at(engine, "BTCUSDT", 1_700_000_000_000_000, 5, exchange="kraken")
    with pytest.raises(InvalidQueryError, match="depth must be a positive integer, got 0"):
        book_at(engine, "BTCUSDT", 1_700_000_000_000_000, 0, exchange="binance")
    with pytest.raises(InvalidQueryError, match="at_us must be integer microseconds UTC"):
        book_at(engine, "BTCUSDT", 1.7e15, 5, exchange="binance")  # type: ignore[arg-type]
    assert isinstance(book_at(engine, "BTCUSDT", 1_700_000_000_000_000, 1, exchange="binance"), BookAt)


def test_the_ladder_puts_the_sides_side_by_side_and_nulls_past_the_shorter() -> None:
    one, two = (Decimal("1.5"), Decimal("2")), (Decimal("1.4"), Decimal("0.00000001"))
    book = BookAt("X", "binance", 5, 1, 2, 3, 0, [one, two], [(Decimal("1.6"), Decimal("7"))], None)
    table = ladder(book)
    assert table.schema == LADDER_SCHEMA
    assert table.to_pylist() == [
        {"level": 1, "bid_quantity": Decimal("2"), "bid_price": Decimal("1.5"),
         "ask_price": Decimal("1.6"), "ask_quantity": Decimal("7")},
        {"level": 2, "bid_quantity": Decimal("1E-8"), "bid_price": Decimal("1.4"),
         "ask_price": None, "ask_quantity": None},
    ]  # fmt: skip
    assert ladder(BookAt("X", "binance", 5, 1, 2, 3, 0, [], [], None)).num_rows == 0


MINUTE = 60_000_000
DAY = 1_440 * MINUTE
T0 = 1_617_566_592_000_000  # 2021-04-04T20:03:12Z


def _level(price: str, quantity: str) -> tuple[Decimal, Decimal]:
    return Decimal(price), Decimal(quantity)


def test_an_old_snapshot_is_found_and_a_bridging_update_older_than_the_margin_is_kept(tmp_path: Path) -> None:
    catalog = open_catalog(Settings(home=tmp_path))
    snapshot = DepthSnapshot("XYZ", 100, T0, (_level("10", "1"), _level("9", "2")), (_level("11", "3"),))
    # The update that bridges the snapshot (U=99 <= 101 <= u=102) carries a venue time 20 minutes before the
    # snapshot's receipt (a skewed clock): past BRIDGE_MARGIN_US, so the first read misses it and must read again.
    bridge = DepthDiff("XYZ", 99, 102, T0 - 20 * MINUTE, T0, (_level("10", "5"),), (_level("11", "0"),))
    later = DepthDiff("XYZ", 103, 104, T0 + MINUTE, T0 + MINUTE, (), (_level("12", "4"),))
    append_book_events(catalog, [snapshot, bridge, later])
    assert 20 * MINUTE > BRIDGE_MARGIN_US
    with QueryEngine(catalog) as reader:
        for at in (T0 + 2 * MINUTE, T0 + 3 * DAY):  # the snapshot: in the first window, then in the 30-day one
            book = book_at(reader, "XYZ", at, 5, exchange="binance")
            assert book.exact and (book.updates_applied, book.last_update_id) == (2, 104)
            assert book.bids == [_level("10", "5"), _level("9", "2")] and book.asks == [_level("12", "4")]
        assert book_at(reader, "XYZ", T0 + 40 * DAY, 1, exchange="binance").snapshot_update_id == 100  # whole table
        assert book_at(reader, "XYZ", T0, 5, exchange="binance").bids == [_level("10", "5"), _level("9", "2")]


def test_after_each_checkpoint_the_book_starts_from_it_and_a_held_day_answers_with_no_query(
    engine: QueryEngine, recorded: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    diffs, snapshots = read_depth(*CAPTURES["2021-04-04"])
    (snapshot,) = snapshots["BTCUSDT"]
    checkpoints = sorted(
        {(r["timestamp"], r["last_update_id"]) for r in recorded.snapshots
         if r["symbol"] == "BTCUSDT" and r["snapshot_type"] == "checkpoint"}
    )  # fmt: skip
    assert len(checkpoints) == 9
    checkpoints = checkpoints[::3]
    times = [at + offset for at, _ in checkpoints for offset in (0, 150_000, CHECKPOINT_US - 1)]
    expected = _oracle_at(snapshot, diffs["BTCUSDT"], times)
    queries: list[str] = []
    run = engine.sql
    monkeypatch.setattr(engine, "sql", lambda query, params=None: queries.append(query) or run(query, params))
    book_at(engine, "BTCUSDT", times[0], 10, exchange=CHECKPOINTED)  # the first ask of the day: queries only
    # at a checkpoint's own instant no update follows it yet: the chain is read again without the margin
    assert len(queries) == 4
    for i, at in enumerate(times):
        queries.clear()
        book = book_at(engine, "BTCUSDT", at, 5_000, exchange=CHECKPOINTED)
        taken, checkpoint = checkpoints[i // 3]
        # the second ask loads the day (3 queries: updates, snapshots, whether an older update could bridge one);
        # then the held day answers alone, at a checkpoint's own instant too
        assert len(queries) == (3 if i == 0 else 0), (i, at)
        assert (book.snapshot_update_id, book.snapshot_us, book.exact) == (checkpoint, taken, True)
        assert (book.bids, book.asks) == _top(expected[at], 5_000), at
        assert book == book_at(engine, "BTCUSDT", at, 5_000, exchange=CHECKPOINTED, day_cache=False)
