"""A throwaway QuestDB server on 127.0.0.1 for bench_questdb.py: a peer to measure against, not part of K2.

The server jar comes from Maven Central once (`org.questdb:questdb`, fetched by k2.bus.apache_kafka.maven_libs into
`~/.cache/k2/questdb-<version>`); it carries its own native libraries (libquestdb.so) and runs on Java 17 (its
classes are class file 61). It is started as QuestDB's own scripts do — `java -p questdb.jar -m
io.questdb/io.questdb.ServerMain -d <root>` — with a `conf/server.conf` in the root that binds HTTP (REST, ILP over
HTTP, /exp), the minimal health server, PostgreSQL wire and ILP/TCP to 127.0.0.1 on free ports, and turns UDP and
telemetry off, and raises the query timeout from the shipped 1 minute to 10. Nothing else is changed from
QuestDB's defaults (no symbol index, no dedup, default worker pools and WAL settings). The JVM gets
PR_SET_PDEATHSIG (it dies with the Python process that started it) and `stop()` ends it with SIGTERM, then SIGKILL
after a timeout.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from k2.bus.apache_kafka import default_cache, maven_libs
from k2.bus.broker import _die_with_parent, free_port, stop_process

# The newest org.questdb:questdb on Maven Central on 2026-12-07 (`mvn dependency:get
# -Dartifact=org.questdb:questdb:RELEASE` resolved 9.3.4; QuestDB's site names newer 9.4.x docker images, which
# are not on Central). 9.2.0 brought the DECIMAL type the bench stores prices in.
QUESTDB_VERSION = "9.3.4"
# QuestDB's own launcher exports this JDK-internal package to its module (fast double/decimal parsing).
JVM_OPTS = ("--add-exports", "java.base/jdk.internal.math=io.questdb", "-Djava.awt.headless=true")


def questdb_jar(version: str = QUESTDB_VERSION) -> Path:
    libs = maven_libs(default_cache() / f"questdb-{version}", [("org.questdb", "questdb", version)], "QuestDB")
    return libs / f"questdb-{version}.jar"


def java_binary() -> str:
    """`java` on PATH (17 here); QuestDB's classes need 17+, so this is enough."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("QuestDB needs a JDK 17+: `java` is not on PATH")
    return java


class QuestDBServer:
    """One QuestDB server rooted at `root` (made if missing; its tables stay there between starts)."""

    def __init__(self, root: Path, version: str = QUESTDB_VERSION) -> None:
        self.root = root
        self.version = version
        self.http_port = free_port()
        self.pg_port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def pg_dsn(self) -> str:
        # QuestDB's default PG wire credentials (admin/quest); the server only listens on loopback.
        return f"host=127.0.0.1 port={self.pg_port} user=admin password=quest dbname=qdb"

    @property
    def log_file(self) -> Path:
        return self.root / "stdout.log"

    def _configure(self) -> None:
        (self.root / "conf").mkdir(parents=True, exist_ok=True)
        settings = {
            "http.bind.to": self.http,
            "http.min.net.bind.to": f"127.0.0.1:{free_port()}",
            "pg.net.bind.to": f"127.0.0.1:{self.pg_port}",
            "line.tcp.net.bind.to": f"127.0.0.1:{free_port()}",
            "line.udp.enabled": "false",
            "telemetry.enabled": "false",
            # the keys the jar's own conf/server.conf sets, except a longer timeout: the bench's 10 M-row
            # INSERT ... SELECT FROM read_parquet and 600k-row answers must not hit the shipped 1-minute limit
            "config.validation.strict": "true",
            "query.timeout": "10m",
            "cairo.sql.copy.root": "import",
        }
        text = "".join(f"{key}={value}\n" for key, value in settings.items())
        (self.root / "conf" / "server.conf").write_text(text)

    def start(self, timeout: float = 180.0) -> QuestDBServer:
        jar = questdb_jar(self.version)
        self._configure()
        command = [java_binary(), *JVM_OPTS, "-p", str(jar), "-m", "io.questdb/io.questdb.ServerMain"]
        command += ["-d", str(self.root)]
        with open(self.log_file, "ab") as out:
            self._proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
                process_group=0,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"QuestDB exited with {self._proc.returncode}; see {self.log_file}")
            try:
                self.exec("SELECT 1")
                return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"QuestDB was not ready in {timeout:.0f} s; see {self.log_file}")
            time.sleep(0.2)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def exec(self, sql: str, timeout: float = 600.0) -> dict[str, Any]:
        """Run `sql` through the REST API's /exec; the decoded JSON answer (raises on a SQL error)."""
        import json

        url = f"http://{self.http}/exec?" + urllib.parse.urlencode({"query": sql})
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"QuestDB refused {sql!r}: {exc.read().decode(errors='replace')}") from None

    def stop(self, timeout: float = 60.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout)

    def __enter__(self) -> QuestDBServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
