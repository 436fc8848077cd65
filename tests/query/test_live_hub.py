"""The live hub: one consumer per topic shared by every live subscription of a process. Many subscribers of one
symbol each get every record once, in order, at exact offsets; one that falls behind is dropped alone; a joiner a
little behind the feed is served from its ring, one too far behind is refused."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

from k2.query.fresh import FreshReader
from k2.query.live_hub import Chunk, FellBehind, Inbox, LiveHub
from k2.query.subscribe import SubscribeOptions, SubscriptionBatch, subscribe
from tests.integration.helpers import make_trade
from tests.query.live_stack import TOPIC, Live
from tests.query.test_subscribe import ids_of
from tests.waiting import wait_until

TOPIC_NAME = str(TOPIC)


def _ids(numbers: range | list[int], symbol: str = "TST") -> list[str]:
    return [make_trade(n, symbol=symbol)["message_id"] for n in numbers]


def _chunk(offsets: list[int], partitions: list[int], ends: dict[int, int]) -> Chunk:
    rows = pa.table({"n": offsets})
    return Chunk(rows, np.array(partitions), np.array(offsets), {("t", p): e for p, e in ends.items()}, "t")


def test_a_split_chunk_ends_before_the_rest_on_each_partition() -> None:
    chunk = _chunk([5, 9, 6, 10], [0, 1, 0, 1], {0: 8, 1: 12})
    first, rest = chunk.split(2)
    assert first.rows["n"].to_pylist() == [5, 9]
    assert first.ends == {("t", 0): 6, ("t", 1): 10}  # the rest starts at 6 on 0 and 10 on 1
    assert rest.rows["n"].to_pylist() == [6, 10]
    assert rest.ends == {("t", 0): 8, ("t", 1): 12}


def test_an_inbox_hands_out_at_most_room_rows_and_drops_a_subscriber_past_its_limit() -> None:
    inbox = Inbox(["TST"], limit=4)
    assert inbox.put(_chunk([1, 2, 3], [0, 0, 0], {0: 4}))
    assert inbox.put(_chunk([], [], {0: 7}))  # records of other symbols: the ends move, nothing is added
    taken = inbox.take(2, timeout=0)
    assert [c.rows["n"].to_pylist() for c in taken] == [[1, 2]]
    assert taken[0].ends == {("t", 0): 3}
    assert [c.ends for c in inbox.take(5, timeout=0)] == [{("t", 0): 7}]
    assert inbox.put(_chunk([8, 9, 10], [0, 0, 0], {0: 11}))
    assert not inbox.put(_chunk([11, 12], [0, 0], {0: 13}))  # 5 rows held: over the limit of 4
    with pytest.raises(FellBehind):
        inbox.take(5, timeout=0)


def _live_batches(batches: Iterator[SubscriptionBatch], count: int, out: list[SubscriptionBatch]) -> None:
    while sum(b.records.num_rows for b in out) < count:
        out.append(next(batches))


@pytest.mark.integration
def test_fifty_subscribers_of_one_symbol_share_one_consumer_and_a_slow_one_is_dropped_alone(live: Live) -> None:
    live.produce([make_trade(n) for n in range(3)])  # before the subscriptions: not theirs
    total, subscribers = 400, 50
    quick = SubscribeOptions(batch_rows=500, poll_seconds=0.05)  # a batch holds a whole hub chunk: shared, not split
    with live.engine() as engine, FreshReader(live.source) as reader:
        hub = LiveHub(reader)
        slow = subscribe(
            engine,
            reader,
            "trades",
            "TST",
            options=SubscribeOptions(poll_seconds=0.05, hub_buffer_records=50),
            live_hub=hub,
        )
        streams = [subscribe(engine, reader, "trades", "TST", options=quick, live_hub=hub) for _ in range(subscribers)]
        try:
            slow_got = [next(slow)]  # started at the log end; once caught up it joins the hub, then stops reading
            while not hub.subscribers(TOPIC_NAME):
                slow_got.append(next(slow))
            got: list[list[SubscriptionBatch]] = [[] for _ in streams]
            readers = [
                threading.Thread(target=_live_batches, args=(batches, total, out), daemon=True)
                for batches, out in zip(streams, got, strict=True)
            ]
            for thread in readers:
                thread.start()  # each starts where the hub's feed is, and joins it
            wait_until(lambda: hub.subscribers(TOPIC_NAME) == subscribers + 1, 10, "every subscriber to join the hub")
            # TST's records among another symbol's, in several produce batches
            for start in range(0, total, 200):
                numbers = range(3 + start, 3 + start + 200)
                live.produce([t for n in numbers for t in (make_trade(n), make_trade(n, symbol="OTHER"))])
            for thread in readers:
                thread.join(10)
            for out in got:
                assert ids_of(out) == _ids(range(3, 3 + total))  # each record once, in order
                assert {b.phase for b in out if b.records.num_rows} == {"live"}
                for b in out:
                    if b.shared:  # the hub's own tables, to encode once for every subscriber
                        assert pa.concat_tables(b.shared).equals(b.records)
            # subscribers of one filter are handed the same table objects
            tables = [{id(t) for b in out for t in b.shared} for out in got]
            assert all(len(tables[0] & other) > 0 for other in tables[1:])
            assert hub.subscribers(TOPIC_NAME) == subscribers  # the slow one was dropped, no one else
            with pytest.raises(FellBehind):
                while True:
                    slow_got.append(next(slow))
            # what it got before is a prefix; its last cursor resumes exactly after it
            received = ids_of(slow_got)
            assert received == _ids(range(3, 3 + len(received)))
            cursor = slow_got[-1].cursor
            rest: list[SubscriptionBatch] = []
            _live_batches(
                subscribe(engine, reader, "trades", "TST", cursor=cursor, options=quick), total - len(received), rest
            )
            assert received + ids_of(rest) == _ids(range(3, 3 + total))
        finally:
            for batches in [*streams, slow]:
                batches.close()
            hub.close()
        assert hub.subscribers(TOPIC_NAME) == 0


@pytest.mark.integration
def test_a_joiner_behind_the_feed_is_served_from_its_ring_or_refused(live: Live) -> None:
    live.produce([make_trade(n) for n in range(20)])  # offsets 0-19 on TST's partition
    with FreshReader(live.source) as reader:
        partitions = reader.partitions([TOPIC_NAME])[TOPIC_NAME]
        start = dict.fromkeys(partitions, 0)
        hub = LiveHub(reader, ring_messages=30)
        first = Inbox(["TST"], limit=1000)
        try:
            assert hub.join(first, TOPIC_NAME, start)
            wait_until(lambda: sum((hub.positions(TOPIC_NAME) or {}).values()) == 20, 10, "the feed to read all")
            late = Inbox(["TST"], limit=1000)
            assert hub.join(late, TOPIC_NAME, start)  # 20 behind, the ring holds 30: replayed from it
            [replayed] = late.take(100, timeout=0)
            assert replayed.rows["message_id"].to_pylist() == _ids(range(20))
            live.produce([make_trade(n) for n in range(20, 40)])  # the ring now starts at 10
            wait_until(lambda: sum((hub.positions(TOPIC_NAME) or {}).values()) == 40, 10, "the feed to read all")
            assert not hub.join(Inbox(["TST"], limit=1000), TOPIC_NAME, start)
            ahead = {p: 45 for p in partitions}  # not reached yet: what comes before 45 is not for it
            later = Inbox(["TST"], limit=1000)
            assert hub.join(later, TOPIC_NAME, ahead)
            tst = next(p for p, o in (hub.positions(TOPIC_NAME) or {}).items() if o == 40)  # TST's partition
            live.produce([make_trade(n) for n in range(40, 50)])
            wait_until(lambda: (hub.positions(TOPIC_NAME) or {})[tst] == 50, 10, "the feed to read all")
            rows = [c for c in later.take(100, timeout=1) if c.rows.num_rows]
            assert [i for c in rows for i in c.rows["message_id"].to_pylist()] == _ids(range(45, 50))
            assert rows[-1].ends[(TOPIC_NAME, tst)] == 50
        finally:
            hub.close()
