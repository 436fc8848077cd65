"""`k2 load capture`'s source: recorded captures read as data, on the real sessions and on a newer-format file."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from k2.core.batch import SourceBatch
from k2.core.errors import UserError
from k2.ingest.reconcile import Reconciliation
from k2.samples import BINANCE_CAPTURE_2021_04_04 as APRIL
from k2.samples import BINANCE_CAPTURE_2021_10_12 as OCTOBER
from k2.samples import BINANCE_DEPTH_SNAPSHOTS_2021_10_12 as HTTP_ONLY
from k2.sources.binance.capture import ws_frames
from k2.sources.binance.capture_source import CaptureSource


def read_all(source: CaptureSource) -> tuple[list[SourceBatch], Reconciliation]:
    """The batches, accounted for the way the load pipeline accounts for them."""
    source.check()
    recon = Reconciliation(source.describe())
    batches = list(source.batches())
    for batch in batches:
        recon.read += batch.rows_read
        recon.count_sent(batch)
    return batches, recon


def per_symbol(batches: list[SourceBatch]) -> Counter[tuple[str, str, str]]:
    """Rows per (table, symbol, channel or stream); a stream_gaps row by its stream."""
    return Counter(
        (batch.spec.name, record["symbol"], record.get("stream") or _channel(record["vendor_data"]))
        for batch in batches
        for record in batch.all_records()
    )


def _channel(vendor: dict[str, str]) -> str:
    return vendor.get("channel") or vendor.get("stream", "")


def rows(batches: list[SourceBatch], table: str) -> list[dict]:
    return [record for batch in batches if batch.spec.name == table for record in batch.all_records()]


def test_the_april_capture_loads_every_agg_trade_with_its_receipt_time() -> None:
    source = CaptureSource([APRIL])
    batches, recon = read_all(source)
    trades = Counter((r["symbol"], r["vendor_data"]["channel"]) for r in rows(batches, "trades_v2"))
    assert trades == {("BTCUSDT", "aggTrade"): 1227, ("ETHUSDT", "aggTrade"): 506, ("DOTUSDT", "aggTrade"): 177}
    # 1,910 trades, 28,440 depth levels of 2,688 diff events, 6,000 levels of the 3 REST snapshots
    assert (recon.read, recon.produced, sum(recon.rejected.values()), recon.gap_records) == (36350, 36350, 0, 0)
    assert recon.source_balanced
    # 118 kline frames and the connection line are not data K2 stores
    assert source.passed == 119
    btc = [r for r in rows(batches, "trades_v2") if r["symbol"] == "BTCUSDT"]
    assert [r["source_sequence"] for r in btc] == list(range(665076760, 665077987))
    first = btc[0]
    # line 2: "1617566591.326123: ...", the first BTCUSDT aggTrade arrives on line 8 at 1617566592.629139
    assert (first["timestamp"], first["ingestion_timestamp"]) == (1617566591314000, 1617566592629139)
    assert first["vendor_data"]["receive_time_us"] == "1617566592629139"
    assert first["vendor_data"]["event_time_us"] == "1617566591315000"
    assert (first["price"], first["quantity"], first["side"]) == (Decimal("58001.03"), Decimal("0.086205"), "SELL")
    # platform_sequence is the capture's line number, as for other files
    lines = {orjson.loads(f.raw)["data"]["a"]: f.line_no for f in ws_frames(APRIL) if b"btcusdt@aggTrade" in f.raw}
    assert [r["platform_sequence"] for r in btc] == [lines[r["source_sequence"]] for r in btc]
    assert btc[0]["platform_sequence"] == 8


def test_the_october_capture_loads_its_quotes_on_the_capture_clock() -> None:
    batches, recon = read_all(CaptureSource([OCTOBER]))
    assert per_symbol(batches) == {
        ("quotes_v2", "NKNUSDT", "bookTicker"): 74,
        ("quotes_v2", "LRCBTC", "bookTicker"): 9,
        ("quotes_v2", "BLZETH", "bookTicker"): 1,
        ("trades_v2", "NKNUSDT", "aggTrade"): 1,
        ("trades_v2", "LRCBTC", "aggTrade"): 1,
        # its depth diffs (the snapshots are in the HTTP file, not given here)
        ("book_updates_v2", "NKNUSDT", "nknusdt@depth@100ms"): 379,
        ("book_updates_v2", "LRCBTC", "lrcbtc@depth@100ms"): 27,
        ("book_updates_v2", "BLZETH", "blzeth@depth@100ms"): 12,
        ("book_updates_v2", "RUNEEUR", "runeeur@depth@100ms"): 4,
    }
    assert (recon.read, recon.produced, recon.source_balanced) == (508, 508, True)
    quote = next(r for b in batches for r in b.all_records() if "quote_id" in r)
    # a bookTicker carries no event time: it is timed by the line's receipt time, 2021-10-12, not the load's
    assert quote["quote_id"] == "499869768"
    assert quote["timestamp"] == quote["ingestion_timestamp"] == 1633998513377805
    assert (quote["bid_price"], quote["ask_price"]) == (Decimal("0.3521"), Decimal("0.3526"))


NEWER = (
    b"configuration: {'log': {'filename': 'feedhandler.log'}, 'uvloop': True}\n"
    b"wss://stream.binance.com:9443/stream?timeUnit=MICROSECOND <-> 1700000000.123456\n"
    b'wss://stream.binance.com:9443/stream <- 1700000000.2: {"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}\n'
    b'1700000000.5: {"result":null,"id":1}\n'
    b'1700000001.000001: {"stream":"btcusdt@trade","data":{"e":"trade","E":1700000000999000,"s":"BTCUSDT",'
    b'"t":12345,"p":"37000.10000000","q":"0.50000000","T":1700000000998000,"m":false,"M":true}}\n'
    b"this line was cut by a crash\n"
    b'1700000001.5: {"stream":"btcusdt@bookTicker","data":{"u":7,"s":"BTCUSDT","b":"-1","B":"1","a":"2","A":"1"}}\n'
    b'1700000002.25: {"stream":"btcusdt@bookTicker","data":{"u":8,"s":"BTCUSDT","b":"36999.00000000",'
    b'"B":"1.00000000","a":"37001.00000000","A":"2.00000000"}}\n'
)


def test_a_newer_capture_with_a_malformed_line_balances_and_keeps_the_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "BINANCE.ws.7.0"
    path.write_bytes(NEWER)
    source = CaptureSource([path])
    batches, recon = read_all(source)
    assert (recon.read, recon.produced, dict(recon.rejected)) == (4, 2, {"bad_capture_line": 1, "bad_price": 1})
    assert recon.source_balanced
    assert source.passed == 4  # configuration, connection, subscription sent, its acknowledgement
    trade = next(r for b in batches for r in b.all_records() if "trade_id" in r)
    # the URL asked for microseconds: the frame's times are taken as they are
    assert (trade["trade_id"], trade["timestamp"], trade["ingestion_timestamp"]) == (
        "12345",
        1700000000998000,
        1700000001000001,
    )
    quote = next(r for b in batches for r in b.all_records() if "quote_id" in r)
    assert (quote["quote_id"], quote["timestamp"]) == ("8", 1700000002250000)
    rejects = {(b.spec.name, r.reason): r for b in batches for r in b.rejects}
    torn = rejects["trades_v2", "bad_capture_line"]
    assert (torn.raw, torn.origin, torn.position) == (b"this line was cut by a crash", str(path), 6)
    assert torn.detail.startswith("BINANCE.ws.7.0 line 6: not '<time>: <frame>'")
    negative = rejects["quotes_v2", "bad_price"]  # a bookTicker frame: into the quotes' DLQ
    assert negative.position == 7
    assert negative.detail == "BINANCE.ws.7.0 line 7: field 'b' is negative: '-1'"
    assert negative.raw.startswith(b'{"stream":"btcusdt@bookTicker"')


def test_batches_hold_at_most_chunk_rows_and_lose_nothing() -> None:
    whole, _ = read_all(CaptureSource([APRIL]))
    batches, recon = read_all(CaptureSource([APRIL], chunk_rows=500))
    # a chunk closes once it reached 500 rows: past them by at most one line's rows (a snapshot's 2,000 levels)
    event_rows = Counter((r["symbol"], r["last_update_id"]) for r in rows(whole, "book_updates_v2"))
    most = 499 + max(event_rows.values())
    assert len(batches) > 70 and all(b.rows_read <= most for b in batches if b.spec.name != "book_snapshots_v2")
    assert sorted(b.rows_read for b in batches if b.spec.name == "book_snapshots_v2") == [2000, 2000, 2000]
    assert recon.produced == 36350
    ids = [r["source_sequence"] for r in rows(batches, "trades_v2") if r["symbol"] == "BTCUSDT"]
    assert ids == list(range(665076760, 665077987))
    for table in ("book_updates_v2", "book_snapshots_v2"):
        assert rows(batches, table) == rows(whole, table)  # the same rows in the same order, however chunked


def test_the_april_capture_records_each_symbols_book_levels_and_snapshots() -> None:
    batches, _ = read_all(CaptureSource([APRIL]))
    assert per_symbol([b for b in batches if b.spec.name.startswith("book_")]) == {
        ("book_updates_v2", "BTCUSDT", "btcusdt@depth@100ms"): 9928,
        ("book_updates_v2", "ETHUSDT", "ethusdt@depth@100ms"): 11994,
        ("book_updates_v2", "DOTUSDT", "dotusdt@depth@100ms"): 6518,
        ("book_snapshots_v2", "BTCUSDT", ""): 2000,
        ("book_snapshots_v2", "ETHUSDT", ""): 2000,
        ("book_snapshots_v2", "DOTUSDT", ""): 2000,
    }
    # line 4: the first BTCUSDT diff, received at 1617566592.114429, event time 1617566591307 ms
    first = [r for r in rows(batches, "book_updates_v2") if r["symbol"] == "BTCUSDT"][:3]
    assert [(r["side"], r["price"], r["quantity"]) for r in first] == [
        ("BID", Decimal("55000.00000000"), Decimal("135.66466600")),
        ("ASK", Decimal("58042.29000000"), Decimal("0.09700000")),
        ("ASK", Decimal("58055.02000000"), Decimal("0.75000000")),
    ]
    assert {(r["symbol"], r["first_update_id"], r["last_update_id"]) for r in first} == {
        ("BTCUSDT", 9893032989, 9893032991)
    }
    assert {(r["timestamp"], r["ingestion_timestamp"]) for r in first} == {(1617566591307000, 1617566592114429)}
    snapshot = next(r for r in rows(batches, "book_snapshots_v2") if r["symbol"] == "BTCUSDT")
    # line 5: https://www.binance.com/api/v1/depth?symbol=BTCUSDT&limit=1000 -> 1617566592.339385
    assert (snapshot["last_update_id"], snapshot["timestamp"]) == (9893033066, 1617566592339385)
    assert snapshot["vendor_data"] == {"timestamp_source": "receive_time", "limit": "1000"}


def test_the_october_ws_and_http_files_together_give_its_books_without_a_gap() -> None:
    source = CaptureSource([OCTOBER, HTTP_ONLY])
    batches, recon = read_all(source)
    counts = Counter(b.spec.name for b in batches for _ in b.all_records())
    assert counts == {"trades_v2": 2, "quotes_v2": 84, "book_updates_v2": 422, "book_snapshots_v2": 4648}
    assert (recon.read, recon.produced, recon.gap_records, recon.source_balanced) == (5156, 5156, 0, True)
    nkn = source.recorder.book("NKNUSDT")
    assert nkn is not None and nkn.last_update_id == 499870179  # the snapshots put in force, the diffs applied


DEPTH = (
    b"wss://stream.binance.com:9443/stream?streams=btcusdt@depth@100ms <-> 1700000000.1\n"
    b"https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=5 -> 1700000000.2: "
    b'{"lastUpdateId":10,"bids":[["100.00","1.5"]],"asks":[["101.00","2.0"],["102.00","0"]]}\n'
    b'1700000000.3: {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1700000000250,"s":"BTCUSDT",'
    b'"U":9,"u":11,"b":[["100.00","0"]],"a":[]}}\n'
    b'1700000000.4: {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1700000000350,"s":"BTC\n'
    b'1700000000.5: {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1700000000450,"s":"BTCUSDT",'
    b'"U":15,"u":16,"b":[],"a":[["101.00","-3"]]}}\n'
    b'1700000000.6: {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1700000000550,"s":"BTCUSDT",'
    b'"U":15,"u":16,"b":[["99.00","4"]],"a":[]}}\n'
    b'https://api.binance.com/api/v3/depth?symbol=ETHUSDT -> 1700000000.7: {"code":-1003,"msg":"Too many requests"}\n'
    b'https://api.binance.com/api/v3/depth?limit=5 -> 1700000000.8: {"lastUpdateId":1,"bids":[],"asks":[]}\n'
    b'1700000000.9: {"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1700000000850,"s":"BTCUSDT",'
    b'"U":17,"u":17,"b":[],"a":[]}}\n'
)


def test_bad_depth_lines_are_rejects_in_the_book_dlqs_and_a_break_is_a_stream_gaps_row(tmp_path: Path) -> None:
    path = tmp_path / "BINANCE.ws.8.0"
    path.write_bytes(DEPTH)
    source = CaptureSource([path])
    batches, recon = read_all(source)
    # read: 2 snapshot levels (the zero is no level), 1 + 1 update rows, 4 rejects
    assert (recon.read, recon.produced) == (8, 4)
    assert dict(recon.rejected) == {
        "malformed_json": 1, "bad_quantity": 1, "missing_field:lastUpdateId": 1, "missing_field:symbol": 1,
    }  # fmt: skip
    assert recon.source_balanced and source.passed == 2  # the connection line, the event of no level (line 9)
    rejects = {r.position: (b.spec.name, r.reason, r.detail) for b in batches for r in b.rejects}
    assert rejects == {
        4: ("book_updates_v2", "malformed_json", rejects[4][2]),
        5: ("book_updates_v2", "bad_quantity", "BINANCE.ws.8.0 line 5: field 'a' is negative: '-3'"),
        7: (
            "book_snapshots_v2", "missing_field:lastUpdateId",
            "BINANCE.ws.8.0 line 7: field 'lastUpdateId' is missing",
        ),
        8: (
            "book_snapshots_v2", "missing_field:symbol",
            "BINANCE.ws.8.0 line 8: the depth request https://api.binance.com/api/v3/depth?limit=5 names no symbol",
        ),
    }  # fmt: skip
    assert rejects[4][2].startswith("BINANCE.ws.8.0 line 4: frame is not JSON")
    torn = next(r for b in batches for r in b.rejects if r.position == 4)
    assert (torn.origin, torn.raw) == (str(path), DEPTH.splitlines()[3].partition(b": ")[2])
    # line 6 is U=15 after the book's update 11: updates 12..14 were lost
    (gap,) = rows(batches, "stream_gaps")
    assert (gap["stream"], gap["reason"], gap["channel"], gap["status"]) == (
        "btcusdt@depth@100ms", "sequence_break", "depth", "unrecoverable"
    )  # fmt: skip
    assert (gap["first_missing"], gap["last_missing"], gap["timestamp"]) == (12, 14, 1700000000600000)
    assert recon.gap_records == 1


def test_a_capture_of_rest_depth_snapshots_only_loads_the_snapshots() -> None:
    source = CaptureSource([HTTP_ONLY])
    batches, recon = read_all(source)
    assert [(b.spec.name, b.rows_read) for b in batches] == [("book_snapshots_v2", 4648)]
    assert (recon.read, recon.produced, source.empty_files) == (4648, 4648, [])


def test_a_capture_of_no_data_k2_stores_is_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "BINANCE.ws.9.0"
    path.write_bytes(NEWER.split(b"\n1700000001.000001")[0] + b"\n")  # configuration, connection, subscription, ack
    source = CaptureSource([path])
    batches, recon = read_all(source)
    assert (batches, recon.read, source.passed, source.empty_files) == ([], 0, 4, [str(path)])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty: a capture holds one recorded line per frame"),
        (
            b"\n665076760,58001.03,0.086205,745522877,745522877,1617566591314,True,True\n",
            "is not a cryptofeed capture: line 2 starts b'665076760,58001.03,0.086205,745522877,74'; expected",
        ),
    ],
)
def test_a_file_that_is_not_a_capture_is_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "BTCUSDT-aggTrades-2021-04-04.csv"
    path.write_bytes(content)
    with pytest.raises(UserError, match="^" + str(path) + " ") as caught:
        CaptureSource([APRIL, path]).check()
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
