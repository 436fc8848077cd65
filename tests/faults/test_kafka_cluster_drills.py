"""kill -9 drill on a 3-broker Apache Kafka cluster: the sink, the producer and the partition-leader broker are killed
at random points while a million trades flow; afterwards the lake holds every message_id exactly once.

The cluster is K2's launcher (`ApacheKafkaCluster(nodes=3)`: KRaft, every node broker + controller on 127.0.0.1,
replication factor 3, min.insync.replicas=2, no unclean leader election), started by the test because only the test
can kill -9 and restart a single node. Everything else runs as its own process, as in production, pointed at the
cluster by K2_KAFKA_BOOTSTRAP: `k2 stack` (here the schema registry only, beside the configured Kafka), `k2 sink`,
and the feed (tests/faults/feed.py in its checkpointed mode: a restarted feed re-sends everything after its last
checkpoint, part of which is in Kafka already, so the sink must drop duplicates).

Three kinds of kill, each at random (seeded) points:
- the sink (SINK_KILLS), when the lake holds a random fraction of the feed; restarted after a random pause;
- the feed (FEED_KILLS), a random moment after it passed a random fraction of the feed; restarted after a random
  pause;
- the leader of a random partition of the topic being written (from the cluster's metadata), a random pause after
  the cluster is whole again (every replica of every partition in sync: with min.insync.replicas=2, a second node
  down would stop acks=all writes), for as long as the trades flow (at least MIN_LEADER_KILLS, at most
  MAX_LEADER_KILLS); restarted after a random pause. A JVM takes tens of seconds to come back, so these are timed
  by the cluster's recovery rather than by the lake.
The producer rides through leader changes on its own (acks=all, idempotent, librdkafka's retries): the feed fails
if any record is not acknowledged.

Figures (messages, kills and restarts by kind, records in Kafka — the feed's re-sends make it more than the
messages —, wall time with the cluster's start, CPU seconds of every process of the drill, lost, duplicated, seed)
are printed and appended to $K2_FAULT_REPORT; K2_FAULT_SEED replays the kill points, K2_FAULT_MESSAGES resizes the
run. Wall time depends on the machine's load; CPU seconds much less (on 2 idle cores the drill cannot take less than
half of them).
"""

from __future__ import annotations

import os
import random
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table

from k2.bus.apache_kafka import ApacheKafkaCluster
from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import table_identifier
from k2.schema import TRADES_V2
from tests.faults.drills import MESSAGES, SEED, Drill, assert_exactly_once
from tests.faults.feed import TOPIC, read_checkpoint

pytestmark = [pytest.mark.faults, pytest.mark.apache_kafka]

NODES = 3
SINK_KILLS = 9
FEED_KILLS = 8
MIN_LEADER_KILLS = 3
MAX_LEADER_KILLS = 6
MIN_KILLS = 20
# Pauses (seconds) before a killed process or node is started again. The sink's group needs session.timeout.ms (6 s)
# to drop a killed member before its successor is assigned anything, so a longer sink pause buys nothing.
SINK_PAUSE = (0.0, 2.0)
FEED_PAUSE = (0.0, 2.0)
NODE_PAUSE = (1.0, 4.0)
# How long after passing its kill point the feed dies, in units of the time its last batch took (from one checkpoint
# to the next): the kill lands anywhere in the next batch — after some of it was acknowledged, those trades are in
# Kafka twice once the restarted feed sends them again.
FEED_DELAY = (0.1, 1.2)
# How long after the cluster is whole again the next partition leader dies.
LEADER_GAP = (0.0, 4.0)
NODE_START_TIMEOUT = 600.0


@dataclass
class ClusterDrill(Drill):
    """A Drill whose broker is a 3-node Apache Kafka the test kills and restarts node by node."""

    cluster: ApacheKafkaCluster | None = None
    checkpoint: Path = Path()
    began: float = 0.0  # before the cluster started: its start is part of the drill's wall time
    node_restarts: int = 0
    down: dict[int, float] = field(default_factory=dict)  # killed node → when to start it again
    recovering: set[int] = field(default_factory=set)  # started again, not yet back in every ISR
    # killed node → the partition it led, until the metadata shows another leader for it: until then the cluster
    # has not noticed the death (the controller waits broker.session.timeout.ms, or for the node's next
    # registration), and the metadata still shows the dead node in every ISR
    unnoticed: dict[int, int] = field(default_factory=dict)
    _admin: AdminClient | None = None
    _trades: Table | None = None

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            assert self.cluster is not None
            self._admin = AdminClient({"bootstrap.servers": self.cluster.bootstrap, "log.connection.close": False})
        return self._admin

    def whole(self) -> bool:
        """Every node is a registered broker and every partition of every topic (internal ones too: the group's
        offsets live in __consumer_offsets) has a leader and all its replicas in sync."""
        try:
            metadata = self.admin.list_topics(timeout=5)
        except KafkaException:
            return False
        if set(metadata.brokers) != set(range(1, NODES + 1)):
            return False
        return all(
            p.leader >= 0 and sorted(p.isrs) == sorted(p.replicas)
            for topic in metadata.topics.values()
            for p in topic.partitions.values()
        )

    def leaders(self) -> dict[int, int]:
        """Partition → leader of the topic the feed writes, from the cluster's metadata ({} when unknown)."""
        try:
            partitions = self.admin.list_topics(str(TOPIC), timeout=5).topics[str(TOPIC)].partitions
        except (KafkaException, KeyError):
            return {}
        return {p: meta.leader for p, meta in partitions.items()}

    def kill_leader(self) -> bool:
        """kill -9 the leader of a random partition being written; False when the metadata names none right now."""
        assert self.cluster is not None
        leaders = self.leaders()
        if not leaders:
            return False
        partition = self.rng.choice(sorted(leaders))
        leader = leaders[partition]
        if leader <= 0:
            return False
        self.cluster.kill(leader)
        self.kills["leader broker"] = self.kills.get("leader broker", 0) + 1
        self.down[leader] = time.monotonic() + self.rng.uniform(*NODE_PAUSE)
        self.unnoticed[leader] = partition
        self.say(f"kill -9 broker {leader} (partition leader)")
        return True

    def tend_nodes(self) -> None:
        """Start killed nodes whose pause is over; note those back in sync."""
        assert self.cluster is not None
        for node_id, when in list(self.down.items()):
            if time.monotonic() >= when:
                self.cluster.relaunch(node_id)
                self.node_restarts += 1
                del self.down[node_id]
                self.recovering.add(node_id)
        for node_id in list(self.recovering):
            self.cluster.node(node_id).check_alive()
        if self.unnoticed:
            leaders = self.leaders()
            for node_id, partition in list(self.unnoticed.items()):
                if leaders.get(partition, node_id) not in (node_id, -1):
                    self.say(f"partition {partition} led by broker {leaders[partition]} now")
                    del self.unnoticed[node_id]
        if self.recovering and not self.unnoticed and self.whole():
            self.say(f"broker(s) {sorted(self.recovering)} back, every replica in sync")
            self.recovering.clear()

    def landed(self) -> int:
        """Rows in the lake, from the table's current snapshot (only the feed writes trades in this home): the
        drill asks twice a second, and a DuckDB count would compete with the drill for the cores."""
        if self._trades is None:
            try:
                self._trades = open_catalog(self.settings).load_table(table_identifier(TRADES_V2))
            except NoSuchTableError:
                return 0
        snapshot = self._trades.refresh().current_snapshot()
        return int(snapshot.summary["total-records"]) if snapshot is not None and snapshot.summary else 0

    def fed(self) -> int:
        """Trades the feed has had acknowledged, as far as its checkpoint says."""
        return read_checkpoint(self.checkpoint)

    def log_end_offsets(self) -> dict[tuple[str, int], int]:
        """The exact end offset of every partition of the feed's topic (Kafka's watermarks are exact)."""
        assert self.cluster is not None
        consumer = Consumer({"bootstrap.servers": self.cluster.bootstrap, "group.id": "k2-drill-watermarks"})
        try:
            partitions = consumer.list_topics(str(TOPIC), timeout=10).topics[str(TOPIC)].partitions
            return {
                (str(TOPIC), p): consumer.get_watermark_offsets(TopicPartition(str(TOPIC), p), timeout=10)[1]
                for p in partitions
            }
        finally:
            consumer.close()

    def nodes_back(self) -> bool:
        self.tend_nodes()
        return not self.down and not self.recovering

    def clock(self) -> str:
        return f"[{time.monotonic() - self.began:6.1f}s]"

    def say(self, what: str) -> None:
        print(f"  {self.clock()} {what}", flush=True)

    def cpu_seconds(self) -> float:
        """CPU time of this process and every process of the drill so far: those that ended (killed or exited and
        waited for) and those still running (Kafka nodes, the stack, the sink), from /proc."""
        used = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            used += usage.ru_utime + usage.ru_stime
        assert self.cluster is not None
        pids = [n.pid for n in self.cluster.nodes if n.running] + [p.pid for p in self.procs.values()]
        ticks = os.sysconf("SC_CLK_TCK")
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, TypeError):
                continue
            used += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)
        return used


@pytest.fixture
def cluster_drill(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ClusterDrill]:
    began = time.monotonic()
    monkeypatch.setenv("K2_SINK_COMMIT_ROWS", "50000")  # many commits: kills land between and inside them
    monkeypatch.setenv("K2_TOPIC_REPLICATION", str(NODES))
    print(f"\nfault drill seed {SEED} (K2_FAULT_SEED={SEED} replays it), {MESSAGES:,} messages", flush=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    cluster = ApacheKafkaCluster(tmp_path / "kafka", nodes=NODES)
    try:
        # A generous start timeout: on 2 cores shared with other work, formatting and starting three JVMs has taken
        # more than launcher's default 3 minutes (2.6 minutes measured at a load average of 30-70).
        cluster.start(timeout=NODE_START_TIMEOUT)
        monkeypatch.setenv("K2_KAFKA_BOOTSTRAP", cluster.bootstrap)
        drill = ClusterDrill(
            Settings(home=settings.home),  # built again: K2_KAFKA_BOOTSTRAP is set now, as the subprocesses see it
            logs,
            random.Random(f"{SEED}-{os.environ.get('PYTEST_CURRENT_TEST')}"),
            cluster=cluster,
            checkpoint=logs / "feed.checkpoint",
            began=began,
        )
        drill.say(f"{NODES} brokers up: {cluster.bootstrap}")
        try:
            yield drill
        finally:
            drill.stop()
            drill._admin = None  # its connections would log every node's shutdown
    finally:
        # kill -9, not a controlled shutdown: the log is thrown away with tmp_path, and the last nodes of a
        # controlled shutdown have waited here up to its 60 s timeout for a controller quorum.
        for node in cluster.nodes:
            node.kill()


@pytest.mark.timeout(1200)
def test_kill_9_of_sink_producer_and_partition_leaders_on_three_brokers_loses_and_doubles_nothing(
    cluster_drill: ClusterDrill,
) -> None:
    drill, rng = cluster_drill, cluster_drill.rng
    # Fractions of the feed in the lake; not beyond 0.8: with the feed done, the sink drains the rest in a few large
    # commits, and a restarted sink must commit before it is killed again.
    sink_points = sorted(rng.uniform(0.02, 0.8) for _ in range(SINK_KILLS))
    feed_points = sorted(rng.uniform(0.0, 0.85) for _ in range(FEED_KILLS))  # fractions of the feed acknowledged
    restart_at: dict[str, float] = {}
    feed_kill_at: float | None = None
    feed_started_at = 0  # the checkpoint the running feed started from
    sink_started_at = 0  # the rows in the lake when the running sink started
    last_checkpoint = (0, time.monotonic())  # the feed's latest checkpoint and when the drill saw it
    batch_seconds = 1.0  # how long the feed took from one checkpoint to the next, last time it did
    next_leader_kill = 0.0
    drill.start_stack()
    drill.start_sink()
    drill.start_feed(drill.checkpoint)

    while (landed := drill.landed()) < MESSAGES:
        drill.check_alive("the feed to land")
        now = time.monotonic()
        drill.tend_nodes()
        if (fed := drill.fed()) != last_checkpoint[0]:
            batch_seconds = now - last_checkpoint[1] if last_checkpoint[0] > feed_started_at else batch_seconds
            last_checkpoint = (fed, now)
        # Likewise a sink run must commit something of its own first (not die while still importing).
        sink_due = sink_points and landed >= sink_points[0] * MESSAGES and landed > sink_started_at
        if sink_due and drill.running("sink"):
            sink_points.pop(0)
            drill.kill("sink")
            restart_at["sink"] = now + rng.uniform(*SINK_PAUSE)
            drill.say(f"kill -9 sink at {landed:,} landed")
        # A feed run must pass a checkpoint of its own before it is killed: each kill then costs at most a batch of
        # re-sending, and no run dies before it sent anything.
        feed_due = feed_points and fed >= feed_points[0] * MESSAGES and fed > feed_started_at
        if feed_due and feed_kill_at is None and drill.running("feed"):
            feed_points.pop(0)
            feed_kill_at = now + rng.uniform(*FEED_DELAY) * batch_seconds
        if feed_kill_at is not None and now >= feed_kill_at:
            feed_kill_at = None
            if drill.running("feed"):
                drill.kill("feed")
                restart_at["feed"] = now + rng.uniform(*FEED_PAUSE)
                drill.say(f"kill -9 feed at {drill.fed():,} acknowledged")
        leader_kills = drill.kills.get("leader broker", 0)
        if leader_kills < MAX_LEADER_KILLS and landed > 0 and not drill.down and not drill.recovering:
            if not next_leader_kill:
                next_leader_kill = now + rng.uniform(*LEADER_GAP)
            elif now >= next_leader_kill and drill.whole() and drill.kill_leader():
                next_leader_kill = 0.0
        for name, when in list(restart_at.items()):
            if now >= when:
                del restart_at[name]
                if name == "sink":
                    sink_started_at = landed
                    drill.start_sink()
                else:
                    feed_started_at = drill.fed()
                    drill.start_feed(drill.checkpoint)
        time.sleep(0.5)

    # Every node back and in sync, every killed process started again, then the feed's last run and the sink's last
    # commits.
    drill.say(f"all {MESSAGES:,} landed; finishing")
    drill.wait(drill.nodes_back, NODE_START_TIMEOUT, "every broker back")
    if "sink" in restart_at:
        drill.start_sink()
    if "feed" in restart_at:
        drill.start_feed(drill.checkpoint)
    if "feed" in drill.procs:
        drill.feed_to_completion()
    assert drill.fed() == MESSAGES
    targets = drill.log_end_offsets()
    drill.sink_to_completion(targets)
    figures = assert_exactly_once(
        drill,
        f"kill -9 of sink, producer and partition leader on {NODES} Apache Kafka brokers",
        drill.began,
        {
            "restarts": {
                "sink": drill.starts["sink"] - 1,
                "feed": drill.starts["feed"] - 1,
                "leader broker": drill.node_restarts,
            },
            "records_in_kafka": sum(targets.values()),
            "cpu_seconds": round(drill.cpu_seconds()),
            "load_average": round(os.getloadavg()[0], 1),
        },
    )
    assert sum(figures["kills"].values()) >= MIN_KILLS, figures
    assert figures["kills"].get("leader broker", 0) >= MIN_LEADER_KILLS, figures
