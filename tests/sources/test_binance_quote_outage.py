"""Quotes a lost connection cost: bookTicker cannot be backfilled, so the outage is a stream_gaps row whose bounds
are the stream's last quote before the drop and its first quote after; checked against the recorded capture."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from k2.core.batch import SourceBatch
from k2.samples import BINANCE_CAPTURE_2021_10_12 as OCTOBER
from k2.samples import BINANCE_EXCHANGE_INFO
from k2.schema.fields import STREAM_GAPS
from k2.sources.binance.capture_source import CaptureSource
from k2.sources.binance.emulator import BinanceEmulator
from k2.sources.binance.live import BinanceLive
from k2.sources.binance.symbols import SymbolDirectory

# The capture's NKNUSDT bookTickers (74): (update id, receipt time in µs), in order.
RECORDED = [
    (r["source_sequence"], r["timestamp"])
    for b in CaptureSource([OCTOBER]).batches()
    for r in b.all_records()
    if r["symbol"] == "NKNUSDT" and "quote_id" in r
]
DROP_AFTER = 20  # quotes received before the connection is dropped
OUTAGE = 5  # quotes the emulator publishes before the client may notice the drop: lost for good


class _DroppedOnce(BinanceLive):
    """Drops its connection (the emulator's disconnect fault) after DROP_AFTER quotes and notices only once the
    emulator has published OUTAGE more; stops after the capture's last quote."""

    def __init__(self, emulator: BinanceEmulator, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.emulator = emulator
        self.quotes = 0

    async def _on_frame(self, raw: bytes, receive_us: int, conn_id: int) -> None:
        await super()._on_frame(raw, receive_us, conn_id)
        if b"@bookTicker" not in raw:
            return
        self.quotes += 1
        if self.quotes == DROP_AFTER:
            self.emulator.inject("disconnect")
            assert self.emulator.hub is not None
            published = self.emulator.hub.book_tickers
            while published["NKNUSDT"]["u"] < RECORDED[DROP_AFTER + OUTAGE - 1][0]:
                await asyncio.sleep(0.005)  # the client reads on (and finds the drop) when this returns
        if f'"u":{RECORDED[-1][0]},'.encode() in raw:
            self.stop()


@pytest.mark.timeout(30)
def test_a_dropped_connection_leaves_a_quote_gap_row_with_exact_bounds() -> None:
    emulator = BinanceEmulator([OCTOBER], speed=16, clock="recorded")
    emitted: list[SourceBatch] = []
    with emulator.run_in_thread() as endpoints:
        live = _DroppedOnce(
            emulator,
            ["NKNUSDT"],
            ["bookTicker"],
            endpoints.ws_url,
            endpoints.rest_url,
            emitted.append,
            directory=SymbolDirectory.from_file(BINANCE_EXCHANGE_INFO),
        )
        asyncio.run(asyncio.wait_for(live.run(), 25))
    assert live.client.stats.disconnects == 1
    quotes = [
        (r["source_sequence"], r["timestamp"]) for b in emitted if b.spec.name == "quotes_v2" for r in b.all_records()
    ]
    (gap,) = [r for b in emitted if b.spec is STREAM_GAPS for r in b.records]
    lost = [q for q in RECORDED if q not in quotes]
    assert len(lost) >= OUTAGE and len(quotes) + len(lost) == len(RECORDED) == 74
    # the bounds: the last quote received before the hole and the first after it, as recorded (the replay keeps
    # the recorded clock)
    (hole,) = [i for i in range(len(quotes) - 1) if RECORDED.index(quotes[i + 1]) != RECORDED.index(quotes[i]) + 1]
    before, after = quotes[hole], quotes[hole + 1]
    assert (gap["missing_from"], gap["missing_to"]) == (before[1], after[1])
    assert (gap["first_missing"], gap["last_missing"]) == (before[0] + 1, after[0] - 1)
    assert gap["missing_count"] == after[0] - before[0] - 1
    assert all(before[1] < t < after[1] and before[0] < u < after[0] for u, t in lost)
    assert (gap["symbol"], gap["channel"], gap["stream"], gap["reason"]) == (
        "NKNUSDT", "bookTicker", "nknusdt@bookTicker", "disconnect"
    )  # fmt: skip
    assert (gap["status"], gap["filled_count"]) == ("unrecoverable", 0)
    assert [(g.missing_from, g.missing_to) for g in live.stats.gaps] == [(before[1], after[1])]


def _book_ticker(symbol: str, update_id: int) -> bytes:
    return (
        f'{{"stream":"{symbol.lower()}@bookTicker","data":{{"u":{update_id},"s":"{symbol}","b":"0.03100000",'
        f'"B":"2.50000000","a":"0.03110000","A":"1.25000000"}}}}'
    ).encode()


def _outages(events: list[tuple[str, int, int, int] | str]) -> list[dict[str, Any]]:
    """Frames (symbol, update id, receive µs, connection) and "lost ethbtc" / "lost btcusdt" connection losses, in
    that order, through the live path with one drain at the end; then the stream stops."""
    emitted: list[SourceBatch] = []
    live = BinanceLive(
        ["BTCUSDT", "ETHBTC"], ["bookTicker"], "ws://127.0.0.1:9", "http://127.0.0.1:9", emitted.append,
        directory=SymbolDirectory.from_file(BINANCE_EXCHANGE_INFO), flush_seconds=3600, flush_records=1_000_000,
    )  # fmt: skip

    async def scenario() -> None:
        for event in events:
            if isinstance(event, str):
                live._on_disconnect([f"{event.split()[1]}@bookTicker"])
            else:
                symbol, update_id, receive_us, conn_id = event
                await live._on_frame(_book_ticker(symbol, update_id), receive_us, conn_id)
        async with live._lock:
            await live._drain()
        live._end_open_outages()
        live.flush()

    asyncio.run(scenario())
    rows = [r for b in emitted if b.spec is STREAM_GAPS for r in b.records]
    return [{k: r[k] for k in ("symbol", "first_missing", "last_missing", "missing_from", "missing_to")} for r in rows]


def test_outages_are_bounded_by_each_symbols_quotes_and_those_that_missed_nothing_leave_no_row() -> None:
    rows = _outages(
        [
            ("ETHBTC", 100, 1_000, 1),
            ("BTCUSDT", 500, 1_001, 1),
            ("ETHBTC", 104, 1_002, 1),
            "lost ethbtc",  # the same connection id comes back: the run is still cut at the loss
            ("ETHBTC", 110, 2_000, 1),
            ("ETHBTC", 111, 2_001, 1),
            "lost btcusdt",
            ("BTCUSDT", 501, 3_000, 2),  # the next update id: nothing was missed, no row
            "lost ethbtc",  # and the stream stops before ETHBTC quotes again
        ]
    )
    assert rows == [
        {"symbol": "ETHBTC", "first_missing": 105, "last_missing": 109, "missing_from": 1_002, "missing_to": 2_000},
        {"symbol": "ETHBTC", "first_missing": 112, "last_missing": 111, "missing_from": 2_001, "missing_to": None},
    ]
