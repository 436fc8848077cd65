"""Ingestion runs: a source through Kafka into Iceberg, ending with a reconciliation.

`load()` returns only when everything it produced is committed in the lake (the sink group's committed offsets
reach the produced end offsets; the sink commits Kafka only after Iceberg, so that means "in the lake").
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from k2.bus.clients import base_config, ensure_topics, producer_config
from k2.bus.producer import ProduceStats, RecordProducer
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Endpoints, Stack
from k2.bus.topics import TopicName
from k2.config import Settings
from k2.core import metrics
from k2.core.batch import SourceBatch
from k2.core.breaker import CircuitBreaker
from k2.ingest.degradation import Controller, Governor, Spill, Thresholds
from k2.ingest.reconcile import LoadTimeoutError, Reconciliation
from k2.lake.catalog import open_catalog
from k2.lake.sink import IcebergSink, SinkStats
from k2.sources.base import Source


def produce(
    source: Source,
    settings: Settings,
    endpoints: Endpoints,
    console: Console,
    on_new_topic: Callable[[str], None] | None = None,
    governor: Governor | None = None,
) -> tuple[Reconciliation, ProduceStats]:
    """Send every record of `source` to its topic (rejects to the DLQ) and wait for every acknowledgement.
    `on_new_topic(name)` is called once a topic exists, before its first record is sent. Every batch passes the
    `governor` (k2.ingest.degradation; default: memory-driven, spilling under $K2_HOME/spill), which may slow the
    source or set batches aside on disk; whatever it set aside is sent before this returns."""
    recon = Reconciliation(source.describe())
    registry = RegistryClient.for_settings(settings, endpoints.registry_url)
    admin = AdminClient(base_config(settings, endpoints.bootstrap))
    producer = RecordProducer(producer_config(settings, endpoints.bootstrap), registry)
    governor = governor or default_governor(settings)
    producer.breaker = governor.controller.breaker
    known_topics: set[str] = set()

    def send(batch: SourceBatch) -> None:
        topic = TopicName(batch.asset_class, batch.spec.data_type, batch.exchange)
        if str(topic) not in known_topics:
            ensure_topics(admin, settings, [str(topic), topic.dlq])
            known_topics.add(str(topic))
            if on_new_topic is not None:
                on_new_topic(str(topic))
        producer.send(batch)
        recon.count_sent(batch)

    total = getattr(source, "total_bytes", lambda: None)()
    with Progress(
        TextColumn("[bold]producing[/bold]"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task("produce", total=total)
        if hasattr(source, "progress"):
            source.progress = lambda n: progress.advance(task, n)  # type: ignore[attr-defined]
        with governor.running(source.describe()):
            for batch in read_ahead(source.batches()):
                recon.read += batch.rows_read
                metrics.RECORDS_IN.labels(type(source).__name__).inc(batch.rows_read)
                governor.admit(batch, send)
            governor.drain(send)  # the source has ended: what was set aside goes now
        producer.flush()
    recon.empty_files = list(getattr(source, "empty_files", []))
    producer.close()
    return recon, producer.stats


_END = object()


def read_ahead(batches: Iterator[SourceBatch], depth: int = 2) -> Iterator[SourceBatch]:
    """The batches of `batches`, produced by a background thread up to `depth` ahead of the caller.

    Parsing the next tick file (numpy, Arrow, DuckDB: mostly outside the GIL) then overlaps encoding and producing
    this one (~1.3x the source's rate on 2 cores). An exception in the source reaches the caller at the batch
    where it happened; a caller that stops early stops the thread."""
    handoff: queue.Queue[object] = queue.Queue(maxsize=depth)
    stopped = threading.Event()

    def offer(item: object) -> bool:
        while not stopped.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def pull() -> None:
        try:
            for batch in batches:
                if not offer(batch):
                    return
            offer(_END)
        except BaseException as exc:  # handed to the caller, raised there
            offer(exc)

    worker = threading.Thread(target=pull, name="k2-read-ahead", daemon=True)
    worker.start()
    try:
        while (item := handoff.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stopped.set()
        worker.join()


def default_governor(settings: Settings) -> Governor:
    """Degradation for a producing process: thresholds and priorities from settings, a breaker on produce failures,
    spill files under $K2_HOME/spill."""
    limit = settings.memory_limit_mb * 1024 * 1024 if settings.memory_limit_mb else None
    controller = Controller(Thresholds.for_memory_limit(limit), breaker=CircuitBreaker("produce"))
    # One folder per process: a process killed with batches set aside must not have another replay them (its
    # source is re-read instead: the runbook's "run the load again").
    spill = Spill(settings.home_dir / "spill" / str(os.getpid()))
    return Governor(controller, spill, priorities=settings.shed_priorities)


def landed_check(targets: dict[tuple[str, int], int], timeout: float) -> Callable[[IcebergSink], bool]:
    """A sink `until` predicate: true once the sink group has committed every produced offset in `targets`
    (the sink commits Kafka only after Iceberg, so that means "in the lake"); raises after `timeout`."""
    deadline = time.monotonic() + timeout

    def landed(sink: IcebergSink) -> bool:
        committed = sink.group_committed(list(targets))
        missing = {k: (committed.get(k, -1), end) for k, end in targets.items() if committed.get(k, -1) < end}
        if missing and time.monotonic() > deadline:
            raise LoadTimeoutError(
                f"the sink group has not committed everything after {timeout:.0f}s; "
                f"(committed, produced) per partition: {missing}. Check the sink workers' logs, or raise "
                "K2_LOAD_TIMEOUT_SECONDS for very large loads."
            )
        return not missing

    return landed


class SinkAlongside:
    """A sink worker running in a thread while this thread produces (its heavy parts — batch decoding, Parquet
    writing — run outside the GIL). Fill `targets` with the produced end offsets, then `wait()`: it returns the
    sink's stats once everything is in the lake, and raises whatever the sink raised. Leaving the block without
    `wait()` (an error while producing) still stops the worker once what was produced has landed."""

    def __init__(self, sink: IcebergSink, timeout: float) -> None:
        self.sink = sink
        self.targets: dict[tuple[str, int], int] = {}
        self._done_producing = threading.Event()
        self._landed = landed_check(self.targets, timeout)
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="k2-sink")

    def _run(self) -> None:
        try:
            self._outcome["stats"] = self.sink.run(until=self._landed, finishing=self._done_producing.is_set)
        except BaseException as exc:  # surfaced in the producing thread by wait()
            self._outcome["error"] = exc

    def __enter__(self) -> SinkAlongside:
        self._thread.start()
        return self

    def wait(self) -> SinkStats:
        self._done_producing.set()
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["stats"]

    def __exit__(self, *exc: object) -> None:
        self._done_producing.set()
        self._thread.join()


def load(source: Source, settings: Settings, console: Console | None = None) -> Reconciliation:
    """Produce `source` while a sink worker commits alongside (in a thread: its heavy parts — batch decoding,
    Parquet writing — run outside the GIL); return once everything produced is in the lake."""
    console = console or Console(stderr=True)
    started = time.monotonic()
    source.check()  # a wrong folder or a corrupt download: one line, before a broker starts
    stack = Stack(settings)
    with stack as endpoints:
        registry = RegistryClient.for_settings(settings, endpoints.registry_url)
        # A broker this run started has no other sink: assign topics directly as they appear and skip the ~3 s
        # group join; on a shared stack, join the group like any other worker.
        own_broker = stack.broker is not None
        sink = IcebergSink(
            settings, endpoints.bootstrap, registry, open_catalog(settings), topics=[] if own_broker else None
        )
        with SinkAlongside(sink, settings.load_timeout_seconds) as alongside:
            announce = (lambda topic: sink.add_topics([topic])) if own_broker else None
            governor = default_governor(settings)
            # Lag the governor watches: records sent that this run's sink has not read yet.
            governor.lag = lambda: governor.sent - sink.stats.consumed
            recon, produced = produce(source, settings, endpoints, console, on_new_topic=announce, governor=governor)
            alongside.targets.update(produced.end_offsets)
            with console.status("committing to the lake"):
                recon.sink = alongside.wait()
        recon.landed = True
    recon.seconds = time.monotonic() - started
    return recon
