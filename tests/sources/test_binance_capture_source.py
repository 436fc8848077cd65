"""`k2 load capture`'s source: recorded captures read as data, on the real sessions and on a newer-format file."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest

from k2.core.batch import SourceBatch
from k2.core.errors import UserError
from k2.ingest.reconcile import Reconciliation
from k2.samples import BINANCE_CAPTURE_2021_04_04 as APRIL
from k2.samples import BINANCE_CAPTURE_2021_10_12 as OCTOBER
from k2.samples import BINANCE_DEPTH_SNAPSHOTS_2021_10_12 as HTTP_ONLY
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
    return Counter(
        (batch.spec.name, record["symbol"], record["vendor_data"]["channel"])
        for batch in batches
        for record in batch.all_records()
    )


def test_the_april_capture_loads_every_agg_trade_with_its_receipt_time() -> None:
    source = CaptureSource([APRIL])
    batches, recon = read_all(source)
    assert per_symbol(batches) == {
        ("trades_v2", "BTCUSDT", "aggTrade"): 1227,
        ("trades_v2", "ETHUSDT", "aggTrade"): 506,
        ("trades_v2", "DOTUSDT", "aggTrade"): 177,
    }
    assert (recon.read, recon.produced, sum(recon.rejected.values())) == (1910, 1910, 0)
    assert recon.source_balanced
    # 2,806 depth and kline frames, 3 REST snapshots and the connection line are not trade or quote data
    assert source.passed == 2810
    btc = [r for b in batches for r in b.all_records() if r["symbol"] == "BTCUSDT"]
    assert [r["source_sequence"] for r in btc] == list(range(665076760, 665077987))
    first = btc[0]
    # line 2: "1617566591.326123: ...", the first BTCUSDT aggTrade arrives on line 4 at 1617566592.629139
    assert (first["timestamp"], first["ingestion_timestamp"]) == (1617566591314000, 1617566592629139)
    assert first["vendor_data"]["receive_time_us"] == "1617566592629139"
    assert first["vendor_data"]["event_time_us"] == "1617566591315000"
    assert (first["price"], first["quantity"], first["side"]) == (Decimal("58001.03"), Decimal("0.086205"), "SELL")


def test_the_october_capture_loads_its_quotes_on_the_capture_clock() -> None:
    batches, recon = read_all(CaptureSource([OCTOBER]))
    assert per_symbol(batches) == {
        ("quotes_v2", "NKNUSDT", "bookTicker"): 74,
        ("quotes_v2", "LRCBTC", "bookTicker"): 9,
        ("quotes_v2", "BLZETH", "bookTicker"): 1,
        ("trades_v2", "NKNUSDT", "aggTrade"): 1,
        ("trades_v2", "LRCBTC", "aggTrade"): 1,
    }
    assert (recon.read, recon.produced, recon.source_balanced) == (86, 86, True)
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
    batches, recon = read_all(CaptureSource([APRIL], chunk_rows=500))
    # 4,716 frames in chunks of 500: ten trades batches (no quotes in April), each at most 500 rows
    assert len(batches) == 10 and max(b.rows_read for b in batches) <= 500
    assert recon.produced == 1910
    ids = [r["source_sequence"] for b in batches for r in b.all_records() if r["symbol"] == "BTCUSDT"]
    assert ids == list(range(665076760, 665077987))


def test_a_capture_of_rest_bodies_only_is_read_as_holding_no_records() -> None:
    source = CaptureSource([HTTP_ONLY])
    batches, recon = read_all(source)
    assert (batches, recon.read, source.empty_files) == ([], 0, [str(HTTP_ONLY)])


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
