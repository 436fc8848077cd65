"""Each degradation level's action, the circuit breaker, and the accounting: every record spilled is replayed, and
a load driven through every level lands exactly the source's records in the lake."""

from __future__ import annotations

import itertools
import logging
import time
from decimal import Decimal
from pathlib import Path

import pytest
import structlog
import structlog.testing
from pydantic import ValidationError
from rich.console import Console

from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Stack
from k2.config import Settings
from k2.core.batch import SourceBatch
from k2.core.breaker import CircuitBreaker
from k2.core.metrics import REGISTRY
from k2.ingest.degradation import Controller, Governor, Level, Spill, Thresholds
from k2.ingest.pipeline import landed_check, produce
from k2.lake.catalog import open_catalog
from k2.lake.sink import IcebergSink
from k2.ops.health import degradation_now
from k2.schema import TRADES_V2
from k2.schema.fields import AssetClass
from k2.sources.asx import AsxSource
from tests.integration.helpers import lake_query, make_trade

SMALL = Thresholds(lag=(10, 20, 30, 40), memory=(1 << 40, 1 << 41, 1 << 42, 1 << 43))
NO_MEMORY = 0


def batch(exchange: str, asset_class: AssetClass, first: int, count: int = 3) -> SourceBatch:
    records = [make_trade(n, symbol=exchange.upper()) for n in range(first, first + count)]
    return SourceBatch(TRADES_V2, asset_class, exchange, records=records, rows_read=count)


def test_levels_rise_at_once_and_fall_one_step_at_a_time() -> None:
    controller = Controller(SMALL)
    before = REGISTRY.get_sample_value("k2_degradation_transitions_total", {"frm": "NORMAL", "to": "AGGRESSIVE"}) or 0
    assert controller.observe(35, NO_MEMORY) is Level.AGGRESSIVE  # straight up, no intermediate steps
    assert REGISTRY.get_sample_value("k2_degradation_level") == 3
    assert controller.observe(25, NO_MEMORY) is Level.AGGRESSIVE  # 25 is not below 0.8 x 30: no flapping
    assert controller.observe(20, NO_MEMORY) is Level.GRACEFUL  # calm: one step down
    assert controller.observe(0, NO_MEMORY) is Level.SOFT
    assert controller.observe(0, NO_MEMORY) is Level.NORMAL
    assert controller.observe(0, 1 << 42) is Level.AGGRESSIVE  # memory drives it too
    after = REGISTRY.get_sample_value("k2_degradation_transitions_total", {"frm": "NORMAL", "to": "AGGRESSIVE"})
    assert after - before == 2


def test_pacing_is_info_and_setting_batches_aside_a_warning() -> None:
    controller = Controller(SMALL)
    config = structlog.get_config()  # whatever level an earlier test configured, every level is seen here
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with structlog.testing.capture_logs() as logs:
            for lag in (10, 20, 0, 0, 0):  # SOFT, GRACEFUL, then down one step at a time
                controller.observe(lag, NO_MEMORY)
    finally:
        structlog.configure(**config)
    assert [(e["frm"], e["to"], e["log_level"]) for e in logs] == [
        ("NORMAL", "SOFT", "info"),  # a bulk load outrunning its sink: paced, nothing else
        ("SOFT", "GRACEFUL", "warning"),
        ("GRACEFUL", "SOFT", "warning"),
        ("SOFT", "NORMAL", "info"),
    ]


@pytest.mark.parametrize(
    ("lag", "level", "sent", "spilled"),
    [
        (0, Level.NORMAL, {"asx", "cme", "binance"}, set()),
        (10, Level.SOFT, {"asx", "cme", "binance"}, set()),
        (20, Level.GRACEFUL, {"asx", "cme"}, {"binance"}),
        (30, Level.AGGRESSIVE, {"asx"}, {"cme", "binance"}),
        (40, Level.CIRCUIT_BREAK, set(), {"asx", "cme", "binance"}),
    ],
)
def test_each_level_acts_on_batches_by_priority(
    tmp_path: Path, lag: int, level: Level, sent: set[str], spilled: set[str]
) -> None:
    priorities = Settings(shed_priorities={"equities/asx": 0, "crypto/binance": 2}).shed_priorities  # cme: 1
    governor = Governor(
        Controller(SMALL),
        Spill(tmp_path / "spill"),
        lag=lambda: lag,
        memory=lambda: 0,
        priorities=priorities,
        pace_seconds=0.02,
    )
    out: list[SourceBatch] = []
    started = time.monotonic()
    with governor.running():
        for n, (exchange, asset_class) in enumerate(
            [("asx", AssetClass.EQUITIES), ("cme", AssetClass.FUTURES), ("binance", AssetClass.CRYPTO)]
        ):
            governor.admit(batch(exchange, asset_class, 10 * n), out.append)
        elapsed = time.monotonic() - started
        # GET /v1/pipeline reports the level of the source producing now...
        assert (degradation_now().level, degradation_now().controlled) == (level.name, True)
    assert degradation_now().controlled is False  # ...and nothing once it stopped

    assert governor.controller.level is level
    assert {b.exchange for b in out} == sent
    assert governor.spilled == 3 * len(spilled)
    assert len(governor.spill.pending()) == len(spilled)  # one file per spilled batch, on disk
    if level >= Level.SOFT:
        assert governor.paced == 3 and elapsed >= 3 * 0.02 * level  # backpressure: the source was held back
    else:
        assert governor.paced == 0

    # Whatever was set aside comes back, exactly as it was, once drained.
    replayed: list[SourceBatch] = []
    assert governor.drain(replayed.append) == 3 * len(spilled)
    assert {b.exchange for b in replayed} == spilled
    assert governor.spill.pending() == []
    originals = {b.exchange: b for b in [batch("asx", AssetClass.EQUITIES, 0)]}
    for b in replayed:
        assert all(isinstance(r["price"], Decimal) for r in b.records)
        if b.exchange in originals:
            assert b.records == originals[b.exchange].records


def test_back_at_normal_the_spill_is_replayed_before_new_batches(tmp_path: Path) -> None:
    lags = iter([40, 0, 0, 0, 0, 0])
    governor = Governor(Controller(SMALL), Spill(tmp_path), lag=lambda: next(lags), memory=lambda: 0, pace_seconds=0)
    out: list[SourceBatch] = []
    for n in range(6):
        governor.admit(batch("asx", AssetClass.EQUITIES, 10 * n, 1), out.append)
    # CIRCUIT_BREAK and AGGRESSIVE spill these priority-1 batches; GRACEFUL and SOFT send; back at NORMAL the spill
    # goes first, then the new batch. (Order across the spill does not matter downstream: the lake sorts by time.)
    assert [b.records[0]["trade_id"] for b in out] == ["20", "30", "0", "10", "40", "50"]
    assert governor.spilled == governor.replayed == 2


def test_the_breaker_opens_after_failures_forces_circuit_break_and_closes_on_success() -> None:
    now = [0.0]
    breaker = CircuitBreaker("produce", threshold=3, reset_seconds=10, clock=lambda: now[0])
    controller = Controller(SMALL, breaker=breaker)
    for _ in range(2):
        breaker.record_failure()
    assert not breaker.open and controller.observe(0, 0) is Level.NORMAL
    breaker.record_failure()
    assert breaker.open
    assert REGISTRY.get_sample_value("k2_breaker_open", {"breaker": "produce"}) == 1
    assert controller.observe(0, 0) is Level.CIRCUIT_BREAK
    now[0] = 11.0  # half-open: the next delivery is a trial
    assert not breaker.open
    breaker.record_success()
    assert REGISTRY.get_sample_value("k2_breaker_open", {"breaker": "produce"}) == 0
    assert [controller.observe(0, 0) for _ in range(4)] == [Level.AGGRESSIVE, Level.GRACEFUL, Level.SOFT, Level.NORMAL]


def test_bad_priorities_say_how_to_write_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K2_SHED_PRIORITIES", '{"crypto/binance": 7}')
    with pytest.raises(ValidationError, match="crypto/binance"):
        Settings()


@pytest.mark.integration
def test_a_load_driven_through_every_level_lands_every_record_once(
    settings: Settings, asx_sample: Path, tmp_path: Path
) -> None:
    # Lag rises batch by batch to CIRCUIT_BREAK, then falls: ASX batches (priority 1 by default) are spilled from
    # AGGRESSIVE up, replayed back at NORMAL or at the end of the load.
    script = itertools.chain([0, 10, 20, 30, 40, 40, 0, 0, 0, 0, 35, 35], itertools.repeat(0))
    governor = Governor(Controller(SMALL), Spill(tmp_path / "spill"), lag=lambda: next(script), pace_seconds=0.001)
    with Stack(settings) as endpoints:
        recon, produced = produce(AsxSource(asx_sample), settings, endpoints, Console(quiet=True), governor=governor)
        registry = RegistryClient(endpoints.registry_url)
        topics = sorted({topic for topic, _ in produced.end_offsets})
        sink = IcebergSink(settings, endpoints.bootstrap, registry, open_catalog(settings), topics=topics)
        sink.run(until=landed_check(dict(produced.end_offsets), 600))
        registry.close()

    assert governor.spilled > 0
    assert governor.replayed == governor.spilled  # every record set aside was sent
    assert governor.spill.pending() == []
    assert recon.source_balanced  # read = produced + rejected, spills included
    source_ids = {r["message_id"] for b in AsxSource(asx_sample).batches() for r in b.all_records()}
    lake_ids = [
        row[0]
        for table in ("trades_v2", "quotes_v2", "reference_data_v2")
        for row in lake_query(settings, f"SELECT message_id FROM market_data.{table}")
    ]
    assert len(lake_ids) == len(source_ids) == recon.produced
    assert set(lake_ids) == source_ids


def test_memory_is_a_signal_only_against_a_configured_limit() -> None:
    assert Controller(Thresholds()).observe(0, 10 << 30) is Level.NORMAL  # no limit: a 10 GiB process is not "load"
    limited = Thresholds.for_memory_limit(1000 << 20)
    assert limited.memory == (500 << 20, 650 << 20, 800 << 20, 950 << 20)
    assert Controller(limited).observe(0, 700 << 20) is Level.GRACEFUL
