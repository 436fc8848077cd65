"""Kafka client settings and admin helpers shared by the producer and the sink.

`base_config` is the one place K2's settings become librdkafka settings: the typed K2_KAFKA_SECURITY_PROTOCOL /
_SASL_* / _SSL_CA_LOCATION first, then K2_KAFKA_EXTRA (the escape hatch) over them. `check_access` turns a broker
refusing K2 (a wrong password, an untrusted certificate) into one `KafkaAccessError` line before anything runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from k2.config import Settings
from k2.redact import redact

log = structlog.get_logger(__name__)

T = TypeVar("T")

# What a client sees while the cluster changes under it — a broker killed, the partition leaders, the controller or a
# group coordinator moving — until librdkafka's metadata catches up: worth asking again, not worth a worker's life.
# (KafkaError.retriable() is not set on several of these, e.g. "Timed out waiting for controller".)
TRANSIENT_ERRORS = frozenset(
    {
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_CONTROLLER,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)
# Per attempt when retrying an admin request: the default (socket.timeout.ms, 60 s) spends a minute on a controller
# that was killed before librdkafka's metadata names another.
ATTEMPT_TIMEOUT = 10.0


_LOGIN_REFUSED = (
    "refused K2's SASL login (check K2_KAFKA_SASL_USERNAME / K2_KAFKA_SASL_PASSWORD and K2_KAFKA_SASL_MECHANISM)"
)
# What a broker answers when it will not have K2 at all: retrying cannot help, the operator must fix a setting.
# (librdkafka reports a refused SASL login as _AUTHENTICATION; the broker's own code is SASL_AUTHENTICATION_FAILED.)
REFUSALS = {
    KafkaError._AUTHENTICATION: _LOGIN_REFUSED,
    KafkaError.SASL_AUTHENTICATION_FAILED: _LOGIN_REFUSED,
    KafkaError._SSL: "failed the TLS handshake (is its certificate signed by a CA in K2_KAFKA_SSL_CA_LOCATION, and"
    " for this host name?)",
}
# A login that worked but an ACL that does not allow the request.
DENIALS = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    }
)


class KafkaAccessError(RuntimeError):
    """The brokers refused K2: bad credentials, an untrusted certificate, or an ACL that does not allow it. The
    message is one line, saying what to check; it holds no secret."""


class _ClientLog:
    """librdkafka's own log lines, routed into structlog at INFO (shown with -v) instead of straight to stderr: a
    broker that refuses a login would otherwise print one line per reconnect attempt, dozens a second, around the
    one error K2 reports. Every failure that matters reaches K2 as an error or exception anyway."""

    def log(self, level: int, message: str, *args: object) -> None:
        log.info("kafka.client", librdkafka_level=level, message=redact(message % args if args else message))


_CLIENT_LOG = _ClientLog()


def base_config(settings: Settings, bootstrap: str) -> dict[str, Any]:
    """Settings every client shares. Holds the SASL password: never log it (redact_mapping masks it)."""
    # log.connection.close=False: a broker closing idle connections at shutdown is not worth a log line
    return {
        "bootstrap.servers": bootstrap,
        "log.connection.close": False,
        "logger": _CLIENT_LOG,
        **settings.kafka_security_config,
        **settings.kafka_extra,
    }


def access_error(error: KafkaError, bootstrap: str | None = None) -> KafkaAccessError | None:
    """The one-line KafkaAccessError `error` means, or None when it is not a refusal or a denial."""
    kafka = f"Kafka at {bootstrap}" if bootstrap else "Kafka"
    if error.code() in REFUSALS:
        return KafkaAccessError(f"{kafka} {REFUSALS[error.code()]}: {redact(error.str())}")
    if error.code() in DENIALS:
        return KafkaAccessError(
            f"{kafka} denied the request ({error.name()}): the user K2 logs in as lacks an ACL for it"
            " (see README, Running on a real cluster)"
        )
    return None


def check_access(settings: Settings, bootstrap: str, timeout: float = 15.0) -> None:
    """Raise KafkaAccessError when the brokers refuse K2's login or certificate. A broker that does not answer
    within `timeout` is not an access problem: that is left to the callers' own waiting and retries."""
    refusals: list[KafkaError] = []
    admin = AdminClient({**base_config(settings, bootstrap), "error_cb": refusals.append})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException:
            admin.poll(0)  # error_cb runs in poll(): a refused login arrives as _AUTHENTICATION, a bad CA as _SSL
        for error in refusals:
            if (refused := access_error(error, bootstrap)) is not None:
                raise refused


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
            if exc.args[0].code() in DENIALS:
                raise access_error(exc.args[0]) from None
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def is_transient(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and (err.retriable() or err.code() in TRANSIENT_ERRORS)


def retry_transient(call: Callable[[], T], what: str, patience: float) -> T:
    """`call()`, tried again after 0.5, 1, 2, then every 5 s while it fails with a transient error
    (TRANSIENT_ERRORS), for up to `patience` seconds; then, or on any other error, the error is raised."""
    deadline = time.monotonic() + patience
    delay = 0.5
    while True:
        try:
            return call()
        except KafkaException as exc:
            if not is_transient(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("kafka.retrying", what=what, error=exc.args[0].str(), retry_in_seconds=delay)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)


def topic_ids(admin: AdminClient, topics: Iterable[str], patience: float = 0.0) -> dict[str, str]:
    """Topic id per topic: the identity of a log. A broker that lost its data recreates topics with new ids,
    so offsets remembered for an old id must not be applied to the new log (docs/stack-notes.md, "Embedded broker").

    `patience` > 0: transient errors (a killed controller or leader) are retried for that long, each attempt
    limited to ATTEMPT_TIMEOUT; 0: one attempt, an error raised at once (an interactive read)."""
    names = list(dict.fromkeys(topics))
    if not names:
        return {}

    def describe() -> dict[str, str]:
        timeout = {"request_timeout": ATTEMPT_TIMEOUT} if patience > 0 else {}
        futures = admin.describe_topics(TopicCollection(names), **timeout)
        return {name: str(fut.result().topic_id) for name, fut in futures.items()}

    return retry_transient(describe, "describe_topics", patience) if patience > 0 else describe()


def fetch_committed(
    consumer: Consumer, partitions: list[TopicPartition], patience: float = 30.0
) -> list[TopicPartition]:
    """The group's committed offsets for `partitions`, asked again while the cluster is changing for up to
    `patience` seconds. On Apache Kafka a group coordinator answers NOT_COORDINATOR / COORDINATOR_LOAD_IN_PROGRESS
    while its partition of __consumer_offsets is created, loaded or moved: the first group request after the offsets
    topic is created (seen: `k2 up`'s first committed() on a fresh Kafka) and after any broker restart or leader
    change; librdkafka finds the new coordinator but hands the error of the attempt in flight to the caller."""
    attempt = max(1.0, min(ATTEMPT_TIMEOUT, patience))  # a short probe (the lag gauge) never waits a whole attempt
    return retry_transient(lambda: consumer.committed(partitions, timeout=attempt), "committed offsets", patience)
