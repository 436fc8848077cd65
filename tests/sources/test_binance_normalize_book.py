"""Depth diffs and REST depth snapshots of the real captures → book_updates_v2 / book_snapshots_v2 rows."""

from __future__ import annotations

import io
import re
import uuid
from decimal import Decimal

import fastavro
import orjson

from k2.bus.topics import MARKET_TOPIC_PATTERN, TopicName
from k2.core.batch import Reject
from k2.schema.arrow import records_from_arrow, records_to_arrow
from k2.schema.avro import parsed_schema
from k2.schema.codecs import MESSAGE_ID_NAMESPACE
from k2.schema.fields import BOOK_SNAPSHOTS_V2, BOOK_UPDATES_V2, AssetClass, DataType
from k2.sources.binance.book import DepthDiff, DepthSnapshot
from k2.sources.binance.capture import ws_frames
from k2.sources.binance.normalize_book import book_snapshot_records, book_update_records, normalize_depth_frame
from tests.sources.book_captures import CAPTURES, depth_events

D = Decimal


def _uuid5(source_id: str, data_type: str = "book_updates", symbol: str = "BTCUSDT") -> str:
    return str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"binance|{data_type}|{symbol}|{source_id}"))


def test_the_first_btcusdt_depth_frame_is_three_level_rows_with_exact_decimals_and_ids() -> None:
    frame = next(f for f in ws_frames(CAPTURES["2021-04-04"][0]) if b"btcusdt@depth" in f.raw)
    rows = normalize_depth_frame(frame.raw, frame.receipt_us)
    assert isinstance(rows, list)
    common = {
        "symbol": "BTCUSDT", "exchange": "binance", "asset_class": "crypto", "timestamp": 1617566591307000,
        "first_update_id": 9893032989, "last_update_id": 9893032991, "ingestion_timestamp": 1617566592114429,
        "vendor_data": {"stream": "btcusdt@depth@100ms"},
    }  # fmt: skip
    assert rows == [
        common | {"message_id": _uuid5("depth:9893032991:BID:55000.00000000"), "side": "BID"}
        | {"price": D("55000"), "quantity": D("135.664666")},
        common | {"message_id": _uuid5("depth:9893032991:ASK:58042.29000000"), "side": "ASK"}
        | {"price": D("58042.29"), "quantity": D("0.097")},
        common | {"message_id": _uuid5("depth:9893032991:ASK:58055.02000000"), "side": "ASK"}
        | {"price": D("58055.02"), "quantity": D("0.75")},
    ]  # fmt: skip
    assert [str(r["price"]) for r in rows] == ["55000.00000000", "58042.29000000", "58055.02000000"]


def test_every_depth_diff_of_both_captures_becomes_one_row_per_level_with_unique_ids() -> None:
    for capture, levels in (("2021-04-04", 28_440), ("2021-10-12", 422)):
        diffs = [e for e in depth_events(capture) if isinstance(e, DepthDiff)]
        rows = [row for diff in diffs for row in book_update_records(diff)]
        assert len(rows) == levels
        assert len({r["message_id"] for r in rows}) == levels
        removals = [r for r in rows if not r["quantity"]]
        assert removals and all(r["quantity"] == D(0) for r in removals)
        # the Arrow form keeps every decimal and id exactly
        assert records_from_arrow(records_to_arrow(BOOK_UPDATES_V2, rows[:2000])) == rows[:2000]


def test_a_rest_snapshot_is_one_row_per_level_at_its_update_id_and_receive_time() -> None:
    snapshot = next(e for e in depth_events("2021-04-04") if isinstance(e, DepthSnapshot) and e.symbol == "BTCUSDT")
    rows = book_snapshot_records(snapshot, limit=1000)
    assert len(rows) == 2000 and {r["last_update_id"] for r in rows} == {9893033066}
    assert rows[0] == {
        "message_id": _uuid5("snapshot:9893033066:BID:58001.03000000", "book_snapshots"),
        "symbol": "BTCUSDT", "exchange": "binance", "asset_class": "crypto", "timestamp": 1617566592339385,
        "side": "BID", "price": D("58001.03"), "quantity": D("1.601074"), "last_update_id": 9893033066,
        "ingestion_timestamp": 1617566592339385, "vendor_data": {"timestamp_source": "receive_time", "limit": "1000"},
        "snapshot_type": "full",
    }  # fmt: skip
    assert (rows[1000]["side"], rows[1000]["price"], rows[1000]["quantity"]) == ("ASK", D("58001.04"), D("2.524693"))
    assert len({r["message_id"] for r in rows}) == 2000


def test_book_rows_encode_to_avro_and_back_exactly() -> None:
    diff = next(e for e in depth_events("2021-10-12") if isinstance(e, DepthDiff))
    snapshot = next(e for e in depth_events("2021-10-12") if isinstance(e, DepthSnapshot))
    for spec, rows in (
        (BOOK_UPDATES_V2, book_update_records(diff)),
        (BOOK_SNAPSHOTS_V2, book_snapshot_records(snapshot)),
    ):
        for row in rows[:50]:
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, parsed_schema(spec), row)
            buf.seek(0)
            back = fastavro.schemaless_reader(buf, parsed_schema(spec), None)
            assert back["price"] == row["price"] and back["quantity"] == row["quantity"]
            assert back["side"] == row["side"] and back["last_update_id"] == row["last_update_id"]


def test_a_price_repeated_in_one_event_is_one_row_with_the_later_quantity() -> None:
    diff = DepthDiff("BTCUSDT", 5, 6, 1_000, 2_000, ((D(1), D(2)), (D(1), D(3))), ((D("0.00000001"), D(0)),))
    rows = book_update_records(diff)
    assert [(r["side"], r["price"], r["quantity"]) for r in rows] == [("BID", D(1), D(3)), ("ASK", D("1E-8"), D(0))]
    assert rows[1]["message_id"] == _uuid5("depth:6:ASK:0.00000001")  # plain digits, never 1E-8


def test_non_depth_frames_pass_and_a_bad_depth_frame_is_a_reject_with_its_bytes() -> None:
    assert normalize_depth_frame(b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade"}}', 1) is None
    raw = orjson.dumps({"stream": "btcusdt@depth", "data": {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 2}})
    reject = normalize_depth_frame(raw, 1, origin="btcusdt@depth", position=7)
    assert reject == Reject("missing_field:u", "btcusdt@depth frame 7: field 'u' is missing", raw, "btcusdt@depth", 7)


def test_book_topics_follow_the_naming_rule() -> None:
    updates = TopicName(AssetClass.CRYPTO, DataType.BOOK_UPDATES, "binance")
    snapshots = TopicName(AssetClass.CRYPTO, DataType.BOOK_SNAPSHOTS, "binance")
    assert (str(updates), str(snapshots)) == (
        "market.crypto.book_updates.binance",
        "market.crypto.book_snapshots.binance",
    )
    assert updates.spec is BOOK_UPDATES_V2 and snapshots.spec is BOOK_SNAPSHOTS_V2
    assert updates.subject == "market.crypto.book_updates.binance-value"
    assert TopicName.parse(str(snapshots)) == snapshots
    assert re.match(MARKET_TOPIC_PATTERN, str(updates)) and re.match(MARKET_TOPIC_PATTERN, str(snapshots))
