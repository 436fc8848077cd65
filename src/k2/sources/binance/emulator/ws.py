"""One Binance spot market-stream connection: URL routing, live (un)subscribing, limits, keepalive, lifetime.

Rules follow the spot "WebSocket Streams" document (developers.binance.com/docs/binance-spot-api-docs/
web-socket-streams): raw streams at ``/ws/<stream>``, combined at ``/stream?streams=a/b``, requests
``{"method":..,"params":..,"id":..}`` answered ``{"result":..,"id":..}`` or ``{"error":{"code","msg"},"id":..}``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from k2.core import metrics
from k2.sources.binance.emulator.feed import Hub, Outgoing
from k2.sources.binance.emulator.limits import Limits

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
# Stream names: lowercase symbol, then a camelCase kind ("btcusdt@depth@100ms"), or an all-market "!" stream.
_STREAM = re.compile(r"^(?:[a-z0-9]+@[A-Za-z0-9_@]+|![A-Za-z0-9_@]+)$")
# web-socket-streams "Live Subscribing/Unsubscribing": id is "64-bit signed integer, alphanumeric string; max length
# 36, null".
_STRING_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
SHUTDOWN_STREAM = "!serverShutdown"


class RequestError(Exception):
    """A request the server answers with an error envelope; codes and texts from the doc's "Error Messages" table."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


@dataclass(frozen=True, slots=True)
class Route:
    """What the connecting URL asked for."""

    streams: tuple[str, ...]
    combined: bool
    micro: bool


def parse_route(path: str, max_streams: int) -> Route | str:
    """The route for a request path, or the reason it is refused (sent as an HTTP 400/404 body)."""
    parts = urlsplit(path)
    query = parse_qs(parts.query)
    unit = query.get("timeUnit", ["MILLISECOND"])[0]
    if unit.upper() not in ("MILLISECOND", "MICROSECOND"):
        return f"Invalid timeUnit {unit!r}: use MILLISECOND or MICROSECOND"
    micro = unit.upper() == "MICROSECOND"
    if parts.path in ("/ws", "/ws/"):
        streams: list[str] = []
        combined = False
    elif parts.path.startswith("/ws/"):
        streams = [s for s in parts.path[len("/ws/") :].split("/") if s]
        combined = False
    elif parts.path in ("/stream", "/stream/"):
        streams = [s for s in query.get("streams", [""])[0].split("/") if s]
        combined = True
    else:
        return f"Unknown path {parts.path!r}: use /ws/<stream> or /stream?streams=<a>/<b>"
    bad = [stream for stream in streams if not _STREAM.match(stream)]
    if bad:
        return f"Invalid stream name(s): {', '.join(bad)}"
    if len(set(streams)) > max_streams:
        return f"Too many streams: {len(set(streams))} requested, the limit is {max_streams} per connection"
    return Route(tuple(dict.fromkeys(streams)), combined, micro)


def process_request(limits: Limits) -> Callable[[ServerConnection, Request], Response | None]:
    """A websockets ``process_request`` hook refusing unknown paths before the handshake."""

    def hook(connection: ServerConnection, request: Request) -> Response | None:
        route = parse_route(request.path, limits.max_streams)
        if isinstance(route, str):
            status = HTTPStatus.NOT_FOUND if route.startswith("Unknown path") else HTTPStatus.BAD_REQUEST
            return connection.respond(status, route + "\n")
        return None

    return hook


@dataclass(slots=True)
class _Close:
    code: int
    reason: str


class StreamConnection:
    """Serves one client until it leaves, breaks a limit, or the server ends it."""

    def __init__(self, ws: ServerConnection, hub: Hub, limits: Limits, route: Route) -> None:
        self.ws = ws
        self.hub = hub
        self.limits = limits
        self.combined = route.combined
        self.micro = route.micro
        self.streams: dict[str, None] = {}
        self._queue: asyncio.Queue[Outgoing | str | _Close] = asyncio.Queue()
        self._incoming: collections.deque[float] = collections.deque()
        self._stalled_until = 0.0
        self._loop = asyncio.get_running_loop()
        self.closed_reason = ""
        for stream in route.streams:
            self._add(stream)

    # -- called by the hub and the emulator ---------------------------------------------------------------
    def deliver(self, item: Outgoing) -> None:
        if self._queue.qsize() >= self.limits.send_queue_max:
            self.abort("send queue overflow")
            return
        self._queue.put_nowait(item)

    def stall(self, seconds: float) -> None:
        self._stalled_until = max(self._stalled_until, self._loop.time() + seconds)

    def shutdown(self, event_time_ms: int) -> None:
        """Send the serverShutdown event (after frames already queued), then close."""
        data = {"e": "serverShutdown", "E": event_time_ms}
        self._queue.put_nowait(Outgoing(SHUTDOWN_STREAM, data))
        self._queue.put_nowait(_Close(1001, "server shutdown"))

    def abort(self, reason: str) -> None:
        """Drop the TCP connection without a close frame, as a network failure would."""
        self.closed_reason = reason
        self.ws.transport.abort()

    # -- the connection's life -----------------------------------------------------------------------------
    async def serve(self) -> None:
        self.hub.connections.add(self)
        metrics.EMULATOR_CONNECTIONS.inc()
        self._count_control_frames()
        tasks = [
            asyncio.create_task(self._writer()),
            asyncio.create_task(self._keepalive()),
            asyncio.create_task(self._expire()),
        ]
        try:
            async for message in self.ws:
                if not self._allow_incoming():
                    with contextlib.suppress(TimeoutError):  # let the writer send the answers and the close
                        await asyncio.wait_for(asyncio.shield(tasks[0]), self.limits.ping_interval)
                    return
                reply = self._handle(message if isinstance(message, str) else message.decode(errors="replace"))
                self._queue.put_nowait(reply)
        except ConnectionClosed:
            pass
        finally:
            metrics.EMULATOR_CONNECTIONS.dec()
            self.hub.drop_sink(self)
            for task in tasks:
                task.cancel()

    def _count_control_frames(self) -> None:
        # The 5 messages/s limit counts PING and PONG frames too; websockets answers them itself, so count them here.
        protocol = self.ws.protocol
        receive = protocol.recv_frame

        def counting(frame: Frame) -> None:
            if frame.opcode in (Opcode.PING, Opcode.PONG) and not self._allow_incoming():
                return
            receive(frame)

        protocol.recv_frame = counting  # type: ignore[method-assign]

    def _allow_incoming(self) -> bool:
        """False (and the connection closing) once more than ``incoming_per_second`` arrived within one second."""
        now = self._loop.time()
        self._incoming.append(now)
        while self._incoming and self._incoming[0] <= now - 1.0:
            self._incoming.popleft()
        if len(self._incoming) <= self.limits.incoming_per_second:
            return True
        if not self.closed_reason:
            self.closed_reason = "too many incoming messages"
            # web-socket-streams: "A connection that goes beyond the limit will be disconnected". Answers to the
            # requests within the limit go out first; nothing later is read.
            self._queue.put_nowait(_Close(1008, "Too many messages"))
        return False

    async def _writer(self) -> None:
        while True:
            item = await self._queue.get()
            while (wait := self._stalled_until - self._loop.time()) > 0:
                await asyncio.sleep(wait)
            try:
                if isinstance(item, _Close):
                    self.closed_reason = self.closed_reason or item.reason
                    metrics.EMULATOR_CLOSES.labels(self.closed_reason).inc()
                    await self.ws.close(item.code, item.reason)
                    return
                await self.ws.send(item if isinstance(item, str) else item.text(self.combined, self.micro))
                metrics.EMULATOR_FRAMES.inc()
            except ConnectionClosed:
                return

    async def _keepalive(self) -> None:
        """Ping every ``ping_interval``; close when a ping stays unanswered for ``pong_timeout``."""
        interval, timeout = self.limits.ping_interval, self.limits.pong_timeout
        tick = min(interval, timeout) / 4
        next_ping = self._loop.time() + interval
        unanswered: list[tuple[float, asyncio.Future[float]]] = []
        while True:
            await asyncio.sleep(tick)
            now = self._loop.time()
            unanswered = [(sent, waiter) for sent, waiter in unanswered if not waiter.done()]
            if unanswered and now - unanswered[0][0] > timeout:
                self.closed_reason = "pong timeout"
                await self.ws.close(1011, "Pong timeout")
                return
            if now >= next_ping:
                next_ping = now + interval
                try:
                    waiter = await self.ws.ping()
                except ConnectionClosed:
                    return
                unanswered.append((now, cast("asyncio.Future[float]", waiter)))  # ping() hands back a Future

    async def _expire(self) -> None:
        await asyncio.sleep(self.limits.max_lifetime)
        self._queue.put_nowait(_Close(1000, "Connection lifetime expired"))

    # -- requests ------------------------------------------------------------------------------------------
    def _handle(self, text: str) -> str:
        request_id: Any = None
        try:
            try:
                request = orjson.loads(text)
            except orjson.JSONDecodeError as error:
                raise RequestError(3, f"Invalid JSON: {error}") from None
            if not isinstance(request, dict):
                raise RequestError(2, "Invalid request: expected a JSON object")
            request_id = request.get("id")
            if "id" not in request or not _valid_id(request_id):
                request_id = None
                raise RequestError(2, "Invalid request: request ID must be an unsigned integer")
            method = request.get("method")
            if method not in METHODS:
                column = text.find(str(method)) + len(str(method)) + 1 if isinstance(method, str) else 1
                raise RequestError(
                    2,
                    f"Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, "
                    f"`LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY` at line 1 column {column}",
                )
            result = self._dispatch(method, request.get("params"))
            return orjson.dumps({"result": result, "id": request_id}).decode()
        except RequestError as error:
            return orjson.dumps({"error": {"code": error.code, "msg": error.msg}, "id": request_id}).decode()

    def _dispatch(self, method: str, params: Any) -> Any:
        if method == "LIST_SUBSCRIPTIONS":
            return list(self.streams)
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                raise RequestError(2, "Invalid request: params must be a list of stream names")
            bad = [p for p in params if not _STREAM.match(p)]
            if bad:
                raise RequestError(2, f"Invalid request: invalid stream name {bad[0]!r}")
            if method == "UNSUBSCRIBE":
                for stream in params:
                    self._remove(stream)
                return None
            if len(self.streams.keys() | set(params)) > self.limits.max_streams:
                # web-socket-streams: "A single connection can listen to a maximum of 1024 streams."
                raise RequestError(2, f"Invalid request: too many streams, the limit is {self.limits.max_streams}")
            for stream in params:
                self._add(stream)
            return None
        if not isinstance(params, list) or not params:
            raise RequestError(2, "Invalid request: missing field `params`")
        name = params[0]
        if not isinstance(name, str):
            raise RequestError(2, "Invalid request: property name must be a string")
        if name != "combined":
            raise RequestError(0, "Unknown property")
        if method == "GET_PROPERTY":
            return self.combined
        if len(params) < 2 or not isinstance(params[1], bool):
            raise RequestError(1, "Invalid value type: expected Boolean")
        self.combined = params[1]
        return None

    def _add(self, stream: str) -> None:
        if stream not in self.streams:
            self.streams[stream] = None
            self.hub.subscribe(self, stream)

    def _remove(self, stream: str) -> None:
        if self.streams.pop(stream, 0) is None:
            self.hub.unsubscribe(self, stream)


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and bool(_STRING_ID.match(value))
