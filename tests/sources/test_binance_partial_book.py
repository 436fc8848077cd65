"""Partial book depth streams (`<symbol>@depth5/10/20[@100ms]`) → book_snapshots_v2 rows of snapshot_type partial:
parsed, rejected, streamed live from the emulator's replayed book, and never a book's starting point."""

from __future__ import annotations

import asyncio
import heapq
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_table, in_write_order
from k2.query.book import book_at
from k2.query.engine import QueryEngine
from k2.samples import BINANCE_CAPTURE_2021_04_04 as APRIL
from k2.schema.arrow import records_to_arrow
from k2.schema.codecs import message_id
from k2.schema.fields import BOOK_SNAPSHOTS_V2
from k2.sources.binance.book import DepthDiff, DepthSnapshot
from k2.sources.binance.capture_source import CaptureSource
from k2.sources.binance.emulator import BinanceEmulator
from k2.sources.binance.emulator.faults import FaultPlan, FaultSpec
from k2.sources.binance.emulator.feed import Hub, Outgoing
from k2.sources.binance.live import BinanceLive
from k2.sources.binance.normalize import intended_spec
from k2.sources.binance.partial_book import is_partial_frame, partial_book_records, partial_stream
from tests.sources.book_captures import append_book_events
from tests.sources.book_oracle import read_depth, replay
from tests.sources.test_binance_capture_source import read_all
from tests.sources.test_binance_live_depth import DIRECTORY, START_US, _balanced, _drain, _live, _rows

T0 = 1_617_566_592_000_000  # 2021-04-04T20:03:12Z


def partial(stream: str, last_update_id: Any, bids: Any, asks: Any) -> bytes:
    return json.dumps({"stream": stream, "data": {"lastUpdateId": last_update_id, "bids": bids, "asks": asks}}).encode()


FRAME = partial("btcusdt@depth5@100ms", 160, [["0.0024", "10"], ["0.0023", "1.5"]], [["0.0026", "100"]])


def test_stream_names_give_symbol_and_levels() -> None:
    assert partial_stream("btcusdt@depth20@100ms") == partial_stream("btcusdt@depth20@100ms")
    found = partial_stream("btcusdt@depth20@100ms")
    assert found is not None and (found.symbol, found.levels) == ("BTCUSDT", 20)
    assert [partial_stream(name) for name in ("btcusdt@depth", "btcusdt@depth@100ms", "btcusdt@depth15")] == [None] * 3
    assert is_partial_frame(FRAME) and not is_partial_frame(b'{"stream":"btcusdt@depth@100ms","data":{}}')
    assert intended_spec(FRAME) is BOOK_SNAPSHOTS_V2


def test_a_partial_frame_is_partial_snapshot_rows_timed_by_receipt_with_stable_ids() -> None:
    rows = partial_book_records(FRAME, START_US, origin="ws#1", position=7)
    assert isinstance(rows, list)
    mint = lambda source: message_id("binance", "book_snapshots", "BTCUSDT", source)  # noqa: E731
    assert rows[0] == {
        "message_id": mint("partial5:160:BID:0.00240000"),
        "symbol": "BTCUSDT",
        "exchange": "binance",
        "asset_class": "crypto",
        "timestamp": START_US,
        "side": "BID",
        "price": Decimal("0.0024"),
        "quantity": Decimal("10"),
        "last_update_id": 160,
        "ingestion_timestamp": START_US,
        "vendor_data": {"timestamp_source": "receive_time", "limit": "5", "stream": "btcusdt@depth5@100ms"},
        "snapshot_type": "partial",
    }
    assert [(r["side"], r["price"], r["quantity"]) for r in rows] == [
        ("BID", Decimal("0.0024"), Decimal("10")),
        ("BID", Decimal("0.0023"), Decimal("1.5")),
        ("ASK", Decimal("0.0026"), Decimal("100")),
    ]
    again = partial_book_records(FRAME, START_US + 5, origin="ws#2", position=9)
    assert isinstance(again, list) and [r["message_id"] for r in again] == [r["message_id"] for r in rows]
    deeper = partial_book_records(FRAME.replace(b"depth5", b"depth20"), START_US, origin="ws#1", position=8)
    assert isinstance(deeper, list) and deeper[0]["message_id"] == mint("partial20:160:BID:0.00240000")
    assert mint("snapshot:160:BID:0.00240000") not in {r["message_id"] for r in rows + deeper}


def test_bad_partial_frames_are_one_reject_each_in_the_snapshot_dlq_and_the_run_balances() -> None:
    live = _live({}, channels=("depth5", "aggTrade"))
    six = [[str(100 - i), "1"] for i in range(6)]
    frames = [
        FRAME.replace(b"depth5@100ms", b"depth5"),
        FRAME[: len(FRAME) // 2],  # torn
        partial("ethusdt@depth5", None, [], []),
        partial("ethusdt@depth5", 9, six, []),
        partial("ethusdt@depth5", 9, [["1.0", "-2"]], []),
        partial("ethusdt@depth5", 10, [], []),  # an empty book: no row
    ]
    _drain(live, frames)
    dlq = [(b.spec.name, r.reason, r.position, r.detail) for b in live.emitted for r in b.rejects]  # type: ignore[attr-defined]
    assert dlq[0][:3] == ("book_snapshots_v2", "malformed_json", 2)
    assert dlq[1:] == [
        ("book_snapshots_v2", "missing_field:lastUpdateId", 3, "ws#1 frame 3: field 'lastUpdateId' is missing"),
        ("book_snapshots_v2", "bad_field:bids", 4, "ws#1 frame 4: ethusdt@depth5 carries 6 bids, more than its 5"),
        ("book_snapshots_v2", "bad_quantity", 5, "ws#1 frame 5: field 'bids' is negative: '-2'"),
    ]  # fmt: skip
    stored = _rows(live, "book_snapshots_v2")
    assert [(r["symbol"], r["last_update_id"], r["vendor_data"]["stream"]) for r in stored] == [
        ("BTCUSDT", 160, "btcusdt@depth5")
    ] * 3
    assert (live.stats.book_frames, live.stats.book_rows, live.stats.control_frames) == (1, 3, 1)
    assert live.books is None and live._backfiller.requests == []  # type: ignore[attr-defined]
    assert _balanced(live)


class _Sink:
    def __init__(self) -> None:
        self.got: list[Outgoing] = []

    def deliver(self, item: Outgoing) -> None:
        self.got.append(item)


def test_the_hub_serves_each_subscribed_partial_stream_the_top_of_its_book() -> None:
    hub = Hub(FaultPlan(FaultSpec()))
    bids = [[f"{100 - i}.00000000", f"{i + 1}.00000000"] for i in range(8)]
    hub.add_snapshot("BTCUSDT", {"lastUpdateId": 10, "bids": bids, "asks": [["101.00000000", "1.00000000"]]})
    five, twenty = _Sink(), _Sink()
    hub.subscribe(five, "btcusdt@depth5")
    hub.subscribe(twenty, "btcusdt@depth20@100ms")
    diff = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 11, "u": 12, "b": [["100.00000000", "0"]], "a": []}
    hub.publish("btcusdt@depth@100ms", {**diff, "U": 5, "u": 9})  # before the snapshot's id: not synced, no partial
    assert (five.got, hub.counts["partial"]) == ([], 0)
    hub.publish("btcusdt@depth@100ms", diff)
    (top5,), (top20,) = five.got, twenty.got
    assert (top5.stream, top20.stream, hub.counts["partial"]) == ("btcusdt@depth5", "btcusdt@depth20@100ms", 2)
    assert top5.data == {"lastUpdateId": 12, "bids": bids[1:6], "asks": [["101.00000000", "1.00000000"]]}
    assert top20.data["bids"] == bids[1:] and top20.data["lastUpdateId"] == 12


@pytest.mark.timeout(30)
def test_a_live_partial_stream_from_the_replay_is_the_replayed_books_top_at_each_update() -> None:
    diffs, snapshots = read_depth(APRIL)
    (captured,) = snapshots["BTCUSDT"]
    emulator = BinanceEmulator([APRIL], speed=0)
    emitted: list[Any] = []
    with emulator.run_in_thread() as (ws_url, rest_url):
        live = BinanceLive(["BTCUSDT"], ["depth20@100ms"], ws_url, rest_url, emitted.append, directory=DIRECTORY)

        async def scenario() -> None:
            running = asyncio.ensure_future(live.run())
            assert emulator._loop is not None
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(emulator.wait_replayed(), emulator._loop))
            while live.stats.book_frames < emulator.counts["partial"]:  # the last frames may still be on the way
                await asyncio.sleep(0.01)
            live.stop()
            await running

        asyncio.run(asyncio.wait_for(scenario(), 25))
    rows = [r for b in emitted for r in b.all_records()]
    frames: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        frames.setdefault(row["last_update_id"], []).append(row)
    oracle = {  # the oracle's book after each diff a frame stands for, top 20 a side (it moves one book in place)
        diff.last: (heapq.nlargest(20, bids.items()), heapq.nsmallest(20, asks.items()))
        for diff, bids, asks in replay(captured, diffs["BTCUSDT"])
        if diff.last in frames
    }
    sent = emulator.counts["partial"]
    assert sent == 889 and live.stats.book_frames == sent == len(frames) and not live.stats.rejected
    assert (live.stats.frames, live.stats.control_frames, live.stats.book_rows) == (890, 1, len(rows))  # 1: the ack
    for last_update_id, levels in frames.items():
        bids, asks = oracle[last_update_id]
        assert [(r["price"], r["quantity"]) for r in levels if r["side"] == "BID"] == bids
        assert [(r["price"], r["quantity"]) for r in levels if r["side"] == "ASK"] == asks
    assert {(r["snapshot_type"], r["vendor_data"]["stream"]) for r in rows} == {("partial", "btcusdt@depth20@100ms")}
    assert max(frames) == max(d.last for d in diffs["BTCUSDT"])


def test_book_at_never_starts_from_a_partial_snapshot_while_its_rows_stay_queryable(tmp_path: Path) -> None:
    catalog = open_catalog(Settings(home=tmp_path))
    level = lambda p, q: (Decimal(p), Decimal(q))  # noqa: E731
    full = DepthSnapshot("XYZ", 100, T0, (level("10", "1"), level("9", "2")), (level("11", "3"),))
    update = DepthDiff("XYZ", 101, 101, T0 + 1_000, T0 + 1_000, (level("10", "4"),), ())
    append_book_events(catalog, [full, update])
    top = partial("xyz@depth5", 180, [["10.5", "7"]], [["10.6", "8"]])
    rows = partial_book_records(top, T0 + 2_000, origin="ws#1", position=1)
    assert isinstance(rows, list)
    ensure_table(catalog, BOOK_SNAPSHOTS_V2).append(in_write_order(records_to_arrow(BOOK_SNAPSHOTS_V2, rows)))
    with QueryEngine(catalog) as engine:
        book = book_at(engine, "XYZ", T0 + 5_000, 5, exchange="binance")
        assert (book.snapshot_update_id, book.last_update_id, book.updates_applied) == (100, 101, 1)
        assert book.bids == [level("10", "4"), level("9", "2")] and book.asks == [level("11", "3")]
        stored = engine.sql(
            "SELECT snapshot_type, last_update_id, side, price FROM market_data.book_snapshots_v2"
            " WHERE symbol = ? ORDER BY snapshot_type, side DESC, price DESC",
            ["XYZ"],
        ).to_pylist()
    assert [tuple(r.values()) for r in stored] == [
        ("full", 100, "BID", Decimal("10")),
        ("full", 100, "BID", Decimal("9")),
        ("full", 100, "ASK", Decimal("11")),
        ("partial", 180, "BID", Decimal("10.5")),
        ("partial", 180, "ASK", Decimal("10.6")),
    ]


def test_a_capture_s_partial_frames_load_as_partial_snapshots_timed_by_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "BINANCE.ws.3.0"
    path.write_bytes(
        b"wss://stream.binance.com:9443/stream?streams=btcusdt@depth10 <-> 1700000000.1\n"
        b"1700000000.25: " + partial("btcusdt@depth10", 42, [["100.00", "1.5"]], [["101.00", "2"]]) + b"\n"
        b"1700000000.35: " + partial("btcusdt@depth10", 43, [["100.00", "x"]], []) + b"\n"
        b"1700000000.45: " + partial("btcusdt@depth10", 44, [], []) + b"\n"
    )
    source = CaptureSource([path])
    batches, recon = read_all(source)
    stored = [r for b in batches for r in b.all_records()]
    assert [(r["snapshot_type"], r["last_update_id"], r["side"], r["price"], r["timestamp"]) for r in stored] == [
        ("partial", 42, "BID", Decimal("100"), 1_700_000_000_250_000),
        ("partial", 42, "ASK", Decimal("101"), 1_700_000_000_250_000),
    ]
    ((spec, reject),) = [(b.spec.name, r) for b in batches for r in b.rejects]
    assert (spec, reject.reason, reject.position, reject.detail) == (
        "book_snapshots_v2",
        "bad_quantity",
        3,
        "BINANCE.ws.3.0 line 3: field 'bids': not a decimal number: 'x'",
    )
    assert (recon.read, recon.produced, source.passed) == (3, 2, 2) and recon.source_balanced
