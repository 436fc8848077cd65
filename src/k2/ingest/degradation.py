"""Protection that acts: five degradation levels driven by consumer lag and this process's memory, a circuit
breaker on produce failures, and what each level does to the records a source hands over — never silent loss.

| level         | entered when (either)        | action on a source batch                                  |
|---------------|------------------------------|-----------------------------------------------------------|
| NORMAL        | —                            | sent; spilled records are replayed                        |
| SOFT          | lag ≥ 100k or RSS ≥ 50 %     | backpressure: the source waits `pace` before each batch   |
| GRACEFUL      | lag ≥ 500k or RSS ≥ 65 %     | + records of priority ≥ 2 (least important) spilled       |
| AGGRESSIVE    | lag ≥ 2M   or RSS ≥ 80 %     | + records of priority ≥ 1 spilled                         |
| CIRCUIT_BREAK | lag ≥ 5M   or RSS ≥ 95 %,    | everything spilled                                        |
|               | or the produce breaker open  |                                                           |

RSS percentages are of K2_MEMORY_LIMIT_MB; without a limit, memory is not a signal.

Priority is configured per `asset_class/exchange` (K2_SHED_PRIORITIES, JSON, checked by `Settings`; 0 = most important,
default 1). A spilled record is not dropped: it is written to a spill file under $K2_HOME/spill/<pid> and sent when the
level is back to NORMAL (or when the load ends), and counted both ways (k2_spilled_records_total,
k2_replayed_records_total), so read = produced + rejected still holds. Levels rise at once and fall one step at a time,
only when both signals are below `recover` x the current level's thresholds (no flapping). Every transition is logged
and exported.
"""

from __future__ import annotations

import itertools
import os
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

import structlog

from k2.core import metrics
from k2.core.batch import SourceBatch
from k2.core.breaker import CircuitBreaker

log = structlog.get_logger(__name__)


class Level(IntEnum):
    NORMAL = 0
    SOFT = 1
    GRACEFUL = 2
    AGGRESSIVE = 3
    CIRCUIT_BREAK = 4


MIB = 1024 * 1024


@dataclass(frozen=True)
class Thresholds:
    """Where SOFT, GRACEFUL, AGGRESSIVE and CIRCUIT_BREAK begin, for each signal."""

    lag: tuple[int, int, int, int] = (100_000, 500_000, 2_000_000, 5_000_000)
    memory: tuple[int, int, int, int] | None = None  # None: memory is not a signal (no limit configured)
    recover: float = 0.8

    @classmethod
    def for_memory_limit(cls, limit_bytes: int | None) -> Thresholds:
        """Memory levels at 50 / 65 / 80 / 95 % of the process's memory limit (K2_MEMORY_LIMIT_MB); none without one.
        An absolute default would be wrong: a Python process with Arrow, DuckDB and pyiceberg loaded idles at
        several hundred MiB, a test runner at about a GiB."""
        if limit_bytes is None:
            return cls()
        share = (0.5, 0.65, 0.8, 0.95)
        return cls(memory=tuple(int(limit_bytes * f) for f in share))  # type: ignore[arg-type]

    def level_for(self, lag: int, memory: int) -> Level:
        by_lag = sum(lag >= t for t in self.lag)
        by_memory = sum(memory >= t for t in self.memory) if self.memory is not None else 0
        return Level(max(by_lag, by_memory))

    def calm_below(self, level: Level, lag: int, memory: int) -> bool:
        """Both signals under `recover` x the thresholds of `level`: safe to step down from it."""
        if level is Level.NORMAL:
            return True
        i = level - 1
        calm_memory = self.memory is None or memory < self.recover * self.memory[i]
        return lag < self.recover * self.lag[i] and calm_memory


def process_memory() -> int:
    """This process's resident set size in bytes (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Controller:
    """The current level from the latest lag and memory readings (and an optional breaker)."""

    def __init__(self, thresholds: Thresholds | None = None, breaker: CircuitBreaker | None = None) -> None:
        self.thresholds = thresholds or Thresholds()
        self.breaker = breaker
        self.level = Level.NORMAL
        metrics.DEGRADATION_LEVEL.set(0)

    def observe(self, lag: int, memory: int) -> Level:
        target = self.thresholds.level_for(lag, memory)
        if self.breaker is not None and self.breaker.open:
            target = Level.CIRCUIT_BREAK
        if target > self.level:
            self._move(target, lag, memory)
        elif target < self.level and self.thresholds.calm_below(self.level, lag, memory):
            self._move(Level(self.level - 1), lag, memory)  # one step at a time
        return self.level

    def _move(self, to: Level, lag: int, memory: int) -> None:
        # SOFT only paces the source (a bulk load outruns its sink in the normal course): info. From GRACEFUL on,
        # batches are set aside or refused: a warning the operator should see.
        emit = log.warning if max(self.level, to) >= Level.GRACEFUL else log.info
        emit("degradation.level", frm=self.level.name, to=to.name, lag=lag, memory_mib=memory // MIB)
        metrics.DEGRADATION_TRANSITIONS.labels(self.level.name, to.name).inc()
        metrics.DEGRADATION_LEVEL.set(int(to))
        self.level = to


@dataclass
class Spill:
    """Batches set aside on local disk, replayed in the order they were spilled. One file per batch, written to a
    temporary name and renamed, so a crash never leaves half a batch that looks whole."""

    directory: Path
    records: int = 0  # spilled and not yet replayed (this process)
    _names: Iterator[int] = field(default_factory=lambda: itertools.count())

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def put(self, batch: SourceBatch) -> None:
        path = self.directory / f"{time.time_ns():020d}-{next(self._names):06d}.batch"
        tmp = path.with_suffix(".tmp")
        # pickle: written and read only by this program, on this machine (decimals and dicts as they are)
        tmp.write_bytes(pickle.dumps(batch, protocol=5))
        tmp.rename(path)
        self.records += batch.record_count

    def pending(self) -> list[Path]:
        return sorted(self.directory.glob("*.batch"))

    def replay(self, send: Callable[[SourceBatch], None]) -> int:
        """Send every spilled batch, oldest first, deleting each file once `send` returned; records sent."""
        sent = 0
        for path in self.pending():
            batch: SourceBatch = pickle.loads(path.read_bytes())
            send(batch)
            path.unlink()
            sent += batch.record_count
            self.records = max(self.records - batch.record_count, 0)
        return sent


# Records of priority ≥ this are spilled at each level (3: none).
_SPILL_FROM = {
    Level.NORMAL: 3,
    Level.SOFT: 3,
    Level.GRACEFUL: 2,
    Level.AGGRESSIVE: 1,
    Level.CIRCUIT_BREAK: 0,
}


_ACTIVE: list[tuple[str, Controller]] = []  # (source, controller) of each governor producing in this process now


def active_controller() -> Controller | None:
    """The controller governing a source in this process right now, the latest started (None: nothing producing)."""
    return _ACTIVE[-1][1] if _ACTIVE else None


def producing() -> list[tuple[str, Level]]:
    """Each source producing in this process now, oldest first, with the level of the controller governing it."""
    return [(source, controller.level) for source, controller in _ACTIVE]


class Governor:
    """Stands between a source and the producer: reads the signals, applies the level's action to each batch."""

    def __init__(
        self,
        controller: Controller,
        spill: Spill,
        *,
        lag: Callable[[], int] = lambda: 0,
        memory: Callable[[], int] = process_memory,
        priorities: dict[str, int] | None = None,
        default_priority: int = 1,
        pace_seconds: float = 0.05,
    ) -> None:
        self.controller, self.spill = controller, spill
        self.lag, self._memory = lag, memory
        self.priorities = priorities or {}
        self.default_priority = default_priority
        self.pace_seconds = pace_seconds
        self.sent = 0  # records passed on to `send` (replays included)
        self.spilled = 0
        self.replayed = 0
        self.paced = 0

    @contextmanager
    def running(self, source: str = "a source") -> Iterator[Governor]:
        """Marks `source` as producing in this process under this governor's controller, until the block ends
        (GET /v1/pipeline reports each producing source and its level)."""
        entry = (source, self.controller)
        _ACTIVE.append(entry)
        try:
            yield self
        finally:
            _ACTIVE.remove(entry)

    def priority(self, batch: SourceBatch) -> int:
        return self.priorities.get(f"{batch.asset_class.value}/{batch.exchange}".lower(), self.default_priority)

    def admit(self, batch: SourceBatch, send: Callable[[SourceBatch], None]) -> None:
        """Apply the current level to `batch`: send it, slow down first, or spill it whole."""
        level = self.controller.observe(self.lag(), self._memory())
        if level >= Level.SOFT:
            self.paced += 1
            time.sleep(self.pace_seconds * level)  # backpressure: the source's own thread waits
        priority = self.priority(batch)
        if priority >= _SPILL_FROM[level]:
            self.spill.put(batch)
            self.spilled += batch.record_count
            metrics.SPILLED.labels(str(priority)).inc(batch.record_count)
            return
        if level is Level.NORMAL and self.spill.pending():
            self.drain(send)
        send(batch)
        self.sent += batch.record_count

    def drain(self, send: Callable[[SourceBatch], None]) -> int:
        """Replay everything spilled (at NORMAL, or when the source has ended and the load must finish)."""
        sent = self.spill.replay(send)
        self.sent += sent
        self.replayed += sent
        metrics.REPLAYED.inc(sent)
        if sent:
            log.info("degradation.replayed", records=sent)
        return sent
