"""Kafka offset ranges recorded in Iceberg snapshot summaries, so a restarted sink resumes from the table.

Each append records, for every topic-partition whose records it holds, the consumed range [first, end) and the
topic id (the log's identity). The next offset to read for a partition is the largest recorded `end` among
snapshots of the *same* topic id: a broker that lost its log renumbers from 0 under a new id, and old offsets
must not be applied to it (STACK-NOTES.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pyiceberg.table import Table

SUMMARY_KEY = "k2.kafka.offsets"

# (topic, partition) -> [first, end)
Ranges = Mapping[tuple[str, int], tuple[int, int]]


def encode_ranges(ranges: Ranges, topic_ids: Mapping[str, str]) -> str:
    by_topic: dict[str, dict] = {}
    for (topic, partition), (first, end) in sorted(ranges.items()):
        entry = by_topic.setdefault(topic, {"topic_id": topic_ids.get(topic, ""), "ranges": {}})
        entry["ranges"][str(partition)] = [first, end]
    return json.dumps(by_topic, separators=(",", ":"), sort_keys=True)


def next_offsets(table: Table, topic_ids: Mapping[str, str]) -> dict[tuple[str, int], int]:
    """Next offset to consume per (topic, partition) from this table's snapshots, for the logs named."""
    result: dict[tuple[str, int], int] = {}
    for snapshot in table.metadata.snapshots:
        if snapshot.summary is None:
            continue
        raw = snapshot.summary.additional_properties.get(SUMMARY_KEY)
        if not raw:
            continue
        for topic, entry in json.loads(raw).items():
            if topic not in topic_ids or entry.get("topic_id") != topic_ids[topic]:
                continue  # another log (an earlier life of the broker): its offsets mean nothing here
            for partition, (_first, end) in entry["ranges"].items():
                key = (topic, int(partition))
                if end > result.get(key, -1):
                    result[key] = end
    return result
