"""Where a restarted Binance stream resumes: the last id per (symbol, channel), read from vendor_data."""

from __future__ import annotations

import pyarrow as pa

from k2.ingest.streaming import channels, last_ids

MAPS = pa.map_(pa.string(), pa.string())


def test_channels_come_from_vendor_data_maps() -> None:
    vendor = pa.chunked_array(
        [
            pa.array([[("channel", "aggTrade"), ("first_trade_id", "7")], [("channel", "trade")]], MAPS),
            pa.array([None, [("receive_time_us", "1")]], MAPS),
        ]
    )

    assert channels(vendor).to_pylist() == ["aggTrade", "trade", None, None]


def test_last_ids_per_symbol_and_channel_from_a_kafka_tail() -> None:
    vendor = pa.array([[("channel", "aggTrade")], [("channel", "aggTrade")], [("channel", "trade")], None], MAPS)
    symbol = pa.array(["BTCUSDT", "BTCUSDT", "BTCUSDT", "ETHUSDT"])
    sequence = pa.array([41, 40, 9, 5], pa.int64())

    assert last_ids(symbol, channels(vendor), sequence) == {("BTCUSDT", "aggTrade"): 41, ("BTCUSDT", "trade"): 9}
