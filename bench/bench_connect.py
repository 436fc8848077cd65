"""K2's sink against Apache Iceberg's own Kafka Connect sink, side by side on one Apache Kafka and one catalog.

Setup (not timed): a single-node Apache Kafka 4.4.0 from K2's launcher (k2.bus.apache_kafka) and K2's registry, a
Kafka Connect 4.3.2 distributed worker with Iceberg's sink plugin (bench/connect_worker.py: why 4.3.2 and how the
plugin is assembled, since its runtime is not on Maven Central), and per phase one SQLite file that is both K2's
pyiceberg SQL catalog and Iceberg's Java JdbcCatalog (sqlite-jdbc), with a local warehouse. The data is N trades
made from the real ASX sample (bench_sink.sample_trades, repeated with new message ids), encoded twice with the same
content: Confluent-framed Avro for K2's topic `market.equities.trades.asx`, JSON (decimals as strings, timestamps as
ISO-8601 with microseconds: the connector reads a JSON number as milliseconds) for the connector's topic. Each topic
has 3 partitions, each sink writes its own table: `market_data.trades_v2` (K2, created by the sink) and
`market_data.trades_v2_connect` (created here with K2's schema, partition spec and Parquet/zstd properties, which the
connector appends to). Both commit every COMMIT_SECONDS: K2_SINK_COMMIT_SECONDS and
`iceberg.control.commit.interval-ms` (K2 also commits at 100k rows, its default). K2's sink is a `k2 sink` process;
the connector runs one task (tasks.max=1), i.e. one consumer each.

Figures (each side in its own phase, interleaved connect/k2, except freshness where both run at once):
- throughput: from the first produce of N trades (produced as fast as the producer goes, sink already assigned) to
  the table's committed row count reaching N, as seen by a watcher that loads both tables every 0.1 s;
- freshness: both sinks running, every trade produced to both topics at the same instant, at FRESH_SHARE of the slower
  sink's measured throughput (at most FRESH_MAX/s: freshness, not a backlog, is what this row is about); a trade is
  visible when the watcher first sees the snapshot that added its data file (its ids read from that file): p50/p99
  of visible − produced;
- peak memory: RSS of the `k2 sink` process and of the Connect worker JVM (default heap of Kafka's connect scripts:
  -Xmx2G), sampled every 0.2 s during the throughput phases;
- kill -9 mid-run: N trades, the sink process (the worker JVM) killed once a third of them is committed, started
  again, and once the group's offsets reach the end and the table stops changing, the exact sets of ids compared
  with what was produced: lost and duplicated counts;
- content: the tables of the last throughput run compared record for record (count, distinct ids, a checksum over
  ids/prices/quantities/times, and DuckDB's EXCEPT ALL over every column in both directions).
Run: `python bench/bench_connect.py [--quick]` (quick: 100k trades, one run each; needs a JDK 17 and Maven).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from bench_sink import TOPIC, framed_messages, sample_trades
from common import Row, main_for, median, progress, rate, temp_home
from confluent_kafka import ConsumerGroupState, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from connect_worker import CONNECT_VERSION, CONNECTOR_CLASS, ICEBERG_VERSION, ConnectWorker
from pyiceberg.catalog import Catalog
from pyiceberg.manifest import ManifestEntryStatus
from pyiceberg.table import Table

from k2.bus.apache_kafka import KAFKA_VERSION
from k2.bus.broker import _die_with_parent
from k2.bus.clients import base_config, ensure_topics, producer_config
from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Endpoints, Stack
from k2.config import Settings
from k2.lake.catalog import NAMESPACE, open_catalog
from k2.lake.tables import TABLE_PROPERTIES, table_identifier
from k2.schema.avro import avro_schema
from k2.schema.fields import TRADES_V2
from k2.schema.iceberg import iceberg_schema, partition_spec

COMMIT_SECONDS = 5  # K2's default K2_SINK_COMMIT_SECONDS; the connector's default interval is 300 s
PARTITIONS = 3
K2_TABLE = table_identifier(TRADES_V2)
CONNECT_TABLE = f"{NAMESPACE}.trades_v2_connect"
FRESH_MAX = 10_000  # trades/s offered to each sink in the freshness phase, at most
FRESH_SHARE = 0.3  # of the slower sink's throughput
KILL_AT = 1 / 3  # kill -9 once this share of the trades is committed
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
JSON_ID = slice(15, 51)  # message_id in '{"message_id":"<36 chars>",...' (compact separators)
AVRO_ID = slice(6, 42)  # message_id in the framed Avro value (bench_sink.framed_messages)


# --- the same trades, twice ----------------------------------------------------------------------------------------
@dataclass
class Trades:
    keys: list[bytes]
    avro: list[bytes]
    json: list[bytes]

    @property
    def ids(self) -> list[str]:
        return [v[AVRO_ID].decode() for v in self.avro]


def to_json(record: dict[str, Any]) -> bytes:
    """The trade as the connector reads it from JSON: decimals as exact strings, timestamps as ISO-8601 with their
    microseconds (a JSON number would be read as epoch milliseconds)."""
    out: dict[str, Any] = {}
    for name, value in record.items():
        if name in ("timestamp", "ingestion_timestamp"):
            value = (EPOCH + timedelta(microseconds=value)).isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        out[name] = value
    return json.dumps(out, separators=(",", ":")).encode()


def make_trades(n: int, schema_id: int) -> Trades:
    """n trades, the sample repeated with new ids exactly as bench_sink does it for Avro, and the JSON of each one
    patched the same way (message_id is the first field of both)."""
    records = sample_trades(n)
    framed = framed_messages(records, n, schema_id)
    base = [to_json(r) for r in records]
    out = []
    for i, (_key, value) in enumerate(framed):
        doc = base[i % len(base)]
        out.append(doc[: JSON_ID.start] + value[AVRO_ID] + doc[JSON_ID.stop :])
    if json.loads(out[-1])["message_id"] != framed[-1][1][AVRO_ID].decode():
        raise RuntimeError("JSON id patch did not take: the trades_v2 field order changed")
    return Trades([k for k, _ in framed], [v for _, v in framed], out)


def produce(
    bootstrap: str,
    settings: Settings,
    topic: str,
    keys: list[bytes],
    values: list[bytes],
    delivered_count: list[int] | None = None,
) -> dict[int, int]:
    """Produce all values (as fast as the producer goes); the end offset per partition from delivery reports.
    `delivered_count[0]` counts the acknowledged records as they come (for a caller watching from a thread)."""
    producer = Producer(producer_config(settings, bootstrap))
    ends: dict[int, int] = {}
    acknowledged = [0]  # this call's records only: the topic may hold earlier ones (the kill run's first part)

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)
            acknowledged[0] += 1
            if delivered_count is not None:
                delivered_count[0] += 1

    for key, value in zip(keys, values, strict=True):
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError(f"produce to {topic} did not complete")
    if acknowledged[0] != len(values):
        raise RuntimeError(f"produced {acknowledged[0]} of {len(values)} to {topic}")
    return ends


# --- watching tables --------------------------------------------------------------------------------------------
@dataclass
class Seen:
    at: float  # time.time() when the watcher first saw the snapshot
    total: int  # total-records of the table at that snapshot
    files: list[str]  # data files the snapshot (and any snapshot since the previous one seen) added


@dataclass
class TableWatch:
    """Loads one table every `interval` s in a thread and records each new snapshot when it first appears."""

    catalog: Catalog
    identifier: str
    interval: float = 0.1
    seen: list[Seen] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _last: int | None = None
    error: BaseException | None = None

    @property
    def total(self) -> int:
        return self.seen[-1].total if self.seen else 0

    def start(self) -> TableWatch:
        self._thread = threading.Thread(target=self._run, name=f"watch {self.identifier}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception as exc:  # a table the sink has not created yet, or a catalog busy for a moment
                if not self.catalog.table_exists(self.identifier):
                    continue
                self.error = exc

    def poll(self) -> None:
        table = self.catalog.load_table(self.identifier)
        snapshot = table.current_snapshot()
        if snapshot is None or snapshot.snapshot_id == self._last:
            return
        at = time.time()
        files: list[str] = []
        current: Any = snapshot
        while current is not None and current.snapshot_id != self._last:
            files.extend(added_files(table, current))
            parent = current.parent_snapshot_id
            current = table.snapshot_by_id(parent) if parent is not None else None
        self._last = snapshot.snapshot_id
        self.seen.append(Seen(at, int(snapshot.summary["total-records"]), files))  # type: ignore[index]

    def wait_total(self, n: int, timeout: float, alive: Callable[[], None] = lambda: None) -> float:
        """Block until the table holds ≥ n rows; the time.time() the watcher saw it."""
        deadline = time.monotonic() + timeout
        while self.total < n:
            if self.error is not None:
                raise self.error
            alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.identifier} holds {self.total:,} of {n:,} rows after {timeout:.0f} s")
            time.sleep(0.05)
        return next(s.at for s in self.seen if s.total >= n)

    def wait_quiet(self, quiet: float, timeout: float) -> None:
        """Block until no new snapshot appeared for `quiet` seconds from now on (nothing more is being committed)."""
        since = time.time()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = max(self.seen[-1].at if self.seen else 0.0, since)
            if time.time() - last >= quiet:
                return
            time.sleep(0.1)


def added_files(table: Table, snapshot: Any) -> list[str]:
    paths = []
    for manifest in snapshot.manifests(table.io):
        if manifest.added_snapshot_id != snapshot.snapshot_id:
            continue
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            if entry.status == ManifestEntryStatus.ADDED:
                paths.append(entry.data_file.file_path)
    return paths


def read_ids(location: str) -> list[str]:
    """The ids in one data file; pyiceberg writes `file:///path`, Java's local FileIO `file:/path`."""
    path = "/" + location.removeprefix("file:").lstrip("/") if location.startswith("file:") else location
    return pq.read_table(path, columns=["message_id"]).column(0).to_pylist()


# --- memory ---------------------------------------------------------------------------------------------------
class PeakRss:
    """Peak RSS of one process, sampled every 0.2 s in a thread between start() and stop()."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(0.2)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the two sinks ---------------------------------------------------------------------------------------------
def group_assigned(admin: AdminClient, group: str, topic: str) -> bool:
    """The group is stable and its members hold every partition of `topic`."""
    try:
        description = admin.describe_consumer_groups([group])[group].result()
    except Exception:
        return False
    if description.state != ConsumerGroupState.STABLE:
        return False
    held = {
        tp.partition for member in description.members for tp in member.assignment.topic_partitions if tp.topic == topic
    }
    return len(held) == PARTITIONS


def group_offsets(admin: AdminClient, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import ConsumerGroupTopicPartitions

    request = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(PARTITIONS)])
    result = admin.list_consumer_group_offsets([request])[group].result()
    return {tp.partition: tp.offset for tp in result.topic_partitions}


def wait_for(condition: Callable[[], bool], timeout: float, what: str, alive: Callable[[], None]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout:.0f} s")
        time.sleep(0.1)


class K2Side:
    """`k2 sink` processes (the product's worker) writing market_data.trades_v2 of one phase's catalog."""

    name = "k2"
    table = K2_TABLE
    topic = str(TOPIC)

    def __init__(self, endpoints: Endpoints, phase: Path, group: str) -> None:
        self.endpoints = endpoints
        self.phase = phase
        self.group = group
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            "K2_HOME": str(self.phase / "k2-home"),
            "K2_KAFKA_BOOTSTRAP": self.endpoints.bootstrap,
            "K2_SCHEMA_REGISTRY_URL": self.endpoints.registry_url,
            "K2_CATALOG_URI": f"sqlite:///{self.phase / 'catalog.db'}",
            "K2_WAREHOUSE": f"file://{self.phase / 'warehouse'}",
            "K2_SINK_GROUP": self.group,
            "K2_SINK_COMMIT_SECONDS": str(COMMIT_SECONDS),
        }
        k2 = Path(sys.executable).with_name("k2")
        with open(self.phase / f"k2-sink-{self.group}.log", "ab") as out:
            # Killed with this process like the broker and the worker, so an interrupted run leaves nothing behind.
            self.proc = subprocess.Popen(
                [str(k2), "sink"], env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"k2 sink exited; see {self.phase}/k2-sink-{self.group}.log")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class ConnectSide:
    """One Iceberg sink connector (one task) on the shared worker, writing market_data.trades_v2_connect."""

    name = "connect"
    table = CONNECT_TABLE

    def __init__(self, worker: ConnectWorker, settings: Settings, phase: Path, connector: str) -> None:
        self.worker = worker
        self.settings = settings
        self.phase = phase
        self.connector = connector
        self.topic = f"connect.trades.{connector}"
        self.control = f"control-iceberg.{connector}"
        self.group = f"connect-{connector}"  # Connect's consumer group for a sink connector

    def config(self) -> dict[str, str]:
        return {
            "connector.class": CONNECTOR_CLASS,
            "tasks.max": "1",
            "topics": self.topic,
            "iceberg.tables": CONNECT_TABLE,
            "iceberg.catalog": self.settings.catalog_name,  # the name pyiceberg's rows in the catalog carry too
            "iceberg.catalog.catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
            "iceberg.catalog.uri": f"jdbc:sqlite:{self.phase / 'catalog.db'}",
            "iceberg.catalog.warehouse": f"file://{self.phase / 'warehouse'}",
            "iceberg.control.topic": self.control,
            "iceberg.control.commit.interval-ms": str(COMMIT_SECONDS * 1000),
        }

    def start(self) -> None:
        self.worker.put_connector(self.connector, self.config())

    def alive(self) -> None:
        with contextlib.suppress(OSError, urllib.error.URLError):  # a worker restarting answers nothing for a while
            self.worker.task_states(self.connector)  # raises with the task's trace when it failed

    @property
    def pid(self) -> int:
        assert self.worker.pid is not None
        return self.worker.pid

    def stop(self) -> None:
        with contextlib.suppress(OSError, urllib.error.URLError):
            self.worker.delete_connector(self.connector)


Side = K2Side | ConnectSide


@dataclass
class Phase:
    """One phase's catalog file and warehouse (both sinks' tables), and the topics it starts with."""

    path: Path
    catalog: Catalog


def new_phase(root: Path, name: str, admin: AdminClient) -> Phase:
    """A fresh catalog file and warehouse holding the connector's table (K2's sink creates its own), and no topic of
    an earlier phase: a `k2 sink` subscribes to every market topic, and each phase starts from empty topics."""
    path = root / name
    path.mkdir(parents=True)
    catalog = open_catalog(
        Settings(home=path / "k2-home", catalog_uri=f"sqlite:///{path / 'catalog.db'}", warehouse=f"file://{path}/wh")
    )
    catalog.create_namespace(NAMESPACE)
    catalog.create_table(
        CONNECT_TABLE,
        schema=iceberg_schema(TRADES_V2),
        partition_spec=partition_spec(TRADES_V2),
        properties=TABLE_PROPERTIES,
    )
    prefixes = ("market.", "dlq.market.", "connect.trades.", "control-iceberg.")
    old = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefixes)]
    if old:
        for future in admin.delete_topics(old).values():
            future.result()
        wait_for(lambda: not set(old) & set(admin.list_topics(timeout=10).topics), 60, "topics deleted", lambda: None)
    return Phase(path, catalog)


def create_topics(admin: AdminClient, settings: Settings, side: Side) -> None:
    if isinstance(side, K2Side):
        ensure_topics(admin, settings, [side.topic, TOPIC.dlq])
        return
    ensure_topics(admin, settings, [side.topic])
    # The connector's control topic, one partition as Iceberg's docs create it (Kafka here auto-creates nothing).
    for future in admin.create_topics([NewTopic(side.control, 1, 1)]).values():
        future.result()


def values_for(side: Side, trades: Trades) -> list[bytes]:
    return trades.avro if isinstance(side, K2Side) else trades.json


@dataclass
class Bench:
    """What every phase shares: the endpoints, the worker, the trades, an admin client, the temp root."""

    settings: Settings
    endpoints: Endpoints
    worker: ConnectWorker
    trades: Trades
    admin: AdminClient
    root: Path
    phases: int = 0

    def phase(self) -> Phase:
        self.phases += 1
        return new_phase(self.root, f"phase-{self.phases}", self.admin)

    def side(self, kind: str, phase: Phase) -> Side:
        if kind == "k2":
            return K2Side(self.endpoints, phase.path, f"k2-sink-{self.phases}")
        return ConnectSide(self.worker, self.settings, phase.path, f"iceberg-{self.phases}")

    def assigned(self, side: Side) -> None:
        wait_for(lambda: group_assigned(self.admin, side.group, side.topic), 180, f"{side.name} assigned", side.alive)


@dataclass
class Throughput:
    seconds: float
    peak_rss: int
    phase: Phase


def throughput_run(bench: Bench, kind: str) -> Throughput:
    """The sink assigned and idle on an empty topic, then N trades produced; seconds from the first produce until
    the watcher sees N rows committed."""
    phase = bench.phase()
    side = bench.side(kind, phase)
    n = len(bench.trades.keys)
    create_topics(bench.admin, bench.settings, side)
    watch = TableWatch(phase.catalog, side.table).start()
    try:
        side.start()
        bench.assigned(side)
        with PeakRss(side.pid) as rss:
            started = time.time()
            produce(
                bench.endpoints.bootstrap, bench.settings, side.topic, bench.trades.keys, values_for(side, bench.trades)
            )
            landed = watch.wait_total(n, 600, side.alive)
    finally:
        watch.stop()
        side.stop()
    seconds = landed - started
    progress(f"connect-bench: {kind} {throughput(n, seconds)} ({seconds:.1f} s), peak RSS {gib(rss.peak)}")
    return Throughput(seconds, rss.peak, phase)


# --- freshness: both sinks at once, every trade to both topics at the same instant ------------------------------
def paced_produce(bench: Bench, sides: list[Side], count: int, per_second: int) -> dict[str, float]:
    """`count` trades at `per_second`, each to every side's topic back to back; the produce time of each id."""
    producer = Producer(producer_config(bench.settings, bench.endpoints.bootstrap))
    produced: dict[str, float] = {}
    chunk = max(1, per_second // 100)  # a chunk every 10 ms
    started = time.monotonic()
    for first in range(0, count, chunk):
        due = started + first / per_second
        while (wait := due - time.monotonic()) > 0:
            producer.poll(min(wait, 0.01))
        now = time.time()
        for i in range(first, min(first + chunk, count)):
            for side in sides:
                producer.produce(side.topic, values_for(side, bench.trades)[i], bench.trades.keys[i])
            produced[bench.trades.avro[i][AVRO_ID].decode()] = now
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("freshness produce did not complete")
    return produced


def visibility(watch: TableWatch, produced: dict[str, float]) -> list[float]:
    """Seconds from produce to the first sight of the snapshot holding each produced id."""
    delays = []
    for seen in watch.seen:
        for path in seen.files:
            delays.extend(seen.at - produced[i] for i in read_ids(path) if i in produced)
    return delays


def freshness(bench: Bench, seconds: float, per_second: int) -> dict[str, list[float]]:
    phase = bench.phase()
    sides: list[Side] = [bench.side("connect", phase), bench.side("k2", phase)]
    count = min(int(per_second * seconds), len(bench.trades.keys))
    watches = {}
    try:
        for side in sides:
            create_topics(bench.admin, bench.settings, side)
            watches[side.name] = TableWatch(phase.catalog, side.table).start()
            side.start()
        for side in sides:
            bench.assigned(side)
        produced = paced_produce(bench, sides, count, per_second)
        for side in sides:
            watches[side.name].wait_total(count, 300, side.alive)
    finally:
        for watch in watches.values():
            watch.stop()
        for side in sides:
            side.stop()
    out = {name: visibility(watch, produced) for name, watch in watches.items()}
    for name, delays in out.items():
        if len(delays) != count:
            raise RuntimeError(f"freshness: {name} showed {len(delays):,} of {count:,} produced trades")
    return out


# --- kill -9 mid-run -------------------------------------------------------------------------------------------
@dataclass
class KillResult:
    lost: int
    duplicated: int
    rows: int
    killed_at: int
    restart_seconds: float


def kill_run(bench: Bench, kind: str) -> KillResult:
    """KILL_AT of N trades produced and committed; the rest produced while the sink runs, and the sink (the worker
    JVM) killed -9 once half of the rest is acknowledged, i.e. with records consumed and not yet committed (K2
    commits 100k rows at once: waiting for a share of N to be committed let it land everything before the kill).
    Then started again; once the group's offsets reach the end and no commit came for three intervals, the exact
    sets of ids are compared."""
    phase = bench.phase()
    side = bench.side(kind, phase)
    n = len(bench.trades.keys)
    create_topics(bench.admin, bench.settings, side)
    watch = TableWatch(phase.catalog, side.table).start()
    ends: dict[int, int] = {}
    try:
        side.start()
        bench.assigned(side)
        values, keys, first = values_for(side, bench.trades), bench.trades.keys, int(n * KILL_AT)
        head = produce(bench.endpoints.bootstrap, bench.settings, side.topic, keys[:first], values[:first])
        watch.wait_total(first, 600, side.alive)
        acked = [0]
        producing = threading.Thread(
            target=lambda: ends.update(
                produce(bench.endpoints.bootstrap, bench.settings, side.topic, keys[first:], values[first:], acked)
            )
        )
        producing.start()
        wait_for(lambda: acked[0] >= (n - first) // 2, 300, "half of the rest acknowledged", side.alive)
        killed_at = watch.total
        if isinstance(side, K2Side):
            side.kill()
        else:
            bench.worker.kill()
        progress(f"connect-bench: kill -9 {kind} at {killed_at:,} rows committed")
        producing.join()
        ends.update({p: ends.get(p, head.get(p, 0)) for p in head})  # a partition only the first part reached
        restarted = time.monotonic()
        if isinstance(side, K2Side):
            side.start()
        else:
            bench.worker.start()
        wait_for(
            lambda: group_offsets(bench.admin, side.group, side.topic) == ends,
            600,
            f"{kind} group offsets at the end",
            side.alive,
        )
        restart_seconds = time.monotonic() - restarted
        # The connector commits its group offsets with the data files' events, before the coordinator's Iceberg
        # commit: wait for three commit intervals without a new snapshot before reading what the table holds.
        watch.wait_quiet(3 * COMMIT_SECONDS + 1, 120)
    finally:
        watch.stop()
        side.stop()
    ids = table_column(phase.catalog, side.table, "message_id")
    produced = set(bench.trades.ids)
    held = set(ids)
    return KillResult(len(produced - held), len(ids) - len(held), len(ids), killed_at, restart_seconds)


def table_column(catalog: Catalog, identifier: str, column: str) -> list[str]:
    return catalog.load_table(identifier).scan(selected_fields=(column,)).to_arrow().column(0).to_pylist()


# --- content ---------------------------------------------------------------------------------------------------
CHECKSUM = "count(*), count(DISTINCT message_id), sum(hash(message_id, price, quantity, timestamp) % 1000000007)"


# --- the rows --------------------------------------------------------------------------------------------------
def throughput(n: int, seconds: float) -> str:
    """common.rate, with whole records below 10k/s (at load 40 the connector landed a few hundred a second)."""
    return rate(n, seconds) if n / seconds >= 10_000 else f"{n / seconds:,.0f}/s"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def rows(quick: bool) -> list[Row]:
    n, runs, fresh_seconds = (100_000, 1, 10.0) if quick else (1_000_000, 2, 30.0)
    # A smaller run where the machine cannot do the full one in its time (RESULTS.md says when it was used).
    n = int(os.environ.get("K2_BENCH_CONNECT_TRADES", n))
    baseline = f"Iceberg Kafka Connect sink {ICEBERG_VERSION}"
    with temp_home("connect") as root:
        settings = Settings(home=root / "stack", sink_commit_seconds=COMMIT_SECONDS)
        with Stack(settings, broker="kafka") as endpoints:
            settings = Settings(
                home=root / "stack",
                kafka_bootstrap=endpoints.bootstrap,
                schema_registry_url=endpoints.registry_url,
                sink_commit_seconds=COMMIT_SECONDS,
            )
            admin = AdminClient(base_config(settings, endpoints.bootstrap))
            worker = ConnectWorker(root / "connect", endpoints.bootstrap, cache=settings.apache_kafka_cache)
            worker.launch()  # from this thread (the JVM dies with the thread that started it); it boots meanwhile
            try:
                progress(f"connect-bench: encoding {n:,} trades as Avro and JSON")
                schema_id = RegistryClient(endpoints.registry_url).register(TOPIC.subject, avro_schema(TRADES_V2))
                trades = make_trades(n, schema_id)
                worker.wait_ready()
                bench = Bench(settings, endpoints, worker, trades, admin, root)
                results: dict[str, list[Throughput]] = {"k2": [], "connect": []}
                for _ in range(runs):
                    for kind in ("connect", "k2"):
                        results[kind].append(throughput_run(bench, kind))
                progress("connect-bench: comparing the last run's tables")
                content = compare_tables_pair(results)
                slower = n / max(median([r.seconds for r in results[kind]]) for kind in results)
                per_second = int(min(FRESH_MAX, FRESH_SHARE * slower))
                progress(f"connect-bench: freshness, {per_second:,}/s for {fresh_seconds:.0f} s into both")
                fresh = freshness(bench, fresh_seconds, per_second)
                kills = {kind: kill_run(bench, kind) for kind in ("connect", "k2")}
            finally:
                worker.stop()
    return make_rows(n, runs, fresh_seconds, per_second, baseline, results, content, fresh, kills)


def compare_tables_pair(results: dict[str, list[Throughput]]) -> dict[str, Any]:
    """The last run's two tables sit in different phases: copy nothing, compare via both catalogs."""
    k2_phase, connect_phase = results["k2"][-1].phase, results["connect"][-1].phase
    k2 = k2_phase.catalog.load_table(K2_TABLE).scan().to_arrow()
    connect = connect_phase.catalog.load_table(CONNECT_TABLE).scan().to_arrow()
    return compare_arrow(k2, connect)


def compare_arrow(k2: pa.Table, connect: pa.Table) -> dict[str, Any]:
    """Count, distinct ids and CHECKSUM of each table, and per column the rows (joined on message_id) whose values
    differ; a map is compared as its sorted entries (Java's writer keeps no insertion order)."""
    db = duckdb.connect()
    db.register("k2", k2)
    db.register("connect", connect.select(k2.column_names))
    sums = {name: db.sql(f"SELECT {CHECKSUM} FROM {name}").fetchone() for name in ("k2", "connect")}
    maps = {f.name for f in k2.schema if pa.types.is_map(f.type)}

    def value(side: str, column: str) -> str:
        return f"list_sort(map_entries({side}.{column}))" if column in maps else f"{side}.{column}"

    differing = {}
    for column in k2.column_names:
        sql = (
            f"SELECT count(*) FROM k2 JOIN connect USING (message_id) "
            f"WHERE {value('k2', column)} IS DISTINCT FROM {value('connect', column)}"
        )
        if column != "message_id":
            differing[column] = db.sql(sql).fetchone()[0]  # type: ignore[index]
    joined = db.sql("SELECT count(*) FROM k2 JOIN connect USING (message_id)").fetchone()[0]  # type: ignore[index]
    return {"k2": sums["k2"], "connect": sums["connect"], "joined": joined, "differing": differing}


def make_rows(
    n: int,
    runs: int,
    fresh_seconds: float,
    per_second: int,
    baseline: str,
    results: dict[str, list[Throughput]],
    content: dict[str, Any],
    fresh: dict[str, list[float]],
    kills: dict[str, KillResult],
) -> list[Row]:
    k2_s = median([r.seconds for r in results["k2"]])
    connect_s = median([r.seconds for r in results["connect"]])
    differing = {column: rows for column, rows in content["differing"].items() if rows}
    same = content["k2"] == content["connect"] and content["joined"] == content["k2"][0] and not differing
    count, distinct, checksum = content["k2"]
    c_count, c_distinct, c_checksum = content["connect"]
    content_note = (
        f"tables of the last run: {'identical' if same else 'DIFFERENT'} record for record (k2 {count:,} rows, "
        f"{distinct:,} ids, checksum {checksum}; connect {c_count:,} rows, {c_distinct:,} ids, checksum "
        f"{c_checksum}; {content['joined']:,} ids in both; rows differing per column: {differing or 'none'})"
    )
    p = {name: (percentile(d, 0.5), percentile(d, 0.99)) for name, d in fresh.items()}
    k2_rss = median([float(r.peak_rss) for r in results["k2"]])
    connect_rss = median([float(r.peak_rss) for r in results["connect"]])
    k2_kill, connect_kill = kills["k2"], kills["connect"]
    return [
        Row(
            "connect 1 throughput Kafka→Iceberg",
            throughput(n, k2_s),
            baseline,
            throughput(n, connect_s),
            connect_s / k2_s,
            "report",
            None,
            f"{n:,} ASX trades produce→committed, 3 partitions, {runs} run(s) each, interleaved, commit every "
            f"{COMMIT_SECONDS} s (k2 also at 100k rows); k2 Avro, connect JSON; {content_note}",
        ),
        Row(
            "connect 2 freshness produce→visible",
            f"p50 {p['k2'][0] * 1000:,.0f} ms / p99 {p['k2'][1] * 1000:,.0f} ms",
            baseline,
            f"p50 {p['connect'][0] * 1000:,.0f} ms / p99 {p['connect'][1] * 1000:,.0f} ms",
            p["connect"][0] / p["k2"][0],
            "report",
            None,
            f"both sinks at once, {per_second:,} trades/s to each ({FRESH_SHARE:.0%} of the slower sink's "
            f"throughput) for {fresh_seconds:.0f} s, commit every "
            f"{COMMIT_SECONDS} s; every trade timed (visible = first sight of its snapshot, tables loaded every "
            f"0.1 s); ratio on p50 (p99 ratio {p['connect'][1] / p['k2'][1]:.2f}x)",
        ),
        Row(
            "connect 3 peak memory (sink process)",
            gib(k2_rss),
            f"{baseline} worker JVM",
            gib(connect_rss),
            connect_rss / k2_rss,
            "report",
            None,
            f"peak RSS during the throughput runs (median of {runs}); k2: the `k2 sink` process; connect: the "
            "distributed worker JVM with Kafka's default connect heap (-Xms256M -Xmx2G), alive across runs",
        ),
        Row(
            "connect 4 kill -9 mid-run: lost / duplicated",
            f"{k2_kill.lost} / {k2_kill.duplicated}",
            baseline,
            f"{connect_kill.lost} / {connect_kill.duplicated}",
            None,
            "0 / 0",
            k2_kill.lost == k2_kill.duplicated == 0,
            f"{n:,} trades, killed at k2 {k2_kill.killed_at:,} / connect {connect_kill.killed_at:,} rows committed; "
            f"exact id sets; rows k2 {k2_kill.rows:,} / connect {connect_kill.rows:,}; from the restart to the "
            f"group's offsets at the end: k2 {k2_kill.restart_seconds:.0f} s / connect "
            f"{connect_kill.restart_seconds:.0f} s (the worker JVM's start included); "
            f"Kafka {KAFKA_VERSION}, Connect {CONNECT_VERSION}",
        ),
    ]


if __name__ == "__main__":
    main_for(rows, __doc__)
