"""The book recorder on the real captures: rows per table, gaps as stream_gaps rows, when to fetch a snapshot."""

from __future__ import annotations

import uuid
from decimal import Decimal

import orjson
import pytest

from k2.core.batch import Reject
from k2.schema.codecs import MESSAGE_ID_NAMESPACE
from k2.schema.fields import BookSnapshotType
from k2.sources.binance.book import DepthSnapshot
from k2.sources.binance.book_recorder import CHECKPOINT_SOURCE, BookRecorder, Recorded
from k2.sources.binance.capture import RestResponse, WsFrame
from k2.sources.binance.normalize_book import book_snapshot_records
from tests.sources.book_captures import CAPTURES, capture_entries, record_capture, record_entries
from tests.sources.book_oracle import read_depth, replay


def test_both_captures_record_every_level_every_snapshot_and_no_gap() -> None:
    for capture, updates, snapshots in (("2021-04-04", 28_440, 6_000), ("2021-10-12", 422, 4_648)):
        diffs, oracle_snapshots = read_depth(*CAPTURES[capture])
        # applied: the diffs after each symbol's snapshot, counted by the independent reconstruction
        applied = sum(
            1 for symbol, (snap,) in oracle_snapshots.items() for d in diffs[symbol] if d.last > snap.last_update_id
        )
        assert snapshots == sum(len(s.bids) + len(s.asks) for (s,) in oracle_snapshots.values())
        recorder = BookRecorder()
        total = record_entries(recorder, capture_entries(*CAPTURES[capture]))
        assert (len(total.updates), len(total.snapshots), total.gaps, total.applied) == (
            updates, snapshots, [], applied
        )  # fmt: skip
        assert recorder.wanting_snapshot() == []
        if capture == "2021-04-04":
            btc = recorder.book("BTCUSDT")
            assert btc is not None and btc.best_bid() == (Decimal("58005.11000000"), Decimal("1.48637600"))


def test_the_first_depth_frame_makes_its_symbol_want_a_snapshot_until_one_comes() -> None:
    recorder = BookRecorder()
    entries = iter(capture_entries(*CAPTURES["2021-04-04"]))
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
    entries = capture_entries(*CAPTURES["2021-04-04"])
    btc = [i for i, e in enumerate(entries) if isinstance(e, WsFrame) and b"btcusdt@depth" in e.raw]
    lost_at = btc[len(btc) // 2]
    lost = orjson.loads(entries[lost_at].raw)["data"]
    after = entries[btc[btc.index(lost_at) + 1]]
    recorder = BookRecorder()
    total = record_entries(recorder, entries[:lost_at] + entries[lost_at + 1 :])
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


def test_checkpoints_are_the_whole_book_at_the_first_diff_of_each_interval_and_replay_the_same() -> None:
    interval_us = 10_000_000
    diffs, oracle_snapshots = read_depth(*CAPTURES["2021-04-04"])
    total = record_capture("2021-04-04", BookRecorder(checkpoint_us=interval_us))
    checkpoints: dict[tuple[str, int], list[dict]] = {}
    for row in total.snapshots:
        if row["snapshot_type"] == "checkpoint":
            checkpoints.setdefault((row["symbol"], row["last_update_id"]), []).append(row)
    assert len(total.snapshots) - sum(map(len, checkpoints.values())) == 6_000  # the venue snapshots, as before
    for symbol, (snapshot,) in oracle_snapshots.items():
        books = {d.last: (d, dict(b), dict(a)) for d, b, a in replay(snapshot, diffs[symbol])}
        ids = sorted(last for s, last in checkpoints if s == symbol)
        # the capture spans event times 20:03:11.3-20:04:42.3: intervals 20:03:20 to 20:04:40 each open with one
        assert [books[i][0].event_ms * 1000 // interval_us for i in ids] == list(range(161756660, 161756669))
        previous = {d.last: p for p, d in zip(diffs[symbol], diffs[symbol][1:], strict=False)}
        for last in ids:
            diff, bids, asks = books[last]
            assert previous[last].event_ms * 1000 // interval_us < diff.event_ms * 1000 // interval_us
            rows = checkpoints[(symbol, last)]
            assert {r["timestamp"] for r in rows} == {diff.event_ms * 1000}
            got = {side: {r["price"]: r["quantity"] for r in rows if r["side"] == side} for side in ("BID", "ASK")}
            assert (got["BID"], got["ASK"]) == (bids, asks) and len(rows) == len(bids) + len(asks)
    again = record_capture("2021-04-04", BookRecorder(checkpoint_us=interval_us))
    assert [r["message_id"] for r in again.snapshots] == [r["message_id"] for r in total.snapshots]
    assert len({r["message_id"] for r in total.snapshots}) == len(total.snapshots)


def test_a_checkpoint_at_a_venue_snapshots_update_id_has_other_message_ids() -> None:
    snapshot = DepthSnapshot("BTCUSDT", 10, 1_000, ((Decimal("1.0"), Decimal("2.0")),), ())
    venue = book_snapshot_records(snapshot)
    checkpoint = book_snapshot_records(
        snapshot, taken_us=900, snapshot_type=BookSnapshotType.CHECKPOINT, source=CHECKPOINT_SOURCE
    )
    assert [r["message_id"] for r in venue] == [
        str(uuid.uuid5(MESSAGE_ID_NAMESPACE, "binance|book_snapshots|BTCUSDT|snapshot:10:BID:1.0"))
    ]
    assert [r["message_id"] for r in checkpoint] == [
        str(uuid.uuid5(MESSAGE_ID_NAMESPACE, "binance|book_snapshots|BTCUSDT|checkpoint:10:BID:1.0"))
    ]
    assert (checkpoint[0]["snapshot_type"], checkpoint[0]["timestamp"]) == ("checkpoint", 900)


def test_no_checkpoint_without_an_interval_or_while_the_book_is_out_of_sync() -> None:
    assert not any(r["snapshot_type"] == "checkpoint" for r in record_capture("2021-04-04", BookRecorder()).snapshots)
    recorder = BookRecorder(checkpoint_us=1_000)

    def diff(first: int, last: int, event_ms: int) -> bytes:
        return orjson.dumps(
            {"e": "depthUpdate", "E": event_ms, "s": "BTCUSDT", "U": first, "u": last, "b": [["1.0", "3.0"]], "a": []}
        )

    recorder.snapshot("BTCUSDT", b'{"lastUpdateId":10,"bids":[["1.0","2.0"]],"asks":[["3.0","4.0"]]}', 1_000)
    first = recorder.frame(diff(9, 11, 5), 2_000)  # starts the count
    second = recorder.frame(diff(12, 12, 6), 3_000)  # a new interval: the book at 12
    broken = recorder.frame(diff(14, 15, 7), 4_000)  # updates lost: no book to copy
    assert isinstance(first, Recorded) and isinstance(second, Recorded) and isinstance(broken, Recorded)
    assert first.snapshots == [] and broken.snapshots == [] and len(broken.gaps) == 1
    assert [(r["last_update_id"], r["timestamp"], r["side"], r["price"], r["quantity"]) for r in second.snapshots] == [
        (12, 6_000, "BID", Decimal("1.0"), Decimal("3.0")), (12, 6_000, "ASK", Decimal("3.0"), Decimal("4.0"))
    ]  # fmt: skip
    assert second.snapshots[0]["message_id"] == str(
        uuid.uuid5(MESSAGE_ID_NAMESPACE, "binance|book_snapshots|BTCUSDT|checkpoint:12:BID:1.00000000")
    )
    with pytest.raises(ValueError, match="checkpoint_us must be positive or None, got 0"):
        BookRecorder(checkpoint_us=0)
