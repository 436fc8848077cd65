"""The live client's order books: depth frames to the recorder at each drain, a REST snapshot for each book that waits,
a resync after lost diffs, rejects to the book tables' DLQs, and a reconciliation that balances."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from typing import Any

from k2.core.batch import SourceBatch
from k2.samples import BINANCE_CAPTURE_2021_04_04 as APRIL
from k2.sources.binance.capture import WsFrame, read_capture
from k2.sources.binance.live import BinanceLive
from k2.sources.binance.symbols import SymbolDirectory, SymbolInfo
from tests.sources.book_oracle import read_depth, replay

DIRECTORY = SymbolDirectory(
    [SymbolInfo("BTCUSDT", "BTC", "USDT", "TRADING"), SymbolInfo("ETHUSDT", "ETH", "USDT", "TRADING")]
)
START_US = 1_617_566_590_000_000


def depth(symbol: str, first: int, last: int, bids: list[list[str]], asks: list[list[str]] | None = None) -> bytes:
    data = {"e": "depthUpdate", "E": START_US + last, "s": symbol, "U": first, "u": last, "b": bids, "a": asks or []}
    return json.dumps({"stream": f"{symbol.lower()}@depth@100ms", "data": data}).encode()


def snapshot(last_update_id: int, bids: list[list[str]], asks: list[list[str]]) -> dict[str, Any]:
    return {"lastUpdateId": last_update_id, "bids": bids, "asks": asks}


class _Rest:
    """GET /api/v3/depth as the venue answers it: the next body queued for the symbol."""

    def __init__(self, answers: dict[str, list[Any]]) -> None:
        self.answers = answers
        self.requests: list[tuple[str, int]] = []

    async def depth_snapshot(self, symbol: str, limit: int) -> Any:
        self.requests.append((symbol, limit))
        return self.answers[symbol].pop(0)

    async def close(self) -> None:
        pass


def _live(answers: dict[str, list[Any]], channels: tuple[str, ...] = ("depth@100ms", "aggTrade")) -> BinanceLive:
    emitted: list[SourceBatch] = []
    live = BinanceLive(
        ["BTCUSDT", "ETHUSDT"],
        list(channels),
        "ws://127.0.0.1:9",
        "http://127.0.0.1:9",
        emitted.append,
        directory=DIRECTORY,
        flush_seconds=3600,  # the test says when to drain
        flush_records=1_000_000,
    )
    live._backfiller = _Rest(answers)  # type: ignore[assignment]
    live.emitted = emitted  # type: ignore[attr-defined]
    return live


def _drain(live: BinanceLive, frames: list[bytes], receive_us: int = START_US, conn_id: int = 1) -> None:
    async def scenario() -> None:
        for n, raw in enumerate(frames):
            await live._on_frame(raw, receive_us + n, conn_id)
        async with live._lock:
            await live._drain()

    asyncio.run(scenario())


def _rows(live: BinanceLive, table: str) -> list[dict[str, Any]]:
    return [r for b in live.emitted if b.spec.name == table for r in b.all_records()]  # type: ignore[attr-defined]


def _balanced(live: BinanceLive) -> bool:
    """The reconciliation `k2 stream binance` makes: rows read == rows sent + rejected + skipped."""
    stats = live.stats
    read = stats.frames - stats.book_frames + stats.book_rows + stats.backfilled
    sent = sum(b.record_count for b in live.emitted if b.spec.name != "stream_gaps")  # type: ignore[attr-defined]
    return read == sent + sum(stats.rejected.values()) + stats.control_frames + stats.duplicates + stats.stale


def _top(live: BinanceLive, symbol: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The best 10 levels a side, as the text Binance sends (8 decimals)."""
    books = live.books
    assert books is not None
    book = books.book(symbol)
    assert book is not None, f"{symbol} is not in sync"
    bids, asks = book.top(10)
    return [(f"{p:f}", f"{q:f}") for p, q in bids], [(f"{p:f}", f"{q:f}") for p, q in asks]


def _text(*levels: tuple[str, str]) -> list[tuple[str, str]]:
    return [(f"{Decimal(p):.8f}", f"{Decimal(q):.8f}") for p, q in levels]


def test_a_book_buffers_its_first_diffs_then_one_snapshot_brings_it_in_sync() -> None:
    rest = {"BTCUSDT": [snapshot(101, [["100.00", "1.0"], ["99.00", "2.0"]], [["101.00", "3.0"]])]}
    live = _live(rest)
    _drain(live, [b'{"result":null,"id":1}', depth("BTCUSDT", 100, 101, [["99.00", "5.0"]])])
    _drain(live, [depth("BTCUSDT", 102, 104, [["100.00", "0"]], [["101.50", "0.5"]])], receive_us=START_US + 500)
    assert live._backfiller.requests == [("BTCUSDT", 1000)]  # type: ignore[attr-defined]
    assert _top(live, "BTCUSDT") == (_text(("99.00", "2.0")), _text(("101.00", "3.0"), ("101.50", "0.5")))
    updates = _rows(live, "book_updates_v2")
    assert [(r["first_update_id"], r["last_update_id"], r["side"], r["price"]) for r in updates] == [
        (100, 101, "BID", Decimal("99.00")),  # stored although the snapshot already held it
        (102, 104, "BID", Decimal("100.00")),
        (102, 104, "ASK", Decimal("101.50")),
    ]
    levels = _rows(live, "book_snapshots_v2")
    assert [(r["side"], r["price"], r["quantity"], r["last_update_id"]) for r in levels] == [
        ("BID", Decimal("100.00"), Decimal("1.0"), 101),
        ("BID", Decimal("99.00"), Decimal("2.0"), 101),
        ("ASK", Decimal("101.00"), Decimal("3.0"), 101),
    ]
    # on the venue's clock: the newest diff event the stream had delivered (E in µs) when the snapshot came
    assert {r["timestamp"] for r in levels} == {START_US + 101}
    assert {r["vendor_data"]["timestamp_source"] for r in levels} == {"stream_event_time"}
    assert {r["vendor_data"]["limit"] for r in levels} == {"1000"}
    assert levels[0]["ingestion_timestamp"] > START_US  # when it was received, on this host's clock
    assert _rows(live, "stream_gaps") == [] and live.stats.gaps == []
    assert (live.stats.book_frames, live.stats.book_rows, live.stats.snapshots) == (2, 6, 1)
    assert _balanced(live)


def test_lost_diffs_are_a_sequence_break_row_and_a_new_snapshot_resyncs_the_book() -> None:
    rest = {
        "BTCUSDT": [
            snapshot(10, [["50.0", "1.0"]], [["51.0", "1.0"]]),
            snapshot(20, [["50.0", "4.0"], ["49.0", "1.0"]], [["51.0", "2.0"]]),
        ]
    }
    live = _live(rest)
    _drain(live, [depth("BTCUSDT", 9, 12, [["50.0", "2.0"]])])
    assert _top(live, "BTCUSDT") == (_text(("50.0", "2.0")), _text(("51.0", "1.0")))
    # 13..15 never arrive: the next diff shows the break; the book waits for a snapshot, fetched after this drain
    _drain(live, [depth("BTCUSDT", 16, 18, [["48.0", "1.0"]]), depth("BTCUSDT", 19, 21, [["49.0", "0"]])])
    (gap,) = _rows(live, "stream_gaps")
    assert (gap["symbol"], gap["channel"], gap["stream"], gap["reason"], gap["status"]) == (
        "BTCUSDT",
        "depth",
        "btcusdt@depth@100ms",
        "sequence_break",
        "unrecoverable",
    )
    assert (gap["first_missing"], gap["last_missing"], gap["missing_count"], gap["filled_count"]) == (13, 15, 3, 0)
    assert [(g.channel, g.first_missing, g.last_missing, g.status) for g in live.stats.gaps] == [
        ("depth", 13, 15, "unrecoverable")
    ]
    assert live._backfiller.requests == [("BTCUSDT", 1000), ("BTCUSDT", 1000)]  # type: ignore[attr-defined]
    # the second snapshot (20) and the buffered diff 19..21 over it; 16..18 is older than the snapshot
    assert _top(live, "BTCUSDT") == (_text(("50.0", "4.0")), _text(("51.0", "2.0")))
    assert live.books is not None and live.books.book("BTCUSDT").last_update_id == 21  # type: ignore[union-attr]
    assert _balanced(live)


def test_bad_depth_frames_and_snapshots_go_to_the_book_tables_dlqs_and_trades_keep_their_frame_number() -> None:
    rest = {"BTCUSDT": [{"lastUpdateId": 5, "bids": "none"}, snapshot(7, [["1.0", "1.0"]], [])]}
    live = _live(rest)
    torn_trade = b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade"'
    frames = [
        depth("BTCUSDT", 6, 6, [["1.0", "2.0"]]),
        b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":9,"u":8,"b":[],"a":[]}}',
        torn_trade,
        depth("BTCUSDT", 7, 7, [], []),  # changes no level: no row
    ]
    _drain(live, frames)
    dlq = [(b.spec.name, r.reason, r.origin, r.position) for b in live.emitted for r in b.rejects]  # type: ignore[attr-defined]
    assert sorted(dlq) == [
        ("book_snapshots_v2", "bad_field:bids", "http://127.0.0.1:9 depth BTCUSDT", 0),
        ("book_updates_v2", "bad_field:U", "ws#1", 2),
        ("trades_v2", "malformed_json", "ws#1", 3),  # its own frame number, though depth frames went elsewhere
    ]
    assert live.books is not None and live.books.book("BTCUSDT") is None  # the bad snapshot put nothing in force
    _drain(live, [depth("BTCUSDT", 8, 8, [["1.0", "3.0"]])])  # the book still waits: a snapshot is asked again
    assert _top(live, "BTCUSDT") == (_text(("1.0", "3.0")), [])
    assert live.stats.control_frames == 1
    assert _balanced(live)


def test_without_a_depth_channel_depth_frames_are_not_data() -> None:
    live = _live({}, channels=("aggTrade",))
    _drain(live, [depth("BTCUSDT", 1, 2, [["1.0", "1.0"]])])
    assert live.books is None and live.emitted == [] and live.stats.control_frames == 1  # type: ignore[attr-defined]


def test_the_capture_streamed_with_its_snapshots_gives_the_oracle_book() -> None:
    diffs, snapshots = read_depth(APRIL)
    answers = {symbol: [entry[0]] for symbol, entry in _captured_bodies().items()}
    live = _live(answers)
    frames = [e.raw for e in read_capture(APRIL, strict=False) if isinstance(e, WsFrame) and b"@depth" in e.raw]
    _drain(live, frames[:5])  # the capture's first diffs: buffered, then the captured snapshots fetched
    _drain(live, frames[5:])
    for symbol in ("BTCUSDT", "ETHUSDT"):
        *_, (_, bids, asks) = replay(snapshots[symbol][0], diffs[symbol])
        expected_bids = [(f"{p:f}", f"{bids[p]:f}") for p in sorted(bids, reverse=True)[:10]]
        expected_asks = [(f"{p:f}", f"{asks[p]:f}") for p in sorted(asks)[:10]]
        assert _top(live, symbol) == (expected_bids, expected_asks)
    assert _top(live, "BTCUSDT")[0][0] == ("58005.11000000", "1.48637600")
    assert live.stats.gaps == []
    assert _balanced(live)


def _captured_bodies() -> dict[str, list[dict[str, Any]]]:
    from k2.sources.binance.capture import RestResponse

    bodies: dict[str, list[dict[str, Any]]] = {}
    for entry in read_capture(APRIL, strict=False):
        if isinstance(entry, RestResponse) and entry.path.endswith("/depth"):
            bodies.setdefault(entry.params["symbol"], []).append(json.loads(entry.body))
    return bodies
