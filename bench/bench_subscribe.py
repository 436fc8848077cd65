"""Live subscriptions: event → subscriber latency under load, the fresh REST read at the same load, and fan-out.

Processes, all on loopback, as in bench_fresh.py: this one owns the embedded stack (Tansu broker + K2 registry) and
generates load; a sink worker (k2.lake.sink.IcebergSink) and the HTTP API (k2.api.server.serve, product settings)
each run in their own process.

1. Latency, under a steady background of ASX trades (20k msgs/s to the trades topic, 3 partitions): probe trades of
   symbol K2PROBE, each with a new message id and its event timestamp = the moment it is handed to the producer
   (K2's producer settings: acks=all, idempotent, linger.ms 10), one every 50 ms; latency = arrival − that moment.
   Received at once by three subscribers of K2PROBE, all without `since` (live from the log end):
   - library: `k2.query.subscribe.subscribe` in a thread of this process;
   - WebSocket: `/v1/subscribe` on the API process, read by a websockets client in a thread of this process
     (per-message compression as `k2.Client` negotiates it);
   - raw: a bare librdkafka consumer (the library's fetch settings) that only looks for the probe's key: where the
     broker's part ends. With the producer's delivery report (broker ack) it splits the time into stages: produce
     (hand-over → ack: linger, produce request, replication acks), broker → fetch (ack → raw consumer), decode +
     filter + dedup (raw → library) and the WebSocket's extra over the library (the server runs its own
     subscription beside this process's, plus NDJSON, compression, its event loop and the client).
   Baselines in the same run, same load, right after: row 6's probes (`GET /v1/trades/latest?fresh=true`, the lake
   plus the Kafka tail; and the same route without `fresh`, the lake only, visible once the sink commits and the API
   refreshes).
2. Fan-out, without the background load (and with the sink stopped): N WebSocket subscribers of one busy symbol
   (asyncio clients in this process, connected 10 at a time, each wave live before the next), then trades of that
   symbol produced at a steady rate; every record must reach every subscriber.
   Reported: records/s delivered (all subscribers), p99 latency, records missing, subscribers closed.

Run: `python bench/bench_subscribe.py [--quick]`.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bench_fresh import (
    BACKGROUND_RATE,
    Load,
    _fresh_supported,
    _port,
    _stop,
    _wait_http,
    probe_freshness,
    stack_env,
    start_api,
    trades_topic,
)
from bench_sink import TOPIC, framed_messages, sample_trades
from common import Row, main_for, ms, progress, temp_home
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from websockets.sync.client import connect as ws_connect

from k2.bus.clients import consumer_config, producer_config
from k2.bus.serde import encode
from k2.bus.stack import Endpoints, Stack
from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.schema.avro import parsed_schema
from k2.schema.fields import TRADES_V2

PROBE = "K2PROBE"
BUSY = "K2BUSY"
HERE = Path(__file__).resolve().parent
PROBE_EVERY = 0.05
_WAVE = 10  # fan-out subscribers connected at once
GOAL_P50, GOAL_P99, GOAL_FRESH_P99 = 0.050, 0.250, 1.0
MESSAGE_ID = slice(6, 42)  # the framed value's first field (after the 5-byte header and its 1-byte length)


@dataclass
class Arrivals:
    """perf_counter times per message_id, one dict per path; `ready` once the path is live."""

    times: dict[str, float] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)


def _probe_producer(settings: Settings, endpoints: Endpoints, schema_id: int, example: dict[str, Any]) -> Any:
    """(producer, make(symbol) -> (message_id, framed value)) for probe trades stamped with the current time."""
    template = dict(example)
    schema = parsed_schema(TRADES_V2)

    def make(symbol: str) -> tuple[str, bytes]:
        marker = str(uuid.uuid4())
        record = {**template, "symbol": symbol, "message_id": marker, "timestamp": int(time.time() * 1e6)}
        return marker, encode(record, schema, schema_id)

    return Producer(producer_config(settings, endpoints.bootstrap)), make


def _raw(settings: Settings, endpoints: Endpoints, stop: threading.Event, out: Arrivals) -> None:
    consumer = Consumer({**consumer_config(settings, endpoints.bootstrap, "bench-raw"), "fetch.wait.max.ms": 10})
    partitions = consumer.list_topics(str(TOPIC), timeout=10).topics[str(TOPIC)].partitions
    consumer.assign([TopicPartition(str(TOPIC), p, OFFSET_END) for p in partitions])
    key = PROBE.encode()
    try:
        while not stop.is_set():
            first = consumer.poll(0.1)  # as the library does: the first record, then what is already there
            messages = [first, *consumer.consume(10_000, 0)] if first is not None else []
            now = time.perf_counter()
            out.ready.set()
            for msg in messages:
                if msg.error() is None and msg.key() == key:
                    out.times[msg.value()[MESSAGE_ID].decode()] = now
    finally:
        consumer.close()


def _library(settings: Settings, endpoints: Endpoints, stop: threading.Event, out: Arrivals) -> None:
    from k2.query.engine import QueryEngine
    from k2.query.fresh import FreshSource
    from k2.query.subscribe import subscribe

    engine = QueryEngine(open_catalog(settings))
    batches = subscribe(engine, FreshSource.from_endpoints(endpoints, settings), "trades", PROBE)
    try:
        for batch in batches:
            now = time.perf_counter()
            if batch.phase == "live":
                out.ready.set()
            for message_id in batch.records.column("message_id").to_pylist():
                out.times[message_id] = now
            if stop.is_set():
                return
    finally:
        batches.close()


def _frame_records(text: str) -> tuple[list[str], str | None]:
    """The message_ids of an NDJSON frame's records and the phase of its trailer (a cheap scan, no JSON parse)."""
    ids: list[str] = []
    phase = None
    for line in text.split("\n"):
        at = line.find('"message_id":"')
        if at >= 0:
            ids.append(line[at + 14 : at + 50])
        elif '"phase":"' in line:
            phase = line.split('"phase":"', 1)[1].split('"', 1)[0]
    return ids, phase


def _websocket(url: str, key: str, stop: threading.Event, out: Arrivals) -> None:
    with ws_connect(url, additional_headers={"X-API-Key": key}, max_size=None) as ws:
        while not stop.is_set():
            try:
                text = ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            now = time.perf_counter()
            ids, phase = _frame_records(str(text))
            if phase == "live":
                out.ready.set()
            for message_id in ids:
                out.times[message_id] = now


@dataclass
class Latency:
    """Per probe: hand-over time, broker ack, and arrival per path."""

    sent: dict[str, float]
    acked: dict[str, float]
    paths: dict[str, dict[str, float]]

    def latencies(self, path: str) -> list[float]:
        arrived = self.paths[path]
        return [arrived[m] - t for m, t in self.sent.items() if m in arrived]

    def missing(self, path: str) -> int:
        return sum(1 for m in self.sent if m not in self.paths[path])

    def stages(self) -> dict[str, float]:
        """Median seconds of each stage, over the probes every path got."""
        raw, lib, web = self.paths["raw"], self.paths["library"], self.paths["websocket"]
        every = [m for m in self.sent if m in self.acked and m in raw and m in lib and m in web]
        if not every:
            return {}
        return {
            "produce → broker ack": float(np.median([self.acked[m] - self.sent[m] for m in every])),
            "ack → fetched": float(np.median([raw[m] - self.acked[m] for m in every])),
            "decode + filter + dedup": float(np.median([lib[m] - raw[m] for m in every])),
            # the server runs its own subscription: two pipelines side by side, so this can come out below 0
            "WebSocket − library": float(np.median([web[m] - lib[m] for m in every])),
        }


def latency_phase(
    settings: Settings, endpoints: Endpoints, schema_id: int, ws_url: str, key: str, probes: int, example: dict
) -> Latency:
    stop = threading.Event()
    paths = {"raw": Arrivals(), "library": Arrivals(), "websocket": Arrivals()}
    threads = [
        threading.Thread(target=_raw, args=(settings, endpoints, stop, paths["raw"]), daemon=True),
        threading.Thread(target=_library, args=(settings, endpoints, stop, paths["library"]), daemon=True),
        threading.Thread(target=_websocket, args=(ws_url, key, stop, paths["websocket"]), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        for name, arrivals in paths.items():
            if not arrivals.ready.wait(60):
                raise RuntimeError(f"the {name} subscriber did not go live within 60 s")
        producer, make = _probe_producer(settings, endpoints, schema_id, example)
        sent: dict[str, float] = {}
        acked: dict[str, float] = {}

        def on_delivery(error: Any, msg: Any) -> None:
            if error is None:
                acked[msg.value()[MESSAGE_ID].decode()] = time.perf_counter()

        # warm the producer (producer id, metadata) before the first counted probe
        _id, value = make("K2WARMUP")
        producer.produce(str(TOPIC), value, b"K2WARMUP")
        producer.flush(10)
        started = time.perf_counter()
        for number in range(probes):
            due = started + number * PROBE_EVERY
            while (wait := due - time.perf_counter()) > 0:
                producer.poll(min(wait, 0.002))
            marker, value = make(PROBE)
            sent[marker] = time.perf_counter()
            producer.produce(str(TOPIC), value, PROBE.encode(), on_delivery=on_delivery)
            producer.poll(0)
        producer.flush(10)
        deadline = time.perf_counter() + 10
        while time.perf_counter() < deadline and any(any(m not in a.times for m in sent) for a in paths.values()):
            time.sleep(0.05)
        return Latency(sent, acked, {name: a.times for name, a in paths.items()})
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)


@dataclass
class Fanout:
    subscribers: int
    rate: int
    produced: int
    delivered: int
    seconds: float
    latencies: list[float]
    closed: int


async def _fanout_clients(
    url: str, key: str, n: int, produce: Any, sent: dict[str, float]
) -> tuple[int, list[float], int, float]:
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    errors: list[str] = []
    delivered = 0
    closed = 0
    live = [asyncio.Event() for _ in range(n)]
    done = asyncio.Event()
    last = 0.0

    async def one(i: int) -> None:
        nonlocal delivered, closed, last
        try:
            async with connect(url, additional_headers={"X-API-Key": key}, max_size=None) as ws:
                while not done.is_set():
                    try:
                        text = await asyncio.wait_for(ws.recv(), 0.2)
                    except TimeoutError:
                        continue
                    now = time.perf_counter()
                    ids, phase = _frame_records(str(text))
                    if phase == "live":
                        live[i].set()
                    if str(text).startswith('{"error"'):
                        errors.append(str(text))
                    for message_id in ids:
                        if (t := sent.get(message_id)) is not None:
                            latencies.append(now - t)
                            delivered += 1
                            last = now
        except Exception as exc:
            closed += 1
            progress(f"subscribe: fan-out subscriber {i} ended: {type(exc).__name__}: {exc}")
            live[i].set()

    # connected in waves, each live before the next: the steady state is measured, not a storm of starts
    tasks = []
    for first in range(0, n, _WAVE):
        wave = range(first, min(first + _WAVE, n))
        tasks += [asyncio.create_task(one(i)) for i in wave]
        try:
            await asyncio.wait_for(asyncio.gather(*(live[i].wait() for i in wave)), 60)
        except TimeoutError:
            done.set()
            raise TimeoutError(f"{sum(e.is_set() for e in live)} of {n} subscribers live, a wave waited 60 s") from None
    started = time.perf_counter()
    await asyncio.to_thread(produce)
    # every record to every subscriber, or 15 s after the last was produced
    deadline = time.perf_counter() + 15
    while delivered < n * len(sent) and time.perf_counter() < deadline and closed < n:
        await asyncio.sleep(0.05)
    done.set()
    await asyncio.gather(*tasks)
    if errors:
        progress(f"subscribe: {len(errors)} subscribers ended with an error, the first: {errors[0][:300]}")
    return delivered, latencies, closed, max(last - started, 1e-9)


def fanout_phase(
    settings: Settings,
    endpoints: Endpoints,
    schema_id: int,
    ws_url: str,
    key: str,
    n: int,
    rate: int,
    seconds: float,
    example: dict,
) -> Fanout:
    producer, make = _probe_producer(settings, endpoints, schema_id, example)
    sent: dict[str, float] = {}
    total = int(rate * seconds)

    def produce() -> None:
        started = time.perf_counter()
        for number in range(total):
            due = started + number / rate
            while (wait := due - time.perf_counter()) > 0:
                producer.poll(min(wait, 0.002))
            marker, value = make(BUSY)
            sent[marker] = time.perf_counter()
            producer.produce(str(TOPIC), value, BUSY.encode())
            producer.poll(0)
        producer.flush(10)

    delivered, latencies, closed, spent = asyncio.run(_fanout_clients(ws_url, key, n, produce, sent))
    return Fanout(n, rate, len(sent), delivered, spent, latencies, closed)


def rows(quick: bool) -> list[Row]:
    from k2.api.keys import create_key

    probes, fresh_probes, settle = (40, 2, 1.0) if quick else (400, 20, 3.0)
    # (subscribers, the busy symbol's trades/s, seconds): one busy symbol, 1 to 200 subscribers of it
    fanouts = [(1, 100, 3.0), (10, 100, 3.0)] if quick else [(1, 100, 8.0), (50, 100, 8.0), (200, 100, 8.0)]
    with temp_home("subscribe") as home:
        settings = Settings(home=home)
        with Stack(settings) as endpoints:
            schema_id = trades_topic(settings, endpoints)
            key = create_key(settings, "bench-subscribe", rate_limit_per_minute=10_000_000)
            env = stack_env(home, endpoints)
            port = _port()
            api = start_api(env, port, K2_API_SUBSCRIPTIONS_PER_KEY=str(max(n for n, _r, _s in fanouts) + 10))
            sink = subprocess.Popen([sys.executable, str(HERE / "bench_fresh.py"), "--sink-worker"], env=env)
            load: Load | None = None
            try:
                records = sample_trades(50_000)
                load = Load(settings, endpoints, framed_messages(records, len(records), schema_id))
                client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"X-API-Key": key}, timeout=60)
                _wait_http(client, api)
                fresh_route = _fresh_supported(client)
                ws_url = f"ws://127.0.0.1:{port}/v1/subscribe?kind=trades"
                load.start(BACKGROUND_RATE)
                time.sleep(settle)
                progress(f"subscribe: {probes} probes, 1 every {PROBE_EVERY * 1000:.0f} ms, under 20k msgs/s")
                latency = latency_phase(
                    settings, endpoints, schema_id, f"{ws_url}&symbols={PROBE}", key, probes, records[0]
                )
                progress(f"subscribe: {fresh_probes} fresh/lake REST probes at the same load")
                fresh_times, lake_times = probe_freshness(
                    client, settings, endpoints, schema_id, fresh_probes, fresh_route, records[0]
                )
                load.stop()
                _stop(sink)  # its catching up on the backlog would be background load too
                fans: list[Fanout | str] = []
                for n, rate, seconds in fanouts:
                    progress(f"subscribe: fan-out to {n} WebSocket subscribers of {BUSY}, {rate}/s for {seconds} s")
                    url = f"{ws_url}&symbols={BUSY}"
                    try:
                        fans.append(
                            fanout_phase(settings, endpoints, schema_id, url, key, n, rate, seconds, records[0])
                        )
                    except Exception as exc:  # one size the machine cannot hold must not hide the other rows
                        fans.append(f"{n} subscribers: {type(exc).__name__}: {exc}")
            finally:
                for proc in (sink, api):
                    _stop(proc)
                del load
    return _rows(latency, fresh_times, lake_times, fresh_route, fans)


def _pcts(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("inf"), float("inf")
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def _rows(
    latency: Latency,
    fresh_times: list[float],
    lake_times: list[float],
    fresh_route: str | None,
    fans: list[Fanout],
) -> list[Row]:
    f50, f99 = _pcts(fresh_times)
    l50, l99 = _pcts(lake_times)
    stages = latency.stages()
    split = ", ".join(f"{name} {ms(value)}" for name, value in stages.items()) or "not measured"
    fresh_name = f"fresh REST read ({fresh_route}?fresh=true, row 6)" if fresh_route else "fresh library read"
    out: list[Row] = []
    for path, label in (("library", "in-process library"), ("websocket", "/v1/subscribe WebSocket")):
        p50, p99 = _pcts(latency.latencies(path))
        out.append(
            Row(
                f"9 subscribe event→subscriber ({label})",
                f"p50 {ms(p50)} / p99 {ms(p99)}",
                fresh_name,
                f"p50 {ms(f50)} / p99 {ms(f99)}",
                f50 / p50,
                "p50 ≤ 50 ms, p99 ≤ 250 ms",
                p50 <= GOAL_P50 and p99 <= GOAL_P99 and latency.missing(path) == 0,
                f"{len(latency.sent)} probes (1 per {PROBE_EVERY * 1000:.0f} ms) under {BACKGROUND_RATE // 1000}k"
                f" msgs/s background, missing {latency.missing(path)}; ratio on p50 vs the fresh read, lake-only read"
                f" p50 {ms(l50)} ({l50 / p50:.0f}x)" + (f"; median stages: {split}" if path == "websocket" else ""),
            )
        )
    out.append(
        Row(
            "9 fresh REST read at the same load",
            f"p50 {ms(f50)} / p99 {ms(f99)}",
            "API lake-only read",
            f"p50 {ms(l50)} / p99 {ms(l99)}",
            l99 / f99,
            "p99 ≤ 1 s",
            f99 <= GOAL_FRESH_P99,
            f"{len(fresh_times)} probes (row 6's), right after the subscription probes; ratio on p99",
        )
    )
    single = _pcts(latency.latencies("websocket"))[1]
    for fan in fans:
        if isinstance(fan, str):
            out.append(Row("9 fan-out: FAILED", "error", "-", "-", None, "-", None, fan))
            continue
        _p50, p99 = _pcts(fan.latencies)
        expected = fan.subscribers * fan.produced
        out.append(
            Row(
                f"9 fan-out: {fan.subscribers} subscribers of 1 symbol",
                f"{fan.delivered / fan.seconds:,.0f} of {fan.subscribers * fan.rate:,} records/s, p99 {ms(p99)}",
                "1 WebSocket subscriber (above)",
                f"p99 {ms(single)}",
                single / p99,
                "every record to each, p99 ≤ 250 ms",
                fan.delivered == expected and fan.closed == 0 and p99 <= GOAL_P99,
                f"{fan.produced:,} trades of {BUSY} at {fan.rate}/s, no background load;"
                f" delivered {fan.delivered:,} of {expected:,}, subscribers closed {fan.closed}; p50 {ms(_p50)}",
            )
        )
    return out


if __name__ == "__main__":
    main_for(rows, __doc__)
