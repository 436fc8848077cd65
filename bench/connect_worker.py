"""Apache Kafka Connect (distributed worker, 127.0.0.1 only) with Apache Iceberg's Kafka Connect sink as a plugin:
the baseline of bench_connect.py.

Iceberg publishes its Connect runtime (the zip of the plugin and its dependencies) only with its release downloads,
not on Maven Central: `mvn dependency:get -Dartifact=org.apache.iceberg:iceberg-kafka-connect-runtime:1.10.1:zip`
(and `:jar`, `:pom`) answers "Could not find artifact ... in central", and Central's folder for that artifact is a
404. So the plugin is assembled the way its Gradle build does it: `org.apache.iceberg:iceberg-kafka-connect` with
its runtime dependencies, plus `iceberg-parquet` (the data files), Hadoop's shaded client (Iceberg's Parquet writer
needs Hadoop's Configuration class), and the sqlite-jdbc driver for Iceberg's JdbcCatalog over the same SQLite file
K2's pyiceberg SQL catalog uses. The worker is `org.apache.kafka:connect-runtime` 4.3.2 (CONNECT_VERSION says why not
the launcher's 4.4.0).

Both sets of jars are fetched once with Maven by k2.bus.apache_kafka.maven_libs into the cache K2 owns
(K2_APACHE_KAFKA_CACHE, default ~/.cache/k2): `apache-kafka-connect-<v>/libs` (the worker's classpath) and
`iceberg-kafka-connect-<v>/libs` (one plugin folder under `plugin.path`, loaded in its own class loader as Connect
does for any installed plugin).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from k2.bus.apache_kafka import LOG4J_VERSION, ApacheKafkaError, default_cache, maven_libs
from k2.bus.broker import _die_with_parent, free_port, stop_process

ICEBERG_VERSION = "1.12.0"  # the newest iceberg-kafka-connect on Maven Central here (December 2026)
# Not the broker's 4.4.0: Kafka 4.4 moved org.apache.kafka.common.utils.AppInfoParser to ...utils.internals, and
# Iceberg 1.12.0's IcebergSinkTask.start still calls the old class, so on a 4.4.0 worker every task fails with
# NoClassDefFoundError. 4.3.2 (the newest release with the class in its old place) runs it; its clients speak to
# the 4.4.0 broker like any older client.
CONNECT_VERSION = "4.3.2"
HADOOP_VERSION = "3.4.2"
SQLITE_JDBC_VERSION = "3.50.3.0"
CONNECTOR_CLASS = "org.apache.iceberg.connect.IcebergSinkConnector"
# What Kafka's bin/connect-distributed.sh gives a worker (KAFKA_HEAP_OPTS and KAFKA_JVM_PERFORMANCE_OPTS there).
JVM_OPTS = (
    "-Xms256M",
    "-Xmx2G",
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)


def connect_libs(cache: Path | None = None) -> Path:
    """The worker's classpath: connect-runtime (with connect-json and the transforms) and the slf4j binding."""
    home = (cache or default_cache()).expanduser() / f"apache-kafka-connect-{CONNECT_VERSION}"
    deps = [
        ("org.apache.kafka", "connect-runtime", CONNECT_VERSION),
        ("org.apache.kafka", "connect-json", CONNECT_VERSION),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ]
    return maven_libs(home, deps, f"Kafka Connect {CONNECT_VERSION}")


def iceberg_plugin(cache: Path | None = None) -> Path:
    """The folder of the assembled Iceberg sink plugin's jars (see the module docstring)."""
    home = (cache or default_cache()).expanduser() / f"iceberg-kafka-connect-{ICEBERG_VERSION}"
    deps = [
        ("org.apache.iceberg", "iceberg-kafka-connect", ICEBERG_VERSION),
        ("org.apache.iceberg", "iceberg-parquet", ICEBERG_VERSION),
        ("org.apache.hadoop", "hadoop-client-api", HADOOP_VERSION),
        ("org.apache.hadoop", "hadoop-client-runtime", HADOOP_VERSION),
        ("org.xerial", "sqlite-jdbc", SQLITE_JDBC_VERSION),
    ]
    return maven_libs(home, deps, f"Iceberg Kafka Connect {ICEBERG_VERSION}")


# log4j2 in its properties format: the YAML one the Kafka launcher writes needs jackson-dataformat-yaml, which Kafka's
# broker jars bring and connect-runtime's do not.
_LOG4J2 = """status = warn
appender.file.type = RollingFile
appender.file.name = file
appender.file.fileName = {log}
appender.file.filePattern = {log}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
"""


class ConnectWorker:
    """One Connect worker JVM in distributed mode (its config, offsets and status in Kafka topics, so a worker
    started again on the same `group` finds its connectors and resumes them), REST on 127.0.0.1."""

    def __init__(
        self, directory: Path, bootstrap: str, group: str = "k2-bench-connect", cache: Path | None = None
    ) -> None:
        """`cache`: where the jars are kept (K2_APACHE_KAFKA_CACHE; None = ~/.cache/k2)."""
        self.directory = directory
        self.bootstrap = bootstrap
        self.group = group
        self.cache = cache
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log_file(self) -> Path:
        return self.directory / "connect.log"

    def _configure(self, plugin: Path) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        props: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap,
            "group.id": self.group,
            "listeners": f"http://127.0.0.1:{self.port}",
            "rest.advertised.host.name": "127.0.0.1",
            "rest.advertised.port": self.port,
            "plugin.path": plugin.parent,  # each folder under plugin.path is one plugin: ours is <home>/libs
            # Find plugins through their ServiceLoader manifests (Iceberg's jar and Kafka's converters have them)
            # instead of scanning every class of ~100 MB of jars by reflection: that took 75 s at load 40 here.
            "plugin.discovery": "service_load",
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.json.JsonConverter",
            "value.converter.schemas.enable": "false",
            "config.storage.topic": f"{self.group}-configs",
            "offset.storage.topic": f"{self.group}-offsets",
            "status.storage.topic": f"{self.group}-status",
            "config.storage.replication.factor": 1,
            "offset.storage.replication.factor": 1,
            "status.storage.replication.factor": 1,
            "offset.storage.partitions": 1,
            "status.storage.partitions": 1,
            # A worker that died holds its tasks for scheduled.rebalance.max.delay.ms (5 min by default) in case it
            # comes back; a single worker restarted after kill -9 is a new member, so that wait is pure delay here.
            "scheduled.rebalance.max.delay.ms": 0,
            # The sink task's consumer: a killed task's group member is dropped after this, not Kafka's 45 s
            # default (K2's sink uses 6 s, bus/clients.py), so both restarts are judged on the same footing.
            "consumer.session.timeout.ms": 6000,
        }
        path = self.directory / "worker.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.directory / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_file))
        return path

    def start(self, timeout: float = 420.0) -> ConnectWorker:
        """Launch the JVM and return once its REST API lists the Iceberg sink among its plugins."""
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the JVM without waiting for it. Call it from the thread that lives as long as the worker should:
        the JVM is killed when the thread that started it ends (PR_SET_PDEATHSIG follows the parent thread)."""
        libs, plugin = connect_libs(self.cache), iceberg_plugin(self.cache)
        properties = self._configure(plugin)
        command = [
            "java",
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
            "org.apache.kafka.connect.cli.ConnectDistributed",
            str(properties),
        ]
        with open(self.directory / "stdout.log", "ab") as out:
            self._proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                process_group=0,
            )

    def wait_ready(self, timeout: float = 420.0) -> ConnectWorker:
        """Return once the REST API lists the Iceberg sink among the worker's plugins; on 2 cores at load 40 a
        worker took 150 s to get there, most of it scanning plugins (hence plugin.discovery=service_load)."""
        assert self._proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise ApacheKafkaError(f"the Connect worker exited with {self._proc.returncode}; see {self.log_file}")
            try:
                plugins = self.request("GET", "/connector-plugins")
                if any(p.get("class") == CONNECTOR_CLASS for p in plugins):
                    return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ApacheKafkaError(f"the Connect worker was not ready in {timeout:.0f} s; see {self.log_file}")
            time.sleep(0.2)

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def put_connector(self, name: str, config: dict[str, str]) -> None:
        self.request("PUT", f"/connectors/{name}/config", config)

    def delete_connector(self, name: str) -> None:
        self.request("DELETE", f"/connectors/{name}")

    def task_states(self, name: str) -> list[str]:
        try:
            status = self.request("GET", f"/connectors/{name}/status")
        except urllib.error.HTTPError:
            return []
        failed = [t for t in status.get("tasks", []) if t.get("state") == "FAILED"]
        if failed:
            raise ApacheKafkaError(f"connector {name} task failed: {failed[0].get('trace', '')[:2000]}")
        return [t.get("state", "") for t in status.get("tasks", [])]

    def kill(self) -> None:
        """kill -9 the worker JVM: no task stop, no flush, no commit on the way out."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self, timeout: float = 60.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)
