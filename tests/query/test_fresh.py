"""Fresh reads against a real embedded stack: what Kafka holds beyond the last Iceberg commit is visible, once."""

from __future__ import annotations

import time
from datetime import timedelta
from decimal import Decimal

import pytest

from k2.bus.batch_decode import decode_batch
from k2.bus.clients import producer_config
from k2.bus.producer import RecordProducer
from k2.bus.serde import encoder
from k2.bus.stack import Stack
from k2.query.filters import InvalidQueryError
from k2.query.fresh import FreshReader, FreshSource, feeding_topics, fresh_events, fresh_latest, read_tail
from k2.query.live_hub import LiveHub
from k2.query.market import events
from k2.query.subscribe import SubscribeOptions, subscribe
from k2.schema import TRADES_V2
from k2.schema.avro import avro_schema
from tests.conftest import only_on_tansu
from tests.integration.helpers import make_trade
from tests.query.live_stack import DAY, TOPIC, Live
from tests.waiting import wait_until

pytestmark = pytest.mark.integration


def _seqs(table) -> list[int]:
    return table["source_sequence"].to_pylist()


def test_records_produced_but_not_yet_committed_are_visible(live: Live) -> None:
    live.produce([make_trade(n) for n in range(10)])
    with live.engine() as engine:
        assert events(engine, "trades", "TST", None, None).num_rows == 0  # the lake has nothing yet
        rows = fresh_events(engine, live.source, "trades", "TST", None, None)
    assert _seqs(rows) == list(range(10))
    assert rows.schema.field("price").type.scale == 8
    assert str(rows.schema.field("timestamp").type.tz) == "UTC"


def test_rows_in_both_lake_and_kafka_come_back_once_in_event_order(live: Live) -> None:
    evens = [make_trade(n) for n in range(0, 20, 2)]
    odds = [make_trade(n) for n in range(1, 20, 2)]
    live.produce(evens)
    with live.engine() as stale, FreshReader(live.source) as reader:  # the engine's view predates the commit
        live.sink_everything()
        live.produce([*odds, *evens[-3:]])  # the last evens again: in the lake and in the tail
        tail = reader.tail(stale, "trades")
        assert tail.caught_up and tail.snapshot_id is not None
        assert tail.rows.num_rows == 13  # only what came after the commit is read from Kafka
        rows = fresh_events(stale, reader, "trades", ["TST"], None, None)
        first = fresh_events(stale, reader, "trades", "TST", None, None, limit=5)
        window = fresh_events(
            stale,
            reader,
            "trades",
            "TST",
            DAY + timedelta(milliseconds=7),
            DAY + timedelta(milliseconds=12),
            exchange="test",
            columns=["message_id", "price"],
        )
    assert _seqs(rows) == list(range(20))
    assert len(set(rows["message_id"].to_pylist())) == 20
    assert _seqs(first) == [0, 1, 2, 3, 4]  # the limit counts lake and Kafka rows together, after ordering
    assert window.column_names == ["message_id", "price"]
    assert window["message_id"].to_pylist() == [make_trade(n)["message_id"] for n in range(7, 12)]


def test_lake_copy_wins_over_the_kafka_copy(live: Live) -> None:
    original = make_trade(1, price="2.5")
    live.produce([original])
    live.sink_everything()
    live.produce([make_trade(1, price="9.5")])  # same message_id, other content (a corrected replay)
    with live.engine() as engine:
        rows = fresh_events(engine, live.source, "trades", "TST", None, None)
    assert rows.num_rows == 1
    assert str(rows["price"][0].as_py()) == "2.50000000"


def test_filters_apply_to_the_kafka_part(live: Live) -> None:
    live.produce([make_trade(n, symbol="AAA") for n in range(5)] + [make_trade(n, symbol="BBB") for n in range(5)])
    with live.engine() as engine:
        aaa = fresh_events(engine, live.source, "trades", "AAA", None, None)
        other_venue = fresh_events(engine, live.source, "trades", None, None, None, exchange="elsewhere")
        late = fresh_events(engine, live.source, "trades", None, DAY + timedelta(milliseconds=3), None)
        with pytest.raises(InvalidQueryError):
            fresh_events(engine, live.source, "trades", "AAA", DAY + timedelta(days=1), DAY)
    assert set(aaa["symbol"].to_pylist()) == {"AAA"} and aaa.num_rows == 5
    assert other_venue.num_rows == 0
    assert _seqs(late) == [3, 3, 4, 4]


def test_latest_counts_records_not_yet_in_the_lake(live: Live) -> None:
    live.produce([make_trade(n, symbol="AAA") for n in range(5)] + [make_trade(n, symbol="BBB") for n in range(3)])
    live.sink_everything()
    live.produce([make_trade(n, symbol="AAA") for n in range(5, 8)])
    with live.engine() as engine:
        newest = fresh_latest(engine, live.source, "trades", ["AAA", "BBB"], n=2)
    assert list(zip(newest["symbol"].to_pylist(), _seqs(newest), strict=True)) == [
        ("AAA", 6),
        ("AAA", 7),
        ("BBB", 1),
        ("BBB", 2),
    ]


def restart_broker(stack: Stack) -> None:
    """Stop and start the stack's embedded broker on the same port: a new, empty log (memory storage)."""
    assert stack.broker is not None, "this stack did not start a broker"
    stack.broker.stop()
    stack.broker.start()


@only_on_tansu
def test_a_restarted_broker_does_not_inherit_old_offsets(live: Live) -> None:
    live.produce([make_trade(n) for n in range(10)])
    live.sink_everything()  # the lake now says "next offset 10" for the old log
    with live.engine() as engine:
        old_ids = read_tail(engine, live.source, "trades").topic_ids

    restart_broker(live.stack)  # memory storage: a new, empty log numbered from 0 under a new topic id
    live.produce([make_trade(n) for n in range(100, 104)])  # offsets 0..3 of the new log
    with live.engine() as engine:
        tail = read_tail(engine, live.source, "trades")
        rows = fresh_events(engine, live.source, "trades", "TST", None, None)
    assert tail.topic_ids != old_ids
    assert set(tail.start.values()) == {0}
    assert _seqs(rows) == [*range(10), *range(100, 104)]


def test_undecodable_messages_are_skipped_not_fatal(live: Live) -> None:
    live.produce([make_trade(0)])
    producer = RecordProducer(producer_config(live.settings, live.endpoints.bootstrap), live.registry)
    producer.produce_raw(str(TOPIC), b"not avro at all", b"TST")  # the sink dead-letters it: never in the lake
    producer.close()
    live.produce([make_trade(1)])
    with live.engine() as engine, FreshReader(live.source) as reader:
        tail = reader.tail(engine, "trades")
        rows = fresh_events(engine, reader, "trades", "TST", None, None)
    assert tail.skipped == 1
    assert _seqs(rows) == [0, 1]


def test_the_time_budget_bounds_the_kafka_read(live: Live) -> None:
    live.produce([make_trade(n) for n in range(3)])
    hurried = FreshSource.from_endpoints(live.endpoints, live.settings, budget_seconds=0.0)
    with live.engine() as engine:
        tail = read_tail(engine, hurried, "trades")
    assert not tail.caught_up
    assert tail.rows.num_rows == 0


def test_a_tail_of_some_symbols_decodes_only_theirs_and_does_not_wait_out_a_poll(live: Live) -> None:
    live.produce([t for n in range(10) for t in (make_trade(n), make_trade(n, symbol="OTHER"))])
    patient = FreshSource.from_endpoints(live.endpoints, live.settings, poll_seconds=5.0, budget_seconds=20)
    with live.engine() as engine, FreshReader(patient) as reader:
        started = time.monotonic()
        tail = reader.tail(engine, "trades", symbols=["TST"])
        spent = time.monotonic() - started
        everything = reader.tail(engine, "trades")
    assert tail.rows["message_id"].to_pylist() == [make_trade(n)["message_id"] for n in range(10)]
    assert tail.end == everything.end and sum(tail.end.values()) == 20  # read past the other symbol's records
    assert everything.rows.num_rows == 20
    assert spent < 5.0  # the last fetch finds nothing more: no waiting out poll_seconds


def test_a_reader_fetches_only_what_came_since_its_last_read(live: Live) -> None:
    live.produce([t for n in range(10) for t in (make_trade(n), make_trade(n, symbol="OTHER"))])
    with live.engine() as engine, FreshReader(live.source) as reader:
        first = reader.tail(engine, "trades", symbols="TST")
        live.produce([make_trade(n) for n in range(10, 15)])
        second = reader.tail(engine, "trades", symbols="TST")
        everything = reader.tail(engine, "trades")
        live.sink_everything()  # the lake has 0-14 now: nothing is left beyond it
        engine.refresh()
        after_commit = reader.tail(engine, "trades")
    assert (first.fetched, second.fetched, everything.fetched) == (20, 5, 0)
    assert second.rows["message_id"].to_pylist() == [make_trade(n)["message_id"] for n in range(15)]
    assert everything.rows.num_rows == 25
    assert after_commit.rows.num_rows == 0 and after_commit.fetched == 0


class _Framed:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self) -> bytes:
        return self._value


@pytest.mark.parametrize("count", [2, 40])  # decoded one by one below 32 messages, as a batch from there
def test_few_and_many_messages_decode_to_the_same_rows(live: Live, count: int) -> None:
    schema_id = live.registry.register(TOPIC.subject, avro_schema(TRADES_V2))
    values = [encoder(TRADES_V2, schema_id)(make_trade(n)) for n in range(count)]
    with FreshReader(live.source) as reader:
        rows, skipped = reader.decode(TRADES_V2, [_Framed(v) for v in values])
    assert skipped == 0
    assert rows.equals(decode_batch(TRADES_V2, values))
    assert rows["price"].to_pylist()[0] == Decimal("1.5")


def test_only_topics_feeding_the_table_are_read() -> None:
    names = [
        "market.equities.trades.asx",
        "market.crypto.trades.binance",
        "market.equities.quotes.asx",
        "dlq.market.equities.trades.asx",
        "_schemas",
    ]
    assert feeding_topics(names, TRADES_V2) == ["market.crypto.trades.binance", "market.equities.trades.asx"]
    assert feeding_topics(names, TRADES_V2, exchange="ASX") == ["market.equities.trades.asx"]


@only_on_tansu
def test_fetches_that_come_back_empty_widen_the_wait_and_miss_nothing(live: Live) -> None:
    """The embedded broker answers a fetch empty when it cannot find the offset within the fetch wait: on an
    in-memory log of millions of messages at K2's first 5 ms, on any log at 0 ms. Readers starting at 0 ms starve,
    widen their wait, and read every record: a fresh read, a subscription's own consumer, and the live hub's feed."""
    live.produce([make_trade(n) for n in range(10)])
    quick = SubscribeOptions(batch_rows=100, poll_seconds=0.05)
    with (
        live.engine() as engine,
        FreshReader(live.source, fetch_wait_ms=0) as reader,
        FreshReader(live.source, fetch_wait_ms=0) as hub_reader,
    ):
        tail = reader.tail(engine, "trades")
        assert tail.caught_up and _seqs(tail.rows) == list(range(10))
        assert reader.fetch_wait.ms == 1

        on_own, on_hub = FreshReader(live.source, fetch_wait_ms=0), LiveHub(hub_reader)
        try:
            batches = subscribe(engine, on_own, "trades", "TST", options=quick, live_hub=on_hub)
            first = next(batches)  # the start is fixed by the first step: the log end, 10
            live.produce([make_trade(n) for n in range(10, 14)])
            got = [first]
            while sum(b.records.num_rows for b in got) < 4:
                got.append(next(batches))
            assert on_own.fetch_wait.ms == 1  # its own consumer starved on the way to the live end
            wait_until(lambda: on_hub.subscribers(str(TOPIC)) == 1, 10, "the subscription to join the hub")
            live.produce([make_trade(n) for n in range(14, 18)])
            while sum(b.records.num_rows for b in got) < 8:
                got.append(next(batches))
            batches.close()
        finally:
            on_hub.close()
            on_own.close()
        assert hub_reader.fetch_wait.ms == 1  # the hub's feed starved too, and widened
        assert [i for b in got for i in b.records["message_id"].to_pylist()] == [
            make_trade(n)["message_id"] for n in range(10, 18)
        ]
