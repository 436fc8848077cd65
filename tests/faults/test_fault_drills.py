"""Fault drills: kill -9 the sink, the producer, the broker, or the whole stack while a million trades flow, restart,
and compare the exact set of message_ids in the lake with what was produced: 0 lost, 0 duplicated.

Every part runs as its own process, as in production: `k2 stack` (broker + registry), `k2 sink`, and the feed
(tests/faults/feed.py). Kill points are random (seeded; the seed is printed and K2_FAULT_SEED replays it), taken
when the lake holds a random fraction of the feed. With the embedded broker's memory storage a killed broker forgets
its log, so recovery is what an operator does: restart everything and run the load again — idempotent, since the
sink drops message_ids the lake already holds. K2_FAULT_MESSAGES sets the size (default 1,000,000).

Each drill appends its figures to $K2_FAULT_REPORT (default: fault-report.jsonl in the test's directory).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from k2.bus.stack import existing_endpoints
from k2.config import Settings
from tests.faults.feed import EXCHANGE, expected_ids
from tests.integration.helpers import all_committed, lake_count, lake_query

pytestmark = pytest.mark.faults

MESSAGES = int(os.environ.get("K2_FAULT_MESSAGES", "1000000"))
SEED = int(os.environ.get("K2_FAULT_SEED", str(random.SystemRandom().randrange(1 << 32))))
WHERE = f"WHERE exchange = '{EXCHANGE}'"


@dataclass
class Drill:
    """The processes of one deployment on one K2_HOME, started, killed and restarted by the test."""

    settings: Settings
    logs: Path
    rng: random.Random
    kills: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _starts: int = 0

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self._starts += 1
        with open(self.logs / f"{self._starts:02d}-{name}.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_stack(self) -> None:
        self.start("stack", "-m", "k2.cli", "stack")
        self.wait(lambda: existing_endpoints(self.settings) is not None, 60, "the stack to serve")

    def start_sink(self) -> None:
        self.start("sink", "-m", "k2.cli", "-v", "sink")

    def start_feed(self) -> None:
        self.start("feed", "-m", "tests.faults.feed", str(MESSAGES), str(self.logs / "targets.json"))

    def kill(self, *names: str) -> None:
        for name in names:
            self.procs[name].send_signal(signal.SIGKILL)
        for name in names:
            self.procs.pop(name).wait(30)
            self.kills[name] = self.kills.get(name, 0) + 1

    def landed(self) -> int:
        return lake_count(self.settings, "trades_v2", WHERE)

    def kill_when_landed(self, fraction: float, *names: str) -> int:
        """kill -9 `names` once the lake holds `fraction` of the feed; returns how many rows it held then."""
        self.wait(lambda: self.landed() >= fraction * MESSAGES, 600, f"{fraction:.0%} of the feed in the lake")
        self.kill(*names)
        return self.landed()

    def feed_to_completion(self) -> dict[tuple[str, int], int]:
        """Wait for the running feed to exit 0; the end offsets it acknowledged."""
        code = self.procs.pop("feed").wait(900)
        assert code == 0, self.log_tail("feed")
        return {(t, p): end for t, p, end in json.loads((self.logs / "targets.json").read_text())}

    def sink_to_completion(self, targets: dict[tuple[str, int], int]) -> None:
        endpoints = existing_endpoints(self.settings)
        assert endpoints is not None
        self.wait(lambda: all_committed(endpoints.bootstrap, self.settings.sink_group, targets), 600, "the sink")
        sink = self.procs.pop("sink")
        sink.send_signal(signal.SIGTERM)
        assert sink.wait(60) == 0, self.log_tail("sink")

    def stop(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            for name, proc in self.procs.items():
                if proc.poll() not in (None, 0):
                    raise AssertionError(f"{name} exited {proc.returncode} waiting for {what}\n{self.log_tail(name)}")
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def log_tail(self, name: str) -> str:
        logs = sorted(self.logs.glob(f"*-{name}.log"))
        return f"--- {logs[-1].name}\n{logs[-1].read_text()[-3000:]}" if logs else ""


@pytest.fixture
def drill(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Drill:
    monkeypatch.setenv("K2_SINK_COMMIT_ROWS", "50000")  # many commits: kills land between and inside them
    print(f"fault drill seed {SEED} (K2_FAULT_SEED={SEED} replays it), {MESSAGES:,} messages")
    logs = tmp_path / "logs"
    logs.mkdir()
    drill = Drill(settings, logs, random.Random(f"{SEED}-{os.environ.get('PYTEST_CURRENT_TEST')}"))
    yield drill
    drill.stop()


def assert_exactly_once(drill: Drill, scenario: str, started: float) -> None:
    ids = [row[0] for row in lake_query(drill.settings, f"SELECT message_id FROM market_data.trades_v2 {WHERE}")]
    expected = expected_ids(MESSAGES)
    distinct = set(ids)
    figures = {
        "scenario": scenario,
        "messages": MESSAGES,
        "kills": drill.kills,
        "lost": len(expected - distinct),
        "duplicated": len(ids) - len(distinct),
        "unexpected": len(distinct - expected),
        "seconds": round(time.monotonic() - started, 1),
        "seed": SEED,
    }
    report = Path(os.environ.get("K2_FAULT_REPORT", drill.logs.parent / "fault-report.jsonl"))
    with report.open("a") as fh:
        fh.write(json.dumps(figures) + "\n")
    print(json.dumps(figures))
    assert (figures["lost"], figures["duplicated"], figures["unexpected"]) == (0, 0, 0), figures
    assert len(ids) == MESSAGES


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
