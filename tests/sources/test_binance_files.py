"""data.binance.vision files → trades_v2 / bars_v2, on the real published rows."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from k2.core.batch import SourceBatch
from k2.samples import BINANCE_EXCHANGE_INFO as EXCHANGE_INFO
from k2.samples import BINANCE_PUBLIC_DATA as VISION
from k2.samples import BINANCE_REST_RESPONSES as REST
from k2.schema.codecs import datetime_from_micros
from k2.schema.fields import BARS_V2, TRADES_V2
from k2.sources.binance.files import BinanceFileSource, ChecksumError, describe_file
from k2.sources.binance.normalize import normalize_agg_trade, normalize_rest_trade
from k2.sources.binance.symbols import SymbolDirectory, shipped_directory
from tests.binance_metadata import SAMPLE_PAIRS

ADABTC = VISION / "ADABTC-1m-2021-11-27.csv"
DOGE = VISION / "DOGEUSDT-1s-2025-01-01.excerpt.csv"
FUTURES = VISION / "futures-cm-BTCUSD_PERP-1h-2023-10-27.excerpt.csv"


def _load(paths: list[Path], **options: Any) -> list[SourceBatch]:
    return list(BinanceFileSource(paths, **{"symbols": SAMPLE_PAIRS, **options}).batches())


def _utc(micros: int) -> str:
    return datetime_from_micros(micros).isoformat()


def _write_checksum(path: Path, digest: str | None = None) -> None:
    digest = digest or hashlib.sha256(path.read_bytes()).hexdigest()
    path.with_name(path.name + ".CHECKSUM").write_text(f"{digest}  {path.name}\n")


def _rest_trade_rows(time_scale: int = 1) -> list[str]:
    items = orjson.loads((REST / "spot_market_trades.json").read_bytes())
    return [
        f"{t['id']},{t['price']},{t['qty']},{t['quoteQty']},{t['time'] * time_scale},{t['isBuyerMaker']},True"
        for t in items
    ]


# --- klines --------------------------------------------------------------------------------------------------------


def test_millisecond_era_klines_give_utc_open_and_close_times() -> None:
    (batch,) = _load([ADABTC])
    assert batch.spec is BARS_V2 and batch.rows_read == 10 and not batch.rejects
    first = batch.records[0]
    assert set(first) == set(BARS_V2.field_names)
    assert (first["symbol"], first["interval"], first["exchange"], first["asset_class"]) == (
        "ADABTC", "1m", "binance", "crypto",
    )  # fmt: skip
    assert _utc(first["timestamp"]) == "2021-11-27T00:00:00+00:00"
    assert first["close_time"] == 1637971259999999  # 1637971259999 ms: the bar's last microsecond
    assert (first["open"], first["high"], first["low"], first["close"]) == tuple(
        Decimal(x) for x in ("0.00002853", "0.00002854", "0.00002851", "0.00002854")
    )
    assert (first["volume"], first["quote_volume"], first["trade_count"]) == (
        Decimal("36304.2"), Decimal("1.03547608"), 79,
    )  # fmt: skip
    assert (first["taker_buy_base_volume"], first["taker_buy_quote_volume"]) == (
        Decimal("19523"),
        Decimal("0.55694227"),
    )
    assert first["vendor_data"]["currency"] == "BTC"
    assert len({r["message_id"] for r in batch.records}) == 10


def test_microsecond_era_klines_from_2025_give_the_same_utc_times() -> None:
    (batch,) = _load([DOGE])
    first, _, empty = batch.records
    assert first["timestamp"] == 1735689600000000
    assert _utc(first["timestamp"]) == "2025-01-01T00:00:00+00:00"
    assert first["close_time"] == 1735689600999999
    assert empty["trade_count"] == 0 and empty["volume"] == 0  # a 1s candle with no trade is still a bar
    # both eras: close_time = open + interval - 1 us
    (ada,) = _load([ADABTC])
    assert {r["close_time"] - r["timestamp"] + 1 for r in ada.records} == {60_000_000}
    assert {r["close_time"] - r["timestamp"] + 1 for r in batch.records} == {1_000_000}


def test_futures_header_row_is_detected_and_not_counted(tmp_path: Path) -> None:
    (batch,) = _load([FUTURES])
    assert batch.rows_read == 3 and len(batch.records) == 3 and not batch.rejects
    assert (batch.exchange, batch.asset_class.value) == ("binance_cm", "futures")
    first = batch.records[0]
    assert first["symbol"] == "BTCUSD_PERP" and _utc(first["timestamp"]) == "2023-10-27T00:00:00+00:00"
    assert first["volume"] == Decimal("409953")
    assert first["vendor_data"]["currency"] == "USD" and first["vendor_data"]["volume_unit"] == "contracts"
    # Binance's own name carries no market prefix: the header alone says "futures", the USD quote says COIN-M
    plain = tmp_path / "BTCUSD_PERP-1h-2023-10-27.csv"
    shutil.copy(FUTURES, plain)
    (again,) = _load([plain])
    assert again.exchange == "binance_cm" and [r["close"] for r in again.records] == [r["close"] for r in batch.records]
    # a spot file has no header: its first line is data
    (spot,) = _load([VISION / "BTCUSDT-1h-2023-10-27.excerpt.csv"])
    assert spot.rows_read == 3 and spot.exchange == "binance"


# --- zip and CHECKSUM ----------------------------------------------------------------------------------------------


def test_zip_with_matching_checksum_is_verified_and_loaded(tmp_path: Path) -> None:
    archive = tmp_path / "ADABTC-1m-2021-11-27.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(ADABTC, ADABTC.name)
    _write_checksum(archive)
    source = BinanceFileSource([archive], symbols=SAMPLE_PAIRS)
    (batch,) = list(source.batches())
    assert source.verified == [archive]
    assert [r["message_id"] for r in batch.records] == [r["message_id"] for r in _load([ADABTC])[0].records]


def test_checksum_mismatch_refuses_the_whole_load(tmp_path: Path) -> None:
    good = tmp_path / "ADABTC-1m-2021-11-27.csv"
    shutil.copy(ADABTC, good)
    bad = tmp_path / "DOGEUSDT-1s-2025-01-01.csv"
    shutil.copy(DOGE, bad)
    _write_checksum(bad, "0" * 64)
    yielded: list[SourceBatch] = []
    with pytest.raises(ChecksumError, match=r"does not match .*download it again"):
        yielded.extend(BinanceFileSource([good, bad], symbols=SAMPLE_PAIRS).batches())
    assert yielded == []  # not even the good file's rows


# --- trades and aggTrades ------------------------------------------------------------------------------------------


def test_trades_file_rows_match_the_rest_api_records(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades-2021-10-22.csv"
    path.write_text("\n".join(_rest_trade_rows()) + "\n")
    (batch,) = _load([path])
    assert batch.spec is TRADES_V2 and batch.rows_read == 10 and not batch.rejects
    rest = [
        normalize_rest_trade(i, "BTCUSDT", shipped_directory(), 1)
        for i in orjson.loads((REST / "spot_market_trades.json").read_bytes())
    ]
    assert [r["message_id"] for r in batch.records] == [r["message_id"] for r in rest]
    assert [(r["price"], r["quantity"], r["side"], r["timestamp"]) for r in batch.records] == [
        (r["price"], r["quantity"], r["side"], r["timestamp"]) for r in rest
    ]
    assert batch.records[0]["platform_sequence"] == 1
    assert batch.records[0]["vendor_data"]["source_file"] == path.name
    assert "receive_time_us" not in batch.records[0]["vendor_data"]


def test_microsecond_trades_files_from_2025_keep_the_same_instants(tmp_path: Path) -> None:
    ms, us = tmp_path / "BTCUSDT-trades-2021-10-22.csv", tmp_path / "BTCUSDT-trades-2025-01-01.csv"
    ms.write_text("\n".join(_rest_trade_rows()))
    us.write_text("\n".join(_rest_trade_rows(time_scale=1000)))
    assert [r["timestamp"] for r in _load([ms])[0].records] == [r["timestamp"] for r in _load([us])[0].records]


def test_backfilled_aggtrades_get_the_ids_the_live_stream_gave_them(tmp_path: Path) -> None:
    items = orjson.loads((REST / "spot_market_agg_trades.json").read_bytes())
    path = tmp_path / "BTCUSDT-aggTrades-2021-10-22.zip"
    rows = "".join(f"{a['a']},{a['p']},{a['q']},{a['f']},{a['l']},{a['T']},{a['m']},{a['M']}\n" for a in items)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("BTCUSDT-aggTrades-2021-10-22.csv", rows)
    (batch,) = _load([path], symbols=SymbolDirectory.from_file(EXCHANGE_INFO))
    live = [normalize_agg_trade({**a, "s": "BTCUSDT"}, shipped_directory(), 1) for a in items]
    assert [r["message_id"] for r in batch.records] == [r["message_id"] for r in live]
    assert [r["source_sequence"] for r in batch.records] == list(range(966492862, 966492872))


def test_futures_aggtrades_with_header_and_lowercase_booleans_load(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-aggTrades-2023-05-01.csv"
    path.write_text(
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
        "1290241731,1868.42,0.5,2943174956,2943174958,1682899200037,false\n"
    )
    (batch,) = _load([path])
    assert batch.exchange == "binance_um" and batch.rows_read == 1
    assert batch.records[0]["side"] == "BUY" and batch.records[0]["vendor_data"]["last_trade_id"] == "2943174958"


def test_bad_rows_become_rejects_with_raw_bytes_and_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-trades-2021-10-22.csv"
    rows = _rest_trade_rows()[:3]
    rows[1] = rows[1].replace("60650.01000000", "sixty")
    path.write_text("\n".join([rows[0], "", rows[1], "1,2,3", rows[2], "", ""]))
    (batch,) = _load([path])
    assert batch.rows_read == len(batch.records) + len(batch.rejects) == 5
    assert [(r.reason, r.position) for r in batch.rejects] == [
        ("blank_line", 2), ("bad_price", 3), ("wrong_column_count", 4),
    ]  # fmt: skip
    assert batch.rejects[1].raw == rows[1].encode()


def test_unknown_quote_asset_rejects_every_row_unless_exchange_info_knows_it(tmp_path: Path) -> None:
    path = tmp_path / "NKNXYZ-1m-2021-11-27.csv"
    shutil.copy(ADABTC, path)
    (batch,) = _load([path])
    assert not batch.records and {r.reason for r in batch.rejects} == {"unknown_symbol"}
    # by default only the shipped exchangeInfo is asked: it lists ADABTC (ADA/BTC) but not XRPAUD, a real pair
    (default,) = list(BinanceFileSource([ADABTC]).batches())
    assert len(default.records) == 10 and {r["vendor_data"]["currency"] for r in default.records} == {"BTC"}
    unlisted = tmp_path / "XRPAUD-1m-2021-11-27.csv"
    shutil.copy(ADABTC, unlisted)
    (lacking,) = list(BinanceFileSource([unlisted]).batches())
    assert not lacking.records and len(lacking.rejects) == 10
    assert "'XRPAUD' is not in" in lacking.rejects[0].detail


def test_currency_of_a_file_is_the_quote_asset_from_exchange_info(tmp_path: Path) -> None:
    """Pairs whose quote a suffix guess got wrong (TUSD as USD) or could not tell (PAX), with the shipped metadata."""
    currencies = {}
    for symbol in ("QTUMETH", "AXSBNB", "NEOUSDC", "BNBBRL", "BNBTUSD", "WAVESPAX"):
        path = tmp_path / f"{symbol}-trades-2021-10-22.csv"
        path.write_text("\n".join(_rest_trade_rows()[:2]) + "\n")
        (batch,) = list(BinanceFileSource([path]).batches())
        assert len(batch.records) == 2 and not batch.rejects
        currencies[symbol] = {r["currency"] for r in batch.records}
    assert currencies == {
        "QTUMETH": {"ETH"}, "AXSBNB": {"BNB"}, "NEOUSDC": {"USDC"},
        "BNBBRL": {"BRL"}, "BNBTUSD": {"TUSD"}, "WAVESPAX": {"PAX"},
    }  # fmt: skip


def test_kind_comes_from_the_name_and_can_be_overridden(tmp_path: Path) -> None:
    assert describe_file(Path("BTCUSDT-aggTrades-2024-01.zip")).kind == "aggTrades"
    assert describe_file(Path("BTCUSDT-1mo-2024-01.zip")).interval == "1mo"
    info = describe_file(Path("data/futures/um/daily/trades/BTCUSDT/BTCUSDT-trades-2024-01-01.zip"))
    assert (info.kind, info.symbol, info.market) == ("trades", "BTCUSDT", "um")
    with pytest.raises(ValueError, match=r"expected data\.binance\.vision names"):
        describe_file(Path("prices.csv"))
    path = tmp_path / "BTCUSDT-trades-2021-10-22.csv"  # holds aggTrades rows despite its name
    path.write_text("966492862,60759.60000000,0.00841000,1111480471,1111480471,1634944096633,False,True\n")
    (batch,) = _load([path], kind="aggTrades")
    assert batch.records[0]["vendor_data"]["channel"] == "aggTrade"
