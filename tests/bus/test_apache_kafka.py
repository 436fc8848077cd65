"""`k2 stack --broker kafka` and the Apache Kafka launcher, against a real Apache Kafka on 127.0.0.1.

Tests marked `apache_kafka` start Kafka themselves (a JVM per node: tens of seconds each on 2 busy cores); `make test`
runs them once, with K2_TEST_BROKER=apache_kafka.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, PartitionMetadata

from k2.bus.apache_kafka import ApacheKafkaCluster
from k2.config import Settings
from tests.integration.helpers import lake_count

START_TIMEOUT = 300.0  # a first start may fetch the jars with Maven, then format and start a JVM
SAMPLE_RECORDS = "370,180"


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def _k2(*args: str) -> list[str]:
    return [sys.executable, "-m", "k2.cli", *args]


@pytest.fixture
def kafka_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh K2_HOME with no configured Kafka or registry: `k2 stack` must start them."""
    for var in ("K2_KAFKA_BOOTSTRAP", "K2_SCHEMA_REGISTRY_URL", "K2_CATALOG_URI", "K2_WAREHOUSE", "K2_BROKER_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("K2_HOME", str(tmp_path / "k2home"))
    return Settings(home=tmp_path / "k2home")


def _kafka_pids(settings: Settings) -> list[int]:
    """Processes running a Kafka node of this home (their command line names its server.properties)."""
    marker = str(settings.home_dir / "kafka").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


class StackProcess:
    """`k2 stack --broker kafka` in a subprocess, ready once run/stack.json names its Kafka."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(_k2("-v", "stack", "--broker", "kafka"), stdout=out, stderr=subprocess.STDOUT)
        self.log = log
        state = settings.run_dir / "stack.json"

        def ready() -> bool:
            assert self.proc.poll() is None, f"k2 stack exited with {self.proc.returncode}:\n{log.read_text()}"
            return state.exists() and json.loads(state.read_text()).get("broker") == "kafka"

        _wait(ready, START_TIMEOUT, "k2 stack --broker kafka recording itself in run/stack.json")
        self.state = json.loads(state.read_text())

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(120)


def _load(sample: Path) -> str:
    result = subprocess.run(_k2("load", "asx", str(sample)), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.apache_kafka
def test_k2_stack_on_apache_kafka_lands_the_sample_exactly_once_and_stops_on_sigint_and_sigterm(
    kafka_home: Settings, asx_sample: Path, tmp_path: Path
) -> None:
    stack = StackProcess(kafka_home, tmp_path / "stack-1.log")
    assert stack.state["pid"] == stack.proc.pid
    assert len(_kafka_pids(kafka_home)) == 1

    first = _load(asx_sample)
    assert f"written {SAMPLE_RECORDS} + already in lake 0 + rejected by sink 0" in first
    assert lake_count(kafka_home, "trades_v2") == 200_545
    assert lake_count(kafka_home, "quotes_v2") == 169_629

    second = _load(asx_sample)
    assert f"written 0 + already in lake {SAMPLE_RECORDS} + rejected by sink 0" in second
    assert lake_count(kafka_home, "trades_v2") == 200_545
    assert lake_count(kafka_home, "quotes_v2") == 169_629

    assert stack.stop(signal.SIGINT) == 0
    assert _kafka_pids(kafka_home) == []
    assert not (kafka_home.run_dir / "stack.json").exists()

    # Started again on the same home: the log is on disk (same topics, offsets after the first two loads).
    again = StackProcess(kafka_home, tmp_path / "stack-2.log")
    third = _load(asx_sample)
    assert f"written 0 + already in lake {SAMPLE_RECORDS} + rejected by sink 0" in third
    assert lake_count(kafka_home, "trades_v2") == 200_545
    assert again.stop(signal.SIGTERM) == 0
    assert _kafka_pids(kafka_home) == []
    assert not (kafka_home.run_dir / "stack.json").exists()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ApacheKafkaCluster]:
    with ApacheKafkaCluster(tmp_path / "cluster", nodes=3) as running:
        yield running


def _produce(bootstrap: str, topic: str, values: range) -> None:
    """Produce with acks=all and idempotence; fail unless every message is acknowledged."""
    failures: list[KafkaError] = []
    producer = Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True, "message.timeout.ms": 120_000}
    )
    for v in values:
        producer.produce(topic, str(v).encode(), on_delivery=lambda e, _m: failures.append(e) if e else None)
    assert producer.flush(150) == 0
    assert failures == []


def _read_all(bootstrap: str, topic: str, count: int) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "smoke", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, 0, 0)])
    values: list[int] = []
    deadline = time.monotonic() + 120
    try:
        while len(values) < count and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and msg.error() is None:
                values.append(int(msg.value()))
    finally:
        consumer.close()
    return values


def _partition(admin: AdminClient, topic: str) -> PartitionMetadata:
    return admin.list_topics(topic, timeout=10).topics[topic].partitions[0]


def _partition_or_none(admin: AdminClient, topic: str) -> PartitionMetadata | None:
    return admin.list_topics(topic, timeout=10).topics[topic].partitions.get(0)


@pytest.mark.apache_kafka
def test_three_node_cluster_keeps_acks_all_writes_through_a_kill_9_of_the_leader(cluster: ApacheKafkaCluster) -> None:
    admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
    assert set(admin.list_topics(timeout=10).brokers) == {1, 2, 3}
    topic = "k2.smoke"
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3)])[topic].result()
    # Metadata may not list the new topic's partition for a moment after the controller created it.
    _wait(lambda: len(getattr(_partition_or_none(admin, topic), "isrs", ())) == 3, 60, "3 in-sync replicas")

    _produce(cluster.bootstrap, topic, range(100))
    assert _read_all(cluster.bootstrap, topic, 100) == list(range(100))

    leader = _partition(admin, topic).leader
    cluster.kill(leader)
    assert not cluster.node(leader).running
    # min.insync.replicas=2: the two survivors still take acks=all writes once one of them leads.
    _produce(cluster.bootstrap, topic, range(100, 200))
    after = _partition(admin, topic)
    assert after.leader != leader
    assert leader not in after.isrs
    assert _read_all(cluster.bootstrap, topic, 200) == list(range(200))

    cluster.restart(leader)
    _wait(lambda: sorted(_partition(admin, topic).isrs) == [1, 2, 3], 120, f"node {leader} back in sync")
    assert _read_all(cluster.bootstrap, topic, 200) == list(range(200))


def test_missing_java_or_maven_is_one_error_line_with_the_install_command(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": str(Path(sys.executable).parent),  # the venv only: no java, no mvn
        "K2_HOME": str(tmp_path / "k2home"),
        "K2_APACHE_KAFKA_CACHE": str(tmp_path / "empty-cache"),
    }
    env.pop("K2_KAFKA_BOOTSTRAP", None)
    result = subprocess.run(_k2("stack", "--broker", "kafka"), capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: Apache Kafka needs a JDK 17+ and Maven, but `java` and `mvn` are not on PATH: "
        "install them with `apt-get install default-jdk-headless maven`"
    ]
    assert not (tmp_path / "k2home" / "run" / "stack.json").exists()
