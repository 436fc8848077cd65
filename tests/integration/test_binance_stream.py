"""Binance through the emulator, Kafka and the sink into Iceberg: every id exactly once, holes filled from REST."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from typer.testing import CliRunner

from k2.bus.broker import free_port
from k2.cli import app
from k2.config import Settings
from k2.ingest.pipeline import load
from k2.ingest.streaming import stream_binance
from k2.samples import BINANCE_CAPTURE_2021_04_04 as CAPTURE_2021_04_04
from k2.samples import BINANCE_CAPTURE_2021_10_12 as CAPTURE_2021_10_12
from k2.samples import BINANCE_PUBLIC_DATA
from k2.sources.binance.capture import ReplayClock
from k2.sources.binance.client import ClientLimits
from k2.sources.binance.emulator.faults import FaultSpec
from k2.sources.binance.emulator.server import BinanceEmulator
from k2.sources.binance.files import BinanceFileSource
from tests.binance_metadata import SAMPLE_PAIRS
from tests.integration.helpers import assert_k2_book_at_the_last_btcusdt_update_is_the_oracles, lake_query
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

BTC_FIRST, BTC_LAST = 665076760, 665077986
QUIET = Console(quiet=True)


def _btc_agg_ids(settings: Settings) -> list[int]:
    rows = lake_query(
        settings,
        "SELECT source_sequence FROM market_data.trades_v2 WHERE symbol = ? AND vendor_data['channel'] = ? "
        "ORDER BY source_sequence",
        ["BTCUSDT", "aggTrade"],
    )
    return [r[0] for r in rows]


def _stream(settings: Settings, emulator: BinanceEmulator, duration: float, channels=("aggTrade",), **kw):
    with emulator.run_in_thread() as endpoints:
        return stream_binance(
            settings,
            ["BTCUSDT", "ETHUSDT", "DOTUSDT"],
            list(channels),
            endpoints.ws_url,
            endpoints.rest_url,
            duration=duration,
            console=QUIET,
            **kw,
        )


def test_capture_streamed_through_the_emulator_lands_every_aggtrade_exactly_once(settings: Settings) -> None:
    recon, _live = _stream(settings, BinanceEmulator([CAPTURE_2021_04_04], speed=0), duration=6)
    assert recon.ok
    assert _btc_agg_ids(settings) == list(range(BTC_FIRST, BTC_LAST + 1))
    assert recon.produced == 1910  # every aggTrade frame of the three symbols
    # exact decimals from the frame text, side from the buyer-maker flag (always true in this capture: SELL)
    first = lake_query(
        settings,
        "SELECT price, quantity, side, currency FROM market_data.trades_v2 WHERE source_sequence = ?",
        [BTC_FIRST],
    )
    assert first[0][2:] == ("SELL", "USDT")
    assert isinstance(first[0][0], Decimal) and first[0][0] > 0


def test_disconnects_and_server_shutdown_leave_no_gap_and_no_duplicate(settings: Settings) -> None:
    faults = FaultSpec(disconnect_every=2.0, shutdown_after=3.0, drop_probability=0.02, duplicate_probability=0.02)
    emulator = BinanceEmulator([CAPTURE_2021_04_04], speed=12, faults=faults)
    limits = ClientLimits(backoff_initial_seconds=0.05, backoff_max_seconds=0.5)
    recon, live = _stream(settings, emulator, duration=12, limits=limits)
    assert recon.ok
    assert live.client.stats.disconnects + live.client.stats.replacements >= 3
    assert live.stats.gaps, "the faults should have opened holes for the client to fill"
    assert all(g.status == "filled" for g in live.stats.gaps)
    assert _btc_agg_ids(settings) == list(range(BTC_FIRST, BTC_LAST + 1))


def test_a_restarted_stream_resumes_from_the_lake_without_duplicates(settings: Settings) -> None:
    # At twice real time the 92 s capture lasts 46 s: the 1.5 s run, its REST gap check and a slow stop (Apache
    # Kafka's is seconds) end well before the replay does, so the first run lands part of the ids, never all.
    _stream(settings, BinanceEmulator([CAPTURE_2021_04_04], speed=2), duration=1.5)
    partial = _btc_agg_ids(settings)
    assert 0 < len(partial) < BTC_LAST - BTC_FIRST + 1
    recon, _live = _stream(settings, BinanceEmulator([CAPTURE_2021_04_04], speed=0), duration=5)
    assert recon.ok
    assert _btc_agg_ids(settings) == list(range(BTC_FIRST, BTC_LAST + 1))


def test_depth_streams_keep_the_books_through_dropped_diffs_and_k2_book_reads_the_oracles(settings: Settings) -> None:
    # seed 3 drops 12 of the 2,688 diffs, BTCUSDT's 9893040951-9893040956 (58 s in) and 9893041643-9893041700 (61 s)
    faults = FaultSpec(drop_probability=0.003, stream_kinds=("depth",), seed=3)
    emulator = BinanceEmulator([CAPTURE_2021_04_04], speed=30, faults=faults, clock=ReplayClock.RECORDED)
    # the 91 s capture in 3 s, then at least 4 s more (a loaded machine) to take the last frames and snapshots
    recon, live = _stream(settings, emulator, duration=8, channels=("depth@100ms",))
    assert recon.ok, recon.verdict()
    assert emulator.counts["drop"] == 12, emulator.counts  # the whole capture was replayed
    gaps = lake_query(
        settings,
        "SELECT first_missing, last_missing, reason, status, stream FROM market_data.stream_gaps"
        " WHERE symbol = ? AND channel = ? ORDER BY first_missing",
        ["BTCUSDT", "depth"],
    )
    # the first drop breaks a book in sync; the second may fall before the resync's snapshot, then no break shows
    assert gaps[0] == (9893040951, 9893040956, "sequence_break", "unrecoverable", "btcusdt@depth@100ms")
    assert {g[:2] for g in gaps} <= {(9893040951, 9893040956), (9893041643, 9893041700)}
    assert live.stats.snapshots >= 3 + len(live.stats.gaps)  # one a symbol to start, one per resync
    # K2_BOOK_CHECKPOINT_SECONDS 60: each book copied once, at the first diff it applied from 20:04:00 (event time)
    checkpoints = lake_query(
        settings,
        "SELECT symbol, count(DISTINCT last_update_id), min(epoch_us(timestamp)) // 60_000_000, count(*) > 1000"
        " FROM market_data.book_snapshots_v2 WHERE snapshot_type = 'checkpoint' GROUP BY ALL ORDER BY 1",
    )
    assert checkpoints == [(s, 1, 1_617_566_640_000_000 // 60_000_000, True) for s in ("BTCUSDT", "DOTUSDT", "ETHUSDT")]
    assert_k2_book_at_the_last_btcusdt_update_is_the_oracles(CAPTURE_2021_04_04)


def test_book_ticker_frames_land_in_quotes(settings: Settings) -> None:
    with BinanceEmulator([CAPTURE_2021_10_12], speed=0).run_in_thread() as endpoints:
        recon, _ = stream_binance(
            settings,
            ["NKNUSDT", "BLZETH", "LRCBTC", "RUNEEUR"],
            ["bookTicker"],
            endpoints.ws_url,
            endpoints.rest_url,
            duration=4,
            console=QUIET,
        )
    assert recon.ok
    rows = lake_query(
        settings, "SELECT symbol, currency, count(*) FROM market_data.quotes_v2 GROUP BY ALL ORDER BY symbol"
    )
    assert rows == [("BLZETH", "ETH", 1), ("LRCBTC", "BTC", 9), ("NKNUSDT", "USDT", 74)]  # the capture's 84 frames


def test_kline_files_land_with_utc_times_in_both_timestamp_eras(settings: Settings) -> None:
    files = sorted(BINANCE_PUBLIC_DATA.glob("*.csv"))
    recon = load(BinanceFileSource(files, symbols=SAMPLE_PAIRS), settings, QUIET)
    assert recon.ok
    rows = lake_query(
        settings,
        "SELECT strftime(timestamp, '%Y-%m-%dT%H:%M:%S.%f'), strftime(close_time, '%Y-%m-%dT%H:%M:%S.%f') "
        "FROM market_data.bars_v2 WHERE symbol = ? ORDER BY timestamp LIMIT 1",
        ["DOGEUSDT"],
    )
    assert rows == [("2025-01-01T00:00:00.000000", "2025-01-01T00:00:00.999999")]  # µs era
    rows = lake_query(
        settings,
        "SELECT strftime(timestamp, '%Y-%m-%dT%H:%M:%S.%f') FROM market_data.bars_v2 WHERE symbol = ? "
        "ORDER BY timestamp LIMIT 1",
        ["ADABTC"],
    )
    assert rows == [("2021-11-27T00:00:00.000000",)]  # ms era
    assert lake_query(settings, "SELECT count(*) FROM market_data.bars_v2")[0][0] == 19


def test_a_file_whose_every_row_is_rejected_fails_the_load_in_one_line(settings: Settings, tmp_path: Path) -> None:
    broken = tmp_path / "ADABTC-1m-2021-11-27.csv"
    # a header line (skipped, as in futures files), two short rows and one with a price that is not a number
    broken.write_text("open,high\n" * 3 + "1637971200000,not-a-price,1,1,1,1,1637971259999,1,1,1,1,0\n")
    result = CliRunner().invoke(app, ["load", "binance-files", str(broken)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "error: every one of the 3 rows read was rejected (wrong_column_count: 2, bad_price: 1); nothing was"
        " loaded; the rows are kept in the dlq.* topics with their reasons"
    )
    assert "Traceback" not in result.output


def test_files_land_in_the_currency_exchange_info_names_and_an_unknown_symbol_fails_the_load(
    settings: Settings, tmp_path: Path
) -> None:
    # BNBTUSD is quoted in TUSD (a guess from the symbol's ending said USD); the shipped exchangeInfo says so
    rows = "1111468873,600.10000000,0.50000000,300.05000000,1634944096633,True,True\n"
    tusd = tmp_path / "BNBTUSD-trades-2021-10-22.csv"
    tusd.write_text(rows + rows.replace("1111468873", "1111468874"))
    result = CliRunner().invoke(app, ["load", "binance-files", str(tusd)])
    assert result.exit_code == 0, result.output
    assert lake_query(settings, "SELECT symbol, currency, count(*) FROM market_data.trades_v2 GROUP BY ALL") == [
        ("BNBTUSD", "TUSD", 2)
    ]
    unknown = tmp_path / "BTCXYZ-trades-2021-10-22.csv"
    unknown.write_text(rows)
    result = CliRunner().invoke(app, ["load", "binance-files", str(unknown)])
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "error: every one of the 1 rows read was rejected (unknown_symbol: 1); nothing was loaded; the rows are"
        " kept in the dlq.* topics with their reasons"
    )


def test_connections_are_replaced_before_their_lifetime_ends_with_overlap(settings: Settings) -> None:
    from k2.sources.binance.emulator.limits import Limits

    # Generous margins: on a loaded 2-core machine a replacement connection can take over a second to subscribe.
    emulator = BinanceEmulator([CAPTURE_2021_04_04], speed=8, limits=Limits(max_lifetime=6.0))
    limits = ClientLimits(lifetime_seconds=6.0, replace_before_seconds=3.0)
    recon, live = _stream(settings, emulator, duration=13, limits=limits)
    assert recon.ok
    assert live.client.stats.replacements >= 3
    assert live.client.stats.disconnects == 0  # never cut off by the server: replaced in time
    assert not live.stats.gaps  # the overlap leaves nothing to backfill
    ids = _btc_agg_ids(settings)
    assert ids == list(range(BTC_FIRST, ids[-1] + 1))  # contiguous, none twice


def test_gaps_are_recorded_as_data_with_what_became_of_them(settings: Settings) -> None:
    faults = FaultSpec(drop_probability=0.05, seed=7, stream_kinds=("aggTrade",))
    emulator = BinanceEmulator([CAPTURE_2021_04_04], speed=0, faults=faults, clock="recorded")
    recon, live = _stream(settings, emulator, duration=6)
    assert recon.ok
    assert live.stats.gaps
    rows = lake_query(
        settings,
        "SELECT symbol, channel, first_missing, last_missing, missing_count, filled_count, status "
        "FROM market_data.stream_gaps ORDER BY symbol, first_missing",
    )
    expected = sorted(
        (g.symbol, g.channel, g.first_missing, g.last_missing, g.size, g.filled, g.status) for g in live.stats.gaps
    )
    assert rows == expected
    assert all(status == "filled" for *_rest, status in rows)
    assert _btc_agg_ids(settings) == list(range(BTC_FIRST, BTC_LAST + 1))  # a drop at the very end too
    # REST-filled rows carry the same exact times as streamed ones (the capture ran 20:03:10-20:04:42 UTC)
    span = lake_query(
        settings,
        "SELECT strftime(min(timestamp), '%Y-%m-%dT%H:%M'), strftime(max(timestamp), '%Y-%m-%dT%H:%M'), "
        "count(*) FILTER (WHERE vendor_data['backfilled'] = 'rest') FROM market_data.trades_v2",
    )[0]
    assert span[:2] == ("2021-04-04T20:03", "2021-04-04T20:04")
    assert span[2] == sum(g.filled for g in live.stats.gaps) > 0


def test_k2_stream_binance_flushes_and_exits_cleanly_on_sigterm(settings: Settings, tmp_path) -> None:
    import os
    import signal
    import subprocess
    import sys

    with BinanceEmulator([CAPTURE_2021_04_04], speed=0).run_in_thread() as endpoints:
        cmd = [
            sys.executable,
            "-m",
            "k2.cli",
            "-v",
            "stream",
            "binance",
            "--symbols",
            "BTCUSDT",
            "--channels",
            "aggTrade",
        ]
        metrics_port = free_port()
        cmd += ["--endpoint", endpoints.ws_url, "--rest-endpoint", endpoints.rest_url]
        cmd += ["--metrics-port", str(metrics_port)]
        log = tmp_path / "stream.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())

        def produced() -> float:
            try:
                text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
            except httpx.TransportError:
                return 0.0  # not listening yet
            return sum(
                sample.value
                for family in text_string_to_metric_families(text)
                for sample in family.samples
                if sample.name == "k2_produced_records_total"
            )

        def alive() -> None:
            assert proc.poll() is None, log.read_text()

        # Every BTCUSDT aggTrade of the capture produced, not yet necessarily in the lake: SIGTERM must flush them.
        expected = BTC_LAST - BTC_FIRST + 1
        wait_until(lambda: produced() >= expected, 60, f"{expected} trades produced", check=alive)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    assert "OK: every record accounted for" in log.read_text()
    assert _btc_agg_ids(settings) == list(range(BTC_FIRST, BTC_LAST + 1))


# Symbols quoted in AUD, BRL, ETH, BNB and USDC, as the shipped exchangeInfo (2021-10-12) lists them.
QUOTED_IN = {"BTCAUD": "AUD", "ETHBRL": "BRL", "QTUMETH": "ETH", "AXSBNB": "BNB", "NEOUSDC": "USDC"}


def _newer_format_capture(path: Path) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    """A capture in the newer cryptofeed format (a `configuration:` line first, then the usual lines) with three
    aggTrades and two bookTickers per symbol of QUOTED_IN, one aggTrade frame recorded twice. Returns each symbol's
    trade times (ms) and quote receipt times (µs)."""
    streams = "/".join(f"{s.lower()}@{c}" for s in QUOTED_IN for c in ("aggTrade", "bookTicker"))
    lines = [
        "configuration: {'log': {'filename': 'demo.log', 'level': 'WARNING'}, 'uvloop': True}",
        f"wss://stream.binance.com:9443/stream?streams={streams} <-> 1633998512.000000",
    ]
    trade_ms: dict[str, list[int]] = {}
    quote_us: dict[str, list[int]] = {}
    receipt_us = 1633998512_100000
    for n, symbol in enumerate(QUOTED_IN):
        for k in range(3):
            receipt_us += 1_237
            time_ms = receipt_us // 1000 - 40
            trade_ms.setdefault(symbol, []).append(time_ms)
            data = (
                f'{{"e":"aggTrade","E":{time_ms + 1},"s":"{symbol}","a":{1000 * n + k},"p":"{n + 1}.0{k}000000",'
                f'"q":"0.50000000","f":{5000 + k},"l":{5000 + k},"T":{time_ms},"m":false,"M":true}}'
            )
            frame = f'{_seconds(receipt_us)}: {{"stream":"{symbol.lower()}@aggTrade","data":{data}}}'
            lines += [frame, frame] if (symbol, k) == ("BTCAUD", 1) else [frame]  # the duplicate: stored once
        for k in range(2):
            receipt_us += 911
            quote_us.setdefault(symbol, []).append(receipt_us)
            data = (
                f'{{"u":{700 + k},"s":"{symbol}","b":"{n + 1}.00000000","B":"1.00000000",'
                f'"a":"{n + 1}.10000000","A":"2.00000000"}}'
            )
            lines.append(f'{_seconds(receipt_us)}: {{"stream":"{symbol.lower()}@bookTicker","data":{data}}}')
    path.write_text("\n".join(lines) + "\n")
    return trade_ms, quote_us


def _seconds(us: int) -> str:
    """Microseconds as a capture writes times: seconds with six decimals."""
    return f"{us // 1_000_000}.{us % 1_000_000:06d}"


def test_a_newer_format_capture_in_five_quote_currencies_streams_exactly_on_its_own_clock(
    settings: Settings, tmp_path: Path
) -> None:
    capture = tmp_path / "BINANCE.ws.newer.0"
    trade_ms, quote_us = _newer_format_capture(capture)
    with BinanceEmulator([capture], speed=0, clock="recorded").run_in_thread() as endpoints:
        recon, _ = stream_binance(
            settings,
            list(QUOTED_IN),
            ["aggTrade", "bookTicker"],
            endpoints.ws_url,
            endpoints.rest_url,
            duration=4,
            console=QUIET,
        )
    assert recon.ok
    trades = lake_query(
        settings,
        "SELECT symbol, currency, source_sequence, epoch_us(timestamp) FROM market_data.trades_v2 ORDER BY ALL",
    )
    # every trade id once (the doubled frame too), in its symbol's quote currency, at its trade time
    assert trades == sorted(
        (symbol, QUOTED_IN[symbol], 1000 * n + k, trade_ms[symbol][k] * 1000)
        for n, symbol in enumerate(QUOTED_IN)
        for k in range(3)
    )
    quotes = lake_query(
        settings,
        "SELECT symbol, currency, source_sequence, epoch_us(timestamp) FROM market_data.quotes_v2 ORDER BY ALL",
    )
    # every quote at the moment the capture received it, on the same clock as the trades
    assert quotes == sorted(
        (symbol, QUOTED_IN[symbol], 700 + k, quote_us[symbol][k]) for symbol in QUOTED_IN for k in range(2)
    )
