"""What every kill -9 drill shares: the processes of one deployment on one K2_HOME (started, killed -9 and restarted
by the test), the run's size and seed, and the final check — the exact set of message_ids in the lake against what
the feed produced, with the figures printed and appended to $K2_FAULT_REPORT.

K2_FAULT_MESSAGES sets the size (default 1,000,000); K2_FAULT_SEED replays a run's random kill points.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2.bus.stack import existing_endpoints
from k2.config import Settings
from tests.faults.feed import EXCHANGE, expected_ids
from tests.integration.helpers import all_committed, lake_count, lake_query

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
    starts: Counter[str] = field(default_factory=Counter)  # per process name: the first start and every restart
    _starts: int = 0

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self._starts += 1
        self.starts[name] += 1
        with open(self.logs / f"{self._starts:02d}-{name}.log", "ab") as out:
            proc = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_stack(self) -> None:
        self.start("stack", "-m", "k2.cli", "stack")
        self.wait(lambda: existing_endpoints(self.settings) is not None, 60, "the stack to serve")

    def start_sink(self) -> None:
        self.start("sink", "-m", "k2.cli", "-v", "sink")

    def start_feed(self, checkpoint: Path | None = None) -> None:
        """The feed process; with a `checkpoint` it resumes from there (tests/faults/feed.py), else sends it all."""
        resume = [str(checkpoint)] if checkpoint is not None else []
        self.start("feed", "-m", "tests.faults.feed", str(MESSAGES), str(self.logs / "targets.json"), *resume)

    def running(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def kill(self, *names: str) -> None:
        """kill -9 `names`; a kill is counted only for a process that was still running when it was sent."""
        alive = [name for name in names if self.running(name)]
        for name in alive:
            self.procs[name].send_signal(signal.SIGKILL)
        for name in names:
            self.procs.pop(name).wait(30)
        for name in alive:
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

    def check_alive(self, what: str) -> None:
        """Fail at once when a process exited with an error (waiting on would only time out)."""
        for name, proc in self.procs.items():
            if proc.poll() not in (None, 0):
                raise AssertionError(f"{name} exited {proc.returncode} waiting for {what}\n{self.log_tail(name)}")

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            self.check_alive(what)
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def log_tail(self, name: str) -> str:
        logs = sorted(self.logs.glob(f"*-{name}.log"))
        return f"--- {logs[-1].name}\n{logs[-1].read_text()[-3000:]}" if logs else ""


def assert_exactly_once(
    drill: Drill, scenario: str, started: float, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Compare the lake's message_ids with the feed's, print and append the figures (with `extra` ones) to
    $K2_FAULT_REPORT, and fail unless none is lost, doubled or unexpected. Returns the figures."""
    ids = [row[0] for row in lake_query(drill.settings, f"SELECT message_id FROM market_data.trades_v2 {WHERE}")]
    expected = expected_ids(MESSAGES)
    distinct = set(ids)
    figures = {
        "scenario": scenario,
        "messages": MESSAGES,
        "kills": drill.kills,
        **(extra or {}),
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
    return figures
