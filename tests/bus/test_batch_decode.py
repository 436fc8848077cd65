"""Batch decoding gives exactly what per-message decoding gives, and refuses blocks it cannot trust."""

from __future__ import annotations

from decimal import Decimal

import pytest

from k2.bus.batch_decode import BatchDecodeError, decode_batch
from k2.bus.serde import encode
from k2.schema import QUOTES_V2, TRADES_V2
from k2.schema.arrow import records_to_arrow
from k2.schema.avro import parsed_schema
from k2.schema.codecs import message_id
from tests.integration.helpers import make_trade


def _framed(spec, records):
    return [encode(r, parsed_schema(spec), 7) for r in records]


def test_batch_decode_equals_the_records_exactly() -> None:
    records = [make_trade(i) for i in range(1000)]
    records[1]["price"] = Decimal("-0.00000001")
    records[2]["price"] = Decimal("9999999999.99999999")
    records[3]["price"] = Decimal("-9999999999.99999999")
    records[4]["vendor_data"] = {"qualifier": "3", "venue": "X"}
    records[5]["trade_conditions"] = ["25", "X"]
    records[6]["source_sequence"] = None
    table = decode_batch(TRADES_V2, _framed(TRADES_V2, records))
    assert table.equals(records_to_arrow(TRADES_V2, records))
    assert table["price"][2].as_py() == Decimal("9999999999.99999999")


def test_batch_decode_of_one_sided_quotes_keeps_nulls() -> None:
    quote = {
        "message_id": "d00816fd-7f73-566e-9a6f-921245500258",
        "quote_id": "q1",
        "symbol": "BHP",
        "exchange": "asx",
        "asset_class": "equities",
        "timestamp": 1_394_409_600_000_000,
        "bid_price": Decimal("37.7"),
        "bid_quantity": Decimal("300"),
        "ask_price": None,
        "ask_quantity": None,
        "currency": "AUD",
        "source_sequence": 1,
        "ingestion_timestamp": 1_394_409_600_000_001,
        "platform_sequence": 1,
        "vendor_data": {"book_state": "one_sided"},
    }
    table = decode_batch(QUOTES_V2, _framed(QUOTES_V2, [quote, quote]))
    assert table.equals(records_to_arrow(QUOTES_V2, [quote, quote]))
    assert table["ask_price"].null_count == 2


def test_a_datum_that_does_not_match_its_schema_is_refused() -> None:
    values = _framed(TRADES_V2, [make_trade(i) for i in range(10)])
    values[4] = values[4] + b"\x02\x41"  # trailing bytes shift every later datum
    with pytest.raises(BatchDecodeError):
        decode_batch(TRADES_V2, values)


def test_truncated_datum_is_refused() -> None:
    values = _framed(TRADES_V2, [make_trade(i) for i in range(10)])
    values[9] = values[9][:20]
    with pytest.raises(BatchDecodeError):
        decode_batch(TRADES_V2, values)


def test_back_to_back_blocks_of_equal_size_each_decode_to_their_own_records() -> None:
    # The DuckDB block reader this decoder replaced once served the previous block again for an equal-size one
    # (its file cache): the sink then dropped a whole commit as "duplicates". Kept as a regression test.
    for round_ in range(8):
        first = [make_trade(i) for i in range(500)]
        second = [
            {**r, "message_id": message_id("test", "trades", "TST", f"{round_}-{i}")} for i, r in enumerate(first)
        ]
        framed_first, framed_second = _framed(TRADES_V2, first), _framed(TRADES_V2, second)
        assert sum(map(len, framed_first)) == sum(map(len, framed_second))  # the case that went stale
        assert decode_batch(TRADES_V2, framed_first)["message_id"].to_pylist() == [r["message_id"] for r in first]
        assert decode_batch(TRADES_V2, framed_second)["message_id"].to_pylist() == [r["message_id"] for r in second]


def test_a_message_id_that_is_not_a_uuid_is_refused() -> None:
    records = [make_trade(i) for i in range(3)]
    records[1]["message_id"] = "short"
    with pytest.raises(BatchDecodeError, match="36 characters"):
        decode_batch(TRADES_V2, _framed(TRADES_V2, records))
