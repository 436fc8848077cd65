"""`k2 up` as a user runs it: a subprocess in its own process group (so SIGINT to the group is a terminal Ctrl-C),
its output collected, and what it printed (URLs, key, ports) parsed for the tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from k2.bus.stack import reachable
from tests.waiting import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


port_open = reachable


def children_of(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class UpProcess:
    def __init__(self, proc: subprocess.Popen[str], port: int) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.started = time.monotonic()
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        def printed() -> re.Match[str] | None:
            return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)

        def running() -> None:
            if self.proc.poll() is not None and not self._reader.is_alive() and printed() is None:
                raise AssertionError(f"k2 up exited without printing /{pattern}/; output:\n{self.output}")

        return wait_until(printed, timeout, f"k2 up to print /{pattern}/", check=running, detail=lambda: self.output)

    @property
    def key(self) -> str:
        return self.wait_for_line(r"API key\s+(k2_\S+)", 60).group(1)

    def printed(self, label: str) -> str:
        return self.wait_for_line(rf"^\s+{label}\s+(\S+)", 60).group(1)

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"X-API-Key": self.key}, timeout=30)

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the whole foreground process group."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.ctrl_c()
        try:
            return self.proc.wait(timeout)
        finally:
            self._reader.join(5)


@contextmanager
def k2_up(home: Path, *args: str) -> Iterator[UpProcess]:
    """Run `k2 up --port <free> ARGS` on K2_HOME=`home` (the rest of the environment as the test has it)."""
    port = free_port()
    env = {**os.environ, "K2_HOME": str(home), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "k2.cli", "up", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    up = UpProcess(proc, port)
    try:
        yield up
    finally:
        if proc.poll() is None:
            up.stop()
        if proc.poll() is None:  # did not stop in time: the test has failed already; leave nothing behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_for_exchanges(client: httpx.Client, exchanges: set[str], timeout: float) -> list[dict]:
    """Poll /v1/symbols until trades of every exchange in `exchanges` are in the lake; the symbol rows."""
    deadline = time.monotonic() + timeout
    rows: list[dict] = []
    while time.monotonic() < deadline:
        response = client.get("/v1/symbols", params={"kind": "trades"})
        if response.status_code == 200:
            rows = response.json()["data"]
            if exchanges <= {row["exchange"] for row in rows}:
                return rows
        time.sleep(0.5)
    raise AssertionError(f"no trades of {exchanges} after {timeout}s; symbols: {rows}")
