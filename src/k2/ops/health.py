"""Pipeline health, computed from the real parts: the lake's tables and snapshot summaries, the Kafka log and the
sink group's offsets, the DLQ topics and the stream_gaps audit table. `/v1/pipeline` serves it; the dashboard draws it.

Nothing here is estimated: a figure that cannot be read (no Kafka known to this process) is absent, with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from k2.bus.stack import existing_endpoints
from k2.config import Settings
from k2.ingest.degradation import producing
from k2.lake.tables import table_identifier
from k2.ops.lag import log_report
from k2.query.engine import QueryEngine
from k2.query.summary import table_stats
from k2.schema.fields import ALL_RECORDS, STREAM_GAPS

# Throughput is rows appended by commits in the last minute: the sink commits every few seconds (K2_SINK_COMMIT_*),
# so a minute holds a dozen commits and smooths their size steps.
THROUGHPUT_WINDOW_SECONDS = 60
# Commits listed for the throughput chart.
HISTORY_SECONDS = 600

IDLE_NOTE = (
    "No source is producing in this process now, so nothing is being slowed, spilled or shed; `k2 load`, `k2 stream`"
    " and the ASX load and Binance stream of `k2 up` run under a degradation controller (k2.ingest.degradation)."
)
ACTIVE_NOTE = (
    "The highest level of the controllers governing the sources producing in this process now"
    " (k2.ingest.degradation); `producers` lists each."
)


class TableHealth(BaseModel):
    table: str = Field(description="e.g. market_data.trades_v2")
    rows: int = Field(description="Rows at the newest snapshot (from the manifests)")
    data_files: int
    snapshots: int = Field(description="Commits in the current lineage")
    last_commit_at: datetime | None
    rows_in_window: int = Field(description="Rows appended by commits in the last `window_seconds`")
    rows_per_second: float = Field(description="rows_in_window / window_seconds")


class Commit(BaseModel):
    table: str
    committed_at: datetime
    rows: int = Field(description="Rows the append added (Iceberg's added-records)")


class TopicHealth(BaseModel):
    topic: str
    partitions: int
    end_offset: int = Field(description="Log end, summed over partitions (read from a fetch, see k2.ops.lag)")
    committed: int = Field(description="The sink group's committed offsets, summed")
    lag: int = Field(description="end_offset - committed: records in Kafka the sink has not committed to the lake")


class KafkaHealth(BaseModel):
    available: bool
    reason: str | None = Field(default=None, description="Why the log could not be read, when it could not")
    bootstrap: str | None = None
    group: str | None = None
    topics: list[TopicHealth] = []
    total_lag: int | None = None
    exact: bool | None = Field(default=None, description="False: some log end was not fetched in time")


class DlqHealth(BaseModel):
    available: bool
    topics: dict[str, int] = Field(default={}, description="Messages held per dlq.<topic>")
    total: int | None = None


class GapHealth(BaseModel):
    total: int = Field(description="Gaps found in live streams (rows of market_data.stream_gaps)")
    by_status: dict[str, int] = Field(description="filled | partial | unrecoverable")
    missing: int = Field(description="Ids that did not arrive live, summed")
    filled: int = Field(description="Of those, fetched from REST and landed")
    last_detected_at: datetime | None


class Producer(BaseModel):
    source: str = Field(description="What is producing, as it describes itself, e.g. Binance BTCUSDT aggTrade via ...")
    level: str = Field(description="The level of the controller governing it")


class Degradation(BaseModel):
    level: str = Field(default="NORMAL", description="The highest level among `producers` (NORMAL when none)")
    controlled: bool = Field(default=False, description="True while a source produces under a controller here")
    producers: list[Producer] = Field(default=[], description="Each source producing in this process now")
    note: str = IDLE_NOTE


def degradation_now() -> Degradation:
    running = producing()
    if not running:
        return Degradation()
    return Degradation(
        level=max(level for _, level in running).name,
        controlled=True,
        producers=[Producer(source=source, level=level.name) for source, level in running],
        note=ACTIVE_NOTE,
    )


class PipelineHealth(BaseModel):
    checked_at: datetime
    window_seconds: int = THROUGHPUT_WINDOW_SECONDS
    rows_per_second: float = Field(description="All tables: rows appended per second over the window")
    tables: list[TableHealth]
    commits: list[Commit] = Field(description=f"Appends of the last {HISTORY_SECONDS} s, oldest first")
    kafka: KafkaHealth
    dlq: DlqHealth
    gaps: GapHealth
    degradation: Degradation = Field(default_factory=degradation_now)
    seconds: float = Field(description="How long computing this took")


def lake_health(engine: QueryEngine, now: datetime) -> tuple[list[TableHealth], list[Commit]]:
    """Per table: size at the newest snapshot and rows appended in the window; and the recent appends."""
    stats = {row["table"]: row for row in table_stats(engine).to_pylist()}
    window_start = now - timedelta(seconds=THROUGHPUT_WINDOW_SECONDS)
    history_start = now - timedelta(seconds=HISTORY_SECONDS)
    tables: list[TableHealth] = []
    commits: list[Commit] = []
    for spec in ALL_RECORDS:
        name = table_identifier(spec)
        table = engine.table(spec.name)
        in_window = 0
        for snapshot in table.metadata.snapshots if table is not None else []:
            summary = snapshot.summary
            # Only appends are ingestion; maintenance rewrites (overwrite/replace) add no new rows.
            if summary is None or summary.operation.value != "append":
                continue
            at = datetime.fromtimestamp(snapshot.timestamp_ms / 1000, UTC)
            rows = int(summary.additional_properties.get("added-records", "0"))
            if at >= window_start:
                in_window += rows
            if at >= history_start:
                commits.append(Commit(table=name, committed_at=at, rows=rows))
        row = stats.get(name, {})
        tables.append(
            TableHealth(
                table=name,
                rows=row.get("rows", 0),
                data_files=row.get("data_files", 0),
                snapshots=row.get("snapshots", 0),
                last_commit_at=row.get("committed_at"),
                rows_in_window=in_window,
                rows_per_second=round(in_window / THROUGHPUT_WINDOW_SECONDS, 3),
            )
        )
    commits.sort(key=lambda c: c.committed_at)
    return tables, commits


def gap_health(engine: QueryEngine) -> GapHealth:
    result = engine.sql(
        f"SELECT status, count(*) AS gaps, sum(missing_count) AS missing, sum(filled_count) AS filled, "
        f"max(timestamp) AS last FROM {table_identifier(STREAM_GAPS)} GROUP BY status"
    ).to_pylist()
    lasts = [row["last"] for row in result if row["last"] is not None]
    return GapHealth(
        total=sum(row["gaps"] for row in result),
        by_status={row["status"]: row["gaps"] for row in result},
        missing=sum(row["missing"] or 0 for row in result),
        filled=sum(row["filled"] or 0 for row in result),
        last_detected_at=max(lasts) if lasts else None,
    )


def kafka_health(settings: Settings) -> tuple[KafkaHealth, DlqHealth]:
    endpoints = existing_endpoints(settings)
    if endpoints is None:
        reason = "no Kafka known to this process: run `k2 up` or `k2 stack` on this K2_HOME, or set K2_KAFKA_BOOTSTRAP"
        return KafkaHealth(available=False, reason=reason), DlqHealth(available=False)
    try:
        report = log_report(settings, endpoints.bootstrap)
    except Exception as exc:  # a broker going away mid-probe: say so rather than fail the whole report
        reason = f"reading the log at {endpoints.bootstrap} failed ({type(exc).__name__}: {exc})"
        return KafkaHealth(available=False, reason=reason, bootstrap=endpoints.bootstrap), DlqHealth(available=False)
    topics = [TopicHealth(**vars(t)) for t in report.topics]
    kafka = KafkaHealth(
        available=True,
        bootstrap=report.bootstrap,
        group=report.group,
        topics=topics,
        total_lag=sum(t.lag for t in topics),
        exact=report.exact,
    )
    return kafka, DlqHealth(available=True, topics=report.dlq, total=sum(report.dlq.values()))


def pipeline_health(settings: Settings, reading: Callable[[], AbstractContextManager[QueryEngine]]) -> PipelineHealth:
    """Everything above, now. `reading()` lends the engine (the API's is shared); it is held only for the lake part,
    not while the Kafka log is probed (one short-lived consumer, tens of milliseconds on the embedded stack)."""
    started = time.monotonic()
    now = datetime.now(UTC)
    with reading() as engine:
        tables, commits = lake_health(engine, now)
        gaps = gap_health(engine)
    kafka, dlq = kafka_health(settings)
    return PipelineHealth(
        checked_at=now,
        rows_per_second=round(sum(t.rows_in_window for t in tables) / THROUGHPUT_WINDOW_SECONDS, 3),
        tables=tables,
        commits=commits,
        kafka=kafka,
        dlq=dlq,
        gaps=gaps,
        seconds=round(time.monotonic() - started, 3),
    )
