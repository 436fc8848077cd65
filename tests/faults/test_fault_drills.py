"""Fault drills: kill -9 the sink, the producer, the broker, or the whole stack while a million trades flow, restart,
and compare the exact set of message_ids in the lake with what was produced: 0 lost, 0 duplicated.

Every part runs as its own process, as in production: `k2 stack` (broker + registry), `k2 sink`, and the feed
(tests/faults/feed.py). Kill points are random (seeded; the seed is printed and K2_FAULT_SEED replays it), taken
when the lake holds a random fraction of the feed. With the embedded broker's memory storage a killed broker forgets
its log, so recovery is what an operator does: restart everything and run the load again — idempotent, since the
sink drops message_ids the lake already holds. K2_FAULT_MESSAGES sets the size (default 1,000,000).

Each drill appends its figures to $K2_FAULT_REPORT (default: fault-report.jsonl in the test's directory). The
machinery they share with the 3-broker Apache Kafka drill is in tests/faults/drills.py.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest

from k2.config import Settings
from tests.faults.drills import MESSAGES, SEED, Drill, assert_exactly_once

pytestmark = pytest.mark.faults


@pytest.fixture
def drill(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Drill:
    monkeypatch.setenv("K2_SINK_COMMIT_ROWS", "50000")  # many commits: kills land between and inside them
    print(f"fault drill seed {SEED} (K2_FAULT_SEED={SEED} replays it), {MESSAGES:,} messages")
    logs = tmp_path / "logs"
    logs.mkdir()
    drill = Drill(settings, logs, random.Random(f"{SEED}-{os.environ.get('PYTEST_CURRENT_TEST')}"))
    yield drill
    drill.stop()


def test_sink_killed_three_times_mid_stream(drill: Drill) -> None:
    started = time.monotonic()
    drill.start_stack()
    drill.start_sink()
    drill.start_feed()
    for fraction in sorted(drill.rng.uniform(0.05, 0.9) for _ in range(3)):
        held = drill.kill_when_landed(fraction, "sink")
        assert held < MESSAGES
        drill.start_sink()
    drill.sink_to_completion(drill.feed_to_completion())
    assert_exactly_once(drill, "sink kill -9 x3", started)


def test_producer_killed_twice_then_run_again(drill: Drill) -> None:
    started = time.monotonic()
    drill.start_stack()
    drill.start_sink()
    for fraction in sorted(drill.rng.uniform(0.05, 0.6) for _ in range(2)):
        drill.start_feed()
        drill.kill_when_landed(fraction, "feed")
    drill.start_feed()  # the operator re-runs the load: everything is sent again
    drill.sink_to_completion(drill.feed_to_completion())
    assert_exactly_once(drill, "producer kill -9 x2", started)


def test_broker_killed_mid_stream(drill: Drill) -> None:
    started = time.monotonic()
    drill.start_stack()
    drill.start_sink()
    drill.start_feed()
    drill.kill_when_landed(drill.rng.uniform(0.1, 0.8), "stack")
    # Clients of a dead broker: the sink commits what it holds and stops on SIGTERM; the feed cannot finish.
    time.sleep(drill.rng.uniform(0, 3))
    drill.kill("feed")
    drill.stop()
    drill.start_stack()  # a new memory broker: new topic ids, offsets from 0
    drill.start_sink()
    drill.start_feed()
    drill.sink_to_completion(drill.feed_to_completion())
    assert_exactly_once(drill, "broker kill -9", started)


def test_whole_stack_killed_at_once_twice(drill: Drill) -> None:
    started = time.monotonic()
    drill.start_stack()
    drill.start_sink()
    drill.start_feed()
    for fraction in sorted(drill.rng.uniform(0.05, 0.8) for _ in range(2)):
        drill.kill_when_landed(fraction, "stack", "sink", "feed")
        drill.start_stack()
        drill.start_sink()
        drill.start_feed()
    drill.sink_to_completion(drill.feed_to_completion())
    assert_exactly_once(drill, "whole stack kill -9 x2", started)
