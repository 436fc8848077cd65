"""Client-side rules that need no network: stream spreading, backoff, id tracking."""

from __future__ import annotations

import itertools
import random
from decimal import Decimal

from k2.sources.binance.client import BinanceStreamClient, ClientLimits, backoff_delays, stream_names
from k2.sources.binance.emulator.synthetic import _agg_trade, _Market
from k2.sources.binance.gaps import SequenceTracker
from k2.sources.binance.live import _traded_by


def test_more_than_1024_streams_are_spread_over_connections() -> None:
    streams = stream_names([f"SYM{i}USDT" for i in range(700)], ["trade", "bookTicker"])
    client = BinanceStreamClient(streams, lambda *_: None, "ws://127.0.0.1:1")
    assert [len(g) for g in client.connection_groups] == [1024, 376]
    assert sorted(itertools.chain.from_iterable(client.connection_groups)) == sorted(streams)


def test_stream_names_are_lower_case_symbol_at_channel() -> None:
    assert stream_names(["BTCUSDT"], ["aggTrade", "bookTicker"]) == ["btcusdt@aggTrade", "btcusdt@bookTicker"]


def test_backoff_is_jittered_exponential_and_capped() -> None:
    delays = list(itertools.islice(backoff_delays(0.5, 8.0), 40))
    assert all(0 <= d <= 8.0 for d in delays)
    assert all(d <= 0.5 * 2**i for i, d in enumerate(delays[:4]))
    assert len(set(delays)) > 30  # jittered, not a fixed ladder


def test_tracker_flags_duplicates_and_gaps_only_where_ids_are_contiguous() -> None:
    tracker = SequenceTracker({("BTCUSDT", "aggTrade"): 100})
    assert tracker.classify("BTCUSDT", "aggTrade", 100) == ("duplicate", None)
    assert tracker.classify("BTCUSDT", "aggTrade", 101) == ("new", None)
    tracker.advance("BTCUSDT", "aggTrade", 101)
    assert tracker.classify("BTCUSDT", "aggTrade", 105) == ("gap", 102)
    tracker.advance("BTCUSDT", "bookTicker", 10)
    assert tracker.classify("BTCUSDT", "bookTicker", 50) == ("new", None)  # update ids skip by design
    assert tracker.classify("BTCUSDT", "bookTicker", 10) == ("duplicate", None)
    assert tracker.duplicates == 2


def test_client_limits_default_to_binance_production_rules() -> None:
    limits = ClientLimits()
    assert limits.max_streams_per_connection == 1024
    assert limits.max_requests_per_second < 5
    assert limits.replace_before_seconds < limits.lifetime_seconds == 24 * 3600


def test_stop_time_tail_is_the_contiguous_run_of_ids_traded_by_the_stop() -> None:
    # Id 3 traded after the stop while id 4 carries an earlier time: keeping 4 would leave 3 a permanent hole behind
    # a "partial" tail fill. The tail ends before the first id traded after the stop.
    items = [{"a": 1, "T": 10}, {"a": 2, "T": 11}, {"a": 3, "T": 15}, {"a": 4, "T": 12}]
    assert [item["a"] for item in _traded_by(items, "T", stop_us=13_000)] == [1, 2]
    assert [item["a"] for item in _traded_by(items, "T", stop_us=15_000)] == [1, 2, 3, 4]


def test_synthetic_trade_times_never_go_back_as_ids_go_up() -> None:
    rng = random.Random(7)
    market = _Market("SYN0USDT", Decimal("100"), 665_000_000, 760_000_000, 9_890_000_000)
    frames = [_agg_trade(market, rng) for _ in range(2_000)]
    assert [f["a"] for f in frames] == list(range(665_000_000, 665_002_000))
    times = [f["T"] for f in frames]
    assert times == sorted(times)
