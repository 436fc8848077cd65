"""`k2 up`: the whole platform in one process, for a laptop demo or a first look.

Starts, in this order: the embedded broker and registry (k2.bus.stack), one sink worker, the HTTP API with the
dashboard, the Binance stream (the real endpoint when it answers, else the emulator replaying the recorded captures)
and the ASX sample load; prints where to look; on Ctrl-C/SIGTERM stops them in reverse order — sources first, then
the sink (which commits what it holds), the API, the emulator, and last the broker and registry — and revokes the
API key it made for the dashboard. The broker is the only child process, and it dies with this one even on kill -9.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
import uvicorn
from confluent_kafka.admin import AdminClient
from rich.console import Console

from k2.api import create_app, create_key, revoke_key
from k2.bus.clients import base_config, ensure_topics, producer_config
from k2.bus.producer import RecordProducer
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Endpoints, Stack, running_stack
from k2.config import Settings
from k2.core.batch import SourceBatch
from k2.core.errors import UserError
from k2.ingest.pipeline import default_governor, produce
from k2.lake.catalog import open_catalog
from k2.lake.maintenance import maintain
from k2.lake.sink import IcebergSink
from k2.lake.tables import ensure_tables
from k2.redact import redact
from k2.samples import ASX_SAMPLE, BINANCE_CAPTURE_2021_04_04, BINANCE_CAPTURE_2021_10_12
from k2.sources.asx.source import AsxSource
from k2.sources.base import Source
from k2.sources.binance.client import DEFAULT_REST_ENDPOINT, DEFAULT_WS_ENDPOINT

log = structlog.get_logger(__name__)

# The two recorded Binance combined streams shipped in data/samples/binance: aggTrades, then bookTickers.
DEFAULT_CAPTURES = (BINANCE_CAPTURE_2021_04_04, BINANCE_CAPTURE_2021_10_12)
LIVE_SYMBOLS = ("BTCUSDT", "ETHUSDT")
# aggTrade, not trade as well: both land in trades_v2, and bars would count every trade twice.
DEFAULT_CHANNELS = ("aggTrade", "bookTicker")
DASHBOARD_KEY_NAME = "k2 up dashboard"
# The dashboard asks ~90 requests a minute; room for a few tabs and the API docs' "try it out".
DASHBOARD_RATE_LIMIT = 6000


class BinanceMode(StrEnum):
    AUTO = "auto"  # the real endpoint when it answers within the probe timeout, else the emulator
    EMULATOR = "emulator"
    LIVE = "live"
    OFF = "off"


class UpError(RuntimeError):
    """Something `k2 up` cannot start with; the message says what to do."""


def default_asx_dir(settings: Settings | None = None) -> Path:
    """K2_ASX_SAMPLE, else the sample in the repository's data/samples/asx."""
    return (settings or Settings()).asx_sample or ASX_SAMPLE


@dataclass
class UpOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    asx: Path | None = field(default_factory=default_asx_dir)  # None: no ASX load
    binance: BinanceMode = BinanceMode.AUTO
    symbols: list[str] | None = None  # None: every symbol of the captures (emulator) or LIVE_SYMBOLS (live)
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    ws_endpoint: str = DEFAULT_WS_ENDPOINT
    rest_endpoint: str = DEFAULT_REST_ENDPOINT
    captures: tuple[Path, ...] = DEFAULT_CAPTURES
    replay_speed: float = 1.0
    probe_timeout: float = 2.0
    maintain_every: float = 600.0  # seconds between `k2 maintain` runs (compaction, expiry, orphans); 0: never


def endpoint_reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to `url`'s host and port opens within `timeout` (name lookup included: it has no
    timeout of its own, so it runs in a thread that is abandoned when it takes too long)."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme in ("wss", "https") else 80)
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((parts.hostname or "", port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=attempt, name="k2-up-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def choose_binance(options: UpOptions) -> tuple[BinanceMode, str]:
    """The mode to run and why: auto becomes live or emulator after one short connection attempt."""
    if options.binance is not BinanceMode.AUTO:
        return options.binance, "as asked"
    if endpoint_reachable(options.ws_endpoint, options.probe_timeout):
        return BinanceMode.LIVE, f"{options.ws_endpoint} answered"
    return BinanceMode.EMULATOR, f"{options.ws_endpoint} unreachable within {options.probe_timeout:g} s"


class _Stoppable:
    """A source that ends after the current batch once `stop` is set (Ctrl-C during the ASX load)."""

    def __init__(self, source: Source, stop: threading.Event) -> None:
        self._source = source
        self._stop = stop

    def describe(self) -> str:
        return self._source.describe()

    def check(self) -> None:
        self._source.check()

    def batches(self) -> Iterator[SourceBatch]:
        for batch in self._source.batches():
            yield batch
            if self._stop.is_set():
                return


class Worker:
    """A thread running `target`, remembering how it ended; `stop()` asks it to finish, then joins it."""

    def __init__(self, name: str, target: Callable[[], Any], stop: Callable[[], None] | None = None) -> None:
        self.name = name
        self.error: BaseException | None = None
        self._target = target
        self._stop = stop
        self._thread = threading.Thread(target=self._run, name=f"k2-up-{name}", daemon=True)

    def _run(self) -> None:
        try:
            self._target()
        except BaseException as exc:  # reported by the supervisor, which then stops everything
            self.error = exc
            log.error("up.worker_failed", worker=self.name, error=repr(exc))

    def start(self) -> Worker:
        self._thread.start()
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 30.0) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._stop()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("up.worker_still_running", worker=self.name, timeout=timeout)


def _bind(host: str, port: int) -> socket.socket:
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say TCP (else Nagle adds ~40 ms a request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UpError(f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port") from None
    return sock


class Platform:
    """Everything `k2 up` runs. `start()` brings it up (raising UpError with advice when it cannot), `run(stop)`
    supervises until `stop` is set or a part fails, `close()` stops everything that was started."""

    def __init__(self, settings: Settings, options: UpOptions, console: Console) -> None:
        self.settings = settings
        self.options = options
        self.console = console
        self.started = time.monotonic()
        self.endpoints: Endpoints | None = None
        self.key: str | None = None
        self.api_url = f"http://{options.host}:{options.port}"
        self.binance_mode = BinanceMode.OFF
        self.binance_note = ""
        self.binance_ws: str | None = None
        self._rest = options.rest_endpoint
        self.symbols: list[str] = []
        self.landed: dict[str, float] = {}  # exchange -> seconds from start until its first rows were committed
        self.sink: IcebergSink | None = None
        self.workers: list[Worker] = []
        self._exit = ExitStack()
        self._stop_sources = threading.Event()
        self._stop_sink = threading.Event()
        self._stop_maintenance = threading.Event()
        self._binance_loop: asyncio.AbstractEventLoop | None = None
        self._binance_live: Any = None
        self._asx_result: dict[str, Any] = {}

    # --- start -----------------------------------------------------------------------------------------------
    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        settings, options = self.settings, self.options
        other = running_stack(settings)
        if other is not None:
            raise UpError(
                f"another K2 stack already runs on K2_HOME={settings.home_dir} (Kafka {other.bootstrap}): stop it "
                "(Ctrl-C in its terminal) or point K2_HOME elsewhere"
            )
        if options.asx is not None:
            if not options.asx.is_dir():
                raise UpError(f"ASX sample not found at {options.asx}: pass --asx DIR, set K2_ASX_SAMPLE, or --no-asx")
            try:
                AsxSource(options.asx).check()
            except UserError as exc:
                raise UpError(f"{exc}; or --no-asx") from None
        api_socket = _bind(options.host, options.port)  # first: a taken port fails before anything starts
        self._exit.callback(api_socket.close)

        stack = Stack(settings)
        # Started by this (main) thread: the broker's parent-death signal follows the thread that forked it.
        self.endpoints = endpoints = self._exit.enter_context(stack)
        registry = RegistryClient.for_settings(settings, endpoints.registry_url)
        catalog = open_catalog(settings)
        ensure_tables(catalog)  # /ready and the dashboard see every table from the first second

        self.key = create_key(settings, DASHBOARD_KEY_NAME, rate_limit_per_minute=DASHBOARD_RATE_LIMIT)
        self._exit.callback(self._revoke_key)

        self.binance_mode, self.binance_note = choose_binance(options)
        binance_topics = self._binance_topics() if self.binance_mode is not BinanceMode.OFF else []
        if binance_topics:
            admin = AdminClient(base_config(settings, endpoints.bootstrap))
            ensure_topics(admin, settings, [name for t in binance_topics for name in (t, f"dlq.{t}")])
            del admin

        # One worker assigned every partition directly (no ~3 s group join); its commits still go to the group,
        # which is what the lag figures compare with.
        self.sink = sink = IcebergSink(settings, endpoints.bootstrap, registry, catalog, topics=binance_topics)
        self._start_worker(Worker("sink", lambda: sink.run(stop=self._stop_sink), self._stop_sink.set))

        self._start_api(api_socket)

        if self.binance_mode is BinanceMode.EMULATOR:
            self._start_emulator()
        if self.binance_mode is not BinanceMode.OFF:
            self._start_binance(registry)
        if options.asx is not None:
            self._start_worker(Worker("asx", lambda: self._load_asx(options.asx), self._stop_sources.set))
        if options.maintain_every > 0:
            self._start_worker(Worker("maintenance", self._maintain_periodically, self._stop_maintenance.set))

    def _maintain_periodically(self) -> None:
        """`k2 maintain` every `maintain_every` seconds while the sink commits (it is safe alongside): a long-running
        stream writes a small file per commit, which would slow every query by the hour."""
        while not self._stop_maintenance.wait(self.options.maintain_every):
            report = maintain(self.settings)
            files = {t.table: (t.data_files_before, t.data_files_after) for t in report.tables}
            log.info("up.maintained", seconds=round(report.seconds, 1), data_files=files)
            compacted = sum(len(t.partitions_compacted) for t in report.tables)
            self.console.print(f"maintenance: {compacted} partitions compacted in {report.seconds:.1f} s")

    def _start_worker(self, worker: Worker) -> None:
        self.workers.append(worker.start())
        self._exit.callback(worker.stop)

    def _binance_topics(self) -> list[str]:
        from k2.ingest.streaming import BINANCE_TOPICS

        return [str(t) for t in BINANCE_TOPICS]

    def _revoke_key(self) -> None:
        if self.key is not None:
            revoke_key(self.settings, self.key)

    def _start_api(self, sock: socket.socket) -> None:
        app = create_app(self.settings)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
        server = uvicorn.Server(config)

        def stop() -> None:
            server.should_exit = True

        worker = Worker("api", lambda: server.run(sockets=[sock]), stop)
        self._start_worker(worker)
        deadline = time.monotonic() + 30
        while not server.started:
            if not worker.alive or time.monotonic() > deadline:
                raise UpError(f"the API did not start on {self.api_url}: {worker.error!r}; see the log above")
            time.sleep(0.02)

    def _start_emulator(self) -> None:
        from k2.sources.binance.emulator.server import BinanceEmulator

        missing = [str(p) for p in self.options.captures if not p.exists()]
        if missing:
            raise UpError(f"Binance captures not found: {', '.join(missing)}; pass --binance off or --capture FILE")
        emulator = BinanceEmulator(list(self.options.captures), speed=self.options.replay_speed)
        where = self._exit.enter_context(emulator.run_in_thread())
        self.binance_ws, self._rest = where.ws_url, where.rest_url
        if self.options.symbols is None:
            assert emulator.hub is not None
            self.symbols = sorted(emulator.hub.symbols)

    def _start_binance(self, registry: RegistryClient) -> None:
        from k2.ingest.streaming import resume_points
        from k2.sources.binance.live import BinanceLive

        assert self.endpoints is not None
        options = self.options
        if self.binance_mode is BinanceMode.LIVE:
            self.binance_ws, self._rest = options.ws_endpoint, options.rest_endpoint
            self.symbols = list(options.symbols or LIVE_SYMBOLS)
        elif options.symbols is not None:
            self.symbols = list(options.symbols)
        producer = RecordProducer(producer_config(self.settings, self.endpoints.bootstrap), registry)
        # Like `k2 stream`: every batch passes a governor, which may slow the stream or spill to disk under pressure.
        governor = default_governor(self.settings)
        producer.breaker = governor.controller.breaker
        loop = asyncio.new_event_loop()
        ws_endpoint = self.binance_ws or options.ws_endpoint
        live = BinanceLive(
            self.symbols,
            list(options.channels),
            ws_endpoint,
            self._rest,
            lambda batch: governor.admit(batch, producer.send),
            resume_from=resume_points(self.settings, self.endpoints, self.symbols),
            book_checkpoint_us=self.settings.book_checkpoint_us,
        )
        self._binance_loop, self._binance_live = loop, live
        source = f"Binance {','.join(self.symbols)} {','.join(options.channels)} via {ws_endpoint}"

        def run() -> None:
            try:
                with governor.running(source):
                    loop.run_until_complete(live.run())
                    governor.drain(producer.send)  # what was spilled goes before the stream reports done
            finally:
                producer.close()  # flushes: what was received is in Kafka before the sink's last commit
                loop.close()

        def stop() -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(live.stop)

        self._start_worker(Worker("binance", run, stop))

    def _load_asx(self, directory: Path) -> None:
        assert self.endpoints is not None and self.sink is not None
        started = time.monotonic()
        recon, produced = produce(
            _Stoppable(AsxSource(directory), self._stop_sources),
            self.settings,
            self.endpoints,
            Console(quiet=True),
            on_new_topic=lambda topic: self.sink.add_topics([topic]) if self.sink else None,
        )
        rejected = sum(recon.rejected.values())
        self._asx_result.update(read=recon.read, produced=recon.produced, rejected=rejected)
        if self._stop_sources.is_set():
            return
        self.console.print(
            f"ASX: read {recon.read:,} = produced {recon.produced:,} + rejected {rejected:,} "
            f"in {time.monotonic() - started:.0f} s; the sink is committing them"
        )
        targets = produced.end_offsets
        while not self._stop_sources.wait(0.5):
            committed = self.sink.committed
            if all(committed.get(tp, -1) >= end for tp, end in targets.items()):
                self.console.print(f"ASX: all {recon.produced:,} records are in the lake ({self._since()} after start)")
                return

    # --- run ---------------------------------------------------------------------------------------------------
    def _since(self) -> str:
        return f"{time.monotonic() - self.started:.1f} s"

    def print_banner(self) -> None:
        assert self.endpoints is not None
        c = self.console
        c.print(f"[bold]K2 is up[/bold] (K2_HOME={self.settings.home_dir}, {self._since()})")
        c.print(f"  dashboard   {self.api_url}/dashboard#key={self.key}")
        c.print(f"  API docs    {self.api_url}/docs")
        c.print(f"  API key     {self.key}  (X-API-Key; revoked when k2 up stops)")
        c.print(f"  Kafka       {self.endpoints.bootstrap}")
        c.print(f"  registry    {redact(self.endpoints.registry_url)}")
        if self.binance_mode is BinanceMode.OFF:
            c.print("  Binance     off")
        else:
            what = "emulator replaying the recorded captures" if self.binance_mode is BinanceMode.EMULATOR else "live"
            c.print(f"  Binance     {what} at {self.binance_ws} ({self.binance_note}); {','.join(self.symbols)}")
        c.print(f"  ASX         loading {self.options.asx}" if self.options.asx else "  ASX         off")
        c.print("Ctrl-C stops everything.", highlight=False)

    def _note_landed(self) -> None:
        if self.sink is None:
            return
        for (topic, _partition), offset in list(self.sink.committed.items()):
            exchange = topic.rsplit(".", 1)[-1]
            if offset > 0 and exchange not in self.landed and topic.startswith("market."):
                self.landed[exchange] = time.monotonic() - self.started
                self.console.print(f"{exchange}: first rows in the lake {self.landed[exchange]:.1f} s after start")

    def run(self, stop: threading.Event) -> int:
        """Supervise until `stop` is set (0) or a part fails (1)."""
        while not stop.wait(0.5):
            self._note_landed()
            failed = [w for w in self.workers if w.error is not None]
            if failed:
                for worker in failed:
                    self.console.print(f"[red]error:[/red] {worker.name} failed: {worker.error!r}; stopping")
                return 1
            if any(w.name in ("sink", "api") and not w.alive for w in self.workers):
                self.console.print("[red]error:[/red] the sink or the API stopped unexpectedly; stopping")
                return 1
        return 0

    # --- stop --------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop everything started, newest first: sources, then the sink (last commit), API, emulator, stack."""
        self._stop_sources.set()
        self._exit.close()

    def summary(self) -> str:
        live = self._binance_live
        parts = []
        if live is not None:
            stats = live.stats
            parts.append(f"Binance {stats.frames:,} frames, {stats.records:,} records, {len(stats.gaps)} gaps")
        if self._asx_result:
            parts.append(f"ASX {self._asx_result['produced']:,} records produced")
        if self.sink is not None:
            parts.append(
                f"sink wrote {sum(self.sink.stats.written.values()):,} rows in {self.sink.stats.commits} commits"
            )
        return "; ".join(parts)


def up(settings: Settings, options: UpOptions, console: Console, stop: threading.Event) -> int:
    """Run the platform until `stop` is set; returns the exit code (0 after a clean stop)."""
    platform = Platform(settings, options, console)
    try:
        platform.start()
    except UpError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    code = 0
    try:
        platform.print_banner()
        code = platform.run(stop)
    finally:
        console.print("stopping: sources, sink (last commit), API, emulator, broker and registry …")
        platform.close()
        console.print(f"stopped. {platform.summary()}")
    return code
