"""Binance spot WebSocket client: combined streams over as many connections as the limits need, never giving up.

Rules it follows (Binance spot "WebSocket Streams" docs):
- at most 1024 streams per connection: streams are spread over connections;
- at most 5 incoming messages per second per connection: SUBSCRIBE requests are paced below that;
- the server pings every 20 s and drops a client that has not ponged within 60 s: the `websockets` library answers
  every ping with a pong automatically;
- a connection lives at most 24 h: each connection is replaced *before* that, with overlap — the new one is
  subscribed and delivering before the old one is closed; the duplicates this makes are dropped downstream by id;
- a `serverShutdown` event announces a restart: replace the connection at once, the same way.
Disconnects are retried with jittered exponential backoff, forever, until `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import orjson
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from k2.core import metrics

log = structlog.get_logger(__name__)

DEFAULT_WS_ENDPOINT = "wss://stream.binance.com:9443"
DEFAULT_REST_ENDPOINT = "https://api.binance.com"
SERVER_SHUTDOWN = b'"serverShutdown"'

# on_frame(raw frame bytes, receive time in µs, connection id)
FrameHandler = Callable[[bytes, int, int], Awaitable[None] | None]


@dataclass
class ClientLimits:
    max_streams_per_connection: int = 1024
    # Binance allows 5 incoming messages/s per connection; stay under it so a busy moment never costs a disconnect
    max_requests_per_second: float = 4.0
    params_per_subscribe: int = 200
    lifetime_seconds: float = 24 * 3600.0
    replace_before_seconds: float = 10 * 60.0  # open the successor this long before the 24 h cut-off
    backoff_initial_seconds: float = 0.25
    backoff_max_seconds: float = 30.0
    connect_timeout_seconds: float = 10.0
    # Handover: after the successor delivers, read the old connection until it is quiet this long (or the grace
    # runs out), so frames it sent just before the switch are not mistaken for a gap.
    handover_quiet_seconds: float = 0.1
    handover_grace_seconds: float = 2.0


@dataclass
class ClientStats:
    frames: int = 0
    connects: int = 0
    disconnects: int = 0
    replacements: int = 0  # proactive (lifetime, serverShutdown)
    errors: list[str] = field(default_factory=list)


def stream_names(symbols: list[str], channels: list[str]) -> list[str]:
    """`btcusdt@aggTrade` style names; Binance stream names use lower-case symbols."""
    return [f"{s.lower()}@{c}" for s in symbols for c in channels]


def backoff_delays(initial: float, maximum: float) -> Iterator[float]:
    """Full-jitter exponential backoff: uniform(0, min(max, initial * 2^n)), so reconnect storms spread out."""
    for attempt in itertools.count():
        yield random.uniform(0, min(maximum, initial * 2 ** min(attempt, 30)))


class _Pacer:
    """Spaces outgoing requests so a connection never exceeds the incoming-message limit."""

    def __init__(self, per_second: float) -> None:
        self._gap = 1.0 / per_second
        self._next = 0.0

    async def wait(self) -> None:
        now = time.monotonic()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(now, self._next) + self._gap


class BinanceStreamClient:
    def __init__(
        self,
        streams: list[str],
        on_frame: FrameHandler,
        ws_endpoint: str = DEFAULT_WS_ENDPOINT,
        limits: ClientLimits | None = None,
        query: str = "",
        on_disconnect: Callable[[list[str]], None] | None = None,
    ) -> None:
        """`query` is appended to the stream URL, e.g. "timeUnit=MICROSECOND". `on_disconnect(streams)` is called
        when a connection is lost (not replaced), after its last frame was handed to `on_frame`."""
        if not streams:
            raise ValueError("no streams to subscribe: give at least one symbol and one channel")
        self.limits = limits or ClientLimits()
        self._groups = [
            streams[i : i + self.limits.max_streams_per_connection]
            for i in range(0, len(streams), self.limits.max_streams_per_connection)
        ]
        self._on_frame = on_frame
        self._on_disconnect = on_disconnect
        self._url = ws_endpoint.rstrip("/") + "/stream" + (f"?{query}" if query else "")
        self._stopping = asyncio.Event()
        self._ids = itertools.count(1)
        self.stats = ClientStats()

    @property
    def connection_groups(self) -> list[list[str]]:
        return self._groups

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Keep every group of streams flowing until stop(); returns after all connections are closed."""
        await asyncio.gather(*(self._keep_group(group) for group in self._groups))

    # --- one group of ≤1024 streams ---------------------------------------------------------------------------
    async def _keep_group(self, streams: list[str]) -> None:
        delays = backoff_delays(self.limits.backoff_initial_seconds, self.limits.backoff_max_seconds)
        while not self._stopping.is_set():
            try:
                conn = await self._open(streams)
            except (OSError, WebSocketException, TimeoutError) as exc:
                self._note_error(f"connect failed: {exc!r}")
                await self._sleep(next(delays))
                continue
            delays = backoff_delays(self.limits.backoff_initial_seconds, self.limits.backoff_max_seconds)
            await self._pump_with_replacement(conn, streams)

    async def _open(self, streams: list[str]) -> ClientConnection:
        conn = await asyncio.wait_for(
            connect(self._url, max_size=2**22, ping_interval=None, open_timeout=self.limits.connect_timeout_seconds),
            self.limits.connect_timeout_seconds,
        )
        pacer = _Pacer(self.limits.max_requests_per_second)
        for i in range(0, len(streams), self.limits.params_per_subscribe):
            await pacer.wait()
            request = {"method": "SUBSCRIBE", "params": streams[i : i + self.limits.params_per_subscribe]}
            request["id"] = next(self._ids)
            await conn.send(orjson.dumps(request).decode())
        self.stats.connects += 1
        log.info("binance.connected", url=self._url, streams=len(streams))
        return conn

    async def _pump_with_replacement(self, conn: ClientConnection, streams: list[str]) -> None:
        """Pump `conn` until it dies or must be replaced; on replacement, hand over with overlap."""
        while not self._stopping.is_set():
            budget = self.limits.lifetime_seconds - self.limits.replace_before_seconds
            reason = await self._pump(conn, budget)
            if reason in ("closed", "stopping"):
                await conn.close()
                if reason == "closed":
                    self.stats.disconnects += 1
                    metrics.STREAM_RECONNECTS.labels("disconnect").inc()
                    if self._on_disconnect is not None:
                        self._on_disconnect(streams)
                return
            # lifetime or serverShutdown: open the successor first, then drop the old one (overlap, no gap)
            self.stats.replacements += 1
            metrics.STREAM_RECONNECTS.labels(reason).inc()
            log.info("binance.replacing_connection", reason=reason)
            try:
                successor = await self._open(streams)
            except (OSError, WebSocketException, TimeoutError) as exc:
                self._note_error(f"replacement connect failed: {exc!r}")
                await conn.close()
                return
            await self._drain_until_first_data(conn, successor)
            await conn.close()
            conn = successor

    async def _pump(self, conn: ClientConnection, budget: float) -> str:
        conn_id = id(conn)
        deadline = time.monotonic() + budget
        try:
            while not self._stopping.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "lifetime"
                try:
                    frame = await asyncio.wait_for(conn.recv(decode=False), min(remaining, 0.5))
                except TimeoutError:
                    continue
                if SERVER_SHUTDOWN in frame and b'"e"' in frame:
                    return "server_shutdown"
                await self._deliver(frame, conn_id)
            return "stopping"
        except (WebSocketException, OSError) as exc:
            self._note_error(f"connection lost: {exc!r}")
            return "closed"

    async def _drain_until_first_data(self, old: ClientConnection, new: ClientConnection) -> None:
        """Overlap: keep reading the old connection until the new one delivers data, then until the old one
        has gone quiet (frames it sent before the handover may still be in flight), and only then let the new
        connection's frames through. Ids stay in order; the overlap's duplicates are dropped downstream."""
        first: asyncio.Task[bytes | str] = asyncio.ensure_future(new.recv(decode=False))
        try:
            quiet_since: float | None = None
            grace_deadline = None
            while True:
                if first.done() and grace_deadline is None:
                    grace_deadline = time.monotonic() + self.limits.handover_grace_seconds
                if grace_deadline is not None and (
                    time.monotonic() >= grace_deadline
                    or (
                        quiet_since is not None and time.monotonic() - quiet_since >= self.limits.handover_quiet_seconds
                    )
                ):
                    break
                try:
                    frame = await asyncio.wait_for(old.recv(decode=False), 0.02)
                    quiet_since = None
                    await self._deliver(frame, id(old))
                except TimeoutError:
                    quiet_since = quiet_since or time.monotonic()
                    continue
                except (WebSocketException, OSError):
                    break
            await self._deliver(await first, id(new))
        except (WebSocketException, OSError) as exc:
            self._note_error(f"successor failed during handover: {exc!r}")

    async def _deliver(self, frame: bytes | str, conn_id: int) -> None:
        raw = frame.encode() if isinstance(frame, str) else frame
        self.stats.frames += 1
        result = self._on_frame(raw, time.time_ns() // 1000, conn_id)
        if result is not None:
            await result

    def _note_error(self, message: str) -> None:
        self.stats.errors.append(message)
        del self.stats.errors[:-100]  # keep the last 100 for diagnostics
        log.warning("binance.connection_problem", problem=message)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
