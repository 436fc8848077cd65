"""The live path drains frames in batches: a batch whose ids continue every stream goes out as Arrow tables, and a
batch holding a duplicate or a gap gives exactly what reading frame by frame gave (records, gap rows, rejects with
their connection and frame number, counters).

The reference is the frame-by-frame reader the live path used to be (`_PerFrameLive`: `normalize_frame` then
`_accept` for each frame as it arrives), run on the same frames with the same REST history.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any

import pyarrow as pa
import pytest

from k2.core.batch import Reject, SourceBatch
from k2.sources.binance.gaps import SequenceTracker
from k2.sources.binance.live import BinanceLive
from k2.sources.binance.normalize import normalize_frame
from k2.sources.binance.normalize_columnar import MIN_COLUMNAR_ROWS
from k2.sources.binance.symbols import SymbolDirectory, SymbolInfo

DIRECTORY = SymbolDirectory(
    [SymbolInfo("BTCUSDT", "BTC", "USDT", "TRADING"), SymbolInfo("ETHBTC", "ETH", "BTC", "TRADING")]
)
START_US = 1_617_566_590_000_000  # 2021-04-04T20:03:10Z, in µs as the live path asks Binance for
Frame = tuple[bytes, int, int]  # raw, receive µs, connection id


def agg_trade(symbol: str, agg_id: int, price: str = "58000.12000000") -> bytes:
    at = START_US + agg_id
    return (
        f'{{"stream":"{symbol.lower()}@aggTrade","data":{{"e":"aggTrade","E":{at + 5},"s":"{symbol}","a":{agg_id},'
        f'"p":"{price}","q":"0.01500000","f":{agg_id * 2},"l":{agg_id * 2 + 1},"T":{at},"m":true,"M":true}}}}'
    ).encode()


def book_ticker(symbol: str, update_id: int) -> bytes:
    return (
        f'{{"stream":"{symbol.lower()}@bookTicker","data":{{"u":{update_id},"s":"{symbol}","b":"0.03100000",'
        f'"B":"2.50000000","a":"0.03110000","A":"1.25000000"}}}}'
    ).encode()


SUBSCRIBED = b'{"result":null,"id":1}'


class _History:
    """The exchange's REST side: every aggTrade id ever traded, as /api/v3/aggTrades answers (times in ms)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int, int]] = []

    async def fetch(self, symbol: str, channel: str, first: int, last: int) -> list[dict[str, Any]]:
        self.requests.append((symbol, channel, first, last))
        return [
            {
                "a": i,
                "p": "58000.12000000",
                "q": "0.01500000",
                "f": i * 2,
                "l": i * 2 + 1,
                "T": (START_US + i) // 1000,
                "m": True,
                "M": True,
            }
            for i in range(first, last + 1)
        ]

    async def close(self) -> None:
        pass


class _PerFrameLive(BinanceLive):
    """The live path as it was: every frame normalized and accepted the moment it arrives."""

    async def _on_frame(self, raw: bytes, receive_us: int, conn_id: int) -> None:
        async with self._lock:
            self.stats.frames += 1
            result = normalize_frame(
                raw, DIRECTORY, receive_us, self._time_unit, origin=f"ws#{conn_id}", position=self.stats.frames
            )
            if result is None:
                self.stats.control_frames += 1
            elif isinstance(result, Reject):
                self._reject(result)
            else:
                await self._accept(result)


def _live(cls: type[BinanceLive], resume_from: dict[tuple[str, str], int] | None = None) -> BinanceLive:
    emitted: list[SourceBatch] = []
    live = cls(
        ["BTCUSDT", "ETHBTC"],
        ["aggTrade", "bookTicker"],
        "ws://127.0.0.1:9",
        "http://127.0.0.1:9",
        emitted.append,
        directory=DIRECTORY,
        resume_from=resume_from,
        flush_seconds=3600,  # the test says when to drain
        flush_records=1_000_000,
    )
    live._backfiller = _History()  # type: ignore[assignment]
    live.emitted = emitted  # type: ignore[attr-defined]
    return live


def _read(live: BinanceLive, frames: Iterable[Frame]) -> list[SourceBatch]:
    """Hand every frame to the live path as the stream client does, then drain what is held."""

    async def scenario() -> None:
        for raw, receive_us, conn_id in frames:
            await live._on_frame(raw, receive_us, conn_id)
        async with live._lock:
            await live._drain()

    asyncio.run(scenario())
    return live.emitted  # type: ignore[attr-defined]


def _outcome(live: BinanceLive) -> dict[str, Any]:
    """Everything a run hands on, minus the wall-clock times of REST fills and gap findings."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    rejects = []
    for batch in live.emitted:  # type: ignore[attr-defined]
        for record in batch.all_records():
            if record.get("vendor_data", {}).get("backfilled") == "rest":
                vendor = {**record["vendor_data"], "receive_time_us": None}
                record = {**record, "ingestion_timestamp": None, "vendor_data": vendor}
            by_kind.setdefault(batch.spec.name, []).append(
                {**record, "timestamp": None} if "status" in record else record
            )
        rejects += [(r.reason, r.raw, r.origin, r.position) for r in batch.rejects]
    stats = asdict(live.stats)
    stats["gaps"] = [{**gap, "detected_us": None} for gap in stats["gaps"]]
    read = sum(batch.rows_read for batch in live.emitted)  # type: ignore[attr-defined]
    rejects.sort(key=lambda r: (r[2], r[3]))  # by connection and frame: DLQ topics of two data types have no order
    return {"records": by_kind, "rejects": rejects, "stats": stats, "rows_read": read, "last": live._tracker.last}


def _same_as_frame_by_frame(frames: list[Frame], resume_from: dict[tuple[str, str], int] | None = None) -> BinanceLive:
    batched, per_frame = _live(BinanceLive, resume_from), _live(_PerFrameLive, resume_from)
    _read(batched, frames)
    _read(per_frame, frames)
    assert _outcome(batched) == _outcome(per_frame)
    stats = batched.stats
    read = stats.frames + stats.backfilled  # the reconciliation's rows read
    dropped = stats.duplicates + stats.stale
    assert read == stats.records + sum(stats.rejected.values()) + dropped + stats.control_frames
    return batched


def _stream(ids: Iterable[int], conn_id: int = 1) -> list[Frame]:
    """aggTrades of BTCUSDT with these ids, each followed by an ETHBTC bookTicker update."""
    frames: list[Frame] = []
    for n, agg_id in enumerate(ids):
        frames.append((agg_trade("BTCUSDT", agg_id), START_US + 2 * n, conn_id))
        frames.append((book_ticker("ETHBTC", 9_000 + 3 * n), START_US + 2 * n + 1, conn_id))
    return frames


def test_a_batch_that_continues_every_stream_goes_out_as_tables() -> None:
    frames = [(SUBSCRIBED, START_US, 1), *_stream(range(1_000, 1_100))]
    live = _same_as_frame_by_frame(frames)
    assert [(b.spec.name, b.records, b.record_count, b.rows_read) for b in live.emitted] == [  # type: ignore[attr-defined]
        ("trades_v2", [], 100, 100),
        ("quotes_v2", [], 100, 100),
    ]
    assert all(isinstance(b.table, pa.Table) for b in live.emitted)  # type: ignore[attr-defined]
    assert live._tracker.last == {("BTCUSDT", "aggTrade"): 1_099, ("ETHBTC", "bookTicker"): 9_000 + 3 * 99}
    assert live.stats.control_frames == 1 and not live.stats.gaps
    # platform_sequence: each record's frame number in the stream (the subscription ack is frame 1)
    tables = {b.spec.name: b.table for b in live.emitted}  # type: ignore[attr-defined]
    assert tables["trades_v2"]["platform_sequence"].to_pylist() == list(range(2, 202, 2))
    assert tables["quotes_v2"]["platform_sequence"].to_pylist() == list(range(3, 203, 2))


def test_a_batch_resuming_right_after_the_lake_goes_out_as_tables() -> None:
    live = _same_as_frame_by_frame(_stream(range(1_000, 1_100)), resume_from={("BTCUSDT", "aggTrade"): 999})
    assert all(b.table is not None for b in live.emitted)  # type: ignore[attr-defined]


def test_a_repeated_frame_mid_batch_is_dropped_as_frame_by_frame() -> None:
    frames = _stream(range(1_000, 1_100))
    frames.insert(120, frames[60])  # aggTrade 1030 again, after 1059
    frames.insert(150, frames[151])  # a bookTicker update twice in a row
    live = _same_as_frame_by_frame(frames)
    assert live.stats.duplicates == 2
    assert all(b.table is None for b in live.emitted)  # type: ignore[attr-defined]  # taken apart, id by id
    trades = [r["source_sequence"] for b in live.emitted for r in b.all_records() if b.spec.name == "trades_v2"]  # type: ignore[attr-defined]
    assert trades == list(range(1_000, 1_100))


def test_an_older_book_ticker_never_seen_is_stale_and_one_seen_again_a_duplicate() -> None:
    frames = _stream(range(1_000, 1_100))  # ETHBTC bookTicker update ids 9000, 9003, ... 9297
    frames.insert(81, (book_ticker("ETHBTC", 9_100), START_US + 79, 1))  # after 9117: older, never sent before
    frames.insert(101, (book_ticker("ETHBTC", 9_060), START_US + 99, 1))  # after 9147: 9060 went through before
    live = _same_as_frame_by_frame(frames)
    assert (live.stats.stale, live.stats.duplicates) == (1, 1)
    quotes = [r["source_sequence"] for b in live.emitted for r in b.all_records() if b.spec.name == "quotes_v2"]  # type: ignore[attr-defined]
    assert quotes == list(range(9_000, 9_300, 3))  # in update-id order; the superseded quote is not the book top


def test_frames_at_or_below_the_resume_point_are_duplicates() -> None:
    live = _same_as_frame_by_frame(_stream(range(1_000, 1_100)), resume_from={("BTCUSDT", "aggTrade"): 1_020})
    assert live.stats.duplicates == 21


def test_a_gap_mid_batch_is_filled_from_rest_before_the_id_that_revealed_it() -> None:
    frames = [f for f in _stream(range(1_000, 1_100)) if f[0] not in {agg_trade("BTCUSDT", i) for i in (1_040, 1_041)}]
    live = _same_as_frame_by_frame(frames)
    trades = [r for b in live.emitted for r in b.all_records() if b.spec.name == "trades_v2"]  # type: ignore[attr-defined]
    assert [r["source_sequence"] for r in trades] == list(range(1_000, 1_100))
    assert [r["source_sequence"] for r in trades if r["vendor_data"].get("backfilled") == "rest"] == [1_040, 1_041]
    # streamed trades keep their frame's number; REST fills came through no frame (nor carry an event time)
    sequences = {r["source_sequence"]: r["platform_sequence"] for r in trades}
    assert (sequences[1_039], sequences[1_040], sequences[1_041], sequences[1_042]) == (79, None, None, 83)
    assert [r for r in trades if r["vendor_data"].get("backfilled") and "event_time_us" in r["vendor_data"]] == []
    gaps = [(g.first_missing, g.last_missing, g.filled, g.status) for g in live.stats.gaps]
    assert gaps == [(1_040, 1_041, 2, "filled")]
    gap_rows = [r for b in live.emitted for r in b.records if b.spec.name == "stream_gaps"]  # type: ignore[attr-defined]
    assert [(r["first_missing"], r["status"]) for r in gap_rows] == [(1_040, "filled")]


def test_a_gap_between_batches_is_filled_too() -> None:
    live = _live(BinanceLive)
    _read(live, _stream(range(1_000, 1_100)))
    _read(live, _stream(range(1_105, 1_200)))
    assert live._backfiller.requests == [("BTCUSDT", "aggTrade", 1_100, 1_104)]  # type: ignore[attr-defined]
    trades = [r["source_sequence"] for b in live.emitted for r in b.all_records() if b.spec.name == "trades_v2"]  # type: ignore[attr-defined]
    assert trades == list(range(1_000, 1_200))


def test_rejects_keep_their_connection_and_frame_number() -> None:
    first = _stream(range(1_000, 1_080), conn_id=1)
    second = _stream(range(1_060, 1_150), conn_id=2)  # a replacement connection overlapping the first
    first.insert(30, (b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade"', START_US, 1))  # cut short
    second.insert(50, (agg_trade("BTCUSDT", 5, price="0.00000000"), START_US, 2))
    second.insert(70, (agg_trade("DOGEUSDT", 7), START_US, 2))
    live = _same_as_frame_by_frame([*first, *second, *_stream(range(1_150, 1_160), conn_id=1)])
    rejects = [(r.reason, r.origin, r.position) for b in live.emitted for r in b.rejects]  # type: ignore[attr-defined]
    assert [(origin, position) for _, origin, position in rejects] == [
        ("ws#1", 31),
        ("ws#2", 161 + 51),
        ("ws#2", 161 + 71),
    ]


def test_small_batches_take_the_same_path() -> None:
    assert len(_stream(range(10))) < MIN_COLUMNAR_ROWS  # each frame goes through normalize_frame inside
    live = _same_as_frame_by_frame(_stream([*range(1_000, 1_010), 1_005, 1_012]))
    assert live.stats.duplicates == 1 and len(live.stats.gaps) == 1


# --- the vectorised tracker step against classify/advance row by row ------------------------------------------


def _row_by_row(tracker: SequenceTracker, rows: list[tuple[str, str, int]]) -> bool:
    all_new = True
    for symbol, channel, seq in rows:
        verdict, _ = tracker.classify(symbol, channel, seq)
        all_new &= verdict == "new"
        tracker.advance(symbol, channel, seq)
    return all_new


@pytest.mark.parametrize("seed", range(300))
def test_advancing_a_batch_at_once_agrees_with_classify_row_by_row(seed: int) -> None:
    rng = random.Random(seed)
    keys = [(s, c) for s in ("BTCUSDT", "ETHBTC") for c in ("aggTrade", "trade", "bookTicker")]
    last = {key: rng.randrange(-2, 40) for key in keys if rng.random() < 0.6}
    cursor = {key: last.get(key, rng.randrange(-1, 40)) for key in keys}
    rows = []
    for _ in range(rng.randrange(0, 30)):
        key = rng.choice(keys)
        # mostly the next id; sometimes a jump, a repeat, a step back
        cursor[key] += rng.choice([1] * 12 + [2, 5, 0, -1, -3])
        rows.append((*key, cursor[key]))
    batched, reference = SequenceTracker(dict(last)), SequenceTracker(dict(last))
    all_new = _row_by_row(reference, rows)
    moved = batched.advance_if_all_new(
        pa.array([r[0] for r in rows], pa.string()),
        pa.array([r[1] for r in rows], pa.string()),
        pa.array([r[2] for r in rows], pa.int64()),
    )
    assert moved == all_new
    assert batched.last == (reference.last if all_new else last)


def test_a_rejected_book_ticker_frame_goes_with_the_quotes_to_their_dlq() -> None:
    frames = _stream(range(1_000, 1_010))
    frames.insert(3, (b'{"stream":"ethbtc@bookTicker","data":{"u":9001,"s":"ETHBTC","b":"0.0', START_US, 1))  # torn
    frames.insert(5, (b'{"u":9002,"s":"ETHBTC","b":"x","B":"1","a":"0.07","A":"1"}', START_US, 1))  # raw stream
    frames.insert(7, (b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade"', START_US, 1))
    live = _same_as_frame_by_frame(frames)
    dlq = {(b.spec.name, r.raw[:20]) for b in live.emitted for r in b.rejects}  # type: ignore[attr-defined]
    assert dlq == {
        ("quotes_v2", b'{"stream":"ethbtc@bo'),
        ("quotes_v2", b'{"u":9002,"s":"ETHBT'),
        ("trades_v2", b'{"stream":"btcusdt@a'),
    }
