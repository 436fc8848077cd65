"""The book recorder on the real captures: rows per table, gaps as stream_gaps rows, when to fetch a snapshot."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import orjson

from k2.core.batch import Reject
from k2.schema.codecs import MESSAGE_ID_NAMESPACE
from k2.sources.binance.book_recorder import BookRecorder, Recorded
from k2.sources.binance.capture import RestResponse, WsFrame, read_capture
from tests.sources.book_captures import CAPTURES
from tests.sources.book_oracle import read_depth


def _entries(*paths: Path) -> Iterator[WsFrame | RestResponse]:
    merged = [e for path in paths for e in read_capture(path) if isinstance(e, WsFrame | RestResponse)]
    yield from sorted(merged, key=lambda e: e.receipt_us)


def _record(recorder: BookRecorder, entries: Iterator[WsFrame | RestResponse]) -> Recorded:
    total = Recorded()
    for entry in entries:
        if isinstance(entry, WsFrame):
            got = recorder.frame(entry.raw, entry.receipt_us, position=entry.line_no)
        elif entry.path.endswith("/depth"):
            limit = int(entry.params["limit"])
            got = recorder.snapshot(entry.params["symbol"], entry.body, entry.receipt_us, limit=limit)
        else:
            continue
        assert not isinstance(got, Reject), got
        if got is not None:
            total.updates += got.updates
            total.snapshots += got.snapshots
            total.gaps += got.gaps
            total.applied += got.applied
    return total


def test_both_captures_record_every_level_every_snapshot_and_no_gap() -> None:
    for capture, updates, snapshots in (("2021-04-04", 28_440, 6_000), ("2021-10-12", 422, 4_648)):
        diffs, oracle_snapshots = read_depth(*CAPTURES[capture])
        # applied: the diffs after each symbol's snapshot, counted by the independent reconstruction
        applied = sum(
            1 for symbol, (snap,) in oracle_snapshots.items() for d in diffs[symbol] if d.last > snap.last_update_id
        )
        assert snapshots == sum(len(s.bids) + len(s.asks) for (s,) in oracle_snapshots.values())
        recorder = BookRecorder()
        total = _record(recorder, _entries(*CAPTURES[capture]))
        assert (len(total.updates), len(total.snapshots), total.gaps, total.applied) == (
            updates, snapshots, [], applied
        )  # fmt: skip
        assert recorder.wanting_snapshot() == []
        if capture == "2021-04-04":
            btc = recorder.book("BTCUSDT")
            assert btc is not None and btc.best_bid() == (Decimal("58005.11000000"), Decimal("1.48637600"))


def test_the_first_depth_frame_makes_its_symbol_want_a_snapshot_until_one_comes() -> None:
    recorder = BookRecorder()
    entries = _entries(*CAPTURES["2021-04-04"])
    first = next(entries)
    assert isinstance(first, WsFrame) and b"dotusdt@depth" in first.raw
    got = recorder.frame(first.raw, first.receipt_us)
    assert isinstance(got, Recorded) and len(got.updates) > 0 and got.applied == 0
    assert recorder.wanting_snapshot() == ["DOTUSDT"] and recorder.book("DOTUSDT") is None
    rest = next(e for e in entries if isinstance(e, RestResponse))
    got = recorder.snapshot("DOTUSDT", rest.body, rest.receipt_us, limit=1000)
    assert isinstance(got, Recorded) and len(got.snapshots) == 2000 and got.applied == 0
    assert recorder.wanting_snapshot() == [] and recorder.book("DOTUSDT") is not None


def test_a_lost_btcusdt_frame_is_one_stream_gaps_row_and_a_snapshot_wanted() -> None:
    entries = list(_entries(*CAPTURES["2021-04-04"]))
    btc = [i for i, e in enumerate(entries) if isinstance(e, WsFrame) and b"btcusdt@depth" in e.raw]
    lost_at = btc[len(btc) // 2]
    lost = orjson.loads(entries[lost_at].raw)["data"]
    after = entries[btc[btc.index(lost_at) + 1]]
    recorder = BookRecorder()
    total = _record(recorder, iter(entries[:lost_at] + entries[lost_at + 1 :]))
    source_id = f"binance|gaps|BTCUSDT|depth:{lost['U']}"
    assert total.gaps == [
        {
            "message_id": str(uuid.uuid5(MESSAGE_ID_NAMESPACE, source_id)),
            "symbol": "BTCUSDT", "exchange": "binance", "asset_class": "crypto", "channel": "depth",
            "first_missing": lost["U"], "last_missing": lost["u"], "missing_count": lost["u"] - lost["U"] + 1,
            "filled_count": 0, "status": "unrecoverable", "timestamp": after.receipt_us,
            "detail": "diff_break: past depth updates are not served again; the book is rebuilt from a new snapshot",
            "stream": "btcusdt@depth@100ms", "reason": "sequence_break",
        }
    ]  # fmt: skip
    assert len(total.updates) == 28_440 - len(lost["b"]) - len(lost["a"])  # every frame still stored
    assert recorder.wanting_snapshot() == ["BTCUSDT"] and recorder.book("BTCUSDT") is None
    assert recorder.book("ETHUSDT") is not None  # the other books are untouched


def test_unreadable_depth_frames_and_snapshots_are_rejects_and_other_frames_pass() -> None:
    recorder = BookRecorder()
    raw = b'{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":5,"u":4,"b":[],"a":[]}}'
    reject = recorder.frame(raw, 1, origin="btcusdt@depth", position=3)
    assert isinstance(reject, Reject) and reject.reason == "bad_field:U" and reject.raw == raw
    assert reject.detail == "btcusdt@depth frame 3: first update id U=5 is after final update id u=4"
    assert recorder.frame(b'{"result":null,"id":1}', 1) is None
    bad = recorder.snapshot("BTCUSDT", b'{"code":-1121,"msg":"Invalid symbol."}', 1, origin="GET /api/v3/depth")
    assert isinstance(bad, Reject) and bad.reason == "missing_field:lastUpdateId"
    assert bad.detail == "GET /api/v3/depth: field 'lastUpdateId' is missing"
    assert recorder.books == {}  # nothing read, no book started


def test_a_break_on_a_raw_stream_names_the_symbols_depth_stream() -> None:
    recorder = BookRecorder()
    recorder.snapshot("BTCUSDT", b'{"lastUpdateId":10,"bids":[["1.0","2.0"]],"asks":[["3.0","4.0"]]}', 1_000)

    def diff(first: int, last: int) -> bytes:
        return orjson.dumps(
            {"e": "depthUpdate", "E": 5, "s": "BTCUSDT", "U": first, "u": last, "b": [["1.0", "0"]], "a": []}
        )

    applied = recorder.frame(diff(9, 11), 2_000)
    assert isinstance(applied, Recorded) and applied.applied == 1
    broken = recorder.frame(diff(14, 15), 3_000)
    assert isinstance(broken, Recorded)
    assert [(g["stream"], g["reason"], g["first_missing"], g["last_missing"]) for g in broken.gaps] == [
        ("btcusdt@depth", "sequence_break", 12, 13)
    ]
