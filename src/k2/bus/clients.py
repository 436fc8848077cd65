"""Kafka client settings and admin helpers shared by the producer and the sink."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from k2.config import Settings

log = structlog.get_logger(__name__)


def base_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    # kafka_extra carries SASL/SSL settings for real clusters; never logged (it may hold secrets).
    # log.connection.close=False: a broker closing idle connections at shutdown is not worth a log line
    return {"bootstrap.servers": bootstrap, "log.connection.close": False, **settings.kafka_extra}


def producer_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    return {
        **base_config(settings, bootstrap),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.producer_compression,
        "linger.ms": settings.producer_linger_ms,
        "batch.size": 1_000_000,
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }


def consumer_config(settings: Settings, bootstrap: str, group: str) -> dict[str, Any]:
    return {
        **base_config(settings, bootstrap),
        "group.id": group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # librdkafka's default 1000 ms stalls consumers to 0.17-0.7 M msgs/s; 10 ms gives ~2 M/s (docs/stack-notes.md,
        # "Embedded broker")
        "fetch.queue.backoff.ms": 10,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 1000,
        "max.poll.interval.ms": 300_000,
        "topic.metadata.refresh.interval.ms": 2000,
    }


def ensure_topics(admin: AdminClient, settings: Settings, topics: Iterable[str]) -> None:
    """Create missing topics with partitions/retention from settings; existing topics are left alone."""
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [t for t in dict.fromkeys(topics) if t not in existing]
    if not wanted:
        return
    futures = admin.create_topics(
        [
            NewTopic(
                t,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication,
                config={"retention.ms": str(settings.topic_retention_ms)},
            )
            for t in wanted
        ]
    )
    for topic, future in futures.items():
        try:
            future.result()
            log.info("topic.created", topic=topic, partitions=settings.topic_partitions)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def topic_ids(admin: AdminClient, topics: Iterable[str]) -> dict[str, str]:
    """Topic id per topic: the identity of a log. A broker that lost its data recreates topics with new ids,
    so offsets remembered for an old id must not be applied to the new log (docs/stack-notes.md, "Embedded broker")."""
    names = list(dict.fromkeys(topics))
    if not names:
        return {}
    futures = admin.describe_topics(TopicCollection(names))
    return {name: str(fut.result().topic_id) for name, fut in futures.items()}


# What a group coordinator answers while its partition of __consumer_offsets is being created, loaded or moved. On
# Apache Kafka that is the first group request after the offsets topic is created and any broker restart or leader
# change (seen here: NOT_COORDINATOR from `k2 up`'s first committed() on a fresh Kafka); librdkafka finds the new
# coordinator, but hands the error of the attempt in flight to the caller of committed().
_COORDINATOR_MOVING = frozenset(
    {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE}
)


def fetch_committed(
    consumer: Consumer, partitions: list[TopicPartition], timeout: float = 30.0
) -> list[TopicPartition]:
    """The group's committed offsets for `partitions`, asked again while the coordinator is moving or loading;
    raises KafkaException for any other error, or when `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return consumer.committed(partitions, timeout=max(deadline - time.monotonic(), 1.0))
        except KafkaException as exc:
            if exc.args[0].code() not in _COORDINATOR_MOVING or time.monotonic() >= deadline:
                raise
            log.info("kafka.coordinator_moving", error=exc.args[0].name())
            time.sleep(0.1)  # librdkafka is looking the coordinator up again; ask once it had a moment
