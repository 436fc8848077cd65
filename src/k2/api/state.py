"""What every request shares: the engine, the worker threads that run queries under a time limit, the key file
and the rate limiter. One `ApiState` lives on `app.state.k2`.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
from fastapi import Request
from starlette.requests import HTTPConnection

from k2.api.errors import ApiError
from k2.api.ratelimit import RateLimiter
from k2.bus.stack import NO_KAFKA, existing_endpoints
from k2.config import ApiSettings, Settings
from k2.core import metrics
from k2.core.breaker import CircuitBreaker
from k2.query.engine import QueryEngine, QueryError
from k2.query.fresh import FreshReader, FreshSource
from k2.query.live_hub import LiveHub
from k2.query.timetravel import AsOf

T = TypeVar("T")


@dataclass
class ApiState:
    settings: Settings
    api: ApiSettings
    keys_file: Path
    limiter: RateLimiter
    auth_failures: RateLimiter  # unknown keys presented, per client address
    engine: QueryEngine | None = None
    executor: ThreadPoolExecutor = field(init=False)
    _reading: threading.Lock = field(init=False, default_factory=threading.Lock)
    _refreshed_at: float = field(init=False, default=-math.inf)
    _fresh: FreshReader | None = field(init=False, default=None)
    _fresh_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _hub: LiveHub | None = field(init=False, default=None)  # the live subscriptions' shared consumers

    _subscriptions: Counter[str] = field(init=False, default_factory=Counter)  # open subscriptions per key id

    breaker: CircuitBreaker = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(self.api.query_workers, thread_name_prefix="k2-api-query")
        self.breaker = CircuitBreaker("query", self.api.breaker_timeouts, self.api.breaker_reset_seconds)

    @contextmanager
    def reading(self) -> Iterator[QueryEngine]:
        """The engine, refreshed if the last refresh is older than `refresh_seconds`, held so no other request
        refreshes it until the block ends: the snapshot ids read in the block are the ones its queries see. Costs
        no concurrency, since the engine runs one query at a time anyway. Call from a query thread.
        """
        engine = self.require_engine()
        with self._reading:
            if time.monotonic() - self._refreshed_at >= self.api.refresh_seconds:
                engine.refresh()
                self._refreshed_at = time.monotonic()
            yield engine

    def fresh_reader(self) -> FreshReader:
        """The reader of what Kafka holds beyond the lake (opened on first use, kept); 503 when no Kafka is known."""
        with self._fresh_lock:
            if self._fresh is None:
                endpoints = existing_endpoints(self.settings)
                if endpoints is None:
                    raise ApiError(503, f"fresh=true needs the Kafka log: {NO_KAFKA}", code="kafka_unavailable")
                source = FreshSource.from_endpoints(
                    endpoints, self.settings, budget_seconds=self.api.fresh_budget_seconds
                )
                self._fresh = FreshReader(source)
            return self._fresh

    def live_hub(self) -> LiveHub:
        """The shared live consumers of this process's subscriptions (opened with the fresh reader, kept)."""
        reader = self.fresh_reader()
        with self._fresh_lock:
            if self._hub is None:
                self._hub = LiveHub(reader)
            return self._hub

    def close_fresh_reader(self) -> None:
        with self._fresh_lock:
            if self._hub is not None:
                self._hub.close()
                self._hub = None
            if self._fresh is not None:
                self._fresh.close()
                self._fresh = None

    @property
    def open_subscriptions(self) -> dict[str, int]:
        """Key id -> subscriptions it holds open now."""
        return {key_id: count for key_id, count in self._subscriptions.items() if count}

    @contextmanager
    def subscription_slot(self, key_id: str) -> Iterator[None]:
        """One of the key's `subscriptions_per_key` open subscriptions, held for the block; 429 when all are taken.
        Called on the event loop only, so no lock."""
        limit = self.api.subscriptions_per_key
        if self._subscriptions[key_id] >= limit:
            raise ApiError(
                429,
                f"key {key_id} already holds {limit} subscriptions (K2_API_SUBSCRIPTIONS_PER_KEY):"
                " close one, or subscribe to several symbols in one",
                code="too_many_subscriptions",
            )
        self._subscriptions[key_id] += 1
        metrics.API_SUBSCRIPTIONS.inc()
        try:
            yield
        finally:
            self._subscriptions[key_id] -= 1
            metrics.API_SUBSCRIPTIONS.dec()

    def require_engine(self) -> QueryEngine:
        if self.engine is None:
            raise ApiError(503, "the query engine is not open yet: retry in a moment")
        return self.engine

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` in a query thread; 504 when it takes longer than the configured limit.

        DuckDB offers no cancel through the engine, so a timed-out query finishes in its thread and its result is
        dropped; the engine lock makes later queries wait for it.
        """
        if self.breaker.open:
            reset = f"{self.api.breaker_reset_seconds:g}"
            raise ApiError(
                503,
                f"queries keep timing out, so new ones are refused for up to {reset} s while the engine catches up:"
                " retry later with a narrower query",
                code="query_breaker_open",
                headers={"Retry-After": str(round(self.api.breaker_reset_seconds))},
            )
        loop = asyncio.get_running_loop()
        try:
            result = await asyncio.wait_for(loop.run_in_executor(self.executor, work), self.api.query_timeout_seconds)
        except TimeoutError:
            self.breaker.record_failure()
            raise ApiError(
                504,
                f"the query ran longer than {self.api.query_timeout_seconds:g} s: narrow the symbols or the time"
                " range, or page with a smaller limit",
            ) from None
        if self.breaker.failing:
            self.breaker.record_success()
        return result

    async def read(
        self, table: str, as_of: AsOf, query: Callable[[QueryEngine, AsOf], pa.Table]
    ) -> tuple[pa.Table, int | None]:
        """Run `query(engine, as_of)` on the newest commits (or `as_of`'s); returns the result and the snapshot of
        `table` it read. An unknown snapshot answers 404.
        """

        def work() -> tuple[pa.Table, int | None]:
            with self.reading() as engine:
                snapshot = snapshot_of(engine, table, as_of)  # first: an unknown snapshot is a 404
                return query(engine, as_of), snapshot

        return await self.run(work)


def snapshot_of(engine: QueryEngine, table: str, as_of: AsOf) -> int | None:
    """The snapshot id of `table` that `as_of` reads (None: no data then); 404 if the snapshot id is unknown."""
    try:
        return engine.at(as_of).snapshot_ids.get(table)
    except QueryError as exc:
        raise ApiError(
            404, f"{exc}. GET /v1/snapshots?table=trades lists valid ids", code="snapshot_not_found"
        ) from None


def api_state(connection: HTTPConnection) -> ApiState:
    state: ApiState = connection.app.state.k2
    return state


def request_state(request: Request) -> ApiState:
    return api_state(request)
