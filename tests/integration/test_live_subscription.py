"""A live market streamed through `k2 stream binance`, read back by `k2 subscribe` across the lake → Kafka → live
seams."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from k2.config import Settings
from k2.sources.binance.emulator.server import BinanceEmulator
from k2.sources.binance.emulator.synthetic import SyntheticSpec
from tests.integration.helpers import lake_query
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SYMBOL = "SYN0USDT"
COUNT = 5_000


def _lake_ids(settings: Settings) -> list[int]:
    rows = lake_query(
        settings,
        "SELECT source_sequence FROM market_data.trades_v2 WHERE symbol = ? ORDER BY source_sequence",
        [SYMBOL],
    )
    return [r[0] for r in rows]


def test_k2_subscribe_prints_contiguous_trade_ids_across_history_tail_and_live(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The synthetic market's rate is raised to 4,000 frames/s on one symbol (about 2,000 aggTrades/s, the rest
    bookTickers) and the sink commits every second, so the 5,000 trades span lake history, the Kafka tail beyond
    the lake's last commit and trades produced after `k2 subscribe` started within a few seconds of streaming."""
    monkeypatch.setenv("K2_SINK_COMMIT_SECONDS", "1")
    log = tmp_path / "stream.log"
    began = datetime.now(UTC)
    with BinanceEmulator(synthetic=SyntheticSpec(symbols=1, rate=4000)).run_in_thread() as endpoints:
        stream = [sys.executable, "-m", "k2.cli", "stream", "binance", "--symbols", SYMBOL, "--channels", "aggTrade"]
        stream += ["--endpoint", endpoints.ws_url, "--rest-endpoint", endpoints.rest_url]
        with open(log, "wb") as out:
            streamer = subprocess.Popen(stream, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:

            def alive() -> None:
                assert streamer.poll() is None, log.read_text()

            wait_until(lambda: len(_lake_ids(settings)) > 0, 60, "trades in the lake", check=alive)
            in_lake = _lake_ids(settings)
            assert len(in_lake) < COUNT, "the lake already holds the whole count: no Kafka part to reach"
            # 30 s back, or earlier on a machine so busy that the stream took longer to land its first commit
            since = min(began, datetime.now(UTC) - timedelta(seconds=30)).isoformat()
            started_us = int(time.time() * 1e6)
            command = [sys.executable, "-m", "k2.cli", "subscribe", "trades", "--symbols", SYMBOL, "--since", since]
            command += ["--count", str(COUNT), "--format", "ndjson"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=os.environ.copy())
            assert done.returncode == 0, done.stderr
        finally:
            streamer.send_signal(signal.SIGTERM)
            streamer.wait(60)
    records = [json.loads(line) for line in done.stdout.splitlines()]
    ids = [int(r["source_sequence"]) for r in records]
    assert len(ids) == COUNT
    # the lake's first trade (the stream began after `since`) and then every exchange trade id, none twice
    assert ids == list(range(in_lake[0], in_lake[0] + COUNT))
    # the lake's newest trade when the command started (history) and the next one (Kafka) are both there
    assert in_lake[-1] in ids and in_lake[-1] + 1 in ids
    produced_after = [r for r in records if _micros(r["timestamp"]) > started_us]
    assert produced_after, "no trade produced after the command started"
    assert "cursor: " in done.stderr


def _micros(value: str | int) -> int:
    if isinstance(value, int):
        return value
    moment = datetime.fromisoformat(value)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond
