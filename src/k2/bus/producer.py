"""Producing V2 records (and rejects, to DLQ topics) with Avro framing and registry ids."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from k2.bus.clients import access_error
from k2.bus.registry_client import RegistryClient
from k2.bus.serde import encode_columns, encoder
from k2.bus.topics import DLQ_PREFIX, TopicName
from k2.core import metrics
from k2.core.batch import Reject, SourceBatch
from k2.core.breaker import CircuitBreaker
from k2.schema.avro import avro_schema

log = structlog.get_logger(__name__)

# DLQ header names: the reason and where the bytes came from travel with the original bytes.
H_REASON = "k2.reason"
H_DETAIL = "k2.detail"
H_ORIGIN = "k2.origin"
H_STAGE = "k2.stage"


class ProduceError(RuntimeError):
    pass


@dataclass
class ProduceStats:
    produced: Counter[str] = field(default_factory=Counter)  # per topic
    dead_lettered: Counter[str] = field(default_factory=Counter)  # per reason
    failures: list[str] = field(default_factory=list)
    # last acknowledged offset per (topic, partition), DLQs included; a partition's acks arrive in offset order
    # (idempotent producer), so the last one is the highest
    acked: dict[tuple[str, int], int] = field(default_factory=dict)

    @property
    def end_offsets(self) -> dict[tuple[str, int], int]:
        """Highest delivered offset + 1 per (topic, partition) of the data topics: what a sink must have
        committed for "all landed" (no sink consumes the DLQs)."""
        return {key: offset + 1 for key, offset in self.acked.items() if not key[0].startswith(DLQ_PREFIX)}


def reject_headers(reject: Reject, stage: str) -> list[tuple[str, bytes]]:
    return [
        (H_REASON, reject.reason.encode()),
        (H_DETAIL, reject.detail.encode()),
        (H_ORIGIN, f"{reject.origin}:{reject.position}".encode()),
        (H_STAGE, stage.encode()),
    ]


class RecordProducer:
    """Idempotent, acks=all producer of V2 records; key = symbol; DLQ for rejects with reason headers."""

    def __init__(self, config: dict[str, Any], registry: RegistryClient) -> None:
        self._producer = Producer(config)
        self._registry = registry
        self._schema_ids: dict[str, int] = {}
        self.stats = ProduceStats()
        self.breaker: CircuitBreaker | None = None  # told of every delivery failure (k2.core.breaker)

    def _schema_id(self, topic: TopicName) -> int:
        subject = topic.subject
        if subject not in self._schema_ids:
            self._schema_ids[subject] = self._registry.register(subject, avro_schema(topic.spec))
        return self._schema_ids[subject]

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        # Runs once per message (it was 30 % of producing the ASX sample when it did more): the success path is
        # one dict store; the breaker hears of successes once per batch, in `_poll`.
        if err is None:
            self.stats.acked[msg.topic(), msg.partition()] = msg.offset()
            return
        self.stats.failures.append(f"{msg.topic()}: {err.str()}")
        metrics.PRODUCE_FAILURES.labels(msg.topic()).inc()
        if self.breaker is not None:
            self.breaker.record_failure()

    def _serve_reports(self, wait: Callable[[], int]) -> int:
        """Run `wait` (a poll or flush, which serves delivery reports); a failing breaker is told of a success when
        anything was acknowledged meanwhile. Returns what `wait` returned."""
        before = sum(self.stats.acked.values()) if self.breaker is not None and self.breaker.failing else None
        try:
            result = wait()
        except KafkaException as exc:
            # An idempotent producer's first request asks the cluster for a producer id: a user without the ACL
            # for it gets a fatal CLUSTER_AUTHORIZATION_FAILED here, which is a denial to report in one line.
            if exc.args and isinstance(exc.args[0], KafkaError) and (denied := access_error(exc.args[0])):
                raise denied from None
            raise
        if before is not None and sum(self.stats.acked.values()) != before:
            self.breaker.record_success()  # type: ignore[union-attr]
        return result

    def produce_raw(self, topic: str, value: bytes, key: bytes | None, headers: list | None = None) -> None:
        """Send bytes as they are (DLQ, replays, tests); waits for room when the local queue is full."""
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers, on_delivery=self._on_delivery)
                return
            except BufferError:
                # Local queue full: serve delivery reports until there is room (backpressure, not loss).
                self._producer.poll(0.05)

    def send(self, batch: SourceBatch) -> None:
        topic = TopicName(batch.asset_class, batch.spec.data_type, batch.exchange)
        name = str(topic)
        schema_id = self._schema_id(topic)
        if batch.table is not None:
            values = encode_columns(batch.spec, schema_id, batch.table)
            keys = pc.cast(batch.table.column("symbol"), pa.binary()).to_pylist()
        else:
            encode = encoder(batch.spec, schema_id)
            values = [encode(record) for record in batch.records]
            keys = [record["symbol"].encode() for record in batch.records]
        produce, on_delivery = self._producer.produce, self._on_delivery
        for value, key in zip(values, keys, strict=True):
            try:  # produce_raw inlined: this loop runs once per record
                produce(name, value, key, on_delivery=on_delivery)
            except BufferError:
                self.produce_raw(name, value, key)
        self.stats.produced[name] += len(values)
        metrics.RECORDS_PRODUCED.labels(name).inc(len(values))
        for reject in batch.rejects:
            self.send_reject(topic.dlq, reject, stage="source")
        self._serve_reports(lambda: self._producer.poll(0))

    def send_reject(self, dlq: str, reject: Reject, stage: str, key: bytes | None = None) -> None:
        self.produce_raw(dlq, reject.raw, key, headers=reject_headers(reject, stage))
        self.stats.dead_lettered[reject.reason] += 1
        metrics.RECORDS_REJECTED.labels(stage, reject.reason).inc()

    def close(self, timeout: float = 60.0) -> None:
        """Flush, then release the client: a broker stops at once only when no client is connected to it."""
        try:
            self.flush(timeout)
        finally:
            self._producer = None  # type: ignore[assignment]  # librdkafka handle destroyed with the object

    def flush(self, timeout: float = 60.0) -> None:
        """Wait for every delivery report; raise if any record was not acknowledged by the broker."""
        remaining = self._serve_reports(lambda: self._producer.flush(timeout))
        if remaining:
            raise ProduceError(f"{remaining} messages still unacknowledged after {timeout}s: is the broker up?")
        if self.stats.failures:
            raise ProduceError(f"{len(self.stats.failures)} messages failed delivery, first: {self.stats.failures[0]}")
