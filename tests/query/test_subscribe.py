"""Subscriptions on a real embedded stack and lake: history from the lake, the Kafka tail beyond its commit, then live
records, each message_id once; a cursor resumes without loss or repeat."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from k2.cli import app
from k2.query.filters import InvalidQueryError
from k2.query.fresh import FreshReader
from k2.query.subscribe import Position, SubscribeOptions, SubscriptionBatch, subscribe
from tests.integration.helpers import make_trade
from tests.query.live_stack import DAY, Live

pytestmark = pytest.mark.integration

SMALL = SubscribeOptions(batch_rows=7, poll_seconds=0.05)
SINCE = DAY.isoformat()
runner = CliRunner()


def _ids(numbers: range | list[int], symbol: str = "TST") -> list[str]:
    return [make_trade(n, symbol=symbol)["message_id"] for n in numbers]


def take(batches: Iterator[SubscriptionBatch], count: int, *, timeout: float = 10.0) -> list[SubscriptionBatch]:
    """Batches until they hold `count` records (empty heartbeats included); fails past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    got: list[SubscriptionBatch] = []
    while sum(b.records.num_rows for b in got) < count:
        assert time.monotonic() < deadline, f"{sum(b.records.num_rows for b in got)} of {count} records arrived"
        got.append(next(batches))
    return got


def until_live(batches: Iterator[SubscriptionBatch], *, timeout: float = 10.0) -> list[SubscriptionBatch]:
    """Batches up to and including the first empty live one: everything there was is delivered."""
    deadline = time.monotonic() + timeout
    got: list[SubscriptionBatch] = []
    while not got or got[-1].phase != "live" or got[-1].records.num_rows:
        assert time.monotonic() < deadline, "the subscription did not catch up"
        got.append(next(batches))
    return got


def ids_of(batches: list[SubscriptionBatch]) -> list[str]:
    return [i for b in batches for i in b.records["message_id"].to_pylist()]


@pytest.fixture
def committed_and_tail(live: Live) -> Live:
    """Trades 0-19 committed to the lake; 20-29 only in Kafka, after 15-19 again (a producer re-sending)."""
    live.produce([make_trade(n) for n in range(20)])
    live.sink_everything()
    live.produce([make_trade(n) for n in [*range(15, 20), *range(20, 30)]])
    return live


def test_history_then_tail_then_live_each_message_once(committed_and_tail: Live) -> None:
    live = committed_and_tail
    with live.engine() as engine, FreshReader(live.source) as reader:
        batches = subscribe(engine, reader, "trades", ["TST"], since=DAY, options=SMALL)
        caught_up = until_live(batches)
        history = [b for b in caught_up if b.phase == "history"]
        assert ids_of(history) == _ids(range(20))  # the lake's rows, in event order
        assert ids_of(caught_up) == _ids(range(30))  # 15-19 again in Kafka: not delivered twice
        # More while subscribed, among them 25 and 3 again: only the new ones come, in log order.
        live.produce([make_trade(n) for n in [25, 3, *range(30, 40)]])
        more = take(batches, 10)
        assert ids_of(more) == _ids(range(30, 40))
        assert {b.phase for b in more} == {"live"}
        batches.close()


def test_a_cursor_resumes_without_loss_or_repeat_at_every_step(committed_and_tail: Live) -> None:
    live = committed_and_tail
    with live.engine() as engine, FreshReader(live.source) as reader:
        everything = until_live(subscribe(engine, reader, "trades", "TST", since=DAY, options=SMALL))
        assert len(ids_of(everything)) == 30
        with_records = [i for i, b in enumerate(everything) if b.records.num_rows]
        # After each batch (history pages, the history/Kafka seam, Kafka batches): the rest, exactly.
        for i in with_records:
            rest = until_live(subscribe(engine, reader, "trades", "TST", cursor=everything[i].cursor, options=SMALL))
            assert ids_of(everything[: i + 1]) + ids_of(rest) == _ids(range(30)), f"resumed after batch {i}"


@pytest.mark.parametrize("limit", [12, 23])  # within the history; across the seam into Kafka
def test_a_limit_ends_exactly_after_that_many_records(committed_and_tail: Live, limit: int) -> None:
    live = committed_and_tail
    with live.engine() as engine, FreshReader(live.source) as reader:
        first = list(subscribe(engine, reader, "trades", "TST", since=DAY, limit=limit, options=SMALL))
        rest = until_live(subscribe(engine, reader, "trades", "TST", cursor=first[-1].cursor, options=SMALL))
    assert ids_of(first) == _ids(range(limit))
    assert ids_of(rest) == _ids(range(limit, 30))


def test_since_selects_history_and_kafka_records_alike(committed_and_tail: Live) -> None:
    live = committed_and_tail
    with live.engine() as engine, FreshReader(live.source) as reader:
        got = until_live(subscribe(engine, reader, "trades", "TST", since=DAY + timedelta(milliseconds=12)))
    assert ids_of(got) == _ids(range(12, 30))


def test_without_since_it_starts_at_the_log_end(live: Live) -> None:
    live.produce([make_trade(n) for n in range(5)])
    with live.engine() as engine, FreshReader(live.source) as reader:
        batches = subscribe(engine, reader, "trades", "TST", options=SMALL)
        first = next(batches)  # the start is fixed by the first step
        live.produce([make_trade(n) for n in range(5, 9)])
        got = take(batches, 4)
        batches.close()
    assert ids_of([first, *got]) == _ids(range(5, 9))


def test_a_cursor_belongs_to_its_subscription(committed_and_tail: Live) -> None:
    live = committed_and_tail
    with live.engine() as engine, FreshReader(live.source) as reader:
        cursor = next(subscribe(engine, reader, "trades", "TST", since=DAY)).cursor
        with pytest.raises(InvalidQueryError, match="another kind, symbols or exchange"):
            next(subscribe(engine, reader, "trades", "OTHER", cursor=cursor))
        with pytest.raises(InvalidQueryError, match="carries its own since"):
            next(subscribe(engine, reader, "trades", "TST", since=DAY + timedelta(days=1), cursor=cursor))
        with pytest.raises(InvalidQueryError, match="not one a K2 subscription issued"):
            next(subscribe(engine, reader, "trades", "TST", cursor="bm90IGEgY3Vyc29y"))


def test_position_round_trips_through_its_text() -> None:
    offsets = {("market.t", 0): 7, ("market.t", 2): 9}
    position = Position("abc", 42, 1_000, False, "keyset", offsets, {"market.t": "id1"})
    assert Position.decode(position.encode()) == position


def test_an_empty_lake_streams_kafka_from_its_first_offset(live: Live) -> None:
    live.produce([make_trade(n) for n in range(6)])
    with live.engine() as engine, FreshReader(live.source) as reader:
        got = until_live(subscribe(engine, reader, "trades", "TST", since=DAY, options=SMALL))
    assert ids_of(got) == _ids(range(6))
    assert {b.phase for b in got if b.records.num_rows} <= {"tail", "live"}


def test_k2_subscribe_prints_history_then_kafka_and_a_cursor_to_resume(committed_and_tail: Live) -> None:
    first = runner.invoke(
        app, ["subscribe", "trades", "--symbols", "TST", "--since", SINCE, "--count", "23", "-f", "csv"]
    )
    assert first.exit_code == 0, first.output
    header, *rows = first.stdout.splitlines()
    assert header.split(",")[:3] == ["message_id", "trade_id", "symbol"]
    assert [row.split(",")[0] for row in rows] == _ids(range(23))  # 20 from the lake, 3 from Kafka
    assert first.stderr.startswith("cursor: ")
    cursor = first.stderr.removeprefix("cursor: ").strip()
    rest = runner.invoke(app, ["subscribe", "trades", "--symbols", "TST", "--cursor", cursor, "--count", "7"])
    assert rest.exit_code == 0, rest.output
    assert [json.loads(line)["message_id"] for line in rest.stdout.splitlines()] == _ids(range(23, 30))


def test_k2_subscribe_refuses_two_ways_to_stop(committed_and_tail: Live) -> None:
    both = runner.invoke(app, ["subscribe", "quotes", "--count", "1", "--duration", "1"])
    assert both.exit_code == 2
    assert both.stderr == "error: --count and --duration both stop the subscription: give one of them\n"
    other = runner.invoke(app, ["subscribe", "quotes", "--cursor", "bm90IGEgY3Vyc29y", "--count", "1"])
    assert other.exit_code == 2
    assert "not one a K2 subscription issued" in other.stderr


def test_a_topic_created_while_subscribed_is_read_from_its_start(live: Live) -> None:
    live.produce([make_trade(0)])
    quick = SubscribeOptions(batch_rows=7, poll_seconds=0.05, topics_seconds=0.1)
    with live.engine() as engine, FreshReader(live.source) as reader:
        batches = subscribe(engine, reader, "trades", "TST", options=quick)
        next(batches)  # started: only market.equities.trades.test exists
        elsewhere = [{**make_trade(n), "exchange": "elsewhere"} for n in range(1, 4)]
        live.produce_to("elsewhere", elsewhere)  # a new topic: market.equities.trades.elsewhere
        got = take(batches, 3)
        batches.close()
    assert ids_of(got) == [r["message_id"] for r in elsewhere]
    assert {e for b in got for e in b.records["exchange"].to_pylist()} == {"elsewhere"}


def test_a_resumed_subscription_does_not_resend_a_duplicate_of_what_came_before(committed_and_tail: Live) -> None:
    live = committed_and_tail
    with live.engine() as engine, FreshReader(live.source) as reader:
        before = until_live(subscribe(engine, reader, "trades", "TST", since=DAY, options=SMALL))
        live.produce([make_trade(n) for n in [25, 30, 31]])  # 25 came from Kafka before the cursor
        after = take(subscribe(engine, reader, "trades", "TST", cursor=before[-1].cursor, options=SMALL), 2)
    assert ids_of(before) == _ids(range(30))
    assert ids_of(after) == _ids([30, 31])
