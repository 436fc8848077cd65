"""Offsets kept in snapshot summaries (keyed by log identity) and the lake's message-id index, on a real catalog."""

from __future__ import annotations

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.dedup import LakeIdIndex
from k2.lake.offsets import SUMMARY_KEY, encode_ranges, next_offsets
from k2.lake.tables import ensure_table
from k2.schema import TRADES_V2
from k2.schema.arrow import records_to_arrow
from tests.integration.helpers import make_trade

TOPIC = "market.equities.trades.test"


def _append(table, rows, ranges, topic_id):
    table.append(
        records_to_arrow(TRADES_V2, rows), snapshot_properties={SUMMARY_KEY: encode_ranges(ranges, {TOPIC: topic_id})}
    )


def test_resume_offsets_come_from_snapshots_of_the_same_log_only(settings: Settings) -> None:
    table = ensure_table(open_catalog(settings), TRADES_V2)
    _append(table, [make_trade(1)], {(TOPIC, 0): (0, 10), (TOPIC, 1): (0, 4)}, "log-A")
    _append(table, [make_trade(2)], {(TOPIC, 0): (10, 25)}, "log-A")
    # The broker lost its log and renumbered from 0 under a new topic id:
    _append(table, [make_trade(3)], {(TOPIC, 0): (0, 3)}, "log-B")

    assert next_offsets(table, {TOPIC: "log-A"}) == {(TOPIC, 0): 25, (TOPIC, 1): 4}
    assert next_offsets(table, {TOPIC: "log-B"}) == {(TOPIC, 0): 3}
    assert next_offsets(table, {TOPIC: "log-C"}) == {}


def test_lake_index_flags_rows_already_stored_and_repeats_within_a_batch(settings: Settings) -> None:
    table = ensure_table(open_catalog(settings), TRADES_V2)
    table.append(records_to_arrow(TRADES_V2, [make_trade(i) for i in range(3)]))
    index = LakeIdIndex(table)

    batch = records_to_arrow(TRADES_V2, [make_trade(2), make_trade(3), make_trade(3), make_trade(4, day=11)])
    assert index.new_rows_mask(batch).to_pylist() == [False, True, False, True]

    index.add_committed(batch)
    again = records_to_arrow(TRADES_V2, [make_trade(3), make_trade(4, day=11), make_trade(5)])
    assert index.new_rows_mask(again).to_pylist() == [False, False, True]


def test_lake_index_maps_each_partitions_answer_back_to_its_rows(settings: Settings) -> None:
    """Rows of two partitions interleaved: each is looked up in its own partition's ids, answers in row order."""
    table = ensure_table(open_catalog(settings), TRADES_V2)
    table.append(records_to_arrow(TRADES_V2, [make_trade(1), make_trade(2, day=11)]))
    index = LakeIdIndex(table)

    batch = records_to_arrow(
        TRADES_V2, [make_trade(2, day=11), make_trade(7), make_trade(1), make_trade(8, day=11), make_trade(9)]
    )
    assert index.new_rows_mask(batch).to_pylist() == [False, True, False, True, True]
