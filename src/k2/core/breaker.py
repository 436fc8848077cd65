"""A circuit breaker: stop calling what keeps failing, try again after a pause.

The producer (produce failures), the sink (catalog commits) and the API (query timeouts) each hold one; the
degradation controller of a run treats an open produce breaker as its top level. Its state is exported as
k2_breaker_open{breaker}.
"""

from __future__ import annotations

import threading
import time

import structlog

from k2.core import metrics

log = structlog.get_logger(__name__)


class CircuitBreaker:
    """Closed → open after `threshold` consecutive failures; half-open after `reset_seconds` (the next call is a
    trial); a success closes it. Thread-safe: failures arrive from librdkafka's delivery callbacks."""

    def __init__(self, name: str, threshold: int = 5, reset_seconds: float = 10.0, clock=time.monotonic) -> None:
        self.name, self.threshold, self.reset_seconds, self._clock = name, threshold, reset_seconds, clock
        self._failures = 0
        self._opened_at: float | None = None
        self._lock = threading.Lock()

    @property
    def failing(self) -> bool:
        """Failures recorded since the last success (cheap: no lock; for the hot delivery path)."""
        return self._failures > 0

    @property
    def open(self) -> bool:
        with self._lock:
            return self._opened_at is not None and self._clock() - self._opened_at < self.reset_seconds

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= self.threshold and self._opened_at is None:
                self._opened_at = self._clock()
                metrics.BREAKER_OPEN.labels(self.name).set(1)
                log.warning("breaker.opened", breaker=self.name, failures=self._failures)
            elif self._opened_at is not None and self._clock() - self._opened_at >= self.reset_seconds:
                self._opened_at = self._clock()  # the half-open trial failed: open again

    def record_success(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                log.info("breaker.closed", breaker=self.name)
                metrics.BREAKER_OPEN.labels(self.name).set(0)
            self._failures, self._opened_at = 0, None
