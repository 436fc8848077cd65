"""The exactly-once sink: Kafka topics market.* -> Iceberg tables market_data.*.

Order of a commit (docs/architecture.md, "Exactly once, Kafka → Iceberg"):
  1. append the buffered rows to Iceberg, the consumed offset ranges (and topic ids) in the snapshot summary;
  2. flush the DLQ producer (rejects are durable before their offsets are given up);
  3. commit the Kafka offsets.
A crash after 1 and before 3 is harmless: on assignment the sink resumes from max(lake offsets, group offsets),
and rows are deduplicated by message_id against the lake anyway (reloads, producer retries, a lost broker log).
Kafka transactions are not used: the embedded broker shows aborted records to read_committed consumers.
"""

from __future__ import annotations

import os
import queue
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import fastavro
import pyarrow as pa
import structlog
from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import (
    CommitFailedException,
    CommitStateUnknownException,
    ServerError,
    ServiceUnavailableError,
)
from pyiceberg.table import Table
from sqlalchemy.exc import SQLAlchemyError

from k2.bus.batch_decode import BatchDecodeError, decode_batch
from k2.bus.clients import access_error, base_config, consumer_config, fetch_committed, producer_config, topic_ids
from k2.bus.producer import RecordProducer
from k2.bus.registry_client import RegistryClient
from k2.bus.serde import DecodeError, decode, schema_id_of
from k2.bus.topics import MARKET_TOPIC_PATTERN, TopicName
from k2.config import Settings
from k2.core import metrics
from k2.core.batch import Reject
from k2.core.breaker import CircuitBreaker
from k2.lake.dedup import LakeIdIndex
from k2.lake.offsets import CPU_KEY, SUMMARY_KEY, encode_ranges, next_offsets
from k2.lake.tables import ensure_table, in_write_order
from k2.schema.arrow import records_to_arrow
from k2.schema.avro import parsed_schema
from k2.schema.fields import PRICE_PRECISION, PRICE_SCALE, Kind, RecordSpec

log = structlog.get_logger(__name__)

_MAX_DECIMAL = Decimal(10) ** (PRICE_PRECISION - PRICE_SCALE)
_APPEND_ATTEMPTS = 4
_MAX_DEFERRED_COMMITS = 30  # ~5 minutes of a failing catalog (10 s apart) before the worker gives up
# How long an assignment waits out a cluster in change (a killed broker that was the controller or the group
# coordinator: Kafka notices after broker.session.timeout.ms, 9 s by default) before the worker gives up; well within
# max.poll.interval.ms, which the assignment callback runs against.
_KAFKA_PATIENCE = 120.0
# Failures of the catalog or the warehouse, as opposed to bugs: worth waiting out
# A failed commit the sink defers and retries: SQL catalog and warehouse errors, and a REST catalog that is down or
# failed mid-commit (its "state unknown" is safe here: the retry re-reads the lake before deduplicating).
_CATALOG_FAILURES = (
    CommitFailedException,
    CommitStateUnknownException,
    ServerError,
    ServiceUnavailableError,
    OSError,
    SQLAlchemyError,
)
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class SinkStats:
    consumed: int = 0
    written: Counter[str] = field(default_factory=Counter)  # rows appended, per table
    duplicates: Counter[str] = field(default_factory=Counter)  # rows already in the lake, per table
    rejected: Counter[str] = field(default_factory=Counter)  # per reason, sent to DLQ
    commits: int = 0
    commit_seconds: list[float] = field(default_factory=list)

    @property
    def accounted(self) -> int:
        return sum(self.written.values()) + sum(self.duplicates.values()) + sum(self.rejected.values())


@dataclass
class _TableBuffer:
    spec: RecordSpec
    framed: list[Message] = field(default_factory=list)  # written with the current schema: batch-decoded
    rows: list[dict[str, Any]] = field(default_factory=list)  # decoded one by one (older writer schemas)
    messages: list[Message] = field(default_factory=list)  # rows[i] came from messages[i] (for the DLQ)
    arrow: pa.Table | None = None  # the buffer decoded (bad records already dead-lettered), kept for a retry


def invalid_reason(spec: RecordSpec, record: dict[str, Any]) -> str | None:
    """Checks Avro cannot express; a record failing them is dead-lettered alone, never with its batch."""
    for f in spec.fields:
        if f.kind is Kind.DECIMAL:
            value = record.get(f.name)
            if value is not None and (
                not value.is_finite() or value.as_tuple().exponent < -PRICE_SCALE or abs(value) >= _MAX_DECIMAL
            ):
                return f"decimal_out_of_range:{f.name}"
    if not record.get("message_id"):
        return "missing_message_id"
    return None


class IcebergSink:
    """One sink worker. Several workers in one consumer group share the partitions of the market topics."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        registry: RegistryClient,
        catalog: Catalog,
        *,
        topics: list[str] | None = None,
    ) -> None:
        """`topics=None` subscribes to every market topic in the consumer group (joins take ~3 s on the
        embedded broker); a list assigns all their partitions directly (one worker, no group join)."""
        self._settings = settings
        self._registry = registry
        self._catalog = catalog
        self._topics = topics
        self._admin = AdminClient(base_config(settings, bootstrap))
        self._consumer = Consumer(consumer_config(settings, bootstrap, settings.sink_group))
        self._dlq = RecordProducer(producer_config(settings, bootstrap), registry)
        self._tables: dict[str, Table] = {}
        self._indexes: dict[str, LakeIdIndex] = {}
        self._buffers: dict[str, _TableBuffer] = {}
        self._ranges: dict[tuple[str, int], tuple[int, int]] = {}
        self._topic_ids: dict[str, str] = {}
        self._decoders: dict[tuple[int, str], tuple[Any, Any]] = {}
        self._pending_topics: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._assigned_topics: set[str] = set()
        self._group_behind_lake: dict[tuple[str, int], int] = {}
        self._specs: dict[str, RecordSpec] = {}
        self._buffered = 0
        self._fast_routes: dict[tuple[str, bytes], list[Message]] = {}  # (topic, header) → the frames list
        self._last_commit = time.monotonic()
        self._cpu_mark = time.process_time()  # process CPU at this worker's previous append (or start)
        self.breaker = CircuitBreaker("catalog", threshold=1, reset_seconds=10.0)
        self._deferred_commits = 0
        self.committed: dict[tuple[str, int], int] = {}
        self.stats = SinkStats()

    # --- assignment: resume from the lake -------------------------------------------------------------------
    def _table(self, spec: RecordSpec) -> Table:
        if spec.name not in self._tables:
            self._tables[spec.name] = ensure_table(self._catalog, spec)
            self._indexes[spec.name] = LakeIdIndex(self._tables[spec.name])
        return self._tables[spec.name]

    def _resume_positions(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        topics = sorted({p.topic for p in partitions})
        self._topic_ids.update(topic_ids(self._admin, topics, patience=_KAFKA_PATIENCE))
        lake_next: dict[tuple[str, int], int] = {}
        for spec in {TopicName.parse(t).spec for t in topics}:
            table = self._table(spec)
            table.refresh()
            lake_next.update(next_offsets(table, self._topic_ids))
            self._indexes[spec.name].clear()
        group = fetch_committed(self._consumer, partitions, patience=_KAFKA_PATIENCE)
        positions = []
        for tp in group:
            lake = lake_next.get((tp.topic, tp.partition), -1)
            start = max(lake, tp.offset if tp.offset >= 0 else -1)
            positions.append(TopicPartition(tp.topic, tp.partition, start if start >= 0 else OFFSET_INVALID))
            if lake >= 0 and lake > tp.offset:
                # A worker died between its Iceberg commit and its Kafka commit: the lake is ahead of the group.
                # Bring the group up to the lake, or a partition with nothing new to read would never show as
                # committed (and "is everything landed?" would wait forever).
                self._group_behind_lake[(tp.topic, tp.partition)] = lake
        log.info("sink.assigned", positions={f"{p.topic}[{p.partition}]": p.offset for p in positions})
        return positions

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        consumer.assign(self._resume_positions(partitions))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Commit what we hold before another worker takes these partitions: no duplicate, no loss. Never deferred:
        # buffers of partitions that are no longer ours must not be committed later.
        self.commit(final=True)
        consumer.unassign()

    def _start(self) -> None:
        if self._topics is None:
            self._consumer.subscribe([MARKET_TOPIC_PATTERN], on_assign=self._on_assign, on_revoke=self._on_revoke)
            return
        self._consumer.assign([])
        self._assign_topics(self._topics)

    def _assign_topics(self, topics: list[str]) -> None:
        new = [t for t in dict.fromkeys(topics) if t not in self._assigned_topics]
        if not new:
            return
        metadata = self._admin.list_topics(timeout=10)
        partitions = [TopicPartition(t, p) for t in new if t in metadata.topics for p in metadata.topics[t].partitions]
        self._consumer.incremental_assign(self._resume_positions(partitions))
        self._assigned_topics.update(new)

    def add_topics(self, topics: list[str]) -> None:
        """Thread-safe: assign more topics (all partitions) to a worker started with `topics=[...]`. The worker's
        own loop picks them up, so a loader can start the sink before it knows every topic it will write."""
        for topic in topics:
            self._pending_topics.put(topic)

    # --- consuming --------------------------------------------------------------------------------------------
    def _dead_letter(self, msg: Message, reason: str, detail: str) -> None:
        topic = msg.topic()
        reject = Reject(reason, detail, msg.value() or b"", f"{topic}/{msg.partition()}", msg.offset())
        self._dlq.send_reject(f"dlq.{topic}", reject, stage="sink", key=msg.key())
        self.stats.rejected[reason] += 1  # k2_rejected_records_total: counted by send_reject

    def _spec_for(self, topic: str) -> RecordSpec:
        spec = self._specs.get(topic)
        if spec is None:
            spec = self._specs[topic] = TopicName.parse(topic).spec
        return spec

    def _decoder_for(self, schema_id: int, spec: RecordSpec) -> tuple[Any, Any]:
        """(writer, reader) schemas; reader None when the writer is the current schema (no resolution step)."""
        key = (schema_id, spec.name)
        if key not in self._decoders:
            writer = fastavro.parse_schema(self._registry.schema_by_id(schema_id))
            reader = parsed_schema(spec)
            self._decoders[key] = (writer, None if writer == reader else reader)
        return self._decoders[key]

    def _accept_all(self, messages: list[Message]) -> None:
        """Record each message's offset and buffer it for its table. Per-message Python is the sink's ceiling, so
        a message whose (topic, 5-byte header) was seen since the last commit takes a fast route: straight onto
        the list of frames its table batch-decodes; anything else (a new schema id, a bad header, an older
        writer schema) goes through `_accept`."""
        ranges, fast = self._ranges, self._fast_routes
        buffered = consumed = 0
        for msg in messages:
            if msg.error():
                if (refused := access_error(msg.error())) is not None:
                    raise refused  # no ACL for the group or topics, or a login refused: waiting cannot fix it
                log.warning("sink.consume_error", error=msg.error().str())
                continue
            topic, offset = msg.topic(), msg.offset()
            key = (topic, msg.partition())
            seen = ranges.get(key)
            ranges[key] = (offset if seen is None else seen[0], offset + 1)
            consumed += 1
            value = msg.value()
            frames = fast.get((topic, value[:5])) if value is not None else None
            if frames is not None:
                frames.append(msg)
                buffered += 1
            elif self._accept(msg, topic, value):
                buffered += 1
        self._buffered += buffered
        self.stats.consumed += consumed
        metrics.SINK_CONSUMED.inc(consumed)  # messages, not consume errors: the same count as stats.consumed

    def _accept(self, msg: Message, topic: str, value: bytes | None) -> bool:
        """Buffer one message for its table, or dead-letter it; True when buffered."""
        try:
            spec = self._spec_for(topic)
        except ValueError as exc:
            self._dead_letter(msg, "unknown_topic", str(exc))
            return False
        try:
            writer, reader = self._decoder_for(schema_id_of(value), spec)
        except DecodeError as exc:
            self._dead_letter(msg, "undecodable", str(exc))
            return False
        except Exception as exc:  # registry lookup failed for this id: the bytes are kept, with why
            self._dead_letter(msg, "unknown_schema", f"{type(exc).__name__}: {exc}")
            return False
        buffer = self._buffers.get(spec.name)
        if buffer is None:
            buffer = self._buffers[spec.name] = _TableBuffer(spec)
        if reader is None:
            buffer.framed.append(msg)  # decoded with the whole batch at commit time
            self._fast_routes[(topic, value[:5])] = buffer.framed  # type: ignore[index]
            return True
        return self._decode_one(buffer, msg, writer, reader)

    def _decode_one(self, buffer: _TableBuffer, msg: Message, writer: Any, reader: Any) -> bool:
        try:
            record = decode(msg.value(), writer, reader)
        except DecodeError as exc:
            self._dead_letter(msg, "undecodable", str(exc))
            return False
        buffer.rows.append(record)
        buffer.messages.append(msg)
        return True

    def poll_once(self, max_messages: int = 10_000, timeout: float = 0.2) -> int:
        if self._deferred_commits:
            # Retry a deferred commit before consuming anything more: its buffers, and the Arrow decoded from them
            # and kept for the retry, must be exactly what failed, or later records would ride on stale Arrow and
            # have their offsets committed unwritten.
            self.commit()
            if self._deferred_commits:
                return 0
        if self._group_behind_lake:
            behind, self._group_behind_lake = self._group_behind_lake, {}
            try:
                self._consumer.commit(
                    offsets=[TopicPartition(t, p, o) for (t, p), o in behind.items()], asynchronous=False
                )
            except KafkaException as exc:  # e.g. mid-rebalance: the next owner syncs from the lake the same way
                log.warning("sink.group_sync_failed", error=str(exc))
                return 0
            self.committed.update(behind)
            log.info("sink.group_synced_to_lake", offsets={f"{t}[{p}]": o for (t, p), o in behind.items()})
        if self._topics is not None and not self._pending_topics.empty():
            pending = []
            while not self._pending_topics.empty():
                pending.append(self._pending_topics.get())
            self._assign_topics(pending)
        messages = self._consumer.consume(max_messages, timeout)
        self._accept_all(messages)
        due = time.monotonic() - self._last_commit >= self._settings.sink_commit_seconds
        if self._buffered >= self._settings.sink_commit_rows or (due and self._ranges):
            self.commit()
        return len(messages)

    # --- committing ------------------------------------------------------------------------------------------
    def _to_arrow(self, buffer: _TableBuffer) -> pa.Table:
        """Arrow for everything buffered for one table; bad records go to the DLQ alone."""
        parts = []
        if buffer.framed:
            try:
                parts.append(decode_batch(buffer.spec, [m.value() for m in buffer.framed]))
            except BatchDecodeError as exc:
                log.warning("sink.batch_decode_fallback", table=buffer.spec.name, reason=str(exc))
                writer = reader = parsed_schema(buffer.spec)
                for msg in buffer.framed:
                    self._decode_one(buffer, msg, writer, reader)
        if buffer.rows:
            parts.append(self._rows_to_arrow(buffer))
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def _rows_to_arrow(self, buffer: _TableBuffer) -> pa.Table:
        """If any record does not fit (Avro cannot say decimal(18,8) overflowed), find the culprits one by one
        and dead-letter only them: one bad record never takes its batch along."""
        try:
            return records_to_arrow(buffer.spec, buffer.rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError, TypeError):
            pass
        good = []
        for record, msg in zip(buffer.rows, buffer.messages, strict=True):
            reason = invalid_reason(buffer.spec, record)
            if reason is None:
                try:
                    records_to_arrow(buffer.spec, [record])
                except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, ValueError, TypeError) as exc:
                    reason = f"arrow_conversion:{type(exc).__name__}"
            if reason:
                self._dead_letter(msg, reason, f"record {record.get('message_id')} does not fit {buffer.spec.name}")
            else:
                good.append(record)
        return records_to_arrow(buffer.spec, good)

    def _append(self, buffer: _TableBuffer, ranges: dict[tuple[str, int], tuple[int, int]]) -> None:
        spec = buffer.spec
        table = self._table(spec)
        if buffer.arrow is None:
            buffer.arrow = self._to_arrow(buffer)
        batch = buffer.arrow
        if batch.num_rows == 0:
            return
        mask = self._indexes[spec.name].new_rows_mask(batch)
        fresh = batch.filter(mask)
        self.stats.duplicates[spec.name] += batch.num_rows - fresh.num_rows
        if fresh.num_rows == 0:
            return  # nothing new; the Kafka commit still records the progress
        fresh = in_write_order(fresh)
        # CPU of this process since its previous append (k2 cost): decoding and dedup of this batch, the previous
        # Parquet write, and whatever else the process did meanwhile (e.g. the producer under `k2 load`).
        cpu, self._cpu_mark = time.process_time() - self._cpu_mark, time.process_time()
        summary = {
            CPU_KEY: f"{cpu:.6f}",
            SUMMARY_KEY: encode_ranges(ranges, self._topic_ids),
            "k2.rows": str(fresh.num_rows),
            "k2.worker": WORKER_ID,  # which sink process committed it: the audit trail of a multi-worker group
        }
        for attempt in range(_APPEND_ATTEMPTS):
            try:
                table.append(fresh, snapshot_properties=summary)
                break
            except CommitFailedException as exc:
                # pyiceberg already retried a few times; with several workers committing to one table under
                # load that can still run out. It guarantees the append did not land, so trying again is safe.
                if attempt == _APPEND_ATTEMPTS - 1:
                    raise
                log.warning("sink.append_raced", table=spec.name, attempt=attempt + 1, error=str(exc))
                time.sleep(random.uniform(0.1, 0.5) * (attempt + 1))
                table.refresh()
        self._indexes[spec.name].add_committed(fresh)
        self.stats.written[spec.name] += fresh.num_rows

    def commit(self, *, final: bool = False) -> None:
        """Append every buffer to its table, flush the DLQ, then commit the offsets to Kafka.

        When the catalog or warehouse fails (after pyiceberg's and the sink's own retries), the buffers are kept,
        the catalog breaker opens and `run` stops consuming until it half-opens, then tries again — up to
        _MAX_DEFERRED_COMMITS times in a row; a `final` commit (stopping, or partitions being revoked) raises at once.
        """
        if not self._ranges:
            return
        if self._deferred_commits and not final and self.breaker.open:
            return  # the deferred commit is retried once the breaker lets a trial through
        started = time.monotonic()
        written, duplicates = Counter(self.stats.written), Counter(self.stats.duplicates)
        # The order is the exactly-once protocol (module doc): the lake first, then the DLQ, then Kafka.
        if not self._append_buffers(final=final):
            return  # deferred: buffers and offsets stay for the retry
        self._flush_dlq()
        self._commit_offsets()
        self._record_commit(time.monotonic() - started, written, duplicates)
        self._reset()

    def _append_buffers(self, *, final: bool) -> bool:
        """Step 1: append each table's buffer, its consumed offset ranges in the snapshot summary. False when the
        catalog failed and the commit is deferred (the breaker opens); raises when it may not be deferred."""
        try:
            for name, buffer in self._buffers.items():
                ranges = {k: v for k, v in self._ranges.items() if self._spec_for(k[0]).name == name}
                if buffer.framed or buffer.rows:
                    self._append(buffer, ranges)
        except _CATALOG_FAILURES as exc:
            metrics.SINK_COMMIT_FAILURES.labels("iceberg").inc()
            for index in self._indexes.values():
                index.clear()  # an append may have landed anyway: the retry re-reads the lake before deduplicating
            self._deferred_commits += 1
            if final or self._deferred_commits >= _MAX_DEFERRED_COMMITS:
                raise
            self.breaker.record_failure()
            log.error(
                "sink.commit_deferred",
                error=f"{type(exc).__name__}: {exc}",
                attempt=self._deferred_commits,
                retry_in_seconds=self.breaker.reset_seconds,
                note="nothing is lost: the records stay buffered and their offsets uncommitted",
            )
            return False
        except Exception:
            metrics.SINK_COMMIT_FAILURES.labels("iceberg").inc()
            raise
        self._deferred_commits = 0
        if self.breaker.failing:
            self.breaker.record_success()
        return True

    def _flush_dlq(self) -> None:
        """Step 2: the rejects of these messages are durable in their DLQ topics before the offsets are given up."""
        self._dlq.flush()

    def _commit_offsets(self) -> None:
        """Step 3: commit the consumed offsets to the consumer group (and remember them in `committed`)."""
        offsets = [TopicPartition(t, p, end) for (t, p), (_first, end) in self._ranges.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # The Iceberg commit above holds these offsets, so nothing is lost or doubled: whoever owns the
            # partitions next resumes from the lake (and brings the group up to it). Typical cause: a rebalance
            # while workers stop together.
            log.warning("sink.kafka_commit_failed", error=str(exc), note="offsets are safe in the lake")
            metrics.SINK_COMMIT_FAILURES.labels("kafka").inc()
        else:
            for (t, p), (_first, end) in self._ranges.items():
                self.committed[(t, p)] = end

    def _record_commit(self, elapsed: float, written_before: Counter[str], duplicates_before: Counter[str]) -> None:
        """Step 4: metrics, stats and the log line of the commit (what it wrote: the counters since `*_before`)."""
        self._export(elapsed, self.stats.written - written_before, self.stats.duplicates - duplicates_before)
        self.stats.commits += 1
        self.stats.commit_seconds.append(elapsed)
        log.info(
            "sink.committed",
            rows=self._buffered,
            partitions=len(self._ranges),
            seconds=round(elapsed, 3),
            written=dict(self.stats.written),
        )

    def _reset(self) -> None:
        """Step 5: start the next batch empty."""
        self._buffers.clear()
        self._fast_routes.clear()  # they point into the buffers just cleared
        self._ranges.clear()
        self._buffered = 0
        self._last_commit = time.monotonic()

    def _export(self, elapsed: float, written: Counter[str], duplicates: Counter[str]) -> None:
        """Metrics of one commit, and the lag of every partition this worker holds: the log end librdkafka saw
        in its own fetches (ListOffsets is wrong on the embedded broker) minus what the group committed."""
        metrics.SINK_COMMIT_SECONDS.observe(elapsed)
        metrics.SINK_LAST_COMMIT.set_to_current_time()
        for table, rows in written.items():
            metrics.SINK_WRITTEN.labels(table).inc(rows)
        for table, rows in duplicates.items():
            metrics.SINK_DUPLICATES.labels(table).inc(rows)
        for (topic, partition), end in self.committed.items():
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            if high is not None and high >= 0:
                metrics.CONSUMER_LAG.labels(topic, str(partition)).set(max(high - end, 0))

    def group_committed(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Offsets the whole consumer group has committed (any worker), for "is it all in the lake?"."""
        tps = [TopicPartition(t, p) for t, p in partitions]
        return {(tp.topic, tp.partition): tp.offset for tp in fetch_committed(self._consumer, tps)}

    def run(
        self,
        stop: threading.Event | None = None,
        until: Callable[[IcebergSink], bool] | None = None,
        on_progress: Callable[[IcebergSink], None] | None = None,
        finishing: Callable[[], bool] | None = None,
    ) -> SinkStats:
        """Consume and commit until `stop` is set or `until(self)` holds; always ends with a commit.

        `until` is tried when the worker has caught up and `finishing()` says no more input is coming (default:
        always); until then an idle worker commits only by size or time, never in dribbles."""
        self._start()
        try:
            while not (stop and stop.is_set()):
                if self.breaker.open:  # the catalog is failing: consume nothing more until the next trial
                    if stop is not None:
                        stop.wait(0.2)
                    else:
                        time.sleep(0.2)
                    continue
                got = self.poll_once()
                if on_progress:
                    on_progress(self)
                if until is not None and got == 0 and (finishing is None or finishing()):
                    self.commit()
                    if until(self):
                        break
            self.commit(final=True)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        """Flush the DLQ and disconnect every client (the embedded broker then stops at once)."""
        try:
            self._consumer.close()  # first: leaving the group may revoke partitions, which commits via the DLQ too
        finally:
            self._dlq.close()
            self._admin = None  # type: ignore[assignment]
