"""Ingestion runs: a source through Kafka into Iceberg, ending with a reconciliation.

`load()` returns only when everything it produced is committed in the lake (the sink group's committed offsets
reach the produced end offsets; the sink commits Kafka only after Iceberg, so that means "in the lake").
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

from k2.bus.clients import base_config, ensure_topics, producer_config
from k2.bus.producer import ProduceStats, RecordProducer
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Endpoints, Stack
from k2.bus.topics import TopicName
from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.sink import IcebergSink, SinkStats
from k2.sources.base import Source


class LoadTimeoutError(RuntimeError):
    pass


@dataclass
class Reconciliation:
    source: str
    read: int = 0
    produced: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by the source, per reason (all in DLQ)
    sink: SinkStats | None = None
    landed: bool = False  # every produced offset committed by the sink group
    seconds: float = 0.0
    empty_files: list[str] = field(default_factory=list)

    @property
    def source_balanced(self) -> bool:
        return self.read == self.produced + sum(self.rejected.values())

    @property
    def sink_balanced(self) -> bool:
        # Only checkable when this run's own sink consumed exactly what this run produced.
        return self.sink is None or self.sink.consumed != self.produced or self.sink.accounted == self.produced

    @property
    def ok(self) -> bool:
        return self.landed and self.source_balanced and self.sink_balanced

    def render(self, console: Console) -> None:
        rate = self.read / self.seconds if self.seconds else 0.0
        console.print(f"[bold]Reconciliation[/bold] — {self.source} ({self.seconds:.2f} s, {rate:,.0f} records/s)")
        rejected = sum(self.rejected.values())
        by_reason = ", ".join(f"{r}: {n:,}" for r, n in sorted(self.rejected.items())) or "none"
        console.print(f"  read {self.read:,} = produced {self.produced:,} + rejected {rejected:,} ({by_reason})")
        if self.sink is not None and self.sink.consumed == self.produced:
            s = self.sink
            sink_rejected = sum(s.rejected.values())
            console.print(
                f"  produced {self.produced:,} = written {sum(s.written.values()):,}"
                f" + already in lake {sum(s.duplicates.values()):,} + rejected by sink {sink_rejected:,}"
            )
            for table in sorted(set(s.written) | set(s.duplicates)):
                console.print(
                    f"    market_data.{table}: written {s.written[table]:,}, already in lake {s.duplicates[table]:,}"
                )
            for reason, n in sorted(s.rejected.items()):
                console.print(f"    rejected by sink, {reason}: {n:,} (kept in dlq.* topics)")
        for name in self.empty_files:
            console.print(f"  {name}: no records (the file says so)")
        verdict = "[green]OK: every record accounted for[/green]" if self.ok else "[red]MISMATCH[/red]"
        console.print(f"  {verdict}; landed in the lake: {'yes' if self.landed else 'NO'}")


def produce(
    source: Source, settings: Settings, endpoints: Endpoints, console: Console
) -> tuple[Reconciliation, ProduceStats]:
    """Send every record of `source` to its topic (rejects to the DLQ) and wait for every acknowledgement."""
    recon = Reconciliation(source.describe())
    registry = RegistryClient(endpoints.registry_url)
    admin = AdminClient(base_config(settings, endpoints.bootstrap))
    producer = RecordProducer(producer_config(settings, endpoints.bootstrap), registry)
    known_topics: set[str] = set()
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
        for batch in source.batches():
            topic = TopicName(batch.asset_class, batch.spec.data_type, batch.exchange)
            if str(topic) not in known_topics:
                ensure_topics(admin, settings, [str(topic), topic.dlq])
                known_topics.add(str(topic))
            producer.send(batch)
            recon.read += batch.rows_read
            recon.produced += len(batch.records)
            recon.rejected.update(r.reason for r in batch.rejects)
        producer.flush()
    recon.empty_files = list(getattr(source, "empty_files", []))
    producer.close()
    return recon, producer.stats


def load(source: Source, settings: Settings, console: Console | None = None) -> Reconciliation:
    console = console or Console(stderr=True)
    started = time.monotonic()
    stack = Stack(settings)
    with stack as endpoints:
        recon, produced = produce(source, settings, endpoints, console)
        targets = dict(produced.end_offsets)
        registry = RegistryClient(endpoints.registry_url)
        produced_topics = sorted({t for t, _p in targets})
        # A broker this run started has no other sink: assign directly and skip the ~3 s group join.
        topics = produced_topics if stack.broker is not None else None
        sink = IcebergSink(settings, endpoints.bootstrap, registry, open_catalog(settings), topics=topics)

        deadline = time.monotonic() + settings.load_timeout_seconds

        def landed(s: IcebergSink) -> bool:
            committed = s.group_committed(list(targets))
            missing = {k: (committed.get(k, -1), end) for k, end in targets.items() if committed.get(k, -1) < end}
            if missing and time.monotonic() > deadline:
                raise LoadTimeoutError(
                    f"the sink group has not committed everything after {settings.load_timeout_seconds:.0f}s; "
                    f"(committed, produced) per partition: {missing}. Check the sink workers' logs, or raise "
                    "K2_LOAD_TIMEOUT_SECONDS for very large loads."
                )
            return not missing

        with console.status("committing to the lake"):
            recon.sink = sink.run(until=landed)
        recon.landed = True
    recon.seconds = time.monotonic() - started
    return recon
