"""Kafka offset ranges recorded in Iceberg snapshot summaries, so a restarted sink resumes from the table.

Each append records, for every topic-partition whose records it holds, the consumed range [first, end) and the
topic id (the log's identity). The next offset to read for a partition is the largest recorded `end` among
snapshots of the *same* topic id: a broker that lost its log renumbers from 0 under a new id, and old offsets
must not be applied to it (docs/stack-notes.md, "Embedded broker").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

SUMMARY_KEY = "k2.kafka.offsets"
CPU_KEY = "k2.cpu-seconds"  # process CPU a sink worker spent since its previous append (read by k2 cost)

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


def _latest_logs(snapshots: Iterable[Snapshot]) -> tuple[dict[str, str], dict[tuple[str, int], tuple[int, int]]]:
    """(topic -> topic id of its newest log, (topic, partition) -> widest [first, end) seen for that log)."""
    newest: dict[str, tuple[tuple[int, int], str]] = {}  # topic -> ((sequence, timestamp), topic id)
    spans: dict[tuple[str, str, int], tuple[int, int]] = {}
    for snapshot in snapshots:
        raw = snapshot.summary.additional_properties.get(SUMMARY_KEY) if snapshot.summary else None
        if not raw:
            continue
        order = (snapshot.sequence_number or 0, snapshot.timestamp_ms)
        for topic, entry in json.loads(raw).items():
            topic_id = entry.get("topic_id", "")
            if topic not in newest or order > newest[topic][0]:
                newest[topic] = (order, topic_id)
            for partition, (first, end) in entry["ranges"].items():
                key = (topic, topic_id, int(partition))
                old = spans.get(key)
                spans[key] = (first, end) if old is None else (min(old[0], first), max(old[1], end))
    ids = {topic: topic_id for topic, (_order, topic_id) in newest.items()}
    ranges = {(t, p): span for (t, tid, p), span in spans.items() if ids[t] == tid}
    return ids, ranges


def merged_offsets(snapshots: Iterable[Snapshot]) -> str | None:
    """One `SUMMARY_KEY` value holding, per topic-partition, the widest range recorded by `snapshots` for the
    topic's newest log (None: no snapshot records offsets).

    Maintenance commits carry it, so expiring the snapshots that first recorded an offset never moves
    `next_offsets` back. Earlier logs of a topic are left out: a renumbered log never comes back (docs/stack-notes.md,
    "Embedded broker").
    """
    ids, ranges = _latest_logs(snapshots)
    return encode_ranges(ranges, ids) if ids else None


def resume_points(snapshots: Iterable[Snapshot]) -> dict[tuple[str, str, int], int]:
    """(topic, topic id, partition) -> next offset, for each topic's newest log among `snapshots`."""
    ids, ranges = _latest_logs(snapshots)
    return {(topic, ids[topic], partition): end for (topic, partition), (_first, end) in ranges.items()}
