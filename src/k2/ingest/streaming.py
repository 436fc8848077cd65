"""Streaming runs: a live source through Kafka into Iceberg while a sink worker commits alongside.

`stream_binance()` runs until `duration` elapses or SIGTERM/SIGINT, then stops the client, flushes what it holds,
waits until everything it produced is committed in the lake, and returns the reconciliation.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import pyarrow as pa
import pyarrow.compute as pc
import structlog
from confluent_kafka.admin import AdminClient
from rich.console import Console

from k2.bus.clients import base_config, ensure_topics, producer_config
from k2.bus.producer import RecordProducer
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Endpoints, Stack
from k2.bus.topics import TopicName
from k2.config import Settings
from k2.core.batch import SourceBatch
from k2.ingest.pipeline import SinkAlongside, default_governor
from k2.ingest.reconcile import Reconciliation
from k2.lake.catalog import open_catalog
from k2.lake.sink import IcebergSink
from k2.query.engine import QueryEngine
from k2.query.fresh import FreshSource, read_tail
from k2.schema import AssetClass, DataType
from k2.sources.binance.client import ClientLimits
from k2.sources.binance.live import EXCHANGE, BinanceLive

log = structlog.get_logger(__name__)

BINANCE_TOPICS = [
    TopicName(AssetClass.CRYPTO, DataType.TRADES, EXCHANGE),
    TopicName(AssetClass.CRYPTO, DataType.QUOTES, EXCHANGE),
    TopicName(AssetClass.CRYPTO, DataType.GAPS, EXCHANGE),
    TopicName(AssetClass.CRYPTO, DataType.BOOK_UPDATES, EXCHANGE),
    TopicName(AssetClass.CRYPTO, DataType.BOOK_SNAPSHOTS, EXCHANGE),
]


def last_ids(symbol: pa.Array, channel: pa.Array, seq: pa.Array) -> dict[tuple[str, str], int]:
    grouped = pa.table({"symbol": symbol, "channel": channel, "seq": seq}).group_by(["symbol", "channel"])
    result = grouped.aggregate([("seq", "max")])
    rows = zip(*(result[name].to_pylist() for name in ("symbol", "channel", "seq_max")), strict=True)
    return {(s, c): int(m) for s, c, m in rows if c and m is not None}


def channels(vendor_data: pa.ChunkedArray | pa.Array) -> pa.Array | pa.ChunkedArray:
    """Each row's vendor_data["channel"] (null where the map or the key is missing)."""
    return pc.map_lookup(vendor_data, pa.scalar("channel"), "first")


def resume_points(settings: Settings, endpoints: Endpoints, symbols: list[str]) -> dict[tuple[str, str], int]:
    """Last Binance id per (symbol, channel) in the lake or in Kafka beyond the lake's last commit: a restarted
    stream resumes after it (the first live id then reveals any hole, which is filled from REST)."""
    wanted = {s.upper() for s in symbols}
    with QueryEngine(open_catalog(settings)) as engine:
        stored = engine.sql(
            "SELECT symbol, vendor_data['channel'] AS channel, max(source_sequence) AS seq "
            "FROM market_data.trades_v2 WHERE exchange = ? GROUP BY ALL",
            [EXCHANGE],
        )
        tail = read_tail(engine, FreshSource.from_endpoints(endpoints, settings), "trades", exchange=EXCHANGE).rows
    last = last_ids(stored["symbol"], stored["channel"], stored["seq"])
    if tail.num_rows:
        for key, seq in last_ids(tail["symbol"], channels(tail["vendor_data"]), tail["source_sequence"]).items():
            last[key] = max(seq, last.get(key, -1))
    return {key: seq for key, seq in last.items() if key[0] in wanted}


def stream_binance(
    settings: Settings,
    symbols: list[str],
    channels: list[str],
    ws_endpoint: str,
    rest_endpoint: str,
    duration: float | None = None,
    limits: ClientLimits | None = None,
    console: Console | None = None,
) -> tuple[Reconciliation, BinanceLive]:
    console = console or Console(stderr=True)
    started = time.monotonic()
    recon = Reconciliation(f"Binance {','.join(symbols)} {','.join(channels)} via {ws_endpoint}")
    stack = Stack(settings)
    with stack as endpoints:
        registry = RegistryClient.for_settings(settings, endpoints.registry_url)
        admin = AdminClient(base_config(settings, endpoints.bootstrap))
        ensure_topics(admin, settings, [name for t in BINANCE_TOPICS for name in (str(t), t.dlq)])
        del admin
        producer = RecordProducer(producer_config(settings, endpoints.bootstrap), registry)
        topics = [str(t) for t in BINANCE_TOPICS] if stack.broker is not None else None
        sink = IcebergSink(settings, endpoints.bootstrap, registry, open_catalog(settings), topics=topics)
        governor = default_governor(settings)
        producer.breaker = governor.controller.breaker
        governor.lag = lambda: governor.sent - sink.stats.consumed  # sent, not yet read by this run's sink
        with SinkAlongside(sink, settings.load_timeout_seconds) as alongside, governor.running(recon.source):

            def send(batch: SourceBatch) -> None:
                producer.send(batch)
                recon.count_sent(batch)

            def emit(batch: SourceBatch) -> None:
                governor.admit(batch, send)  # may slow the stream's loop a little, or spill the batch to disk

            live = BinanceLive(
                symbols,
                channels,
                ws_endpoint,
                rest_endpoint,
                emit,
                resume_from=resume_points(settings, endpoints, symbols),
                limits=limits,
                exchange_info_cache=settings.home_dir / "binance" / "exchangeInfo.json",
                book_checkpoint_us=settings.book_checkpoint_us,
            )
            try:
                asyncio.run(_run_live(live, duration))
            finally:
                governor.drain(send)  # what was spilled goes before the stream reports done
                producer.close()
                alongside.targets.update(producer.stats.end_offsets)
            recon.sink = alongside.wait()
        recon.landed = True
    stats = live.stats
    # a depth frame is read as the rows it made (one per level), a fetched snapshot as its levels
    recon.read = stats.frames - stats.book_frames + stats.book_rows + stats.backfilled
    recon.skipped.update(
        {"duplicate_frame": stats.duplicates, "stale_quote": stats.stale, "not_trade_or_quote": stats.control_frames}
    )
    recon.seconds = time.monotonic() - started
    return recon, live


async def _run_live(live: BinanceLive, duration: float | None) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Off the main thread (tests) handlers cannot be installed; the duration stops the run there.
        with contextlib.suppress(ValueError, RuntimeError):
            loop.add_signal_handler(sig, live.stop)
    if duration is not None:
        loop.call_later(duration, live.stop)
    await live.run()
