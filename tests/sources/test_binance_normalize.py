"""Binance payloads → V2 records, on the real recorded frames and REST responses."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from k2.core.batch import Reject
from k2.samples import BINANCE_CAPTURE_2021_04_04 as CAPTURE_2021_04
from k2.samples import BINANCE_CAPTURE_2021_10_12 as CAPTURE_2021_10
from k2.samples import BINANCE_EXCHANGE_INFO as EXCHANGE_INFO
from k2.samples import BINANCE_REST_RESPONSES as REST
from k2.schema.codecs import datetime_from_micros, message_id
from k2.schema.fields import BOOK_SNAPSHOTS_V2, BOOK_UPDATES_V2, QUOTES_V2, TRADES_V2, RecordSpec
from k2.sources.binance.capture import ws_frames
from k2.sources.binance.live import fetch_symbols
from k2.sources.binance.normalize import (
    PayloadError,
    TimeUnit,
    intended_spec,
    normalize_agg_trade,
    normalize_book_ticker,
    normalize_frame,
    normalize_rest_trade,
    normalize_trade,
    record_spec,
)
from k2.sources.binance.symbols import (
    SymbolDirectory,
    UnknownSymbolError,
    load_saved_exchange_info,
    save_exchange_info,
    shipped_directory,
)


@pytest.fixture(scope="module")
def symbols() -> SymbolDirectory:
    return SymbolDirectory.from_file(EXCHANGE_INFO)


def _normalize_capture(path: Any, symbols: SymbolDirectory) -> list[dict[str, Any] | Reject | None]:
    return [
        normalize_frame(f.raw, symbols, f.receipt_us, origin=path.name, position=f.line_no) for f in ws_frames(path)
    ]


def _first_agg_trade() -> dict[str, Any]:
    frame = next(f for f in ws_frames(CAPTURE_2021_04) if b"@aggTrade" in f.raw)
    return orjson.loads(frame.raw)


# --- symbols -------------------------------------------------------------------------------------------------------


def test_symbol_directory_knows_base_quote_and_status_from_exchange_info(symbols: SymbolDirectory) -> None:
    assert len(symbols) == 25
    blz = symbols["BLZETH"]
    assert (blz.base_asset, blz.quote_asset, blz.status) == ("BLZ", "ETH", "TRADING")
    assert symbols.quote_asset("RUNEEUR") == "EUR"
    assert "BTCUSDT" in symbols and "btcusdt" not in symbols


def test_unknown_symbol_is_a_clear_error_with_the_reject_reason(symbols: SymbolDirectory) -> None:
    with pytest.raises(UnknownSymbolError, match=r"XYZUSDT.*refresh exchangeInfo") as caught:
        symbols.quote_asset("XYZUSDT")
    assert caught.value.reason == "unknown_symbol"
    with pytest.raises(ValueError, match="exchangeInfo"):
        SymbolDirectory.from_json(b'{"serverTime": 1}')


def test_currency_is_the_quote_asset_exchange_info_names_never_a_guess_from_the_letters() -> None:
    """From the shipped recording, including pairs a suffix guess got wrong (TUSD read as USD) or could not tell."""
    agg = _first_agg_trade()["data"]
    quotes = {
        symbol: normalize_agg_trade({**agg, "s": symbol}, shipped_directory(), 1)["currency"]
        for symbol in (
            "QTUMETH", "AXSBNB", "NEOUSDC", "BNBBRL", "BNBTUSD", "XRPTUSD", "WAVESPAX", "RENBTCBTC", "BTCAUD", "ETHBRL",
        )
    }  # fmt: skip
    assert quotes == {
        "QTUMETH": "ETH", "AXSBNB": "BNB", "NEOUSDC": "USDC", "BNBBRL": "BRL",
        "BNBTUSD": "TUSD", "XRPTUSD": "TUSD", "WAVESPAX": "PAX", "RENBTCBTC": "BTC",
        "BTCAUD": "AUD", "ETHBRL": "BRL",
    }  # fmt: skip
    wavespax, renbtc = shipped_directory()["WAVESPAX"], shipped_directory()["RENBTCBTC"]
    assert (wavespax.base_asset, wavespax.status, renbtc.base_asset) == ("WAVES", "BREAK", "RENBTC")
    btcaud, ethbrl = shipped_directory()["BTCAUD"], shipped_directory()["ETHBRL"]
    assert [(s.base_asset, s.quote_asset) for s in (btcaud, ethbrl)] == [("BTC", "AUD"), ("ETH", "BRL")]
    with pytest.raises(PayloadError, match=r"'BTCXYZ' is not in .*exchangeInfo") as caught:
        normalize_agg_trade({**agg, "s": "BTCXYZ"}, shipped_directory(), 1)
    assert caught.value.reason == "unknown_symbol"


def test_a_gzipped_exchange_info_file_reads_like_the_plain_one(tmp_path: Path) -> None:
    packed = tmp_path / "exchangeInfo.json.gz"
    packed.write_bytes(gzip.compress(EXCHANGE_INFO.read_bytes()))
    assert list(SymbolDirectory.from_file(packed)) == list(SymbolDirectory.from_file(EXCHANGE_INFO))


def test_a_fetched_exchange_info_is_kept_with_its_fetch_time_and_used_when_the_venue_is_unreachable(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "binance" / "exchangeInfo.json"
    before = time.time_ns() // 1000
    saved = save_exchange_info(cache, EXCHANGE_INFO.read_bytes(), source="https://api.binance.com/api/v3/exchangeInfo")
    directory, fetched_at_us = load_saved_exchange_info(cache)
    assert before <= fetched_at_us <= time.time_ns() // 1000
    assert len(directory) == len(saved) == 25 and directory.quote_asset("BNBBRL") == "BRL"
    # nothing listens on port 1: the saved response answers, and without one the error is raised
    offline = asyncio.run(fetch_symbols("http://127.0.0.1:1", ["BNBBRL"], cache))
    assert offline.quote_asset("AXSBNB") == "BNB" and "saved" in offline.source
    with pytest.raises(httpx.ConnectError):
        asyncio.run(fetch_symbols("http://127.0.0.1:1", ["BNBBRL"], tmp_path / "none.json"))
    cache.write_text("{}")
    with pytest.raises(ValueError, match="not a saved exchangeInfo"):
        load_saved_exchange_info(cache)


# --- aggTrade stream -----------------------------------------------------------------------------------------------


def test_every_captured_aggtrade_becomes_one_trade(symbols: SymbolDirectory) -> None:
    results = _normalize_capture(CAPTURE_2021_04, symbols)
    trades = [r for r in results if isinstance(r, dict)]
    assert len(trades) == 1910
    assert not [r for r in results if isinstance(r, Reject)]
    assert results.count(None) == 2688 + 118  # depth diffs and klines pass by: not trades, not errors
    assert all(record_spec(t) is TRADES_V2 and set(t) == set(TRADES_V2.field_names) for t in trades)
    assert len({t["message_id"] for t in trades}) == 1910


def test_btcusdt_aggregate_ids_665076760_to_665077986_arrive_without_a_gap(symbols: SymbolDirectory) -> None:
    trades = [r for r in _normalize_capture(CAPTURE_2021_04, symbols) if isinstance(r, dict)]
    btc = [t["source_sequence"] for t in trades if t["symbol"] == "BTCUSDT"]
    assert len(btc) == 1227
    assert btc == list(range(665076760, 665077987))
    assert [t["trade_id"] for t in trades if t["symbol"] == "BTCUSDT"][:2] == ["665076760", "665076761"]
    # f == previous l + 1: the aggregates cover the raw trade ids without a gap either
    firsts = [int(t["vendor_data"]["first_trade_id"]) for t in trades if t["symbol"] == "BTCUSDT"]
    lasts = [int(t["vendor_data"]["last_trade_id"]) for t in trades if t["symbol"] == "BTCUSDT"]
    assert all(f == last + 1 for f, last in zip(firsts[1:], lasts[:-1], strict=True))


def test_aggtrade_fields_are_exact_decimals_utc_micros_and_the_aggressor_side(symbols: SymbolDirectory) -> None:
    frames = [f for f in ws_frames(CAPTURE_2021_04) if b"btcusdt@aggTrade" in f.raw][:2]
    first, second = (normalize_frame(f.raw, symbols, f.receipt_us) for f in frames)
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["price"] == Decimal("58001.03000000") and first["quantity"] == Decimal("0.08620500")
    assert first["timestamp"] == 1617566591314000  # T, ms → us
    assert datetime_from_micros(first["timestamp"]).isoformat() == "2021-04-04T20:03:11.314000+00:00"
    assert first["currency"] == "USDT" and first["exchange"] == "binance" and first["asset_class"] == "crypto"
    assert first["side"] == "SELL"  # m=true: the buyer was the maker, so the aggressor sold
    assert second["side"] == "BUY"  # m=false
    assert first["trade_conditions"] == []
    assert first["ingestion_timestamp"] == 1617566592629139
    assert first["vendor_data"] == {
        "channel": "aggTrade",
        "receive_time_us": "1617566592629139",
        "event_time_us": "1617566591315000",
        "first_trade_id": "745522877",
        "last_trade_id": "745522877",
        "is_buyer_maker": "true",
        "is_best_match": "true",
    }
    assert first["message_id"] == message_id("binance", "trades", "BTCUSDT", "aggTrade:665076760")


def test_microsecond_time_unit_payloads_are_not_scaled_again(symbols: SymbolDirectory) -> None:
    data = _first_agg_trade()["data"]
    micro = {**data, "T": data["T"] * 1000 + 123, "E": data["E"] * 1000 + 456}
    record = normalize_agg_trade(micro, symbols, 1, TimeUnit.MICROSECOND)
    assert record["timestamp"] == 1617566591314123
    assert record["vendor_data"]["event_time_us"] == "1617566591315456"


def test_invalidated_aggtrade_is_a_reject_not_a_zero_priced_trade(symbols: SymbolDirectory) -> None:
    frame = _first_agg_trade()
    frame["data"].update(p="0", q="0", f=-1, l=-1)
    raw = orjson.dumps(frame)
    result = normalize_frame(raw, symbols, 1, origin="btcusdt@aggTrade", position=7)
    assert isinstance(result, Reject)
    assert result.reason == "invalidated_aggtrade"
    assert "665076760" in result.detail
    assert (result.raw, result.origin, result.position) == (raw, "btcusdt@aggTrade", 7)
    with pytest.raises(PayloadError, match="marked invalid"):
        normalize_agg_trade({**frame["data"], "p": "0.00000000", "q": "0.00000000", "f": 5, "l": 5}, symbols, 1)


def test_malformed_frame_is_rejected_with_its_raw_bytes(symbols: SymbolDirectory) -> None:
    raw = b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1617566591315,"s":"BTC'
    result = normalize_frame(raw, symbols, 1, origin="capture", position=3)
    assert isinstance(result, Reject)
    assert (result.reason, result.raw, result.position) == ("malformed_json", raw, 3)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"p": None}, "missing_field:p"),
        ({"p": 58001.03}, "bad_price"),  # a JSON number would have gone through float
        ({"p": "58001.030000001"}, "bad_price"),  # more than 8 decimals: decimal(18,8) cannot hold it exactly
        ({"q": "-1"}, "bad_quantity"),
        ({"a": "665076760"}, "bad_field:a"),
        ({"m": 1}, "bad_field:m"),
        ({"s": "XYZUSDT"}, "unknown_symbol"),
    ],
)
def test_bad_payload_fields_are_rejected_with_a_reason(
    symbols: SymbolDirectory, change: dict[str, Any], reason: str
) -> None:
    frame = _first_agg_trade()
    for key, value in change.items():
        if value is None:
            del frame["data"][key]
        else:
            frame["data"][key] = value
    result = normalize_frame(orjson.dumps(frame), symbols, 1)
    assert isinstance(result, Reject) and result.reason == reason


def test_control_frames_are_not_data_and_error_frames_are_rejected(symbols: SymbolDirectory) -> None:
    assert normalize_frame(b'{"result":null,"id":1}', symbols, 1) is None
    error = normalize_frame(b'{"error":{"code":2,"msg":"Invalid request"},"id":1}', symbols, 1)
    assert isinstance(error, Reject) and error.reason == "error_response"
    other = normalize_frame(b'{"e":"outboundAccountPosition","E":1}', symbols, 1)
    assert isinstance(other, Reject) and other.reason == "unsupported_event"


# --- trade stream and REST -----------------------------------------------------------------------------------------


def test_trade_stream_payload_becomes_a_trade_with_its_trade_id(symbols: SymbolDirectory) -> None:
    data = {"e": "trade", "E": 1634942949264, "s": "BTCUSDT", "t": 1111468873, "p": "60650.00000000",
            "q": "0.02924000", "T": 1634942949263, "m": True, "M": True}  # fmt: skip
    record = normalize_frame(orjson.dumps({"stream": "btcusdt@trade", "data": data}), symbols, 5)
    assert isinstance(record, dict)
    assert (record["trade_id"], record["source_sequence"], record["side"]) == ("1111468873", 1111468873, "SELL")
    assert record["message_id"] == message_id("binance", "trades", "BTCUSDT", "trade:1111468873")
    assert normalize_trade(data, symbols, 5) == record


def test_rest_aggtrades_use_the_stream_keys_and_the_stream_ids(symbols: SymbolDirectory) -> None:
    items = orjson.loads((REST / "spot_market_agg_trades.json").read_bytes())
    records = [normalize_agg_trade(item, symbols, 1, symbol="BTCUSDT") for item in items]
    assert [r["source_sequence"] for r in records] == list(range(966492862, 966492872))
    assert records[0]["price"] == Decimal("60759.60000000") and records[0]["side"] == "BUY"
    assert records[0]["timestamp"] == 1634944096633000
    # a backfilled aggregate gets the id the live stream gave it, so the lake stores it once
    stream = _first_agg_trade()["data"]
    rest_shaped = {k: v for k, v in stream.items() if k not in ("e", "E", "s")}
    backfilled = normalize_agg_trade(rest_shaped, symbols, 1, symbol="BTCUSDT")
    assert backfilled["message_id"] == normalize_agg_trade(stream, symbols, 1)["message_id"]


def test_rest_trades_normalize_with_quote_quantity_kept(symbols: SymbolDirectory) -> None:
    items = orjson.loads((REST / "spot_market_trades.json").read_bytes())
    records = [normalize_rest_trade(item, "BTCUSDT", symbols, 1) for item in items]
    assert [r["source_sequence"] for r in records] == list(range(1111468873, 1111468883))
    first = records[0]
    assert (first["price"], first["quantity"], first["side"]) == (Decimal("60650"), Decimal("0.02924"), "SELL")
    assert first["vendor_data"]["quote_quantity"] == "1773.40600000"
    assert first["vendor_data"]["is_best_match"] == "true"
    assert first["message_id"] == message_id("binance", "trades", "BTCUSDT", "trade:1111468873")


# --- bookTicker ----------------------------------------------------------------------------------------------------


def test_84_captured_booktickers_become_84_quotes_with_exact_decimals(symbols: SymbolDirectory) -> None:
    results = _normalize_capture(CAPTURE_2021_10, symbols)
    quotes = [r for r in results if isinstance(r, dict) and record_spec(r) is QUOTES_V2]
    assert len(quotes) == 84
    assert not [r for r in results if isinstance(r, Reject)]
    assert all(set(q) == set(QUOTES_V2.field_names) for q in quotes)
    assert Counter((q["symbol"], q["currency"]) for q in quotes) == {
        ("NKNUSDT", "USDT"): 74, ("LRCBTC", "BTC"): 9, ("BLZETH", "ETH"): 1,
    }  # fmt: skip
    first = quotes[0]
    assert (first["symbol"], first["quote_id"], first["source_sequence"]) == ("NKNUSDT", "499869768", 499869768)
    assert (first["bid_price"], first["bid_quantity"]) == (Decimal("0.35210000"), Decimal("672.00000000"))
    assert (first["ask_price"], first["ask_quantity"]) == (Decimal("0.35260000"), Decimal("3199.00000000"))
    # spot bookTicker has no event time: the receipt time stands in, and vendor_data says so
    assert first["timestamp"] == first["ingestion_timestamp"] == 1633998513377805
    assert first["vendor_data"]["timestamp_source"] == "receive_time"
    assert first["message_id"] == message_id("binance", "quotes", "NKNUSDT", "bookTicker:499869768")


def test_bookticker_side_priced_zero_is_null_and_event_time_wins_when_present(symbols: SymbolDirectory) -> None:
    data = {"u": 1, "s": "LRCBTC", "b": "0.00000000", "B": "0.00000000", "a": "0.00000640", "A": "10.00000000"}
    quote = normalize_book_ticker(data, symbols, 99)
    assert quote["bid_price"] is None and quote["bid_quantity"] is None
    assert quote["ask_price"] == Decimal("0.0000064")
    assert quote["currency"] == "BTC"
    timed = normalize_book_ticker({**data, "E": 1633998513000, "T": 1633998512999}, symbols, 99)
    assert timed["timestamp"] == 1633998513000000
    assert timed["vendor_data"]["timestamp_source"] == "event_time"
    assert timed["vendor_data"]["T"] == "1633998512999"  # unknown extras kept verbatim as strings
    raw_stream = normalize_frame(orjson.dumps(data), symbols, 99)  # /ws/<symbol>@bookTicker: no wrapper, no "e"
    assert isinstance(raw_stream, dict) and raw_stream["quote_id"] == "1"


def test_a_rest_trade_id_past_int64_is_a_payload_error() -> None:
    item = {"id": 2**63, "price": "1.0", "qty": "1.0", "time": 1617566591314, "isBuyerMaker": True}
    with pytest.raises(PayloadError) as caught:
        normalize_rest_trade(item, "BTCUSDT", shipped_directory(), 1)
    assert (caught.value.reason, caught.value.detail) == (
        "bad_field:id",
        "field 'id' is 9223372036854775808, beyond a 64-bit integer",
    )
    item |= {"id": 2**63 - 1}
    assert normalize_rest_trade(item, "BTCUSDT", shipped_directory(), 1)["source_sequence"] == 2**63 - 1


@pytest.mark.parametrize(
    ("raw", "table"),
    [
        (b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUp', BOOK_UPDATES_V2),
        (b'{"stream":"btcusdt@depth","data":{"e":"depthUpdate","E":1,"s":"BTC', BOOK_UPDATES_V2),
        (b'{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":1,"u":2,"b":[["x","1"]],"a":[]}', BOOK_UPDATES_V2),
        (b'{"stream":"btcusdt@depth5@100ms","data":{"lastUpdateId":1,"bids":[["x"', BOOK_SNAPSHOTS_V2),
        (b'{"stream":"btcusdt@bookTicker","data":{"u":7,"s":"BTCUSDT","b":"-1"', QUOTES_V2),
        (b'{"stream":"btcusdt@trade","data":{"e":"trade"', TRADES_V2),
    ],
)
def test_a_rejected_frame_goes_to_the_dlq_of_the_table_it_was_meant_for(raw: bytes, table: RecordSpec) -> None:
    assert intended_spec(raw) is table
