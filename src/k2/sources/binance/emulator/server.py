"""BinanceEmulator: the WS stream server, the REST app and the feed on one event loop, plus a CLI entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import structlog
import uvicorn
from websockets.asyncio.server import Server, ServerConnection, serve

from k2.core.metrics import serve_metrics
from k2.samples import BINANCE_EXCHANGE_INFO
from k2.sources.binance.capture import ReplayClock
from k2.sources.binance.emulator.capture import Capture, load_capture
from k2.sources.binance.emulator.faults import ConnectionFault, FaultPlan, FaultSpec, FrameFault
from k2.sources.binance.emulator.feed import Hub, replay
from k2.sources.binance.emulator.limits import Limits
from k2.sources.binance.emulator.rest import create_app
from k2.sources.binance.emulator.synthetic import SyntheticSpec, run_synthetic
from k2.sources.binance.emulator.ws import StreamConnection, parse_route, process_request

log = structlog.get_logger(__name__)


class Endpoints(NamedTuple):
    """Where a running emulator listens: ``ws_url`` (append ``/ws/<stream>`` or ``/stream?streams=``) and REST."""

    ws_url: str
    rest_url: str


class BinanceEmulator:
    """A local Binance spot market-data venue: captured or synthetic streams, REST that agrees with them, faults.

    ``speed`` divides the recorded receipt-time gaps (0 = as fast as possible). With ``wait_for_subscriber`` the
    replay starts when the first connection subscribes, so a client connecting first sees every captured frame.
    ``clock``: a capture's times re-based to the moment its replay starts (``now``) or as recorded (``recorded``);
    either way trades and quotes share one clock (k2.sources.binance.emulator.feed).
    """

    def __init__(
        self,
        captures: Sequence[Path] | None = None,
        synthetic: SyntheticSpec | None = None,
        speed: float = 1.0,
        faults: FaultSpec | None = None,
        limits: Limits | None = None,
        *,
        host: str = "127.0.0.1",
        ws_port: int = 0,
        rest_port: int = 0,
        wait_for_subscriber: bool = True,
        exchange_info: Path = BINANCE_EXCHANGE_INFO,
        clock: ReplayClock | str = ReplayClock.NOW,
    ) -> None:
        if speed < 0:
            raise ValueError("speed must be >= 0 (0 replays as fast as possible)")
        self.capture_paths = list(captures or [])
        self.captures: list[Capture] = []  # as loaded by start(), with the lines each skipped
        self.synthetic = synthetic
        self.speed = speed
        self.clock = ReplayClock(clock)
        self.fault_spec = faults or FaultSpec()
        self.limits = limits or Limits()
        self.host, self.ws_port, self.rest_port = host, ws_port, rest_port
        self.wait_for_subscriber = wait_for_subscriber
        self.exchange_info = exchange_info
        self.hub: Hub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ws_server: Server | None = None
        self._rest_server: uvicorn.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._replay: asyncio.Task[None] | None = None

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def counts(self) -> dict[str, int]:
        """Frames published, and how many of them each frame fault hit."""
        return dict(self.hub.counts) if self.hub else {}

    async def start(self) -> Endpoints:
        """Load captures, bind both servers (port 0 picks a free one) and start the feed."""
        self._loop = asyncio.get_running_loop()
        captures: list[Capture] = [await asyncio.to_thread(load_capture, Path(p)) for p in self.capture_paths]
        self.captures = captures
        for capture in captures:
            if summary := capture.summary():
                log.warning("emulator.capture_lines_skipped", summary=summary)
        hub = self.hub = Hub(FaultPlan(self.fault_spec))
        for capture in captures:
            for snapshot in capture.snapshots:
                hub.add_snapshot(snapshot.symbol, snapshot.body)
            hub.symbols.update(frame.data["s"] for frame in capture.frames if isinstance(frame.data.get("s"), str))
        if self.synthetic:
            hub.symbols.update(self.synthetic.names())

        async def handler(ws: ServerConnection) -> None:
            route = parse_route(ws.request.path if ws.request else "/ws", self.limits.max_streams)
            assert not isinstance(route, str)  # process_request refused it already
            await StreamConnection(ws, hub, self.limits, route).serve()

        self._ws_server = await serve(
            handler,
            self.host,
            self.ws_port,
            process_request=process_request(self.limits),
            ping_interval=None,  # StreamConnection runs Binance's own ping/pong rule
            close_timeout=2,
            max_queue=64,
        )
        self.ws_port = self._ws_server.sockets[0].getsockname()[1]

        own_symbols = self.synthetic.exchange_info_symbols() if self.synthetic else ()
        app = create_app(hub, self.limits, self.exchange_info, own_symbols)
        config = uvicorn.Config(
            app, host=self.host, port=self.rest_port, log_level="warning", lifespan="off", access_log=False
        )
        self._rest_server = uvicorn.Server(config)
        # Let uvicorn bind host/port itself: measured on loopback, serve(sockets=[...]) answers ~40 ms slower.
        rest_task = asyncio.create_task(self._rest_server.serve())
        self._tasks.append(rest_task)
        while not self._rest_server.started:
            if rest_task.done():
                raise RuntimeError(f"REST server failed to start on {self.host}:{self.rest_port}")
            await asyncio.sleep(0.01)
        self.rest_port = self._rest_server.servers[0].sockets[0].getsockname()[1]

        if captures:
            self._replay = asyncio.create_task(replay(hub, captures, self.speed, self.wait_for_subscriber, self.clock))
            self._replay.add_done_callback(_report_failure)
            self._tasks.append(self._replay)
        if self.synthetic:
            self._tasks.append(asyncio.create_task(run_synthetic(hub, self.synthetic)))
        if self.fault_spec.disconnect_every > 0:
            self._tasks.append(
                asyncio.create_task(self._every(self.fault_spec.disconnect_every, ConnectionFault.DISCONNECT))
            )
        if self.fault_spec.stall_every > 0:
            stall = self._every(self.fault_spec.stall_every, ConnectionFault.STALL, self.fault_spec.stall_seconds)
            self._tasks.append(asyncio.create_task(stall))
        if self.fault_spec.shutdown_after > 0:
            self._tasks.append(
                asyncio.create_task(self._after(self.fault_spec.shutdown_after, ConnectionFault.SHUTDOWN))
            )
        return Endpoints(self.ws_url, self.rest_url)

    async def stop(self) -> None:
        """Stop the feed and both servers; open connections are closed (1001 going away)."""
        for task in self._tasks[1:]:  # the first is uvicorn's serve(), which should_exit ends cleanly
            task.cancel()
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        if self._rest_server is not None:
            self._rest_server.should_exit = True
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def wait_replayed(self) -> None:
        """Return once every captured frame has been published."""
        if self._replay is not None:
            await asyncio.shield(self._replay)

    def inject(
        self,
        fault: FrameFault | ConnectionFault | str,
        *,
        stream: str | None = None,
        count: int = 1,
        seconds: float = 0.0,
    ) -> None:
        """Inject one fault now; safe from any thread.

        Frame faults (``drop``, ``duplicate``, ``reorder``, ``malformed``) hit the next ``count`` frames of ``stream``
        (any stream when None). ``disconnect`` drops the TCP connection, ``stall`` stops writing for ``seconds``,
        ``shutdown`` sends the serverShutdown event and closes; they hit every connection, or with ``stream`` only
        the connections subscribed to it.
        """
        kind: FrameFault | ConnectionFault
        if isinstance(fault, str) and not isinstance(fault, FrameFault | ConnectionFault):
            kind = FrameFault(fault) if fault in FrameFault._value2member_map_ else ConnectionFault(fault)
        else:
            kind = fault
        if self._loop is None or self.hub is None:
            raise RuntimeError("start the emulator before injecting faults")

        def apply() -> None:
            assert self.hub is not None
            if isinstance(kind, FrameFault):
                self.hub.faults.queue(kind, stream, count)
            else:
                self._apply_connection_fault(kind, seconds, stream)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            apply()
        else:
            done = threading.Event()
            self._loop.call_soon_threadsafe(lambda: (apply(), done.set()))
            done.wait(5)

    def _apply_connection_fault(self, kind: ConnectionFault, seconds: float, stream: str | None = None) -> None:
        assert self.hub is not None
        for connection in tuple(self.hub.connections):
            if stream is not None and stream not in connection.streams:
                continue
            if kind is ConnectionFault.DISCONNECT:
                connection.abort("fault: disconnect")
            elif kind is ConnectionFault.STALL:
                connection.stall(seconds)
            else:
                connection.shutdown(int(time.time() * 1000))

    async def _every(self, period: float, kind: ConnectionFault, seconds: float = 0.0) -> None:
        while True:
            await asyncio.sleep(period)
            self._apply_connection_fault(kind, seconds)

    async def _after(self, delay: float, kind: ConnectionFault) -> None:
        await asyncio.sleep(delay)
        self._apply_connection_fault(kind, 0.0)

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[Endpoints]:
        """Run the emulator on its own loop in a daemon thread for the ``with`` block; yields its Endpoints."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def runner() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as error:  # surfaced in the caller's thread below
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.close()

        thread = threading.Thread(target=runner, name="binance-emulator", daemon=True)
        thread.start()
        if not ready.wait(30) or failure:
            raise RuntimeError("Binance emulator failed to start") from (failure[0] if failure else None)
        try:
            yield Endpoints(self.ws_url, self.rest_url)
        finally:
            asyncio.run_coroutine_threadsafe(self.stop(), loop).result(15)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(15)


def _report_failure(task: asyncio.Task[None]) -> None:
    """A replay that dies must say so: the servers would otherwise keep answering with nothing more to send."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("emulator.replay_failed", error=repr(exc))


def main(argv: Sequence[str] | None = None) -> int:
    """``k2 emulate binance``: serve captures or a synthetic market until interrupted."""
    parser = argparse.ArgumentParser(prog="k2 emulate binance", description=main.__doc__)
    parser.add_argument("--capture", action="append", type=Path, default=[], help="capture file (repeatable)")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed factor; 0 = as fast as possible")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9443, help="WebSocket port (0 = free port)")
    parser.add_argument("--rest-port", type=int, default=None, help="REST port (default: --port + 1, or free)")
    parser.add_argument("--synthetic", action="store_true", help="also run a synthetic market")
    parser.add_argument("--symbols", type=int, default=3, help="synthetic symbols (SYN0USDT, ...)")
    parser.add_argument("--rate", type=float, default=100.0, help="synthetic frames per second")
    parser.add_argument(
        "--clock",
        choices=[c.value for c in ReplayClock],
        default=ReplayClock.NOW.value,
        help="now: re-base each capture's times to when its replay starts; recorded: keep the recorded times",
    )
    parser.add_argument("--no-wait", action="store_true", help="start replay at once, not on the first subscriber")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus /metrics on 127.0.0.1:PORT")
    parser.add_argument(
        "--exchange-info",
        type=Path,
        default=BINANCE_EXCHANGE_INFO,
        help="the GET /api/v3/exchangeInfo response to serve (.json or .json.gz; default: the shipped 2021-10-12 one)",
    )
    parser.add_argument(
        "--faults",
        type=FaultSpec.parse,
        default=FaultSpec(),
        help="faults to inject, e.g. drop=0.01,duplicate=0.005,reorder=0.01,malformed=0.001,disconnect-every=30,"
        "stall-every=60,stall-seconds=5,shutdown-after=300,seed=7,streams=aggTrade+bookTicker",
    )
    args = parser.parse_args(argv)
    if args.metrics_port is not None:
        serve_metrics(args.metrics_port)
    if not args.capture and not args.synthetic:
        parser.error("give at least one --capture FILE or --synthetic")
    rest_port = args.rest_port if args.rest_port is not None else (args.port + 1 if args.port else 0)
    emulator = BinanceEmulator(
        args.capture,
        SyntheticSpec(args.symbols, args.rate) if args.synthetic else None,
        args.speed,
        faults=args.faults,
        host=args.host,
        ws_port=args.port,
        rest_port=rest_port,
        wait_for_subscriber=not args.no_wait,
        exchange_info=args.exchange_info,
        clock=args.clock,
    )

    async def run() -> None:
        endpoints = await emulator.start()
        for capture in emulator.captures:
            if summary := capture.summary():
                print(summary, file=sys.stderr, flush=True)
        print(f"Binance emulator: ws {endpoints.ws_url}  rest {endpoints.rest_url}  (Ctrl-C stops)", flush=True)
        print(f"faults: {emulator.fault_spec.describe()}", flush=True)
        stopped = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # no signal handlers off the main thread
                asyncio.get_running_loop().add_signal_handler(signum, stopped.set)
        try:
            await stopped.wait()
        finally:
            await emulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
    return 0
