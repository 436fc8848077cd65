"""A local Apache Kafka (KRaft, every node broker + controller) on 127.0.0.1, for `k2 stack --broker kafka` and tests.

Kafka's jars come from Maven Central once: `mvn dependency:copy-dependencies` over a small generated pom puts
kafka_2.13, its runtime dependencies and a log4j2 binding for slf4j into a cache K2 owns
(`$K2_APACHE_KAFKA_CACHE/apache-kafka-<version>/libs`, default `~/.cache/k2`); later starts reuse it. A node is then
`java -cp libs/* kafka.Kafka server.properties` after Kafka's StorageTool formatted its log directory with the
cluster id. Logs go to a file next to the node's data, never to our console.

Versus the embedded Tansu broker: the log is on disk (a restarted node finds its topics, ids and offsets again),
watermarks are exact, transactions abort for real, and a node takes seconds to start, not milliseconds (see
docs/architecture.md, "Apache Kafka").
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import structlog
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from k2.bus.broker import _die_with_parent, free_port, stop_process
from k2.config import Settings
from k2.redact import redact

log = structlog.get_logger(__name__)

# 4.4.0 is the newest release on Maven Central here; its classes target Java 17 (class file 61), the default `java`.
KAFKA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"
# Kafka logs through slf4j 1.7 (slf4j-api-1.7.36 comes with it) and ships log4j-core 2.25.5 but no binding between
# them: without log4j-slf4j-impl every log line is dropped with a warning on stderr.
LOG4J_VERSION = "2.25.5"
INSTALL_HINT = "install them with `apt-get install default-jdk-headless maven`"
# Kafka's scripts default to a 1 GiB heap; a local node shares its laptop with the sink, the API and the tests.
JVM_OPTS = ("-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true")
CLUSTER_ID_FILE = "cluster.id"


class ApacheKafkaError(RuntimeError):
    """Something a user can fix (a missing JDK or Maven, a port in use); the message says what to do."""


def _require(tools: list[str]) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        what = " and ".join(f"`{t}`" for t in missing)
        verb = "are" if len(missing) > 1 else "is"
        raise ApacheKafkaError(f"Apache Kafka needs a JDK 17+ and Maven, but {what} {verb} not on PATH: {INSTALL_HINT}")


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "k2"


def _pom(name: str, dependencies: list[tuple[str, str, str]]) -> str:
    dependency = "<dependency><groupId>{}</groupId><artifactId>{}</artifactId><version>{}</version></dependency>"
    deps = "".join(dependency.format(*coordinate) for coordinate in dependencies)
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0"><modelVersion>4.0.0</modelVersion>'
        f"<groupId>k2</groupId><artifactId>k2-{name}</artifactId><version>1</version>"
        f"<packaging>pom</packaging><dependencies>{deps}</dependencies></project>\n"
    )


def kafka_dependencies(version: str) -> list[tuple[str, str, str]]:
    """kafka_2.13 and the slf4j binding its dependencies lack (LOG4J_VERSION)."""
    return [
        ("org.apache.kafka", f"kafka_{SCALA_VERSION}", version),
        ("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_VERSION),
    ]


def _dist(cache: Path | None, version: str) -> Path:
    return (cache or default_cache()).expanduser() / f"apache-kafka-{version}"


def is_cached(cache: Path | None = None, version: str = KAFKA_VERSION) -> bool:
    """The jars of `version` are in `cache` already (no Maven needed)."""
    return (_dist(cache, version) / ".complete").exists()


def kafka_libs(cache: Path | None = None, version: str = KAFKA_VERSION) -> Path:
    """The folder of Kafka's jars, fetched with Maven into `cache` the first time (one process at a time)."""
    return maven_libs(_dist(cache, version), kafka_dependencies(version), f"Apache Kafka {version}")


def maven_libs(home: Path, dependencies: list[tuple[str, str, str]], what: str) -> Path:
    """`home`/libs holding the (group, artifact, version) `dependencies` and their runtime dependencies, fetched
    with `mvn dependency:copy-dependencies` the first time; a file lock makes concurrent first calls fetch once.
    `what` names them in errors and logs."""
    libs = home / "libs"
    done = home / ".complete"
    if done.exists():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second K2 process waits for the first one's fetch, then reuses it
        if done.exists():
            return libs
        _require(["mvn"])
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=home) as work:
            (Path(work) / "pom.xml").write_text(_pom(home.name, dependencies))
            fetched = Path(work) / "libs"
            cmd = [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(Path(work) / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={fetched}",
                "-DincludeScope=runtime",
            ]
            result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if result.returncode != 0:
                tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
                raise ApacheKafkaError(f"Maven could not fetch {what}: {' / '.join(tail)}")
            shutil.rmtree(libs, ignore_errors=True)
            fetched.rename(libs)
        done.write_text(f"{time.monotonic() - started:.1f} s\n")
        log.info("maven.fetched", what=what, libs=str(libs), seconds=round(time.monotonic() - started, 1))
    return libs


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in 22 characters of URL-safe base64, as `kafka-storage random-uuid` prints."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


_LOG4J2 = """Configuration:
  status: warn
  Appenders:
    RollingFile:
      name: file
      fileName: "{log}"
      filePattern: "{log}.%i"
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
      Policies:
        SizeBasedTriggeringPolicy:
          size: 50 MB
      DefaultRolloverStrategy:
        max: 2
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: file
    Logger:
      - name: kafka.request.logger
        level: WARN
"""


SCRAM_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class SaslSslListener:
    """A client listener speaking SASL_SSL beside the PLAINTEXT one: TLS with `certificate` (PEM: the server's
    certificate, then its chain) and `key` (PEM, unencrypted PKCS#8), SCRAM-SHA-512 logins for `users` (name ->
    password, written into the log at format time), and Kafka's StandardAuthorizer: a user may do only what an ACL
    allows. The PLAINTEXT and CONTROLLER listeners stay on loopback for the nodes themselves and the operator; their
    principal (User:ANONYMOUS) is the super user that creates the ACLs."""

    certificate: Path
    key: Path
    users: Mapping[str, str]

    def __repr__(self) -> str:  # the passwords stay out of reprs (and so of logs and test reports)
        return f"SaslSslListener(certificate={self.certificate}, key={self.key}, users={sorted(self.users)})"

    def scram_arguments(self) -> list[str]:
        """StorageTool's `--add-scram` arguments creating every user's credentials."""
        args: list[str] = []
        for name, password in self.users.items():
            args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]"]
        return args


class KafkaNode:
    """One Kafka JVM (broker + controller) on 127.0.0.1 with its own ports and log directory; with `secured`, also
    a SASL_SSL listener on `secured_port`."""

    def __init__(self, node_id: int, directory: Path, port: int = 0, secured: SaslSslListener | None = None) -> None:
        self.node_id = node_id
        self.directory = directory
        self.port = port or free_port()
        self.controller_port = free_port()
        self.secured = secured
        self.secured_port = free_port() if secured else None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def secured_bootstrap(self) -> str:
        if self.secured_port is None:
            raise ApacheKafkaError(f"Kafka node {self.node_id} has no SASL_SSL listener")
        return f"127.0.0.1:{self.secured_port}"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def log_file(self) -> Path:
        return self.directory / "server.log"

    @property
    def properties(self) -> Path:
        return self.directory / "server.properties"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def configure(self, voters: str, replication: int) -> None:
        """Write server.properties and log4j2.yaml; `voters` is the static controller quorum of the cluster."""
        self.directory.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": self.node_id,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self.data_dir,
            # K2 creates every topic it uses (bus.clients.ensure_topics): auto-creation could only hide a mistake
            # behind a one-partition topic.
            "auto.create.topics.enable": "false",
            "default.replication.factor": replication,
            "min.insync.replicas": min(2, replication),
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": replication,
            "transaction.state.log.replication.factor": replication,
            "transaction.state.log.min.isr": min(2, replication),
            "share.coordinator.state.topic.replication.factor": replication,
            "share.coordinator.state.topic.min.isr": min(2, replication),
            # Kafka waits 3 s by default for more members before a new group's first assignment; a local stack's
            # sink workers should not pay that on every load.
            "group.initial.rebalance.delay.ms": 0,
        }
        if self.secured is not None:
            props.update(self._sasl_ssl_properties(self.secured))
        self.properties.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.directory / "log4j2.yaml").write_text(_LOG4J2.format(log=self.log_file))

    def _sasl_ssl_properties(self, secured: SaslSslListener) -> dict[str, object]:
        # Kafka's PEM key store (KIP-651) is one file holding the private key and the certificate chain.
        key_store = self.directory / "server-keystore.pem"
        key_store.write_text(secured.key.read_text() + secured.certificate.read_text())
        key_store.chmod(0o600)
        listener = f"SASL_SSL://127.0.0.1:{self.secured_port}"
        return {
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port},{listener}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port},{listener}",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
            "listener.name.sasl_ssl.sasl.enabled.mechanisms": SCRAM_MECHANISM,
            f"listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "listener.name.sasl_ssl.ssl.keystore.type": "PEM",
            "listener.name.sasl_ssl.ssl.keystore.location": key_store,
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            # The loopback PLAINTEXT/CONTROLLER listeners' principal: the nodes themselves and the operator.
            "super.users": "User:ANONYMOUS",
        }

    def _java(self, libs: Path, main: str, *args: str) -> list[str]:
        return [
            "java",
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.directory / 'log4j2.yaml'}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]

    def format(self, libs: Path, cluster_id: str) -> None:
        """Format the log directory for `cluster_id` (Kafka's StorageTool); a directory already formatted is kept."""
        if (self.data_dir / "meta.properties").exists():
            return
        scram = self.secured.scram_arguments() if self.secured else []
        # --cluster-id=...: an id starting with "-" (1 in 64 are) would be taken for an option after a bare -t
        cmd = self._java(
            libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(self.properties), *scram
        )
        result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise ApacheKafkaError(
                f"Kafka could not format {self.data_dir}: {redact((result.stdout + result.stderr).strip()[-300:])}"
            )

    def launch(self, libs: Path) -> None:
        """Start the JVM (not waiting for it): it dies with this process and has its own process group, so a
        terminal's Ctrl-C reaches K2, which stops it after its clients' last commits."""
        with open(self.directory / "stdout.log", "ab") as out:
            self._proc = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(self.properties)),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                process_group=0,
            )
        log.info("kafka.node.launched", node=self.node_id, bootstrap=self.bootstrap, pid=self._proc.pid)

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise ApacheKafkaError(
                f"Kafka node {self.node_id} exited with code {self._proc.returncode} at start; see {self.log_file} "
                f"(is port {self.port} or {self.controller_port} taken?)"
            )

    def terminate(self) -> None:
        """Ask for a controlled shutdown (SIGTERM) without waiting for it."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (a controlled shutdown: leadership moves away, logs are flushed), SIGKILL after `timeout`."""
        proc, self._proc = self._proc, None
        if not stop_process(proc, timeout):
            log.warning("kafka.node.kill", node=self.node_id, pid=proc.pid, reason=f"no exit {timeout}s after SIGTERM")
        log.info("kafka.node.stopped", node=self.node_id, pid=proc.pid)

    def kill(self) -> None:
        """kill -9: no controlled shutdown, nothing flushed on the way out."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            log.info("kafka.node.killed", node=self.node_id, pid=proc.pid)


def _wait(condition: Callable[[], bool], deadline: float, check: Callable[[], None], what: str) -> None:
    while not condition():
        check()
        if time.monotonic() > deadline:
            raise ApacheKafkaError(f"Kafka did not become ready within the start timeout: {what}")
        time.sleep(0.1)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ApacheKafkaCluster:
    """`nodes` Kafka nodes on 127.0.0.1, each broker + controller, the controller quorum made of all of them.

    With 3 nodes: default.replication.factor=3, min.insync.replicas=2, unclean.leader.election.enable=false, and the
    offsets/transaction topics replicated 3 times. A single node replicates everything once. `root` holds one folder
    per node (server.properties, data/, server.log) and the cluster id: started again on the same root, the cluster
    finds its log. Usable as a context manager; every node dies with this process.
    """

    def __init__(
        self,
        root: Path,
        nodes: int = 1,
        port: int = 0,
        cache: Path | None = None,
        version: str = KAFKA_VERSION,
        secured: SaslSslListener | None = None,
    ) -> None:
        """`port`: the first node's client port (0 = any free one; the others always take free ones). `secured`:
        every node also listens for SASL_SSL clients (`secured_bootstrap`)."""
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.root = root
        self.cache = cache
        self.version = version
        self.nodes = [KafkaNode(i, root / f"node-{i}", port if i == 1 else 0, secured) for i in range(1, nodes + 1)]
        self._libs: Path | None = None

    @classmethod
    def for_settings(cls, settings: Settings, nodes: int = 1, port: int = 0) -> ApacheKafkaCluster:
        """The stack's Kafka: its log under $K2_HOME/kafka, its jars in K2_APACHE_KAFKA_CACHE."""
        return cls(settings.home_dir / "kafka", nodes=nodes, port=port, cache=settings.apache_kafka_cache)

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def secured_bootstrap(self) -> str:
        """The SASL_SSL listeners (a cluster started with `secured`)."""
        return ",".join(node.secured_bootstrap for node in self.nodes)

    @property
    def pid(self) -> int | None:
        """The first node's process id (the only one for a single node)."""
        return self.nodes[0].pid

    @property
    def replication(self) -> int:
        return min(3, len(self.nodes))

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def _cluster_id(self) -> str:
        path = self.root / CLUSTER_ID_FILE
        if not path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(new_cluster_id())
        return path.read_text().strip()

    def start(self, timeout: float = 180.0) -> ApacheKafkaCluster:
        """Fetch the jars if needed, format and launch every node, and return once every broker is registered
        and answers a metadata request. The default timeout is generous: on 2 busy cores a JVM node has taken
        30 s to open its port (docs/architecture.md)."""
        _require(["java"] if is_cached(self.cache, self.version) else ["java", "mvn"])
        self._libs = kafka_libs(self.cache, self.version)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        cluster_id = self._cluster_id()
        started = time.monotonic()
        try:
            for node in self.nodes:
                node.configure(voters, self.replication)
            # Each format is a JVM of its own (10 s each measured on 2 busy cores): side by side, not in turn.
            libs = self._libs
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(lambda n: n.format(libs, cluster_id), self.nodes))
            for node in self.nodes:
                node.launch(self._libs)
            self.wait_ready(started + timeout)
        except BaseException:
            self.stop()
            raise
        log.info(
            "kafka.started",
            bootstrap=self.bootstrap,
            nodes=len(self.nodes),
            seconds=round(time.monotonic() - started, 1),
        )
        return self

    def _check_alive(self) -> None:
        for node in self.nodes:
            node.check_alive()

    def wait_ready(self, deadline: float) -> None:
        """Block until the running nodes accept connections and the metadata lists every one of them as a broker."""
        running = [n for n in self.nodes if n.running]
        for node in running:
            _wait(
                lambda n=node: _accepts(n.port), deadline, self._check_alive, f"port {node.port} of node {node.node_id}"
            )
        admin = AdminClient(
            {"bootstrap.servers": ",".join(n.bootstrap for n in running), "log.connection.close": False}
        )
        wanted = {n.node_id for n in running}

        def registered() -> bool:
            try:
                return wanted <= set(admin.list_topics(timeout=2).brokers)
            except KafkaException:
                return False

        _wait(registered, deadline, self._check_alive, f"brokers {sorted(wanted)} in the metadata")

    def kill(self, node_id: int) -> None:
        """kill -9 one node."""
        self.node(node_id).kill()

    def stop_node(self, node_id: int, timeout: float = 60.0) -> None:
        self.node(node_id).stop(timeout)

    def restart(self, node_id: int, timeout: float = 180.0) -> None:
        """Start a stopped or killed node again on its ports and log; return once it is back in the metadata."""
        self.relaunch(node_id)
        self.wait_ready(time.monotonic() + timeout)

    def relaunch(self, node_id: int) -> None:
        """Start a stopped or killed node again on its ports and log, without waiting for it (a JVM takes tens of
        seconds here): a fault drill keeps killing other processes meanwhile. Call from a thread that outlives the
        node: it dies with the thread that started it (PR_SET_PDEATHSIG)."""
        node = self.node(node_id)
        if node.running:
            node.stop()
        if self._libs is None:
            raise ApacheKafkaError("the cluster was never started")
        node.launch(self._libs)

    def stop(self, timeout: float = 60.0) -> None:
        # All at once: stopped one by one, the last nodes lose their controller quorum and wait for it in their
        # controlled shutdown until the timeout.
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.stop(timeout)

    def __enter__(self) -> ApacheKafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
