"""data.binance.vision futures bookTicker → quotes_v2 and bookDepth → book_depth_v2.

The files are built in tmp_path as test fixtures, in the published layout (header row optional, one CSV per zip).
"""

from __future__ import annotations

import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from k2.core.batch import SourceBatch
from k2.core.errors import UserError
from k2.schema.arrow import records_from_arrow, records_to_arrow
from k2.schema.codecs import message_id
from k2.schema.fields import BOOK_DEPTH_V2, QUOTES_V2
from k2.sources.binance.files import BinanceFileSource, FileKind, describe_file
from k2.sources.binance.normalize import normalize_book_ticker
from tests.binance_metadata import SAMPLE_PAIRS

TICKER_HEADER = "update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time"
TICKER_ROWS = [
    "3483405538425,34095.30,12.562,34095.40,3.180,1698364800005,1698364800010",
    "3483405539701,34095.30,12.404,34095.40,3.180,1698364800012,1698364800016",
    "3483405541001,34095.20,0.001,34095.40,2.911,1698364800021,1698364800027",
]
DEPTH_HEADER = "timestamp,percentage,depth,notional"
DEPTH_ROWS = [
    "2023-10-27 00:00:08,-5,7702.72500000,255937810.33280000",
    "2023-10-27 00:00:08,-0.20,312.40900000,10645213.42840000",
    "2023-10-27 00:00:08,0.20,402.61500000,13734160.10270000",
    "2023-10-27 00:00:08,5.00,8011.15200000,277036622.55920000",
]
OCT_27_00_00_08_US = 1_698_364_808_000_000


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def _load(paths: list[Path], **options: Any) -> list[SourceBatch]:
    return list(BinanceFileSource(paths, symbols=SAMPLE_PAIRS, **options).batches())


def test_names_tell_the_book_file_kinds() -> None:
    ticker = describe_file(Path("BTCUSDT-bookTicker-2023-10-27.zip"))
    depth = describe_file(Path("data/futures/cm/daily/bookDepth/BTCUSD_PERP/BTCUSD_PERP-bookDepth-2023-10-27.csv"))
    assert (ticker.kind, ticker.symbol, ticker.market, ticker.interval) == (FileKind.BOOK_TICKER, "BTCUSDT", None, None)
    assert (depth.kind, depth.symbol, depth.market.value) == (FileKind.BOOK_DEPTH, "BTCUSD_PERP", "cm")


@pytest.mark.parametrize("header", [True, False], ids=["header", "no_header"])
def test_book_ticker_rows_become_futures_quotes_timed_by_event_time(tmp_path: Path, header: bool) -> None:
    path = _write(tmp_path / "BTCUSDT-bookTicker-2023-10-27.csv", ([TICKER_HEADER] if header else []) + TICKER_ROWS)
    (batch,) = _load([path])
    assert batch.spec is QUOTES_V2 and (batch.exchange, batch.asset_class.value) == ("binance_um", "futures")
    assert batch.rows_read == 3 and len(batch.records) == 3 and not batch.rejects
    first = batch.records[0]
    line = 2 if header else 1
    assert {k: v for k, v in first.items() if k != "ingestion_timestamp"} == {
        "message_id": message_id("binance_um", "quotes", "BTCUSDT", "bookTicker:3483405538425"),
        "quote_id": "3483405538425",
        "symbol": "BTCUSDT",
        "exchange": "binance_um",
        "asset_class": "futures",
        "timestamp": 1_698_364_800_010_000,
        "bid_price": Decimal("34095.30000000"),
        "bid_quantity": Decimal("12.56200000"),
        "ask_price": Decimal("34095.40000000"),
        "ask_quantity": Decimal("3.18000000"),
        "currency": "USDT",
        "source_sequence": 3483405538425,
        "platform_sequence": line,
        "vendor_data": {
            "channel": "bookTicker",
            "timestamp_source": "event_time",
            "transaction_time": "1698364800005",
            "event_time": "1698364800010",
            "source_file": "BTCUSDT-bookTicker-2023-10-27.csv",
        },
    }
    assert [r["bid_quantity"] for r in batch.records] == [Decimal("12.562"), Decimal("12.404"), Decimal("0.001")]
    assert records_from_arrow(records_to_arrow(QUOTES_V2, batch.records)) == batch.records


def test_a_file_quote_is_the_row_the_live_futures_stream_gives_the_same_update(tmp_path: Path) -> None:
    path = _write(tmp_path / "BTCUSDT-bookTicker-2023-10-27.csv", [TICKER_HEADER, TICKER_ROWS[2]])
    (batch,) = _load([path])
    frame = {"e": "bookTicker", "u": 3483405541001, "s": "BTCUSDT", "b": "34095.20", "B": "0.001"}
    frame |= {"a": "34095.40", "A": "2.911", "T": 1698364800021, "E": 1698364800027}
    live = normalize_book_ticker(frame, SAMPLE_PAIRS, 0, exchange="binance_um", asset_class="futures")
    (loaded,) = batch.records
    assert (loaded["message_id"], loaded["timestamp"]) == (live["message_id"], live["timestamp"])


def test_book_depth_bands_keep_exact_decimals_and_signed_percentages(tmp_path: Path) -> None:
    archive = tmp_path / "BTCUSDT-bookDepth-2023-10-27.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("BTCUSDT-bookDepth-2023-10-27.csv", "\n".join([DEPTH_HEADER, *DEPTH_ROWS]) + "\n")
    (batch,) = _load([archive])
    assert batch.spec is BOOK_DEPTH_V2 and batch.rows_read == 4 and not batch.rejects
    assert (batch.exchange, batch.asset_class.value) == ("binance_um", "futures")
    rows = batch.records
    assert [(r["percentage"], r["depth"], r["notional"]) for r in rows] == [
        (Decimal("-5"), Decimal("7702.725"), Decimal("255937810.3328")),
        (Decimal("-0.2"), Decimal("312.409"), Decimal("10645213.4284")),
        (Decimal("0.2"), Decimal("402.615"), Decimal("13734160.1027")),
        (Decimal("5"), Decimal("8011.152"), Decimal("277036622.5592")),
    ]
    assert {r["timestamp"] for r in rows} == {OCT_27_00_00_08_US}
    assert rows[0]["message_id"] == message_id(
        "binance_um", "book_depth", "BTCUSDT", f"bookDepth:{OCT_27_00_00_08_US}:-5.00000000"
    )
    assert rows[3]["vendor_data"] == {
        "timestamp_text": "2023-10-27 00:00:08",
        "source_file": "BTCUSDT-bookDepth-2023-10-27.zip",
    }
    assert records_from_arrow(records_to_arrow(BOOK_DEPTH_V2, rows)) == rows


def test_book_depth_without_header_and_percentage_spelled_two_ways_gets_the_same_ids(tmp_path: Path) -> None:
    plain = _write(tmp_path / "BTCUSDT-bookDepth-2023-10-27.csv", DEPTH_ROWS)
    (tmp_path / "padded").mkdir()
    padded = _write(
        tmp_path / "padded" / "BTCUSDT-bookDepth-2023-10-27.csv", [r.replace(",-5,", ",-5.00,") for r in DEPTH_ROWS]
    )
    (a,), (b,) = _load([plain]), _load([padded])
    assert a.rows_read == 4 and [r["message_id"] for r in a.records] == [r["message_id"] for r in b.records]


def test_bad_book_lines_are_one_reject_each_and_every_line_is_counted(tmp_path: Path) -> None:
    depth = _write(
        tmp_path / "BTCUSDT-bookDepth-2023-10-27.csv",
        [
            DEPTH_HEADER,
            DEPTH_ROWS[0],
            "2023-10-27T00:00:38,-5,1,2",
            "2023-10-27 00:00:38,minus five,1,2",
            "2023-10-27 00:00:38,-5,-1,2",
            "2023-10-27 00:00:38,-5,1",
            DEPTH_ROWS[1],
        ],
    )
    ticker = _write(
        tmp_path / "BTCUSDT-bookTicker-2023-10-27.csv",
        [TICKER_ROWS[0], "x,1,1,2,1,1698364800005,1698364800010", "1,1,1,2,1,1698364800005,soon", TICKER_ROWS[1]],
    )
    depth_batch, ticker_batch = _load([depth, ticker])
    assert (depth_batch.rows_read, len(depth_batch.records), len(depth_batch.rejects)) == (6, 2, 4)
    assert [(r.reason, r.position, r.detail) for r in depth_batch.rejects] == [
        (
            "bad_field:timestamp",
            3,
            "BTCUSDT-bookDepth-2023-10-27.csv line 3: timestamp '2023-10-27T00:00:38' is not YYYY-MM-DD HH:MM:SS",
        ),
        (
            "bad_field:percentage",
            4,
            "BTCUSDT-bookDepth-2023-10-27.csv line 4: percentage: not a decimal number: 'minus five'",
        ),
        ("bad_quantity", 5, "BTCUSDT-bookDepth-2023-10-27.csv line 5: field 'depth' is negative: '-1'"),
        (
            "wrong_column_count",
            6,
            "BTCUSDT-bookDepth-2023-10-27.csv line 6: bookDepth rows have 4 columns, found 3",
        ),
    ]
    assert depth_batch.rejects[0].raw == b"2023-10-27T00:00:38,-5,1,2"
    assert (ticker_batch.rows_read, len(ticker_batch.records), len(ticker_batch.rejects)) == (4, 2, 2)
    assert [(r.reason, r.position) for r in ticker_batch.rejects] == [
        ("bad_field:update_id", 2),
        ("bad_field:event_time", 3),
    ]


def test_book_files_are_futures_only(tmp_path: Path) -> None:
    path = _write(tmp_path / "BTCUSDT-bookTicker-2023-10-27.csv", TICKER_ROWS)
    with pytest.raises(UserError, match="publishes bookTicker files for futures only; load it as market um"):
        BinanceFileSource([path], symbols=SAMPLE_PAIRS, market="spot").check()


def test_coin_m_book_ticker_quotes_are_in_usd_and_count_contracts(tmp_path: Path) -> None:
    path = _write(tmp_path / "BTCUSD_PERP-bookTicker-2023-10-27.csv", [TICKER_HEADER, "77,34090.1,1200,34090.2,35,1,2"])
    ((quote,),) = [b.records for b in _load([path])]
    assert (quote["exchange"], quote["currency"], quote["bid_quantity"], quote["timestamp"]) == (
        "binance_cm",
        "USD",
        Decimal("1200"),
        2_000,
    )
    assert quote["vendor_data"]["quantity_unit"] == "contracts"
