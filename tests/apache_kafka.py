"""One Apache Kafka broker for a test session (K2_TEST_BROKER=apache_kafka), emptied before each test.

Tests on the embedded Tansu broker get a broker of their own per run; on one shared Kafka they would share topic
names (market.*, dlq.*) and consumer groups, so a test would find the previous test's records and committed offsets.
Deleting every topic before a test removes both: Kafka drops a deleted partition's committed offsets with it, and
the next test's topics come back with new topic ids (the ids the lake keys its offsets by).
"""

from __future__ import annotations

import time

from confluent_kafka.admin import AdminClient

INTERNAL_PREFIX = "__"  # __consumer_offsets, __transaction_state, __cluster_metadata


def empty(bootstrap: str, timeout: float = 60.0) -> None:
    """Delete every non-internal topic and return once the metadata no longer lists any of them."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log.connection.close": False})
    topics = [t for t in admin.list_topics(timeout=10).topics if not t.startswith(INTERNAL_PREFIX)]
    if not topics:
        return
    for future in admin.delete_topics(topics, operation_timeout=30).values():
        future.result()
    deadline = time.monotonic() + timeout
    # The controller answered; the broker's metadata cache follows a moment later. Until it does, a producer's
    # `ensure_topics` would see the old topic and skip creating the new one.
    while set(topics) & set(admin.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics still listed {timeout}s after deletion: {sorted(topics)}")
        time.sleep(0.05)
