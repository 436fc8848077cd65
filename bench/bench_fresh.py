"""Freshness (produce → visible) p50/p99 and the peak memory of K2's processes under sustained load.

Processes, all on loopback: this one owns the embedded stack (Tansu broker + K2 registry, k2.bus.stack.Stack) and
generates load; a sink worker (k2.lake.sink.IcebergSink, product settings) and the HTTP API (k2.api.server.serve,
product settings: catalog refresh at most every 1 s) each run in their own process, so their memory is their own.

1. Freshness, under a steady background of ASX trades (`--` 20k msgs/s, which the sink sustains): every probe
   produces one trade of symbol K2PROBE with a new message id and times until it is visible
   - k2: `GET /v1/trades/latest?symbols=K2PROBE&n=1&fresh=true` when the API offers `fresh` (the lake plus the Kafka
     tail beyond it, k2.query.fresh); otherwise the library's `fresh_latest` in this process (said in the note);
   - baseline: the same route without `fresh` (the lake only: visible once the sink commits and the API refreshes).
   Both poll concurrently (one thread each), every 20 ms.
2. Memory: trades produced as fast as the load generator can, up to 200k msgs/s, for a while (30 s; quick 3 s); the
   K2 sink's and the API's resident memory sampled every 0.2 s (peak; VmHWM where the kernel gives it). Then the K2
   sink stops and the baseline, `naive.naive_sink` in its own process from the end of the log, gets the same load.
   Also reported: the rates reached, how far each sink got, and the broker's RSS (memory:// storage keeps the log in
   RAM, so it grows with what was produced; not a K2 process).

Run: `python bench/bench_fresh.py [--quick]`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from bench_sink import TOPIC, framed_messages, sample_trades
from common import Row, main_for, ms, progress, temp_home
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from k2.bus.clients import base_config, ensure_topics, producer_config
from k2.bus.registry_client import RegistryClient
from k2.bus.serde import encode
from k2.bus.stack import Endpoints, Stack
from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from k2.schema.avro import avro_schema, parsed_schema
from k2.schema.fields import TRADES_V2

PROBE = "K2PROBE"
BACKGROUND_RATE = 20_000
NAIVE_GROUP = "bench-naive-sink"
NAIVE_READY = "naive-sink.ready"
LOAD_RATE = 200_000
GIB = 2**30
HERE = Path(__file__).resolve().parent


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def trades_topic(settings: Settings, endpoints: Endpoints) -> int:
    """The lake's tables and TOPIC (with its DLQ) made; the trades schema registered under TOPIC: its id."""
    ensure_tables(open_catalog(settings))
    ensure_topics(AdminClient(base_config(settings, endpoints.bootstrap)), settings, [str(TOPIC), TOPIC.dlq])
    return RegistryClient(endpoints.registry_url).register(TOPIC.subject, avro_schema(TRADES_V2))


def stack_env(home: Path, endpoints: Endpoints) -> dict[str, str]:
    """The environment of a process on this stack: K2_HOME and the endpoints."""
    return {
        **os.environ,
        "K2_HOME": str(home),
        "K2_KAFKA_BOOTSTRAP": endpoints.bootstrap,
        "K2_SCHEMA_REGISTRY_URL": endpoints.registry_url,
    }


def start_api(env: dict[str, str], port: int, **settings: str) -> subprocess.Popen[bytes]:
    """`k2.api.server.serve` on `port` in a process of its own, with extra K2_* `settings`. It finds Kafka the way a
    user's API does: the stack recorded under K2_HOME, not the endpoint variables."""
    code = (
        "from k2.api.server import serve; from k2.config import Settings; "
        f"serve(Settings(), port={port}, log_level='warning')"
    )
    api_env = {k: v for k, v in env.items() if k not in ("K2_KAFKA_BOOTSTRAP", "K2_SCHEMA_REGISTRY_URL")}
    return subprocess.Popen([sys.executable, "-c", code], env=api_env | settings)


def sink_worker() -> None:
    """`--sink-worker`: one IcebergSink on TOPIC (direct assignment) until SIGTERM; settings from K2_* variables."""
    from k2.lake.sink import IcebergSink
    from k2.logs import configure_logging

    configure_logging()
    settings = Settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    assert settings.kafka_bootstrap and settings.schema_registry_url
    sink = IcebergSink(
        settings,
        settings.kafka_bootstrap,
        RegistryClient(settings.schema_registry_url),
        open_catalog(settings),
        topics=[str(TOPIC)],
    )
    stats = sink.run(stop=stop)
    print(f"sink worker: consumed {stats.consumed:,}, commits {stats.commits}", file=sys.stderr)


def naive_sink_worker() -> None:
    """`--naive-sink-worker`: naive.naive_sink on TOPIC from the current end of the log until SIGTERM."""
    from confluent_kafka import Consumer, TopicPartition
    from naive import naive_sink

    from k2.logs import configure_logging

    configure_logging()
    settings = Settings()
    assert settings.kafka_bootstrap and settings.schema_registry_url
    endpoints = Endpoints(settings.kafka_bootstrap, settings.schema_registry_url, embedded=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    probe = Consumer({**base_config(settings, endpoints.bootstrap), "group.id": NAIVE_GROUP})
    partitions = probe.list_topics(str(TOPIC), timeout=10).topics[str(TOPIC)].partitions
    starts = {}
    for p in partitions:
        _low, high = probe.get_watermark_offsets(TopicPartition(str(TOPIC), p), timeout=10)
        starts[(str(TOPIC), p)] = max(high, 0)
    probe.close()
    naive_settings = Settings(home=settings.home_dir / "naive")  # its own catalog and warehouse
    # the offsets it starts from: the baseline's "committed so far" (its group had committed nothing before)
    (settings.home_dir / NAIVE_READY).write_text(str(sum(starts.values())))
    written = naive_sink(
        naive_settings, endpoints, dict(starts), open_catalog(naive_settings), NAIVE_GROUP, starts=starts, stop=stop
    )
    print(f"naive sink worker: wrote {written:,}", file=sys.stderr)


class Memory:
    """Peak RSS per watched process, sampled every 0.2 s in a thread."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int) -> None:
        import psutil

        self.procs = {**self.procs, name: psutil.Process(pid)}
        self.peak[name] = 0

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def sample(self) -> None:
        for name, proc in self.procs.items():
            try:
                self.peak[name] = max(self.peak[name], proc.memory_info().rss, _hwm(proc.pid))
            except Exception:  # the process ended: its last peak stands
                continue

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        self.sample()
        return self.peak


def _hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Load:
    """Produces framed ASX trades (new message ids each cycle) at up to `rate` msgs/s in a thread."""

    def __init__(self, settings: Settings, endpoints: Endpoints, base: list[tuple[bytes, bytes]]) -> None:
        self.producer = Producer(producer_config(settings, endpoints.bootstrap))
        self.base = base
        self.rate = 0
        self.sent = 0
        self._cycle = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, rate: int) -> None:
        self.rate = rate
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.producer.flush(120)

    def _run(self) -> None:
        started = time.perf_counter()
        sent_at_start = self.sent
        i = 0
        topic = str(TOPIC)
        while not self._stop.is_set():
            due = sent_at_start + int((time.perf_counter() - started) * self.rate)
            if self.sent >= due:
                time.sleep(0.002)
                continue
            for _ in range(min(due - self.sent, 5_000)):
                key, value = self.base[i]
                i += 1
                if i == len(self.base):
                    i = 0
                    self._cycle += 1
                # message_id is the first field (bytes 6..42 of the framed value): a new 8-hex prefix per cycle
                value = value[:6] + f"{self._cycle:08x}".encode() + value[14:]
                try:
                    self.producer.produce(topic, value, key)
                except BufferError:
                    self.producer.poll(0.05)
                    continue
                self.sent += 1
            self.producer.poll(0)


def _visible_api(client: httpx.Client, route: str, params: dict[str, Any], marker: str, deadline: float) -> float:
    while time.perf_counter() < deadline:
        response = client.get(route, params=params)
        if response.status_code == 200 and marker in response.text:
            return time.perf_counter()
        time.sleep(0.02)
    return float("inf")


def rows(quick: bool) -> list[Row]:
    from k2.api.keys import create_key

    # base: distinct trades the load generator cycles through (new message ids each cycle)
    probes, load_seconds, settle, base_size = (2, 3.0, 0.5, 50_000) if quick else (20, 30.0, 2.0, None)
    with temp_home("fresh") as home:
        settings = Settings(home=home)
        with Stack(settings) as endpoints:
            schema_id = trades_topic(settings, endpoints)
            admin = AdminClient(base_config(settings, endpoints.bootstrap))
            key = create_key(settings, "bench-fresh", rate_limit_per_minute=10_000_000)
            env = stack_env(home, endpoints)
            port = _port()
            api = start_api(env, port)
            sink = subprocess.Popen([sys.executable, str(HERE / "bench_fresh.py"), "--sink-worker"], env=env)
            broker_pid = stack_broker_pid(endpoints)
            watched = {"sink": sink.pid, "api": api.pid}
            if broker_pid:
                watched["broker"] = broker_pid
            memory = Memory(watched)
            naive: subprocess.Popen[bytes] | None = None
            load: Load | None = None
            try:
                # parse and encode the load while the two processes start
                records = sample_trades(base_size)
                load = Load(settings, endpoints, framed_messages(records, len(records), schema_id))
                client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}, timeout=60)
                _wait_http(client, api)
                rest = {name: memory.peak[name] for name in watched}
                fresh_route = _fresh_supported(client)
                load.start(BACKGROUND_RATE)
                time.sleep(settle)
                fresh_times, lake_times = probe_freshness(
                    client, settings, endpoints, schema_id, probes, fresh_route, records[0]
                )
                load.stop()
                progress(f"fresh: k2 sink under load at up to {LOAD_RATE:,} msgs/s for {load_seconds:.0f} s")
                produced_rate, sink_rate = load_phase(
                    load, admin, settings, endpoints, settings.sink_group, load_seconds
                )
                _stop(sink)
                progress(f"fresh: naive sink under load at up to {LOAD_RATE:,} msgs/s for {load_seconds:.0f} s")
                naive = subprocess.Popen([sys.executable, str(HERE / "bench_fresh.py"), "--naive-sink-worker"], env=env)
                memory.watch("naive", naive.pid)
                start = _wait_ready(home / NAIVE_READY, naive)
                naive_produced, naive_rate = load_phase(
                    load, admin, settings, endpoints, NAIVE_GROUP, load_seconds, floor=start
                )
                _stop(naive)
            finally:
                for proc in (sink, api, naive):
                    if proc is not None:
                        _stop(proc)
                peak = memory.stop()
                # clients still connected keep the embedded broker from stopping at once
                del load, admin
    rates = {"produced": produced_rate, "sink": sink_rate, "naive produced": naive_produced, "naive": naive_rate}
    return _rows(fresh_times, lake_times, fresh_route, peak, rest, rates, load_seconds)


def load_phase(
    load: Load,
    admin: AdminClient,
    settings: Settings,
    endpoints: Endpoints,
    group: str,
    seconds: float,
    floor: int = 0,
) -> tuple[float, float]:
    """Load at up to LOAD_RATE for `seconds`: (msgs/s produced, msgs/s the group committed meanwhile). `floor`: the
    offset sum a group that has not committed yet starts from."""
    sent_before = load.sent
    committed_before = max(_committed(admin, settings, endpoints, group), floor)
    started = time.perf_counter()
    load.start(LOAD_RATE)
    time.sleep(seconds)
    produced = (load.sent - sent_before) / (time.perf_counter() - started)
    done = max(_committed(admin, settings, endpoints, group), committed_before) - committed_before
    committed = done / (time.perf_counter() - started)
    load.stop()
    progress(f"fresh: produced {produced / 1e3:.0f}k/s, {group} committed {committed / 1e3:.0f}k/s")
    return produced, committed


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_ready(path: Path, proc: subprocess.Popen[bytes]) -> int:
    """Until the naive worker says it is about to consume (its ready file), at most 60 s; the offset sum it starts
    from (written last, so a partly written file is retried)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            time.sleep(0.05)
    raise RuntimeError("the naive sink worker did not get ready within 60 s")


def stack_broker_pid(endpoints: Endpoints) -> int | None:
    """The Tansu process listening on the bootstrap port (for its RSS), if psutil can see it."""
    import psutil

    port = int(endpoints.bootstrap.rpartition(":")[2])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return int(conn.pid)
    return None


def _wait_http(client: httpx.Client, api: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise RuntimeError("the API process exited at startup")
        try:
            client.get("/openapi.json")
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the API did not answer within 60 s")


def _fresh_supported(client: httpx.Client) -> str | None:
    """The route that takes `fresh` for the newest trades, if the running API has one."""
    paths = client.get("/openapi.json").json().get("paths", {})
    for route in ("/v1/trades/latest", "/v1/trades"):
        params = paths.get(route, {}).get("get", {}).get("parameters", [])
        if any(p.get("name") == "fresh" for p in params):
            return route
    return None


def probe_freshness(
    client: httpx.Client,
    settings: Settings,
    endpoints: Endpoints,
    schema_id: int,
    probes: int,
    fresh_route: str | None,
    example: dict[str, Any],
) -> tuple[list[float], list[float]]:
    """Seconds from produce() to visible, per probe: (k2 fresh, API lake-only)."""
    template = dict(example)
    template["symbol"] = PROBE
    schema = parsed_schema(TRADES_V2)
    producer = Producer(producer_config(settings, endpoints.bootstrap))
    lake_params = {"symbols": PROBE, "n": 1}
    fresh_times: list[float] = []
    lake_times: list[float] = []
    library = None if fresh_route else _library_fresh(settings, endpoints)
    try:
        for number in range(probes):
            marker = str(uuid.uuid4())
            record = {**template, "message_id": marker, "timestamp": int(time.time() * 1e6)}
            value = encode(record, schema, schema_id)
            results: dict[str, float] = {}
            started = time.perf_counter()
            deadline = started + 60
            producer.produce(str(TOPIC), value, PROBE.encode())
            producer.poll(0)

            def lake(marker: str = marker, deadline: float = deadline, results: dict[str, float] = results) -> None:
                with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=60) as own:
                    results["lake"] = _visible_api(own, "/v1/trades/latest", lake_params, marker, deadline)

            thread = threading.Thread(target=lake)
            thread.start()
            if fresh_route == "/v1/trades/latest":
                params = {**lake_params, "fresh": "true"}
                results["fresh"] = _visible_api(client, fresh_route, params, marker, deadline)
            elif fresh_route == "/v1/trades":
                params = {"symbols": PROBE, "fresh": "true", "limit": 10_000}
                results["fresh"] = _visible_api(client, fresh_route, params, marker, deadline)
            else:
                assert library is not None
                results["fresh"] = library(marker, deadline)
            thread.join()
            producer.flush(10)
            fresh_times.append(results["fresh"] - started)
            lake_times.append(results["lake"] - started)
            progress(f"fresh: probe {number + 1}: k2 fresh {ms(fresh_times[-1])}, API lake {ms(lake_times[-1])}")
            time.sleep(0.3)
    finally:
        producer.flush(10)
    return fresh_times, lake_times


def _library_fresh(settings: Settings, endpoints: Endpoints) -> Any:
    from k2.query.engine import QueryEngine
    from k2.query.fresh import FreshReader, FreshSource, fresh_latest

    engine = QueryEngine(open_catalog(settings))
    reader = FreshReader(FreshSource.from_endpoints(endpoints, settings))

    def visible(marker: str, deadline: float) -> float:
        engine.refresh()
        while time.perf_counter() < deadline:
            rows = fresh_latest(engine, reader, "trades", PROBE, 1)
            if marker in rows.column("message_id").to_pylist():
                return time.perf_counter()
            time.sleep(0.02)
        return float("inf")

    return visible


def _committed(admin: AdminClient, settings: Settings, endpoints: Endpoints, group: str) -> int:
    """Messages of TOPIC the group has committed (both sinks commit Kafka only after Iceberg)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**base_config(settings, endpoints.bootstrap), "group.id": group})
    try:
        partitions = admin.list_topics(str(TOPIC), timeout=10).topics[str(TOPIC)].partitions
        committed = consumer.committed([TopicPartition(str(TOPIC), p) for p in partitions], timeout=10)
        return sum(max(tp.offset, 0) for tp in committed)
    finally:
        consumer.close()


def _rows(
    fresh_times: list[float],
    lake_times: list[float],
    fresh_route: str | None,
    peak: dict[str, int],
    rest: dict[str, int],
    rates: dict[str, float],
    load_seconds: float,
) -> list[Row]:
    import numpy as np

    def pcts(values: list[float]) -> tuple[float, float]:
        return float(np.percentile(values, 50)), float(np.percentile(values, 99))

    f50, f99 = pcts(fresh_times)
    l50, l99 = pcts(lake_times)
    how = f"API {fresh_route}?fresh=true" if fresh_route else "k2.query.fresh.fresh_latest (the API has no fresh read)"
    k2_total = peak["sink"] + peak["api"]
    broker = f"; broker (Tansu, memory://) {peak['broker'] / GIB:.2f} GiB" if "broker" in peak else ""
    sustained = rates["produced"] >= LOAD_RATE * 0.95 and rates["sink"] >= LOAD_RATE * 0.95
    naive_peak = peak.get("naive", 0)
    return [
        Row(
            "6 freshness produce→visible",
            f"p50 {ms(f50)} / p99 {ms(f99)}",
            "API lake-only read",
            f"p50 {ms(l50)} / p99 {ms(l99)}",
            l50 / f50,
            "report p50/p99",
            None,
            f"k2: {how}; {len(fresh_times)} probes under {BACKGROUND_RATE // 1000}k msgs/s background, sink and API"
            f" in their own processes (API refresh every 1 s, the default)",
        ),
        Row(
            "6 peak memory under load (sink)",
            f"{peak['sink'] / GIB:.2f} GiB",
            "naive sink, same load",
            f"{naive_peak / GIB:.2f} GiB" if naive_peak else "-",
            naive_peak / peak["sink"] if naive_peak else None,
            "≤ 1 GiB at 200k msgs/s",
            k2_total <= GIB and sustained,
            f"goal judged on sink + API = {k2_total / GIB:.2f} GiB (API {peak['api'] / GIB:.2f} GiB; both at rest"
            f" {(rest['sink'] + rest['api']) / GIB:.2f} GiB once the API answered) and on sustaining the rate;"
            f" {load_seconds:.0f} s of load:"
            f" produced {rates['produced'] / 1e3:.0f}k/s, k2 sink committed {rates['sink'] / 1e3:.0f}k/s; naive phase"
            f" produced {rates['naive produced'] / 1e3:.0f}k/s, naive committed {rates['naive'] / 1e3:.0f}k/s{broker}",
        ),
    ]


if __name__ == "__main__":
    if "--sink-worker" in sys.argv:
        sink_worker()
    elif "--naive-sink-worker" in sys.argv:
        naive_sink_worker()
    else:
        main_for(rows, __doc__)
