"""`k2 up`: the whole platform from one command, data on the dashboard within a minute, nothing left after Ctrl-C."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from k2.api import list_keys
from k2.config import Settings
from k2.up import BinanceMode, UpOptions, choose_binance
from tests.conftest import ON_APACHE_KAFKA, only_on_tansu
from tests.dashboard.k2up import children_of, free_port, k2_up, port_open, running, wait_for_exchanges
from tests.integration.helpers import raw_line_count
from tests.waiting import wait_until

ASX_TRADE_FILES = "trades/*.csv"


def asx_trade_count(asx_sample: Path) -> int:
    return sum(raw_line_count(path) for path in sorted(asx_sample.glob(ASX_TRADE_FILES)))


def test_auto_falls_back_to_the_emulator_quickly_when_binance_does_not_answer() -> None:
    closed = free_port()  # nothing listens here
    started = time.monotonic()
    mode, why = choose_binance(UpOptions(ws_endpoint=f"ws://127.0.0.1:{closed}", probe_timeout=2.0))
    assert mode is BinanceMode.EMULATOR
    assert "unreachable" in why
    assert time.monotonic() - started < 2.5


def test_auto_goes_live_when_the_endpoint_answers() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        mode, _why = choose_binance(UpOptions(ws_endpoint=f"ws://127.0.0.1:{port}"))
    assert mode is BinanceMode.LIVE


@pytest.mark.integration
def test_a_taken_port_stops_k2_up_before_anything_starts(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "k2.cli", "up", "--port", str(port), "--binance", "off", "--no-asx"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "pass another --port" in result.stdout
    assert not (settings.run_dir / "stack.json").exists()
    assert list_keys(settings) == []


@pytest.mark.integration
def test_k2_up_shows_asx_and_binance_data_within_a_minute_and_ctrl_c_leaves_nothing_behind(
    settings: Settings, asx_sample: Path
) -> None:
    # Maintenance every 3 s: it runs while the ASX load and the stream commit, and every count below must still hold.
    with k2_up(settings.home_dir, "--binance", "emulator", "--maintain-every", "3") as up:
        bootstrap, registry = up.printed("Kafka"), up.printed("registry")
        emulator_ws = up.wait_for_line(r"Binance\s+emulator .* at ws://(127\.0\.0\.1:\d+)", 30).group(1)
        children = children_of(up.proc.pid)
        # The embedded broker; everything else is a thread. On the session's Apache Kafka, k2 up starts no broker.
        assert len(children) == (0 if ON_APACHE_KAFKA else 1) and all(running(pid) for pid in children)
        assert (settings.run_dir / "stack.json").exists()

        with up.client() as client:
            assert client.get("/dashboard").status_code == 200
            wait_for_exchanges(client, {"asx", "binance"}, timeout=90)
            seconds_to_data = time.monotonic() - up.started
            assert seconds_to_data < 60, f"ASX and Binance trades took {seconds_to_data:.0f}s to reach the lake"
            print(f"ASX and Binance trades queryable {seconds_to_data:.1f} s after k2 up started")

            up.wait_for_line(r"ASX: all [\d,]+ records are in the lake", 120)
            expected = asx_trade_count(asx_sample)
            asx = client.get("/v1/symbols", params={"kind": "trades", "exchange": "asx"}).json()["data"]
            assert sum(row["count"] for row in asx) == expected
            assert {row["symbol"] for row in asx} == {"BHP", "DVN", "MWR", "RIO"}

            # The log end of the ASX trade topic is exactly what was produced, though the embedded broker reports
            # a smaller high watermark (docs/stack-notes.md, "Embedded broker"); the sink has committed all of it.
            health = client.get("/v1/pipeline").json()
            topics = {t["topic"]: t for t in health["kafka"]["topics"]}
            assert topics["market.equities.trades.asx"]["end_offset"] == expected
            assert topics["market.equities.trades.asx"]["lag"] == 0
            assert topics["market.crypto.trades.binance"]["end_offset"] > 0
            trades_table = next(t for t in health["tables"] if t["table"] == "market_data.trades_v2")
            assert trades_table["rows"] >= expected
            # The Binance stream produces in this process under a controller; the ASX load has ended.
            degradation = health["degradation"]
            assert (degradation["level"], degradation["controlled"]) == ("NORMAL", True)
            producers = [(p["source"].split(" ")[0], p["level"]) for p in degradation["producers"]]
            assert producers == [("Binance", "NORMAL")]
            assert health["dlq"]["total"] == 0

        up.wait_for_line(r"maintenance: \d+ partitions compacted", 60)
        ports = [f"127.0.0.1:{up.port}", registry.removeprefix("http://"), emulator_ws]
        if not ON_APACHE_KAFKA:  # the session's Apache Kafka outlives k2 up; its own broker does not
            ports.append(bootstrap)
        assert all(port_open(p) for p in ports)
        stopping = time.monotonic()
        assert up.stop(timeout=60) == 0, up.output
        stop_seconds = time.monotonic() - stopping

    assert stop_seconds < 30
    assert not [pid for pid in children if running(pid)], "a child process outlived k2 up"
    assert not [p for p in ports if port_open(p)], "a port is still open after k2 up stopped"
    assert not (settings.run_dir / "stack.json").exists()
    assert [key.active for key in list_keys(settings)] == [False]  # the dashboard key dies with k2 up
    # Stopped in order: the broker outlived every client, so no client ever saw it gone.
    assert "Connection refused" not in up.output and "kafka_commit_failed" not in up.output, up.output
    assert "stopped." in up.output


@pytest.mark.integration
@only_on_tansu
def test_kill_9_of_k2_up_takes_the_broker_along(settings: Settings) -> None:
    with k2_up(settings.home_dir, "--binance", "off", "--no-asx") as up:
        up.wait_for_line("Ctrl-C stops everything", 60)
        (broker,) = children_of(up.proc.pid)
        up.proc.kill()
        up.proc.wait(10)
        wait_until(lambda: not running(broker), 10, "the broker to die with a killed k2 up")
